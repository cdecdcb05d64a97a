"""The threading contract as the Python binding gives it (README "Threading contract")."""

import struct
import threading
import time

import pytest

import iocpsrv
from iocpsrv import Reason

from conftest import TIMEOUT, Client, Recorder, needs_option, wait_until


def test_echo_round_trip(echo_server):
    srv, rec = echo_server
    with Client(srv.port) as c:
        for payload in (b"hello", b"", b"x" * 70000, bytes(range(256))):
            c.send(payload)
            assert c.recv() == payload
    assert rec.wait(lambda r: r.count("disconnect") == 1)
    (conn,) = rec.conns()
    kinds = [e[0] for e in rec.of(conn)]
    assert kinds == ["connect"] + ["packet"] * 4 + ["disconnect"]
    assert rec.of(conn)[-1][2] is Reason.PEER_CLOSED
    # connect carries the peer address, packets arrive as bytes
    assert rec.of(conn)[0][2].startswith("127.0.0.1:")
    assert all(type(e[2]) is bytes for e in rec.of(conn) if e[0] == "packet")


def test_callbacks_run_on_the_dispatcher_thread(echo_server):
    srv, rec = echo_server
    with Client(srv.port) as c:
        c.send(b"a")
        c.recv()
    assert rec.wait(lambda r: r.count("disconnect") == 1)
    threads = {e[3] for e in rec.events}
    assert len(threads) == 1 and threads.pop().startswith("iocpsrv-dispatch")


