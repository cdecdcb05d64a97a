"""iocpsrv.aio: the pull queue drained on an asyncio event loop."""

import asyncio
import logging
import struct

import pytest

import iocpsrv
import iocpsrv.aio as aio
from iocpsrv import EventType, Reason
from iocpsrv import _native as n

from conftest import TIMEOUT, needs_batch_sends

HDR = struct.Struct("<I")


def run(coro):
    async def bounded():
        return await asyncio.wait_for(coro, TIMEOUT)
    return asyncio.run(bounded())


class AClient:
    def __init__(self, reader, writer):
        self.r, self.w = reader, writer

    @classmethod
    async def connect(cls, port):
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    def send(self, payload):
        self.w.write(HDR.pack(len(payload)) + payload)

    async def recv(self):
        (n,) = HDR.unpack(await self.r.readexactly(4))
        return await self.r.readexactly(n)

    async def closed_by_server(self):
        try:
            while await self.r.read(65536):
                pass
        except ConnectionResetError:
            pass
        return True

    async def close(self):
        self.w.close()
        try:
            await self.w.wait_closed()
        except (ConnectionResetError, BrokenPipeError):
            pass


async def echo_events(srv, log):
    async for ev in srv:
        log.append(ev)
        if ev.type is EventType.PACKET:
            srv.send(ev.conn, ev.data)


def test_async_for_echo_and_order():
    async def main():
        log = []
        async with aio.Server(worker_threads=2) as srv:
            task = asyncio.create_task(echo_events(srv, log))

            async def client(i):
                c = await AClient.connect(srv.port)
                for k in range(100):
                    c.send(struct.pack("<II", i, k))
                for k in range(100):
                    assert struct.unpack("<II", await c.recv()) == (i, k)
                await c.close()

            await asyncio.gather(*(client(i) for i in range(10)))
            while sum(ev.type is EventType.DISCONNECT for ev in log) < 10:
                await asyncio.sleep(0.01)
        await task  # the iteration ends when the server has stopped
        return log

    log = run(main())
    by = {}
    for ev in log:
        by.setdefault(ev.conn, []).append(ev)
    assert len(by) == 10
    for evs in by.values():
        assert evs[0].type is EventType.CONNECT and evs[0].peer.startswith("127.0.0.1:")
        assert evs[-1].type is EventType.DISCONNECT and evs[-1].reason is Reason.PEER_CLOSED
        packets = [e.data for e in evs if e.type is EventType.PACKET]
        assert [struct.unpack("<II", p)[1] for p in packets] == list(range(100))
        assert len(evs) == 102


def test_protocol_echo_and_lifecycle():
    made, lost = [], []

    class Echo(aio.Protocol):
        def connection_made(self, connection):
            super().connection_made(connection)
            made.append(connection.id)

        def packet_received(self, data):
            self.connection.send(data)

        def connection_lost(self, reason):
            lost.append((self.connection.id, reason))

    async def main():
        srv = await aio.serve(Echo, worker_threads=2)
        try:
            clients = [await AClient.connect(srv.port) for _ in range(5)]
            for i, c in enumerate(clients):
                c.send(b"hello %d" % i)
            for i, c in enumerate(clients):
                assert await c.recv() == b"hello %d" % i
            for c in clients:
                await c.close()
            while len(lost) < 5:
                await asyncio.sleep(0.01)
        finally:
            await srv.close()

    run(main())
    assert sorted(made) == sorted(c for c, _ in lost)
    assert {r for _, r in lost} == {Reason.PEER_CLOSED}


def test_one_wakeup_per_batch_not_per_packet():
    class Counting(aio.Server):
        wakeups = 0

        def _on_readable(self):
            Counting.wakeups += 1
            super()._on_readable()

    class Sink(aio.Protocol):
        count = 0

        def packet_received(self, data):
            Sink.count += 1
            if Sink.count == 5000:
                self.connection.send(b"done")

    async def main():
        async with Counting(protocol_factory=Sink, worker_threads=2) as srv:
            c = await AClient.connect(srv.port)
            c.w.write(b"".join(HDR.pack(4) + b"%04d" % (i % 10000) for i in range(5000)))
            assert await c.recv() == b"done"
            await c.close()

    run(main())
    assert Sink.count == 5000
    assert Counting.wakeups < 5000 / 10, Counting.wakeups


