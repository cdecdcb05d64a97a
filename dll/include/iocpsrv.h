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
 * THREADING CONTRACT (every binding documents the same). Each point ends with the
 * tests that check it: a file in tests/ and, in parentheses, its sub-tests (the
 * functions it passes to TEST_RUN). test_contract.c runs twice: as test_contract and,
 * with a dynamic pool that grows and shrinks eagerly, as test_contract_pool. The echo
 * server most tests drive (tests/support/echo.c) also fails a test on any breach of
 * points 2 and 4 that it sees.
 *   1. Callbacks (connect, packet, disconnect, drain, worker hooks, log) run on the
 *      engine's worker threads.
 *      Tested by: test_lifecycle.c (lifecycle_worker_hooks).
 *   2. For one connection, callbacks are serialized and ordered: connect, then packets
 *      in arrival order (drain callbacks interleave between them), then exactly one
 *      disconnect, last. Different connections run concurrently on different workers.
 *      An outbound connection (iocpsrv_connect) that never got established gets that
 *      one disconnect alone.
 *      Tested by: test_contract.c (contract_order_many_clients,
 *      contract_send_queue_full, contract_pull_same_as_callbacks), test_framing.c
 *      (framing_many_in_one_write), test_connect.c (every sub-test: its client checks
 *      the order and the one disconnect of each attempt).
 *   3. The packet pointer is valid only until the packet callback returns; copy what
 *      you keep.
 *      Tested by: test_framing.c (framing_header_split, framing_many_in_one_write: the
 *      payload is whole and intact while the callback runs).
 *   4. The connect callback may refuse the client (non-zero return); a refused client
 *      gets no further callback, not even disconnect. The packet callback may ask to
 *      close the connection (non-zero return): queued sends are flushed first.
 *      Tested by: test_contract.c (contract_refuse, contract_close_from_callback).
 *   5. send, sendv, broadcast, disconnect, pause/resume, pending, info, list and stats
 *      are thread-safe, never block on the network, and may be called from inside any
 *      callback, including for other connections.
 *      Tested by: test_contract.c (contract_send_anywhere, contract_send_queue_full,
 *      contract_pause_resume, contract_info_and_list), test_races.c
 *      (races_restart_raises_max_connections,
 *      races_disconnect_graceful_from_blocked_callback,
 *      races_resume_from_blocked_callback), test_fault_paths.c
 *      (fault_log_callback_may_call_api_when_queue_cannot_grow).
 *   6. iocpsrv_stop() may be called from any thread, including a callback, where it
 *      starts the stop and returns at once instead of joining its own thread. When
 *      stop returns on a thread that is not a worker, no callback is running or will
 *      run. A graceful stop stops accepting, flushes queued sends up to the timeout,
 *      then closes every connection; each still gets its one disconnect (reason
 *      IOCPSRV_REASON_SERVER_STOPPED). iocpsrv_destroy() is never called from a
 *      callback.
 *      Tested by: test_lifecycle.c (lifecycle_stop_from_callback,
 *      lifecycle_stop_under_load, lifecycle_destroy_running), test_stress.c
 *      (stop_under_load_graceful, stop_under_load_pull, start_stop_cycles),
 *      test_api_edges.c (edge_stop_without_limit_waits_for_the_peer), test_connect.c
 *      (connect_stop_in_flight: outbound attempts of every kind in flight).
 *   7. A callback that blocks delays only the thread it runs on: another worker takes
 *      over the other connections (on Linux within a millisecond: one worker waits for
 *      events and a spare takes its place when it is stuck; on Windows the completion
 *      port wakes an idle worker). With the dynamic pool on, workers are added while all
 *      of them are stuck.
 *      Tested by: test_contract.c (contract_blocking_callback), test_races.c
 *      (races_send_to_other_then_block, races_broadcast_then_block), test_send_queue.c
 *      (send_queue_drain_after_refusal_in_blocking_callback), test_pool.c
 *      (pool_serves_new_client_while_callbacks_block, pool_never_exceeds_max).
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
#define IOCPSRV_VERSION_MINOR 1
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
  X(ACCES, -16, "permission denied")                                                 \
  X(NOSPACE, -17, "buffer too small for the next event")                            \
  X(LIMIT, -18, "no room for another connection (max connections or descriptors)")

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
  IOCPSRV_REASON_OUT_OF_MEMORY = 8,  /* the engine could not allocate what this
                                        connection needed (a packet buffer, a queued
                                        send, a pull-mode event): it was aborted, and
                                        counted in stats.alloc_failures */
  /* An outbound connection (iocpsrv_connect) that never got established: */
  IOCPSRV_REASON_CONNECT_REFUSED = 9,     /* nothing listens there (RST to our SYN) */
  IOCPSRV_REASON_CONNECT_UNREACHABLE = 10, /* no route to the network or host */
  IOCPSRV_REASON_CONNECT_TIMEOUT = 11,    /* not established within
                                             IOCPSRV_OPT_CONNECT_TIMEOUT_MS (or the OS
                                             gave up first) */
  IOCPSRV_REASON_NAME_NOT_RESOLVED = 12,  /* the host name has no address */
  IOCPSRV_REASON_CONNECT_FAILED = 13      /* any other failure of the attempt (no local
                                             port or descriptor left for it, ...) */
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
 * Integer options are set with iocpsrv_set_option() and read with iocpsrv_get_option()
 * (int64_t values); the one string option, IOCPSRV_OPT_PROXY_TRUSTED, with
 * iocpsrv_set_option_str() and iocpsrv_get_option_str(). Options are appended only.
 *
 * Each option's block gives what it does, its type and unit, default and range, and
 * platform differences. Rules common to all of them:
 *   - "Set while stopped": an option may be set only while the server is not running:
 *     before the first iocpsrv_listen, or after iocpsrv_stop has returned on a thread
 *     that is not a worker (a stop started from a callback counts once iocpsrv_stop
 *     has been called again from such a thread). While the server runs, or from one of
 *     its callbacks, setting returns IOCPSRV_ESTATE and the option keeps its value.
 *   - A value outside the range returns IOCPSRV_ERANGE and the option keeps its value.
 *   - iocpsrv_get_option returns the value as set: 0 where 0 means "a default chosen
 *     at iocpsrv_listen" (2 x CPUs, SOMAXCONN, ...) reads back as 0. */
