"""Packed batches: the record formats of iocpsrv_poll_packed and iocpsrv_send_packed,
read and written with ``struct`` in one buffer per batch.

One cffi call per batch each way is the point: every crossing costs about as much as a
few lines of Python, so the dispatchers take a whole batch of events with one
iocpsrv_poll_packed and hand the sends made while handling it over with one
iocpsrv_send_packed. Nothing here touches a cffi struct per event.

Formats (dll/include/iocpsrv.h, "Packed batches"; little-endian on every supported
target; each record padded with zero bytes to a multiple of 8):

- event record: ``<IHHQQ`` (len, type, reason, conn, conn_user), then ``len`` payload
  bytes (CONNECT: the peer address text; PACKET: the payload; else none);
- send record: ``<QII`` (conn, len, flags = 0), then ``len`` payload bytes;
- refusal: ``<Ii`` (index of the refused send record, its error code).
"""

from __future__ import annotations

import struct
from typing import Any, Callable, Iterable, Iterator, Optional

from . import _native as n
from ._errors import error_from_code
from ._native import ffi

__all__ = [
    "EVENT_HEADER",
    "RECORD_START",
    "SEND_HEADER",
    "align8",
    "event_record_size",
    "send_record_size",
    "PollBuffer",
    "uniform_packets",
    "dispatch_records",
    "read_event",
    "iter_events",
    "build_send_records",
    "iter_send_records",
    "SendRecords",
]

EVENT_HEADER = struct.Struct("<IHHQQ")
# What the hot loops read of each event record: len, type, conn (reason and conn_user
# skipped: only DISCONNECT has a reason, read again then).
RECORD_START = struct.Struct("<IH2xQ")
SEND_HEADER = struct.Struct("<QII")
REFUSAL = struct.Struct("<Ii")

# Zero bytes that pad a payload of length n to a multiple of 8: PADDING[n & 7].
PADDING = tuple(bytes(-i & 7) for i in range(8))

# The smallest buffer the dispatchers poll into (a batch is whatever fits); it grows
# (once) when an event larger than it waits.
MIN_POLL_BYTES = 64 * 1024
# Past this the buffer does not grow (max_packet_size is at most 1 GiB).
MAX_POLL_BYTES = 2 << 30


def align8(length: int) -> int:
    return (length + 7) & ~7


def event_record_size(length: int) -> int:
    """Bytes one event record with `length` payload bytes takes (IOCPSRV_RECORD_SIZE)."""
    return EVENT_HEADER.size + align8(length)


def send_record_size(length: int) -> int:
    """Bytes one send record takes (IOCPSRV_SEND_RECORD_SIZE)."""
    return SEND_HEADER.size + align8(length)


class PollBuffer:
    """The buffer iocpsrv_poll_packed fills, with the two views the parsers read:
    ``view`` (a memoryview, for struct.unpack_from) and ``chunks`` (the cffi buffer,
    whose slices are ``bytes`` copies made in one step)."""

    __slots__ = ("cdata", "chunks", "view", "capacity")

    def __init__(self, capacity: int = MIN_POLL_BYTES):
        self._allocate(capacity)

    def _allocate(self, capacity: int) -> None:
        self.capacity = capacity
        self.cdata = ffi.new("char[]", capacity)
        self.chunks = ffi.buffer(self.cdata)
        self.view = memoryview(self.chunks)

    def poll(self, lib: Any, handle: Any, timeout_ms: int, max_packet_size: int,
             limit: Optional[int] = None) -> int:
        """One iocpsrv_poll_packed: the bytes of records written, 0 on timeout, or a
        negative code. On IOCPSRV_ENOSPACE (the next event is larger than the buffer)
        the buffer grows to what the largest event needs and the poll is repeated: the
        event stayed queued. ``limit`` caps the bytes taken, with no growth: a next
        event that does not fit stays queued and IOCPSRV_ENOSPACE is returned."""
        if limit is not None:
            return int(lib.iocpsrv_poll_packed(handle, self.cdata,
                                               min(limit, self.capacity), timeout_ms))
        got = lib.iocpsrv_poll_packed(handle, self.cdata, self.capacity, timeout_ms)
        while got == n.IOCPSRV_ENOSPACE:
            # The largest packet's record always fits; raw framing's reads are bounded
            # by read_buffer instead, hence the doubling if that was not enough.
            need = max(event_record_size(max_packet_size), 2 * self.capacity)
            if need > MAX_POLL_BYTES:
                raise error_from_code(n.IOCPSRV_ENOSPACE, "iocpsrv_poll_packed")
            self._allocate(need)
            got = lib.iocpsrv_poll_packed(handle, self.cdata, self.capacity, timeout_ms)
        return int(got)


def iter_events(buf: PollBuffer, end: int) -> Iterator[tuple[int, int, int, bytes]]:
    """(type, reason, conn, payload bytes) of each record in buf[0:end]. The servers'
    hot loops inline this; it serves the tests and the cold paths."""
    unpack = EVENT_HEADER.unpack_from
    view, chunks = buf.view, buf.chunks
    offset = 0
    while offset < end:
        length, kind, reason, conn, _user = unpack(view, offset)
        start = offset + EVENT_HEADER.size
        offset = start + ((length + 7) & ~7)
        yield kind, reason, conn, chunks[start:start + length]


def _small_record_packer(length: int) -> Callable[..., bytes]:
    """Struct.pack of a whole send record with a `length`-byte payload: header, payload
    and the zero padding ('s' pads with zeros) in one call."""
    return struct.Struct("<QII%ds" % align8(length)).pack


