"""Enums, result dataclasses and option handling shared by the sync and asyncio servers."""

from __future__ import annotations

import enum
import operator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, List, Optional, Tuple, TypeVar, Union

from . import _native as n
from ._errors import IocpsrvError, OptionOutOfRange, error_from_code

__all__ = [
    "BytesLike",
    "OptionValue",
    "Packet",
    "Refused",
    "PayloadT",
    "OnConnect",
    "OnPacket",
    "OnDisconnect",
    "OnDrain",
    "OnBatch",
    "OnSendFailed",
    "NamedIntEnum",
    "Reason",
    "Framing",
    "ProxyMode",
    "EventType",
    "ConnInfo",
    "Stats",
    "OPTIONS",
    "STR_OPTIONS",
    "normalize_options",
]


if TYPE_CHECKING:
    # What the buffer protocol accepts (bytes, bytearray, memoryview, array, mmap...).
    from _typeshed import ReadableBuffer as BytesLike
else:
    BytesLike = Union[bytes, bytearray, memoryview]


# A keyword option's value: an int (IntEnums and numpy integers included), a name for
# framing= and proxy_protocol=, for proxy_trusted= a str, a list of str or None, for
# connect_source= a str or None.
OptionValue = Union[int, str, Iterable[str], None]

# (conn, payload): a packet as on_batch receives it and send_many takes it.
Packet = Tuple[int, bytes]
# A payload type as the caller gave it: send_many returns refused payloads unchanged.
PayloadT = TypeVar("PayloadT", bound=BytesLike)
# (conn, payload, error): a send that send_many could not queue.
Refused = Tuple[int, PayloadT, IocpsrvError]

# The threaded server's callbacks (a False return from on_connect refuses the client,
# from on_packet closes the connection; other return values are ignored).
OnConnect = Callable[[int, str], object]
OnPacket = Callable[[int, bytes], object]
OnDisconnect = Callable[[int, "Reason | int"], object]
OnDrain = Callable[[int], object]
OnBatch = Callable[[List[Packet]], object]
OnSendFailed = Callable[[int, bytes, IocpsrvError], object]


class NamedIntEnum(enum.IntEnum):
    """An IntEnum that prints as its name: ``str()``, ``print()``, f-strings and "%s"
    give "Reason.PEER_CLOSED" on every Python (3.11's IntEnum would give "1"). It
    still equals, hashes and orders as its int, and formats as one with a numeric spec
    (f"{reason:d}", "%d")."""

    def __str__(self) -> str:
        return f"{type(self).__name__}.{self.name}"

    def __format__(self, spec: str) -> str:
        try:
            return format(str(self), spec)
        except ValueError:  # a numeric spec ("d", "x", "04"): format the int
            return format(int(self), spec)


class Reason(NamedIntEnum):
    """Why a connection ended (iocpsrv_reason_t)."""

    PEER_CLOSED = n.IOCPSRV_REASON_PEER_CLOSED
    PEER_RESET = n.IOCPSRV_REASON_PEER_RESET
    LOCAL_CLOSE = n.IOCPSRV_REASON_LOCAL_CLOSE
    LOCAL_ABORT = n.IOCPSRV_REASON_LOCAL_ABORT
    PROTOCOL_ERROR = n.IOCPSRV_REASON_PROTOCOL_ERROR
    IDLE_TIMEOUT = n.IOCPSRV_REASON_IDLE_TIMEOUT
    SERVER_STOPPED = n.IOCPSRV_REASON_SERVER_STOPPED
    OUT_OF_MEMORY = n.IOCPSRV_REASON_OUT_OF_MEMORY
    # An outbound connection (Server.connect) that never got established:
    CONNECT_REFUSED = n.IOCPSRV_REASON_CONNECT_REFUSED  # nothing listens there
    CONNECT_UNREACHABLE = n.IOCPSRV_REASON_CONNECT_UNREACHABLE  # no route
    CONNECT_TIMEOUT = n.IOCPSRV_REASON_CONNECT_TIMEOUT  # not within connect_timeout_ms
    NAME_NOT_RESOLVED = n.IOCPSRV_REASON_NAME_NOT_RESOLVED  # the host name has no address
    CONNECT_FAILED = n.IOCPSRV_REASON_CONNECT_FAILED  # any other failure of the attempt

    @property
    def text(self) -> str:
        """The library's name for it, e.g. "peer-closed"."""
        name: bytes = n.ffi.string(n.library().iocpsrv_reason_name(int(self)))
        return name.decode()


