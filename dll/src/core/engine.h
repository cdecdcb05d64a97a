/* The engine shared by every backend: connections, the callback token, closing,
 * sending, receiving through the framer, pull mode, stats and the whole public API.
 *
 * A backend (linux/epoll.c, win/iocp.c) supplies the OS half through the bk_*
 * functions below and reports readiness or completions through the engine_*
 * functions. It keeps its own fields inside the core's structs through the types of
 * its backend_types.h (found on the include path CMake sets for that backend).
 *
 * The callback token. A connection's callbacks must be serialized, but work for it
 * comes from several places: its readiness or receive completion, a task posted by
 * another thread (resume, disconnect, drain), a failed write. Whoever has work sets a
 * note bit under the connection lock; the first to find the connection not `busy`
 * takes the token and runs notes until none are left, then asks the backend to arm
 * the connection again. Everyone else just leaves the note. Only the token holder runs
 * callbacks, receives, touches the framer or ends the connection.
 *
 * Lifetime. Connection slots never move or get freed while the server exists (see
 * conntable.h), and every registration carries the connection id. A late event, task
 * or flush for a closed connection finds the id changed and does nothing. */
#ifndef IOCPSRV_CORE_ENGINE_H
#define IOCPSRV_CORE_ENGINE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "backend_types.h"
#include "core/conntable.h"
#include "core/framing.h"
#include "core/options.h"
#include "core/platform.h"
#include "core/pullq.h"
#include "core/worker.h"
#include "core/sendbuf.h"
#include "core/srcaddr.h"
#include "iocpsrv.h"

enum { SRV_STOPPED = 0, SRV_RUNNING = 1, SRV_STOPPING = 2 };
enum { CONN_FREE = 0, CONN_OPEN = 1, CONN_CLOSING = 2, CONN_DEAD = 3 };
enum { CLOSE_NONE = 0, CLOSE_GRACEFUL = 1, CLOSE_ABORT = 2 };

/* Note bits: work waiting for the token holder. */
#define NOTE_READ 0x01u   /* readable, hung up or in error */
#define NOTE_WRITE 0x02u  /* the backend can write again */
#define NOTE_RESUME 0x04u /* the host resumed receiving */
#define NOTE_ROOM 0x08u   /* the pull queue has room again */
#define NOTE_CLOSE 0x10u  /* a disconnect was requested */
#define NOTE_DRAIN 0x20u  /* the send queue drained after a refusal */
#define NOTE_ERROR 0x40u  /* a write failed: the connection is dead */

/* bk_conn_recv results besides a byte count. */
#define BK_EOF 0
#define BK_AGAIN (-1)
#define BK_ERROR (-2)

typedef struct conn_s {
  conn_slot_t slot; /* id + lock; must stay first */
  iocpsrv_t *srv;
  /* Under slot.lock: */
  uint8_t state, close_mode, close_reason;
  uint8_t busy;         /* a worker holds the callback token */
  uint8_t queued;       /* on the server task list (kept across reuse, see run_tasks) */
  uint8_t flush_queued; /* on a worker flush list (likewise) */
  uint8_t paused, pull_blocked, want_drain;
  uint8_t wr_shut, rd_eof, hup; /* sent our FIN, got the peer's, the backend saw a
                                   hang-up or the peer's FIN coming (read to the end) */
  uint8_t refused;      /* the connect callback said no: no disconnect callback */
  uint8_t proxy_awaiting; /* its PROXY header has not arrived: the host does not know it */
  uint32_t notes;
  bk_socket_t sock;
  sendbuf_t out;        /* queued, not yet handed to the backend */
  uint64_t bytes_out, packets_out;
  size_t drain_need;    /* framed size of the largest refused packet (want_drain) */
  int64_t close_deadline;
  struct conn_s *next_task, *next_flush;
  /* Owned by the token holder (read elsewhere through the atomics): */
  framer_t in;
  uint8_t read_skipped; /* a read was skipped while receiving was paused */
  sendbuf_t own;        /* what its own callbacks sent this turn, moved to `out` under
                           the lock once per turn (no lock per packet) */
  uint64_t own_packets;
  size_t out_seen;      /* `out`'s pending bytes when the turn began (own sends' limit) */
  atomic_int send_open; /* OPEN: own sends are accepted (the state is under the lock) */
  uint8_t read_more;    /* the last read turn ended with data still waiting */
  atomic_int deliver_stop; /* paused or closing: stop handing packets over */
  _Atomic(void *) user;
  atomic_uint_fast64_t bytes_in, packets_in;
  atomic_int_fast64_t last_packet_ms;
  int64_t connect_time_ms;
  char peer[64];        /* the client (as a PROXY header names it) */
  char proxy[64];       /* the balancer that sent the PROXY header, else "" */
  uint8_t *proxy_buf;   /* a PROXY header split over receives (token holder's) */
  pullq_node_t *bye;    /* pull mode: its DISCONNECT event, allocated at introduction so
                           that it can never be lost to an allocation failure */
  size_t proxy_len;
  /* Source address (core/srcaddr.h), set at accept by the token holder: */
  uint8_t src_trusted;  /* the socket's peer is in IOCPSRV_OPT_PROXY_TRUSTED */
  uint8_t src_counted;  /* src_key holds one of the per-source counts: released at free */
  srcaddr_key_t src_key; /* the counted client address (no port) */
  bk_conn_t bk;
} conn_t;

