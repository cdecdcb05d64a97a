"""iocpsrv: Python binding of the iocpsrv TCP server engine (cffi, ABI mode, pull mode).

    import iocpsrv

    def on_packet(conn, data):
        srv.send(conn, data)          # echo

    with iocpsrv.Server("127.0.0.1", 5150, on_packet=on_packet) as srv:
        srv.wait()

See README.md for the threading contract, the exception policy and iocpsrv.aio.
"""

from types import ModuleType as _ModuleType

from ._errors import (
    AddressInUse,
    AddressNotAvailable,
    BufferTooSmall,
    Busy,
    ConnectFailed,
    ConnectionNotFound,
    ConnectRefused,
    ConnectTimeout,
    InCallback,
    InvalidArgument,
    InvalidState,
    IocpsrvError,
    NameNotResolved,
    NotSupported,
    OptionOutOfRange,
    OutOfMemory,
    PacketTooLarge,
    PermissionDenied,
    SendQueueFull,
    ServerStopped,
    SystemFailure,
    TooManyConnections,
    UnknownOption,
    error_from_code,
)
from ._native import (
    LibraryError,
    LibraryNotFoundError,
    LibraryVersionError,
    library_path,
)
from ._server import Server
from ._types import OPTIONS, ConnInfo, EventType, Framing, ProxyMode, Reason, Stats

__version__ = "1.1.0"

__all__ = [
    "Server",
    "Reason",
    "Framing",
    "ProxyMode",
    "EventType",
    "ConnInfo",
    "Stats",
    "OPTIONS",
    "version",
    "version_string",
    "library_path",
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
    "LibraryError",
    "LibraryNotFoundError",
    "LibraryVersionError",
]


def version() -> tuple[int, int, int]:
    """The native library's (major, minor, patch)."""
    from ._native import library

    v = int(library().iocpsrv_version())
    return (v >> 16, (v >> 8) & 0xFF, v & 0xFF)


def version_string() -> str:
    """The native library's version text, e.g. "1.0.0 epoll"."""
    from ._native import ffi, library

    text: bytes = ffi.string(library().iocpsrv_version_string())
    return text.decode()


def __getattr__(name: str) -> _ModuleType:
    # iocpsrv.aio without importing asyncio for users of the threaded server.
    if name == "aio":
        import importlib

        return importlib.import_module(".aio", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
