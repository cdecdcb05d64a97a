"""The C ABI of iocpsrv as cffi sees it (ABI mode: no compiler), and library loading.

The declarations below mirror dll/include/iocpsrv.h exactly (struct layouts included);
the header's macros and enum values are plain Python constants. Nothing here ever creates
an ``ffi.callback``: the binding runs the engine in pull mode, so native code never calls
into Python.
"""

from __future__ import annotations

import ctypes.util
import os
import sys
import threading
from pathlib import Path
from typing import Any

from cffi import FFI

__all__ = [
    "ffi",
    "library",
    "library_path",
    "LibraryError",
    "LibraryNotFoundError",
    "LibraryVersionError",
    "ABI_MAJOR",
    "source_checkout_root",
]

# The header's major version this binding was written against.
ABI_MAJOR = 1

CDEF = r"""
typedef uint64_t iocpsrv_conn_id_t;
typedef struct iocpsrv_s iocpsrv_t;

typedef struct iocpsrv_buf_s {
  const void *base;
  size_t len;
} iocpsrv_buf_t;

typedef struct iocpsrv_conn_info_s {
  uint32_t struct_size;
  uint32_t flags;
  iocpsrv_conn_id_t id;
  int64_t connect_time_ms;
  uint64_t bytes_in;
  uint64_t bytes_out;
  uint64_t packets_in;
  uint64_t packets_out;
  uint64_t pending_send_bytes;
  char peer[64];
  char local[64];
  char proxy[64];
} iocpsrv_conn_info_t;

typedef struct iocpsrv_stats_s {
  uint32_t struct_size;
  uint32_t workers;
  uint64_t connections_now;
  uint64_t connections_total;
  uint64_t connections_refused;
  uint64_t connections_rejected;
  uint64_t packets_in;
  uint64_t packets_out;
  uint64_t bytes_in;
  uint64_t bytes_out;
  uint64_t accept_errors;
  uint64_t protocol_errors;
  uint64_t send_queue_rejections;
  uint64_t idle_timeouts;
  uint64_t pull_queue_depth;
  uint32_t workers_peak;
  uint32_t workers_busy;
  uint64_t pool_grows;
  uint64_t pool_shrinks;
  uint64_t alloc_failures;
  uint64_t source_refusals;
  uint64_t proxy_untrusted;
} iocpsrv_stats_t;

typedef struct iocpsrv_event_s {
  int32_t type;
  int32_t reason;
  iocpsrv_conn_id_t conn;
  void *conn_user;
  const uint8_t *data;
  size_t len;
} iocpsrv_event_t;

/* Packed batches: the binding reads and writes these records with struct (see
 * _packed.py); the structs are declared so the layouts can be checked against the
 * header. */
typedef struct iocpsrv_record_s {
  uint32_t len;
  uint16_t type;
  uint16_t reason;
  iocpsrv_conn_id_t conn;
  uint64_t conn_user;
} iocpsrv_record_t;

typedef struct iocpsrv_send_record_s {
  iocpsrv_conn_id_t conn;
  uint32_t len;
  uint32_t flags;
} iocpsrv_send_record_t;

typedef struct iocpsrv_send_result_s {
  uint32_t index;
  int32_t error;
} iocpsrv_send_result_t;

/* Callback types: declared so the ABI is complete; the binding never passes one. */
typedef int (*iocpsrv_connect_cb)(iocpsrv_t *, iocpsrv_conn_id_t, const char *, void **);
typedef int (*iocpsrv_packet_cb)(iocpsrv_t *, iocpsrv_conn_id_t, void *, const uint8_t *,
                                 size_t);
typedef void (*iocpsrv_disconnect_cb)(iocpsrv_t *, iocpsrv_conn_id_t, void *, int);
typedef void (*iocpsrv_drain_cb)(iocpsrv_t *, iocpsrv_conn_id_t, void *);
typedef void (*iocpsrv_worker_cb)(iocpsrv_t *, int);
typedef void (*iocpsrv_log_cb)(iocpsrv_t *, int, const char *);
typedef int (*iocpsrv_packet_batch_cb)(iocpsrv_t *, iocpsrv_conn_id_t, void *,
                                       const iocpsrv_buf_t *, int);

unsigned iocpsrv_version(void);
const char *iocpsrv_version_string(void);
const char *iocpsrv_strerror(int err);
const char *iocpsrv_err_name(int err);
const char *iocpsrv_reason_name(int reason);

int iocpsrv_create(iocpsrv_t **out, void *user);
void *iocpsrv_user_data(iocpsrv_t *server);
int iocpsrv_set_option(iocpsrv_t *server, int option, int64_t value);
int iocpsrv_get_option(iocpsrv_t *server, int option, int64_t *value);
int iocpsrv_set_option_str(iocpsrv_t *server, int option, const char *value);
int64_t iocpsrv_get_option_str(iocpsrv_t *server, int option, char *buf, size_t size);
int iocpsrv_set_connect_cb(iocpsrv_t *server, iocpsrv_connect_cb cb);
int iocpsrv_set_packet_cb(iocpsrv_t *server, iocpsrv_packet_cb cb);
int iocpsrv_set_disconnect_cb(iocpsrv_t *server, iocpsrv_disconnect_cb cb);
int iocpsrv_set_drain_cb(iocpsrv_t *server, iocpsrv_drain_cb cb);
int iocpsrv_set_packet_batch_cb(iocpsrv_t *server, iocpsrv_packet_batch_cb cb);
int iocpsrv_set_worker_hooks(iocpsrv_t *server, iocpsrv_worker_cb on_start,
                             iocpsrv_worker_cb on_stop);
int iocpsrv_set_log_cb(iocpsrv_t *server, iocpsrv_log_cb cb);
int iocpsrv_listen(iocpsrv_t *server, const char *host, int port);
int iocpsrv_start(iocpsrv_t *server);
int iocpsrv_connect(iocpsrv_t *server, const char *host, int port, void *conn_user,
                    iocpsrv_conn_id_t *conn);
int iocpsrv_port(iocpsrv_t *server);
int iocpsrv_stop(iocpsrv_t *server, int timeout_ms);
int iocpsrv_destroy(iocpsrv_t *server);

/* `data` is `const void *` in the header; `const char *` here is the same ABI and lets
 * cffi pass a bytes object without a copy. */
int iocpsrv_send(iocpsrv_t *server, iocpsrv_conn_id_t conn, const char *data, size_t len);
int iocpsrv_sendv(iocpsrv_t *server, iocpsrv_conn_id_t conn, const iocpsrv_buf_t *bufs,
                  int count);
int iocpsrv_broadcast(iocpsrv_t *server, const char *data, size_t len);
int iocpsrv_disconnect(iocpsrv_t *server, iocpsrv_conn_id_t conn, int mode);
int iocpsrv_pause_receive(iocpsrv_t *server, iocpsrv_conn_id_t conn);
int iocpsrv_resume_receive(iocpsrv_t *server, iocpsrv_conn_id_t conn);
int64_t iocpsrv_pending_bytes(iocpsrv_t *server, iocpsrv_conn_id_t conn);
int iocpsrv_set_conn_user(iocpsrv_t *server, iocpsrv_conn_id_t conn, void *conn_user);

int iocpsrv_conn_info(iocpsrv_t *server, iocpsrv_conn_id_t conn, iocpsrv_conn_info_t *info);
int iocpsrv_connections(iocpsrv_t *server, iocpsrv_conn_id_t *ids, int max);
int iocpsrv_stats(iocpsrv_t *server, iocpsrv_stats_t *stats);

int iocpsrv_poll(iocpsrv_t *server, iocpsrv_event_t *events, int max, int timeout_ms);
int64_t iocpsrv_poll_packed(iocpsrv_t *server, void *buf, size_t cap, int timeout_ms);
int iocpsrv_send_packed(iocpsrv_t *server, const void *buf, size_t size,
                        iocpsrv_send_result_t *refused, int max_refused);
int64_t iocpsrv_wait_handle(iocpsrv_t *server);
"""

