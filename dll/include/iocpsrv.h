/*
 * iocpsrv.h -- the whole public ABI of iocpsrv, an embeddable TCP server engine.
 *
 * One header for every platform: iocpsrv.dll (I/O completion ports) on Windows and
 * libiocpsrv.so (epoll) on Linux. The host registers callbacks (or drains events in
 * pull mode), the engine accepts clients, splits their byte streams into
 * length-prefixed packets and hands each packet to the host on a worker thread. The
 * host answers with iocpsrv_send() from any thread.
 *
 * Conventions
 *   - Every function returns 0 (or a non-negative count) on success and a negative
 *     IOCPSRV_E* code on failure; iocpsrv_strerror() turns one into text. The engine
 *     never asks the host to read errno or GetLastError().
 *   - Booleans are int (0 / non-zero): bool differs in size across languages.
 *   - Structs that cross the ABI start with their own size, set by the caller, so new
 *     fields can be appended without breaking old binaries.
 *   - Error codes, options, reasons and event types are only ever appended, never
 *     renumbered.
 *   - Memory the engine hands out (packet pointers, event payloads) is owned by the
 *     engine; the host never frees it.
 *
 * THREADING CONTRACT (every binding documents the same and the tests check each line)
 *   1. Callbacks (connect, packet, disconnect, drain, worker hooks, log) run on the
 *      engine's worker threads.
 *   2. For one connection, callbacks are serialized and ordered: connect, then packets
 *      in arrival order (drain callbacks interleave between them), then exactly one
 *      disconnect, last. Different connections run concurrently on different workers.
 *   3. The packet pointer is valid only until the packet callback returns; copy what
 *      you keep.
 *   4. The connect callback may refuse the client (non-zero return); a refused client
 *      gets no further callback, not even disconnect. The packet callback may ask to
 *      close the connection (non-zero return): queued sends are flushed first.
 *   5. send, sendv, broadcast, disconnect, pause/resume, pending, info, list and stats
 *      are thread-safe, never block on the network, and may be called from inside any
 *      callback, including for other connections.
 *   6. iocpsrv_stop() may be called from any thread, including a callback, where it
 *      starts the stop and returns at once instead of joining its own thread. When
 *      stop returns on a thread that is not a worker, no callback is running or will
 *      run. A graceful stop stops accepting, flushes queued sends up to the timeout,
 *      then closes every connection; each still gets its one disconnect (reason
 *      IOCPSRV_REASON_SERVER_STOPPED). iocpsrv_destroy() is never called from a
 *      callback.
 *   7. A callback that blocks delays only the thread it runs on: another worker takes
 *      over the other connections (on Linux within a millisecond: one worker waits for
 *      events and a spare takes its place when it is stuck; on Windows the completion
 *      port wakes an idle worker). With the dynamic pool on, workers are added while all
 *      of them are stuck.
 *
 * FRAMING
 *   Default: a 4-byte little-endian unsigned length, then that many payload bytes (the
 *   2001 article's protocol). 2-byte headers, big-endian headers and raw mode (bytes
 *   delivered as they arrive, sends written as given) are options. A zero-length packet
 *   is legal and delivered. A header that claims more than IOCPSRV_OPT_MAX_PACKET_SIZE
 *   closes the connection with IOCPSRV_REASON_PROTOCOL_ERROR; the claimed size is never
 *   allocated. Sends are framed the same way: the host passes the payload only.
 */
#ifndef IOCPSRV_H
#define IOCPSRV_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Export and calling-convention macros (override by defining them first) ---- */
#ifndef IOCPSRV_API
#  if defined(_WIN32)
#    if defined(IOCPSRV_BUILDING_DLL)
#      define IOCPSRV_API __declspec(dllexport)
#    elif defined(IOCPSRV_STATIC)
#      define IOCPSRV_API
#    else
#      define IOCPSRV_API __declspec(dllimport)
#    endif
#  elif defined(__GNUC__)
#    define IOCPSRV_API __attribute__((visibility("default")))
#  else
#    define IOCPSRV_API
#  endif
#endif

#ifndef IOCPSRV_CALL
#  if defined(_WIN32)
#    define IOCPSRV_CALL __cdecl
#  else
#    define IOCPSRV_CALL
#  endif
#endif

/* ---- Version ---- */
#define IOCPSRV_VERSION_MAJOR 1
#define IOCPSRV_VERSION_MINOR 0
#define IOCPSRV_VERSION_PATCH 0
#define IOCPSRV_VERSION_HEX \
  ((IOCPSRV_VERSION_MAJOR << 16) | (IOCPSRV_VERSION_MINOR << 8) | IOCPSRV_VERSION_PATCH)

/* The run-time version as IOCPSRV_VERSION_HEX encodes it. Bindings check the major
 * version (value >> 16) at load. Any thread. */
IOCPSRV_API unsigned IOCPSRV_CALL iocpsrv_version(void);

