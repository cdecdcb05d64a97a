"""Exceptions: one class per IOCPSRV_E* code, all under IocpsrvError.

Each class also has the built-in base a Python user would catch for that kind of
failure: the OS-level ones (an address in use or not available, permission denied, a
failed system call, an unsupported platform feature) are OSError subclasses with
``errno`` and ``strerror`` set, like the socket module's errors; a bad value is a
ValueError, an unknown connection id a LookupError, out of memory a MemoryError.
"""

from __future__ import annotations

import errno
import socket
from typing import TYPE_CHECKING, Optional, Union

from . import _native as n

if TYPE_CHECKING:
    from ._types import Reason

__all__ = [
    "IocpsrvError",
    "InvalidArgument",
    "OutOfMemory",
    "ConnectionNotFound",
    "SendQueueFull",
    "PacketTooLarge",
    "ServerStopped",
    "InvalidState",
    "AddressInUse",
    "AddressNotAvailable",
    "NotSupported",
    "Busy",
    "UnknownOption",
    "OptionOutOfRange",
    "InCallback",
    "SystemFailure",
    "PermissionDenied",
    "BufferTooSmall",
    "TooManyConnections",
    "ConnectFailed",
    "ConnectRefused",
    "ConnectTimeout",
    "NameNotResolved",
    "error_from_code",
    "connect_error",
]


def _text(fn: str, code: int) -> str:
    try:
        lib = n.library()
    except n.LibraryError:
        return ""
    text: bytes = n.ffi.string(getattr(lib, fn)(code))
    return text.decode("utf-8", "replace")


class IocpsrvError(Exception):
    """An iocpsrv call failed.

    ``code`` is the library's negative IOCPSRV_E* value, ``name`` its name (from
    iocpsrv_err_name, e.g. "IOCPSRV_ENOTCONN") and ``message`` its text (from
    iocpsrv_strerror). ``detail`` says what the binding was doing, when known.
    The OSError subclasses also carry ``errno`` (an ``errno`` module value, or None
    where the engine does not say) and ``strerror`` (the message).
    """

    code: int = 0

    def __init__(self, code: Optional[int] = None, detail: Optional[str] = None):
        if code is None:
            code = type(self).code
        self.code = code
        self.name = _text("iocpsrv_err_name", code) or f"IOCPSRV_E({code})"
        self.message = _text("iocpsrv_strerror", code) or "unknown error"
        self.detail = detail
        text = f"{self.message} ({self.name}, {code})"
        if detail:
            text = f"{detail}: {text}"
        super().__init__(text)
        if isinstance(self, OSError):
            _fill_os_fields(self, code, self.message)

    # OSError's own __str__ would print "[Errno 98] message" and drop the detail and
    # the library's name for the code.
    __str__ = BaseException.__str__

    def __reduce__(self) -> tuple[type[IocpsrvError], tuple[int, Optional[str]]]:
        return (type(self), (self.code, self.detail))


class InvalidArgument(IocpsrvError, ValueError):
    code = n.IOCPSRV_EINVAL


class OutOfMemory(IocpsrvError, MemoryError):
    code = n.IOCPSRV_ENOMEM


class ConnectionNotFound(IocpsrvError, LookupError):
    """Unknown, closed or stale connection id (IOCPSRV_ENOTCONN)."""

    code = n.IOCPSRV_ENOTCONN


class SendQueueFull(IocpsrvError):
    """The connection's send queue is over send_queue_limit (IOCPSRV_EQUEUEFULL).

    Drop the packet, retry after on_drain, or disconnect the client."""

    code = n.IOCPSRV_EQUEUEFULL


class PacketTooLarge(IocpsrvError, ValueError):
    code = n.IOCPSRV_ETOOBIG


class ServerStopped(IocpsrvError):
    """The server is not running (IOCPSRV_ESTOPPED)."""

    code = n.IOCPSRV_ESTOPPED


class InvalidState(IocpsrvError):
    code = n.IOCPSRV_ESTATE


class AddressInUse(IocpsrvError, OSError):
    """listen(): the port is taken (errno EADDRINUSE)."""

    code = n.IOCPSRV_EADDRINUSE


class AddressNotAvailable(IocpsrvError, OSError):
    """listen(): the host is not an address of this machine, or not an address at all
    (errno EADDRNOTAVAIL)."""

    code = n.IOCPSRV_EADDRNOTAVAIL


class NotSupported(IocpsrvError, OSError):
    """Not available on this platform, e.g. reuseport on Windows (errno ENOTSUP)."""

    code = n.IOCPSRV_ENOTSUP


class Busy(IocpsrvError):
    code = n.IOCPSRV_EBUSY


class UnknownOption(IocpsrvError, ValueError):
    code = n.IOCPSRV_EUNKNOWNOPT


class OptionOutOfRange(IocpsrvError, ValueError):
    code = n.IOCPSRV_ERANGE


class InCallback(IocpsrvError):
    code = n.IOCPSRV_EINCALLBACK


class SystemFailure(IocpsrvError, OSError):
    """A system call failed for a reason the engine has no code for; errno is None
    (the engine does not pass the OS's code on)."""

    code = n.IOCPSRV_ESYSTEM


class PermissionDenied(IocpsrvError, PermissionError):
    """listen(): not allowed, e.g. a port below 1024 without the privilege (errno
    EACCES)."""

    code = n.IOCPSRV_EACCES


