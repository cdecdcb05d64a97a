"""The client role (issue 20): Server.connect and start(listen=False), aio Server.connect.

Real sockets on 127.0.0.1. Outbound connections to an in-process server and to the
server itself, with every echo verified; the attempts that fail (refused, a name that
does not resolve, a timeout against a listener whose backlog is full) and the reason
each reports; a stop with attempts in flight; the errors raised by the call itself."""

import asyncio
import contextlib
import ctypes
import errno
import pickle
import select
import socket
import threading
import time

import pytest

import iocpsrv
import iocpsrv.aio
from iocpsrv import EventType, Reason

from conftest import TIMEOUT, Client, Recorder, wait_until


def _library_has_connect():
    """Whether the native library exports iocpsrv_connect (asked with ctypes: cffi knows
    only what the binding declares)."""
    iocpsrv.version()  # loads it
    return hasattr(ctypes.CDLL(iocpsrv.library_path()), "iocpsrv_connect")


pytestmark = pytest.mark.skipif(not _library_has_connect(),
                                reason="the loaded library has no iocpsrv_connect")


def dead_port():
    """A port nothing listens on (bound for a moment, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def full_listener(fillers=4):
    """A listener nobody accepts from, with the smallest backlog, filled by plain
    sockets: further SYNs are dropped, so a connect to it neither succeeds nor fails
    until its timeout. Yields the port."""
    lst = socket.socket()
    socks = []
    try:
        lst.bind(("127.0.0.1", 0))
        lst.listen(0)
        port = lst.getsockname()[1]
        for _ in range(fillers):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            socks.append(s)
        # The accept queue is full once one of them is established.
        assert select.select([], socks, [], TIMEOUT)[1], "no filler got established"
        yield port
    finally:
        for s in socks:
            s.close()
        lst.close()


class ClientRecorder(Recorder):
    """A Recorder for the connecting side: on_connect sends `hello` packets (if any),
    each packet is recorded and not echoed."""

    def __init__(self, hello=()):
        super().__init__()
        self.hello = list(hello)
        self.client = None
        self.threads = set()

    def _add(self, kind, conn, value):
        self.threads.add(threading.current_thread())
        super()._add(kind, conn, value)

    def on_connect(self, conn, peer):
        super().on_connect(conn, peer)
        for data in self.hello:
            self.client.send(conn, data)

    def kinds(self, conn):
        return [e[0] for e in self.of(conn)]


def client_server(rec, **options):
    cli = iocpsrv.Server(listen=False, worker_threads=2, **rec.callbacks(), **options)
    rec.client = cli
    return cli


# ---- the threaded Server ------------------------------------------------------------------


def test_start_without_a_listener():
    srv = iocpsrv.Server(listen=False, worker_threads=1)
    try:
        assert srv.start() is srv
        assert srv.running and srv.port is None
        assert srv.stats().workers >= 1
        with pytest.raises(iocpsrv.InvalidState):
            srv.start()
        with pytest.raises(iocpsrv.InvalidState):
            srv.start(listen=True)
        srv.stop()
        assert not srv.running
        srv.start(listen=True)  # the same engine may listen after a stop
        assert srv.port
        with Client(srv.port):
            pass
        srv.stop()
        srv.start(listen=False)  # and start() overrides the constructor either way
        assert srv.running and srv.port is None
    finally:
        srv.close()


def test_connect_echoes_through_an_in_process_server(echo_server):
    """Outbound connections served like accepted ones: on_connect with the address
    reached, every echo back in order, one on_disconnect; the flags tell them apart.
    One more connection is opened from a callback."""
    srv, srv_rec = echo_server
    payloads = [b"hello", b"", b"x" * 70000, bytes(range(256))]
    rec = ClientRecorder(hello=payloads)
    extra = []

    def on_connect(conn, peer):
        if not extra:  # from a callback too
            extra.append(cli.connect("127.0.0.1", srv.port))
        ClientRecorder.on_connect(rec, conn, peer)

    rec.on_connect = on_connect
    with client_server(rec) as cli:
        conns = [cli.connect("127.0.0.1", srv.port) for _ in range(4)]
        assert len(set(conns)) == 4
        assert rec.wait(lambda r: len(r.conns()) == 5 and r.count("packet") == 5 * len(payloads))
        conns += extra
        for conn in conns:
            assert rec.kinds(conn) == ["connect"] + ["packet"] * len(payloads)
            assert [e[2] for e in rec.of(conn)[1:]] == payloads
            assert rec.of(conn)[0][2] == f"127.0.0.1:{srv.port}"
            info = cli.info(conn)
            assert info.outbound and not info.connecting and info.peer == f"127.0.0.1:{srv.port}"
            assert info.packets_in == len(payloads)
        accepted = srv.connections()
        assert len(accepted) == 5
        for conn in accepted:
            assert not srv.info(conn).outbound and not srv.info(conn).connecting
        for conn in conns:
            cli.disconnect(conn)
        assert rec.wait(lambda r: r.count("disconnect") == 5)
        assert set(rec.reasons().values()) == {Reason.LOCAL_CLOSE}
        assert {t.name for t in rec.threads} == {"iocpsrv-dispatch-client"}
        rec.check_order()
    assert srv_rec.wait(lambda r: r.count("disconnect") == 5)
    assert set(srv_rec.reasons().values()) == {Reason.PEER_CLOSED}


def test_connect_to_itself():
    """One engine at both ends: the outbound connection and the one it accepted."""
    rec = Recorder()
    outbound = set()

    def on_packet(conn, data):
        rec.on_packet(conn, data)
        if conn not in outbound:  # the accepted end echoes, the outbound end listens
            srv.send(conn, data)

    with iocpsrv.Server(worker_threads=2, on_connect=rec.on_connect, on_packet=on_packet,
                        on_disconnect=rec.on_disconnect) as srv:
        conn = srv.connect("127.0.0.1", srv.port)
        outbound.add(conn)
        assert rec.wait(lambda r: len(r.conns()) == 2)
        (accepted,) = set(rec.conns()) - {conn}
        assert srv.info(conn).outbound and not srv.info(accepted).outbound
        assert srv.info(conn).local == srv.info(accepted).peer
        for i in range(20):
            srv.send(conn, b"ping %d" % i)
        assert rec.wait(lambda r: r.count("packet", conn) == 20)
        assert [e[2] for e in rec.of(conn) if e[0] == "packet"] == [b"ping %d" % i for i in range(20)]
        assert rec.count("packet", accepted) == 20
        srv.disconnect(conn)
        assert rec.wait(lambda r: r.count("disconnect") == 2)
        assert rec.reasons() == {conn: Reason.LOCAL_CLOSE, accepted: Reason.PEER_CLOSED}
        rec.check_order()


def _expect_failures(host, port, count, reason, **options):
    rec = ClientRecorder(hello=[b"never sent"])
    with client_server(rec, **options) as cli:
        start = time.monotonic()
        conns = [cli.connect(host, port) for _ in range(count)]
        assert rec.wait(lambda r: r.count("disconnect") == count)
        took = time.monotonic() - start
        for conn in conns:
            assert rec.kinds(conn) == ["disconnect"], conn  # and no on_connect
        assert set(rec.reasons().values()) == {reason}
        assert all(type(r) is Reason for r in rec.reasons().values())
        for conn in conns:
            with pytest.raises(iocpsrv.ConnectionNotFound):
                cli.info(conn)
        # (the count drops just after the disconnect is delivered: no event says when)
        assert wait_until(lambda: cli.stats().connections_now == 0)
    return took


def test_connect_refused():
    _expect_failures("127.0.0.1", dead_port(), 10, Reason.CONNECT_REFUSED)


def test_connect_name_not_resolved():
    _expect_failures("no-such-host.invalid", 80, 3, Reason.NAME_NOT_RESOLVED)


def test_connect_timeout():
    with full_listener() as port:
        took = _expect_failures("127.0.0.1", port, 3, Reason.CONNECT_TIMEOUT,
                                connect_timeout_ms=500)
    assert 0.45 <= took < TIMEOUT  # not before its time (the sweep may add 250 ms)


def test_while_connecting_only_disconnect_and_info_take_the_id():
    rec = ClientRecorder()
    with full_listener() as port, client_server(rec, connect_timeout_ms=60000) as cli:
        conn = cli.connect("127.0.0.1", port)
        info = cli.info(conn)
        assert info.outbound and info.connecting and info.peer == f"127.0.0.1:{port}"
        for call in (lambda: cli.send(conn, b"x"), lambda: cli.pause(conn),
                     lambda: cli.pending(conn)):
            with pytest.raises(iocpsrv.ConnectionNotFound):
                call()
        cli.disconnect(conn, graceful=False)
        assert rec.wait(lambda r: r.count("disconnect") == 1)
        assert rec.kinds(conn) == ["disconnect"]
        assert rec.reasons() == {conn: Reason.LOCAL_ABORT}
        conn = cli.connect("127.0.0.1", port)
        cli.disconnect(conn)  # graceful
        assert rec.wait(lambda r: r.count("disconnect") == 2)
        assert rec.reasons()[conn] == Reason.LOCAL_CLOSE


def test_outbound_refused_by_on_connect_gets_no_callback(echo_server):
    srv, srv_rec = echo_server
    rec = ClientRecorder()
    rec.on_connect = lambda conn, peer: Recorder.on_connect(rec, conn, peer) or False
    with client_server(rec) as cli:
        conn = cli.connect("127.0.0.1", srv.port)
        assert srv_rec.wait(lambda r: r.count("disconnect") == 1)  # closed by the client
        assert rec.kinds(conn) == ["connect"]
        assert cli.stats().connections_rejected == 1
    assert rec.kinds(conn) == ["connect"]  # not even after the stop


def test_stop_with_connects_in_flight(echo_server):
    """Attempts that hang, are refused, resolve a name, and established ones: after
    stop() returns each had exactly one on_disconnect and no callback comes any more."""
    srv, _ = echo_server
    dead = dead_port()
    with full_listener() as hang:
        for rnd in range(2):
            rec = ClientRecorder(hello=[b"hi"])
            cli = client_server(rec, connect_timeout_ms=60000)
            try:
                cli.start()
                targets = [("127.0.0.1", hang), ("127.0.0.1", dead), ("localhost", srv.port),
                           ("127.0.0.1", srv.port)] * 10
                conns = [cli.connect(h, p) for h, p in targets]
                if rnd == 1:  # some established and echoed first
                    assert rec.wait(lambda r: r.count("packet") >= 5)
                cli.stop(timeout=2)
                dispatchers = set(rec.threads)
                events = list(rec.events)
                assert not cli.running
                assert all(not t.is_alive() for t in dispatchers)
                for conn, (host, port) in zip(conns, targets):
                    kinds = [e[0] for e in events if e[1] == conn]
                    assert kinds.count("disconnect") == 1 and kinds[-1] == "disconnect", kinds
                    reason = rec.reasons()[conn]
                    if port == hang:
                        assert kinds == ["disconnect"] and reason == Reason.SERVER_STOPPED
                    elif port == dead:
                        assert kinds == ["disconnect"]
                        assert reason in (Reason.CONNECT_REFUSED, Reason.SERVER_STOPPED)
                    else:  # established (then served) or not yet
                        assert reason == Reason.SERVER_STOPPED
                        assert kinds in (["disconnect"], ["connect", "disconnect"],
                                         ["connect", "packet", "disconnect"]), kinds
                assert rec.events == events  # nothing after stop() returned
            finally:
                cli.close()
            assert rec.events == events


def test_connect_call_errors():
    srv = iocpsrv.Server(listen=False, worker_threads=1, max_connections=1)
    try:
        with pytest.raises(iocpsrv.ServerStopped):  # not started
            srv.connect("127.0.0.1", 80)
        srv.start()
        for port in (0, -1, 65536, 1 << 70):
            with pytest.raises(ValueError, match="port"):
                srv.connect("127.0.0.1", port)
        for port in ("80", 80.0, None, True):
            with pytest.raises(TypeError, match="port"):
                srv.connect("127.0.0.1", port)
        for host in ("", "a\0b"):
            with pytest.raises(ValueError, match="host"):
                srv.connect(host, 80)
        for host in (None, b"127.0.0.1", 127):
            with pytest.raises(TypeError, match="host"):
                srv.connect(host, 80)
        with full_listener() as port:
            conn = srv.connect("127.0.0.1", port)  # holds the only slot
            with pytest.raises(iocpsrv.TooManyConnections) as e:
                srv.connect("127.0.0.1", port)
            assert e.value.code == -18 and e.value.name == "IOCPSRV_ELIMIT"
            assert f"connect to '127.0.0.1' port {port}" in str(e.value)
            srv.disconnect(conn)
        srv.stop()
        with pytest.raises(iocpsrv.ServerStopped):  # stopped
            srv.connect("127.0.0.1", 80)
        srv.set_options(connect_source="127.0.0.1")
        srv.start()
        with pytest.raises(iocpsrv.AddressNotAvailable):  # an IPv6 target, an IPv4 source
            srv.connect("::1", 80)
    finally:
        srv.close()
    with pytest.raises(iocpsrv.ServerStopped):  # closed
        srv.connect("127.0.0.1", 80)


def test_connect_source_binds_the_local_side(echo_server):
    srv, srv_rec = echo_server
    rec = ClientRecorder(hello=[b"from .2"])
    with client_server(rec, connect_source="127.0.0.2") as cli:
        conn = cli.connect("127.0.0.1", srv.port)
        assert rec.wait(lambda r: r.count("packet") == 1)
        assert cli.info(conn).local.startswith("127.0.0.2:")
    (peer,) = [e[2] for e in srv_rec.events if e[0] == "connect"]
    assert peer.startswith("127.0.0.2:")


def test_connect_failures_are_named_by_reason():
    failures = [Reason(v) for v in range(9, 14)]
    assert [r.name for r in failures] == [
        "CONNECT_REFUSED", "CONNECT_UNREACHABLE", "CONNECT_TIMEOUT", "NAME_NOT_RESOLVED",
        "CONNECT_FAILED"]
    assert Reason.CONNECT_REFUSED.text == "connect-refused"
    assert str(Reason.NAME_NOT_RESOLVED) == "Reason.NAME_NOT_RESOLVED"


# ---- the exceptions of a failed attempt --------------------------------------------------


@pytest.mark.parametrize("reason, cls, base, code", [
    ("CONNECT_REFUSED", "ConnectRefused", ConnectionRefusedError, errno.ECONNREFUSED),
    ("CONNECT_TIMEOUT", "ConnectTimeout", TimeoutError, errno.ETIMEDOUT),
    ("NAME_NOT_RESOLVED", "NameNotResolved", socket.gaierror, None),
    ("CONNECT_UNREACHABLE", "ConnectFailed", ConnectionError, None),
    ("SERVER_STOPPED", "ConnectFailed", ConnectionError, None),
])
def test_connect_failed_is_the_oserror_python_would_raise(reason, cls, base, code):
    from iocpsrv._errors import connect_error

    reason, cls = Reason[reason], getattr(iocpsrv, cls)
    e = connect_error(reason, 7, "example.com", 5150)
    assert type(e) is cls and isinstance(e, iocpsrv.ConnectFailed) and isinstance(e, base)
    assert isinstance(e, OSError) and not isinstance(e, iocpsrv.IocpsrvError)
    assert e.reason is reason and e.conn == 7 and e.host == "example.com" and e.port == 5150
    assert e.errno == code and e.strerror == reason.text
    assert str(e) == f"connect to 'example.com' port 5150 failed: {reason.text} ({reason})"
    again = pickle.loads(pickle.dumps(e))
    assert type(again) is cls and again.reason is reason and str(again) == str(e)


# ---- asyncio -------------------------------------------------------------------------------


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT))


class Echo(iocpsrv.aio.Protocol):
    def packet_received(self, data):
        self.connection.send(data)


class Collect(iocpsrv.aio.Protocol):
    """Records what it gets; ``got`` is set when ``want`` packets came, ``lost`` when
    the connection ends."""

    instances = []

    def __init__(self, want=1):
        self.packets = []
        self.reason = None
        self.want = want
        loop = asyncio.get_running_loop()
        self.got = loop.create_future()
        self.lost = loop.create_future()
        self.made = False
        Collect.instances.append(self)

    def connection_made(self, connection):
        self.connection = connection
        self.made = True

    def packet_received(self, data):
        self.packets.append(data)
        if len(self.packets) == self.want and not self.got.done():
            self.got.set_result(None)

    def connection_lost(self, reason):
        self.reason = reason
        self.lost.set_result(reason)


def test_aio_connect_protocol_echo():
    async def main():
        payloads = [b"one", b"", b"z" * 50000]
        async with iocpsrv.aio.Server(protocol_factory=Echo, worker_threads=2) as srv, \
                iocpsrv.aio.Server(protocol_factory=lambda: Collect(len(payloads)),
                                   listen=False, worker_threads=2) as cli:
            assert cli.port is None
            conns = await asyncio.gather(*[cli.connect("127.0.0.1", srv.port)
                                           for _ in range(3)])
            for c in conns:
                assert isinstance(c, iocpsrv.aio.Connection)
                assert c.protocol.made and c.protocol.connection is c  # before connect returned
                assert c.peer == f"127.0.0.1:{srv.port}"
                info = c.info()
                assert info.outbound and not info.connecting
                for p in payloads:
                    c.send(p)
            for c in conns:
                await c.protocol.got
                assert c.protocol.packets == payloads
            conns[0].close()
            assert await conns[0].protocol.lost == Reason.LOCAL_CLOSE
            await cli.stop()
            for c in conns[1:]:
                assert c.protocol.lost.done() and c.protocol.reason == Reason.SERVER_STOPPED

    run(main())


def test_aio_connect_event_mode():
    async def main():
        async with iocpsrv.aio.Server(protocol_factory=Echo) as srv, \
                iocpsrv.aio.Server(listen=False) as cli:
            events = []
            conn = None

            async def consume():
                async for ev in cli:
                    events.append(ev)
                    if ev.type is EventType.PACKET and ev.conn == conn.id:
                        conn.close()

            task = asyncio.ensure_future(consume())
            conn = await cli.connect("127.0.0.1", srv.port)
            assert isinstance(conn, iocpsrv.aio.Connection) and conn.server is cli
            assert not hasattr(conn, "protocol")
            conn.send(b"event mode")
            with pytest.raises(TypeError, match="protocol_factory"):
                await cli.connect("127.0.0.1", srv.port, protocol_factory=Echo)
            with pytest.raises(iocpsrv.ConnectRefused) as e:
                await cli.connect("127.0.0.1", dead_port())
            failed = e.value.conn
            await _until(lambda: any(ev.conn == conn.id and ev.type is EventType.DISCONNECT
                                     for ev in events)
                         and any(ev.conn == failed for ev in events))
            await cli.stop()
            await task
            mine = [(ev.type, ev.data, ev.reason) for ev in events if ev.conn == conn.id]
            assert mine == [(EventType.CONNECT, b"", None), (EventType.PACKET, b"event mode", None),
                            (EventType.DISCONNECT, b"", Reason.LOCAL_CLOSE)]
            assert [ev.peer for ev in events if ev.conn == conn.id][0] == f"127.0.0.1:{srv.port}"
            # the failed attempt: its DISCONNECT alone
            assert [(ev.type, ev.reason) for ev in events if ev.conn == failed] == \
                [(EventType.DISCONNECT, Reason.CONNECT_REFUSED)]

    run(main())


async def _until(pred):
    """Wait for pred() on the loop (state with no event of its own), bounded."""
    deadline = time.monotonic() + TIMEOUT
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


def test_aio_connect_failures_raise_with_the_reason():
    async def main():
        async with iocpsrv.aio.Server(protocol_factory=Collect, listen=False,
                                      connect_timeout_ms=500) as cli:
            dead = dead_port()
            with pytest.raises(ConnectionRefusedError) as e:
                await cli.connect("127.0.0.1", dead)
            assert isinstance(e.value, iocpsrv.ConnectRefused)
            assert e.value.reason is Reason.CONNECT_REFUSED and e.value.errno == errno.ECONNREFUSED
            assert (e.value.host, e.value.port) == ("127.0.0.1", dead) and e.value.conn > 0
            with pytest.raises(socket.gaierror) as e:
                await cli.connect("no-such-host.invalid", 80)
            assert isinstance(e.value, iocpsrv.NameNotResolved)
            assert e.value.reason is Reason.NAME_NOT_RESOLVED
            with full_listener() as port:
                start = time.monotonic()
                with pytest.raises(TimeoutError) as e:
                    await cli.connect("127.0.0.1", port)
                assert time.monotonic() - start >= 0.45
            assert isinstance(e.value, iocpsrv.ConnectTimeout)
            assert e.value.reason is Reason.CONNECT_TIMEOUT
            assert not Collect.instances or all(not p.made for p in Collect.instances)
            await _until(lambda: cli.stats().connections_now == 0)

    Collect.instances = []
    run(main())


def test_aio_connect_to_itself_with_its_own_protocol():
    """A server that accepts with one protocol (Echo) and connects with another
    (protocol_factory=), to itself: a proxy's two sides."""
    async def main():
        async with iocpsrv.aio.Server(protocol_factory=Echo) as srv:
            c = await srv.connect("127.0.0.1", srv.port, protocol_factory=lambda: Collect(10))
            assert isinstance(c.protocol, Collect)
            for i in range(10):
                c.send(b"%d" % i)
            await c.protocol.got
            assert c.protocol.packets == [b"%d" % i for i in range(10)]
            conns = srv.connections()
            assert len(conns) == 2
            (accepted,) = set(conns) - {c.id}
            assert c.info().outbound and not srv.info(accepted).outbound
            assert srv.info(accepted).peer == c.info().local

    run(main())


