"""Stopping: from another thread and from inside a callback while clients pump data,
with a full pull queue, restarts, idempotence, calls after stop, interpreter exit."""

import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import iocpsrv
from iocpsrv import Reason

from conftest import PKG_ROOT, TIMEOUT, Client, Recorder, wait_until


class Pumps:
    """Client threads that send and read echoes until the server goes away."""

    def __init__(self, port, n):
        self.clients = [Client(port) for _ in range(n)]
        self.echoed = [0] * n
        self.threads = [threading.Thread(target=self._pump, args=(i,), daemon=True)
                        for i in range(n)]
        for t in self.threads:
            t.start()

    def _pump(self, i):
        c = self.clients[i]
        try:
            while True:
                for _ in range(8):
                    c.send(b"p" * 100)
                for _ in range(8):
                    if c.recv() != b"p" * 100:
                        raise AssertionError("bad echo")
                    self.echoed[i] += 1
        except (EOFError, OSError):
            pass
        c.close()  # our FIN lets the server's graceful close finish

    def join(self):
        for t in self.threads:
            t.join(TIMEOUT)
            assert not t.is_alive()
        for c in self.clients:
            c.close()


def _started(rec, **kw):
    srv = iocpsrv.Server(worker_threads=2, **dict(rec.callbacks(), **kw))
    rec.server = srv
    return srv.start()


def test_stop_from_another_thread_under_load():
    rec = Recorder()
    srv = _started(rec)
    pumps = Pumps(srv.port, 8)
    assert wait_until(lambda: min(pumps.echoed) > 20)
    done = []
    t = threading.Thread(target=lambda: (srv.stop(timeout=2), done.append(1)))
    t.start()
    t.join(TIMEOUT)
    assert done, "stop() did not return"
    # When stop returns no callback is running or will run.
    n = len(rec.events)
    assert not srv.running
    pumps.join()
    time.sleep(0.1)
    assert len(rec.events) == n
    by = rec.check_order()
    assert len(by) == 8
    assert all(kinds[-1] == "disconnect" for kinds in by.values())
    assert set(rec.reasons().values()) <= {Reason.SERVER_STOPPED, Reason.PEER_CLOSED,
                                           Reason.PEER_RESET}
    srv.close()


@pytest.mark.parametrize("where", ["on_packet", "on_connect", "on_disconnect"])
def test_stop_from_a_callback_under_load(where):
    rec = Recorder()
    returned = threading.Event()

    def stop_here():
        srv.stop(timeout=2)  # must return at once, on the dispatcher thread
        returned.set()

    def on_packet(conn, data):
        rec.on_packet(conn, data)
        if data == b"stop" and where == "on_packet":
            stop_here()

    def on_connect(conn, peer):
        rec.on_connect(conn, peer)
        if where == "on_connect" and len(rec.conns()) == 9:
            stop_here()

    def on_disconnect(conn, reason):
        rec.on_disconnect(conn, reason)
        if where == "on_disconnect" and not returned.is_set():
            stop_here()

    srv = _started(rec, on_packet=on_packet, on_connect=on_connect,
                   on_disconnect=on_disconnect)
    pumps = Pumps(srv.port, 8)
    assert wait_until(lambda: min(pumps.echoed) > 20)
    trigger = Client(srv.port)
    trigger.send(b"stop")
    if where == "on_disconnect":
        trigger.close()
    assert returned.wait(TIMEOUT)
    if where != "on_disconnect":
        assert trigger.closed_by_server()
    trigger.close()
    assert srv.wait(TIMEOUT), "the stop begun from a callback did not finish"
    pumps.join()
    trigger.close()
    by = rec.check_order()
    assert len(by) == 9
    assert all(kinds[-1] == "disconnect" for kinds in by.values())
    srv.stop()  # from the main thread afterwards: returns, nothing left to do
    srv.close()


