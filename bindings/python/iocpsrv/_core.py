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
"""

from __future__ import annotations

import atexit
import collections
import logging
import sys
import threading
import weakref

from . import _native as n
from ._errors import ServerStopped, error_from_code
from ._native import ffi, library
from ._types import (
    ConnInfo,
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


def _destroy(lib, handle) -> None:
    lib.iocpsrv_destroy(handle)


def timeout_ms(timeout) -> int:
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
        self.backlog: collections.deque = collections.deque()


class ServerBase:
    """Native handle + thread-safe calls. Not used directly: see Server and aio.Server."""

    _h = ffi.NULL
    _closed = True

    def __init__(self, host: str, port: int, batch_size: int, options: dict):
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
        self._events = ffi.new("iocpsrv_event_t[]", batch_size)
        self._send = lib.iocpsrv_send
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

    def _hold(self, conn: int, item) -> bool:
        """Put an event in hand behind conn's held ones if conn is paused (or resumed with
        held events not delivered yet). False: deliver it now."""
        with self._flow:
            e = self._held.get(conn)
            if e is None:
                return False
            e.backlog.append(item)
            return True

    def _next_held(self):
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

    def _release(self, conn: int) -> collections.deque | tuple:
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
        if self._held:
            with self._flow:
                self._held.pop(conn, None)
                self._resumed.discard(conn)

    def _close(self, conn: int, mode: int) -> int:
        """iocpsrv_disconnect; its events in hand are dropped as the engine drops those it
        still has. Returns the library's code."""
        closing = self._closing
        added = conn not in closing
        closing.add(conn)
        rc = self._lib.iocpsrv_disconnect(self._h, conn, mode)
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

    def _error(self, rc: int, detail: str | None = None):
        if self._closed:
            return ServerStopped(n.IOCPSRV_ESTOPPED, "the server is closed")
        return error_from_code(rc, detail)

    def _handle(self):
        if self._closed:
            raise ServerStopped(n.IOCPSRV_ESTOPPED, "the server is closed")
        return self._h

    # ---- thread-safe calls ------------------------------------------------------------

    def send(self, conn: int, data) -> None:
        """Queue one packet (bytes-like: bytes, bytearray, memoryview, ...) for conn.

        Never blocks on the network; thread-safe. Raises ConnectionNotFound (unknown,
        closing or stale id), SendQueueFull (over send_queue_limit: drop, retry after
        on_drain, or disconnect), PacketTooLarge, ServerStopped."""
        if type(data) is not bytes:
            data = ffi.from_buffer(data)
        rc = self._send(self._h, conn, data, len(data))
        if rc:
            raise self._error(rc, f"send to connection {conn}")

    def sendv(self, conn: int, parts) -> None:
        """Queue one packet whose payload is the concatenation of `parts` (bytes-likes),
        without joining them in Python (iocpsrv_sendv)."""
        keep = [ffi.from_buffer(p) for p in parts]
        bufs = ffi.new("iocpsrv_buf_t[]", max(len(keep), 1))
        for i, b in enumerate(keep):
            bufs[i].base = b
            bufs[i].len = len(b)
        rc = self._lib.iocpsrv_sendv(self._h, conn, bufs, len(keep))
        if rc:
            raise self._error(rc, f"send to connection {conn}")

    def broadcast(self, data) -> int:
        """Send one packet to every open connection; returns how many took it
        (connections whose send queue is full are skipped)."""
        if type(data) is not bytes:
            data = ffi.from_buffer(data)
        rc = self._lib.iocpsrv_broadcast(self._h, data, len(data))
        if rc < 0:
            raise self._error(rc, "broadcast")
        return rc

    def disconnect(self, conn: int, graceful: bool = True) -> None:
        """Close a connection: graceful (queued sends are written first, then FIN) or
        abortive (queue dropped, RST). No packet callback starts for it after this
        returns; its on_disconnect follows."""
        mode = n.IOCPSRV_CLOSE_GRACEFUL if graceful else n.IOCPSRV_CLOSE_ABORT
        rc = self._close(conn, mode)
        if rc:
            raise self._error(rc, f"disconnect connection {conn}")

    def pause(self, conn: int) -> None:
        """Stop reading from conn (TCP then pushes back on the client). Packets already
        received are held and delivered after resume(conn)."""
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
        ci = ffi.new("iocpsrv_conn_info_t *")
        ci.struct_size = ffi.sizeof("iocpsrv_conn_info_t")
        rc = self._lib.iocpsrv_conn_info(self._handle(), conn, ci)
        if rc < 0:
            raise self._error(rc, f"info of connection {conn}")
        return conn_info_from_c(ci)

    def stats(self) -> Stats:
        """Server counters (Stats)."""
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
        """The current value of an option, by its keyword name (a str for proxy_trusted,
        in the library's spelling: "127.0.0.1/32, ::1/128")."""
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
            return ffi.string(buf).decode()
        v = ffi.new("int64_t *")
        rc = self._lib.iocpsrv_get_option(self._handle(), opt, v)
        if rc < 0:
            raise self._error(rc, f"option {name}")
        return int(v[0])

    def set_options(self, **options) -> None:
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
