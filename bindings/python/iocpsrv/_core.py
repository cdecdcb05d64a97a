"""What the threaded and the asyncio servers share: the native handle, the calls that
are thread-safe in C (send, disconnect, info, ...), and the little that pull mode leaves
to the binding.

The engine keeps the callback contract in pull mode: after iocpsrv_disconnect no
packet or drain of that connection is handed out by a later iocpsrv_poll; after
iocpsrv_pause_receive its packets wait in the engine, in order, until
iocpsrv_resume_receive; IOCPSRV_CLOSE_REFUSE closes a client with no further event, not
even its DISCONNECT. What the engine cannot reach are the events the binding has already
taken from it: the rest of the batch being dispatched and, for ``async for``, the events
buffered for the iterator. For those, and only those, the binding applies disconnect()
and pause() itself (_closing, _held).

Sends made on the thread that polls (the dispatcher, or the event loop's thread) are
deferred: collected as (conn, payload) and handed to the engine with one
iocpsrv_send_packed before the next poll (see "Deferred sends" in README.md). A cffi
call costs about as much as the Python around it, so one call per batch instead of one
per send is most of what the packed API saves on the way out. What deferring changes
for the user, and how it is kept from showing:

- Errors known without the engine are raised at once, as before: a connection that is
  unknown, closing or gone (ConnectionNotFound), a payload over max_packet_size
  (PacketTooLarge), a connection whose earlier sends wait for room (SendQueueFull).
- SendQueueFull found when the batch is handed over: the refused packets (and the
  later ones of that connection, which the engine refuses too) are kept, in order, as
  if still queued; further sends to that connection raise SendQueueFull at once; at
  its DRAIN they are handed over again, before on_drain runs. No packet is lost and
  the queue limit is passed by at most one batch of sends.
- Any other refusal at hand-over (the connection ended meanwhile, out of memory, the
  server stopped) reaches on_send_failed(conn, data, error), or the log.
- A send from another thread to a connection the poller has deferred sends for is put
  behind them (so it never overtakes them); every other send from another thread goes
  to the engine at once, as before.
"""

from __future__ import annotations

import atexit
import collections
import logging
import operator
import sys
import threading
import weakref
from threading import get_ident
from typing import Any, Iterable, Optional, Sequence, SupportsIndex

from . import _native as n
from ._errors import IocpsrvError, NotSupported, SendQueueFull, ServerStopped, error_from_code
from ._native import ffi, library
from ._packed import MIN_POLL_BYTES, PollBuffer, SendRecords
from ._types import (
    BytesLike,
    ConnInfo,
    OnSendFailed,
    OptionValue,
    Packet,
    PayloadT,
    Refused,
    Stats,
    OPTIONS,
    STR_OPTIONS,
    conn_info_from_c,
    normalize_options,
    set_options,
    stats_from_c,
)

log = logging.getLogger("iocpsrv")

# Servers that are running; stopped at interpreter exit if the user forgot.
_live: "weakref.WeakSet[ServerBase]" = weakref.WeakSet()
_EXIT_STOP_TIMEOUT = 1.0


@atexit.register
def _stop_all_at_exit() -> None:
    for srv in list(_live):
        try:
            srv._stop_at_exit(_EXIT_STOP_TIMEOUT)
        except BaseException:  # noqa: BLE001 - never fail the interpreter's exit
            log.exception("stopping %r at exit failed", srv)


def _destroy(lib: Any, handle: Any) -> None:
    lib.iocpsrv_destroy(handle)


# Sends on the polling thread with a payload up to this size are deferred to the end of
# the batch; larger ones go to the engine at once (copying them into the batch buffer
# would cost more than the call saves).
DEFER_MAX_BYTES = 16 * 1024
# Deferred sends are handed over early once this many wait: bounds the memory a
# callback that sends in a loop can hold (at most DEFER_MAX_BYTES each).
DEFER_MAX_COUNT = 1024
_JUST_BYTES = {bytes}


# Connection ids are the C API's uint64_t, never 0 (iocpsrv.h).
CONN_ID_MAX = (1 << 64) - 1