def test_stop_from_a_callback_with_a_full_pull_queue_and_no_time_limit():
    """The dispatcher keeps draining while the stop runs, so a stop with no time limit
    cannot wait forever for a connection that waits for room in the pull queue."""
    rec = Recorder()

    def on_packet(conn, data):
        if data == b"stop":
            srv.stop(timeout=None)
        else:
            srv.send(conn, data)

    srv = iocpsrv.Server(worker_threads=2, pull_queue_limit=4, on_packet=on_packet,
                         on_disconnect=rec.on_disconnect)
    srv.start()
    pumps = Pumps(srv.port, 4)
    assert wait_until(lambda: min(pumps.echoed) > 10)
    with Client(srv.port) as c:
        c.send(b"stop")
        assert c.closed_by_server()
    assert srv.wait(TIMEOUT)
    pumps.join()
    srv.close()


def test_stop_is_idempotent_and_restart_works():
    rec = Recorder()
    srv = iocpsrv.Server(worker_threads=1, **rec.callbacks())
    rec.server = srv
    srv.stop()  # never started: nothing to do
    assert srv.port is None
    for _ in range(3):
        srv.start()
        with pytest.raises(iocpsrv.InvalidState):
            srv.start()
        with Client(srv.port) as c:
            c.send(b"round")
            assert c.recv() == b"round"
        srv.stop()
        srv.stop()
        assert not srv.running
    assert rec.wait(lambda r: r.count("disconnect") == 3)
    with pytest.raises(iocpsrv.ServerStopped):
        srv.send(rec.conns()[0], b"after stop")
    with pytest.raises(iocpsrv.ServerStopped):
        srv.broadcast(b"after stop")
    srv.close()
    srv.close()
    assert srv.closed
    with pytest.raises(iocpsrv.ServerStopped):
        srv.send(1, b"closed")
    with pytest.raises(iocpsrv.ServerStopped):
        srv.stats()
    with pytest.raises(iocpsrv.ServerStopped):
        srv.start()


def test_restart_after_stop_from_callback():
    def on_packet(conn, data):
        if data == b"stop":
            srv.stop(0)
        else:
            srv.send(conn, data)

    srv = iocpsrv.Server(worker_threads=1, on_packet=on_packet)
    srv.start()
    with Client(srv.port) as c:
        c.send(b"stop")
        assert c.closed_by_server()
    assert srv.wait(TIMEOUT)
    srv.start()  # joins the finished stop, then listens again
    with Client(srv.port) as c:
        c.send(b"again")
        assert c.recv() == b"again"
    srv.close()


def test_start_and_close_are_refused_inside_callbacks():
    errors = []

    def on_packet(conn, data):
        for call in (srv.start, srv.close):
            try:
                call()
            except iocpsrv.InCallback as e:
                errors.append(e)
        srv.send(conn, data)

    with iocpsrv.Server(worker_threads=1, on_packet=on_packet) as srv:
        with Client(srv.port) as c:
            c.send(b"x")
            assert c.recv() == b"x"
    assert len(errors) == 2


def test_stop_from_many_threads_at_once():
    rec = Recorder()
    srv = _started(rec)
    pumps = Pumps(srv.port, 4)
    assert wait_until(lambda: min(pumps.echoed) > 5)
    threads = [threading.Thread(target=srv.stop, args=(1,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
        assert not t.is_alive()
    pumps.join()
    rec.check_order()
    assert rec.count("disconnect") == 4
    srv.close()


def _run(code):
    env = dict(os.environ, PYTHONPATH=PKG_ROOT)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=TIMEOUT)


def test_a_forgotten_server_is_stopped_at_exit():
    r = _run("""
        import socket, threading, iocpsrv
        got = threading.Event()
        srv = iocpsrv.Server(on_packet=lambda c, d: got.set(),
                             on_disconnect=lambda c, r: print("disconnect", r.name, flush=True))
        srv.start()
        s = socket.create_connection(("127.0.0.1", srv.port))
        s.sendall(b"\\0\\0\\0\\0")
        assert got.wait(30)
        print("port", srv.port, flush=True)
        # exit with the server running and a client connected
        """)
    assert r.returncode == 0, r.stderr
    assert "port" in r.stdout
    assert "disconnect SERVER_STOPPED" in r.stdout
    assert "Traceback" not in r.stderr


def test_a_dropped_server_is_freed():
    r = _run("""
        import gc, iocpsrv
        for i in range(20):
            s = iocpsrv.Server(worker_threads=1)
            s.start(); s.stop()
            del s
        gc.collect()
        with iocpsrv.Server(worker_threads=1) as s:
            pass
        print("ok")
        """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"
