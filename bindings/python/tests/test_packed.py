"""Packed batches: the record formats, the poll buffer, deferred sends and their
refusals, and the batch API of the threaded server."""

import array
import logging
import socket
import struct
import threading

import pytest

import iocpsrv
from iocpsrv import _native as n
from iocpsrv import _packed as packed
from iocpsrv import Reason

from conftest import TIMEOUT, Client, Recorder, wait_until

ffi = n.ffi


# ---- the raw formats, against the engine ---------------------------------------------


class RawServer:
    """A pull-mode engine with no binding logic: polls into a PollBuffer."""

    def __init__(self, options=None):
        self.lib = n.library()
        pp = ffi.new("iocpsrv_t **")
        assert self.lib.iocpsrv_create(pp, ffi.NULL) == 0
        self.h = pp[0]
        opts = {n.IOCPSRV_OPT_PULL_MODE: 1, **(options or {})}
        for opt, value in opts.items():
            assert self.lib.iocpsrv_set_option(self.h, opt, value) == 0
        assert self.lib.iocpsrv_listen(self.h, b"127.0.0.1", 0) == 0
        self.port = self.lib.iocpsrv_port(self.h)
        self.buf = packed.PollBuffer(4096)
        self.events = []

    def poll_until(self, pred, max_packet=1 << 20):
        """Poll (growing the buffer as the servers do) until pred(self.events)."""
        deadline = TIMEOUT
        import time
        end_at = time.monotonic() + deadline
        while not pred(self.events):
            assert time.monotonic() < end_at, self.events
            end = self.buf.poll(self.lib, self.h, 100, max_packet)
            assert end >= 0
            assert end % 8 == 0
            self.events += list(packed.iter_events(self.buf, end))
        return self.events

    def close(self):
        self.lib.iocpsrv_stop(self.h, 0)
        self.lib.iocpsrv_destroy(self.h)


@pytest.fixture
def raw():
    s = RawServer()
    yield s
    s.close()


def kinds(events):
    return [e[0] for e in events]


def test_every_event_type_parses(raw):
    with Client(raw.port) as c:
        local = "%s:%d" % c.sock.getsockname()
        c.send(b"hello")
        c.send(b"")  # a zero-length packet is an event with no payload
        c.send(b"x" * 13)
        ev = raw.poll_until(lambda e: kinds(e).count(n.IOCPSRV_EVENT_PACKET) == 3)
    raw.poll_until(lambda e: n.IOCPSRV_EVENT_DISCONNECT in kinds(e))
    connect, p1, p2, p3, *rest = raw.events
    conn = connect[2]
    assert connect[0] == n.IOCPSRV_EVENT_CONNECT and connect[1] == 0
    assert connect[3] == local.encode()  # the peer's address text, no NUL
    assert [p[0] for p in (p1, p2, p3)] == [n.IOCPSRV_EVENT_PACKET] * 3
    assert [p[3] for p in (p1, p2, p3)] == [b"hello", b"", b"x" * 13]
    assert {p[2] for p in (p1, p2, p3)} == {conn}
    (disconnect,) = [e for e in rest if e[0] == n.IOCPSRV_EVENT_DISCONNECT]
    assert disconnect[1] == Reason.PEER_CLOSED and disconnect[2] == conn and disconnect[3] == b""


def test_drain_record():
    raw = RawServer({n.IOCPSRV_OPT_SEND_QUEUE_LIMIT: 4096, n.IOCPSRV_OPT_SNDBUF: 4096})
    try:
        with Client(raw.port) as c:
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            (connect,) = raw.poll_until(lambda e: e)
            conn = connect[2]
            chunk = b"d" * 2000
            sent = 0
            while raw.lib.iocpsrv_send(raw.h, conn, chunk, len(chunk)) == 0:
                sent += 1
                assert sent < 100000
            for _ in range(sent):
                assert c.recv() == chunk
            ev = raw.poll_until(lambda e: n.IOCPSRV_EVENT_DRAIN in kinds(e))
        drain = ev[kinds(ev).index(n.IOCPSRV_EVENT_DRAIN)]
        assert drain[1:] == (0, conn, b"")
    finally:
        raw.close()