class BufferTooSmall(IocpsrvError):
    """The buffer given to iocpsrv_poll_packed cannot hold the next event
    (IOCPSRV_ENOSPACE). The servers grow their buffer and never raise it."""

    code = n.IOCPSRV_ENOSPACE


class TooManyConnections(IocpsrvError):
    """connect(): no room for another connection (IOCPSRV_ELIMIT): max_connections,
    which counts accepted and outbound connections together, is reached, or no
    descriptor is left for a socket."""

    code = n.IOCPSRV_ELIMIT


# ---- an outbound connection that was never established ------------------------------


class ConnectFailed(ConnectionError):
    """An outbound connection was never established (``await aio.Server.connect()``).

    Not a call's error code (the call itself succeeded) but the end of the attempt, so
    not an IocpsrvError: a ConnectionError (an OSError), as for a failed
    socket.create_connection. ``reason`` is the Reason its disconnect carried
    (CONNECT_REFUSED, CONNECT_UNREACHABLE, CONNECT_TIMEOUT, NAME_NOT_RESOLVED,
    CONNECT_FAILED, or SERVER_STOPPED, LOCAL_CLOSE, LOCAL_ABORT when it was ended
    first), ``conn`` the attempt's connection id, ``host`` and ``port`` the target.
    ``errno`` is ECONNREFUSED or ETIMEDOUT for those two reasons, else None;
    ``strerror`` the library's name for the reason ("connect-refused").

    Where Python has a class for the failure, the exception is also one: a refusal is
    a ConnectRefused (a ConnectionRefusedError), a timeout a ConnectTimeout (a
    TimeoutError), a name that does not resolve a NameNotResolved (a socket.gaierror)."""

    reason: Union[Reason, int]  # an int only for a reason newer than this binding

    def __init__(self, reason: Union[Reason, int], conn: int = 0, host: str = "",
                 port: int = 0):
        text = _reason_text(int(reason))
        super().__init__(_REASON_ERRNO.get(int(reason)), text)
        self.reason = reason
        self.conn = conn
        self.host = host
        self.port = port
        self.args = (f"connect to {host!r} port {port} failed: {text} ({reason})",)

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self) -> tuple[type[ConnectFailed], tuple[Union[Reason, int], int, str, int]]:
        return (type(self), (self.reason, self.conn, self.host, self.port))


class ConnectRefused(ConnectFailed, ConnectionRefusedError):
    """Nothing listens at the target (Reason.CONNECT_REFUSED, errno ECONNREFUSED)."""


class ConnectTimeout(ConnectFailed, TimeoutError):
    """Not established within the connect_timeout_ms option (Reason.CONNECT_TIMEOUT,
    errno ETIMEDOUT)."""


class NameNotResolved(ConnectFailed, socket.gaierror):
    """The host name has no address (Reason.NAME_NOT_RESOLVED)."""


_REASON_ERRNO: dict[int, int] = {
    n.IOCPSRV_REASON_CONNECT_REFUSED: errno.ECONNREFUSED,
    n.IOCPSRV_REASON_CONNECT_TIMEOUT: errno.ETIMEDOUT,
}

_CONNECT_CLASSES: dict[int, type[ConnectFailed]] = {
    n.IOCPSRV_REASON_CONNECT_REFUSED: ConnectRefused,
    n.IOCPSRV_REASON_CONNECT_TIMEOUT: ConnectTimeout,
    n.IOCPSRV_REASON_NAME_NOT_RESOLVED: NameNotResolved,
}


def _reason_text(reason: int) -> str:
    try:
        lib = n.library()
    except n.LibraryError:
        return f"reason {reason}"
    text: bytes = n.ffi.string(lib.iocpsrv_reason_name(reason))
    return text.decode("utf-8", "replace")


def connect_error(reason: Union[Reason, int], conn: int = 0, host: str = "", port: int = 0) -> ConnectFailed:
    """The exception for an outbound attempt that ended with `reason` before it was
    established (ConnectFailed, or its subclass for that reason)."""
    return _CONNECT_CLASSES.get(int(reason), ConnectFailed)(reason, conn, host, port)


# The errno of each OS-level code (the classes deriving from OSError).
_ERRNO: dict[int, Optional[int]] = {
    n.IOCPSRV_EADDRINUSE: errno.EADDRINUSE,
    n.IOCPSRV_EADDRNOTAVAIL: errno.EADDRNOTAVAIL,
    n.IOCPSRV_EACCES: errno.EACCES,
    n.IOCPSRV_ENOTSUP: getattr(errno, "ENOTSUP", errno.EOPNOTSUPP),
    n.IOCPSRV_ESYSTEM: None,
}

_BY_CODE: dict[int, type[IocpsrvError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        OutOfMemory,
        ConnectionNotFound,
        SendQueueFull,
        PacketTooLarge,
        ServerStopped,
        InvalidState,
        AddressInUse,
        AddressNotAvailable,
        NotSupported,
        Busy,
        UnknownOption,
        OptionOutOfRange,
        InCallback,
        SystemFailure,
        PermissionDenied,
        BufferTooSmall,
        TooManyConnections,
    )
}


def _fill_os_fields(error: OSError, code: int, message: str) -> None:
    error.errno = _ERRNO.get(code)  # type: ignore[assignment]  # None is OSError's own "unknown"
    error.strerror = message


def error_from_code(code: int, detail: Optional[str] = None) -> IocpsrvError:
    """The exception for a negative IOCPSRV_E* code (IocpsrvError for unknown codes)."""
    cls = _BY_CODE.get(code, IocpsrvError)
    return cls(code, detail)
