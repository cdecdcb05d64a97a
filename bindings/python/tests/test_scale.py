"""Big packets and many clients, through the threaded and the asyncio servers."""

import asyncio
import hashlib
import os
import struct
import threading

import iocpsrv
import iocpsrv.aio as aio
from iocpsrv import EventType

from conftest import TIMEOUT, Client, Recorder, wait_until

MIB = 1 << 20


def test_8_mib_packets_intact():
    rec = Recorder()
    with iocpsrv.Server(worker_threads=2, max_packet_size=16 * MIB,
                        send_queue_limit=64 * MIB, **rec.callbacks()) as srv:
        rec.server = srv
        payloads = [os.urandom(8 * MIB), os.urandom(8 * MIB - 1), b"small", os.urandom(8 * MIB)]
        with Client(srv.port) as c:
            # send from a thread while reading, so neither direction's buffers deadlock
            t = threading.Thread(target=lambda: [c.send(p) for p in payloads])
            t.start()
            for p in payloads:
                got = c.recv()
                assert len(got) == len(p)
                assert hashlib.sha256(got).digest() == hashlib.sha256(p).digest()
            t.join(TIMEOUT)
    got = [e[2] for e in rec.events if e[0] == "packet"]
    assert [hashlib.sha256(g).digest() for g in got] == \
        [hashlib.sha256(p).digest() for p in payloads]


def test_8_mib_packet_sent_by_the_server_from_a_memoryview():
    with iocpsrv.Server(worker_threads=2, max_packet_size=16 * MIB) as srv:
        ids = []
        got = threading.Event()
        srv.on_connect = lambda conn, peer: (ids.append(conn), got.set())
        srv.stop()
        srv.start()
        with Client(srv.port) as c:
            assert got.wait(TIMEOUT)
            big = bytearray(os.urandom(8 * MIB))
            srv.send(ids[0], memoryview(big))
            assert c.recv() == big


async def _many_clients(port, nclients, npackets):
    async def client(i):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        for k in range(npackets):
            payload = struct.pack("<II", i, k) + bytes(k % 97)
            w.write(struct.pack("<I", len(payload)) + payload)
        for k in range(npackets):
            (n,) = struct.unpack("<I", await r.readexactly(4))
            data = await r.readexactly(n)
            assert struct.unpack_from("<II", data) == (i, k)
            assert len(data) == 8 + k % 97
        w.close()
        await w.wait_closed()

    await asyncio.wait_for(asyncio.gather(*(client(i) for i in range(nclients))), TIMEOUT)


def test_200_concurrent_clients_threaded_server():
    rec = Recorder()
    with iocpsrv.Server(worker_threads=2, listen_backlog=512, **rec.callbacks()) as srv:
        rec.server = srv
        asyncio.run(_many_clients(srv.port, 200, 50))
        assert rec.wait(lambda r: r.count("disconnect") == 200)
        assert wait_until(lambda: srv.stats().packets_in == 200 * 50)
        assert srv.stats().connections_total == 200
    by = rec.check_order()
    assert len(by) == 200


def test_200_concurrent_clients_asyncio_server():
    class Echo(aio.Protocol):
        def packet_received(self, data):
            self.connection.send(data)

    async def main():
        async with aio.Server(protocol_factory=Echo, worker_threads=2,
                              listen_backlog=512) as srv:
            await _many_clients(srv.port, 200, 50)
            deadline = asyncio.get_running_loop().time() + TIMEOUT
            while srv.stats().connections_now or srv.stats().packets_in < 200 * 50:
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.01)
            return srv.stats()

    st = asyncio.run(main())
    assert st.connections_total == 200 and st.packets_in == 200 * 50


def test_8_mib_packets_asyncio_server():
    async def main():
        async with aio.Server(worker_threads=2, max_packet_size=16 * MIB) as srv:
            async def consume():
                async for ev in srv:
                    if ev.type is EventType.PACKET:
                        srv.send(ev.conn, ev.data)
            task = asyncio.create_task(consume())
            r, w = await asyncio.open_connection("127.0.0.1", srv.port)
            p = os.urandom(8 * MIB)
            w.write(struct.pack("<I", len(p)) + p)
            (n,) = struct.unpack("<I", await r.readexactly(4))
            assert n == len(p) and await r.readexactly(n) == p
            w.close()
        await task

    asyncio.run(asyncio.wait_for(main(), TIMEOUT))