ffi = FFI()
ffi.cdef(CDEF)

# ---- constants (the header's macros and enums) ---------------------------------------

IOCPSRV_VERSION_MAJOR = 1
IOCPSRV_VERSION_MINOR = 1
IOCPSRV_VERSION_PATCH = 0
IOCPSRV_VERSION_HEX = (IOCPSRV_VERSION_MAJOR << 16) | (IOCPSRV_VERSION_MINOR << 8) | IOCPSRV_VERSION_PATCH

IOCPSRV_OK = 0
IOCPSRV_EINVAL = -1
IOCPSRV_ENOMEM = -2
IOCPSRV_ENOTCONN = -3
IOCPSRV_EQUEUEFULL = -4
IOCPSRV_ETOOBIG = -5
IOCPSRV_ESTOPPED = -6
IOCPSRV_ESTATE = -7
IOCPSRV_EADDRINUSE = -8
IOCPSRV_EADDRNOTAVAIL = -9
IOCPSRV_ENOTSUP = -10
IOCPSRV_EBUSY = -11
IOCPSRV_EUNKNOWNOPT = -12
IOCPSRV_ERANGE = -13
IOCPSRV_EINCALLBACK = -14
IOCPSRV_ESYSTEM = -15
IOCPSRV_EACCES = -16
IOCPSRV_ENOSPACE = -17
IOCPSRV_ELIMIT = -18