def test_poll_buffer_grows_for_a_max_size_packet(raw):
    """A buffer too small for the next event gets IOCPSRV_ENOSPACE with the event left
    queued; PollBuffer grows to 24 + align8(max_packet_size) and polls again."""
    big = 100_003  # not a multiple of 8
    raw.buf = packed.PollBuffer(1024)
    with Client(raw.port) as c:
        c.send(b"a" * big)
        c.send(b"b")
        raw.poll_until(lambda e: kinds(e).count(n.IOCPSRV_EVENT_PACKET) == 2,
                       max_packet=big)
    assert raw.buf.capacity == packed.event_record_size(big) == 24 + 100_008
    payloads = [e[3] for e in raw.events if e[0] == n.IOCPSRV_EVENT_PACKET]
    assert payloads == [b"a" * big, b"b"]


@pytest.mark.parametrize("mode", ["on_packet", "on_batch"])
def test_server_takes_packets_of_max_packet_size(mode):
    """Through the threaded server: its 64 KiB buffer grows once to the largest
    packet's record, and both the largest packet and those around it come intact."""
    top = 200_001
    got = []

    def on_packet(conn, data):
        got.append(data)

    def on_batch(packets):
        got.extend(data for _, data in packets)

    callbacks = dict(on_packet=on_packet) if mode == "on_packet" else dict(on_batch=on_batch)
    with iocpsrv.Server(worker_threads=2, max_packet_size=top, batch_size=1,
                        **callbacks) as srv:
        assert srv._poll_buffer.capacity == 64 * 1024
        with Client(srv.port) as c:
            payloads = [b"s", b"m" * top, b"", b"n" * (top - 1), b"t"]
            c.send_raw(b"".join(c.frame(p) for p in payloads))
            assert wait_until(lambda: len(got) == len(payloads))
        assert srv._poll_buffer.capacity == packed.event_record_size(top) == 24 + 200_008
    assert got == payloads


def test_poll_with_a_limit_leaves_a_larger_event_queued(raw):
    with Client(raw.port) as c:
        raw.poll_until(lambda e: e)  # the CONNECT
        c.send(b"z" * 100)
        import time
        deadline = time.monotonic() + TIMEOUT
        while True:  # the packet, once queued, does not fit 24 bytes
            got = raw.buf.poll(raw.lib, raw.h, 50, 1 << 20, limit=24)
            if got == n.IOCPSRV_ENOSPACE:
                break
            assert got == 0 and time.monotonic() < deadline
        ev = raw.poll_until(lambda e: n.IOCPSRV_EVENT_PACKET in kinds(e))
        assert ev[-1][3] == b"z" * 100


@pytest.mark.parametrize("lengths", [[0], [0, 0, 0], list(range(18)), [7, 8, 9, 300, 0]])
def test_send_records_layout(lengths):
    sends = [((1 << 63) + i, bytes([65 + i % 26]) * length) for i, length in enumerate(lengths)]
    buf = packed.build_send_records(sends)
    assert len(buf) == sum(packed.send_record_size(len(d)) for _, d in sends)
    assert len(buf) % 8 == 0
    assert list(packed.iter_send_records(buf)) == sends
    offset = 0
    for conn, data in sends:  # header fields, payload, zero padding
        assert struct.unpack_from("<QII", buf, offset) == (conn, len(data), 0)
        start = offset + 16
        assert bytes(buf[start:start + len(data)]) == data
        offset = start + packed.align8(len(data))
        assert bytes(buf[start + len(data):offset]) == bytes(offset - start - len(data))