/* The run-time version as "MAJOR.MINOR.PATCH backend", e.g. "1.0.0 epoll". Static
 * string. Any thread. */
IOCPSRV_API const char *IOCPSRV_CALL iocpsrv_version_string(void);

/* ---- Errors ----
 * One table generates the enum, iocpsrv_strerror() and iocpsrv_err_name(). Values are
 * the same on every OS and are only ever appended. */
#define IOCPSRV_ERRNO_MAP(X)                                                          \
  X(INVAL, -1, "invalid argument")                                                    \
  X(NOMEM, -2, "out of memory")                                                       \
  X(NOTCONN, -3, "no such connection: unknown, closed or stale id")                  \
  X(QUEUEFULL, -4, "send queue is over its limit")                                    \
  X(TOOBIG, -5, "packet larger than the maximum packet size")                         \
  X(STOPPED, -6, "server is not running")                                             \
  X(STATE, -7, "not allowed in the server's current state")                           \
  X(ADDRINUSE, -8, "address already in use")                                          \
  X(ADDRNOTAVAIL, -9, "cannot resolve or bind that address")                          \
  X(NOTSUP, -10, "not supported in this mode or on this platform")                    \
  X(BUSY, -11, "another thread is already polling this server")                       \
  X(UNKNOWNOPT, -12, "unknown option")                                                \
  X(RANGE, -13, "option value out of range")                                          \
  X(INCALLBACK, -14, "not allowed from inside a callback")                            \
  X(SYSTEM, -15, "operating system error")                                            \
  X(ACCES, -16, "permission denied")

typedef enum iocpsrv_errno_e {
#define IOCPSRV_ERRNO_ENUM_(name, value, text) IOCPSRV_E##name = value,
  IOCPSRV_ERRNO_MAP(IOCPSRV_ERRNO_ENUM_)
#undef IOCPSRV_ERRNO_ENUM_
  IOCPSRV_OK = 0
} iocpsrv_errno_t;

/* Text for an error code ("unknown error" for values not in the table). Static
 * string. Any thread. */
IOCPSRV_API const char *IOCPSRV_CALL iocpsrv_strerror(int err);

/* The error code's name, e.g. "IOCPSRV_ENOTCONN". Static string. Any thread. */
IOCPSRV_API const char *IOCPSRV_CALL iocpsrv_err_name(int err);

/* ---- Types ---- */

/* Opaque server handle. */
typedef struct iocpsrv_s iocpsrv_t;

/* A connection id: 64 bits, never 0, never reused within the life of a server (slot
 * plus generation). A stale id gets IOCPSRV_ENOTCONN, never another client's data. */
typedef uint64_t iocpsrv_conn_id_t;

/* Why a connection ended (the disconnect callback's reason). Appended only. */
typedef enum iocpsrv_reason_e {
  IOCPSRV_REASON_PEER_CLOSED = 1,    /* the client closed its side cleanly */
  IOCPSRV_REASON_PEER_RESET = 2,     /* reset or other socket error */
  IOCPSRV_REASON_LOCAL_CLOSE = 3,    /* iocpsrv_disconnect graceful, or packet cb asked */
  IOCPSRV_REASON_LOCAL_ABORT = 4,    /* iocpsrv_disconnect abortive */
  IOCPSRV_REASON_PROTOCOL_ERROR = 5, /* header above the max packet size */
  IOCPSRV_REASON_IDLE_TIMEOUT = 6,   /* no complete packet within the idle timeout */
  IOCPSRV_REASON_SERVER_STOPPED = 7, /* iocpsrv_stop */
  IOCPSRV_REASON_OUT_OF_MEMORY = 8   /* the engine could not allocate what this
                                        connection needed (a packet buffer, a queued
                                        send, a pull-mode event): it was aborted, and
                                        counted in stats.alloc_failures */
} iocpsrv_reason_t;
/* The reason names why the close began. A graceful close (either side's) ends when
 * both FINs are exchanged and the queue is written, or is turned into an abort after
 * IOCPSRV_OPT_CLOSE_TIMEOUT_MS; the reason stays the same. */

/* A reason's name, e.g. "peer-closed". Static string. Any thread. */
IOCPSRV_API const char *IOCPSRV_CALL iocpsrv_reason_name(int reason);

/* Disconnect modes. */
typedef enum iocpsrv_close_mode_e {
  IOCPSRV_CLOSE_GRACEFUL = 0, /* send what is queued, then FIN; reason LOCAL_CLOSE */
  IOCPSRV_CLOSE_ABORT = 1,    /* drop the queue, reset (RST); reason LOCAL_ABORT */
  IOCPSRV_CLOSE_REFUSE = 2    /* like GRACEFUL, but the host gets no further callback or
                                 event for it, not even its disconnect; counted in
                                 connections_rejected. Pull mode's way to refuse a client
                                 after its CONNECT event */
} iocpsrv_close_mode_t;