typedef enum iocpsrv_option_e {
  /* IOCPSRV_OPT_WORKER_THREADS: worker threads, which wait for I/O and run the
   * callbacks. With the dynamic pool off this is the fixed number of workers; with it
   * on, the default of IOCPSRV_OPT_POOL_MIN. Each worker owns a read buffer of
   * IOCPSRV_OPT_READ_BUFFER bytes.
   * Integer, threads. Default 0 = 2 x the number of CPUs (the article's rule).
   * Range 0..1024. Set while stopped. */
  IOCPSRV_OPT_WORKER_THREADS = 1,

  /* IOCPSRV_OPT_CONCURRENCY: the completion port's NumberOfConcurrentThreads: how many
   * workers the port lets run at once; a worker blocked in a callback does not count,
   * so the port wakes another (contract point 7).
   * Integer, threads. Default 0 = the number of CPUs. Range 0..1024. Set while
   * stopped. Windows only: ignored on Linux (epoll). */
  IOCPSRV_OPT_CONCURRENCY = 2,

  /* IOCPSRV_OPT_LISTEN_BACKLOG: the backlog given to listen(): how many connections
   * the kernel queues before the engine accepts them (the OS may lower it).
   * Integer, connections. Default 0 = SOMAXCONN. Range 0..65535. Set while stopped. */
  IOCPSRV_OPT_LISTEN_BACKLOG = 3,

  /* IOCPSRV_OPT_ACCEPTS_POSTED: Windows: how many AcceptEx calls are kept posted on
   * the listener. Linux (epoll): the most connections a worker accepts for one
   * readiness event of the listener.
   * Integer. Default 32. Range 1..1024. Set while stopped. */
  IOCPSRV_OPT_ACCEPTS_POSTED = 4,

  /* IOCPSRV_OPT_MAX_CONNECTIONS: the most connections the server holds at once. A
   * client past it is closed at once, before the host hears of it (no connect, no
   * disconnect), and counted in stats.connections_refused. Outbound connections
   * (iocpsrv_connect) count too, from the call: past it, the call returns
   * IOCPSRV_ELIMIT. A connection stops counting when its disconnect callback begins,
   * so that callback may connect again at the limit.
   * Integer, connections. Default 10000. Range 1..16777215. Set while stopped. */
  IOCPSRV_OPT_MAX_CONNECTIONS = 5,

  /* IOCPSRV_OPT_MAX_PACKET_SIZE: the largest payload, received or sent. A received
   * header that claims more closes the connection with IOCPSRV_REASON_PROTOCOL_ERROR
   * (the claimed size is never allocated); a larger send, sendv or broadcast returns
   * IOCPSRV_ETOOBIG. In raw mode it limits each send. The 16-bit framings cap it at
   * 65535.
   * Integer, bytes. Default 1048576 (1 MiB). Range 1..1073741824 (1 GiB). Set while
   * stopped. */
  IOCPSRV_OPT_MAX_PACKET_SIZE = 6,

  /* IOCPSRV_OPT_FRAMING: how the byte stream is cut into packets, both ways: an
   * iocpsrv_framing_t (see FRAMING at the top of this file).
   * Integer. Default IOCPSRV_FRAMING_LEN32_LE. Range IOCPSRV_FRAMING_LEN32_LE ..
   * IOCPSRV_FRAMING_RAW (0..4). Set while stopped. */
  IOCPSRV_OPT_FRAMING = 7,

  /* IOCPSRV_OPT_SEND_QUEUE_LIMIT: bytes (headers included) queued for one connection
   * past which iocpsrv_send and iocpsrv_sendv return IOCPSRV_EQUEUEFULL, and a drain
   * callback follows once there is room (see iocpsrv_drain_cb); iocpsrv_broadcast
   * skips the connection. An empty queue always takes one packet, however large.
   * Integer, bytes. Default 4194304 (4 MiB). Range 1..2^40. Set while stopped. */
  IOCPSRV_OPT_SEND_QUEUE_LIMIT = 8,

  /* IOCPSRV_OPT_IDLE_TIMEOUT_MS: a connection that completed no packet for this long
   * (bytes that trickle in without completing one do not count) is aborted with reason
   * IOCPSRV_REASON_IDLE_TIMEOUT and counted in stats.idle_timeouts. Checked every
   * quarter of the timeout, but no more often than every 10 ms and at least every
   * 250 ms.
   * Integer, milliseconds. Default 0 = off. Range 0..2^40. Set while stopped. */
  IOCPSRV_OPT_IDLE_TIMEOUT_MS = 9,

  /* Socket tuning: the next four options only tune each accepted socket. One the OS
   * refuses is logged (a warning, at most a line a second) and the client is served
   * without it. */

  /* IOCPSRV_OPT_KEEPALIVE_MS: TCP keep-alive: the idle time before the first probe,
   * and the interval between probes.
   * Integer, milliseconds. Default 0 = off. Range 0..2^31. Set while stopped.
   * Linux rounds it up to whole seconds (TCP_KEEPIDLE, TCP_KEEPINTVL); Windows takes
   * milliseconds (SIO_KEEPALIVE_VALS). */
  IOCPSRV_OPT_KEEPALIVE_MS = 10,

  /* IOCPSRV_OPT_NODELAY: 1 = TCP_NODELAY (Nagle's algorithm off); 0 = the OS default.
   * Integer, boolean. Default 1. Range 0..1. Set while stopped. */
  IOCPSRV_OPT_NODELAY = 11,

  /* IOCPSRV_OPT_RCVBUF: SO_RCVBUF, the kernel's receive buffer.
   * Integer, bytes. Default 0 = the OS default. Range 0..1073741824 (1 GiB). Set
   * while stopped. */
  IOCPSRV_OPT_RCVBUF = 12,

  /* IOCPSRV_OPT_SNDBUF: SO_SNDBUF, the kernel's send buffer.
   * Integer, bytes. Default 0 = the OS default. Range 0..1073741824 (1 GiB). Set
   * while stopped. */
  IOCPSRV_OPT_SNDBUF = 13,

  /* IOCPSRV_OPT_READ_BUFFER: the most bytes one receive takes from a socket. Each
   * worker owns one buffer of this size.
   * Integer, bytes. Default 65536. Range 512..16777216 (16 MiB). Set while stopped. */
  IOCPSRV_OPT_READ_BUFFER = 14,

  /* IOCPSRV_OPT_PULL_MODE: 1 = queue connect, packet, disconnect and drain events for
   * iocpsrv_poll instead of calling those callbacks (see "Pull mode" below).
   * Integer, boolean. Default 0. Range 0..1. Set while stopped. */
  IOCPSRV_OPT_PULL_MODE = 15,

  /* IOCPSRV_OPT_PULL_QUEUE_LIMIT: pull mode: packets queued for iocpsrv_poll past
   * which the engine stops reading sockets (TCP pushes back on clients) until the
   * consumer polls. The queue may hold one more packet per worker thread (each checks
   * the limit before it reads); no event is ever dropped.
   * Integer, packets. Default 8192. Range 1..16777216. Set while stopped. */
  IOCPSRV_OPT_PULL_QUEUE_LIMIT = 16,

  /* IOCPSRV_OPT_CLOSE_TIMEOUT_MS: how long a graceful close (either side's) may wait
   * for the queue to be written and the peer's FIN before it is turned into an abort;
   * the disconnect reason stays the same. Also how long a PROXY header may take to
   * arrive (see iocpsrv_proxy_mode_t). While iocpsrv_stop runs, its timeout governs
   * every closing connection instead.
   * Integer, milliseconds. Default 5000. Range 0..2^31. Set while stopped. */
  IOCPSRV_OPT_CLOSE_TIMEOUT_MS = 17,

  /* IOCPSRV_OPT_IPV6_ONLY: for an IPv6 listener such as "::": 1 = IPv6 clients only;
   * 0 = IPv4 clients too (dual stack).
   * Integer, boolean. Default 0. Range 0..1. Set while stopped. */
  IOCPSRV_OPT_IPV6_ONLY = 18,

  /* Dynamic worker pool (the article's m_nThreadPoolMin/Max). Off by default: a
   * fixed pool of IOCPSRV_OPT_WORKER_THREADS. Turn it on (POOL_MAX > 0) when callbacks
   * block: database calls, file I/O, a managed runtime's GC pauses. The engine then
   * adds a worker when every worker has been inside a callback for POOL_BUSY_MS, up to
   * POOL_MAX, and retires one when spare workers sat idle for POOL_IDLE_MS, down to
   * POOL_MIN. The threading contract is the same either way. On Windows the port's
   * concurrency value (IOCPSRV_OPT_CONCURRENCY, default CPUs) still caps how many
   * workers run at once while the others may be blocked, as the article advises. */

  /* IOCPSRV_OPT_POOL_MIN: the workers the dynamic pool starts with and keeps.
   * Integer, threads. Default 0 = the IOCPSRV_OPT_WORKER_THREADS count (at least 1).
   * Range 0..1024. Set while stopped. */
  IOCPSRV_OPT_POOL_MIN = 19,

  /* IOCPSRV_OPT_POOL_MAX: the most workers; above 0 it turns the dynamic pool on. It
   * must be at least the pool's minimum (IOCPSRV_OPT_POOL_MIN, or the
   * IOCPSRV_OPT_WORKER_THREADS count when that is 0): iocpsrv_listen returns
   * IOCPSRV_ERANGE otherwise.
   * Integer, threads. Default 0 = no dynamic pool. Range 0..1024. Set while stopped. */
  IOCPSRV_OPT_POOL_MAX = 20,

  /* IOCPSRV_OPT_POOL_BUSY_MS: when every worker has been busy (inside callbacks) this
   * long, one more is added; the next one needs another full period.
   * Integer, milliseconds. Default 200. Range 1..3600000 (1 hour). Set while
   * stopped. */
  IOCPSRV_OPT_POOL_BUSY_MS = 21,

  /* IOCPSRV_OPT_POOL_IDLE_MS: when spare workers sat idle this long, one is retired;
   * the next one needs another full period.
   * Integer, milliseconds. Default 5000. Range 1..86400000 (1 day). Set while
   * stopped. */
  IOCPSRV_OPT_POOL_IDLE_MS = 22,

  /* IOCPSRV_OPT_POOL_CPU_HIGH: the system CPU percent at or above which the pool does
   * not grow (adding threads cannot help a saturated CPU).
   * Integer, percent. Default 0 = no CPU check. Range 0..100. Set while stopped. */
  IOCPSRV_OPT_POOL_CPU_HIGH = 23,

  /* IOCPSRV_OPT_POOL_CPU_LOW: once IOCPSRV_OPT_POOL_CPU_HIGH has vetoed growth, it
   * resumes only at or below this CPU percent (hysteresis).
   * Integer, percent. Default 0 = the same as IOCPSRV_OPT_POOL_CPU_HIGH. Range
   * 0..100. Set while stopped. */
  IOCPSRV_OPT_POOL_CPU_LOW = 24,

  /* IOCPSRV_OPT_PULL_BATCH_SENDS: pull mode: 1 = sends the consumer makes while
   * handling the events of its last iocpsrv_poll are written at its next iocpsrv_poll
   * (or iocpsrv_stop), one write per connection per batch instead of one per send.
   * For consumers that poll in a loop (the bindings' pumps). Sends from other threads
   * are written at once.
   * Integer, boolean. Default 0 = every send written at once. Range 0..1. Set while
   * stopped. */
  IOCPSRV_OPT_PULL_BATCH_SENDS = 25,

  /* IOCPSRV_OPT_PROXY_PROTOCOL: an iocpsrv_proxy_mode_t: whether connections start
   * with HAProxy's PROXY protocol header (v1 text or v2 binary, TLVs skipped) before
   * the first packet. See iocpsrv_proxy_mode_t below for what changes, and for trust.
   * Integer. Default IOCPSRV_PROXY_OFF. Range IOCPSRV_PROXY_OFF ..
   * IOCPSRV_PROXY_OPTIONAL (0..2). Set while stopped. */
  IOCPSRV_OPT_PROXY_PROTOCOL = 26,

  /* IOCPSRV_OPT_REUSEPORT: 1 = SO_REUSEPORT on the listener: several processes listen
   * on one port and the kernel spreads new connections over them.
   * Integer, boolean. Default 0. Range 0..1. Set while stopped.
   * Linux only. Windows has no equivalent (its SO_REUSEADDR lets a second socket steal
   * the port, it does not balance): there iocpsrv_listen returns IOCPSRV_ENOTSUP when
   * it is 1. */
  IOCPSRV_OPT_REUSEPORT = 27,

  /* IOCPSRV_OPT_PROXY_TRUSTED: the peers whose PROXY headers are believed, e.g.
   * "10.0.0.0/8, 127.0.0.1, ::1, fd00::/8": IPv4 and IPv6 addresses and CIDR ranges
   * separated by commas and/or spaces ("::/0" trusts everyone). With
   * IOCPSRV_OPT_PROXY_PROTOCOL on, set it to your balancers' addresses. See
   * iocpsrv_proxy_mode_t for what happens to other peers.
   * String: set with iocpsrv_set_option_str (NULL or "" clears it), read with
   * iocpsrv_get_option_str; iocpsrv_set_option and iocpsrv_get_option return
   * IOCPSRV_EINVAL for it. Default empty = nothing trusted. A malformed value returns
   * IOCPSRV_EINVAL and the list stays as it was. Set while stopped. */
  IOCPSRV_OPT_PROXY_TRUSTED = 28,

  /* IOCPSRV_OPT_MAX_CONNECTIONS_PER_SOURCE: connections one client address may hold
   * at once. The address is the socket's peer, or the client a trusted PROXY header
   * names (a balancer's own address is never counted for what it relays). The port is
   * ignored; an IPv4-mapped IPv6 peer counts as its IPv4 address. Clients past it are
   * closed at once before the host hears of them (no connect, no disconnect) and
   * counted in stats.connections_refused and stats.source_refusals.
   * Integer, connections. Default 0 = no limit. Range 0..16777215. Set while
   * stopped. */
  IOCPSRV_OPT_MAX_CONNECTIONS_PER_SOURCE = 29,

  /* IOCPSRV_OPT_CONNECT_TIMEOUT_MS: how long an iocpsrv_connect may take, from the
   * call to the established connection, name resolution and every address tried
   * included. An attempt still unfinished then ends with IOCPSRV_REASON_CONNECT_TIMEOUT
   * (checked by the sweep: up to 250 ms late).
   * Integer, milliseconds. Default 10000. Range 0..86400000; 0 = no limit of ours (the
   * OS gives up after its SYN retries, about two minutes on Linux and 21 s on
   * Windows). Set while stopped. */
  IOCPSRV_OPT_CONNECT_TIMEOUT_MS = 30,

  /* IOCPSRV_OPT_CONNECT_SOURCE: the local address outbound sockets bind to before they
   * connect (a multi-homed host choosing its interface), e.g. "127.0.0.2" or "::1".
   * The OS picks the port. Only addresses of its family are tried; a numeric target of
   * the other family fails iocpsrv_connect with IOCPSRV_EADDRNOTAVAIL.
   * String: one numeric IPv4 or IPv6 address; set with iocpsrv_set_option_str, read
   * with iocpsrv_get_option_str. Default empty = the OS chooses. A malformed value
   * returns IOCPSRV_EINVAL and the option stays as it was. Set while stopped. */
  IOCPSRV_OPT_CONNECT_SOURCE = 31
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

/* A client connected (or an outbound connection got established: iocpsrv_connect).
 * `peer` is its numeric address, "127.0.0.1:5000" or "[::1]:5000". Store a per-connection pointer in *conn_user; it comes back in every
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
 * accepted connection, after its last packet callback, and for every iocpsrv_connect
 * that returned 0, established or not. `reason` is an
 * iocpsrv_reason_t. */
/* Opt-in alternative to the packet callback (iocpsrv_set_packet_batch_cb): the whole
 * packets one receive completed for one connection, in order, in one call. Each
 * packets[i] (base, len) views one payload, valid until the callback returns (base is
 * never NULL); count >= 1. Sends to `conn` from inside are gathered exactly as from a
 * packet callback (written once after the batch). What the callback does applies
 * from the next batch on: after iocpsrv_pause_receive or iocpsrv_disconnect no later
 * batch comes (the packets of this one were already handed over). Return 0 to go on,
 * non-zero to close gracefully as the packet callback does. A receive that completes
 * more than IOCPSRV_BATCH_MAX packets comes in several calls; packets that spanned
 * receives may come in a call of their own. Tested by: test_batch.c. */
#define IOCPSRV_BATCH_MAX 64
/* A view of bytes: one packet of a batch, or one gathered buffer for iocpsrv_sendv. */
typedef struct iocpsrv_buf_s {
  const void *base;
  size_t len;
} iocpsrv_buf_t;
typedef int(IOCPSRV_CALL *iocpsrv_packet_batch_cb)(iocpsrv_t *server, iocpsrv_conn_id_t conn,
                                                   void *conn_user,
                                                   const iocpsrv_buf_t *packets,
                                                   int count);

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
/* Deliver packets in batches instead (NULL: back to the packet callback). Callback
 * mode only: pull mode batches with iocpsrv_poll_packed. */
IOCPSRV_API int IOCPSRV_CALL iocpsrv_set_packet_batch_cb(iocpsrv_t *server,
                                                         iocpsrv_packet_batch_cb cb);
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

/* Start the workers without a listener: an engine that only makes outbound
 * connections (iocpsrv_connect). Stopped and destroyed as a listening one; it may
 * listen after a stop. IOCPSRV_ESTATE if already running (iocpsrv_listen on a running
 * engine too: listen first, then connect, for an engine that does both). Not from a
 * callback (IOCPSRV_EINCALLBACK). */
IOCPSRV_API int IOCPSRV_CALL iocpsrv_start(iocpsrv_t *server);

/* The bound port while running (or last run), else IOCPSRV_ESTOPPED (also for an
 * engine started without a listener). Any thread. */
IOCPSRV_API int IOCPSRV_CALL iocpsrv_port(iocpsrv_t *server);

/* ---- The client role ----
 *
 * Open an outbound connection to `host` ("127.0.0.1", "::1", "example.com") and
 * `port` (1..65535) on a running engine (iocpsrv_listen or iocpsrv_start), without
 * blocking: any thread, callbacks included. On 0, *conn holds the new connection's id
 * (from the same id space as accepted ones, never reused) and the attempt goes on in
 * the background; `conn_user` is the pointer its callbacks and events carry (the
 * connect callback's *conn_user starts as it).
 *
 * Once established it is a connection like an accepted one: the same framing, sends,
 * queue limit, drain, pause/resume, idle timeout, info (IOCPSRV_CONN_OUTBOUND), pull
 * mode and threading contract. Its connect callback (pull mode: CONNECT event) runs
 * first, with `peer` the address it reached; refusing it there closes it like a
 * refused client (no disconnect).
 *
 * Every call that returned 0 ends with exactly one disconnect callback (pull mode:
 * DISCONNECT event; its memory is set aside now, so it cannot be lost). One that never
 * got established gets no connect callback, only that disconnect, with
 * IOCPSRV_REASON_CONNECT_REFUSED, _UNREACHABLE, _TIMEOUT (IOCPSRV_OPT_CONNECT_TIMEOUT_MS),
 * IOCPSRV_REASON_NAME_NOT_RESOLVED or _CONNECT_FAILED; or SERVER_STOPPED, or
 * LOCAL_CLOSE / LOCAL_ABORT after iocpsrv_disconnect (REFUSE: none at all).
 *
 * Until established, iocpsrv_disconnect, iocpsrv_conn_info (IOCPSRV_CONN_CONNECTING)
 * and iocpsrv_set_conn_user accept the id; sending, pause/resume and pending_bytes
 * return IOCPSRV_ENOTCONN (send from the connect callback on). It counts in
 * connections_now and iocpsrv_connections from the call, in connections_total once
 * established. Its callbacks may start before iocpsrv_connect returns (a refusal on
 * loopback is that quick): know the attempt by conn_user, not by the id.
 *
 * Addresses. A numeric host is used at once. A name is resolved on the engine's
 * resolver thread (a worker never waits for DNS); its addresses are tried in the
 * order the resolver gives them, the next after a refusal or an unreachable one,
 * until one connects or IOCPSRV_OPT_CONNECT_TIMEOUT_MS runs out. Up to 4 names are
 * looked up at once. A stop never waits for a lookup: one the OS is still doing
 * finishes in the background and its answer is dropped.
 * IOCPSRV_OPT_CONNECT_SOURCE binds the local side.
 *
 * Returns 0, or IOCPSRV_EINVAL (NULL server, host or conn; port out of range),
 * IOCPSRV_ESTOPPED (not running), IOCPSRV_ELIMIT (IOCPSRV_OPT_MAX_CONNECTIONS, which
 * counts both directions, is reached, or no descriptor is left), IOCPSRV_ENOMEM,
 * IOCPSRV_EADDRNOTAVAIL (a numeric host that cannot be used: the wrong family for
 * IOCPSRV_OPT_CONNECT_SOURCE, no IPv6 on this machine, the source not bindable),
 * IOCPSRV_ESYSTEM. What connect itself reports, even at once (a refusal on loopback),
 * comes as the disconnect's reason. Tested by: test_connect.c. */
IOCPSRV_API int IOCPSRV_CALL iocpsrv_connect(iocpsrv_t *server, const char *host, int port,
                                             void *conn_user, iocpsrv_conn_id_t *conn);

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
 * callbacks make are written once after its batch of callbacks, in order; on Linux a
 * large one (16 KiB or more) to a connection with nothing queued is written at once
 * from `data` instead, and only what the socket does not take is copied (the peer may
 * then see it before the callback returns). Every other send is
 * written at once (from a callback of another connection too: that callback may block
 * next, and must not hold `conn` back), except with IOCPSRV_OPT_PULL_BATCH_SENDS.
 * Returns 0, or IOCPSRV_ENOTCONN (unknown, closing or stale id), IOCPSRV_EQUEUEFULL
 * (queue over IOCPSRV_OPT_SEND_QUEUE_LIMIT: drop, retry after the drain callback, or
 * disconnect; never for an empty queue), IOCPSRV_ETOOBIG, IOCPSRV_ESTOPPED,
 * IOCPSRV_EINVAL, IOCPSRV_ENOMEM (nothing queued; the connection stays open). */
IOCPSRV_API int IOCPSRV_CALL iocpsrv_send(iocpsrv_t *server, iocpsrv_conn_id_t conn,
                                          const void *data, size_t len);

/* Like iocpsrv_send for one packet whose payload is the concatenation of `count`
 * buffers (a header and a body, say) without the host joining them first. */
IOCPSRV_API int IOCPSRV_CALL iocpsrv_sendv(iocpsrv_t *server, iocpsrv_conn_id_t conn,
                                           const iocpsrv_buf_t *bufs, int count);

/* Send one packet to every open connection. Returns how many took it (connections
 * whose queue was full, or for which memory ran out, are skipped) or a negative code: IOCPSRV_ETOOBIG for a packet
 * above the maximum size, with or without connections. */
IOCPSRV_API int IOCPSRV_CALL iocpsrv_broadcast(iocpsrv_t *server, const void *data,
                                               size_t len);

/* Close a connection: IOCPSRV_CLOSE_GRACEFUL, IOCPSRV_CLOSE_ABORT or
 * IOCPSRV_CLOSE_REFUSE. Its disconnect callback (pull mode: DISCONNECT event) follows,
 * except after REFUSE. No packet callback starts for it after this returns on the
 * thread running its callbacks; in pull mode no packet or drain event already queued
 * for it is handed out by a later iocpsrv_poll. An abort upgrades a pending graceful
 * close. Tested by: test_pull_contract.c, test_contract.c (contract_disconnect_modes). */
IOCPSRV_API int IOCPSRV_CALL iocpsrv_disconnect(iocpsrv_t *server, iocpsrv_conn_id_t conn,
                                                int mode);

/* Flow control: stop / restart reading from a connection. While paused, packets
 * already received wait in the engine and TCP pushes back on the client. Called from
 * the connection's own callback, no packet callback follows until resume; from
 * another thread, one already starting may still run. In pull mode the packets
 * already queued for it wait too: no later iocpsrv_poll hands one out until resume,
 * which hands them out in order (a connection that ends paused never does). Tested by:
 * test_pull_contract.c, test_contract.c (contract_pause_resume). */
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
#define IOCPSRV_CONN_OUTBOUND 0x4u /* made by iocpsrv_connect, not accepted */
#define IOCPSRV_CONN_CONNECTING 0x8u /* outbound and not established yet (peer is then
                                        the target as given, or the address tried) */

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
  uint64_t bytes_in;             /* on the wire, headers included; bytes read and
                                    dropped while a close waits for the peer's FIN
                                    count too */
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
 * holds: connect, packets, exactly one disconnect. The host's later calls act on what
 * is already queued (see iocpsrv_disconnect and iocpsrv_pause_receive). To refuse a
 * client after its CONNECT event, call iocpsrv_disconnect with IOCPSRV_CLOSE_REFUSE: no
 * further event comes for it, not even DISCONNECT. */
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

