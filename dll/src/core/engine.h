/* The engine shared by every backend: connections, the callback token, closing,
 * sending, receiving through the framer, pull mode, stats and the whole public API.
 *
 * The OS half comes from one backend (linux/epoll.c, win/iocp.c) through the seam in
 * core/backend.h: the core calls it and it reports back only through the events its
 * wait returns. Its own state sits inside the core's structs (bk_server_t, bk_conn_t).
 *
 * The callback token. A connection's callbacks must be serialized, but work for it
 * comes from several places: its readiness or receive completion, a task posted by
 * another thread (resume, disconnect, drain), a failed write. Whoever has work sets a
 * note bit under the connection lock; the first to find the connection not `busy`
 * takes the token and runs notes until none are left, then arms the connection again.
 * Everyone else just leaves the note. Only the token holder runs callbacks, receives,
 * touches the framer or ends the connection.
 *
 * Lifetime. Connection slots never move or get freed while the server exists (see
 * conntable.h), and every registration carries the connection id. A late event, task
 * or flush for a closed connection finds the id changed and does nothing. */
#ifndef IOCPSRV_CORE_ENGINE_H
#define IOCPSRV_CORE_ENGINE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "core/backend.h"
#include "core/conntable.h"
#include "core/framing.h"
#include "core/options.h"
#include "core/platform.h"
#include "core/pullq.h"
#include "core/resolver.h"
#include "core/worker.h"
#include "core/sendbuf.h"
#include "core/srcaddr.h"
#include "iocpsrv.h"

enum { SRV_STOPPED = 0, SRV_RUNNING = 1, SRV_STOPPING = 2 };
enum { CONN_FREE = 0, CONN_OPEN = 1, CONN_CLOSING = 2, CONN_DEAD = 3 };
enum { CLOSE_NONE = 0, CLOSE_GRACEFUL = 1, CLOSE_ABORT = 2 };

/* Note bits: work waiting for the token holder. */
#define NOTE_READ 0x01u   /* readable, hung up or in error */
#define NOTE_RESUME 0x04u /* the host resumed receiving */
#define NOTE_ROOM 0x08u   /* the pull queue has room again */
#define NOTE_CLOSE 0x10u  /* a disconnect was requested */
#define NOTE_DRAIN 0x20u  /* the send queue drained after a refusal */
#define NOTE_ERROR 0x40u  /* a write failed: the connection is dead */
#define NOTE_CONNECT 0x80u /* outbound, connecting: its socket has news, or its name was
                              resolved (core/connect.c) */

/* An outbound connection's addresses to try (core/connect.c), in order. */
typedef struct conn_target_s {
  int count, next;       /* next: the one to try after the current */
  int last_reason;       /* why the last one tried failed (an IOCPSRV_REASON_CONNECT_*) */
  struct sockaddr_storage addr[8];
  int addr_len[8];
} conn_target_t;

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
  uint8_t outbound;     /* made by iocpsrv_connect */
  uint8_t connecting;   /* outbound and not established: only the connect path runs
                           (set and cleared by the token holder, under the lock) */
  int64_t connect_deadline; /* connecting: when IOCPSRV_OPT_CONNECT_TIMEOUT_MS runs out */
  conn_target_t *target;    /* connecting: its addresses; NULL while a name resolves */
  uint32_t notes;
  bk_socket_t sock;
  uint8_t read_armed;   /* bk_arm said an event will come: no need to arm again */
  uint8_t write_wait;   /* bk_write said BK_AGAIN: nothing is written before BK_WRITE */
  sendbuf_t out;        /* queued, not yet handed to the backend */
  sendbuf_t held;       /* bk_caps.write_holds_bytes: what the outstanding write (or the
                           next one) writes; stays put while the OS reads it */
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
  pullq_conn_t pq;      /* pull mode: its gate into the queue (under the queue's lock) */
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
  iocpsrv_packet_batch_cb on_packet_batch; /* instead of on_packet when set */
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
  int port;
  int sweep_period_ms;
  atomic_int_fast64_t next_sweep_ms;
  worker_t *workers;       /* nslots of them; see core/worker.c */
  int nslots;
  atomic_int running_workers;
  atomic_int idle_workers; /* waiting for events: the ones a task wake-up may reach */
  pool_t pool;

  conntable_t table;
  atomic_size_t open_count; /* connections until their slot is free: a stop waits */
  atomic_size_t admitted;   /* those counted against IOCPSRV_OPT_MAX_CONNECTIONS: until
                               their disconnect begins */
  srv_mutex_t task_lock;
  conn_t *task_head, *task_tail;
  bk_event_t *accepted;    /* with task_lock: a ring of accepted clients waiting for a
                              worker (sched.c), accepted_cap of them (worker.c) */
  int accepted_cap, accepted_head, accepted_count;
  pullq_t pull;
  atomic_uint_fast64_t poll_seq; /* iocpsrv_poll calls so far: names the current batch */
  srv_mutex_t poll_flush_lock;
  conn_t *poll_flush_head;       /* sent to by the pull consumer in its current batch */
  srv_stats_t stats;
  log_gate_t accept_log;   /* accept failures: a line a second at most */
  log_gate_t sockopt_log;  /* socket options an accepted socket refused: likewise */
  log_gate_t trust_log;    /* PROXY from untrusted peers, per-source refusals: likewise */
  srclimit_t per_source;   /* IOCPSRV_OPT_MAX_CONNECTIONS_PER_SOURCE counts (srcaddr.h) */
  srv_mutex_t resolver_lock; /* the pointer below */
  resolver_t *resolver;    /* host names of iocpsrv_connect in this run (resolver.c) */
  bk_server_t bk;
};

#endif