/* Framing values for IOCPSRV_OPT_FRAMING. */
typedef enum iocpsrv_framing_e {
  IOCPSRV_FRAMING_LEN32_LE = 0, /* default: 4-byte little-endian length + payload */
  IOCPSRV_FRAMING_LEN32_BE = 1,
  IOCPSRV_FRAMING_LEN16_LE = 2, /* payloads up to 65535 bytes */
  IOCPSRV_FRAMING_LEN16_BE = 3,
  IOCPSRV_FRAMING_RAW = 4       /* no framing: bytes as they arrive, sends as given */
} iocpsrv_framing_t;

/* ---- Options ----
 * Set with iocpsrv_set_option() while the server is not running (before the first
 * iocpsrv_listen or after iocpsrv_stop). Values are int64, except the string options
 * (IOCPSRV_OPT_PROXY_TRUSTED), set with iocpsrv_set_option_str(). Appended only. */
typedef enum iocpsrv_option_e {
  IOCPSRV_OPT_WORKER_THREADS = 1,   /* default 0 = 2 x CPUs (the article's rule); 1..1024 */
  IOCPSRV_OPT_CONCURRENCY = 2,      /* IOCP NumberOfConcurrentThreads, default 0 = CPUs;
                                       ignored by epoll and by Wine */
  IOCPSRV_OPT_LISTEN_BACKLOG = 3,   /* default 0 = SOMAXCONN */
  IOCPSRV_OPT_ACCEPTS_POSTED = 4,   /* pre-posted AcceptEx (Windows), default 32; on epoll,
                                       the most accepts per readiness event */
  IOCPSRV_OPT_MAX_CONNECTIONS = 5,  /* default 10000; 1..16777215. Clients past it are
                                       closed at once and counted in connections_refused */
  IOCPSRV_OPT_MAX_PACKET_SIZE = 6,  /* payload bytes, default 1 MiB; at most 1 GiB. Applies
                                       to received and sent packets (raw mode: to each
                                       send) */
  IOCPSRV_OPT_FRAMING = 7,          /* an iocpsrv_framing_t, default LEN32_LE */
  IOCPSRV_OPT_SEND_QUEUE_LIMIT = 8, /* bytes queued per connection before send returns
                                       IOCPSRV_EQUEUEFULL, default 4 MiB. An empty queue
                                       always takes one packet, however large */
  IOCPSRV_OPT_IDLE_TIMEOUT_MS = 9,  /* close a connection that completed no packet for this
                                       long (trickling bytes does not count), default 0 =
                                       off; reason IDLE_TIMEOUT */
  IOCPSRV_OPT_KEEPALIVE_MS = 10,    /* TCP keep-alive idle time, default 0 = off */
  IOCPSRV_OPT_NODELAY = 11,         /* TCP_NODELAY, default 1 */
  IOCPSRV_OPT_RCVBUF = 12,          /* SO_RCVBUF, default 0 = OS default */
  IOCPSRV_OPT_SNDBUF = 13,          /* SO_SNDBUF, default 0 = OS default. These four only
                                       tune each accepted socket: one the OS refuses is
                                       logged (warning, a line a second at most) and the
                                       client is served without it */
  IOCPSRV_OPT_READ_BUFFER = 14,     /* bytes read per receive, default 65536; 512..16 MiB */
  IOCPSRV_OPT_PULL_MODE = 15,       /* 1 = queue events for iocpsrv_poll instead of calling
                                       the connect/packet/disconnect/drain callbacks */
  IOCPSRV_OPT_PULL_QUEUE_LIMIT = 16,/* packets queued in pull mode before the engine stops
                                       reading sockets, default 8192 */
  IOCPSRV_OPT_CLOSE_TIMEOUT_MS = 17,/* how long a graceful close may wait for the queue to
                                       drain and the peer's FIN, default 5000 */
  IOCPSRV_OPT_IPV6_ONLY = 18,       /* for a "::" listener: 1 = IPv6 only, default 0 = dual */

  /* Dynamic worker pool (the article's m_nThreadPoolMin/Max, built). Off by default: a
   * fixed pool of IOCPSRV_OPT_WORKER_THREADS. Turn it on (POOL_MAX > 0) when callbacks
   * block: database calls, file I/O, a managed runtime's GC pauses. The engine then
   * adds a worker when every worker has been inside a callback for POOL_BUSY_MS, up to
   * POOL_MAX, and retires one when spare workers sat idle for POOL_IDLE_MS, down to
   * POOL_MIN. The threading contract is the same either way. On IOCP the port's
   * concurrency value (IOCPSRV_OPT_CONCURRENCY, default CPUs) still caps how many
   * workers run at once while the others may be blocked, as the article advises; Wine
   * ignores that value. */
  IOCPSRV_OPT_POOL_MIN = 19,        /* workers kept, default 0 = WORKER_THREADS (>= 1) */
  IOCPSRV_OPT_POOL_MAX = 20,        /* default 0 = no dynamic pool; else >= POOL_MIN */
  IOCPSRV_OPT_POOL_BUSY_MS = 21,    /* all workers busy this long -> one more, default 200 */
  IOCPSRV_OPT_POOL_IDLE_MS = 22,    /* spare workers idle this long -> one fewer, default 5000 */
  IOCPSRV_OPT_POOL_CPU_HIGH = 23,   /* system CPU percent at or above which the pool does not
                                       grow (adding threads cannot help a saturated CPU);
                                       default 0 = no CPU check */
  IOCPSRV_OPT_POOL_CPU_LOW = 24,    /* once vetoed, growth resumes only at or below this CPU
                                       percent (hysteresis), default 0 = same as CPU_HIGH */
  IOCPSRV_OPT_PULL_BATCH_SENDS = 25,/* pull mode: 1 = sends the consumer makes while handling
                                       the events of its last iocpsrv_poll are written at
                                       its next iocpsrv_poll (or iocpsrv_stop), one write per
                                       connection per batch instead of one per send. For
                                       consumers that poll in a loop (the bindings' pumps);
                                       default 0 = written at once */
  IOCPSRV_OPT_PROXY_PROTOCOL = 26,  /* an iocpsrv_proxy_mode_t: the listener expects HAProxy's
                                       PROXY protocol header (v1 text or v2 binary, TLVs
                                       skipped) before the first packet. Default OFF */
  IOCPSRV_OPT_REUSEPORT = 27,       /* 1 = SO_REUSEPORT on the listener (Linux): several
                                       processes listen on one port and the kernel spreads
                                       new connections over them. Windows has no
                                       equivalent (its SO_REUSEADDR lets a second socket
                                       steal the port, it does not balance): listen returns
                                       IOCPSRV_ENOTSUP there. Default 0 */
  IOCPSRV_OPT_PROXY_TRUSTED = 28,   /* a STRING option (iocpsrv_set_option_str): the peers
                                       whose PROXY headers are believed, e.g.
                                       "10.0.0.0/8, 127.0.0.1, ::1, fd00::/8": IPv4 and
                                       IPv6 addresses and CIDR ranges separated by commas
                                       and/or spaces ("::/0" trusts everyone). Default
                                       NULL = nothing trusted: with PROXY_PROTOCOL on, set
                                       it to your balancers' addresses. See
                                       iocpsrv_proxy_mode_t for what happens to others */
  IOCPSRV_OPT_MAX_CONNECTIONS_PER_SOURCE = 29 /* connections one client address may hold
                                       at once, default 0 = no limit; 0..16777215. The
                                       address is the socket's peer, or the client a
                                       trusted PROXY header names (a balancer's own
                                       address is never counted for what it relays).
                                       Clients past it are closed at once before the host
                                       hears of them (no connect, no disconnect) and
                                       counted in connections_refused and
                                       source_refusals. The port is ignored; an
                                       IPv4-mapped IPv6 peer counts as its IPv4 address */
} iocpsrv_option_t;