/* ---- Packed batches: one call per batch, both ways ----
 * For hosts where each crossing costs (cffi, P/Invoke): events come out, and sends go
 * in, as records packed into one byte buffer. Every record is a fixed header followed
 * by its payload, padded with zero bytes to a multiple of 8; the next record starts
 * right after the padding. Integers are in the machine's byte order (little-endian on
 * every supported target). Records start at multiples of 8 from the buffer's start,
 * so in a buffer aligned to 8 the headers can be read in place; the engine itself
 * reads and writes with memcpy, so any buffer alignment works. */
#define IOCPSRV_PACKED_ALIGN(len) (((size_t)(len) + 7u) & ~(size_t)7u)

/* An event record of iocpsrv_poll_packed: 24 bytes, then `len` payload bytes.
 * CONNECT: the peer address text (no NUL); PACKET: the payload; DISCONNECT and DRAIN:
 * none. */
typedef struct iocpsrv_record_s {
  uint32_t len;         /* payload bytes after this header */
  uint16_t type;        /* iocpsrv_event_type_t */
  uint16_t reason;      /* DISCONNECT: an iocpsrv_reason_t; else 0 */
  iocpsrv_conn_id_t conn;
  uint64_t conn_user;   /* the conn_user pointer as an integer */
} iocpsrv_record_t;
#define IOCPSRV_RECORD_SIZE(len) (sizeof(iocpsrv_record_t) + IOCPSRV_PACKED_ALIGN(len))