def conn_id(conn: object) -> int:
    """conn as a connection id, checked before it reaches a C call (where cffi would
    raise OverflowError for -1): TypeError unless an int, ValueError out of range."""
    if type(conn) is int:
        value = conn
    elif isinstance(conn, bool) or not isinstance(conn, SupportsIndex):
        raise TypeError(f"connection id must be an int, not {type(conn).__name__}")
    else:
        value = operator.index(conn)  # an int subclass or a numpy integer
    if not 0 < value <= CONN_ID_MAX:
        raise ValueError(f"invalid connection id {value}: ids are ints from 1 to 2**64-1")
    return value


# The conn_user of the connections the binding opens (iocpsrv_connect); accepted ones
# have 0. Events carry it, so a DISCONNECT with it and no CONNECT before it is an
# outbound attempt that never got established (its one event), where one without it
# would be a refused client's (which gets none). Never dereferenced by the engine.
OUTBOUND_USER = 1
_OUTBOUND_PTR = ffi.cast("void *", OUTBOUND_USER)


def connect_target(host: object, port: object) -> tuple[str, bytes, int]:
    """connect()'s (host, host as the C call takes it, port), checked before any C
    call: TypeError for a host that is not a str or a port that is not an int,
    ValueError for an empty host or a port outside 1..65535."""
    if not isinstance(host, str):
        raise TypeError(f"host must be a str, not {type(host).__name__}")
    if not host or "\0" in host:
        raise ValueError(f"host must be a non-empty name or address, not {host!r}")
    if isinstance(port, bool) or not isinstance(port, SupportsIndex):
        raise TypeError(f"port must be an int, not {type(port).__name__}")
    number = operator.index(port)
    if not 1 <= number <= 65535:
        raise ValueError(f"port must be in 1..65535, not {number}")
    try:
        # As the socket module does: non-ASCII names in their IDNA (punycode) form.
        raw = host.encode("ascii") if host.isascii() else host.encode("idna")
    except UnicodeError as e:
        raise ValueError(f"host {host!r} is not a valid name: {e}") from None
    return host, raw, number


def payload_error(data: object) -> TypeError:
    return TypeError(f"data must be bytes-like, not {type(data).__name__}")


def snapshot(data: BytesLike) -> bytes:
    """A bytes copy of a bytes-like (memoryview refuses str, ints and lists, which
    bytes() would take)."""
    try:
        return memoryview(data).tobytes()
    except TypeError:
        raise payload_error(data) from None


def c_buffer(data: BytesLike) -> Any:
    """A bytes-like as cffi passes it to C without a copy."""
    try:
        return ffi.from_buffer(data)
    except TypeError:
        raise payload_error(data) from None


def check_send_args(conn: object, data: object) -> None:
    """Raise the clean TypeError/ValueError for a bad send(conn, data), if it is one."""
    conn_id(conn)
    if not isinstance(data, bytes):
        snapshot(data)  # type: ignore[arg-type]


def timeout_ms(timeout: Optional[float]) -> int:
    """stop()'s timeout in seconds (None = no limit) as the C call's milliseconds."""
    if timeout is None:
        return -1
    if timeout < 0:
        raise ValueError("timeout must be >= 0 seconds, or None for no limit")
    return min(int(timeout * 1000 + 0.5), 2**31 - 1)


class _Held:
    """A paused connection's events that the binding had already taken from the engine
    when it was paused (the engine holds the rest), delivered in order after resume()."""

    __slots__ = ("paused", "backlog")

    def __init__(self) -> None:
        self.paused = True
        # bytes (threaded server, protocols) or aio Events (async for)
        self.backlog: collections.deque[Any] = collections.deque()