# Reason values as the dispatcher hands them out; unknown (newer) values stay ints.
REASONS: dict[int, Reason] = {int(r): r for r in Reason}


class Framing(NamedIntEnum):
    """Values of the ``framing`` option (iocpsrv_framing_t)."""

    LEN32_LE = n.IOCPSRV_FRAMING_LEN32_LE
    LEN32_BE = n.IOCPSRV_FRAMING_LEN32_BE
    LEN16_LE = n.IOCPSRV_FRAMING_LEN16_LE
    LEN16_BE = n.IOCPSRV_FRAMING_LEN16_BE
    RAW = n.IOCPSRV_FRAMING_RAW


class ProxyMode(NamedIntEnum):
    """Values of the ``proxy_protocol`` option (iocpsrv_proxy_mode_t)."""

    OFF = n.IOCPSRV_PROXY_OFF
    REQUIRED = n.IOCPSRV_PROXY_REQUIRED
    OPTIONAL = n.IOCPSRV_PROXY_OPTIONAL


class EventType(NamedIntEnum):
    """Pull-mode event types (iocpsrv_event_type_t)."""

    CONNECT = n.IOCPSRV_EVENT_CONNECT
    PACKET = n.IOCPSRV_EVENT_PACKET
    DISCONNECT = n.IOCPSRV_EVENT_DISCONNECT
    DRAIN = n.IOCPSRV_EVENT_DRAIN


@dataclass(frozen=True)
class ConnInfo:
    """What iocpsrv_conn_info reports about one connection."""

    id: int
    peer: str
    local: str
    connect_time_ms: int  # Unix time in milliseconds
    bytes_in: int  # on the wire, headers included
    bytes_out: int  # handed to the kernel, headers included
    packets_in: int
    packets_out: int  # packets queued
    pending_send_bytes: int
    flags: int
    # The balancer that sent a PROXY protocol header, else "" (None: the loaded library
    # predates the field).
    proxy: str | None = None

    @property
    def paused(self) -> bool:
        return bool(self.flags & n.IOCPSRV_CONN_PAUSED)

    @property
    def closing(self) -> bool:
        return bool(self.flags & n.IOCPSRV_CONN_CLOSING)

    @property
    def outbound(self) -> bool:
        """Made by Server.connect, not accepted."""
        return bool(self.flags & n.IOCPSRV_CONN_OUTBOUND)

    @property
    def connecting(self) -> bool:
        """Outbound and not established yet (``peer`` is then the target as given, or
        the address being tried)."""
        return bool(self.flags & n.IOCPSRV_CONN_CONNECTING)

    @property
    def connect_time(self) -> float:
        """Unix time in seconds."""
        return self.connect_time_ms / 1000.0


@dataclass(frozen=True)
class Stats:
    """What iocpsrv_stats reports (totals cover the server's whole life)."""

    workers: int
    connections_now: int
    connections_total: int
    connections_refused: int
    connections_rejected: int
    packets_in: int
    packets_out: int
    bytes_in: int
    bytes_out: int
    accept_errors: int
    protocol_errors: int
    send_queue_rejections: int
    idle_timeouts: int
    pull_queue_depth: int
    # Appended to iocpsrv_stats_t later: None when the loaded library predates them.
    workers_peak: int | None = None
    workers_busy: int | None = None
    pool_grows: int | None = None
    pool_shrinks: int | None = None
    alloc_failures: int | None = None
    source_refusals: int | None = None
    proxy_untrusted: int | None = None


STATS_FIELDS = [f for f in Stats.__dataclass_fields__]


def _ends(ctype: str) -> dict[str, int]:
    """{field: end offset} of a struct, to skip fields an older library does not fill
    (it fills at most its own sizeof and says how much in struct_size)."""
    return {name: f.offset + n.ffi.sizeof(f.type) for name, f in n.ffi.typeof(ctype).fields}


