"""The threaded server: callbacks on one Python dispatcher thread, fed by pull mode."""

from __future__ import annotations

import threading
from operator import itemgetter
from threading import get_ident
from typing import Any, Optional

from . import _core
from . import _native as n
from ._core import OUTBOUND_USER, ServerBase, log, timeout_ms
from ._errors import InCallback, InvalidState, error_from_code
from ._native import ffi
from ._packed import dispatch_records, peer_text, read_event
from ._types import (
    REASONS,
    OnBatch,
    OnConnect,
    OnDisconnect,
    OnDrain,
    OnPacket,
    OnSendFailed,
    OptionValue,
    Packet,
)

__all__ = ["Server"]

_PACKET = n.IOCPSRV_EVENT_PACKET
_CONNECT = n.IOCPSRV_EVENT_CONNECT
_DISCONNECT = n.IOCPSRV_EVENT_DISCONNECT
_DRAIN = n.IOCPSRV_EVENT_DRAIN
_ESTOPPED = n.IOCPSRV_ESTOPPED
_first = itemgetter(0)


class Server(ServerBase):
    """A TCP server whose callbacks run on one Python thread (the dispatcher).

    ``on_connect(conn, peer)``, ``on_packet(conn, data)``, ``on_disconnect(conn, reason)``
    and ``on_drain(conn)`` are plain functions (or methods of a subclass). ``conn`` is the
    connection's int id, ``peer`` "127.0.0.1:5000", ``data`` the packet payload as bytes,
    ``reason`` a Reason. on_connect returning False closes the client (it then gets no
    further callback); on_packet returning False closes the connection gracefully.

    ``on_batch(packets)`` is the batch-level alternative to on_packet: ``packets`` is a
    list of ``(conn, data)`` pairs, the packets of one poll in arrival order (cut short
    by any connect, disconnect or drain event, which keep their place between batches).
    What the callback does to a connection (disconnect, pause) applies from the next
    batch on, as in the C API's packet-batch callback. When set, on_packet is not
    called. ``on_send_failed(conn, data, error)`` hears of a send deferred to the end
    of a batch that the engine refused then (see "Deferred sends" in README.md).

    The client role: ``connect(host, port)`` opens an outbound connection (on a server
    that listens, or one made with ``listen=False``, whose start() starts the engine
    without a listener). Once established it is served as an accepted one: on_connect
    (with the address reached), on_packet, on_disconnect. An attempt that fails gets
    on_disconnect alone, its reason saying why (Reason.CONNECT_REFUSED, ...).

    Keyword options are the C library's IOCPSRV_OPT_* in lower case (worker_threads=,
    max_packet_size=, framing="len16_be", send_queue_limit=, idle_timeout_ms=, ...).
    ``batch_size`` is how many events one iocpsrv_poll takes, ``poll_interval`` (seconds)
    how long it waits.

    Exception policy: a callback that raises is logged (logger "iocpsrv", with the
    traceback); if it was on_connect, on_packet or on_drain, that connection is aborted
    (on_disconnect still follows, except after on_connect); the server keeps serving.
    on_batch raising is logged and aborts no connection.
    """

    # None: not set. Typed as the callables (not Optional) so that a subclass may
    # define them as methods; the dispatcher tests for None before each call.
    on_connect: OnConnect = None  # type: ignore[assignment]
    on_packet: OnPacket = None  # type: ignore[assignment]
    on_disconnect: OnDisconnect = None  # type: ignore[assignment]
    on_drain: OnDrain = None  # type: ignore[assignment]
    on_batch: OnBatch = None  # type: ignore[assignment]

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        on_connect: Optional[OnConnect] = None,
        on_packet: Optional[OnPacket] = None,
        on_disconnect: Optional[OnDisconnect] = None,
        on_drain: Optional[OnDrain] = None,
        on_batch: Optional[OnBatch] = None,
        on_send_failed: Optional[OnSendFailed] = None,
        batch_size: int = 256,
        poll_interval: float = 0.1,
        listen: bool = True,
        **options: OptionValue,
    ) -> None:
        if not (isinstance(poll_interval, (int, float)) and poll_interval > 0):
            raise ValueError("poll_interval must be a number of seconds > 0")
        super().__init__(host, port, batch_size, options)
        self._listen = bool(listen)
        if on_connect is not None:
            self.on_connect = on_connect
        if on_packet is not None:
            self.on_packet = on_packet
        if on_disconnect is not None:
            self.on_disconnect = on_disconnect
        if on_drain is not None:
            self.on_drain = on_drain
        if on_batch is not None:
            self.on_batch = on_batch
        if on_send_failed is not None:
            self.on_send_failed = on_send_failed
        self._poll_ms = max(1, int(poll_interval * 1000))
        self._life = threading.Lock()  # start / stop / close from outside the dispatcher
        self._state = threading.Lock()  # the few fields below
        self._dispatcher: threading.Thread | None = None
        self._stopper: threading.Thread | None = None
        self._done = threading.Event()
        self._done.set()

    # ---- lifecycle -------------------------------------------------------------------

    def start(self, listen: Optional[bool] = None) -> "Server":
        """Bind and start serving; the port is then in ``.port``. With ``listen=False``
        (default: the constructor's ``listen``) start the engine without a listener,
        for outbound connections only (connect()); ``.port`` is then None. Not from a
        callback."""
        if threading.current_thread() is self._dispatcher:
            raise InCallback(n.IOCPSRV_EINCALLBACK, "start() from a callback")
        with self._life:
            self._handle()  # ServerStopped once closed
            if self._dispatcher is not None and not self._done.is_set():
                raise InvalidState(n.IOCPSRV_ESTATE, "the server is already running")
            self._join_threads()  # a stop begun from a callback finishes first
            self._reset_bookkeeping()
            self._start_engine(self._listen if listen is None else bool(listen))
            self._done.clear()
            t = threading.Thread(
                target=self._run, name=f"iocpsrv-dispatch-{self.port or 'client'}",
                daemon=True)
            with self._state:
                self._dispatcher = t
            _core._live.add(self)
            t.start()
        return self

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop: no new clients; each connection's queued sends are flushed and it is
        closed gracefully for up to ``timeout`` seconds (0 = reset at once, None = no
        limit), then reset. Every connection still gets its one on_disconnect (reason
        SERVER_STOPPED).

        From any thread but the dispatcher it returns when all of that is done and no
        callback is running or will run. From inside a callback it starts the stop and
        returns at once; the remaining events (the disconnects) are delivered after the
        callback returns, and ``wait()`` from another thread sees the end. Idempotent."""
        ms = timeout_ms(timeout)
        if threading.current_thread() is self._dispatcher:
            self._stop_from_callback(ms)
            return
        with self._life:
            if self._closed:
                return
            with self._state:
                running = self._dispatcher is not None
            if not running:
                return
            # Blocks (GIL released) while the dispatcher drains the closing connections.
            self._lib.iocpsrv_stop(self._h, ms)
            self._join_threads()
            _core._live.discard(self)

    def connect(self, host: str, port: int) -> int:
        """Open an outbound connection to ``host`` (an address, "127.0.0.1" or "::1",
        or a name, resolved off the engine's workers) and ``port`` (1..65535), without
        blocking; returns its connection id (never reused). Any thread, callbacks
        included; the server must be running (ServerStopped otherwise).

        The attempt goes on in the background. Once established the connection is
        served as an accepted one: on_connect(conn, peer) with the address reached
        (returning False closes it, with no further callback), then on_packet, then
        one on_disconnect. One that fails, times out (the connect_timeout_ms option),
        is disconnected or stopped first gets on_disconnect alone, with
        Reason.CONNECT_REFUSED, CONNECT_UNREACHABLE, CONNECT_TIMEOUT,
        NAME_NOT_RESOLVED, CONNECT_FAILED, LOCAL_CLOSE, LOCAL_ABORT or SERVER_STOPPED.
        Callbacks for it may run before this returns. Until established only
        disconnect() and info() (``info(conn).connecting``) accept the id: send()
        raises ConnectionNotFound.

        Raises TypeError/ValueError for a bad host or port, ServerStopped,
        TooManyConnections (max_connections, which counts both directions, is
        reached, or no descriptor is left), AddressNotAvailable (a numeric host of
        another family than the connect_source option's), OutOfMemory,
        SystemFailure."""
        return self._connect(host, port)

    def _stop_from_callback(self, ms: int) -> None:
        # The dispatcher must keep polling while the engine stops (a full pull queue
        # holds connections that wait for room), so a helper thread runs the blocking
        # C stop and the dispatcher exits when iocpsrv_poll reports ESTOPPED.
        with self._state:
            if self._stopper is not None or self._done.is_set():
                return
            t = threading.Thread(
                target=self._lib.iocpsrv_stop, args=(self._h, ms),
                name="iocpsrv-stop", daemon=True)
            self._stopper = t
        t.start()

    def _join_threads(self) -> None:
        with self._state:
            d, s = self._dispatcher, self._stopper
        if d is not None:
            d.join()
        if s is not None:
            s.join()
        with self._state:
            self._dispatcher = self._stopper = None

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server has stopped (e.g. stop() called from a callback).
        True if it has stopped, False on timeout."""
        return self._done.wait(timeout)

    def serve_forever(self) -> None:
        """start() if needed, then wait until stopped. Ctrl-C (KeyboardInterrupt, or
        SIGINT however sent) stops the server and returns normally, as stopping is
        what Ctrl-C asks of a server; any other exception stops it and propagates."""
        if self._dispatcher is None:
            self.start()
        try:
            # In slices: a KeyboardInterrupt reaches the main thread between them.
            while not self._done.wait(0.5):
                pass
        except KeyboardInterrupt:
            log.info("KeyboardInterrupt: stopping the server on port %s", self.port)
            self._stop_after_interrupt()
        except BaseException:
            self.stop()
            raise
        else:
            self.stop()

    def _stop_after_interrupt(self) -> None:
        """stop(), where a second Ctrl-C (impatience, or one signal sent both to the
        process and to its group) does not end the program with a traceback. It cannot
        cut the wait for clients short: the C stop blocks (up to its timeout, 5 s) and
        Python sees the signal only when it returns; what is left (joining the
        dispatcher) is then done without waiting."""
        try:
            self.stop()
        except KeyboardInterrupt:
            self.stop(0)

    def close(self, timeout: float | None = 5.0) -> None:
        """stop(timeout), then free the native server. Not from a callback."""
        if threading.current_thread() is self._dispatcher:
            raise InCallback(n.IOCPSRV_EINCALLBACK, "close() from a callback; use stop()")
        self.stop(timeout)
        with self._life:
            self._join_threads()
            if not self._closed:
                self._closed = True
                self._finalizer()
                self._h = ffi.NULL

    @property
    def running(self) -> bool:
        """True from start() until the dispatcher has delivered the last event."""
        return not self._done.is_set()

    def __enter__(self) -> "Server":
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _stop_at_exit(self, timeout: float) -> None:
        if not self._closed and threading.current_thread() is not self._dispatcher:
            self.stop(timeout)

    # ---- the dispatcher --------------------------------------------------------------

    def _run(self) -> None:
        lib, h = self._lib, self._h
        buf = self._poll_buffer
        wait_ms = self._poll_ms
        short_ms = min(wait_ms, 10)
        held = self._held
        self._met: set[int] = set()  # connections accepted by on_connect (a refused one never is)
        self._pump = get_ident()
        try:
            while True:
                if self._resumed:
                    self._deliver_held()
                # The sends of the last batch go to the engine before this poll, which
                # writes them (pull_batch_sends): one write per connection per batch.
                self._flush_sends()
                if self._send_failures:
                    self._report_send_failures()
                # While a connection is paused with held packets, resume() from another
                # thread cannot interrupt the poll: wait less so they follow promptly.
                end = buf.poll(lib, h, short_ms if held else wait_ms, self._max_packet)
                if end <= 0:
                    if end == 0:
                        continue
                    if end != _ESTOPPED:
                        log.error("iocpsrv_poll_packed failed: %s", error_from_code(end))
                    break
                self._dispatch(end)
        finally:
            try:  # (nothing waits normally: each poll is preceded by a hand-over)
                self._flush_sends()
                if self._send_failures:
                    self._report_send_failures()
            finally:
                self._pump = -1
                self._done.set()

    def _dispatch(self, end: int) -> None:
        """Deliver the records of one poll, in order."""
        deliver = self._deliver_packets if self.on_batch is None else self._deliver_batches
        dispatch_records(self._poll_buffer, end, deliver, self._dispatch_event)

    def _deliver_packets(self, pairs: list[Packet]) -> None:
        """The hot loop: each packet to on_packet. The checks come right before each
        call, so a disconnect() or pause() made by one applies to the next."""
        on_packet = self.on_packet
        if on_packet is None:
            return
        met, closing, held = self._met, self._closing, self._held
        for conn, data in pairs:
            if conn not in met or (closing and conn in closing):
                continue
            if held and self._hold(conn, data):
                continue
            try:
                if on_packet(conn, data) is False:
                    self._close_requested(conn)
            except BaseException:
                self._callback_failed("on_packet", conn)

    def _deliver_batches(self, pairs: list[Packet]) -> None:
        """on_batch mode: the run's packets of accepted, open, unpaused connections (the
        others are dropped or held, as for on_packet), as one list."""
        if not self._all_deliverable(pairs):
            met, closing = self._met, self._closing
            pairs = [(conn, data) for conn, data in pairs
                     if conn in met and conn not in closing and not self._hold(conn, data)]
        if pairs:
            self._deliver_batch(pairs)

    def _all_deliverable(self, pairs: list[Packet]) -> bool:
        conns = set(map(_first, pairs))
        return (conns <= self._met and (not self._closing or conns.isdisjoint(self._closing))
                and (not self._held or conns.isdisjoint(self._held)))

    def _dispatch_event(self, offset: int) -> None:
        """The CONNECT, DISCONNECT or DRAIN record at offset."""
        self._handle_event(*read_event(self._poll_buffer, offset))

    def _handle_event(self, kind: int, reason: int, conn: int, payload: bytes,
                      user: int = 0) -> None:
        met = self._met
        if kind == _CONNECT:
            on_connect = self.on_connect
            if on_connect is not None:
                peer = peer_text(payload)
                try:
                    r = on_connect(conn, peer)
                except BaseException:
                    self._callback_failed("on_connect", conn, met=False)
                    return
                if r is False:
                    self._refuse(conn)
                    return
            met.add(conn)
            self._sendable.add(conn)
        elif kind == _DISCONNECT:
            if conn in met:
                met.discard(conn)
                if self._held:
                    for data in self._release(conn):
                        if not self._deliver_packet(conn, data):
                            break
            elif user != OUTBOUND_USER:
                return  # refused: no callback at all
            # (else an outbound attempt that never got established: this is its one
            # callback)
            self._forget(conn)
            on_disconnect = self.on_disconnect
            if on_disconnect is None:
                return
            try:
                on_disconnect(conn, REASONS.get(reason, reason))
            except BaseException:
                try:
                    log.exception("on_disconnect callback raised for connection %d", conn)
                except BaseException:  # noqa: BLE001
                    pass
        elif kind == _DRAIN:
            if conn not in met or conn in self._closing:
                return
            self._drained(conn, alive=True)
            on_drain = self.on_drain
            if on_drain is None:
                return
            try:
                on_drain(conn)
            except BaseException:
                self._callback_failed("on_drain", conn)

    def _deliver_batch(self, batch: list[Packet]) -> None:
        """on_batch(batch). It may raise: logged, and no connection is aborted (which
        one failed is unknown); the next batch is delivered as usual."""
        on_batch = self.on_batch
        if on_batch is None:
            return
        try:
            on_batch(batch)
        except BaseException:
            try:
                log.exception("on_batch callback raised (a batch of %d packets); the "
                              "server goes on", len(batch))
            except BaseException:  # noqa: BLE001
                pass

    def _deliver_packet(self, conn: int, data: bytes) -> bool:
        """One held packet through on_packet (or on_batch); False if the connection is
        now closing."""
        if self.on_batch is not None:
            self._deliver_batch([(conn, data)])
            return conn not in self._closing
        cb = self.on_packet
        if cb is None:
            return True
        try:
            r = cb(conn, data)
        except BaseException:
            self._callback_failed("on_packet", conn)
            return False
        if r is False:
            self._close_requested(conn)
            return False
        return True

    def _deliver_held(self) -> None:
        while (x := self._next_held()) is not None:
            self._deliver_packet(*x)