IOCPSRV_REASON_PEER_CLOSED = 1
IOCPSRV_REASON_PEER_RESET = 2
IOCPSRV_REASON_LOCAL_CLOSE = 3
IOCPSRV_REASON_LOCAL_ABORT = 4
IOCPSRV_REASON_PROTOCOL_ERROR = 5
IOCPSRV_REASON_IDLE_TIMEOUT = 6
IOCPSRV_REASON_SERVER_STOPPED = 7
IOCPSRV_REASON_OUT_OF_MEMORY = 8
IOCPSRV_REASON_CONNECT_REFUSED = 9
IOCPSRV_REASON_CONNECT_UNREACHABLE = 10
IOCPSRV_REASON_CONNECT_TIMEOUT = 11
IOCPSRV_REASON_NAME_NOT_RESOLVED = 12
IOCPSRV_REASON_CONNECT_FAILED = 13

IOCPSRV_CLOSE_GRACEFUL = 0
IOCPSRV_CLOSE_ABORT = 1
IOCPSRV_CLOSE_REFUSE = 2

IOCPSRV_FRAMING_LEN32_LE = 0
IOCPSRV_FRAMING_LEN32_BE = 1
IOCPSRV_FRAMING_LEN16_LE = 2
IOCPSRV_FRAMING_LEN16_BE = 3
IOCPSRV_FRAMING_RAW = 4

IOCPSRV_OPT_WORKER_THREADS = 1
IOCPSRV_OPT_CONCURRENCY = 2
IOCPSRV_OPT_LISTEN_BACKLOG = 3
IOCPSRV_OPT_ACCEPTS_POSTED = 4
IOCPSRV_OPT_MAX_CONNECTIONS = 5
IOCPSRV_OPT_MAX_PACKET_SIZE = 6
IOCPSRV_OPT_FRAMING = 7
IOCPSRV_OPT_SEND_QUEUE_LIMIT = 8
IOCPSRV_OPT_IDLE_TIMEOUT_MS = 9
IOCPSRV_OPT_KEEPALIVE_MS = 10
IOCPSRV_OPT_NODELAY = 11
IOCPSRV_OPT_RCVBUF = 12
IOCPSRV_OPT_SNDBUF = 13
IOCPSRV_OPT_READ_BUFFER = 14
IOCPSRV_OPT_PULL_MODE = 15
IOCPSRV_OPT_PULL_QUEUE_LIMIT = 16
IOCPSRV_OPT_CLOSE_TIMEOUT_MS = 17
IOCPSRV_OPT_IPV6_ONLY = 18
IOCPSRV_OPT_POOL_MIN = 19
IOCPSRV_OPT_POOL_MAX = 20
IOCPSRV_OPT_POOL_BUSY_MS = 21
IOCPSRV_OPT_POOL_IDLE_MS = 22
IOCPSRV_OPT_POOL_CPU_HIGH = 23
IOCPSRV_OPT_POOL_CPU_LOW = 24
IOCPSRV_OPT_PULL_BATCH_SENDS = 25
IOCPSRV_OPT_PROXY_PROTOCOL = 26
IOCPSRV_OPT_REUSEPORT = 27
IOCPSRV_OPT_PROXY_TRUSTED = 28
IOCPSRV_OPT_MAX_CONNECTIONS_PER_SOURCE = 29
IOCPSRV_OPT_CONNECT_TIMEOUT_MS = 30
IOCPSRV_OPT_CONNECT_SOURCE = 31

IOCPSRV_PROXY_OFF = 0
IOCPSRV_PROXY_REQUIRED = 1
IOCPSRV_PROXY_OPTIONAL = 2

IOCPSRV_CONN_PAUSED = 0x1
IOCPSRV_CONN_CLOSING = 0x2
IOCPSRV_CONN_OUTBOUND = 0x4
IOCPSRV_CONN_CONNECTING = 0x8

IOCPSRV_EVENT_CONNECT = 1
IOCPSRV_EVENT_PACKET = 2
IOCPSRV_EVENT_DISCONNECT = 3
IOCPSRV_EVENT_DRAIN = 4

IOCPSRV_BATCH_MAX = 64


# ---- loading ---------------------------------------------------------------------------


class LibraryError(ImportError):
    """The native library could not be used."""


class LibraryNotFoundError(LibraryError):
    """No native library was found; ``searched`` lists every place that was tried."""

    def __init__(self, message: str, searched: list[str]):
        super().__init__(message)
        self.searched = list(searched)