def test_aio_connect_refused_by_its_protocol():
    class No(iocpsrv.aio.Protocol):
        def connection_made(self, connection):
            return False

    class Boom(iocpsrv.aio.Protocol):
        def connection_made(self, connection):
            raise RuntimeError("boom")

    async def main():
        async with iocpsrv.aio.Server(protocol_factory=Echo) as srv:
            with pytest.raises(iocpsrv.ConnectFailed) as e:
                await srv.connect("127.0.0.1", srv.port, protocol_factory=No)
            assert e.value.reason is Reason.LOCAL_CLOSE
            with pytest.raises(iocpsrv.ConnectFailed) as e:
                await srv.connect("127.0.0.1", srv.port, protocol_factory=Boom)
            assert e.value.reason is Reason.LOCAL_ABORT
            assert isinstance(e.value.__cause__, RuntimeError)
            # both closed: the accepted ends see their peer go
            await _until(lambda: not srv.connections())

    run(main())


def test_aio_cancelled_connect_aborts_the_attempt():
    async def main():
        async with iocpsrv.aio.Server(protocol_factory=Collect, listen=False,
                                      connect_timeout_ms=60000) as cli:
            with full_listener() as port:
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(cli.connect("127.0.0.1", port), 0.2)
                # its DISCONNECT (LOCAL_ABORT) settles it; no protocol was made
                await _until(lambda: not cli._attempts and cli.stats().connections_now == 0)
            assert not Collect.instances

    Collect.instances = []
    run(main())