/* engine_log_throttled's state: when the next line may go out, and how many were
 * skipped since the last. */
typedef struct log_gate_s {
  atomic_int_fast64_t next_ms;
  atomic_uint_fast64_t suppressed;
} log_gate_t;

typedef struct srv_stats_s {
  atomic_uint_fast64_t connections_total, connections_refused, connections_rejected;
  atomic_uint_fast64_t packets_in, packets_out, bytes_in, bytes_out;
  atomic_uint_fast64_t accept_errors, protocol_errors, send_queue_rejections, idle_timeouts;
  atomic_uint_fast64_t alloc_failures;
  atomic_uint_fast64_t source_refusals, proxy_untrusted;
} srv_stats_t;

struct iocpsrv_s {
  void *user;
  srv_options_t opt;
  framing_cfg_t framing;
  iocpsrv_connect_cb on_connect;
  iocpsrv_packet_cb on_packet;
  iocpsrv_disconnect_cb on_disconnect;
  iocpsrv_drain_cb on_drain;
  iocpsrv_worker_cb on_worker_start, on_worker_stop;
  iocpsrv_log_cb on_log;

  srv_mutex_t life_lock;  /* lifecycle calls (listen, stop, destroy); never on workers */
  srv_mutex_t count_lock; /* with count_cond: a stop waiting for the last connection */
  srv_cond_t count_cond;
  atomic_int state;
  int need_join;         /* workers exist and must be joined */
  atomic_int_fast64_t stop_deadline;
  atomic_int stop_abort;
  bk_socket_t listen_sock;
  int port;
  int sweep_period_ms;
  atomic_int_fast64_t next_sweep_ms;
  worker_t *workers;       /* nslots of them; see core/worker.c */
  int nslots;
  atomic_int running_workers;
  atomic_int idle_workers; /* waiting for events: the ones a task wake-up may reach */
  pool_t pool;

  conntable_t table;
  atomic_size_t open_count;
  srv_mutex_t task_lock;
  conn_t *task_head, *task_tail;
  pullq_t pull;
  atomic_uint_fast64_t poll_seq; /* iocpsrv_poll calls so far: names the current batch */
  srv_mutex_t poll_flush_lock;
  conn_t *poll_flush_head;       /* sent to by the pull consumer in its current batch */
  srv_stats_t stats;
  log_gate_t accept_log;   /* accept failures: a line a second at most */
  log_gate_t sockopt_log;  /* socket options an accepted socket refused: likewise */
  log_gate_t trust_log;    /* PROXY from untrusted peers, per-source refusals: likewise */
  srclimit_t per_source;   /* IOCPSRV_OPT_MAX_CONNECTIONS_PER_SOURCE counts (srcaddr.h) */
  bk_server_t bk;
};

/* ---- Engine entry points for backends ---- */

/* A new client socket from the listener (non-blocking already on epoll). */
void engine_accept(worker_t *w, bk_socket_t sock, const struct sockaddr_storage *peer);
/* The connection an event's id names, locked, or NULL when it has closed since. */
conn_t *engine_conn_lock_id_event(iocpsrv_t *srv, uint64_t id);
/* Add notes (NOTE_READ, NOTE_WRITE) and run them if no one holds the token. Called
 * with the lock held; returns with it released. */
void engine_conn_notify_locked(worker_t *w, conn_t *c, uint32_t notes);
/* Run queued connection work, one connection at a time, until none is left.
 *
 * A worker that took a batch of k events must not sit on k-1 of them while a callback
 * for the first one blocks (contract point 7). So backends dispatch events 2..k with
 * w->defer_notify set, which queues their work here, then the first inline, then call
 * engine_run_tasks. Only the first event's connection is tied to this thread. */
void engine_run_tasks(worker_t *w);
/* After a wait: non-zero when the dynamic pool asked this worker to retire (return
 * from bk_worker_loop). */
int engine_worker_should_retire(worker_t *w);
/* Before waiting for events: returns 0 if work is queued (run it instead of waiting).
 * Otherwise the worker counts as idle until engine_worker_woke. */
