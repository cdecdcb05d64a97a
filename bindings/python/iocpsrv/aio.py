"""asyncio integration: the engine's pull queue drained on the event loop.

The library's waitable handle (an eventfd on Linux) is registered with
``loop.add_reader``; when it fires, the server drains whole batches with
``iocpsrv_poll(timeout 0)``: one wake-up of the loop per batch of events, not per packet.
Nothing blocks the loop: sends are plain, non-blocking method calls.

Two ways to write a server.

Events, with ``async for``::

    async with iocpsrv.aio.Server("127.0.0.1", 0) as srv:
        async for ev in srv:
            if ev.type is EventType.PACKET:
                srv.send(ev.conn, ev.data)

A protocol class, one instance per connection (like asyncio.Protocol)::

    class Echo(iocpsrv.aio.Protocol):
        def packet_received(self, data):
            self.connection.send(data)

    async with iocpsrv.aio.Server(protocol_factory=Echo) as srv:
        await srv.wait_closed()

Outbound connections (the client role), served like accepted ones::

    async with iocpsrv.aio.Server(protocol_factory=Client, listen=False) as srv:
        connection = await srv.connect("127.0.0.1", 5150)   # once established
        connection.send(b"hello")

Protocol callbacks run on the event loop thread. The exception policy is the threaded
Server's: a raising connection_made / packet_received / drained is logged (logger
"iocpsrv") and its connection aborted (connection_lost still follows, except after
connection_made); connection_lost raising is logged; the server goes on.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from threading import get_ident as _get_ident
import typing

from . import _core, _errors
from . import _native as _n
from ._core import DEFER_MAX_COUNT as _DEFER_MAX_COUNT
from ._core import OUTBOUND_USER as _OUTBOUND_USER
from ._core import ServerBase as _ServerBase
from ._core import check_send_args as _check_send_args
from ._core import log as _log
from ._core import timeout_ms as _timeout_ms
from ._errors import connect_error as _connect_error
from ._native import ffi as _ffi
from ._packed import EVENT_HEADER as _EVENT_HEADER
from ._packed import dispatch_records as _dispatch_records
from ._packed import peer_text as _peer_text
from ._packed import read_event as _read_event
from ._types import REASONS as _REASONS
from ._types import EventType, Reason

if typing.TYPE_CHECKING:
    from typing import Any, Awaitable, Callable, Generator, Iterable, Optional, Union

    from ._errors import IocpsrvError
    from ._types import BytesLike, ConnInfo, OnSendFailed, OptionValue, Packet, PayloadT, Refused

__all__ = ["Server", "Protocol", "Connection", "Event", "EventType", "Reason", "serve"]

_PACKET = _n.IOCPSRV_EVENT_PACKET
_CONNECT = _n.IOCPSRV_EVENT_CONNECT
_DISCONNECT = _n.IOCPSRV_EVENT_DISCONNECT
_DRAIN = _n.IOCPSRV_EVENT_DRAIN
_ESTOPPED = _n.IOCPSRV_ESTOPPED
_ENOSPACE = _n.IOCPSRV_ENOSPACE

_TYPES = {int(t): t for t in EventType}
_EV_PACKET = EventType.PACKET
_EV_CONNECT = EventType.CONNECT
_EV_DISCONNECT = EventType.DISCONNECT
_EV_DRAIN = EventType.DRAIN
_TICK_S = 0.25


class Event:
    """One engine event, as ``async for ev in server`` yields it.

    ``type`` is an EventType; ``conn`` the connection id; ``data`` the payload (PACKET)
    or b""; ``peer`` the client's address (CONNECT) or None; ``reason`` a Reason
    (DISCONNECT) or None."""

    __slots__ = ("type", "conn", "data", "peer", "reason")

    type: EventType
    conn: int
    data: bytes
    peer: Optional[str]
    reason: Union[Reason, int, None]  # an int only for a reason newer than this binding

    def __init__(self, type: EventType, conn: int, data: bytes = b"",
                 peer: Optional[str] = None, reason: Union[Reason, int, None] = None):
        self.type = type
        self.conn = conn
        self.data = data
        self.peer = peer
        self.reason = reason

    def __repr__(self) -> str:
        extra = ""
        if self.type == EventType.PACKET:
            extra = f" {len(self.data)} bytes"
        elif self.peer is not None:
            extra = f" {self.peer}"
        elif self.reason is not None:
            extra = f" {getattr(self.reason, 'name', self.reason)}"
        return f"<Event {self.type.name} conn={self.conn}{extra}>"


class Connection:
    """A connection as a Protocol sees it (transport-like), and what Server.connect
    returns. Its methods are the server's, bound to this id; all are non-blocking and
    thread-safe. ``protocol`` is its Protocol (not set for the connections of an
    ``async for`` server)."""

    __slots__ = ("id", "peer", "server", "protocol", "batched", "_send")

    protocol: Protocol  # set by the server right after the factory made it

    def __init__(self, server: Server, conn: int, peer: str):
        self.server = server
        self.id = conn
        self.peer = peer
        self.batched = False  # the protocol takes packets_received(list)
        self._send = server.send

    def send(self, data: BytesLike) -> None:
        self._send(self.id, data)

    async def send_async(self, data: BytesLike) -> None:
        """send(), waiting for room instead of raising SendQueueFull."""
        await self.server.send_async(self.id, data)

    async def drain(self) -> None:
        """Wait until the send queue has room again (see Server.drain)."""
        await self.server.drain(self.id)

    def sendv(self, parts: Iterable[BytesLike]) -> None:
        self.server.sendv(self.id, parts)

    def close(self) -> None:
        """Graceful close: queued sends are written first."""
        self.server.disconnect(self.id, graceful=True)

    def abort(self) -> None:
        self.server.disconnect(self.id, graceful=False)

    def pause_reading(self) -> None:
        self.server.pause(self.id)

    def resume_reading(self) -> None:
        self.server.resume(self.id)

    @property
    def pending(self) -> int:
        """Bytes queued for sending and not yet handed to the kernel."""
        return self.server.pending(self.id)

    def info(self) -> ConnInfo:
        return self.server.info(self.id)

    def __repr__(self) -> str:
        return f"<Connection {self.id} {self.peer}>"


class Protocol:
    """Base class for per-connection protocols (override what you need).

    connection_made returning False closes the client, which then gets no further
    call. packet_received returning False closes the connection gracefully."""

    connection: Connection

    def connection_made(self, connection: Connection) -> Optional[bool]:
        self.connection = connection
        return None

    def packet_received(self, data: bytes) -> Optional[bool]:
        return None

    def drained(self) -> None:
        """A send refused with SendQueueFull may now be retried (the queue fell below
        half its limit)."""

    def connection_lost(self, reason: Union[Reason, int]) -> None:
        pass

    def send_failed(self, data: bytes, error: IocpsrvError) -> None:
        """A send deferred to the end of a batch was refused when it was handed to the
        engine (the connection ended meanwhile, or the server stopped). By default it is
        logged (logger "iocpsrv"). SendQueueFull never comes here: such packets are
        kept and sent after the drain."""
        self.connection.server._log_send_failure(error)

    async def drain(self) -> None:
        """``await self.drain()``: wait until the connection's send queue has room
        (returns at once unless a send to it was refused with SendQueueFull)."""
        await self.connection.drain()

    # A subclass may define packets_received(self, packets) instead of packet_received:
    # it then gets the packets of one poll for its connection as a list of bytes, in
    # order (pause_reading() and close() called in it apply from the next list on).


class Server(_ServerBase):
    """An iocpsrv server driven by the running asyncio event loop.

    Give ``protocol_factory`` (a Protocol subclass or any callable returning one) for
    per-connection protocol objects, or iterate the server (``async for ev in srv``) to
    receive Events. Keyword options are the C library's, as for iocpsrv.Server.
    ``max_buffered`` bounds the events waiting for the ``async for`` consumer: past it the
    server stops draining the engine, whose queue then fills and stops reading sockets
    (TCP pushes back on the clients).

    Sends made on the loop's thread are deferred and handed to the engine once per
    batch (or soon after, with call_soon, when made from a coroutine);
    ``on_send_failed(conn, data, error)`` (or, in protocol mode, the protocol's
    send_failed) hears of one refused then. ``await srv.send_async(conn, data)`` and
    ``await srv.drain(conn)`` wait for room instead of raising SendQueueFull.

    ``await srv.connect(host, port)`` opens an outbound connection and returns its
    Connection once established; ``listen=False`` makes a server whose start() starts
    the engine without a listener (a client only)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        protocol_factory: Optional[Callable[[], Protocol]] = None,
        batch_size: int = 256,
        max_batches: int = 8,
        max_buffered: int = 8192,
        on_send_failed: Optional[OnSendFailed] = None,
        listen: bool = True,
        **options: OptionValue,
    ) -> None:
        super().__init__(host, port, batch_size, options)
        self._listen = bool(listen)
        self._factory = protocol_factory
        if on_send_failed is not None:
            self.on_send_failed = on_send_failed
        self._max_batches = max(1, int(max_batches))
        self._max_buffered = max(1, int(max_buffered))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd = -1
        self._reading = False
        self._running = False
        self._queue: collections.deque[Event] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed_fut: asyncio.Future[None] | None = None
        self._stop_fut: asyncio.Future[None] | None = None
        self._conns: dict[int, Connection] = {}
        self._loop_tid = 0
        self._defer = False  # pull_batch_sends: loop-thread sends wait for the next poll
        self._dispatching = False
        self._flush_scheduled = False
        self._tick_handle: asyncio.TimerHandle | None = None
        self._drain_waiters: dict[int, asyncio.Future[None]] = {}
        self._attempts: dict[int, _Attempt] = {}  # connect() calls not settled yet

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self, listen: Optional[bool] = None) -> "Server":
        """Bind and start serving on the running loop; the port is then in ``.port``.
        With ``listen=False`` (default: the constructor's ``listen``) start the engine
        without a listener, for outbound connections only (connect()); ``.port`` is
        then None."""
        loop = asyncio.get_running_loop()
        h = self._handle()
        if self._running:
            raise _errors.InvalidState(_n.IOCPSRV_ESTATE, "the server is already running")
        if self._stop_fut is not None:
            await self._stop_fut
        self._reset_bookkeeping()
        self._queue.clear()
        self._conns.clear()
        self._drain_waiters.clear()
        self._attempts.clear()
        self._start_engine(self._listen if listen is None else bool(listen))
        fd = self._lib.iocpsrv_wait_handle(h)
        if fd < 0:
            self._lib.iocpsrv_stop(h, 0)
            raise _errors.error_from_code(int(fd), "iocpsrv_wait_handle")
        self._loop = loop
        self._loop_tid = self._pump = _get_ident()
        self._defer = bool(self._option_or(_n.IOCPSRV_OPT_PULL_BATCH_SENDS, 0))
        self._dispatching = False
        self._flush_scheduled = False
        self._fd = int(fd)
        self._running = True
        self._stop_fut = None
        self._closed_fut = loop.create_future()
        self._add_reader()
        self._tick_handle = loop.call_later(_TICK_S, self._tick)
        _core._live.add(self)
        return self

    def stop(self, timeout: float | None = 5.0) -> Awaitable[None]:
        """Begin stopping (see iocpsrv.Server.stop for what a stop does) and return a
        future that is done once every event, the disconnects included, has been
        delivered. Call it on the loop's thread: from a coroutine (``await srv.stop()``)
        or from a protocol callback (no need to await it there). From another thread:
        ``loop.call_soon_threadsafe(srv.stop)``."""
        ms = _timeout_ms(timeout)
        loop = self._loop
        if loop is None:  # never started
            return _DONE
        if self._stop_fut is None:
            self._stop_fut = asyncio.ensure_future(self._stop(ms), loop=loop)
        return self._stop_fut

    async def _stop(self, ms: int) -> None:
        if self._running:
            # The blocking C stop runs on a helper thread while the loop keeps
            # draining events (the closing connections' disconnects).
            self._add_reader()  # even if the iterator's consumer had paused draining
            loop = self._started_loop
            done: asyncio.Future[None] = loop.create_future()

            def run() -> None:
                self._lib.iocpsrv_stop(self._h, ms)
                try:
                    loop.call_soon_threadsafe(_set_done, done)
                except RuntimeError:  # the loop is closed
                    pass

            threading.Thread(target=run, name="iocpsrv-stop", daemon=True).start()
            await done
            if self._closed_fut is not None:
                await asyncio.shield(self._closed_fut)
        _core._live.discard(self)

    async def wait_closed(self) -> None:
        """Wait until the server has stopped and delivered its last event."""
        if self._closed_fut is not None:
            await asyncio.shield(self._closed_fut)

    async def close(self, timeout: float | None = 5.0) -> None:
        """await stop(timeout), then free the native server."""
        await self.stop(timeout)
        if not self._closed:
            self._remove_reader()
            self._closed = True
            self._finalizer()
            self._h = _ffi.NULL

    aclose = close

    @property
    def running(self) -> bool:
        return self._running

    async def __aenter__(self) -> "Server":
        if not self._running:
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _stop_at_exit(self, timeout: float) -> None:
        # The loop is most likely gone: stop in C directly (nobody polls any more).
        if not self._closed and self._running:
            self._lib.iocpsrv_stop(self._h, _timeout_ms(timeout))

    @property
    def _started_loop(self) -> asyncio.AbstractEventLoop:
        """The loop the server was started on (the methods that use it run only after
        start())."""
        assert self._loop is not None, "the server has not been started"
        return self._loop

    # ---- the client role ---------------------------------------------------------------

    async def connect(self, host: str, port: int, *,
                      protocol_factory: Optional[Callable[[], Protocol]] = None) -> Connection:
        """Open an outbound connection to ``host`` (an address or a name, resolved off
        the loop and the engine's workers) and ``port``; return its Connection once it
        is established. The server must be running, on this loop.

        It is then served as an accepted one: a protocol server calls the protocol's
        connection_made before this returns (``protocol_factory`` replaces the
        server's factory for this connection, e.g. a proxy's back end), an ``async
        for`` server yields its CONNECT, PACKET and DISCONNECT events (the returned
        Connection then has no protocol).

        An attempt that is never established raises ConnectFailed (an OSError) with
        ``reason`` (Reason.CONNECT_REFUSED, CONNECT_UNREACHABLE, CONNECT_TIMEOUT (the
        connect_timeout_ms option), NAME_NOT_RESOLVED, CONNECT_FAILED, or
        SERVER_STOPPED, LOCAL_CLOSE / LOCAL_ABORT when it was ended first): a
        ConnectRefused (a ConnectionRefusedError) when nothing listens there, a
        ConnectTimeout (a TimeoutError), a NameNotResolved (a socket.gaierror). An
        ``async for`` server also yields its DISCONNECT event. A protocol whose
        connection_made refuses it (returns False) or raises gives ConnectFailed with
        LOCAL_CLOSE or LOCAL_ABORT. Cancelling the call (asyncio.wait_for) aborts the
        attempt, or the connection if it was established meanwhile.

        Raised at once, as by the threaded Server.connect: TypeError/ValueError for a
        bad host or port, ServerStopped, TooManyConnections, AddressNotAvailable,
        OutOfMemory, SystemFailure."""
        loop = asyncio.get_running_loop()
        if protocol_factory is not None and self._factory is None:
            raise TypeError("protocol_factory= is for a protocol server; the "
                            "connections of an `async for` server are read as events")
        if self._running and loop is not self._loop:
            raise RuntimeError("connect() must run on the loop the server was started on")
        conn = self._connect(host, port)
        attempt = _Attempt(loop.create_future(), protocol_factory, host, int(port))
        self._attempts[conn] = attempt
        try:
            return await attempt.future
        except asyncio.CancelledError:
            self._abandon(conn, attempt)
            raise

    def _abandon(self, conn: int, attempt: _Attempt) -> None:
        """connect() was cancelled: abort the attempt, or the connection if it was
        established meanwhile (nobody will ever have its Connection)."""
        fut = attempt.future
        if self._attempts.get(conn) is attempt:
            # Still connecting: its CONNECT, if one is already queued, is skipped
            # (_attempt_connected); its DISCONNECT (LOCAL_ABORT) follows.
            attempt.abandoned = True
        elif fut.cancelled() or fut.exception() is not None:
            return  # it failed, or its CONNECT came after the cancel and closed it
        try:
            self.disconnect(conn, graceful=False)
        except (_errors.ConnectionNotFound, _errors.ServerStopped):
            pass  # it ended meanwhile

    def _attempt_connected(self, conn: int) -> tuple[Optional[_Attempt], bool]:
        """At conn's CONNECT: (the connect() call waiting for it, if any; whether to
        skip the event). A cancelled call's connection is closed here, not served."""
        attempt = self._attempts.pop(conn, None) if self._attempts else None
        if attempt is not None and attempt.future.done():  # connect() was cancelled
            if not attempt.abandoned:  # (else its abort is under way)
                self._refuse(conn, abort=True)
            return None, True
        return attempt, False

    def _attempt_failed(self, conn: int, reason: int, attempt: Optional[_Attempt] = None,
                        cause: Optional[BaseException] = None) -> None:
        """conn's attempt ended before it was established (its DISCONNECT), or its
        protocol refused it: its connect() raises ConnectFailed."""
        if attempt is None:
            attempt = self._attempts.pop(conn, None) if self._attempts else None
            if attempt is None:
                return
        if attempt.future.done():  # cancelled
            return
        error = _connect_error(_REASONS.get(reason, reason), conn, attempt.host, attempt.port)
        error.__cause__ = cause
        attempt.future.set_exception(error)

    # ---- draining --------------------------------------------------------------------

    def _add_reader(self) -> None:
        if not self._reading and self._fd >= 0 and self._loop is not None:
            self._loop.add_reader(self._fd, self._on_readable)
            self._reading = True

    def _remove_reader(self) -> None:
        if self._reading:
            self._reading = False
            try:
                self._started_loop.remove_reader(self._fd)
            except (RuntimeError, ValueError, OSError):  # loop closed
                pass

    def _on_readable(self) -> None:
        """The waitable handle fired: events wait."""
        self._pump_events()

    def _pump_events(self, flush_only: bool = False) -> None:
        """Hand the deferred sends over and drain whole batches (flush_only: a poll
        whose point is to write the sends, from _flush or _tick)."""
        lib, h = self._lib, self._h
        buf = self._poll_buffer
        protocol_mode = self._factory is not None
        queue = self._queue
        if self._resumed and protocol_mode:
            self._deliver_held()
        self._dispatching = True
        try:
            batches = 0
            empty = False
            while True:
                # The sends of the last batch go to the engine first; the poll writes
                # them (pull_batch_sends) and starts the close of connections whose FIN
                # came with the last batch, so the loop ends with two polls that found
                # nothing: the second acts on what the first handed over (a FIN alone
                # is no event).
                self._flush_sends()
                if self._send_failures:
                    self._report_send_failures()
                limit = self._poll_limit(flush_only)
                end = buf.poll(lib, h, 0, self._max_packet, limit)
                if end <= 0:
                    if end == _ENOSPACE:  # the next event does not fit the limit
                        if not flush_only:  # the iterator has no room for it
                            self._pause_draining()
                        break
                    if end < 0:
                        if end != _ESTOPPED:
                            _log.error("iocpsrv_poll_packed failed: %s", _errors.error_from_code(end))
                        self._finished()
                        break
                    if empty:
                        break
                    empty = True
                    continue
                empty = False
                if protocol_mode:
                    self._dispatch_protocols(end)
                else:
                    self._dispatch_events(end)
                    if len(queue) >= self._max_buffered:
                        self._pause_draining()
                        break
                if flush_only and not self._reading:
                    break  # back-pressure: this poll was only to write the sends
                batches += 1
                if batches >= self._max_batches:
                    self._schedule_flush()  # more may wait; and the last batch's sends
                    break
        finally:
            self._dispatching = False
        if queue:
            self._wake_consumer()

    def _poll_limit(self, flush_only: bool) -> Optional[int]:
        """The bytes the next poll may take (None: the whole buffer). The ``async for``
        buffer holds at most max_buffered + batch_size events: each record is at least
        _EVENT_HEADER.size bytes, so the poll takes no more than the room left (but at
        least one event when the buffer is empty, however large)."""
        if self._factory is not None or self._stop_fut is not None:
            return None
        if flush_only and not self._reading:
            return _EVENT_HEADER.size  # only to write the sends: one small event at most
        queued = len(self._queue)
        if not queued:
            return None
        room = self._max_buffered + self._batch_size - queued
        return max(room, 0) * _EVENT_HEADER.size

    def _pause_draining(self) -> None:
        """Back-pressure: stop draining until the consumer catches up (__anext__ adds
        the reader back); the engine's queue fills and it stops reading the sockets.
        Not while stopping: the stop needs every event drained."""
        if self._stop_fut is None:
            self._remove_reader()

    def _tick(self) -> None:
        """A poll now and then, even when the waitable handle stays quiet (a FIN that
        arrives alone needs a poll after the one that hands it over)."""
        self._tick_handle = None
        if self._running and not self._closed:
            self._pump_events(flush_only=True)
            if self._running:
                self._tick_handle = self._started_loop.call_later(_TICK_S, self._tick)

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and self._running:
            self._flush_scheduled = True
            self._started_loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._running and not self._closed:
            self._pump_events(flush_only=True)

    # ---- sending: deferred on the loop's thread (see _core), awaitable back-pressure ---

    def send(self, conn: int, data: BytesLike) -> None:
        # ServerBase.send's hot path, plus: a send from a coroutine or a timer (outside
        # the dispatch) gets a hand-over scheduled with call_soon.
        try:
            if self._pump == _get_ident() and conn in self._sendable:
                if type(data) is not bytes:
                    data = memoryview(data).tobytes()  # a snapshot (see ServerBase.send)
                if len(data) <= self._defer_max:
                    pending = self._pending
                    pending.append((conn, data))
                    if not self._dispatching:
                        self._schedule_flush()
                    elif len(pending) >= _DEFER_MAX_COUNT:
                        self._flush_sends()
                    return
        except TypeError:
            _check_send_args(conn, data)
            raise
        self._send_now(conn, data)

    send.__doc__ = _ServerBase.send.__doc__

    def send_many(self, sends: Iterable[tuple[int, PayloadT]]) -> list[Refused[PayloadT]]:
        refused = super().send_many(sends)
        if self._pending and not self._dispatching and _get_ident() == self._pump:
            self._schedule_flush()
        return refused

    send_many.__doc__ = _ServerBase.send_many.__doc__

    def sendv(self, conn: int, parts: Iterable[BytesLike]) -> None:
        super().sendv(conn, parts)
        self._sent()

    sendv.__doc__ = _ServerBase.sendv.__doc__

    def broadcast(self, data: BytesLike) -> int:
        count = super().broadcast(data)
        self._sent()
        return count

    broadcast.__doc__ = _ServerBase.broadcast.__doc__

    def _sent(self) -> None:
        # Written at the next poll (pull_batch_sends): make sure one comes soon.
        if self._defer and not self._dispatching and _get_ident() == self._loop_tid:
            self._schedule_flush()

    async def drain(self, conn: int) -> None:
        """Wait until conn's send queue has room: returns at once unless a send to conn
        was refused with SendQueueFull (by send(), or when deferred sends were handed
        over) and its DRAIN has not come yet. Raises ConnectionNotFound if the
        connection ends first, ServerStopped if the server stops. Call it on the loop's
        thread."""
        self._flush_sends()  # refusals of what was just sent are known after this
        if self._send_failures:
            self._report_send_failures()
        while conn in self._full:
            waiter = self._drain_waiters.get(conn)
            if waiter is None or waiter.done():
                waiter = self._drain_waiters[conn] = self._started_loop.create_future()
            await waiter

    async def send_async(self, conn: int, data: BytesLike) -> None:
        """send(), waiting for room (await drain(conn)) instead of raising
        SendQueueFull. Other errors are raised as by send()."""
        while True:
            await self.drain(conn)
            try:
                self.send(conn, data)
                return
            except _errors.SendQueueFull:
                continue  # conn now counts as full: the next drain() waits

    def _room(self, conn: int) -> None:
        """conn's DRAIN: stalled sends go first, then the coroutines waiting in drain()
        may send."""
        self._drained(conn, alive=conn in self._conns or self._factory is None)
        waiter = self._drain_waiters.pop(conn, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _gone(self, conn: int, error: IocpsrvError) -> None:
        """conn ended (or the server stopped): drain() waiters get `error`."""
        self._sendable.discard(conn)
        waiter = self._drain_waiters.pop(conn, None)
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def _send_failed(self, conn: int, data: bytes, error: IocpsrvError) -> None:
        c = self._conns.get(conn)
        if c is not None and self.on_send_failed is None:
            c.protocol.send_failed(data, error)
        else:
            super()._send_failed(conn, data, error)

    def _finished(self) -> None:
        self._remove_reader()
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None
        self._running = False
        self._fd = -1
        self._flush_sends()  # refused as ServerStopped: reported at debug level
        if self._send_failures:
            self._report_send_failures()
        self._pump = -1
        for conn in list(self._drain_waiters):
            self._gone(conn, _errors.ServerStopped(_n.IOCPSRV_ESTOPPED, f"drain of connection {conn}"))
        for conn in list(self._attempts):  # (each had its DISCONNECT: none is left)
            self._attempt_failed(conn, _n.IOCPSRV_REASON_SERVER_STOPPED)
        self._wake_consumer()
        if self._closed_fut is not None and not self._closed_fut.done():
            self._closed_fut.set_result(None)

    def _wake(self) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            if _in_loop_thread(loop):
                loop.call_soon(self._deliver_held)
            else:
                loop.call_soon_threadsafe(self._deliver_held)
        except RuntimeError:  # loop closed
            pass

    # -- event iteration

    def _dispatch_events(self, end: int) -> None:
        # Everything goes to the iterator's buffer; __anext__ applies disconnect() and
        # pause() to what is buffered when they are called.
        buf = self._poll_buffer
        view, chunks = buf.view, buf.chunks
        unpack = _EVENT_HEADER.unpack_from
        append = self._queue.append
        offset = 0
        while offset < end:
            length, kind, reason, conn, user = unpack(view, offset)
            start = offset + 24
            offset = start + ((length + 7) & -8)
            if kind == _PACKET:
                append(Event(_EV_PACKET, conn, chunks[start:start + length]))
            elif kind == _CONNECT:
                peer = _peer_text(chunks[start:start + length])
                attempt, skip = self._attempt_connected(conn)
                if skip:
                    continue
                if attempt is not None:
                    attempt.future.set_result(Connection(self, conn, peer))
                self._sendable.add(conn)
                append(Event(_EV_CONNECT, conn, b"", peer))
            elif kind == _DISCONNECT:
                # Gone for the engine now: sends to it raise at once, drain() ends.
                self._gone(conn, _connection_gone(conn))
                if user == _OUTBOUND_USER:
                    self._attempt_failed(conn, reason)
                append(Event(_EV_DISCONNECT, conn, b"", None, _REASONS.get(reason, reason)))
            elif kind == _DRAIN:
                self._room(conn)
                append(Event(_EV_DRAIN, conn))

    def _wake_consumer(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def __aiter__(self) -> Server:
        if self._factory is not None:
            raise TypeError("a server with a protocol_factory cannot be iterated")
        return self

    async def __anext__(self) -> Event:
        q = self._queue
        closing = self._closing
        held = self._held
        while True:
            if self._resumed:
                x = self._next_held()
                if x is not None:
                    held_event: Event = x[1]
                    if held_event.type is EventType.DISCONNECT:
                        self._forget(held_event.conn)
                    return held_event
            while q:
                ev = q.popleft()
                if not self._reading and self._running and len(q) <= self._max_buffered // 2:
                    self._add_reader()
                t = ev.type
                conn = ev.conn
                if t is EventType.PACKET:
                    if closing and conn in closing:
                        continue  # disconnect() was called after it was buffered
                    if held and self._hold(conn, ev):
                        continue  # paused after it was buffered: delivered after resume
                elif t is EventType.DISCONNECT:
                    if held:
                        backlog = self._release(conn)
                        if backlog:  # resumed, its held packets not read yet: they first
                            q.extendleft(reversed([*backlog, ev]))
                            continue
                    self._forget(conn)
                elif t is EventType.DRAIN:
                    if closing and conn in closing:
                        continue
                return ev
            if not self._running:
                raise StopAsyncIteration
            self._waiter = self._started_loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    # -- protocols

    def _dispatch_protocols(self, end: int) -> None:
        """The records of one poll to the protocols, in order."""
        _dispatch_records(self._poll_buffer, end, self._deliver_to_protocols,
                         self._protocol_event_at)

    def _deliver_to_protocols(self, pairs: list[Packet]) -> None:
        """A run of packets, each to its protocol's packet_received; for a protocol with
        packets_received, each run of its connection's packets as one list. The checks
        come right before each call, so a close() or pause_reading() made by one applies
        to the next."""
        conns = self._conns  # accepted by connection_made (a refused client never is)
        closing = self._closing
        held = self._held
        # The packets being gathered for run_conn's packets_received.
        run_conn: Optional[Connection] = None
        run: list[bytes] = []
        for conn, data in pairs:
            c = conns.get(conn)
            if c is None or (closing and conn in closing):
                continue
            if held and self._hold(conn, data):
                continue
            if c.batched:
                if c is run_conn:
                    run.append(data)
                    continue
                if run_conn is not None:
                    self._deliver_run(run_conn, run)
                run_conn, run = c, [data]
                continue
            try:
                if c.protocol.packet_received(data) is False:
                    self._close_requested(conn)
            except BaseException:
                self._callback_failed("packet_received", conn)
        if run_conn is not None:
            self._deliver_run(run_conn, run)

    def _protocol_event_at(self, offset: int) -> None:
        self._dispatch_protocol_event(*_read_event(self._poll_buffer, offset))

    def _dispatch_protocol_event(self, kind: int, reason: int, conn: int,
                                 payload: bytes, user: int = 0) -> None:
        conns = self._conns
        if kind == _CONNECT:
            peer = _peer_text(payload)
            c = Connection(self, conn, peer)
            factory = self._factory
            attempt, skip = self._attempt_connected(conn)
            if skip:
                return
            if attempt is not None and attempt.factory is not None:
                factory = attempt.factory
            assert factory is not None  # protocol mode
            try:
                c.protocol = p = factory()
                c.batched = callable(getattr(p, "packets_received", None))
                r = p.connection_made(c)
            except BaseException as e:
                self._callback_failed("connection_made", conn, met=False)
                if attempt is not None:
                    self._attempt_failed(conn, _n.IOCPSRV_REASON_LOCAL_ABORT, attempt, e)
                return
            if r is False:
                self._refuse(conn)
                if attempt is not None:
                    self._attempt_failed(conn, _n.IOCPSRV_REASON_LOCAL_CLOSE, attempt)
                return
            conns[conn] = c
            self._sendable.add(conn)
            if attempt is not None:
                attempt.future.set_result(c)
        elif kind == _DISCONNECT:
            gone = conns.get(conn)
            if gone is None:
                if user == _OUTBOUND_USER:  # an attempt that never got established
                    self._forget(conn)
                    self._attempt_failed(conn, reason)
                return  # (else refused: no callback at all)
            if self._held:
                for data in self._release(conn):
                    if not self._deliver_packet(gone, data):
                        break
            del conns[conn]
            self._forget(conn)
            self._gone(conn, _connection_gone(conn))
            try:
                gone.protocol.connection_lost(_REASONS.get(reason, reason))
            except BaseException:
                try:
                    _log.exception("connection_lost raised for connection %d", conn)
                except BaseException:  # noqa: BLE001
                    pass
        elif kind == _DRAIN:
            drained = conns.get(conn)
            if drained is None or conn in self._closing:
                return
            self._room(conn)
            try:
                drained.protocol.drained()
            except BaseException:
                self._callback_failed("drained", conn)

    def _deliver_run(self, c: Connection, packets: list[bytes]) -> None:
        """packets_received(packets); raising or returning False as packet_received."""
        try:
            # Optional, so not declared by Protocol (c.batched says it is there).
            r = getattr(c.protocol, "packets_received")(packets)
        except BaseException:
            self._callback_failed("packets_received", c.id)
            return
        if r is False:
            self._close_requested(c.id)

    def _deliver_packet(self, c: Connection, data: bytes) -> bool:
        if c.batched:
            self._deliver_run(c, [data])
            return c.id not in self._closing
        try:
            r = c.protocol.packet_received(data)
        except BaseException:
            self._callback_failed("packet_received", c.id)
            return False
        if r is False:
            self._close_requested(c.id)
            return False
        return True

    def _deliver_held(self) -> None:
        """Held packets of resumed connections: through their protocol, or (``async
        for``) read by the iterator, which is woken."""
        if self._factory is None:
            self._wake_consumer()
            return
        while (x := self._next_held()) is not None:
            conn, data = x
            c = self._conns.get(conn)
            if c is not None:
                self._deliver_packet(c, data)


class _Attempt:
    """A connect() call waiting for its connection's CONNECT (or DISCONNECT)."""

    __slots__ = ("future", "factory", "host", "port", "abandoned")

    def __init__(self, future: asyncio.Future[Connection],
                 factory: Optional[Callable[[], Protocol]], host: str, port: int):
        self.future = future
        self.factory = factory
        self.host = host
        self.port = port
        self.abandoned = False  # cancelled, and its attempt aborted by _abandon


class _Done:
    """An awaitable that is already done (stop() on a server that never started)."""

    def __await__(self) -> Generator[Any, None, None]:
        yield from ()

    def done(self) -> bool:
        return True


_DONE = _Done()


def _connection_gone(conn: int) -> _errors.ConnectionNotFound:
    return _errors.ConnectionNotFound(_n.IOCPSRV_ENOTCONN, f"drain of connection {conn}")


def _set_done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _in_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


async def serve(protocol_factory: Callable[[], Protocol], host: str = "127.0.0.1",
                port: int = 0, **options: Any) -> Server:
    """Create and start a protocol server (like loop.create_server)."""
    srv = Server(host, port, protocol_factory=protocol_factory, **options)
    await srv.start()
    return srv
