"""Shared helpers: framed blocking clients, an event recorder, bounded waits."""

import os
import socket
import struct
import sys
import threading
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
PKG_ROOT = os.path.dirname(HERE)  # bindings/python
REPO_ROOT = os.path.dirname(os.path.dirname(PKG_ROOT))
if PKG_ROOT not in sys.path:
    sys.path.insert(0, PKG_ROOT)

import iocpsrv  # noqa: E402

def _has_option(name):
    srv = iocpsrv.Server()
    try:
        srv.get_option(name)
        return True
    except iocpsrv.UnknownOption:
        return False
    finally:
        srv.close()


def needs_option(name):
    """Skip unless the loaded library knows the option (options are appended over time)."""
    return pytest.mark.skipif(not _has_option(name),
                              reason=f"the loaded library has no {name} option")


needs_batch_sends = needs_option("pull_batch_sends")

# Generous: the machine has 2 cores and other suites may run at the same time.
TIMEOUT = 30.0

HEADERS = {
    "len32_le": struct.Struct("<I"),
    "len32_be": struct.Struct(">I"),
    "len16_le": struct.Struct("<H"),
    "len16_be": struct.Struct(">H"),
}


def wait_until(pred, timeout=TIMEOUT, interval=0.005):
    """Poll pred() until true; for state with no event to wait on (engine counters).
    Returns the last value of pred()."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(interval)


class Client:
    """A blocking TCP client speaking one of the engine's framings."""

    def __init__(self, port, framing="len32_le", host="127.0.0.1", timeout=TIMEOUT):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # the server may already have reset it
            pass
        self.hdr = HEADERS.get(framing)

    def frame(self, payload: bytes) -> bytes:
        return payload if self.hdr is None else self.hdr.pack(len(payload)) + payload

    def send(self, payload: bytes) -> None:
        self.sock.sendall(self.frame(payload))

    def try_send(self, payload: bytes) -> bool:
        """send(), for a connection the server may already have closed."""
        try:
            self.send(payload)
            return True
        except (ConnectionResetError, BrokenPipeError):
            return False

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_exact(self, n: int) -> bytes:
        chunks = []
        while n:
            b = self.sock.recv(min(n, 1 << 20))
            if not b:
                raise EOFError("connection closed")
            chunks.append(b)
            n -= len(b)
        return b"".join(chunks)

    def recv(self) -> bytes:
        (n,) = self.hdr.unpack(self.recv_exact(self.hdr.size))
        return self.recv_exact(n)

    def closed_by_server(self) -> bool:
        """True once the server closed (EOF or reset); reads and drops any data."""
        try:
            while True:
                b = self.sock.recv(65536)
                if not b:
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Recorder:
    """Callbacks that record every event, and a way to wait for a condition on them."""

    def __init__(self, echo_server=None):
        self.cond = threading.Condition()
        self.events = []  # (kind, conn, value, thread name)
        self.server = echo_server

    def _add(self, kind, conn, value):
        with self.cond:
            self.events.append((kind, conn, value, threading.current_thread().name))
            self.cond.notify_all()

    def on_connect(self, conn, peer):
        self._add("connect", conn, peer)

    def on_packet(self, conn, data):
        self._add("packet", conn, data)
        if self.server is not None:
            self.server.send(conn, data)

    def on_disconnect(self, conn, reason):
        self._add("disconnect", conn, reason)

    def on_drain(self, conn):
        self._add("drain", conn, None)

    def callbacks(self):
        return dict(on_connect=self.on_connect, on_packet=self.on_packet,
                    on_disconnect=self.on_disconnect, on_drain=self.on_drain)

    def wait(self, pred, timeout=TIMEOUT):
        with self.cond:
            return self.cond.wait_for(lambda: pred(self), timeout)

    def count(self, kind, conn=None):
        with self.cond:
            return sum(1 for e in self.events if e[0] == kind and (conn is None or e[1] == conn))

    def of(self, conn):
        with self.cond:
            return [e for e in self.events if e[1] == conn]

    def conns(self):
        with self.cond:
            return [e[1] for e in self.events if e[0] == "connect"]

    def reasons(self):
        with self.cond:
            return {e[1]: e[2] for e in self.events if e[0] == "disconnect"}

    def check_order(self):
        """Per connection: one connect first, then packets/drains, one disconnect last."""
        with self.cond:
            by = {}
            for e in self.events:
                by.setdefault(e[1], []).append(e[0])
        for conn, kinds in by.items():
            assert kinds[0] == "connect", (conn, kinds[:5])
            assert kinds.count("connect") == 1, conn
            assert kinds.count("disconnect") <= 1, conn
            if "disconnect" in kinds:
                assert kinds[-1] == "disconnect", (conn, kinds[-5:])
        return by


@pytest.fixture
def recorder():
    return Recorder()


@pytest.fixture
def echo_server():
    """A started echo Server with a Recorder; stopped and closed afterwards."""
    rec = Recorder()
    srv = iocpsrv.Server(worker_threads=2, **rec.callbacks())
    rec.server = srv
    srv.start()
    try:
        yield srv, rec
    finally:
        srv.close(timeout=2)