/* Values for IOCPSRV_OPT_PROXY_PROTOCOL. With a PROXY header the connect callback,
 * iocpsrv_conn_info's peer and pull CONNECT events report the real client address,
 * and iocpsrv_conn_info's proxy field the balancer's. The connect callback runs once
 * the header has arrived. A connection whose header is malformed (or missing when
 * REQUIRED), or that has not arrived within IOCPSRV_OPT_CLOSE_TIMEOUT_MS, is closed
 * before the host hears of it (no connect, no disconnect) and counted in
 * stats.protocol_errors; the log callback says why. Until then the connection is in
 * connections_now but not in iocpsrv_connections. In OPTIONAL mode a plain client is
 * introduced when its first bytes arrive (the client speaks first). For a v2 LOCAL
 * header (a balancer's own health check) peer and proxy are both the balancer.
 *
 * Trust. A header names any address its sender likes, so it is believed only from a
 * peer (the socket's address) in IOCPSRV_OPT_PROXY_TRUSTED, which is empty by
 * default. From any other peer:
 *   - REQUIRED: the connection is closed as soon as it is accepted, before it sends
 *     anything and before the host hears of it;
 *   - OPTIONAL: a client that starts with plain data is a plain client under its own
 *     address; one that sends a PROXY header is closed once the header is complete,
 *     before the host hears of it (the address in it never reaches the host).
 * Either way it is counted in stats.protocol_errors and stats.proxy_untrusted, and the
 * log callback says why (at most a line a second). listen logs a warning when PROXY
 * is on and nothing is trusted. A trusted peer is exempt from
 * IOCPSRV_OPT_MAX_CONNECTIONS_PER_SOURCE: the client its header names is counted
 * instead, when the header arrives; a header without an address (v2 LOCAL, v1
 * UNKNOWN) or a trusted peer's plain connection in OPTIONAL mode is not counted. */