def test_per_connection_order_with_concurrent_clients(echo_server):
    srv, rec = echo_server
    nclients, npackets = 12, 200

    def client(i):
        with Client(srv.port) as c:
            for k in range(npackets):
                c.send(struct.pack("<II", i, k) + b"." * (k % 50))
            for k in range(npackets):
                assert struct.unpack_from("<II", c.recv()) == (i, k)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(nclients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
        assert not t.is_alive()
    assert rec.wait(lambda r: r.count("disconnect") == nclients)
    by = rec.check_order()
    assert len(by) == nclients
    for conn in by:
        packets = [e[2] for e in rec.of(conn) if e[0] == "packet"]
        assert [struct.unpack_from("<II", p)[1] for p in packets] == list(range(npackets))
        assert len({struct.unpack_from("<II", p)[0] for p in packets}) == 1


def test_ids_are_unique_and_stale_ids_fail(echo_server):
    srv, rec = echo_server
    for _ in range(3):
        with Client(srv.port) as c:
            c.send(b"x")
            c.recv()
    assert rec.wait(lambda r: r.count("disconnect") == 3)
    ids = rec.conns()
    assert len(set(ids)) == 3 and all(i > 0 for i in ids)
    stale = ids[0]
    with pytest.raises(iocpsrv.ConnectionNotFound) as e:
        srv.send(stale, b"data")
    assert e.value.code == -3 and e.value.name == "IOCPSRV_ENOTCONN"
    for call in (lambda: srv.disconnect(stale), lambda: srv.info(stale),
                 lambda: srv.pause(stale), lambda: srv.resume(stale),
                 lambda: srv.pending(stale), lambda: srv.sendv(stale, [b"a"]),
                 lambda: srv.send(123456789, b"never existed")):
        with pytest.raises(iocpsrv.ConnectionNotFound):
            call()
    # a new client is unaffected by the failed calls on stale ids
    with Client(srv.port) as c:
        c.send(b"still fine")
        assert c.recv() == b"still fine"


def test_sends_from_any_thread_and_bytes_likes(echo_server):
    srv, rec = echo_server
    with Client(srv.port) as c:
        assert rec.wait(lambda r: r.count("connect") == 1)
        conn = rec.conns()[0]
        errors = []

        def sender(k):
            try:
                srv.send(conn, b"thread %d" % k)
            except Exception as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=sender, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        got = sorted(c.recv() for _ in range(8))
        assert got == sorted(b"thread %d" % k for k in range(8))
        srv.send(conn, bytearray(b"bytearray"))
        srv.send(conn, memoryview(b"__memoryview__")[2:-2])
        import array
        srv.send(conn, array.array("I", [1, 2]))
        srv.sendv(conn, [b"head:", memoryview(b"body"), bytearray(b"!")])
        srv.sendv(conn, [])
        assert c.recv() == b"bytearray"
        assert c.recv() == b"memoryview"
        assert c.recv() == struct.pack("=II", 1, 2)
        assert c.recv() == b"head:body!"
        assert c.recv() == b""
        with pytest.raises(TypeError):
            srv.send(conn, "text is not bytes")


def test_broadcast(echo_server):
    srv, rec = echo_server
    clients = [Client(srv.port) for _ in range(5)]
    try:
        assert rec.wait(lambda r: r.count("connect") == 5)
        assert srv.broadcast(b"to all") == 5
        for c in clients:
            assert c.recv() == b"to all"
    finally:
        for c in clients:
            c.close()


def test_connect_callback_returning_false_refuses():
    rec = Recorder()
    seen = []

    def on_connect(conn, peer):
        seen.append(conn)
        return len(seen) != 1  # refuse the first client only

    with iocpsrv.Server(worker_threads=2, on_connect=on_connect, on_packet=rec.on_packet,
                        on_disconnect=rec.on_disconnect) as srv:
        rec.server = srv
        with Client(srv.port) as refused:
            refused.try_send(b"ignored")
            assert refused.closed_by_server()
        with Client(srv.port) as ok:
            ok.send(b"served")
            assert ok.recv() == b"served"
        assert rec.wait(lambda r: r.count("disconnect") == 1)
        # the refused client got no packet and no disconnect callback
        assert [e[1] for e in rec.events] == [seen[1]] * 2
        assert wait_until(lambda: srv.stats().connections_now == 0)


def test_refused_clients_are_counted_and_get_nothing(caplog):
    """on_connect returning False, or raising, refuses the client in the library
    (IOCPSRV_CLOSE_REFUSE): counted in connections_rejected, and no callback at all, not
    even for the packets it sent at once (queued behind its connect event)."""
    rec = Recorder()
    seen = []

    def on_connect(conn, peer):
        seen.append(conn)
        assert wait_until(lambda: srv.stats().packets_in >= 3 * len(seen))
        if len(seen) == 2:
            raise RuntimeError("refused by raising")
        return len(seen) == 3

    with iocpsrv.Server(worker_threads=2, on_connect=on_connect, on_packet=rec.on_packet,
                        on_disconnect=rec.on_disconnect, on_drain=rec.on_drain) as srv:
        for i in range(3):
            with Client(srv.port) as c:
                c.send_raw(b"".join(c.frame(b"%d" % k) for k in range(3)))
                if i < 2:
                    assert c.closed_by_server()
                else:
                    assert rec.wait(lambda r: r.count("packet") == 3)
        assert rec.wait(lambda r: r.count("disconnect") == 1)
        assert wait_until(lambda: srv.stats().connections_now == 0)
        assert srv.stats().connections_rejected == 2
    assert {e[1] for e in rec.events} == {seen[2]}
    assert [e[2] for e in rec.events if e[0] == "packet"] == [b"0", b"1", b"2"]


def test_packet_callback_returning_false_closes_after_flushing():
    def on_packet(conn, data):
        srv.send(conn, b"last words")
        return False

    rec = Recorder()
    with iocpsrv.Server(worker_threads=2, on_packet=on_packet,
                        on_disconnect=rec.on_disconnect) as srv:
        with Client(srv.port) as c:
            c.send(b"bye")
            c.send(b"dropped: the connection is closing")
            assert c.recv() == b"last words"
            assert c.closed_by_server()
        assert rec.wait(lambda r: r.count("disconnect") == 1)
        assert list(rec.reasons().values()) == [Reason.LOCAL_CLOSE]


@pytest.mark.parametrize("graceful, reason", [(True, Reason.LOCAL_CLOSE),
                                              (False, Reason.LOCAL_ABORT)])
def test_disconnect_modes(echo_server, graceful, reason):
    srv, rec = echo_server
    with Client(srv.port) as c:
        assert rec.wait(lambda r: r.count("connect") == 1)
        conn = rec.conns()[0]
        srv.send(conn, b"queued before the close")
        srv.disconnect(conn, graceful=graceful)
        if graceful:
            assert c.recv() == b"queued before the close"
        assert c.closed_by_server()
    assert rec.wait(lambda r: r.count("disconnect") == 1)
    assert rec.reasons()[conn] is reason
    with pytest.raises(iocpsrv.ConnectionNotFound):
        srv.disconnect(conn)


def test_no_packet_after_disconnect_returns():
    """Packets the engine had queued before disconnect() are not delivered."""
    rec = Recorder()
    gate = threading.Event()

    def on_packet(conn, data):
        rec.on_packet(conn, data)
        if data == b"first":
            srv.disconnect(conn)  # from the connection's own callback
        gate.set()

    with iocpsrv.Server(worker_threads=2, on_connect=rec.on_connect, on_packet=on_packet,
                        on_disconnect=rec.on_disconnect) as srv:
        with Client(srv.port) as c:
            c.send_raw(b"".join(c.frame(p) for p in [b"first", b"second", b"third"]))
            assert c.closed_by_server()
        assert rec.wait(lambda r: r.count("disconnect") == 1)
        assert [e[2] for e in rec.events if e[0] == "packet"] == [b"first"]


def test_info_stats_connections(echo_server):
    srv, rec = echo_server
    with Client(srv.port) as c:
        c.send(b"12345")
        assert c.recv() == b"12345"
        conn = rec.conns()[0]
        assert srv.connections() == [conn]
        info = srv.info(conn)
        assert isinstance(info, iocpsrv.ConnInfo)
        assert info.id == conn
        assert info.peer == "%s:%d" % c.sock.getsockname()
        assert info.local == "127.0.0.1:%d" % srv.port
        assert info.packets_in == 1 and info.bytes_in == 9
        assert wait_until(lambda: srv.info(conn).bytes_out == 9)
        assert info.packets_out == 1
        assert abs(info.connect_time - time.time()) < 600
        assert not info.paused and not info.closing
        srv.pause(conn)
        assert srv.info(conn).paused
        srv.resume(conn)
        assert srv.pending(conn) == 0
        st = srv.stats()
        assert isinstance(st, iocpsrv.Stats)
        assert st.connections_now == 1 and st.connections_total == 1
        assert st.workers == 2
        # workers publish their counters after their batch: wait for them
        assert wait_until(lambda: srv.stats().packets_in == 1)
        assert srv.stats().bytes_in == 9
    assert rec.wait(lambda r: r.count("disconnect") == 1)
    assert wait_until(lambda: srv.connections() == [])


def test_many_connections_listing(echo_server):
    srv, rec = echo_server
    clients = [Client(srv.port) for _ in range(40)]
    try:
        assert rec.wait(lambda r: r.count("connect") == 40)
        assert sorted(srv.connections()) == sorted(rec.conns())
    finally:
        for c in clients:
            c.close()


@pytest.mark.parametrize("queued", [True, False])
def test_pause_holds_packets_until_resume(queued):
    """pause() from the connection's own callback: no packet callback until resume(),
    whether the packets were already queued (in the engine's pull queue, or in the batch
    the binding is dispatching) or still unread; then all of them, in order."""
    rec = Recorder()
    paused = threading.Event()

    def on_connect(conn, peer):
        rec.on_connect(conn, peer)
        if queued:  # let the client's packets pile up behind this event
            assert wait_until(lambda: srv.stats().packets_in >= 20)

    def on_packet(conn, data):
        rec.on_packet(conn, data)
        if data == b"0":
            srv.pause(conn)
            paused.set()

    with iocpsrv.Server(worker_threads=2, on_connect=on_connect, on_packet=on_packet,
                        on_disconnect=rec.on_disconnect) as srv:
        with Client(srv.port) as c:
            c.send_raw(b"".join(c.frame(b"%d" % i) for i in range(20)))
            assert paused.wait(TIMEOUT)
            conn = rec.conns()[0]
            c.send(b"20")
            # A negative check needs a little time: nothing may arrive while paused.
            time.sleep(0.3)
            assert rec.count("packet") == 1
            assert srv.info(conn).paused
            if queued:  # all read before the pause: held where they were queued
                assert srv.stats().packets_in >= 20
            srv.resume(conn)  # from another thread
            assert rec.wait(lambda r: r.count("packet") == 21)
        assert rec.wait(lambda r: r.count("disconnect") == 1)
    assert [e[2] for e in rec.events if e[0] == "packet"] == [b"%d" % i for i in range(21)]


def test_pause_and_resume_inside_callbacks_keep_order():
    """Pause on every 5th packet and resume from the next drain-free callback path: a
    helper thread resumes; order must hold across many pause/resume rounds."""
    rec = Recorder()
    to_resume = []
    cond = threading.Condition()

    def on_packet(conn, data):
        rec.on_packet(conn, data)
        if int(data) % 5 == 0:
            srv.pause(conn)
            with cond:
                to_resume.append(conn)
                cond.notify()

    def resumer():
        while True:
            with cond:
                cond.wait_for(lambda: to_resume, TIMEOUT)
                if not to_resume:
                    return
                conn = to_resume.pop(0)
            if conn is None:
                return
            try:
                srv.resume(conn)
            except iocpsrv.ConnectionNotFound:
                pass

    with iocpsrv.Server(worker_threads=2, on_packet=on_packet,
                        on_disconnect=rec.on_disconnect) as srv:
        t = threading.Thread(target=resumer)
        t.start()
        with Client(srv.port) as c:
            c.send_raw(b"".join(c.frame(b"%d" % i) for i in range(200)))
            assert rec.wait(lambda r: r.count("packet") == 200)
        with cond:
            to_resume.append(None)
            cond.notify()
        t.join(TIMEOUT)
    assert [e[2] for e in rec.events if e[0] == "packet"] == [b"%d" % i for i in range(200)]


def test_send_queue_full_and_drain():
    rec = Recorder()
    limit = 64 * 1024
    with iocpsrv.Server(worker_threads=2, send_queue_limit=limit, sndbuf=8192,
                        **dict(rec.callbacks(), on_packet=None)) as srv:
        with Client(srv.port) as c:
            c.sock.setsockopt(__import__("socket").SOL_SOCKET,
                              __import__("socket").SO_RCVBUF, 8192)
            assert rec.wait(lambda r: r.count("connect") == 1)
            conn = rec.conns()[0]
            chunk = b"z" * 16384
            sent = 0
            with pytest.raises(iocpsrv.SendQueueFull) as e:
                for _ in range(10000):
                    srv.send(conn, chunk)
                    sent += 1
            assert e.value.code == -4
            assert srv.pending(conn) > 0
            assert srv.stats().send_queue_rejections >= 1
            for _ in range(sent):
                assert c.recv() == chunk
            assert rec.wait(lambda r: r.count("drain", conn) == 1)
            srv.send(conn, b"after drain")
            assert c.recv() == b"after drain"


def test_packet_too_large():
    rec = Recorder()
    with iocpsrv.Server(worker_threads=2, max_packet_size=1000, **rec.callbacks()) as srv:
        with Client(srv.port) as c:
            assert rec.wait(lambda r: r.count("connect") == 1)
            conn = rec.conns()[0]
            with pytest.raises(iocpsrv.PacketTooLarge):
                srv.send(conn, b"x" * 1001)
            srv.send(conn, b"x" * 1000)
            assert c.recv() == b"x" * 1000
            c.send_raw(struct.pack("<I", 1001))  # header over the limit
            assert c.closed_by_server()
        assert rec.wait(lambda r: r.count("disconnect") == 1)
        assert rec.reasons()[conn] is Reason.PROTOCOL_ERROR
        assert wait_until(lambda: srv.stats().protocol_errors == 1)


def test_idle_timeout():
    rec = Recorder()
    with iocpsrv.Server(worker_threads=2, idle_timeout_ms=200, **rec.callbacks()) as srv:
        with Client(srv.port) as c:
            assert c.closed_by_server()
        assert rec.wait(lambda r: r.count("disconnect") == 1)
        assert list(rec.reasons().values()) == [Reason.IDLE_TIMEOUT]
        assert Reason.IDLE_TIMEOUT.text == "idle-timeout"


def test_callbacks_may_be_methods_of_a_subclass():
    class Echo(iocpsrv.Server):
        def on_packet(self, conn, data):
            self.send(conn, data[::-1])

    with Echo(worker_threads=1) as srv:
        with Client(srv.port) as c:
            c.send(b"abc")
            assert c.recv() == b"cba"


@needs_option("proxy_protocol")
def test_proxy_protocol_header_gives_the_real_client():
    rec = Recorder()
    with iocpsrv.Server(worker_threads=2, proxy_protocol="required", proxy_trusted="127.0.0.1",
                        **rec.callbacks()) as srv:
        rec.server = srv
        with Client(srv.port) as c:
            c.send_raw(b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 80\r\n")
            c.send(b"through the balancer")
            assert c.recv() == b"through the balancer"
            conn = rec.conns()[0]
            assert rec.of(conn)[0][2] == "192.0.2.7:40000"
            info = srv.info(conn)
            assert info.peer == "192.0.2.7:40000"
            assert info.proxy == "%s:%d" % c.sock.getsockname()


@needs_option("proxy_trusted")
@pytest.mark.parametrize("mode", ["required", "optional"])
def test_proxy_header_from_an_untrusted_peer_is_refused(mode):
    rec = Recorder()
    with iocpsrv.Server(worker_threads=2, proxy_protocol=mode, proxy_trusted="10.0.0.0/8",
                        **rec.callbacks()) as srv:
        rec.server = srv
        with Client(srv.port) as c:
            try:
                c.send_raw(b"PROXY TCP4 6.6.6.6 127.0.0.1 40000 80\r\n")
                c.send(b"spoofed")
            except (ConnectionResetError, BrokenPipeError):
                pass  # required mode closes it as soon as it is accepted
            assert c.closed_by_server()
        deadline = time.monotonic() + TIMEOUT
        while srv.stats().proxy_untrusted != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        st = srv.stats()
        assert st.proxy_untrusted == 1 and st.protocol_errors == 1
        assert rec.count("connect") == 0  # the host never met 6.6.6.6


@needs_option("max_connections_per_source")
def test_max_connections_per_source():
    rec = Recorder()
    with iocpsrv.Server(worker_threads=2, max_connections_per_source=2,
                        **rec.callbacks()) as srv:
        rec.server = srv
        with Client(srv.port) as a, Client(srv.port) as b:
            a.send(b"a")
            b.send(b"b")
            assert a.recv() == b"a" and b.recv() == b"b"
            with Client(srv.port) as extra:
                assert extra.closed_by_server()
            assert srv.stats().source_refusals == 1
        assert rec.wait(lambda r: r.count("disconnect") == 2)
        assert rec.count("connect") == 2  # the refused one never reached the host


def test_client_half_close_gets_its_replies_then_the_close(echo_server):
    srv, rec = echo_server
    for i in range(5):
        with Client(srv.port) as c:
            c.send(b"question %d" % i)
            assert c.recv() == b"question %d" % i
            c.sock.shutdown(__import__("socket").SHUT_WR)
            t0 = time.monotonic()
            assert c.closed_by_server()
            assert time.monotonic() - t0 < 5.0
    assert rec.wait(lambda r: r.count("disconnect") == 5)
    assert set(rec.reasons().values()) == {Reason.PEER_CLOSED}