/* Like iocpsrv_poll, but the events are copied as records into buf[0..cap): as many
 * whole records as fit (nothing stays pinned: buf is the host's and the payloads are
 * in it). Returns the bytes written (a multiple of 8), 0 on timeout, IOCPSRV_ENOSPACE
 * when the first waiting event alone does not fit (it stays queued: a buffer of
 * IOCPSRV_RECORD_SIZE(IOCPSRV_OPT_MAX_PACKET_SIZE) always takes one), and otherwise
 * the errors of iocpsrv_poll. Mixing it with iocpsrv_poll is allowed (one consumer at
 * a time). Tested by: test_packed.c. */
IOCPSRV_API int64_t IOCPSRV_CALL iocpsrv_poll_packed(iocpsrv_t *server, void *buf,
                                                     size_t cap, int timeout_ms);

/* A send record of iocpsrv_send_packed: 16 bytes, then `len` payload bytes. */
typedef struct iocpsrv_send_record_s {
  iocpsrv_conn_id_t conn;
  uint32_t len;         /* payload bytes after this header */
  uint32_t flags;       /* must be 0 */
} iocpsrv_send_record_t;
#define IOCPSRV_SEND_RECORD_SIZE(len) \
  (sizeof(iocpsrv_send_record_t) + IOCPSRV_PACKED_ALIGN(len))

