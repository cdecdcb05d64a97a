"""Exceptions: one class per IOCPSRV_E* code, all under IocpsrvError."""

from __future__ import annotations

from . import _native as n

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
    "error_from_code",
]


def _text(fn, code: int) -> str:
    try:
        lib = n.library()
    except n.LibraryError:
        return ""
    return n.ffi.string(getattr(lib, fn)(code)).decode("utf-8", "replace")


class IocpsrvError(Exception):
    """An iocpsrv call failed.

    ``code`` is the library's negative IOCPSRV_E* value, ``name`` its name (from
    iocpsrv_err_name, e.g. "IOCPSRV_ENOTCONN") and ``message`` its text (from
    iocpsrv_strerror). ``detail`` says what the binding was doing, when known.
    """

    code: int = 0

    def __init__(self, code: int | None = None, detail: str | None = None):
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

    def __reduce__(self):
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


class AddressInUse(IocpsrvError):
    code = n.IOCPSRV_EADDRINUSE


class AddressNotAvailable(IocpsrvError):
    code = n.IOCPSRV_EADDRNOTAVAIL


class NotSupported(IocpsrvError):
    code = n.IOCPSRV_ENOTSUP


class Busy(IocpsrvError):
    code = n.IOCPSRV_EBUSY


class UnknownOption(IocpsrvError, ValueError):
    code = n.IOCPSRV_EUNKNOWNOPT


class OptionOutOfRange(IocpsrvError, ValueError):
    code = n.IOCPSRV_ERANGE


class InCallback(IocpsrvError):
    code = n.IOCPSRV_EINCALLBACK


class SystemFailure(IocpsrvError):
    code = n.IOCPSRV_ESYSTEM


class PermissionDenied(IocpsrvError):
    code = n.IOCPSRV_EACCES


class BufferTooSmall(IocpsrvError):
    """The buffer given to iocpsrv_poll_packed cannot hold the next event
    (IOCPSRV_ENOSPACE). The servers grow their buffer and never raise it."""

    code = n.IOCPSRV_ENOSPACE


_BY_CODE = {
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
    )
}


def error_from_code(code: int, detail: str | None = None) -> IocpsrvError:
    """The exception for a negative IOCPSRV_E* code (IocpsrvError for unknown codes)."""
    cls = _BY_CODE.get(code, IocpsrvError)
    return cls(code, detail)