def test_protocol_exception_policy(caplog):
    lost = []

    class Fragile(aio.Protocol):
        def packet_received(self, data):
            if data == b"raise":
                raise RuntimeError("bug in the protocol")
            self.connection.send(data)

        def connection_lost(self, reason):
            lost.append(reason)

    async def main():
        async with aio.Server(protocol_factory=Fragile, worker_threads=2) as srv:
            good = await AClient.connect(srv.port)
            bad = await AClient.connect(srv.port)
            bad.send(b"raise")
            bad.send(b"never delivered")
            assert await bad.closed_by_server()
            for i in range(20):
                good.send(b"%d" % i)
                assert await good.recv() == b"%d" % i
            await good.close()
            await bad.close()
            while len(lost) < 2:
                await asyncio.sleep(0.01)

    caplog.set_level(logging.ERROR, logger="iocpsrv")
    run(main())
    assert sorted(lost) == [Reason.PEER_CLOSED, Reason.LOCAL_ABORT]
    assert any("packet_received" in r.getMessage() for r in caplog.records)


def test_connection_made_returning_false_refuses():
    calls = []

    class Picky(aio.Protocol):
        def connection_made(self, connection):
            calls.append("made")
            self.connection = connection
            return len(calls) > 1

        def packet_received(self, data):
            calls.append(data)
            self.connection.send(data)

        def connection_lost(self, reason):
            calls.append("lost")

    async def main():
        async with aio.Server(protocol_factory=Picky, worker_threads=2) as srv:
            refused = await AClient.connect(srv.port)
            assert await refused.closed_by_server()
            ok = await AClient.connect(srv.port)
            ok.send(b"x")
            assert await ok.recv() == b"x"
            await ok.close()
            while calls[-1] != "lost":
                await asyncio.sleep(0.01)
            await refused.close()

    run(main())
    assert calls == ["made", "made", b"x", "lost"]


def test_stop_from_a_protocol_callback_under_load():
    lost = []

    class Echo(aio.Protocol):
        def packet_received(self, data):
            if data == b"stop":
                self.connection.server.stop(timeout=2)  # no await needed
                return
            self.connection.send(data)

        def connection_lost(self, reason):
            lost.append(reason)

    async def main():
        srv = await aio.serve(Echo, worker_threads=2)
        stop = asyncio.Event()

        async def pump():
            c = await AClient.connect(srv.port)
            try:
                while True:
                    for _ in range(8):
                        c.send(b"p" * 50)
                    for _ in range(8):
                        assert await c.recv() == b"p" * 50
                    stop.set()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            await c.close()

        pumps = [asyncio.create_task(pump()) for _ in range(6)]
        await stop.wait()
        trigger = await AClient.connect(srv.port)
        trigger.send(b"stop")
        assert await trigger.closed_by_server()
        await trigger.close()
        await srv.wait_closed()
        await asyncio.gather(*pumps)
        assert not srv.running
        await srv.close()

    run(main())
    assert len(lost) == 7
    assert set(lost) <= {Reason.SERVER_STOPPED, Reason.PEER_CLOSED, Reason.PEER_RESET}


def test_back_pressure_with_a_slow_consumer():
    async def main():
        async with aio.Server(worker_threads=2, max_buffered=64, batch_size=16,
                              pull_queue_limit=32) as srv:
            c = await AClient.connect(srv.port)
            n = 3000
            c.w.write(b"".join(HDR.pack(4) + struct.pack("<I", i) for i in range(n)))
            got = []
            async for ev in srv:
                if ev.type is EventType.PACKET:
                    got.append(struct.unpack("<I", ev.data)[0])
                    assert len(srv._queue) <= 64 + 16
                    if len(got) % 100 == 0:
                        await asyncio.sleep(0)  # a consumer that yields now and then
                    if len(got) == n:
                        break
            await c.close()
            return got

    assert run(main()) == list(range(3000))


def test_pause_and_resume_in_async_for():
    async def main():
        async with aio.Server(worker_threads=2) as srv:
            c = await AClient.connect(srv.port)
            c.w.write(b"".join(HDR.pack(1) + b"%d" % i for i in range(10)))
            got = []
            async for ev in srv:
                if ev.type is EventType.PACKET:
                    got.append(ev.data)
                    if ev.data == b"0":
                        srv.pause(ev.conn)
                        loop = asyncio.get_running_loop()
                        loop.call_later(0.2, srv.resume, ev.conn)
                        t0 = loop.time()
                    elif ev.data == b"1":
                        assert loop.time() - t0 >= 0.15  # held while paused
                    if len(got) == 10:
                        break
            await c.close()
            return got

    assert run(main()) == [b"%d" % i for i in range(10)]


