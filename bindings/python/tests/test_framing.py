"""Framing options seen from a real client: 2/4-byte headers, both byte orders, raw."""

import struct

import pytest

import iocpsrv

from conftest import Client, Recorder


@pytest.mark.parametrize("framing", ["len32_le", "len32_be", "len16_le", "len16_be"])
def test_framed_echo(framing):
    rec = Recorder()
    with iocpsrv.Server(worker_threads=2, framing=framing, **rec.callbacks()) as srv:
        rec.server = srv
        with Client(srv.port, framing=framing) as c:
            payloads = [b"", b"a", b"hello", bytes(range(256)) * 100, b"z" * 65535]
            for p in payloads:
                c.send(p)
            for p in payloads:
                assert c.recv() == p
            # header split over writes, several packets glued in one write
            glued = b"".join(c.frame(p) for p in (b"one", b"two", b"three"))
            for i in range(len(glued)):
                c.send_raw(glued[i:i + 1])
            assert [c.recv() for _ in range(3)] == [b"one", b"two", b"three"]
        assert rec.wait(lambda r: r.count("disconnect") == 1)
    assert [e[2] for e in rec.events if e[0] == "packet"] == payloads + [b"one", b"two",
                                                                       b"three"]


def test_byte_order_is_on_the_wire():
    with iocpsrv.Server(worker_threads=1, framing="len32_be",
                        on_packet=lambda c, d: srv.send(c, d)) as srv:
        with Client(srv.port, framing="raw") as c:
            c.send_raw(b"\x00\x00\x00\x03abc")
            assert c.recv_exact(7) == b"\x00\x00\x00\x03abc"
    with iocpsrv.Server(worker_threads=1, framing="len16_le",
                        on_packet=lambda c, d: srv.send(c, d)) as srv:
        with Client(srv.port, framing="raw") as c:
            c.send_raw(b"\x02\x00hi")
            assert c.recv_exact(4) == b"\x02\x00hi"


def test_len16_refuses_larger_sends():
    rec = Recorder()
    with iocpsrv.Server(worker_threads=1, framing="len16_le", **rec.callbacks()) as srv:
        with Client(srv.port, framing="len16_le") as c:
            assert rec.wait(lambda r: r.count("connect") == 1)
            conn = rec.conns()[0]
            with pytest.raises(iocpsrv.PacketTooLarge):
                srv.send(conn, b"x" * 65536)
            srv.send(conn, b"x" * 65535)
            assert c.recv() == b"x" * 65535


def test_raw_mode_delivers_bytes_as_they_arrive():
    rec = Recorder()
    with iocpsrv.Server(worker_threads=2, framing="raw", **rec.callbacks()) as srv:
        rec.server = srv
        with Client(srv.port, framing="raw") as c:
            data = bytes(range(256)) * 400
            c.send_raw(data)
            assert c.recv_exact(len(data)) == data  # echoed without any header
            c.send_raw(struct.pack("<I", 10**9))  # would be a huge header if framed
            assert c.recv_exact(4) == struct.pack("<I", 10**9)
        assert rec.wait(lambda r: r.count("disconnect") == 1)
    received = b"".join(e[2] for e in rec.events if e[0] == "packet")
    assert received == data + struct.pack("<I", 10**9)
    assert all(len(e[2]) > 0 for e in rec.events if e[0] == "packet")