class ServerBase:
    """Native handle + thread-safe calls. Not used directly: see Server and aio.Server."""

    _h = ffi.NULL
    _closed = True

    def __init__(self, host: str, port: int, batch_size: int,
                 options: dict[str, OptionValue]):
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an int in 0..65535, not {port!r}")
        if host is None:
            host = ""
        if not isinstance(host, str):
            raise TypeError(f"host must be a str, not {type(host).__name__}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError("batch_size must be a positive int")
        opts = normalize_options(options)  # TypeError/ValueError before any native call
        self._host = host
        self._port_req = port
        self._lib = lib = library()
        hp = ffi.new("iocpsrv_t **")
        rc = lib.iocpsrv_create(hp, ffi.NULL)
        if rc < 0:
            raise error_from_code(rc, "iocpsrv_create")
        self._h = hp[0]
        self._closed = False
        self._finalizer = weakref.finalize(self, _destroy, lib, self._h)
        # At exit, _stop_all_at_exit stops running servers; the handle itself is left for
        # the OS (destroying it from weakref's exit hook could race a dispatcher).
        self._finalizer.atexit = False
        try:
            set_options(lib, self._h, opts)
            rc = lib.iocpsrv_set_option(self._h, n.IOCPSRV_OPT_PULL_MODE, 1)
            if rc < 0:
                raise error_from_code(rc, "pull_mode=1")
            if "pull_batch_sends" not in options:
                # Sends made while handling a batch go out in one write per connection
                # at the next poll. A library without the option just writes each send.
                rc = lib.iocpsrv_set_option(self._h, n.IOCPSRV_OPT_PULL_BATCH_SENDS, 1)
                if rc < 0 and rc != n.IOCPSRV_EUNKNOWNOPT:
                    raise error_from_code(rc, "pull_batch_sends=1")
        except BaseException:
            self._finalizer()
            self._h = ffi.NULL
            self._closed = True
            raise
        self._batch_size = batch_size
        # About batch_size events of up to 1 KiB per poll (fewer if larger, more if
        # smaller: a poll takes what fits), within 64 KiB .. 16 MiB.
        self._poll_buffer = PollBuffer(min(max(MIN_POLL_BYTES, batch_size * 1024), 16 << 20))
        self._send_records = SendRecords()
        self._send = lib.iocpsrv_send
        self._pump = -1  # the polling thread's id while it runs (its sends are deferred)
        self._reset_bookkeeping()

    # ---- events already taken from the engine ----------------------------------------

    def _reset_bookkeeping(self) -> None:
        # Connections the host is closing (disconnect(), a False return, a raising
        # callback): their packets and drains still in hand are skipped. An entry goes
        # at the connection's DISCONNECT.
        self._closing: set[int] = set()
        # Paused connections, and resumed ones whose held events are not delivered yet.
        self._held: dict[int, _Held] = {}
        self._resumed: set[int] = set()
        self._flow = threading.Lock()
        self._reset_sends()

    def _reset_sends(self) -> None:
        # Deferred sends (see the module's docstring), in the order they were made.
        self._pending: list[Packet] = []
        # Another thread's send to a connection with deferred sends goes behind them,
        # under _pending_lock, which the hand-over holds. Which connections have some is
        # worked out by those threads (_has_pending), not by the hot path: the
        # connections of _pending[:_scanned], and those _drained() puts back.
        self._pending_conns: set[int] = set()
        self._scanned = 0
        self._pending_lock = threading.Lock()
        # Connections whose sends on the polling thread may be deferred: accepted, not
        # closing, not stalled. Changed on the polling thread, except that _close()
        # removes from any thread.
        self._sendable: set[int] = set()
        # Refused with SendQueueFull at hand-over: conn -> payloads, handed over again at
        # its DRAIN. Changed on the polling thread only.
        self._stalled: dict[int, collections.deque[bytes]] = {}
        # Connections refused SendQueueFull since their last DRAIN (aio's drain()).
        self._full: set[int] = set()
        # (conn, payload, code) refused at hand-over, to report on the polling thread.
        self._send_failures: list[tuple[int, bytes, int]] = []
        self._max_packet = self._option_or(n.IOCPSRV_OPT_MAX_PACKET_SIZE, 1 << 20)
        self._defer_max = min(DEFER_MAX_BYTES, self._max_packet)

    def _hold(self, conn: int, item: Any) -> bool:
        """Put an event in hand behind conn's held ones if conn is paused (or resumed with
        held events not delivered yet). False: deliver it now."""
        with self._flow:
            e = self._held.get(conn)
            if e is None:
                return False
            e.backlog.append(item)
            return True

    def _next_held(self) -> Optional[tuple[int, Any]]:
        """(conn, event) of a resumed connection's held events, in order, or None."""
        with self._flow:
            while self._resumed:
                conn = next(iter(self._resumed))
                e = self._held.get(conn)
                if e is not None and not e.paused and e.backlog:
                    item = e.backlog.popleft()
                    if not e.backlog:  # what follows in hand may be delivered directly
                        del self._held[conn]
                        self._resumed.discard(conn)
                    return conn, item
                self._resumed.discard(conn)
                if e is not None and not e.paused:
                    del self._held[conn]
        return None

    def _release(self, conn: int) -> Sequence[Any]:
        """At conn's DISCONNECT: its held events to deliver before it (it was resumed), or
        () (it ended paused: they are dropped, as the engine drops those it held)."""
        with self._flow:
            e = self._held.pop(conn, None)
            self._resumed.discard(conn)
        if e is None or e.paused:
            return ()
        return e.backlog

    def _forget(self, conn: int) -> None:
        """conn's DISCONNECT has been delivered: nothing of it is in hand any more."""
        self._closing.discard(conn)
        self._sendable.discard(conn)
        self._full.discard(conn)
        if conn in self._stalled:
            self._drop_stalled(conn)
        if self._held:
            with self._flow:
                self._held.pop(conn, None)
                self._resumed.discard(conn)

    def _close(self, conn: int, mode: int) -> int:
        """iocpsrv_disconnect; its events in hand are dropped as the engine drops those it
        still has. Returns the library's code."""
        if self._pump == get_ident():
            # A graceful close writes what is queued: the deferred sends first.
            self._flush_sends()
            if conn in self._stalled:
                self._drop_stalled(conn)
        closing = self._closing
        added = conn not in closing
        closing.add(conn)
        self._sendable.discard(conn)
        rc: int = self._lib.iocpsrv_disconnect(self._h, conn, mode)
        if rc:
            if added:
                closing.discard(conn)
        elif self._held:
            with self._flow:
                self._held.pop(conn, None)
                self._resumed.discard(conn)
        return rc

    def _refuse(self, conn: int, abort: bool = False) -> None:
        """Refuse a client after its CONNECT (IOCPSRV_CLOSE_REFUSE: no further event, not
        even its DISCONNECT); abort: reset it too. The dispatchers skip what is in hand
        for it (they never registered it)."""
        lib, h = self._lib, self._h
        if lib.iocpsrv_disconnect(h, conn, n.IOCPSRV_CLOSE_REFUSE) == 0 and abort:
            lib.iocpsrv_disconnect(h, conn, n.IOCPSRV_CLOSE_ABORT)

    def _callback_failed(self, what: str, conn: int, met: bool = True) -> None:
        """Exception policy: log it, abort the connection, keep serving the others. met:
        the connection had been accepted (False for on_connect: it is refused, with no
        further callback).

        Called from an ``except`` block. One exception is expected rather than a bug:
        ServerStopped from a send made while the server is stopping (the dispatcher only
        runs until the stop completes). It is logged at debug level and the connection is
        left to the stop, which closes it gracefully."""
        exc = sys.exc_info()[1]
        try:
            if isinstance(exc, ServerStopped):
                log.debug("%s for connection %d: %s (the server is stopping)", what, conn, exc)
                return
            log.exception(
                "%s callback raised for connection %d; the connection is aborted "
                "and the server goes on", what, conn)
        except BaseException:  # noqa: BLE001 - a broken log handler must not kill us
            pass
        if met:
            self._close(conn, n.IOCPSRV_CLOSE_ABORT)
        else:
            self._refuse(conn, abort=True)

    def _close_requested(self, conn: int) -> None:
        """A packet callback returned False: close gracefully, as in the C contract."""
        self._close(conn, n.IOCPSRV_CLOSE_GRACEFUL)

    # ---- errors ----------------------------------------------------------------------

    def _error(self, rc: int, detail: Optional[str] = None) -> IocpsrvError:
        if self._closed:
            return ServerStopped(n.IOCPSRV_ESTOPPED, "the server is closed")
        return error_from_code(rc, detail)

    def _handle(self) -> Any:
        if self._closed:
            raise ServerStopped(n.IOCPSRV_ESTOPPED, "the server is closed")
        return self._h

    # ---- starting, and the client role -------------------------------------------------

    def _start_engine(self, listen: bool) -> None:
        """iocpsrv_listen on host:port, or (listen False) iocpsrv_start: the workers
        without a listener."""
        h = self._handle()
        if listen:
            rc = self._lib.iocpsrv_listen(h, self._host.encode("utf-8"), self._port_req)
            if rc < 0:
                raise error_from_code(rc, f"listen on {self._host!r} port {self._port_req}")
            return
        try:
            start = self._lib.iocpsrv_start
        except AttributeError:  # a library older than the client role
            raise NotSupported(n.IOCPSRV_ENOTSUP,
                               "start without a listener (the loaded library has no "
                               "iocpsrv_start)") from None
        rc = start(h)
        if rc < 0:
            raise error_from_code(rc, "start without a listener")

    def _connect(self, host: str, port: int) -> int:
        """iocpsrv_connect: the new connection's id (its attempt goes on in the
        background, and its events may come before this returns)."""
        host, raw, port = connect_target(host, port)
        h = self._handle()
        try:
            connect = self._lib.iocpsrv_connect
        except AttributeError:  # a library older than the client role
            raise NotSupported(n.IOCPSRV_ENOTSUP,
                               f"connect to {host!r} port {port} (the loaded library has "
                               "no iocpsrv_connect)") from None
        out = ffi.new("iocpsrv_conn_id_t *")
        rc = connect(h, raw, port, _OUTBOUND_PTR, out)
        if rc < 0:
            raise self._error(rc, f"connect to {host!r} port {port}")
        return int(out[0])

    # ---- thread-safe calls ------------------------------------------------------------

    def send(self, conn: int, data: BytesLike) -> None:
        """Queue one packet (bytes-like: bytes, bytearray, memoryview, ...) for conn.

        Never blocks on the network; thread-safe; the payload is copied (or, for bytes,
        kept) before it returns. Raises ConnectionNotFound (unknown, closing or stale
        id), SendQueueFull (over send_queue_limit: drop, retry after on_drain, or
        disconnect), PacketTooLarge, ServerStopped.

        On the polling thread (inside callbacks) the send is deferred to the end of the
        batch and handed over with the batch's other sends in one call; see "Deferred
        sends" in README.md for how a refusal found then is reported."""
        # The hot path: on the polling thread, to a connection known to be open and not
        # stalled, a payload small enough to copy into the batch. The arguments are
        # checked only when something fails (the try costs nothing until then): an id
        # in _sendable is an open connection's.
        try:
            if self._pump == get_ident() and conn in self._sendable:
                if type(data) is not bytes:
                    # A snapshot (the caller may change its buffer), of bytes-likes
                    # only: bytes() would also take an int or a list of ints.
                    data = memoryview(data).tobytes()
                if len(data) <= self._defer_max:
                    pending = self._pending
                    pending.append((conn, data))
                    if len(pending) >= DEFER_MAX_COUNT:
                        self._flush_sends()
                    return
        except TypeError:
            check_send_args(conn, data)
            raise
        self._send_now(conn, data)

    def _send_now(self, conn: int, data: BytesLike) -> None:
        """A send that is not deferred: to the engine at once, in order after the
        deferred sends of conn."""
        conn = conn_id(conn)
        payload = data if type(data) is bytes else c_buffer(data)
        if self._pump == get_ident():
            self._flush_sends()
        elif self._pending and self._defer_behind(conn, payload):
            return
        if conn in self._stalled:
            self._full.add(conn)
            raise SendQueueFull(n.IOCPSRV_EQUEUEFULL,
                                f"send to connection {conn} (earlier sends wait for room)")
        rc = self._send(self._h, conn, payload, len(payload))
        if rc:
            if rc == n.IOCPSRV_EQUEUEFULL:
                self._full.add(conn)
            raise self._error(rc, f"send to connection {conn}")

    def _defer_behind(self, conn: int, data: Any) -> bool:
        """From a thread that does not poll: put the send behind the polling thread's
        deferred sends to conn, if it still has some. Its refusal, if any, is then
        reported like theirs."""
        with self._pending_lock:
            if not self._has_pending(conn):
                return False
            # data: bytes, or _send_now's cffi view of the caller's buffer (copied).
            self._pending.append((conn, data if type(data) is bytes else ffi.buffer(data)[:]))
            return True

    def _has_pending(self, conn: int) -> bool:
        """Whether deferred sends to conn wait (_pending_lock held). The polling thread
        only appends to _pending meanwhile (a hand-over needs the lock), so the
        connections seen so far stay valid and only the new entries are read."""
        pending = self._pending
        new = pending[self._scanned:]  # one atomic copy
        self._scanned += len(new)
        self._pending_conns.update([c for c, _ in new])
        return conn in self._pending_conns

    def _flush_sends(self) -> None:
        """Hand the deferred sends to the engine, in order, with one
        iocpsrv_send_packed (polling thread only). The lock keeps another thread's send
        to one of these connections from slipping in before them."""
        if not self._pending:
            return
        with self._pending_lock:
            sends = self._pending
            self._pending = []
            refused = self._send_records.submit(self._lib, self._h, sends)
            self._pending_conns.clear()
            self._scanned = 0
        if refused:
            self._sends_refused(sends, refused)

    def _sends_refused(self, sends: list[Packet], refused: list[tuple[int, int]]) -> None:
        for index, code in refused:
            conn, data = sends[index]
            if code == n.IOCPSRV_EQUEUEFULL:
                self._stall(conn, data)
            else:
                self._send_failures.append((conn, data, code))

    def _stall(self, conn: int, data: bytes) -> None:
        """Keep a packet refused with SendQueueFull until conn's DRAIN: it counts as
        queued, and sends to conn raise SendQueueFull meanwhile."""
        queue = self._stalled.get(conn)
        if queue is None:
            queue = self._stalled[conn] = collections.deque()
        queue.append(data)
        self._sendable.discard(conn)
        self._full.add(conn)

    def _drop_stalled(self, conn: int) -> None:
        """conn is closing or gone: its stalled packets will never be sent."""
        for data in self._stalled.pop(conn, ()):
            self._send_failures.append((conn, data, n.IOCPSRV_EQUEUEFULL))

    def _drained(self, conn: int, alive: bool) -> None:
        """conn's DRAIN (polling thread), before the user hears of it: its stalled
        packets are handed over again, first; sends to it may be deferred again."""
        self._full.discard(conn)
        queue = self._stalled.get(conn)
        if queue is not None:
            # Put back before conn stops counting as stalled, so that another thread's
            # send to it finds them (_has_pending) and goes behind.
            self._pending.extend([(conn, data) for data in queue])
            del self._stalled[conn]
        if alive and conn not in self._closing:
            self._sendable.add(conn)

    def _report_send_failures(self) -> None:
        """Sends refused at hand-over (other than SendQueueFull, which stalls) go to
        on_send_failed, or to the log."""
        failures = self._send_failures
        self._send_failures = []
        for conn, data, code in failures:
            error = self._error(code, f"deferred send of {len(data)} bytes to "
                                      f"connection {conn}")
            try:
                self._send_failed(conn, data, error)
            except BaseException:  # noqa: BLE001 - same policy as every callback
                try:
                    log.exception("on_send_failed raised for connection %d", conn)
                except BaseException:  # noqa: BLE001
                    pass

    # None: not set (typed as the callable so that a subclass may define a method).
    on_send_failed: OnSendFailed = None  # type: ignore[assignment]

    def _send_failed(self, conn: int, data: bytes, error: IocpsrvError) -> None:
        hook = self.on_send_failed
        if hook is not None:
            hook(conn, data, error)
        else:
            self._log_send_failure(error)

    @staticmethod
    def _log_send_failure(error: IocpsrvError) -> None:
        """What happens to a refused deferred send nobody asked to hear of: a warning,
        or a debug line while the server stops (as for ServerStopped in callbacks)."""
        if isinstance(error, ServerStopped):
            log.debug("%s (the server is stopping)", error)
        else:
            log.warning("%s: the packet was not sent", error)

    def _flush_if_polling(self) -> None:
        """Before a call that acts on or reads the send queue, on the polling thread:
        the deferred sends reach the engine first, so it sees calls in their order."""
        if self._pending and self._pump == get_ident():
            self._flush_sends()

    def send_many(self, sends: Iterable[tuple[int, PayloadT]]) -> list[Refused[PayloadT]]:
        """Queue several packets: ``sends`` is a list (or iterable) of ``(conn, data)``
        pairs, as on_batch receives them, so ``send_many(packets)`` echoes a batch.

        Like ``for conn, data in sends: send(conn, data)``, except that a refusal does
        not stop the others: returns the refused ones as ``[(conn, data, error), ...]``
        (error: the exception send() would have raised), in order, and [] when all were
        taken. Once a send to a connection is refused, its later ones in ``sends`` are
        refused too, with the same error, so a connection never gets a packet without
        the one before it. On the polling thread the whole list is deferred in one step
        when every connection in it is open and every payload is small bytes; otherwise,
        and on other threads, each goes through send()."""
        if type(sends) is not list:
            sends = list(sends)
        if self._pump == get_ident() and sends and self._all_deferrable(sends):
            pending = self._pending
            pending += sends
            if len(pending) >= DEFER_MAX_COUNT:
                self._flush_sends()
            return []
        return self._send_each(sends)

    def _all_deferrable(self, sends: list[tuple[int, PayloadT]]) -> bool:
        """Whether every (conn, data) may go to _pending as it is: open connections,
        bytes payloads within the deferral limit. Checked by C loops (zip, map, set)."""
        conns, payloads = zip(*sends)
        return (self._sendable.issuperset(conns)
                and max(map(len, payloads)) <= self._defer_max
                and set(map(type, payloads)) == _JUST_BYTES)

    def _send_each(self, sends: list[tuple[int, PayloadT]]) -> list[Refused[PayloadT]]:
        refused: list[Refused[PayloadT]] = []
        errors: dict[int, IocpsrvError] = {}
        for conn, data in sends:
            error = errors.get(conn)
            if error is None:
                try:
                    self.send(conn, data)
                    continue
                except IocpsrvError as e:
                    error = errors[conn] = e
            refused.append((conn, data, error))
        return refused

    def sendv(self, conn: int, parts: Iterable[BytesLike]) -> None:
        """Queue one packet whose payload is the concatenation of `parts` (bytes-likes),
        without joining them in Python (iocpsrv_sendv)."""
        conn = conn_id(conn)
        keep = [c_buffer(p) for p in parts]
        if self._pump == get_ident():
            self._flush_sends()
        elif self._pending and self._defer_behind(conn, b"".join(ffi.buffer(b)[:] for b in keep)):
            return
        if conn in self._stalled:
            self._full.add(conn)
            raise SendQueueFull(n.IOCPSRV_EQUEUEFULL,
                                f"send to connection {conn} (earlier sends wait for room)")
        bufs = ffi.new("iocpsrv_buf_t[]", max(len(keep), 1))
        for i, b in enumerate(keep):
            bufs[i].base = b
            bufs[i].len = len(b)
        rc = self._lib.iocpsrv_sendv(self._h, conn, bufs, len(keep))
        if rc:
            if rc == n.IOCPSRV_EQUEUEFULL:
                self._full.add(conn)
            raise self._error(rc, f"send to connection {conn}")

    def broadcast(self, data: BytesLike) -> int:
        """Send one packet to every open connection; returns how many took it
        (connections whose send queue is full are skipped). On the polling thread the
        deferred sends are handed over first; from another thread it may overtake
        them."""
        payload = data if type(data) is bytes else c_buffer(data)
        self._flush_if_polling()
        rc: int = self._lib.iocpsrv_broadcast(self._h, payload, len(payload))
        if rc < 0:
            raise self._error(rc, "broadcast")
        return rc

    def disconnect(self, conn: int, graceful: bool = True) -> None:
        """Close a connection: graceful (queued sends are written first, then FIN) or
        abortive (queue dropped, RST). No packet callback starts for it after this
        returns; its on_disconnect follows."""
        conn = conn_id(conn)
        mode = n.IOCPSRV_CLOSE_GRACEFUL if graceful else n.IOCPSRV_CLOSE_ABORT
        rc = self._close(conn, mode)
        if rc:
            raise self._error(rc, f"disconnect connection {conn}")

    def pause(self, conn: int) -> None:
        """Stop reading from conn (TCP then pushes back on the client). Packets already
        received are held and delivered after resume(conn)."""
        conn = conn_id(conn)
        rc = self._lib.iocpsrv_pause_receive(self._h, conn)
        if rc:
            raise self._error(rc, f"pause connection {conn}")
        with self._flow:
            e = self._held.get(conn)
            if e is None:
                self._held[conn] = _Held()
            else:
                e.paused = True

    def resume(self, conn: int) -> None:
        """Read from conn again; held packets are delivered first, in order."""
        conn = conn_id(conn)
        rc = self._lib.iocpsrv_resume_receive(self._h, conn)
        if rc:
            raise self._error(rc, f"resume connection {conn}")
        with self._flow:
            e = self._held.get(conn)
            if e is not None:
                e.paused = False
                if e.backlog:
                    self._resumed.add(conn)
                else:
                    del self._held[conn]
        if self._resumed:
            self._wake()

    def _wake(self) -> None:
        """Held packets are ready to deliver (the asyncio server schedules them)."""

    def pending(self, conn: int) -> int:
        """Bytes queued for conn and not yet handed to the kernel."""
        conn = conn_id(conn)
        self._flush_if_polling()
        rc = self._lib.iocpsrv_pending_bytes(self._h, conn)
        if rc < 0:
            raise self._error(int(rc), f"pending bytes of connection {conn}")
        return int(rc)

    def connections(self) -> list[int]:
        """Ids of the open connections (closing ones included)."""
        lib, h = self._lib, self._handle()
        size = max(int(lib.iocpsrv_connections(h, ffi.NULL, 0)), 0) + 16
        while True:
            ids = ffi.new("iocpsrv_conn_id_t[]", size)
            count = lib.iocpsrv_connections(h, ids, size)
            if count < 0:
                raise self._error(count, "connections")
            if count <= size:
                return [int(ids[i]) for i in range(count)]
            size = count + 16

    def info(self, conn: int) -> ConnInfo:
        """A ConnInfo for conn; ConnectionNotFound for a dead or stale id."""
        conn = conn_id(conn)
        self._flush_if_polling()
        ci = ffi.new("iocpsrv_conn_info_t *")
        ci.struct_size = ffi.sizeof("iocpsrv_conn_info_t")
        rc = self._lib.iocpsrv_conn_info(self._handle(), conn, ci)
        if rc < 0:
            raise self._error(rc, f"info of connection {conn}")
        return conn_info_from_c(ci)

    def stats(self) -> Stats:
        """Server counters (Stats)."""
        self._flush_if_polling()
        st = ffi.new("iocpsrv_stats_t *")
        st.struct_size = ffi.sizeof("iocpsrv_stats_t")
        rc = self._lib.iocpsrv_stats(self._handle(), st)
        if rc < 0:
            raise self._error(rc, "stats")
        return stats_from_c(st)

    def _option_or(self, opt: int, default: int) -> int:
        v = ffi.new("int64_t *")
        return int(v[0]) if self._lib.iocpsrv_get_option(self._h, opt, v) == 0 else default

    def get_option(self, name: str) -> int | str:
        """The current value of an option, by its keyword name (a str for proxy_trusted
        and connect_source, in the library's spelling: "127.0.0.1/32, ::1/128")."""
        opt = OPTIONS.get(name)
        if opt is None:
            raise KeyError(name)
        if name in STR_OPTIONS:
            try:
                fn = self._lib.iocpsrv_get_option_str
            except AttributeError:  # a library older than string options
                raise self._error(n.IOCPSRV_EUNKNOWNOPT, f"option {name}") from None
            size = fn(self._handle(), opt, ffi.NULL, 0)
            if size < 0:
                raise self._error(int(size), f"option {name}")
            buf = ffi.new("char[]", int(size) + 1)
            size = fn(self._handle(), opt, buf, len(buf))
            if size < 0:
                raise self._error(int(size), f"option {name}")
            text: bytes = ffi.string(buf)
            return text.decode()
        v = ffi.new("int64_t *")
        rc = self._lib.iocpsrv_get_option(self._handle(), opt, v)
        if rc < 0:
            raise self._error(rc, f"option {name}")
        return int(v[0])

    def set_options(self, **options: OptionValue) -> None:
        """Change options while the server is not running (InvalidState otherwise)."""
        set_options(self._lib, self._handle(), normalize_options(options))

    @property
    def port(self) -> int | None:
        """The bound port while running (or after the last run), else None."""
        if self._closed:
            return None
        p = self._lib.iocpsrv_port(self._h)
        return p if p > 0 else None

    @property
    def host(self) -> str:
        return self._host

    @property
    def closed(self) -> bool:
        return self._closed

    def _stop_at_exit(self, timeout: float) -> None:  # overridden
        pass

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"port={self.port}"
        return f"<{type(self).__module__}.{type(self).__qualname__} {self._host!r} {state}>"