def test_pause_resume_and_disconnect_apply_to_buffered_events():
    """Events already buffered for the iterator when the consumer pauses or disconnects a
    connection: a paused one's packets wait (in order, also across an await after
    resume()), a disconnected one's packets are dropped and its DISCONNECT still comes."""
    async def main():
        async with aio.Server(worker_threads=2) as srv:
            async def until(pred):
                while not pred():
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.1)  # the loop drains them into the buffer

            a = await AClient.connect(srv.port)
            a.w.write(b"".join(HDR.pack(2) + b"a%d" % i for i in range(5)))
            await until(lambda: srv.stats().packets_in >= 5)
            b = await AClient.connect(srv.port)
            await until(lambda: srv.stats().connections_now == 2)
            a.w.write(b"".join(HDR.pack(2) + b"a%d" % i for i in range(5, 10)))
            b.w.write(b"".join(HDR.pack(2) + b"b%d" % i for i in range(3)))
            await until(lambda: srv.stats().packets_in >= 13)

            got, b_conn, b_reason = [], None, None
            async for ev in srv:
                if ev.type is EventType.CONNECT and got:  # b's, behind a0..a4
                    b_conn = ev.conn
                    srv.resume(a_conn)
                    await asyncio.sleep(0.05)
                elif ev.type is EventType.PACKET:
                    got.append(ev.data)
                    if ev.data == b"a0":
                        a_conn = ev.conn
                        srv.pause(a_conn)
                    elif ev.data == b"b0":
                        srv.disconnect(ev.conn)
                elif ev.type is EventType.DISCONNECT and ev.conn == b_conn:
                    b_reason = ev.reason
                if b_reason is not None and len(got) == 11:
                    break
            await a.close()
            await b.close()
            return got, b_reason

    got, b_reason = run(main())
    assert [p for p in got if p[:1] == b"a"] == [b"a%d" % i for i in range(10)]
    assert [p for p in got if p[:1] == b"b"] == [b"b0"]
    assert b_reason is Reason.LOCAL_CLOSE


def test_restart_and_errors():
    async def main():
        srv = aio.Server(worker_threads=1)
        await srv.stop()  # never started
        for _ in range(2):
            await srv.start()
            with pytest.raises(iocpsrv.InvalidState):
                await srv.start()
            c = await AClient.connect(srv.port)
            c.send(b"x")
            ev = None
            async for ev in srv:
                if ev.type is EventType.PACKET:
                    break
            assert ev.data == b"x"
            srv.send(ev.conn, b"y")
            assert await c.recv() == b"y"
            await c.close()
            await srv.stop()
            with pytest.raises(iocpsrv.ServerStopped):
                srv.send(ev.conn, b"z")
        await srv.close()
        with pytest.raises(iocpsrv.ServerStopped):
            await srv.start()

    run(main())


def test_iterating_a_protocol_server_is_an_error():
    srv = aio.Server(protocol_factory=aio.Protocol)
    try:
        with pytest.raises(TypeError):
            srv.__aiter__()
    finally:
        asyncio.run(srv.close())


@needs_batch_sends
@pytest.mark.parametrize("batch", [0, 1])
def test_sends_from_anywhere_are_written(batch):
    """With pull_batch_sends, loop-thread sends wait for the next poll: the server must
    poll soon even when no event comes. Sends from other threads go out at once."""
    import threading

    class Quiet(aio.Protocol):
        def connection_made(self, connection):
            self.connection = connection
            loop = asyncio.get_running_loop()
            loop.call_later(0.05, connection.send, b"from a timer")
            loop.call_later(0.1, lambda: connection.server.broadcast(b"broadcast"))
            loop.call_later(0.15, connection.sendv, [b"send", b"v"])
            threading.Thread(target=connection.send, args=(b"from a thread",)).start()

    async def main():
        async with aio.Server(protocol_factory=Quiet, pull_batch_sends=batch,
                              worker_threads=2) as srv:
            assert srv.get_option("pull_batch_sends") == batch
            c = await AClient.connect(srv.port)
            got = {await c.recv() for _ in range(4)}
            assert got == {b"from a timer", b"broadcast", b"sendv", b"from a thread"}
            await asyncio.sleep(0.05)
            ids = srv.connections()
            srv.send(ids[0], b"from a coroutine")  # no event follows this one
            assert await c.recv() == b"from a coroutine"
            await c.close()

    run(main())