typedef enum iocpsrv_proxy_mode_e {
  IOCPSRV_PROXY_OFF = 0,
  IOCPSRV_PROXY_REQUIRED = 1, /* every connection must start with a PROXY header */
  IOCPSRV_PROXY_OPTIONAL = 2  /* a header if it starts with one, else a plain client
                                 (e.g. a balancer's health check) */
} iocpsrv_proxy_mode_t;

/* ---- Callbacks ----
 * All run on worker threads under the threading contract above. `server` is the
 * server they belong to; the host's server pointer is iocpsrv_user_data(server). */

/* A client connected. `peer` is its numeric address, "127.0.0.1:5000" or
 * "[::1]:5000". Store a per-connection pointer in *conn_user; it comes back in every
 * later callback for this connection (*conn_user starts as NULL; if the callback
 * leaves it unchanged, a value it stored with iocpsrv_set_conn_user stays). Return 0
 * to accept, non-zero to refuse (the client is closed, counted in
 * connections_rejected, and gets no disconnect). */
typedef int(IOCPSRV_CALL *iocpsrv_connect_cb)(iocpsrv_t *server, iocpsrv_conn_id_t conn,
                                              const char *peer, void **conn_user);

/* One whole packet (payload only). `data` is valid until the callback returns and is
 * never NULL, even for a zero-length packet. Return 0 to go on, non-zero to close the
 * connection gracefully (reason LOCAL_CLOSE): what it sent is still written, no packet
 * callback follows, then its disconnect. */
typedef int(IOCPSRV_CALL *iocpsrv_packet_cb)(iocpsrv_t *server, iocpsrv_conn_id_t conn,
                                             void *conn_user, const uint8_t *data,
                                             size_t len);

/* The connection is gone; its id is dead from now on. Called exactly once for every
 * accepted connection, after its last packet callback. `reason` is an
 * iocpsrv_reason_t. */
typedef void(IOCPSRV_CALL *iocpsrv_disconnect_cb)(iocpsrv_t *server,
                                                  iocpsrv_conn_id_t conn,
                                                  void *conn_user, int reason);

/* After a send to this connection returned IOCPSRV_EQUEUEFULL, its queue fell below
 * half the limit AND has room for the largest packet refused (or is empty): the host
 * may send again (Node's 'drain'), and resending what was refused succeeds unless other
 * sends came first. Once per refusal episode, and always: a refusal is only ever made
 * against a queue that holds bytes (an empty queue takes any one packet), and those
 * bytes' write is what brings the drain, whichever thread refused the send. */
typedef void(IOCPSRV_CALL *iocpsrv_drain_cb)(iocpsrv_t *server, iocpsrv_conn_id_t conn,
                                             void *conn_user);

/* A worker thread starts (before any callback on it) or stops (after its last one).
 * `worker` is 0-based. Hosts attach threads to a runtime, set up COM, name threads. */
typedef void(IOCPSRV_CALL *iocpsrv_worker_cb)(iocpsrv_t *server, int worker);

/* Engine diagnostics (accept failures, protocol errors). Any thread, possibly
 * concurrently; keep it short. `level`: 0 error, 1 warning, 2 info, 3 debug. */
typedef void(IOCPSRV_CALL *iocpsrv_log_cb)(iocpsrv_t *server, int level,
                                           const char *message);

/* ---- Lifecycle ---- */

/* Create a stopped server with default options. `user` is returned by
 * iocpsrv_user_data(). Returns 0 and stores the handle in *out, or a negative code. */
IOCPSRV_API int IOCPSRV_CALL iocpsrv_create(iocpsrv_t **out, void *user);

/* The `user` pointer given to iocpsrv_create. Any thread. */
IOCPSRV_API void *IOCPSRV_CALL iocpsrv_user_data(iocpsrv_t *server);

/* Set or read an option (iocpsrv_option_t). Setting is allowed only while the server
 * is not running (IOCPSRV_ESTATE otherwise). IOCPSRV_EUNKNOWNOPT / IOCPSRV_ERANGE for
 * bad input; IOCPSRV_EINVAL for a string option. */
IOCPSRV_API int IOCPSRV_CALL iocpsrv_set_option(iocpsrv_t *server, int option,
                                                int64_t value);
IOCPSRV_API int IOCPSRV_CALL iocpsrv_get_option(iocpsrv_t *server, int option,
                                                int64_t *value);

/* Set a string option (IOCPSRV_OPT_PROXY_TRUSTED) from NUL-terminated UTF-8 text; NULL
 * or "" clears it. The engine parses and keeps its own copy. Same thread rules as
 * iocpsrv_set_option (IOCPSRV_ESTATE while running). IOCPSRV_EINVAL for a malformed
 * value, with the option left as it was, or for an int option; IOCPSRV_EUNKNOWNOPT,
 * IOCPSRV_ENOMEM. */
IOCPSRV_API int IOCPSRV_CALL iocpsrv_set_option_str(iocpsrv_t *server, int option,
                                                    const char *value);