_CONN_INFO_ENDS = _ends("iocpsrv_conn_info_t")


def _text(chars: Any) -> str:
    text: bytes = n.ffi.string(chars)
    return text.decode("utf-8", "replace")


def conn_info_from_c(ci: Any) -> ConnInfo:
    filled = int(ci.struct_size)
    return ConnInfo(
        id=int(ci.id),
        peer=_text(ci.peer),
        local=_text(ci.local),
        connect_time_ms=int(ci.connect_time_ms),
        bytes_in=int(ci.bytes_in),
        bytes_out=int(ci.bytes_out),
        packets_in=int(ci.packets_in),
        packets_out=int(ci.packets_out),
        pending_send_bytes=int(ci.pending_send_bytes),
        flags=int(ci.flags),
        proxy=_text(ci.proxy) if _CONN_INFO_ENDS["proxy"] <= filled else None,
    )


_STATS_ENDS = _ends("iocpsrv_stats_t")


def stats_from_c(st: Any) -> Stats:
    filled = int(st.struct_size)  # the library fills at most its own sizeof, and says so
    return Stats(**{f: int(getattr(st, f)) for f, end in _STATS_ENDS.items()
                    if f in STATS_FIELDS and end <= filled})


# Every IOCPSRV_OPT_* as a lowercase keyword.
OPTIONS = {
    "worker_threads": n.IOCPSRV_OPT_WORKER_THREADS,
    "concurrency": n.IOCPSRV_OPT_CONCURRENCY,
    "listen_backlog": n.IOCPSRV_OPT_LISTEN_BACKLOG,
    "accepts_posted": n.IOCPSRV_OPT_ACCEPTS_POSTED,
    "max_connections": n.IOCPSRV_OPT_MAX_CONNECTIONS,
    "max_packet_size": n.IOCPSRV_OPT_MAX_PACKET_SIZE,
    "framing": n.IOCPSRV_OPT_FRAMING,
    "send_queue_limit": n.IOCPSRV_OPT_SEND_QUEUE_LIMIT,
    "idle_timeout_ms": n.IOCPSRV_OPT_IDLE_TIMEOUT_MS,
    "keepalive_ms": n.IOCPSRV_OPT_KEEPALIVE_MS,
    "nodelay": n.IOCPSRV_OPT_NODELAY,
    "rcvbuf": n.IOCPSRV_OPT_RCVBUF,
    "sndbuf": n.IOCPSRV_OPT_SNDBUF,
    "read_buffer": n.IOCPSRV_OPT_READ_BUFFER,
    "pull_mode": n.IOCPSRV_OPT_PULL_MODE,
    "pull_queue_limit": n.IOCPSRV_OPT_PULL_QUEUE_LIMIT,
    "close_timeout_ms": n.IOCPSRV_OPT_CLOSE_TIMEOUT_MS,
    "ipv6_only": n.IOCPSRV_OPT_IPV6_ONLY,
    "pool_min": n.IOCPSRV_OPT_POOL_MIN,
    "pool_max": n.IOCPSRV_OPT_POOL_MAX,
    "pool_busy_ms": n.IOCPSRV_OPT_POOL_BUSY_MS,
    "pool_idle_ms": n.IOCPSRV_OPT_POOL_IDLE_MS,
    "pool_cpu_high": n.IOCPSRV_OPT_POOL_CPU_HIGH,
    "pool_cpu_low": n.IOCPSRV_OPT_POOL_CPU_LOW,
    "pull_batch_sends": n.IOCPSRV_OPT_PULL_BATCH_SENDS,
    "proxy_protocol": n.IOCPSRV_OPT_PROXY_PROTOCOL,
    "reuseport": n.IOCPSRV_OPT_REUSEPORT,
    "proxy_trusted": n.IOCPSRV_OPT_PROXY_TRUSTED,
    "max_connections_per_source": n.IOCPSRV_OPT_MAX_CONNECTIONS_PER_SOURCE,
    "connect_timeout_ms": n.IOCPSRV_OPT_CONNECT_TIMEOUT_MS,
    "connect_source": n.IOCPSRV_OPT_CONNECT_SOURCE,
}