@needs_batch_sends
@pytest.mark.parametrize("batch", [0, 1])
def test_async_for_echo_with_and_without_batched_sends(batch):
    async def main():
        log = []
        async with aio.Server(worker_threads=2, pull_batch_sends=batch) as srv:
            task = asyncio.create_task(echo_events(srv, log))
            c = await AClient.connect(srv.port)
            for i in range(300):  # ping-pong: each echo must go out with no later event
                c.send(b"%d" % i)
                assert await c.recv() == b"%d" % i
            await c.close()
        await task
        return [ev.data for ev in log if ev.type is EventType.PACKET]

    assert run(main()) == [b"%d" % i for i in range(300)]


@pytest.mark.parametrize("mode", ["protocol", "events"])
def test_client_fin_after_its_echoes_closes_promptly(mode):
    """A FIN that arrives alone (after the server handled everything before it) must end
    the connection without any further event to wake the loop."""
    lost = []

    class Echo(aio.Protocol):
        def packet_received(self, data):
            self.connection.send(data)

        def connection_lost(self, reason):
            lost.append(reason)

    async def main():
        factory = Echo if mode == "protocol" else None
        async with aio.Server(protocol_factory=factory, worker_threads=2) as srv:
            if factory is None:
                async def consume():
                    async for ev in srv:
                        if ev.type is EventType.PACKET:
                            srv.send(ev.conn, ev.data)
                        elif ev.type is EventType.DISCONNECT:
                            lost.append(ev.reason)
                task = asyncio.create_task(consume())
            loop = asyncio.get_running_loop()
            for i in range(10):
                c = await AClient.connect(srv.port)
                c.send(b"ping %d" % i)
                assert await c.recv() == b"ping %d" % i
                await asyncio.sleep(0.01)  # the server is idle again
                t0 = loop.time()
                c.w.write_eof()  # FIN: the server closes once it has replied
                assert await c.r.read() == b""
                assert loop.time() - t0 < 5.0
                await c.close()
                while len(lost) < i + 1:
                    await asyncio.sleep(0.005)
        if factory is None:
            await task

    run(main())
    assert lost == [Reason.PEER_CLOSED] * 10


# ---- packed batches on the loop: awaitable back-pressure, packets_received ----------