int engine_worker_may_sleep(worker_t *w);
void engine_worker_woke(worker_t *w);
/* After each batch of events: deferred flushes, stats, the periodic sweep. Returns
 * how long the worker may wait for the next event, in ms. */
int engine_after_batch(worker_t *w);
/* Bytes left the send queue (handed to or taken by the kernel); lock held. Checks
 * drain and the graceful half-close. */
void engine_sent_locked(iocpsrv_t *srv, conn_t *c, size_t n);
/* A write failed: the connection is dead. Lock held. */
void engine_write_failed_locked(iocpsrv_t *srv, conn_t *c);
/* Work for the token holder; lock held. */
void engine_schedule_locked(iocpsrv_t *srv, conn_t *c, uint32_t note);
/* The backend's last outstanding I/O on a closed connection finished (IOCP). */
void engine_conn_released(iocpsrv_t *srv, conn_t *c);
/* Whether the connection wants to receive now (lock held). */
int engine_reading_wanted(const conn_t *c);
int engine_in_worker_of(iocpsrv_t *srv);
/* Resolve `host` (NULL or "": every interface) and listen on the first address that
 * works, through bk_listen_on. 0 or a negative IOCPSRV_E code. */
int engine_bind_listener(iocpsrv_t *srv, const char *host, int port);
/* The host's log callback. Never with an engine lock held: the callback may call any
 * thread-safe API function. */
void engine_log(iocpsrv_t *srv, int level, const char *fmt, ...);
/* Like engine_log, at most once a second per gate; the lines skipped in between are
 * counted in the next one. For failures that can repeat at line rate (accept). */
void engine_log_throttled(iocpsrv_t *srv, log_gate_t *g, int level, const char *fmt, ...);
void engine_stat_add(atomic_uint_fast64_t *s, uint64_t n);

/* ---- Backend functions for the engine ---- */

int bk_global_init(void);                   /* once per server create (WSAStartup) */
void bk_global_cleanup(void);
/* Bind and listen (srv->listen_sock, srv->port), create the wait objects. */
int bk_start(iocpsrv_t *srv, const char *host, int port);
/* One listening socket for one resolved address: srv->listen_sock and srv->port. */
int bk_listen_on(iocpsrv_t *srv, const struct addrinfo *ai);
void bk_stop_accepting(iocpsrv_t *srv);     /* not closing: a worker may be accepting */
void bk_release(iocpsrv_t *srv);            /* after the workers are joined */
/* Periodic work from the sweep, one worker at a time, no lock held (re-arming the
 * listener after descriptor exhaustion). */
void bk_periodic(iocpsrv_t *srv, int64_t now);
void bk_worker_loop(worker_t *w);           /* until bk_quit_workers */
void bk_quit_workers(iocpsrv_t *srv);       /* every worker of srv->nslots returns */
void bk_wake_tasks(iocpsrv_t *srv);
/* The socket options of an accepted socket. No lock held. Each option only tunes the
 * connection: one the OS refuses is logged (srv->sockopt_log) and the client is served
 * anyway. */
void bk_tune_socket(iocpsrv_t *srv, bk_socket_t sock);
void bk_close_socket(bk_socket_t sock);    /* a client socket we never served */
/* Start watching a fresh connection; lock held, so it must not log. 0 or a negative
 * IOCPSRV_E code. */
int bk_conn_register(iocpsrv_t *srv, conn_t *c);
/* Arm the connection for what it waits for (engine_reading_wanted, writes); lock
 * held, token not held. */
void bk_conn_arm_locked(iocpsrv_t *srv, conn_t *c);
/* Hand queued bytes to the OS without blocking; lock held. */
void bk_conn_flush_locked(iocpsrv_t *srv, conn_t *c);
/* NOTE_WRITE reached the token holder; lock held. */
void bk_conn_on_writable_locked(iocpsrv_t *srv, conn_t *c);
/* Release the backend's per-connection memory that is not in use (a quiet
 * connection); lock held. */
void bk_conn_trim_locked(conn_t *c);
/* Bytes queued or handed to the backend and not yet taken by the kernel. */
size_t bk_conn_pending_locked(const conn_t *c);
/* Receive into buf: a count, BK_EOF, BK_AGAIN or BK_ERROR. Token held. */
long bk_conn_recv(conn_t *c, void *buf, size_t len);
void bk_conn_shutdown_write(conn_t *c);
/* Close the socket (RST when abort). Returns 1 if I/O is still outstanding: the
 * backend then calls engine_conn_released after its last completion. */
int bk_conn_close(iocpsrv_t *srv, conn_t *c, int abort);
int bk_local_addr(conn_t *c, struct sockaddr_storage *sa);

#endif