/* Read a string option in the engine's own spelling (for PROXY_TRUSTED every entry
 * as "address/prefix", host bits cleared, joined by ", "; "" when empty), like
 * snprintf: writes at most `size` bytes, NUL included (`buf` may be NULL when `size`
 * is 0), and returns the whole text's length without the NUL, or a negative code as
 * for iocpsrv_set_option_str. Any thread; from a callback too (outside callbacks it may
 * wait for an iocpsrv_listen or iocpsrv_stop running on another thread). */
IOCPSRV_API int64_t IOCPSRV_CALL iocpsrv_get_option_str(iocpsrv_t *server, int option,
                                                        char *buf, size_t size);

/* Register callbacks (NULL clears one). Only while the server is not running. */
IOCPSRV_API int IOCPSRV_CALL iocpsrv_set_connect_cb(iocpsrv_t *server,
                                                    iocpsrv_connect_cb cb);
IOCPSRV_API int IOCPSRV_CALL iocpsrv_set_packet_cb(iocpsrv_t *server, iocpsrv_packet_cb cb);
IOCPSRV_API int IOCPSRV_CALL iocpsrv_set_disconnect_cb(iocpsrv_t *server,
                                                       iocpsrv_disconnect_cb cb);
IOCPSRV_API int IOCPSRV_CALL iocpsrv_set_drain_cb(iocpsrv_t *server, iocpsrv_drain_cb cb);
IOCPSRV_API int IOCPSRV_CALL iocpsrv_set_worker_hooks(iocpsrv_t *server,
                                                      iocpsrv_worker_cb on_start,
                                                      iocpsrv_worker_cb on_stop);
IOCPSRV_API int IOCPSRV_CALL iocpsrv_set_log_cb(iocpsrv_t *server, iocpsrv_log_cb cb);

/* Bind `host` ("127.0.0.1", "::1", "::" for all interfaces, dual stack unless
 * IOCPSRV_OPT_IPV6_ONLY; NULL or "" means "::", falling back to "0.0.0.0") and
 * `port` (0 picks a free one: read it with iocpsrv_port), start the workers and
 * accept. Clients are served when this returns 0. IOCPSRV_ESTATE if already running;
 * a server stopped from a callback finishes that stop first. Not from a callback. */
IOCPSRV_API int IOCPSRV_CALL iocpsrv_listen(iocpsrv_t *server, const char *host, int port);

/* The bound port while running (or last run), else IOCPSRV_ESTOPPED. Any thread. */
IOCPSRV_API int IOCPSRV_CALL iocpsrv_port(iocpsrv_t *server);

/* Stop: no new clients; every connection closes gracefully (queued sends written,
 * our FIN sent, the client's FIN awaited) for up to `timeout_ms`, after which the
 * rest are reset (0 = reset at once, negative = no limit: stop waits for every peer,
 * however long); each gets its one disconnect (reason SERVER_STOPPED); workers joined.
 * While a stop runs, its timeout governs every closing connection, including those
 * whose close began earlier; IOCPSRV_OPT_CLOSE_TIMEOUT_MS does not apply. From a non-worker thread it returns when
 * all of that is done. From a callback it starts the stop and returns; a later stop
 * or destroy from another thread finishes it. Returns 0, or IOCPSRV_ESTOPPED if not
 * running. The server may listen again afterwards. */
IOCPSRV_API int IOCPSRV_CALL iocpsrv_stop(iocpsrv_t *server, int timeout_ms);

/* Stop (abortively, if still running) and free the server. Never from a callback;
 * IOCPSRV_EINCALLBACK then, and nothing is freed. The handle is dead afterwards. */
IOCPSRV_API int IOCPSRV_CALL iocpsrv_destroy(iocpsrv_t *server);

/* ---- Sending and connection control (thread-safe, never block on the network) ---- */

/* Copy `len` bytes, frame them and queue them for `conn`. Sends a connection's own
 * callbacks make are written once after its batch of callbacks. Every other send is
 * written at once (from a callback of another connection too: that callback may block
 * next, and must not hold `conn` back), except with IOCPSRV_OPT_PULL_BATCH_SENDS.
 * Returns 0, or IOCPSRV_ENOTCONN (unknown, closing or stale id), IOCPSRV_EQUEUEFULL
 * (queue over IOCPSRV_OPT_SEND_QUEUE_LIMIT: drop, retry after the drain callback, or
 * disconnect; never for an empty queue), IOCPSRV_ETOOBIG, IOCPSRV_ESTOPPED,
 * IOCPSRV_EINVAL, IOCPSRV_ENOMEM (nothing queued; the connection stays open). */
IOCPSRV_API int IOCPSRV_CALL iocpsrv_send(iocpsrv_t *server, iocpsrv_conn_id_t conn,
                                          const void *data, size_t len);

/* One gathered buffer for iocpsrv_sendv. */
typedef struct iocpsrv_buf_s {
  const void *base;
  size_t len;
} iocpsrv_buf_t;