def test_send_records_reach_the_client(raw):
    """Zero-length and unaligned payloads, several per connection, one call."""
    with Client(raw.port) as a, Client(raw.port) as b:
        raw.poll_until(lambda e: kinds(e).count(n.IOCPSRV_EVENT_CONNECT) == 2)
        by_peer = {e[3].decode(): e[2] for e in raw.events}  # connects come in any order
        ca, cb = (by_peer["%s:%d" % x.sock.getsockname()] for x in (a, b))
        sends = [(ca, b""), (cb, b"b1"), (ca, b"a" * 9), (cb, b""), (ca, b"a" * 8)]
        refused = packed.SendRecords().submit(raw.lib, raw.h, sends)
        assert refused == []
        raw.buf.poll(raw.lib, raw.h, 0, 1 << 20)  # writes them (if batched)
        got_a = [a.recv() for _ in range(3)]
        got_b = [b.recv() for _ in range(2)]
    assert got_a == [b"", b"a" * 9, b"a" * 8]
    assert got_b == [b"b1", b""]


def test_refused_records_are_reported_with_their_index(raw):
    with Client(raw.port) as c:
        raw.poll_until(lambda e: e)
        conn = raw.events[0][2]
        dead = conn + 12345  # never a connection
        sends = [(conn, b"1"), (dead, b"x"), (conn, b"2"), (dead, b"y")]
        refused = packed.SendRecords().submit(raw.lib, raw.h, sends)
        assert refused == [(1, n.IOCPSRV_ENOTCONN), (3, n.IOCPSRV_ENOTCONN)]
        raw.buf.poll(raw.lib, raw.h, 0, 1 << 20)
        assert [c.recv(), c.recv()] == [b"1", b"2"]


# ---- the threaded server: deferred sends ---------------------------------------------


def test_sends_in_a_callback_go_out_in_one_hand_over_per_batch():
    """Every send made while a batch is handled is handed over once, at its end."""
    calls = []
    rec = Recorder()

    def on_packet(conn, data):
        for i in range(3):
            srv.send(conn, data + b"%d" % i)

    with iocpsrv.Server(worker_threads=2, on_packet=on_packet,
                        on_connect=rec.on_connect) as srv:
        real = srv._send_records

        class Counting:
            def submit(self, lib, h, sends):
                calls.append(len(sends))
                return real.submit(lib, h, sends)

        srv._send_records = Counting()
        with Client(srv.port) as c:
            c.send_raw(b"".join(c.frame(b"p%d" % i) for i in range(50)))
            got = [c.recv() for _ in range(150)]
    assert got == [b"p%d%d" % (i, k) for i in range(50) for k in range(3)]
    assert sum(calls) == 150
    assert len(calls) < 150  # batched: each hand-over carried several
    assert max(calls) > 3


def test_a_send_refused_with_queue_full_at_hand_over_is_kept_and_sent_after_drain():
    """Deferred sends the engine refuses with SendQueueFull are not lost: they wait for
    the drain, in order; meanwhile sends to that connection raise SendQueueFull; on_drain
    comes after they are handed over again."""
    size, count = 1000, 300
    result = {}
    drained = threading.Event()

    def on_packet(conn, data):
        if data == b"burst":
            for i in range(count):  # deferred: none of these raises
                srv.send(conn, b"%05d" % i + b"." * (size - 5))
        elif data == b"probe":
            try:
                srv.send(conn, b"late")
                result["probe"] = "sent"
            except iocpsrv.SendQueueFull:
                result["probe"] = "SendQueueFull"

    def on_drain(conn):
        result.setdefault("drains", 0)
        result["drains"] += 1
        srv.send(conn, b"after-drain")
        drained.set()

    with iocpsrv.Server(worker_threads=2, send_queue_limit=8192, sndbuf=4096,
                        on_packet=on_packet, on_drain=on_drain) as srv:
        with Client(srv.port) as c:
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            c.send(b"burst")
            assert wait_until(lambda: srv._stalled)  # refused at hand-over: kept
            c.send(b"probe")
            assert wait_until(lambda: "probe" in result)
            assert result["probe"] == "SendQueueFull"
            got = [c.recv() for _ in range(count)]
            assert drained.wait(TIMEOUT)
            assert c.recv() == b"after-drain"
    assert [g[:5] for g in got] == [b"%05d" % i for i in range(count)]
    assert all(len(g) == size for g in got)
    assert result["drains"] >= 1