async def until(pred, timeout=TIMEOUT):
    """Wait for state that no event announces (the server's bookkeeping)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


class Accepting(aio.Protocol):
    """Hands each new Connection to the test through a queue."""

    accepted: asyncio.Queue

    def connection_made(self, connection):
        self.connection = connection
        Accepting.accepted.put_nowait(connection)


async def slow_reader(port, rcvbuf=4096):
    """A client socket that reads nothing until asked (small receive buffer)."""
    loop = asyncio.get_running_loop()
    sock = __import__("socket").socket()
    sock.setsockopt(__import__("socket").SOL_SOCKET, __import__("socket").SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    return sock


async def read_packets(sock, count):
    loop = asyncio.get_running_loop()
    buf = bytearray()
    out = []
    while len(out) < count:
        chunk = await loop.sock_recv(sock, 1 << 16)
        assert chunk, "closed early"
        buf += chunk
        while len(buf) >= 4 and len(buf) >= 4 + HDR.unpack_from(buf)[0]:
            (size,) = HDR.unpack_from(buf)
            out.append(bytes(buf[4:4 + size]))
            del buf[:4 + size]
    return out


@pytest.mark.parametrize("how", ["server.send_async", "connection.send_async", "drain"])
def test_send_async_waits_for_room_then_resumes(how):
    """A sender that awaits room instead of catching SendQueueFull: it is held while the
    client does not read, and finishes, with every packet in order, once it reads."""
    chunks = [b"%05d" % i + b"-" * 995 for i in range(400)]  # 400 kB, queue limit 8 KiB

    async def send_all(srv, c):
        for chunk in chunks:
            if how == "server.send_async":
                await srv.send_async(c.id, chunk)
            elif how == "connection.send_async":
                await c.send_async(chunk)
            else:  # the asyncio idiom: write, then await the drain
                c.send(chunk)
                await c.protocol.drain()
        return "done"

    async def main():
        Accepting.accepted = asyncio.Queue()
        async with aio.Server(protocol_factory=Accepting, worker_threads=2,
                              send_queue_limit=8192, sndbuf=4096) as srv:
            sock = await slow_reader(srv.port)
            c = await Accepting.accepted.get()
            sender = asyncio.create_task(send_all(srv, c))
            await until(lambda: c.id in srv._drain_waiters)  # it waits for room
            assert not sender.done()
            assert srv.stats().send_queue_rejections >= 1
            got = await read_packets(sock, len(chunks))  # now the client reads
            assert await sender == "done"
            await srv.drain(c.id)  # room now: returns at once
            sock.close()
            return got

    assert run(main()) == chunks


def test_drain_raises_when_the_connection_ends_while_waiting():
    async def main():
        Accepting.accepted = asyncio.Queue()
        async with aio.Server(protocol_factory=Accepting, worker_threads=2,
                              send_queue_limit=8192, sndbuf=4096) as srv:
            sock = await slow_reader(srv.port)
            c = await Accepting.accepted.get()

            async def flood():
                while True:
                    await c.send_async(b"f" * 1000)

            sender = asyncio.create_task(flood())
            await until(lambda: c.id in srv._drain_waiters)
            sock.setsockopt(__import__("socket").SOL_SOCKET, __import__("socket").SO_LINGER,
                            struct.pack("ii", 1, 0))
            sock.close()  # reset: the connection ends while the sender waits
            with pytest.raises(iocpsrv.ConnectionNotFound):
                await sender

    run(main())


def test_packets_received_gets_each_connections_packets_as_lists():
    lists = []

    class BatchEcho(aio.Protocol):
        def packets_received(self, packets):
            lists.append(list(packets))
            cid = self.connection.id
            assert self.connection.server.send_many([(cid, p) for p in packets]) == []

    async def main():
        async with aio.Server(protocol_factory=BatchEcho, worker_threads=2) as srv:
            clients = [await AClient.connect(srv.port) for _ in range(5)]
            for i, c in enumerate(clients):
                c.w.write(b"".join(HDR.pack(4) + struct.pack("<HH", i, k) for k in range(200)))
            for i, c in enumerate(clients):
                for k in range(200):
                    assert struct.unpack("<HH", await c.recv()) == (i, k)
                await c.close()

    run(main())
    assert sum(map(len, lists)) == 1000
    assert max(map(len, lists)) > 1  # several packets per call
    for packets in lists:  # one connection per list
        assert len({struct.unpack("<HH", p)[0] for p in packets}) == 1


def test_a_refused_deferred_send_reaches_the_protocol():
    failed = []

    class Fragile(aio.Protocol):
        def packet_received(self, data):
            self.connection.send(b"lost")
            srv = self.connection.server  # ends it behind the binding's back, as a reset
            srv._lib.iocpsrv_disconnect(srv._h, self.connection.id, n.IOCPSRV_CLOSE_ABORT)

        def send_failed(self, data, error):
            failed.append((data, type(error)))

    async def main():
        async with aio.Server(protocol_factory=Fragile, worker_threads=2) as srv:
            c = await AClient.connect(srv.port)
            c.send(b"go")
            assert await c.closed_by_server()
            await until(lambda: failed)
            await c.close()

    run(main())
    assert failed == [(b"lost", iocpsrv.ConnectionNotFound)]


def test_on_send_failed_for_the_async_for_server():
    failed = []

    async def main():
        async with aio.Server(worker_threads=2,
                              on_send_failed=lambda *a: failed.append(a)) as srv:
            c = await AClient.connect(srv.port)
            c.send(b"go")
            async for ev in srv:
                if ev.type is EventType.PACKET:
                    srv.send(ev.conn, b"lost")  # deferred (loop thread)
                    srv._lib.iocpsrv_disconnect(srv._h, ev.conn, n.IOCPSRV_CLOSE_ABORT)
                    conn = ev.conn
                elif ev.type is EventType.DISCONNECT:
                    break
            await until(lambda: failed)
            await c.close()
            return conn

    conn = run(main())
    ((c, data, error),) = failed
    assert (c, data, type(error)) == (conn, b"lost", iocpsrv.ConnectionNotFound)


def test_sends_past_the_queue_limit_from_a_coroutine_are_kept_until_drained():
    """Plain send()s that never wait: the engine refuses most of them when they are
    handed over; they are kept, in order, and go out as the client reads."""
    chunks = [b"%05d" % i + b"+" * 995 for i in range(400)]

    async def main():
        Accepting.accepted = asyncio.Queue()
        async with aio.Server(protocol_factory=Accepting, worker_threads=2,
                              send_queue_limit=8192, sndbuf=4096) as srv:
            sock = await slow_reader(srv.port)
            c = await Accepting.accepted.get()
            for chunk in chunks:
                c.send(chunk)  # deferred: handed over together soon after
            await until(lambda: c.id in srv._stalled)
            with pytest.raises(iocpsrv.SendQueueFull):
                c.send(b"no room")
            got = await read_packets(sock, len(chunks))
            sock.close()
            return got

    assert run(main()) == chunks