/* Like iocpsrv_send for one packet whose payload is the concatenation of `count`
 * buffers (a header and a body, say) without the host joining them first. */
IOCPSRV_API int IOCPSRV_CALL iocpsrv_sendv(iocpsrv_t *server, iocpsrv_conn_id_t conn,
                                           const iocpsrv_buf_t *bufs, int count);

/* Send one packet to every open connection. Returns how many took it (connections
 * whose queue was full, or for which memory ran out, are skipped) or a negative code: IOCPSRV_ETOOBIG for a packet
 * above the maximum size, with or without connections. */
IOCPSRV_API int IOCPSRV_CALL iocpsrv_broadcast(iocpsrv_t *server, const void *data,
                                               size_t len);

/* Close a connection, IOCPSRV_CLOSE_GRACEFUL or IOCPSRV_CLOSE_ABORT. Its disconnect
 * callback follows on a worker. No packet callback starts for it after this returns
 * on the thread running its callbacks. An abort upgrades a pending graceful close. */
IOCPSRV_API int IOCPSRV_CALL iocpsrv_disconnect(iocpsrv_t *server, iocpsrv_conn_id_t conn,
                                                int mode);

/* Flow control: stop / restart reading from a connection. While paused, packets
 * already received wait in the engine and TCP pushes back on the client. Called from
 * the connection's own callback, no packet callback follows until resume; from
 * another thread, one already starting may still run. */
IOCPSRV_API int IOCPSRV_CALL iocpsrv_pause_receive(iocpsrv_t *server,
                                                   iocpsrv_conn_id_t conn);
IOCPSRV_API int IOCPSRV_CALL iocpsrv_resume_receive(iocpsrv_t *server,
                                                    iocpsrv_conn_id_t conn);

/* Bytes queued for `conn` and not yet handed to the kernel (>= 0), or a negative code. */
IOCPSRV_API int64_t IOCPSRV_CALL iocpsrv_pending_bytes(iocpsrv_t *server,
                                                       iocpsrv_conn_id_t conn);

/* Replace the per-connection pointer that callbacks and pull events carry. */
IOCPSRV_API int IOCPSRV_CALL iocpsrv_set_conn_user(iocpsrv_t *server,
                                                   iocpsrv_conn_id_t conn, void *conn_user);

/* ---- Introspection (thread-safe) ---- */

/* Connection flags in iocpsrv_conn_info_t.flags. */
#define IOCPSRV_CONN_PAUSED 0x1u  /* receive paused by the host */
#define IOCPSRV_CONN_CLOSING 0x2u /* a disconnect is under way */

/* What iocpsrv_conn_info reports. Set struct_size = sizeof(iocpsrv_conn_info_t). */
typedef struct iocpsrv_conn_info_s {
  uint32_t struct_size;
  uint32_t flags;             /* IOCPSRV_CONN_* */
  iocpsrv_conn_id_t id;
  int64_t connect_time_ms;    /* Unix time in milliseconds */
  uint64_t bytes_in;          /* on the wire, headers included */
  uint64_t bytes_out;         /* handed to the kernel, headers included */
  uint64_t packets_in;        /* the article's m_nMsgIn */
  uint64_t packets_out;       /* the article's m_nMsgOut (packets queued) */
  uint64_t pending_send_bytes;
  char peer[64];              /* "127.0.0.1:5000" or "[::1]:5000" */
  char local[64];
  char proxy[64];             /* the balancer that sent a PROXY header, else "" */
} iocpsrv_conn_info_t;

/* Fill *info for `conn` (at most info->struct_size bytes). IOCPSRV_ENOTCONN for a dead
 * id, IOCPSRV_EINVAL if struct_size is too small for the first fields. */
IOCPSRV_API int IOCPSRV_CALL iocpsrv_conn_info(iocpsrv_t *server, iocpsrv_conn_id_t conn,
                                               iocpsrv_conn_info_t *info);

/* Write up to `max` open connection ids to `ids` (may be NULL when max is 0) and
 * return the number of open connections, which may exceed `max`. */
IOCPSRV_API int IOCPSRV_CALL iocpsrv_connections(iocpsrv_t *server, iocpsrv_conn_id_t *ids,
                                                 int max);

/* What iocpsrv_stats reports. Set struct_size = sizeof(iocpsrv_stats_t). Totals cover
 * the server's whole life across restarts. */
