"""examples/echo.py, examples/chat.py and examples/client.py as a user runs them."""

import os
import re
import selectors
import signal
import subprocess
import sys

import pytest

from conftest import PKG_ROOT, REPO_ROOT, TIMEOUT, Client

# IOCPSRV_FLOOD: the flood client of another build tree (run_tests.sh sets it from
# IOCPSRV_BUILD_DIR).
FLOOD = os.environ.get("IOCPSRV_FLOOD") or os.path.join(
    REPO_ROOT, "build", "linux", "samples", "iocpsrv-flood")


class Example:
    def __init__(self, name, *args):
        self.proc = subprocess.Popen(
            [sys.executable, "-u", os.path.join(PKG_ROOT, "examples", name), "--port", "0",
             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not sel.select(TIMEOUT):
            self.proc.kill()
            raise AssertionError(f"{name} printed nothing")
        line = self.proc.stdout.readline()
        m = re.fullmatch(r"listening on (\S+):(\d+)\n", line)
        assert m, line + self.proc.stderr.read() if not line else line
        self.port = int(m.group(2))

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=TIMEOUT)
        assert self.proc.returncode == 0, err
        assert "Traceback" not in err, err
        return out

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture
def echo_example(request):
    """examples/echo.py, or the script and flags given as the parameter."""
    param = getattr(request, "param", ("echo.py",))
    if not param[0].endswith(".py"):
        param = ("echo.py",) + tuple(param)
    ex = Example(*param)
    yield ex
    ex.kill()


def test_echo_example_round_trip(echo_example):
    with Client(echo_example.port) as c:
        for payload in (b"Test Item 1", b"", b"x" * 100000):
            c.send(payload)
            assert c.recv() == payload
    out = echo_example.stop()
    assert "stopped: 1 connections, 3 packets in, 3 out" in out


@pytest.mark.skipif(not os.access(FLOOD, os.X_OK), reason="iocpsrv-flood is not built")
@pytest.mark.parametrize("echo_example", [("echo.py",), ("echo.py", "--per-packet"),
                                          ("aio_echo.py",), ("aio_echo.py", "--batch"),
                                          ("aio_echo.py", "--events")], indirect=True,
                         ids=["threaded", "threaded-per-packet", "aio-protocol",
                              "aio-batch", "aio-events"])
def test_echo_example_serves_100_pipelining_flood_clients(echo_example):
    r = subprocess.run([FLOOD, "--port", str(echo_example.port), "--connections", "100",
                        "--depth", "8", "--count", "1000", "--size", "64", "--threads", "2",
                        "--no-progress", "--timeout", "20"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "100,000 echoed and verified" in r.stdout, r.stdout
    assert re.search(r"errors\s+0", r.stdout), r.stdout
    out = echo_example.stop()
    assert "stopped: 100 connections, 100000 packets in, 100000 out" in out, out


FLOW_CASES = [
    # (flags, payload size, packets): 64 KiB payloads are sent at once (over the
    # deferral limit); 1000-byte ones are deferred to the end of the batch, so the
    # queue's refusals are found when the batch is handed over (the stall path).
    (("--send-queue-limit", "65536"), 65536, 200),
    (("--send-queue-limit", "8192"), 1000, 3000),
    (("--send-queue-limit", "8192", "--per-packet"), 1000, 3000),
    (("aio_echo.py", "--send-queue-limit", "8192", "--batch"), 1000, 3000),
]


@pytest.mark.parametrize("echo_example,size,count", FLOW_CASES, indirect=["echo_example"],
                         ids=["64KiB-direct", "1000B-batch", "1000B-per-packet",
                              "aio-1000B-batch"])
def test_echo_example_flow_control_with_a_client_that_reads_slowly(echo_example, size,
                                                                   count):
    """Echoes that do not fit the send queue pause the client; nothing is lost."""
    with Client(echo_example.port) as c:
        c.sock.setsockopt(__import__("socket").SOL_SOCKET, __import__("socket").SO_RCVBUF,
                          65536)
        payloads = [bytes([i % 251]) * size for i in range(count)]
        import threading
        t = threading.Thread(target=lambda: [c.send(p) for p in payloads])
        t.start()
        for i, p in enumerate(payloads):
            assert c.recv() == p, i
        t.join(TIMEOUT)
    out = echo_example.stop()
    assert f"{count} packets in, {count} out" in out, out
    m = re.search(r"(\d+) pauses", out)  # (echo.py counts them)
    assert m is None or int(m.group(1)) > 0, out  # the queue filled: flow control worked


def _recv_until(c, want):
    while True:
        msg = c.recv()
        if msg == want:
            return
        assert msg.startswith(b"* "), msg  # join/leave notices only


def test_chat_example_broadcasts():
    ex = Example("chat.py")
    try:
        with Client(ex.port) as a, Client(ex.port) as b, Client(ex.port) as c:
            peer_a = ("%s:%d" % a.sock.getsockname()).encode()
            for x in (a, b, c):  # each is connected once it sees its own join notice
                _recv_until(x, b"* " + ("%s:%d" % x.sock.getsockname()).encode() + b" joined")
            a.send(b"hello all")
            for x in (a, b, c):
                _recv_until(x, peer_a + b": hello all")
            b.close()
            msg = a.recv()
            assert msg.startswith(b"* ") and msg.endswith(b" left (peer_closed)"), msg
        ex.stop()
    finally:
        ex.kill()


def test_chat_example_line_mode():
    ex = Example("chat.py", "--lines")
    try:
        with Client(ex.port, framing="raw") as a, Client(ex.port, framing="raw") as b:
            def read_until(c, want, buf=b""):
                while want not in buf:
                    chunk = c.sock.recv(4096)
                    assert chunk
                    buf += chunk
                return buf

            for x in (a, b):  # each is connected once it sees its own join notice
                read_until(x, b"* %s:%d joined\n" % (x.sock.getsockname()[0].encode(),
                                                      x.sock.getsockname()[1]))
            a.send_raw(b"first line\nsecond ")
            a.send_raw(b"line\n")
            me = ("%s:%d" % a.sock.getsockname()).encode()
            buf = read_until(b, b"second line\n")
            lines = [ln for ln in buf.split(b"\n") if ln and not ln.startswith(b"* ")]
            assert lines == [me + b": first line", me + b": second line"]
        ex.stop()
    finally:
        ex.kill()


def _client_example(*args):
    return subprocess.run([sys.executable, os.path.join(PKG_ROOT, "examples", "client.py"),
                           *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("echo_example,flags",
                         [(("echo.py",), ()), (("aio_echo.py",), ("--aio",))],
                         indirect=["echo_example"], ids=["threaded", "aio"])
def test_client_example_verifies_every_echo(echo_example, flags):
    """examples/client.py (the client role) against the echo example: 20 outbound
    connections, 300 packets each, every echo checked, each connection closed."""
    r = _client_example("--port", str(echo_example.port), "--connections", "20",
                        "--count", "300", "--size", "500", *flags)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == "20 connections, 6,000 packets echoed and verified", r.stdout
    out = echo_example.stop()
    assert "stopped: 20 connections, 6000 packets in, 6000 out" in out, out


@pytest.mark.parametrize("flags", [(), ("--aio",)], ids=["threaded", "aio"])
def test_client_example_names_a_refused_attempt(flags):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = _client_example("--port", str(port), "--connections", "2", *flags)
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout.count("CONNECT_REFUSED") == 2, r.stdout
    assert "Traceback" not in r.stderr, r.stderr
