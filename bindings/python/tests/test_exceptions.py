"""Exception policy: a raising callback is logged, its connection aborted, the server
keeps serving everyone else, and nothing escapes to kill the dispatcher."""

import logging

import pytest

import iocpsrv
from iocpsrv import Reason

from conftest import Client, Recorder


def _server(rec, **overrides):
    cbs = rec.callbacks()
    cbs.update(overrides)
    srv = iocpsrv.Server(worker_threads=2, **cbs)
    rec.server = srv
    return srv


@pytest.mark.parametrize("exc", [ValueError("boom"), SystemExit(3), KeyboardInterrupt()])
def test_raising_packet_callback_aborts_only_its_connection(caplog, exc):
    rec = Recorder()

    def on_packet(conn, data):
        if data == b"raise":
            raise exc
        rec.on_packet(conn, data)

    caplog.set_level(logging.ERROR, logger="iocpsrv")
    with _server(rec, on_packet=on_packet) as srv:
        with Client(srv.port) as good, Client(srv.port) as bad:
            good.send(b"before")
            assert good.recv() == b"before"
            bad.send_raw(bad.frame(b"raise") + bad.frame(b"never delivered"))
            assert bad.closed_by_server()
            assert rec.wait(lambda r: r.count("disconnect") == 1)
            for i in range(50):  # the other client is still served
                good.send(b"after %d" % i)
                assert good.recv() == b"after %d" % i
            with Client(srv.port) as new:  # and so is a new one
                new.send(b"new")
                assert new.recv() == b"new"
    bad_conn = [c for c, r in rec.reasons().items() if r is Reason.LOCAL_ABORT]
    assert len(bad_conn) == 1
    assert not [e for e in rec.of(bad_conn[0]) if e[0] == "packet"]
    rec.check_order()
    records = [r for r in caplog.records if r.name == "iocpsrv"]
    assert len(records) == 1
    assert "on_packet" in records[0].getMessage() and str(bad_conn[0]) in records[0].getMessage()
    assert records[0].exc_info[0] is type(exc)


def test_raising_connect_callback_refuses_that_client(caplog):
    rec = Recorder()
    calls = []

    def on_connect(conn, peer):
        calls.append(conn)
        if len(calls) == 1:
            raise RuntimeError("cannot set up")
        rec.on_connect(conn, peer)

    caplog.set_level(logging.ERROR, logger="iocpsrv")
    with _server(rec, on_connect=on_connect) as srv:
        try:
            bad = Client(srv.port)
        except ConnectionResetError:
            pass  # aborted before connect() even returned
        else:
            with bad:
                bad.try_send(b"x")  # the server may have closed it already
                assert bad.closed_by_server()
        with Client(srv.port) as good:
            good.send(b"ok")
            assert good.recv() == b"ok"
        assert rec.wait(lambda r: r.count("disconnect") == 1)
    # no callback at all for the client whose on_connect raised
    assert [e for e in rec.events if e[1] == calls[0]] == []
    assert any("on_connect" in r.getMessage() for r in caplog.records)


def test_raising_disconnect_callback_is_logged(caplog):
    rec = Recorder()

    def on_disconnect(conn, reason):
        rec.on_disconnect(conn, reason)
        raise LookupError("cleanup failed")

    caplog.set_level(logging.ERROR, logger="iocpsrv")
    with _server(rec, on_disconnect=on_disconnect) as srv:
        for _ in range(3):
            with Client(srv.port) as c:
                c.send(b"x")
                assert c.recv() == b"x"
        assert rec.wait(lambda r: r.count("disconnect") == 3)
        with Client(srv.port) as c:
            c.send(b"alive")
            assert c.recv() == b"alive"
    assert sum("on_disconnect" in r.getMessage() for r in caplog.records) >= 3


def test_raising_drain_callback_aborts_its_connection(caplog):
    rec = Recorder()

    def on_drain(conn):
        rec.on_drain(conn)
        raise RuntimeError("drain failed")

    caplog.set_level(logging.ERROR, logger="iocpsrv")
    with iocpsrv.Server(worker_threads=2, send_queue_limit=1024, on_drain=on_drain,
                        on_connect=rec.on_connect,
                        on_disconnect=rec.on_disconnect) as srv:
        with Client(srv.port) as c:
            assert rec.wait(lambda r: r.count("connect") == 1)
            conn = rec.conns()[0]
            srv.send(conn, b"a" * 4096)  # an empty queue takes one packet, however large
            try:
                while True:
                    srv.send(conn, b"b" * 4096)
            except iocpsrv.SendQueueFull:
                pass
            assert c.closed_by_server()
        assert rec.wait(lambda r: r.count("disconnect") == 1)
        assert rec.reasons()[conn] is Reason.LOCAL_ABORT
    assert any("on_drain" in r.getMessage() for r in caplog.records)


def test_a_broken_log_handler_does_not_kill_the_dispatcher():
    class Broken(logging.Handler):
        def emit(self, record):
            raise RuntimeError("handler broken")

        def handleError(self, record):
            raise RuntimeError("really broken")

    log = logging.getLogger("iocpsrv")
    h = Broken()
    log.addHandler(h)
    try:
        def on_packet(conn, data):
            if data == b"raise":
                raise ValueError
            srv.send(conn, data)

        with iocpsrv.Server(worker_threads=1, on_packet=on_packet) as srv:
            with Client(srv.port) as bad:
                bad.send(b"raise")
                assert bad.closed_by_server()
            with Client(srv.port) as good:
                good.send(b"ok")
                assert good.recv() == b"ok"
    finally:
        log.removeHandler(h)