typedef struct iocpsrv_stats_s {
  uint32_t struct_size;
  uint32_t workers;              /* worker threads running now */
  uint64_t connections_now;      /* accepted and not yet disconnected */
  uint64_t connections_total;    /* accepted (connect callback called) */
  uint64_t connections_refused;  /* closed at once: max connections (or max per source)
                                    reached, or no descriptor left to serve them (the
                                    engine keeps a spare one to accept and close them
                                    at once instead of letting them hang) */
  uint64_t connections_rejected; /* refused by the connect callback */
  uint64_t packets_in;
  uint64_t packets_out;          /* packets queued by send/sendv/broadcast */
  uint64_t bytes_in;             /* on the wire, headers included */
  uint64_t bytes_out;            /* handed to the kernel, headers included */
  uint64_t accept_errors;        /* failed accepts (descriptors exhausted: the engine
                                    then closes waiting clients, or pauses accepting
                                    and retries after 50 ms .. 1 s, never spins; the
                                    log callback hears of it at most once a second) */
  uint64_t protocol_errors;      /* connections closed for an oversize header, or for
                                    a PROXY header that was bad, missing, late or from
                                    an untrusted peer */
  uint64_t send_queue_rejections;/* sends refused with IOCPSRV_EQUEUEFULL */
  uint64_t idle_timeouts;
  uint64_t pull_queue_depth;     /* events waiting for iocpsrv_poll now */
  uint32_t workers_peak;         /* most workers at once (dynamic pool) */
  uint32_t workers_busy;         /* workers not waiting for events now */
  uint64_t pool_grows;           /* workers added by the dynamic pool */
  uint64_t pool_shrinks;         /* workers retired by the dynamic pool */
  uint64_t alloc_failures;       /* allocations that failed: each one a send that
                                    returned IOCPSRV_ENOMEM, a connection aborted with
                                    IOCPSRV_REASON_OUT_OF_MEMORY, or a client closed
                                    before the host heard of it */
  uint64_t source_refusals;      /* of connections_refused: the client's address held
                                    IOCPSRV_OPT_MAX_CONNECTIONS_PER_SOURCE already */
  uint64_t proxy_untrusted;      /* of protocol_errors: a PROXY connection from a peer
                                    not in IOCPSRV_OPT_PROXY_TRUSTED */
} iocpsrv_stats_t;

IOCPSRV_API int IOCPSRV_CALL iocpsrv_stats(iocpsrv_t *server, iocpsrv_stats_t *stats);

/* ---- Pull mode (IOCPSRV_OPT_PULL_MODE = 1) ----
 * The engine queues events instead of calling the connect, packet, disconnect and
 * drain callbacks; one consumer thread at a time drains them with iocpsrv_poll. The
 * queue holds up to IOCPSRV_OPT_PULL_QUEUE_LIMIT packets (at most one more per worker
 * thread: each checks the limit before it reads); when it is full the engine stops
 * reading sockets (TCP pushes back on clients) and never drops an event. When memory
 * runs out, a connection whose event cannot be queued is aborted with reason
 * IOCPSRV_REASON_OUT_OF_MEMORY and still gets its one DISCONNECT (its memory is set
 * aside when it connects; a client for which even that fails is closed before the
 * host hears of it, counted in stats.alloc_failures).
 * Connect and disconnect events are always queued. The same per-connection order
 * holds: connect, packets, exactly one disconnect. Pull-mode connections cannot be
 * refused at connect time: call iocpsrv_disconnect instead. */
typedef enum iocpsrv_event_type_e {
  IOCPSRV_EVENT_CONNECT = 1,    /* data/len: the peer address text (NUL-terminated) */
  IOCPSRV_EVENT_PACKET = 2,     /* data/len: the payload */
  IOCPSRV_EVENT_DISCONNECT = 3, /* reason: an iocpsrv_reason_t */
  IOCPSRV_EVENT_DRAIN = 4
} iocpsrv_event_type_t;

typedef struct iocpsrv_event_s {
  int32_t type;        /* iocpsrv_event_type_t */
  int32_t reason;      /* DISCONNECT only */
  iocpsrv_conn_id_t conn;
  void *conn_user;     /* as set by iocpsrv_set_conn_user */
  const uint8_t *data; /* valid until the next iocpsrv_poll on this server; never NULL */
  size_t len;
} iocpsrv_event_t;

/* Move up to `max` queued events into `events`, waiting up to `timeout_ms` for the
 * first (0 = do not wait, negative = forever). Returns the count (0 on timeout; never
 * 0 before the timeout), IOCPSRV_ESTOPPED before the first iocpsrv_listen and once
 * the server is stopped and nothing is left, IOCPSRV_EBUSY if
 * another thread is polling, IOCPSRV_ENOTSUP unless pull mode is on. Events still
 * queued at stop (disconnects included) can be polled after it. */
IOCPSRV_API int IOCPSRV_CALL iocpsrv_poll(iocpsrv_t *server, iocpsrv_event_t *events,
                                          int max, int timeout_ms);

/* A waitable object that is signalled while events wait (and once the server has
 * stopped): a Linux eventfd (add it to epoll/select, asyncio's add_reader) or a
 * Windows event HANDLE. iocpsrv_poll resets it when it empties the queue; the host
 * never reads from or closes it. Valid until destroy. Negative code without pull
 * mode. */
IOCPSRV_API int64_t IOCPSRV_CALL iocpsrv_wait_handle(iocpsrv_t *server);

#ifdef __cplusplus
}
#endif

#endif /* IOCPSRV_H */