/* One refused record of iocpsrv_send_packed. */
typedef struct iocpsrv_send_result_s {
  uint32_t index;       /* the record's position in the buffer, 0-based */
  int32_t error;        /* what iocpsrv_send would have returned for it */
} iocpsrv_send_result_t;

/* Queue every record of buf[0..size) as iocpsrv_send would, in order. The whole buffer
 * is checked first: a malformed one (size not a multiple of 8, a record running past
 * the end, non-zero flags or padding) returns IOCPSRV_EINVAL with nothing queued.
 * Otherwise returns how many records were refused (0: all queued); the first
 * `max_refused` of them are described in `refused` (NULL when max_refused is 0).
 * Once a record for a connection is refused, the later records for that connection
 * in the same buffer are refused too (same error), so a connection never receives a
 * later packet without an earlier one. IOCPSRV_ESTOPPED when the server is not
 * running. Tested by: test_packed.c, fuzz/fuzz_send_records.c. */
IOCPSRV_API int IOCPSRV_CALL iocpsrv_send_packed(iocpsrv_t *server, const void *buf,
                                                 size_t size,
                                                 iocpsrv_send_result_t *refused,
                                                 int max_refused);

/* A waitable object that is signalled while events wait (and once the server has
 * stopped): a Linux eventfd (add it to epoll/select, asyncio's add_reader) or a
 * Windows event HANDLE. iocpsrv_poll resets it when it empties the queue; the host
 * never reads from or closes it. Valid until destroy. Negative code without pull
 * mode. It is signalled too when connections that wait for room in a full queue may
 * have it without a poll taking packets (a pause or disconnect emptied the queue): the
 * next poll hands them the room, and may return 0 events. */
IOCPSRV_API int64_t IOCPSRV_CALL iocpsrv_wait_handle(iocpsrv_t *server);

#ifdef __cplusplus
}
#endif

#endif /* IOCPSRV_H */