# Options whose value is text (iocpsrv_set_option_str), the rest are ints.
STR_OPTIONS = {"proxy_trusted", "connect_source"}
# Text options that take a list of entries too (joined with ", ").
_LIST_OPTIONS = {"proxy_trusted"}

_FRAMING_NAMES = {
    "len32_le": Framing.LEN32_LE,
    "len32": Framing.LEN32_LE,
    "len32_be": Framing.LEN32_BE,
    "len16_le": Framing.LEN16_LE,
    "len16": Framing.LEN16_LE,
    "len16_be": Framing.LEN16_BE,
    "raw": Framing.RAW,
}

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


_PROXY_NAMES = {"off": ProxyMode.OFF, "required": ProxyMode.REQUIRED,
                "optional": ProxyMode.OPTIONAL}

# Options that also take a name.
_NAMED: dict[str, tuple[dict[str, Any], str]] = {"framing": (_FRAMING_NAMES, "Framing"), "proxy_protocol": (_PROXY_NAMES, "ProxyMode")}


def _str_option_value(name: str, value: OptionValue) -> str | None:
    """None clears; a str is passed as it is; for proxy_trusted an iterable of str is
    joined with ", "."""
    if value is None or isinstance(value, str):
        return value
    if name not in _LIST_OPTIONS:
        raise TypeError(f"option {name}= takes a str (or None), not {type(value).__name__}")
    if isinstance(value, (list, tuple, set, frozenset)) and all(isinstance(v, str) for v in value):
        return ", ".join(value)
    raise TypeError(
        f"option {name}= takes a str (or a list of str, or None), not {type(value).__name__}"
    )


def _option_value(name: str, value: OptionValue) -> int | str | None:
    if name in STR_OPTIONS:
        return _str_option_value(name, value)
    if name in _NAMED and isinstance(value, str):
        names, enum_name = _NAMED[name]
        try:
            return int(names[value.lower().replace("-", "_")])
        except KeyError:
            raise ValueError(
                f"{name}={value!r}: expected one of {sorted(set(names))}, "
                f"a {enum_name} value or an int"
            ) from None
    if isinstance(value, bool):
        return int(value)
    number = _as_int(name, value)
    if not _INT64_MIN <= number <= _INT64_MAX:
        raise OptionOutOfRange(n.IOCPSRV_ERANGE, f"option {name}={number}")
    return number


def _as_int(name: str, value: object) -> int:
    """index() accepts ints, numpy integers and IntEnums, refuses floats and strings."""
    if isinstance(value, int):
        return int(value)
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"option {name}= takes an int, not {type(value).__name__}") from None


def normalize_options(options: dict[str, OptionValue]) -> list[tuple[str, int, int | str | None]]:
    """Check keyword options; return [(name, option id, value)]: an int, or for the
    STR_OPTIONS a str or None.

    Unknown keyword -> TypeError; wrong type -> TypeError; bad framing name -> ValueError;
    pull_mode other than 1 -> ValueError (the binding always runs in pull mode). Range
    checks are the library's (OptionOutOfRange, a ValueError) when the value is set."""
    out = []
    for name, value in options.items():
        opt = OPTIONS.get(name)
        if opt is None:
            raise TypeError(
                f"unexpected keyword argument {name!r}; options are: {', '.join(OPTIONS)}"
            )
        v = _option_value(name, value)
        if name == "pull_mode":
            if v != 1:
                raise ValueError(
                    "pull_mode: the Python binding always runs the engine in pull mode "
                    "(native code never calls into Python)"
                )
            continue
        out.append((name, opt, v))
    return out


def set_options(lib: Any, handle: Any, opts: list[tuple[str, int, int | str | None]]) -> None:
    for name, opt, v in opts:
        if name in STR_OPTIONS:
            try:
                fn = lib.iocpsrv_set_option_str
            except AttributeError:  # a library older than string options
                raise error_from_code(n.IOCPSRV_EUNKNOWNOPT, f"option {name}") from None
            rc = fn(handle, opt, n.ffi.NULL if v is None else str(v).encode())
            if rc < 0:
                raise error_from_code(rc, f"option {name}={v!r}")
            continue
        rc = lib.iocpsrv_set_option(handle, opt, v)
        if rc < 0:
            raise error_from_code(rc, f"option {name}={v}")