def test_refusal_at_hand_over_goes_to_on_send_failed():
    """The connection ended between the send and the end of the batch (here: closed in
    the engine behind the binding's back, as a peer reset would be)."""
    failed = []

    def on_packet(conn, data):
        srv.send(conn, b"lost")
        srv._lib.iocpsrv_disconnect(srv._h, conn, n.IOCPSRV_CLOSE_ABORT)

    def on_send_failed(conn, data, error):
        failed.append((conn, data, type(error), threading.current_thread().name))

    rec = Recorder()
    with iocpsrv.Server(worker_threads=2, on_packet=on_packet, on_connect=rec.on_connect,
                        on_send_failed=on_send_failed) as srv:
        port = srv.port
        with Client(port) as c:
            c.send(b"go")
            assert c.closed_by_server()
        assert wait_until(lambda: failed)
    (conn,) = rec.conns()
    assert failed == [(conn, b"lost", iocpsrv.ConnectionNotFound, f"iocpsrv-dispatch-{port}")]


def test_refusal_at_hand_over_is_logged_without_a_hook(caplog):
    def on_packet(conn, data):
        srv.send(conn, b"lost")
        srv._lib.iocpsrv_disconnect(srv._h, conn, n.IOCPSRV_CLOSE_ABORT)

    with caplog.at_level(logging.WARNING, logger="iocpsrv"):
        with iocpsrv.Server(worker_threads=2, on_packet=on_packet) as srv:
            with Client(srv.port) as c:
                c.send(b"go")
                assert c.closed_by_server()
            assert wait_until(lambda: any("not sent" in r.getMessage()
                                          for r in caplog.records))
    (record,) = [r for r in caplog.records if "not sent" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert "deferred send of 4 bytes" in record.getMessage()


def test_errors_known_without_the_engine_are_raised_at_once():
    """Deferring changes nothing for what the binding knows: a closed connection, an
    unknown id, a payload over max_packet_size."""
    seen = {}

    def on_packet(conn, data):
        srv.disconnect(conn)
        for name, target, payload in (("closing", conn, b"x"), ("unknown", 5, b"x"),
                                      ("too big", None, b"y" * 2000)):
            try:
                srv.send(conn if target is None else target, payload)
                seen[name] = None
            except iocpsrv.IocpsrvError as e:
                seen[name] = type(e)

    with iocpsrv.Server(worker_threads=2, max_packet_size=1000, on_packet=on_packet) as srv:
        with Client(srv.port) as c:
            c.send(b"go")
            assert c.closed_by_server()
        assert wait_until(lambda: len(seen) == 3)
    assert seen == {"closing": iocpsrv.ConnectionNotFound,
                    "unknown": iocpsrv.ConnectionNotFound,
                    "too big": iocpsrv.PacketTooLarge}


def test_a_payload_over_the_limit_raises_at_once():
    seen = []

    def on_packet(conn, data):
        try:
            srv.send(conn, b"y" * 2000)
        except iocpsrv.PacketTooLarge as e:
            seen.append(e)
        srv.send(conn, b"ok")

    with iocpsrv.Server(worker_threads=2, max_packet_size=1000, on_packet=on_packet) as srv:
        with Client(srv.port) as c:
            c.send(b"go")
            assert c.recv() == b"ok"
    assert len(seen) == 1


def test_a_graceful_disconnect_after_deferred_sends_writes_them_first():
    def on_packet(conn, data):
        srv.send(conn, b"bye 1")
        srv.send(conn, b"bye 2")
        srv.disconnect(conn)

    with iocpsrv.Server(worker_threads=2, on_packet=on_packet) as srv:
        with Client(srv.port) as c:
            c.send(b"go")
            assert [c.recv(), c.recv()] == [b"bye 1", b"bye 2"]
            assert c.closed_by_server()


def test_a_mutable_payload_is_copied_when_sent():
    def on_packet(conn, data):
        buf = bytearray(b"first")
        srv.send(conn, buf)
        buf[:] = b"later"  # after send() returned: must not change what goes out
        srv.send(conn, memoryview(buf))

    with iocpsrv.Server(worker_threads=2, on_packet=on_packet) as srv:
        with Client(srv.port) as c:
            c.send(b"go")
            assert [c.recv(), c.recv()] == [b"first", b"later"]


def test_only_bytes_likes_are_sent():
    """bytes() would turn an int into zero bytes and a list of ints into bytes: a
    deferred send must refuse them as an immediate one does (TypeError)."""
    errors = []

    def on_packet(conn, data):
        for bad in (3, [65, 66], "text"):
            try:
                srv.send(conn, bad)
            except TypeError:
                errors.append(bad)
        srv.send(conn, array.array("H", [0x4241]))  # any buffer: its bytes
        srv.send(conn, b"end")

    with iocpsrv.Server(worker_threads=2, on_packet=on_packet) as srv:
        with Client(srv.port) as c:
            c.send(b"go")
            assert [c.recv(), c.recv()] == [b"AB", b"end"]
    assert errors == [3, [65, 66], "text"]


def test_another_threads_send_goes_behind_the_deferred_ones():
    """A send from a thread that does not poll, made after the dispatcher's (deferred)
    send to the same connection, must not overtake it."""

    def on_packet(conn, data):
        srv.send(conn, b"from the callback")
        t = threading.Thread(target=srv.send, args=(conn, b"from another thread"))
        t.start()
        t.join(TIMEOUT)  # done before the batch ends: it had to go behind

    with iocpsrv.Server(worker_threads=2, on_packet=on_packet) as srv:
        with Client(srv.port) as c:
            c.send(b"go")
            assert c.recv() == b"from the callback"
            assert c.recv() == b"from another thread"


def test_sendv_broadcast_and_pending_see_the_deferred_sends_first():
    seen = {}

    def on_packet(conn, data):
        srv.send(conn, b"1")
        srv.sendv(conn, [b"2", b"2"])
        srv.broadcast(b"3")
        seen["pending"] = srv.pending(conn) + srv.info(conn).packets_out

    with iocpsrv.Server(worker_threads=2, on_packet=on_packet) as srv:
        with Client(srv.port) as c:
            c.send(b"go")
            assert [c.recv() for _ in range(3)] == [b"1", b"22", b"3"]
    assert seen["pending"] >= 3  # the deferred send was counted by then


# ---- the threaded server: the batch API ----------------------------------------------


def test_on_batch_gets_lists_in_order_between_connect_and_disconnect():
    log = []
    lock = threading.Lock()

    def on_connect(conn, peer):
        with lock:
            log.append(("connect", conn))

    def on_batch(packets):
        assert type(packets) is list
        with lock:
            log.append(("batch", [(c, bytes(d)) for c, d in packets]))
        assert all(type(d) is bytes for _, d in packets)
        srv.send_many(packets)

    def on_disconnect(conn, reason):
        with lock:
            log.append(("disconnect", conn))

    with iocpsrv.Server(worker_threads=2, on_connect=on_connect, on_batch=on_batch,
                        on_disconnect=on_disconnect) as srv:
        clients = [Client(srv.port) for _ in range(20)]
        for i, c in enumerate(clients):
            c.send_raw(b"".join(c.frame(b"%d:%d" % (i, k)) for k in range(30)))
        for i, c in enumerate(clients):
            assert [c.recv() for _ in range(30)] == [b"%d:%d" % (i, k) for k in range(30)]
            c.close()
        assert wait_until(lambda: sum(e[0] == "disconnect" for e in log) == 20)
    by_conn = {}
    for kind, value in log:
        if kind == "batch":
            for conn, data in value:
                by_conn.setdefault(conn, []).append(("packet", data))
        else:
            by_conn.setdefault(value, []).append((kind, None))
    assert len(by_conn) == 20
    for events in by_conn.values():
        assert events[0][0] == "connect" and events[-1][0] == "disconnect"
        assert [e[0] for e in events[1:-1]] == ["packet"] * 30
        datas = [e[1] for e in events[1:-1]]
        assert [int(d.split(b":")[1]) for d in datas] == list(range(30))
    # many connections' packets came in one batch at least once
    assert max(len({c for c, _ in value}) for kind, value in log if kind == "batch") > 1


@pytest.mark.parametrize("sizes", [[10] * 200, [1, 0, 17, 8, 300] * 40],
                         ids=["same-size", "mixed-sizes"])
def test_on_batch_echo_with_same_and_mixed_sizes(sizes):
    """Both ways a batch is read: the C loops for same-size packets, the record loop
    otherwise."""
    batches = []

    def on_batch(packets):
        batches.append(len(packets))
        assert srv.send_many(packets) == []

    with iocpsrv.Server(worker_threads=2, on_batch=on_batch) as srv:
        with Client(srv.port) as c:
            payloads = [bytes([i % 256]) * s for i, s in enumerate(sizes)]
            c.send_raw(b"".join(c.frame(p) for p in payloads))
            assert [c.recv() for _ in payloads] == payloads
    assert sum(batches) == len(sizes)


def test_uniform_reader_accepts_only_same_size_packet_batches(raw):
    with Client(raw.port) as c:
        raw.poll_until(lambda e: e)
        conn = raw.events[0][2]
        head = packed.EVENT_HEADER
        fill = raw.buf.chunks

        def put(records):
            data = b"".join(head.pack(len(p), kind, 0, conn, 0) + p + bytes(-len(p) & 7)
                            for kind, p in records)
            fill[0:len(data)] = data
            return len(data)

        P = n.IOCPSRV_EVENT_PACKET
        end = put([(P, b"abc")] * 5)
        assert packed.uniform_packets(raw.buf, end) == [(conn, b"abc")] * 5
        assert packed.uniform_packets(raw.buf, put([(P, b"abc"), (P, b"abd")])) == \
            [(conn, b"abc"), (conn, b"abd")]
        assert packed.uniform_packets(raw.buf, put([(P, b"abc"), (P, b"ab")])) is None
        assert packed.uniform_packets(raw.buf, put([(P, b"abc"), (P, b"abcdefghij")])) is None
        assert packed.uniform_packets(raw.buf, put([(P, b""), (n.IOCPSRV_EVENT_DRAIN, b"")])) is None
        assert packed.uniform_packets(raw.buf, put([(P, b"")] * 3)) == [(conn, b"")] * 3


def test_on_batch_raising_is_logged_and_the_server_goes_on(caplog):
    calls = []

    def on_batch(packets):
        calls.append(packets)
        if len(calls) == 1:
            raise RuntimeError("boom")
        srv.send_many(packets)

    with caplog.at_level(logging.ERROR, logger="iocpsrv"):
        with iocpsrv.Server(worker_threads=2, on_batch=on_batch) as srv:
            with Client(srv.port) as c:
                c.send(b"first")
                assert wait_until(lambda: calls)
                c.send(b"second")
                assert c.recv() == b"second"  # the same connection, not aborted
    assert any("on_batch callback raised" in r.getMessage() and r.exc_info
               for r in caplog.records)


def test_send_many_refuses_the_rest_of_a_refused_connection():
    result = {}

    def on_packet(conn, data):
        result["refused"] = srv.send_many(
            [(conn, b"a"), (999, b"x"), (conn, b"b"), (999, b"y"), (conn, b"c")])

    with iocpsrv.Server(worker_threads=2, on_packet=on_packet) as srv:
        with Client(srv.port) as c:
            c.send(b"go")
            assert [c.recv() for _ in range(3)] == [b"a", b"b", b"c"]
    refused = result["refused"]
    assert [(conn, data) for conn, data, _ in refused] == [(999, b"x"), (999, b"y")]
    assert all(isinstance(e, iocpsrv.ConnectionNotFound) for _, _, e in refused)
    assert refused[0][2] is refused[1][2]


def test_send_many_from_another_thread():
    rec = Recorder()
    with iocpsrv.Server(worker_threads=2, on_connect=rec.on_connect) as srv:
        with Client(srv.port) as c:
            assert rec.wait(lambda r: r.conns())
            (conn,) = rec.conns()
            assert srv.send_many([(conn, b"x"), (conn, b""), (conn, b"y" * 20000)]) == []
            assert [c.recv() for _ in range(3)] == [b"x", b"", b"y" * 20000]


def test_on_batch_pause_holds_the_connections_later_packets():
    """pause() in on_batch applies from the next batch on: packets already taken from
    the engine are held and come, in order, after resume()."""
    got = []
    paused = threading.Event()

    def on_batch(packets):
        for conn, data in packets:
            got.append(data)
            if data == b"3" and not paused.is_set():
                srv.pause(conn)
                paused.set()

    with iocpsrv.Server(worker_threads=2, on_batch=on_batch,
                        on_connect=lambda conn, peer: conns.append(conn)) as srv:
        conns = []
        with Client(srv.port) as c:
            for i in range(10):
                c.send(b"%d" % i)
                if i == 3:
                    assert paused.wait(TIMEOUT)
            assert wait_until(lambda: srv.info(conns[0]).flags & n.IOCPSRV_CONN_PAUSED)
            count = len(got)
            srv.resume(conns[0])
            assert wait_until(lambda: len(got) == 10)
    assert got == [b"%d" % i for i in range(10)]
    assert count <= 10


def test_on_batch_packets_come_before_their_connections_disconnect():
    """Packets and the DISCONNECT of their connection in one poll: the batch before the
    event is delivered before it. (The dispatcher is held in a callback meanwhile, so
    the clients' packets and resets pile up in the engine's queue.)"""
    log = []
    entered, gate = threading.Event(), threading.Event()

    def on_connect(conn, peer):
        if not entered.is_set():
            entered.set()
            gate.wait(TIMEOUT)

    def on_batch(packets):
        log.extend(("packet", conn) for conn, _ in packets)

    def on_disconnect(conn, reason):
        log.append(("disconnect", conn))

    with iocpsrv.Server(worker_threads=2, on_connect=on_connect, on_batch=on_batch,
                        on_disconnect=on_disconnect) as srv:
        with Client(srv.port):
            assert entered.wait(TIMEOUT)
            for _ in range(10):
                c = Client(srv.port)
                c.send_raw(b"".join(c.frame(b"%d" % k) for k in range(20)))
                c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                c.close()  # reset
            # 10 CONNECT + 200 PACKET + 10 DISCONNECT queued behind the held callback
            assert wait_until(lambda: srv.stats().pull_queue_depth >= 220)
            gate.set()
            assert wait_until(lambda: sum(e[0] == "disconnect" for e in log) == 10)
    last_event = {}
    for i, (kind, conn) in enumerate(log):
        if kind == "packet":
            assert conn not in last_event, "a packet after its connection's disconnect"
        else:
            last_event[conn] = i
    assert sum(e[0] == "packet" for e in log) == 200