def test_aio_stop_with_connects_in_flight():
    async def main():
        async with iocpsrv.aio.Server(protocol_factory=Echo) as srv:
            cli = iocpsrv.aio.Server(protocol_factory=Collect, listen=False,
                                     connect_timeout_ms=60000)
            with full_listener() as hang:
                await cli.start()
                dead = dead_port()
                targets = [hang, dead, srv.port] * 5
                tasks = [asyncio.ensure_future(cli.connect("127.0.0.1", p)) for p in targets]
                while not all(t.done() for t, p in zip(tasks, targets) if p != hang):
                    await asyncio.wait([t for t in tasks if not t.done()],
                                       return_when=asyncio.FIRST_COMPLETED)
                assert not any(t.done() for t, p in zip(tasks, targets) if p == hang)
                await cli.close()
            for t, p in zip(tasks, targets):
                if p == srv.port:
                    c = t.result()
                    assert c.protocol.reason == Reason.SERVER_STOPPED
                else:
                    e = t.exception()
                    assert isinstance(e, iocpsrv.ConnectFailed)
                    assert e.reason == (Reason.SERVER_STOPPED if p == hang
                                        else Reason.CONNECT_REFUSED)
            assert not cli._attempts

    Collect.instances = []
    run(main())


def test_aio_connect_call_errors():
    async def main():
        cli = iocpsrv.aio.Server(protocol_factory=Collect, listen=False)
        with pytest.raises(iocpsrv.ServerStopped):  # not started
            await cli.connect("127.0.0.1", 80)
        async with cli:
            with pytest.raises(ValueError, match="port"):
                await cli.connect("127.0.0.1", 0)
            with pytest.raises(TypeError, match="host"):
                await cli.connect(None, 80)
        with pytest.raises(iocpsrv.ServerStopped):  # closed
            await cli.connect("127.0.0.1", 80)

    run(main())