# Whole-record packers for payloads shorter than SMALL_PAYLOAD: one call and one append
# per record instead of three (the build is the larger part of a deferred send's cost).
SMALL_PAYLOAD = 256
SMALL_RECORD = tuple(_small_record_packer(i) for i in range(SMALL_PAYLOAD))


class _PairReaders(dict[int, struct.Struct]):
    """length -> Struct reading one PACKET record with that payload length as
    (conn, payload): header fields skipped, padding skipped."""

    def __missing__(self, length: int) -> struct.Struct:
        reader = self[length] = struct.Struct("<8xQ8x%ds%dx" % (length, -length & 7))
        return reader


_PAIR_READERS = _PairReaders()


def uniform_packets(buf: PollBuffer, end: int) -> Optional[list[tuple[int, bytes]]]:
    """The (conn, payload) pairs of buf[0:end] if its records are all PACKET records
    with one payload length (a steady stream of same-size packets, the common case
    under load), else None.

    The check and the reading are C loops (a strided memoryview compared with the first
    record's 8 header bytes repeated; struct.iter_unpack), so such a batch costs no
    Python step per record."""
    view = buf.view
    length, kind, _conn = RECORD_START.unpack_from(view, 0)
    step = EVENT_HEADER.size + align8(length)
    if kind != n.IOCPSRV_EVENT_PACKET or end % step:
        return None
    count = end // step
    firsts = view[0:end].cast("Q")[::step // 8]  # len, type, reason of each record
    if firsts.tobytes() != view[0:8].tobytes() * count:
        return None
    pairs: list[tuple[int, bytes]] = list(
        _PAIR_READERS[length].iter_unpack(view[0:end]))  # type: ignore[arg-type]
    return pairs


def dispatch_records(buf: PollBuffer, end: int,
                     deliver: Callable[[list[tuple[int, bytes]]], None],
                     on_event: Callable[[int], None]) -> None:
    """Hand the records of buf[0:end] over in order: each run of PACKET records as one
    list of (conn, payload) pairs to deliver(pairs), every other record's offset to
    on_event(offset). A poll of same-size packets is read by C loops
    (uniform_packets); any other, record by record."""
    pairs = uniform_packets(buf, end)
    if pairs is not None:
        deliver(pairs)
        return
    view, chunks = buf.view, buf.chunks
    unpack = RECORD_START.unpack_from
    pairs = []
    add = pairs.append
    offset = 0
    while offset < end:
        length, kind, conn = unpack(view, offset)
        start = offset + 24
        if kind == 2:  # IOCPSRV_EVENT_PACKET
            add((conn, chunks[start:start + length]))
        else:
            if pairs:  # the packets before the event are delivered before it
                deliver(pairs)
                pairs = []
                add = pairs.append
            on_event(offset)
        offset = start + ((length + 7) & -8)
    if pairs:
        deliver(pairs)


def read_event(buf: PollBuffer, offset: int) -> tuple[int, int, int, bytes, int]:
    """(type, reason, conn, payload, conn_user) of the record at offset."""
    length, kind, reason, conn, user = EVENT_HEADER.unpack_from(buf.view, offset)
    start = offset + EVENT_HEADER.size
    return kind, reason, conn, buf.chunks[start:start + length], user


def peer_text(payload: bytes) -> str:
    """A CONNECT record's payload: the peer address, without a NUL (iocpsrv.h)."""
    return payload.decode("utf-8", "replace")


def build_send_records(sends: Iterable[tuple[int, bytes]]) -> bytearray:
    """The iocpsrv_send_packed buffer for (conn, payload) pairs, in order."""
    out = bytearray()
    small = SMALL_RECORD
    pack = SEND_HEADER.pack
    for conn, data in sends:
        length = len(data)
        if length < 256:  # SMALL_PAYLOAD
            out += small[length](conn, length, 0, data)
        else:
            out += pack(conn, length, 0)
            out += data
            out += PADDING[length & 7]
    return out


def iter_send_records(buf: bytes | bytearray) -> Iterator[tuple[int, bytes]]:
    """(conn, payload bytes) of each send record in buf (tests, diagnostics)."""
    view = memoryview(buf)
    offset = 0
    while offset < len(view):
        conn, length, _flags = SEND_HEADER.unpack_from(view, offset)
        start = offset + SEND_HEADER.size
        yield conn, bytes(view[start:start + length])
        offset = start + align8(length)


class SendRecords:
    """Hands a list of (conn, payload) sends to the engine with one
    iocpsrv_send_packed and says which were refused."""

    __slots__ = ("_results", "_capacity")

    def __init__(self) -> None:
        self._capacity = 0
        self._results = ffi.NULL

    def submit(self, lib: Any, handle: Any, sends: list[tuple[int, bytes]]) -> list[tuple[int, int]]:
        """Queue every send in order, as iocpsrv_send would. Returns the refused ones
        as (index in sends, error code), in order; a whole-call failure (the server
        stopped) refuses every send with its code."""
        count = len(sends)
        if count > self._capacity:
            self._capacity = max(count, 2 * self._capacity, 64)
            self._results = ffi.new("iocpsrv_send_result_t[]", self._capacity)
        try:
            buf = build_send_records(sends)
        except (struct.error, TypeError):
            # An id equal to an open connection's without being an int (1.0): the hot
            # paths compare ids by value only, so it goes to the connection it equals.
            buf = build_send_records([(int(conn), data) for conn, data in sends])
        refused = lib.iocpsrv_send_packed(handle, ffi.from_buffer(buf), len(buf),
                                          self._results, count)
        if refused == 0:
            return []
        if refused < 0:
            return [(index, refused) for index in range(count)]
        raw = ffi.buffer(self._results, refused * REFUSAL.size)
        return list(REFUSAL.iter_unpack(raw))  # type: ignore[arg-type]