class LibraryVersionError(LibraryError):
    """The native library's major version is not the one this binding speaks."""


if sys.platform == "win32":
    _NAMES = ["iocpsrv.dll"]
    _PRESETS = ["windows"]
elif sys.platform == "darwin":
    _NAMES = ["libiocpsrv.dylib", "libiocpsrv.1.dylib"]
    _PRESETS = ["macos", "darwin"]
else:
    _NAMES = ["libiocpsrv.so", "libiocpsrv.so.1"]
    _PRESETS = ["linux"]

_PACKAGE_DIR = Path(__file__).resolve().parent

_lock = threading.Lock()
_lib: Any = None
_lib_path: str | None = None


def source_checkout_root() -> Path | None:
    """The repository holding this package when it is used from a source checkout
    (<repo>/bindings/python/iocpsrv), else None: an installed package has no build
    tree to look in."""
    repo = _PACKAGE_DIR.parent.parent.parent
    if _PACKAGE_DIR.parent.parent.name == "bindings" and (
            repo / "dll" / "include" / "iocpsrv.h").is_file():
        return repo
    return None


def _candidates() -> list[tuple[str, str]]:
    """(description, path) in lookup order, after the environment variable and before
    the system's library path."""
    out = [("copy inside the package", str(_PACKAGE_DIR / name)) for name in _NAMES]
    repo = source_checkout_root()
    if repo is not None:
        out += [("CMake build tree", str(repo / "build" / preset / "dll" / name))
                for preset in _PRESETS for name in _NAMES]
    return out


def _check_version(lib: Any, path: str) -> None:
    v = int(lib.iocpsrv_version())
    if v >> 16 != ABI_MAJOR:
        raise LibraryVersionError(
            f"{path} is iocpsrv {v >> 16}.{(v >> 8) & 0xFF}.{v & 0xFF}; this binding "
            f"needs major version {ABI_MAJOR}"
        )


def _open(path: str, errors: list[str]) -> Any:
    """The library at path, or None (the reason appended to errors). A library of the
    wrong major version raises LibraryVersionError: it was found, and is unusable."""
    try:
        lib = ffi.dlopen(path)
    except OSError as e:
        errors.append(f"{path}: {e}")
        return None
    _check_version(lib, path)
    return lib


def _search(searched: list[str], errors: list[str]) -> tuple[Any, str | None]:
    """(library, path) from the first place that has a usable one, else (None, None);
    every place tried is appended to searched."""
    env = os.environ.get("IOCPSRV_LIBRARY")
    if env:
        searched.append(f"IOCPSRV_LIBRARY={env}")
        if not os.path.exists(env):
            errors.append(f"{env}: no such file")
            return None, None
        return _open(env, errors), env
    for what, path in dict.fromkeys(_candidates()):
        searched.append(f"{what}: {path}")
        if os.path.exists(path):
            lib = _open(path, errors)
            if lib is not None:
                return lib, path
    system = ctypes.util.find_library("iocpsrv")
    searched.append(f"system library path: {system or 'iocpsrv (not found)'}")
    if system:
        return _open(system, errors), system
    return None, None


def _not_found(searched: list[str], errors: list[str]) -> LibraryNotFoundError:
    lines = ["cannot find the iocpsrv native library; looked in:"]
    lines += [f"  - {s}" for s in searched]
    if errors:
        lines.append("errors:")
        lines += [f"  - {e}" for e in errors]
    lines.append(
        "Install a wheel that carries it (see bindings/python/README.md), build it "
        "(cmake --preset linux && cmake --build --preset linux) when using the package "
        "from the repository, or set IOCPSRV_LIBRARY to its path."
    )
    return LibraryNotFoundError("\n".join(lines), searched)


def library() -> Any:
    """The loaded native library (loaded on first use).

    Lookup order: the ``IOCPSRV_LIBRARY`` environment variable (a file path; when set, it is
    the only place tried), a copy inside the package directory (what a wheel installs),
    the CMake build tree (``build/<preset>/dll``, only when the package is used from the
    repository's bindings/python), then the system's library search path (``cmake
    --install`` to a standard prefix). Raises LibraryNotFoundError listing every place
    tried, or LibraryVersionError.
    """
    global _lib, _lib_path
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is None:
            searched: list[str] = []
            errors: list[str] = []
            lib, path = _search(searched, errors)
            if lib is None:
                raise _not_found(searched, errors)
            _lib, _lib_path = lib, path
    return _lib


def library_path() -> str:
    """The path the native library was loaded from (loads it if needed)."""
    library()
    assert _lib_path is not None
    return _lib_path
