/* The Linux backend: one shared epoll instance served by a pool of workers.
 *
 * Worker model. Every socket is registered EPOLLONESHOT in one epoll set that all
 * workers wait on, the readiness twin of a completion port: any idle worker serves any
 * ready connection, so a callback that blocks delays only its own thread (contract
 * point 7), and at most one worker at a time handles a connection.
 *
 * The callback token. A connection's callbacks must be serialized, but work for it can
 * come from several places: its epoll event, a task posted by another thread (resume,
 * disconnect, drain), a failed write. Whoever has work sets a note bit under the
 * connection lock; the first to find the connection not `busy` takes the token and runs
 * notes until none are left, then re-arms epoll. Everyone else just leaves the note.
 * Only the token holder runs callbacks, reads the socket, touches the framer or frees.
 *
 * Sends. send() appends to the connection's contiguous send buffer under its lock.
 * On a worker thread (inside a callback) the connection is put on that worker's flush
 * list and written once after the current batch of events: one write for every packet
 * the batch produced. From any other thread it is written at once. A write that would
 * block arms EPOLLOUT.
 *
 * Lifetime. Connection slots never move or get freed while the server exists (see
 * conntable.h), and every epoll registration carries the connection id. A late event,
 * task or flush for a closed connection finds the id changed and does nothing. */
#define _GNU_SOURCE /* accept4 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "core/conntable.h"
#include "core/framing.h"
#include "core/options.h"
#include "core/platform.h"
#include "core/pullq.h"
#include "core/sendbuf.h"
#include "iocpsrv.h"

enum { SRV_STOPPED = 0, SRV_RUNNING = 1, SRV_STOPPING = 2 };
enum { CONN_FREE = 0, CONN_OPEN = 1, CONN_CLOSING = 2, CONN_DEAD = 3 };
enum { CLOSE_NONE = 0, CLOSE_GRACEFUL = 1, CLOSE_ABORT = 2 };

/* Note bits: work waiting for the token holder. */
#define NOTE_READ 0x01u   /* readable, hung up or in error */
#define NOTE_WRITE 0x02u  /* writable again */
#define NOTE_RESUME 0x04u /* the host resumed receiving */
#define NOTE_ROOM 0x08u   /* the pull queue has room again */
#define NOTE_CLOSE 0x10u  /* a disconnect was requested */
#define NOTE_DRAIN 0x20u  /* the send queue drained after a refusal */
#define NOTE_ERROR 0x40u  /* a write failed: the connection is dead */

/* epoll data values that are not connection ids (ids are >= 1 << 24). */
#define TAG_LISTEN 1u
#define TAG_TASK 2u
#define TAG_QUIT 3u
#define TAG_TIMER 4u

#define EVENTS_PER_WAIT 64

typedef struct worker_s worker_t;

typedef struct conn_s {
  conn_slot_t slot; /* id + lock; must stay first */
  iocpsrv_t *srv;
  /* Under slot.lock: */
  uint8_t state, close_mode, close_reason;
  uint8_t busy;         /* a worker holds the callback token */
  uint8_t queued;       /* on the server task list (kept across reuse, see task_run) */
  uint8_t flush_queued; /* on a worker flush list (likewise) */
  uint8_t paused, pull_blocked, want_write, want_drain;
  uint8_t wr_shut, rd_eof, hup; /* sent our FIN, got the peer's, socket hung up */
  uint32_t notes;
  uint32_t armed_ev;    /* the epoll mask armed now, 0 when not armed */
  int fd;
  sendbuf_t out;
  uint64_t bytes_out, packets_out;
  int64_t close_deadline;
  struct conn_s *next_task, *next_flush;
  /* Owned by the token holder (read elsewhere through the atomics): */
  framer_t in;
  atomic_int deliver_stop; /* paused or closing: stop handing packets over */
  _Atomic(void *) user;
  atomic_uint_fast64_t bytes_in, packets_in;
  atomic_int_fast64_t last_packet_ms;
  int64_t connect_time_ms;
  char peer[64];
} conn_t;

struct worker_s {
  iocpsrv_t *srv;
  int index;
  pthread_t thread;
  uint8_t *rbuf;
  size_t rbuf_size;
  int64_t now;
  conn_t *flush_head;
  uint64_t packets_in, bytes_in, packets_out, bytes_out; /* published once per batch */
};

typedef struct srv_stats_s {
  atomic_uint_fast64_t connections_total, connections_refused, connections_rejected;
  atomic_uint_fast64_t packets_in, packets_out, bytes_in, bytes_out;
  atomic_uint_fast64_t accept_errors, protocol_errors, send_queue_rejections, idle_timeouts;
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

  srv_mutex_t life_lock; /* lifecycle calls (listen, stop, destroy) */
  srv_cond_t life_cond;  /* signalled when the last connection is gone */
  atomic_int state;
  int need_join;         /* workers exist and must be joined */
  atomic_int_fast64_t stop_deadline;
  int stop_abort;
  int epfd, listen_fd, task_fd, quit_fd, timer_fd;
  int port;
  worker_t *workers;
  int nworkers;
  atomic_int running_workers;

  conntable_t table;
  atomic_size_t open_count;
  srv_mutex_t task_lock;
  conn_t *task_head, *task_tail;
  pullq_t pull;
  srv_stats_t stats;
};

static _Thread_local worker_t *tls_worker;

/* ---------------------------------------------------------------- helpers ---- */

static void srv_log(iocpsrv_t *srv, int level, const char *fmt, ...) {
  if (!srv->on_log) return;
  char msg[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  srv->on_log(srv, level, msg);
}

static void stat_add(atomic_uint_fast64_t *s, uint64_t n) {
  atomic_fetch_add_explicit(s, n, memory_order_relaxed);
}

static uint64_t stat_get(atomic_uint_fast64_t *s) {
  return atomic_load_explicit(s, memory_order_relaxed);
}

/* Single-writer counters: the token holder adds without a locked instruction. */
static void counter_add(atomic_uint_fast64_t *c, uint64_t n) {
  atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                        memory_order_relaxed);
}

static int srv_state(iocpsrv_t *srv) { return atomic_load(&srv->state); }

static int in_worker_of(iocpsrv_t *srv) { return tls_worker && tls_worker->srv == srv; }

static int64_t clock_now(void) { return tls_worker ? tls_worker->now : srv_now_ms(); }

static int os_error(int e) {
  switch (e) {
  case EADDRINUSE: return IOCPSRV_EADDRINUSE;
  case EACCES:
  case EPERM: return IOCPSRV_EACCES;
  case EADDRNOTAVAIL:
  case EAFNOSUPPORT:
  case EINVAL: return IOCPSRV_EADDRNOTAVAIL;
  case ENOMEM:
  case ENOBUFS: return IOCPSRV_ENOMEM;
  default: return IOCPSRV_ESYSTEM;
  }
}

/* "1.2.3.4:5" or "[::1]:5"; an IPv4-mapped IPv6 address is shown as IPv4. */
static void format_addr(const struct sockaddr_storage *sa, char *out, size_t size) {
  char host[INET6_ADDRSTRLEN] = "?";
  unsigned port = 0;
  if (sa->ss_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
    inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
    port = ntohs(in->sin_port);
    snprintf(out, size, "%s:%u", host, port);
  } else if (sa->ss_family == AF_INET6) {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
    port = ntohs(in6->sin6_port);
    if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
      inet_ntop(AF_INET, &in6->sin6_addr.s6_addr[12], host, sizeof host);
      snprintf(out, size, "%s:%u", host, port);
    } else {
      inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
      snprintf(out, size, "[%s]:%u", host, port);
    }
  } else {
    snprintf(out, size, "?");
  }
}

/* The open connection `id` with its lock held, or NULL. */
static conn_t *conn_lock_id(iocpsrv_t *srv, iocpsrv_conn_id_t id) {
  conn_t *c = (conn_t *)conntable_lookup(&srv->table, id);
  if (!c) return NULL;
  srv_mutex_lock(&c->slot.lock);
  if (c->slot.id == id && (c->state == CONN_OPEN || c->state == CONN_CLOSING)) return c;
  srv_mutex_unlock(&c->slot.lock);
  return NULL;
}

/* ------------------------------------------------------- token and arming ---- */

static void task_push(iocpsrv_t *srv, conn_t *c) {
  srv_mutex_lock(&srv->task_lock);
  int was_empty = srv->task_head == NULL;
  c->next_task = NULL;
  if (srv->task_tail) srv->task_tail->next_task = c;
  else srv->task_head = c;
  srv->task_tail = c;
  srv_mutex_unlock(&srv->task_lock);
  if (was_empty) {
    uint64_t one = 1;
    ssize_t r = write(srv->task_fd, &one, sizeof one);
    (void)r; /* the counter cannot overflow: workers read it on every wake-up */
  }
}

/* Leave work for the token holder, or hand the connection to a worker. Lock held. */
static void schedule_locked(iocpsrv_t *srv, conn_t *c, uint32_t note) {
  c->notes |= note;
  if (c->busy || c->queued) return;
  c->queued = 1;
  task_push(srv, c);
}

static int reading_wanted(const conn_t *c) {
  if (c->rd_eof) return 0;
  return c->state == CONN_CLOSING || (!c->paused && !c->pull_blocked);
}

/* Re-arm the one-shot registration if what we wait for changed. Lock held. */
static void rearm_locked(iocpsrv_t *srv, conn_t *c) {
  if (c->busy || (c->state != CONN_OPEN && c->state != CONN_CLOSING)) return;
  uint32_t ev = 0;
  if (reading_wanted(c)) ev |= EPOLLIN | EPOLLRDHUP;
  if (c->want_write) ev |= EPOLLOUT;
  /* A hung-up socket reports EPOLLHUP whatever the mask: while nothing is wanted from
   * it, leave it disarmed instead of waking workers in a loop. */
  if (ev == 0 && c->hup) return;
  ev |= EPOLLONESHOT;
  if (c->armed_ev == ev) return;
  struct epoll_event e = {.events = ev, .data.u64 = c->slot.id};
  if (epoll_ctl(srv->epfd, EPOLL_CTL_MOD, c->fd, &e) == 0) c->armed_ev = ev;
}

/* ----------------------------------------------------------------- sending ---- */

static void flush_locked(iocpsrv_t *srv, conn_t *c) {
  size_t limit = (size_t)srv->opt.send_queue_limit;
  while (sendbuf_pending(&c->out)) {
    ssize_t n = send(c->fd, sendbuf_data(&c->out), sendbuf_pending(&c->out), MSG_NOSIGNAL);
    if (n > 0) {
      sendbuf_consume(&c->out, (size_t)n);
      c->bytes_out += (uint64_t)n;
      if (in_worker_of(srv)) tls_worker->bytes_out += (uint64_t)n;
      else stat_add(&srv->stats.bytes_out, (uint64_t)n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      c->want_write = 1;
      rearm_locked(srv, c);
      break;
    }
    /* The peer is gone: drop what is queued and let the token holder close. */
    sendbuf_free(&c->out);
    schedule_locked(srv, c, NOTE_ERROR);
    return;
  }
  if (sendbuf_pending(&c->out) == 0) c->want_write = 0;
  if (c->want_drain && sendbuf_pending(&c->out) < limit / 2) {
    c->want_drain = 0;
    schedule_locked(srv, c, NOTE_DRAIN);
  }
  if (c->state == CONN_CLOSING && c->close_mode == CLOSE_GRACEFUL && !c->wr_shut &&
      sendbuf_pending(&c->out) == 0) {
    shutdown(c->fd, SHUT_WR);
    c->wr_shut = 1;
    if (c->rd_eof) schedule_locked(srv, c, NOTE_CLOSE); /* both FINs: done */
  }
}

/* Write now, or after the current batch when on a worker. Lock held. */
static void flush_soon_locked(iocpsrv_t *srv, conn_t *c) {
  if (c->want_write) return; /* EPOLLOUT will flush */
  worker_t *w = tls_worker;
  if (!in_worker_of(srv)) {
    flush_locked(srv, c);
    return;
  }
  if (c->flush_queued) return;
  c->flush_queued = 1;
  c->next_flush = w->flush_head;
  w->flush_head = c;
}

static void flush_deferred(worker_t *w) {
  while (w->flush_head) {
    conn_t *c = w->flush_head;
    srv_mutex_lock(&c->slot.lock);
    w->flush_head = c->next_flush;
    c->flush_queued = 0;
    if ((c->state == CONN_OPEN || c->state == CONN_CLOSING) && !c->want_write)
      flush_locked(c->srv, c);
    srv_mutex_unlock(&c->slot.lock);
  }
}

static int send_packet(iocpsrv_t *srv, iocpsrv_conn_id_t id, const iocpsrv_buf_t *bufs,
                       int count, size_t total) {
  if (srv_state(srv) != SRV_RUNNING) return IOCPSRV_ESTOPPED;
  if (total > srv->framing.max_packet && srv->framing.header_bytes) return IOCPSRV_ETOOBIG;
  conn_t *c = conn_lock_id(srv, id);
  if (!c) return IOCPSRV_ENOTCONN;
  int rc = 0;
  size_t pending = sendbuf_pending(&c->out);
  size_t framed = srv->framing.header_bytes + total;
  if (c->state != CONN_OPEN) {
    rc = IOCPSRV_ENOTCONN;
  } else if (pending && pending + framed > (size_t)srv->opt.send_queue_limit) {
    c->want_drain = 1;
    stat_add(&srv->stats.send_queue_rejections, 1);
    rc = IOCPSRV_EQUEUEFULL;
  } else if (sendbuf_append(&c->out, &srv->framing, bufs, count, total)) {
    rc = IOCPSRV_ENOMEM;
  } else {
    c->packets_out++;
    if (in_worker_of(srv)) tls_worker->packets_out++;
    else stat_add(&srv->stats.packets_out, 1);
    flush_soon_locked(srv, c);
  }
  srv_mutex_unlock(&c->slot.lock);
  return rc;
}

/* --------------------------------------------------------------- closing ---- */

/* Start closing: no packet is delivered from now on. Lock held. */
static void request_close_locked(iocpsrv_t *srv, conn_t *c, int abort, int reason) {
  if (c->state == CONN_OPEN) {
    c->state = CONN_CLOSING;
    c->close_reason = (uint8_t)reason;
    c->close_deadline = clock_now() + srv->opt.close_timeout_ms;
    atomic_store(&c->deliver_stop, 1);
  } else if (c->state != CONN_CLOSING) {
    return;
  }
  if (abort) c->close_mode = CLOSE_ABORT;
  else if (c->close_mode == CLOSE_NONE) c->close_mode = CLOSE_GRACEFUL;
  schedule_locked(srv, c, NOTE_CLOSE);
}

static void deliver_event(iocpsrv_t *srv, conn_t *c, int type, int reason, const void *data,
                          size_t len) {
  int full = pullq_push(&srv->pull, type, c->slot.id, atomic_load(&c->user), reason, data, len);
  (void)full; /* only packets are counted against the limit */
}

/* The token holder ends the connection: close the socket, one disconnect callback,
 * free the slot. Always returns 1 ("the connection is gone") for the callers. */
static int conn_finalize(iocpsrv_t *srv, conn_t *c, int reason, int abort) {
  srv_mutex_lock(&c->slot.lock);
  if (c->close_reason) reason = c->close_reason;
  if (c->close_mode == CLOSE_ABORT) abort = 1;
  int fd = c->fd;
  iocpsrv_conn_id_t id = c->slot.id;
  c->state = CONN_DEAD;
  c->fd = -1;
  sendbuf_free(&c->out);
  srv_mutex_unlock(&c->slot.lock);

  if (abort) {
    struct linger lg = {1, 0}; /* RST instead of FIN */
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  }
  close(fd); /* also drops the epoll registration: the fd is never duplicated */
  framer_free(&c->in);
  if (srv->opt.pull_mode) deliver_event(srv, c, IOCPSRV_EVENT_DISCONNECT, reason, NULL, 0);
  else if (srv->on_disconnect) srv->on_disconnect(srv, id, atomic_load(&c->user), reason);

  srv_mutex_lock(&c->slot.lock);
  c->slot.id = 0;
  c->state = CONN_FREE;
  c->busy = 0;
  c->notes = 0;
  conntable_release(&srv->table, &c->slot);
  srv_mutex_unlock(&c->slot.lock);

  srv_mutex_lock(&srv->life_lock);
  if (atomic_fetch_sub(&srv->open_count, 1) == 1) srv_cond_broadcast(&srv->life_cond);
  srv_mutex_unlock(&srv->life_lock);
  return 1;
}

/* --------------------------------------------------------------- receiving ---- */

typedef struct deliver_ctx_s {
  iocpsrv_t *srv;
  worker_t *w;
  conn_t *c;
  int pull_full;
} deliver_ctx_t;

static int deliver_packet(void *arg, const uint8_t *data, size_t len) {
  deliver_ctx_t *d = arg;
  conn_t *c = d->c;
  iocpsrv_t *srv = d->srv;
  counter_add(&c->packets_in, 1);
  d->w->packets_in++;
  atomic_store_explicit(&c->last_packet_ms, d->w->now, memory_order_relaxed);
  if (srv->opt.pull_mode) {
    if (pullq_push(&srv->pull, IOCPSRV_EVENT_PACKET, c->slot.id, atomic_load(&c->user), 0,
                   data, len) == 1) {
      d->pull_full = 1;
      return 1;
    }
  } else if (srv->on_packet &&
             srv->on_packet(srv, c->slot.id, atomic_load(&c->user), data, len)) {
    srv_mutex_lock(&c->slot.lock);
    request_close_locked(srv, c, 0, IOCPSRV_REASON_LOCAL_CLOSE);
    srv_mutex_unlock(&c->slot.lock);
    return 1;
  }
  return atomic_load_explicit(&c->deliver_stop, memory_order_relaxed);
}

/* What the framer said after delivering. Returns 1 if the connection is gone. */
static int after_delivery(deliver_ctx_t *d, int rc) {
  if (rc == FRAMER_PROTOCOL_ERROR) {
    stat_add(&d->srv->stats.protocol_errors, 1);
    srv_log(d->srv, 1, "connection %s: packet header above the maximum packet size",
            d->c->peer);
    return conn_finalize(d->srv, d->c, IOCPSRV_REASON_PROTOCOL_ERROR, 1);
  }
  if (rc == FRAMER_NOMEM) {
    srv_log(d->srv, 0, "connection %s: out of memory buffering a packet", d->c->peer);
    return conn_finalize(d->srv, d->c, IOCPSRV_REASON_LOCAL_ABORT, 1);
  }
  if (d->pull_full) {
    srv_mutex_lock(&d->c->slot.lock);
    d->c->pull_blocked = 1;
    srv_mutex_unlock(&d->c->slot.lock);
  }
  return 0;
}

/* The peer sent its FIN. Replies still queued (a client that half-closed and waits
 * for them) are written before the connection ends. */
static int conn_peer_eof(iocpsrv_t *srv, conn_t *c) {
  srv_mutex_lock(&c->slot.lock);
  c->rd_eof = 1;
  if (c->state == CONN_OPEN) request_close_locked(srv, c, 0, IOCPSRV_REASON_PEER_CLOSED);
  else c->notes |= NOTE_CLOSE;
  srv_mutex_unlock(&c->slot.lock);
  return 0;
}

static int conn_read(iocpsrv_t *srv, worker_t *w, conn_t *c) {
  srv_mutex_lock(&c->slot.lock);
  int closing = c->state == CONN_CLOSING;
  int blocked = c->paused || c->pull_blocked;
  srv_mutex_unlock(&c->slot.lock);
  if (!closing && blocked) return 0;

  uint8_t *p = NULL;
  size_t room = closing ? 0 : framer_direct_space(&c->in, &srv->framing, &p);
  if (!room) {
    p = w->rbuf;
    room = w->rbuf_size;
  }
  ssize_t n = recv(c->fd, p, room, 0);
  if (n == 0) return conn_peer_eof(srv, c);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return 0;
    return conn_finalize(srv, c, IOCPSRV_REASON_PEER_RESET, 1);
  }
  counter_add(&c->bytes_in, (uint64_t)n);
  w->bytes_in += (uint64_t)n;
  if (closing) return 0; /* draining towards the peer's FIN */

  deliver_ctx_t d = {srv, w, c, 0};
  int rc = p == w->rbuf ? framer_feed(&c->in, &srv->framing, p, (size_t)n, deliver_packet, &d)
                        : framer_direct_commit(&c->in, &srv->framing, (size_t)n,
                                               deliver_packet, &d);
  if (srv->framing.header_bytes == 0)
    atomic_store_explicit(&c->last_packet_ms, w->now, memory_order_relaxed);
  return after_delivery(&d, rc);
}

/* Deliver what waited in the framer while receiving was paused or the queue full. */
static int conn_resume(iocpsrv_t *srv, worker_t *w, conn_t *c, uint32_t notes) {
  srv_mutex_lock(&c->slot.lock);
  if (notes & NOTE_ROOM) c->pull_blocked = 0;
  int go = c->state == CONN_OPEN && !c->paused && !c->pull_blocked;
  srv_mutex_unlock(&c->slot.lock);
  if (!go) return 0;
  deliver_ctx_t d = {srv, w, c, 0};
  return after_delivery(&d, framer_resume(&c->in, &srv->framing, deliver_packet, &d));
}

/* NOTE_CLOSE: abort now, or half-close once the queue is written; the connection is
 * done when both sides have sent their FIN. */
static int conn_close_step(iocpsrv_t *srv, conn_t *c) {
  srv_mutex_lock(&c->slot.lock);
  int abort = c->close_mode == CLOSE_ABORT;
  if (!abort && !c->wr_shut && sendbuf_pending(&c->out) == 0) {
    shutdown(c->fd, SHUT_WR);
    c->wr_shut = 1;
  }
  int done = c->wr_shut && c->rd_eof;
  srv_mutex_unlock(&c->slot.lock);
  framer_free(&c->in); /* nothing more is delivered */
  if (abort) return conn_finalize(srv, c, IOCPSRV_REASON_LOCAL_ABORT, 1);
  return done ? conn_finalize(srv, c, IOCPSRV_REASON_PEER_CLOSED, 0) : 0;
}

static void conn_drain(iocpsrv_t *srv, conn_t *c) {
  if (srv->opt.pull_mode) deliver_event(srv, c, IOCPSRV_EVENT_DRAIN, 0, NULL, 0);
  else if (srv->on_drain) srv->on_drain(srv, c->slot.id, atomic_load(&c->user));
}

/* Returns 1 if the connection is gone. */
static int conn_handle(iocpsrv_t *srv, worker_t *w, conn_t *c, uint32_t n) {
  if (n & NOTE_ERROR) return conn_finalize(srv, c, IOCPSRV_REASON_PEER_RESET, 1);
  if ((n & NOTE_CLOSE) && conn_close_step(srv, c)) return 1;
  if (n & NOTE_WRITE) {
    srv_mutex_lock(&c->slot.lock);
    c->want_write = 0;
    flush_locked(srv, c);
    srv_mutex_unlock(&c->slot.lock);
  }
  if ((n & (NOTE_RESUME | NOTE_ROOM)) && conn_resume(srv, w, c, n)) return 1;
  if ((n & NOTE_READ) && conn_read(srv, w, c)) return 1;
  if (n & NOTE_DRAIN) conn_drain(srv, c);
  return 0;
}

/* Run notes while holding the token; called with the lock held and busy set, returns
 * with the lock released. */
static void conn_run(iocpsrv_t *srv, worker_t *w, conn_t *c) {
  while (c->notes) {
    uint32_t n = c->notes;
    c->notes = 0;
    srv_mutex_unlock(&c->slot.lock);
    if (conn_handle(srv, w, c, n)) return;
    srv_mutex_lock(&c->slot.lock);
  }
  c->busy = 0;
  rearm_locked(srv, c);
  srv_mutex_unlock(&c->slot.lock);
}

static void on_conn_event(iocpsrv_t *srv, worker_t *w, uint64_t id, uint32_t ev) {
  conn_t *c = (conn_t *)conntable_lookup(&srv->table, id);
  if (!c) return;
  srv_mutex_lock(&c->slot.lock);
  if (c->slot.id != id) { /* an event for a connection that closed since */
    srv_mutex_unlock(&c->slot.lock);
    return;
  }
  c->armed_ev = 0;
  if (ev & (EPOLLHUP | EPOLLERR)) c->hup = 1;
  if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) c->notes |= NOTE_READ;
  if (ev & EPOLLOUT) c->notes |= NOTE_WRITE;
  if (c->busy) {
    srv_mutex_unlock(&c->slot.lock);
    return;
  }
  c->busy = 1;
  conn_run(srv, w, c);
}

static void run_tasks(iocpsrv_t *srv, worker_t *w) {
  uint64_t v;
  ssize_t r = read(srv->task_fd, &v, sizeof v);
  (void)r;
  srv_mutex_lock(&srv->task_lock);
  conn_t *c = srv->task_head;
  srv->task_head = srv->task_tail = NULL;
  srv_mutex_unlock(&srv->task_lock);
  while (c) {
    conn_t *next = c->next_task;
    srv_mutex_lock(&c->slot.lock);
    /* `queued` is cleared here, not at free: the slot may be on this list while it is
     * reused, and the notes found now are the new connection's own. */
    c->queued = 0;
    if (c->slot.id && !c->busy && c->notes) {
      c->busy = 1;
      conn_run(srv, w, c);
    } else {
      srv_mutex_unlock(&c->slot.lock);
    }
    c = next;
  }
}

/* ---------------------------------------------------------------- accepting ---- */

static void tune_socket(iocpsrv_t *srv, int fd) {
  const srv_options_t *o = &srv->opt;
  int one = 1;
  if (o->nodelay) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (o->keepalive_ms) {
    int secs = (int)((o->keepalive_ms + 999) / 1000);
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &secs, sizeof secs);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &secs, sizeof secs);
  }
  if (o->rcvbuf) {
    int v = (int)o->rcvbuf;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &v, sizeof v);
  }
  if (o->sndbuf) {
    int v = (int)o->sndbuf;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &v, sizeof v);
  }
}

/* A slot for a fresh socket, token held by the caller. NULL when the table is full. */
static conn_t *conn_open(iocpsrv_t *srv, worker_t *w, int fd,
                         const struct sockaddr_storage *sa) {
  conn_t *c = (conn_t *)conntable_alloc(&srv->table);
  if (!c) return NULL;
  srv_mutex_lock(&c->slot.lock);
  c->state = CONN_OPEN;
  c->close_mode = CLOSE_NONE;
  c->close_reason = 0;
  c->busy = 1;
  c->srv = srv;
  c->paused = c->pull_blocked = c->want_write = c->want_drain = 0;
  c->wr_shut = c->rd_eof = c->hup = 0;
  c->notes = 0;
  c->armed_ev = 0;
  c->fd = fd;
  c->bytes_out = c->packets_out = 0;
  atomic_store(&c->deliver_stop, 0);
  atomic_store(&c->user, NULL);
  atomic_store(&c->bytes_in, 0);
  atomic_store(&c->packets_in, 0);
  atomic_store(&c->last_packet_ms, w->now);
  c->connect_time_ms = srv_unix_ms();
  format_addr(sa, c->peer, sizeof c->peer);
  srv_mutex_unlock(&c->slot.lock);
  atomic_fetch_add(&srv->open_count, 1);
  return c;
}

/* The connect callback refused: the client is closed and never heard of again. */
static void conn_refuse(iocpsrv_t *srv, conn_t *c) {
  srv_mutex_lock(&c->slot.lock);
  close(c->fd);
  c->fd = -1;
  c->state = CONN_FREE;
  c->slot.id = 0;
  c->busy = 0;
  c->notes = 0;
  sendbuf_free(&c->out);
  conntable_release(&srv->table, &c->slot);
  srv_mutex_unlock(&c->slot.lock);
  stat_add(&srv->stats.connections_rejected, 1);
  srv_mutex_lock(&srv->life_lock);
  if (atomic_fetch_sub(&srv->open_count, 1) == 1) srv_cond_broadcast(&srv->life_cond);
  srv_mutex_unlock(&srv->life_lock);
}

static void accept_one(iocpsrv_t *srv, worker_t *w, int fd,
                       const struct sockaddr_storage *sa) {
  if (atomic_load(&srv->open_count) >= (size_t)srv->opt.max_connections) {
    close(fd);
    stat_add(&srv->stats.connections_refused, 1);
    return;
  }
  tune_socket(srv, fd);
  conn_t *c = conn_open(srv, w, fd, sa);
  if (!c) {
    close(fd);
    stat_add(&srv->stats.connections_refused, 1);
    return;
  }
  iocpsrv_conn_id_t id = c->slot.id;
  if (srv->opt.pull_mode) {
    deliver_event(srv, c, IOCPSRV_EVENT_CONNECT, 0, c->peer, strlen(c->peer));
  } else if (srv->on_connect) {
    void *user = NULL;
    int refuse = srv->on_connect(srv, id, c->peer, &user);
    atomic_store(&c->user, user);
    if (refuse) {
      conn_refuse(srv, c);
      return;
    }
  }
  stat_add(&srv->stats.connections_total, 1);
  struct epoll_event e = {.events = EPOLLIN | EPOLLRDHUP | EPOLLONESHOT, .data.u64 = id};
  srv_mutex_lock(&c->slot.lock);
  if (epoll_ctl(srv->epfd, EPOLL_CTL_ADD, fd, &e) == 0) {
    c->armed_ev = e.events;
  } else {
    srv_log(srv, 0, "epoll_ctl(ADD) failed: %s", strerror(errno));
    c->notes |= NOTE_ERROR;
  }
  /* A stop that began while this client was being accepted may have missed it. */
  if (srv_state(srv) != SRV_RUNNING)
    request_close_locked(srv, c, srv->stop_abort, IOCPSRV_REASON_SERVER_STOPPED);
  conn_run(srv, w, c);
}

static void accept_batch(iocpsrv_t *srv, worker_t *w) {
  for (int i = 0; i < srv->opt.accepts_posted; i++) {
    struct sockaddr_storage sa;
    socklen_t len = sizeof sa;
    int fd = accept4(srv->listen_fd, (struct sockaddr *)&sa, &len,
                     SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINVAL) break;
      stat_add(&srv->stats.accept_errors, 1);
      srv_log(srv, 0, "accept failed: %s", strerror(errno));
      break;
    }
    if (srv_state(srv) != SRV_RUNNING) {
      close(fd);
      continue;
    }
    accept_one(srv, w, fd, &sa);
  }
  if (srv_state(srv) == SRV_RUNNING) {
    struct epoll_event e = {.events = EPOLLIN | EPOLLONESHOT, .data.u64 = TAG_LISTEN};
    epoll_ctl(srv->epfd, EPOLL_CTL_MOD, srv->listen_fd, &e);
  }
}

/* ------------------------------------------------------------------ timers ---- */

/* Idle timeouts and overdue graceful closes, a few times a second. */
static void sweep(iocpsrv_t *srv, worker_t *w) {
  uint64_t v;
  if (read(srv->timer_fd, &v, sizeof v) < 0) return; /* another worker swept */
  int64_t now = w->now;
  int64_t idle = srv->opt.idle_timeout_ms;
  int stopping = srv_state(srv) == SRV_STOPPING;
  int64_t stop_deadline = atomic_load(&srv->stop_deadline);
  size_t used = conntable_used(&srv->table);
  for (size_t i = 0; i < used; i++) {
    conn_t *c = (conn_t *)conntable_at(&srv->table, i);
    srv_mutex_lock(&c->slot.lock);
    if (c->state == CONN_OPEN && idle &&
        now - atomic_load_explicit(&c->last_packet_ms, memory_order_relaxed) > idle) {
      stat_add(&srv->stats.idle_timeouts, 1);
      request_close_locked(srv, c, 1, IOCPSRV_REASON_IDLE_TIMEOUT);
    } else if (c->state == CONN_CLOSING && c->close_mode != CLOSE_ABORT) {
      int64_t deadline = c->close_deadline;
      if (stopping && stop_deadline < deadline) deadline = stop_deadline;
      if (now >= deadline) request_close_locked(srv, c, 1, c->close_reason);
    }
    srv_mutex_unlock(&c->slot.lock);
  }
  struct epoll_event e = {.events = EPOLLIN | EPOLLONESHOT, .data.u64 = TAG_TIMER};
  epoll_ctl(srv->epfd, EPOLL_CTL_MOD, srv->timer_fd, &e);
}

/* ------------------------------------------------------------------ workers ---- */

static void publish_stats(iocpsrv_t *srv, worker_t *w) {
  if (w->packets_in) stat_add(&srv->stats.packets_in, w->packets_in);
  if (w->bytes_in) stat_add(&srv->stats.bytes_in, w->bytes_in);
  if (w->packets_out) stat_add(&srv->stats.packets_out, w->packets_out);
  if (w->bytes_out) stat_add(&srv->stats.bytes_out, w->bytes_out);
  w->packets_in = w->bytes_in = w->packets_out = w->bytes_out = 0;
}

static void *worker_main(void *arg) {
  worker_t *w = arg;
  iocpsrv_t *srv = w->srv;
  tls_worker = w;
  w->now = srv_now_ms();
  if (srv->on_worker_start) srv->on_worker_start(srv, w->index);
  struct epoll_event evs[EVENTS_PER_WAIT];
  int quit = 0;
  while (!quit) {
    int n = epoll_wait(srv->epfd, evs, EVENTS_PER_WAIT, -1);
    if (n < 0 && errno != EINTR) {
      srv_log(srv, 0, "epoll_wait failed: %s", strerror(errno));
      break;
    }
    w->now = srv_now_ms();
    for (int i = 0; i < n; i++) {
      uint64_t tag = evs[i].data.u64;
      if (tag == TAG_LISTEN) accept_batch(srv, w);
      else if (tag == TAG_TASK) run_tasks(srv, w);
      else if (tag == TAG_TIMER) sweep(srv, w);
      else if (tag == TAG_QUIT) quit = 1;
      else on_conn_event(srv, w, tag, evs[i].events);
    }
    flush_deferred(w);
    publish_stats(srv, w);
  }
  if (srv->on_worker_stop) srv->on_worker_stop(srv, w->index);
  flush_deferred(w);
  publish_stats(srv, w);
  atomic_fetch_sub(&srv->running_workers, 1);
  tls_worker = NULL;
  return NULL;
}

/* ----------------------------------------------------------------- lifecycle ---- */

static int add_watch(iocpsrv_t *srv, int fd, uint32_t events, uint64_t tag) {
  struct epoll_event e = {.events = events, .data.u64 = tag};
  return epoll_ctl(srv->epfd, EPOLL_CTL_ADD, fd, &e);
}

static void close_fd(int *fd) {
  if (*fd >= 0) close(*fd);
  *fd = -1;
}

static void release_run_fds(iocpsrv_t *srv) {
  close_fd(&srv->listen_fd);
  close_fd(&srv->epfd);
  close_fd(&srv->task_fd);
  close_fd(&srv->quit_fd);
  close_fd(&srv->timer_fd);
}

static int bind_listener(iocpsrv_t *srv, const char *host, int port) {
  int any = host == NULL || host[0] == 0;
  const char *candidates[2] = {any ? "::" : host, any ? "0.0.0.0" : NULL};
  int err = IOCPSRV_EADDRNOTAVAIL;
  for (int k = 0; k < 2 && candidates[k]; k++) {
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    char service[16];
    snprintf(service, sizeof service, "%d", port);
    if (getaddrinfo(candidates[k], service, &hints, &res) != 0) continue;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
      int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      if (fd < 0) {
        err = os_error(errno);
        continue;
      }
      int one = 1, v6only = (int)srv->opt.ipv6_only;
      setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
      if (ai->ai_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof v6only);
      int backlog = srv->opt.listen_backlog ? (int)srv->opt.listen_backlog : SOMAXCONN;
      if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, backlog) == 0) {
        struct sockaddr_storage sa;
        socklen_t len = sizeof sa;
        getsockname(fd, (struct sockaddr *)&sa, &len);
        srv->port = ntohs(sa.ss_family == AF_INET ? ((struct sockaddr_in *)&sa)->sin_port
                                                  : ((struct sockaddr_in6 *)&sa)->sin6_port);
        srv->listen_fd = fd;
        freeaddrinfo(res);
        return 0;
      }
      err = os_error(errno);
      close(fd);
    }
    freeaddrinfo(res);
  }
  return err;
}

static int open_run_fds(iocpsrv_t *srv) {
  srv->epfd = epoll_create1(EPOLL_CLOEXEC);
  srv->task_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  srv->quit_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  srv->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (srv->epfd < 0 || srv->task_fd < 0 || srv->quit_fd < 0 || srv->timer_fd < 0)
    return os_error(errno);
  int64_t period = srv->opt.idle_timeout_ms ? srv->opt.idle_timeout_ms / 4 : 250;
  if (period > 250) period = 250;
  if (period < 10) period = 10;
  struct itimerspec its = {{period / 1000, (period % 1000) * 1000000},
                           {period / 1000, (period % 1000) * 1000000}};
  timerfd_settime(srv->timer_fd, 0, &its, NULL);
  /* The task eventfd is edge-triggered so one write wakes one worker; quit is
   * level-triggered so it wakes them all. */
  if (add_watch(srv, srv->listen_fd, EPOLLIN | EPOLLONESHOT, TAG_LISTEN) ||
      add_watch(srv, srv->task_fd, EPOLLIN | EPOLLET, TAG_TASK) ||
      add_watch(srv, srv->quit_fd, EPOLLIN, TAG_QUIT) ||
      add_watch(srv, srv->timer_fd, EPOLLIN | EPOLLONESHOT, TAG_TIMER))
    return os_error(errno);
  return 0;
}

static int default_workers(void) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? (int)(2 * n) : 2;
}

static void join_workers(iocpsrv_t *srv, int count) {
  for (int i = 0; i < count; i++) {
    pthread_join(srv->workers[i].thread, NULL);
    free(srv->workers[i].rbuf);
  }
  free(srv->workers);
  srv->workers = NULL;
  srv->nworkers = 0;
}

static int start_workers(iocpsrv_t *srv) {
  int n = srv->opt.worker_threads ? (int)srv->opt.worker_threads : default_workers();
  srv->workers = calloc((size_t)n, sizeof *srv->workers);
  if (!srv->workers) return IOCPSRV_ENOMEM;
  atomic_store(&srv->running_workers, n);
  for (int i = 0; i < n; i++) {
    worker_t *w = &srv->workers[i];
    w->srv = srv;
    w->index = i;
    w->rbuf_size = (size_t)srv->opt.read_buffer;
    w->rbuf = malloc(w->rbuf_size);
    if (!w->rbuf || pthread_create(&w->thread, NULL, worker_main, w) != 0) {
      free(w->rbuf);
      atomic_fetch_sub(&srv->running_workers, n - i);
      uint64_t one = 1;
      ssize_t r = write(srv->quit_fd, &one, sizeof one);
      (void)r;
      join_workers(srv, i);
      return IOCPSRV_ENOMEM;
    }
  }
  srv->nworkers = n;
  return 0;
}

/* Tell every open connection to close (graceful or abort). */
static void close_all(iocpsrv_t *srv, int abort) {
  size_t used = conntable_used(&srv->table);
  for (size_t i = 0; i < used; i++) {
    conn_t *c = (conn_t *)conntable_at(&srv->table, i);
    srv_mutex_lock(&c->slot.lock);
    if (c->slot.id) request_close_locked(srv, c, abort, IOCPSRV_REASON_SERVER_STOPPED);
    srv_mutex_unlock(&c->slot.lock);
  }
}

/* First half of stop: no new clients, every connection told to close. */
static void begin_stop(iocpsrv_t *srv, int timeout_ms) {
  int expected = SRV_RUNNING;
  if (!atomic_compare_exchange_strong(&srv->state, &expected, SRV_STOPPING)) return;
  srv->stop_abort = timeout_ms == 0;
  atomic_store(&srv->stop_deadline, timeout_ms < 0 ? INT64_MAX : srv_now_ms() + timeout_ms);
  /* shutdown, not close: a worker may be inside accept4 on this fd right now. */
  epoll_ctl(srv->epfd, EPOLL_CTL_DEL, srv->listen_fd, NULL);
  shutdown(srv->listen_fd, SHUT_RDWR);
  close_all(srv, srv->stop_abort);
}

/* Second half, on a thread that is not a worker: wait for the connections, abort the
 * stragglers at the deadline, join the workers. life_lock held. */
static void finish_stop(iocpsrv_t *srv) {
  int aborted = srv->stop_abort;
  while (atomic_load(&srv->open_count) > 0) {
    int64_t deadline = atomic_load(&srv->stop_deadline);
    int64_t left = deadline == INT64_MAX ? -1 : deadline - srv_now_ms();
    if (!aborted && deadline != INT64_MAX && left <= 0) {
      srv_mutex_unlock(&srv->life_lock);
      close_all(srv, 1);
      srv_mutex_lock(&srv->life_lock);
      aborted = 1;
      continue;
    }
    srv_cond_wait_ms(&srv->life_cond, &srv->life_lock, aborted ? 100 : left);
  }
  uint64_t one = 1;
  ssize_t r = write(srv->quit_fd, &one, sizeof one);
  (void)r;
  join_workers(srv, srv->nworkers);
  release_run_fds(srv);
  if (srv->opt.pull_mode) pullq_set_stopped(&srv->pull);
  srv->need_join = 0;
  atomic_store(&srv->state, SRV_STOPPED);
}

/* --------------------------------------------------------------- public API ---- */

int IOCPSRV_CALL iocpsrv_create(iocpsrv_t **out, void *user) {
  if (!out) return IOCPSRV_EINVAL;
  *out = NULL;
  iocpsrv_t *srv = calloc(1, sizeof *srv);
  if (!srv) return IOCPSRV_ENOMEM;
  srv->user = user;
  srv_options_init(&srv->opt);
  srv->epfd = srv->listen_fd = srv->task_fd = srv->quit_fd = srv->timer_fd = -1;
  srv_mutex_init(&srv->life_lock);
  srv_cond_init(&srv->life_cond);
  srv_mutex_init(&srv->task_lock);
  conntable_init(&srv->table, sizeof(conn_t));
  if (pullq_init(&srv->pull, NULL, srv)) {
    conntable_destroy(&srv->table);
    free(srv);
    return IOCPSRV_ESYSTEM;
  }
  *out = srv;
  return 0;
}

void *IOCPSRV_CALL iocpsrv_user_data(iocpsrv_t *srv) { return srv ? srv->user : NULL; }

/* Options and callbacks change only while stopped; life_lock orders that with listen. */
#define WITH_STOPPED_SERVER(srv, stmt)                        \
  do {                                                        \
    if (!(srv)) return IOCPSRV_EINVAL;                        \
    srv_mutex_lock(&(srv)->life_lock);                        \
    int rc_ = srv_state(srv) == SRV_STOPPED && !(srv)->need_join ? 0 : IOCPSRV_ESTATE; \
    if (rc_ == 0) { stmt; }                                   \
    srv_mutex_unlock(&(srv)->life_lock);                      \
    return rc_;                                               \
  } while (0)

int IOCPSRV_CALL iocpsrv_set_option(iocpsrv_t *srv, int option, int64_t value) {
  WITH_STOPPED_SERVER(srv, rc_ = srv_options_set(&srv->opt, option, value));
}

int IOCPSRV_CALL iocpsrv_get_option(iocpsrv_t *srv, int option, int64_t *value) {
  if (!srv || !value) return IOCPSRV_EINVAL;
  return srv_options_get(&srv->opt, option, value);
}

int IOCPSRV_CALL iocpsrv_set_connect_cb(iocpsrv_t *srv, iocpsrv_connect_cb cb) {
  WITH_STOPPED_SERVER(srv, srv->on_connect = cb);
}
int IOCPSRV_CALL iocpsrv_set_packet_cb(iocpsrv_t *srv, iocpsrv_packet_cb cb) {
  WITH_STOPPED_SERVER(srv, srv->on_packet = cb);
}
int IOCPSRV_CALL iocpsrv_set_disconnect_cb(iocpsrv_t *srv, iocpsrv_disconnect_cb cb) {
  WITH_STOPPED_SERVER(srv, srv->on_disconnect = cb);
}
int IOCPSRV_CALL iocpsrv_set_drain_cb(iocpsrv_t *srv, iocpsrv_drain_cb cb) {
  WITH_STOPPED_SERVER(srv, srv->on_drain = cb);
}
int IOCPSRV_CALL iocpsrv_set_worker_hooks(iocpsrv_t *srv, iocpsrv_worker_cb on_start,
                                          iocpsrv_worker_cb on_stop) {
  WITH_STOPPED_SERVER(srv, srv->on_worker_start = on_start; srv->on_worker_stop = on_stop);
}
int IOCPSRV_CALL iocpsrv_set_log_cb(iocpsrv_t *srv, iocpsrv_log_cb cb) {
  WITH_STOPPED_SERVER(srv, srv->on_log = cb);
}

/* The pull queue has room: the connections that waited for it resume. */
static void on_pull_room(void *ctx, const iocpsrv_conn_id_t *ids, size_t n) {
  iocpsrv_t *srv = ctx;
  for (size_t i = 0; i < n; i++) {
    conn_t *c = conn_lock_id(srv, ids[i]);
    if (!c) continue;
    schedule_locked(srv, c, NOTE_ROOM);
    srv_mutex_unlock(&c->slot.lock);
  }
}

int IOCPSRV_CALL iocpsrv_listen(iocpsrv_t *srv, const char *host, int port) {
  if (!srv || port < 0 || port > 65535) return IOCPSRV_EINVAL;
  if (in_worker_of(srv)) return IOCPSRV_EINCALLBACK;
  srv_mutex_lock(&srv->life_lock);
  if (srv->need_join && srv_state(srv) == SRV_STOPPING) finish_stop(srv);
  if (srv_state(srv) != SRV_STOPPED) {
    srv_mutex_unlock(&srv->life_lock);
    return IOCPSRV_ESTATE;
  }
  int rc = 0;
  if (framing_cfg_from_option(&srv->framing, srv->opt.framing, srv->opt.max_packet_size) ||
      conntable_reserve(&srv->table, (size_t)srv->opt.max_connections)) {
    rc = IOCPSRV_ENOMEM;
  }
  if (!rc) rc = bind_listener(srv, host, port);
  if (!rc) rc = open_run_fds(srv);
  if (!rc) {
    srv->pull.on_room = on_pull_room;
    srv->pull.room_ctx = srv;
    pullq_reset(&srv->pull, (size_t)srv->opt.pull_queue_limit);
    atomic_store(&srv->state, SRV_RUNNING);
    rc = start_workers(srv);
    if (rc) atomic_store(&srv->state, SRV_STOPPED);
  }
  if (rc) release_run_fds(srv);
  else srv->need_join = 1;
  srv_mutex_unlock(&srv->life_lock);
  return rc;
}

int IOCPSRV_CALL iocpsrv_port(iocpsrv_t *srv) {
  if (!srv) return IOCPSRV_EINVAL;
  return srv->port ? srv->port : IOCPSRV_ESTOPPED;
}

int IOCPSRV_CALL iocpsrv_stop(iocpsrv_t *srv, int timeout_ms) {
  if (!srv) return IOCPSRV_EINVAL;
  if (in_worker_of(srv)) {
    if (srv_state(srv) != SRV_RUNNING) return IOCPSRV_ESTOPPED;
    begin_stop(srv, timeout_ms);
    return 0;
  }
  srv_mutex_lock(&srv->life_lock);
  int rc = 0;
  if (!srv->need_join) {
    rc = IOCPSRV_ESTOPPED;
  } else {
    if (srv_state(srv) == SRV_RUNNING) begin_stop(srv, timeout_ms);
    else if (timeout_ms == 0) atomic_store(&srv->stop_deadline, srv_now_ms());
    finish_stop(srv);
  }
  srv_mutex_unlock(&srv->life_lock);
  return rc;
}

int IOCPSRV_CALL iocpsrv_destroy(iocpsrv_t *srv) {
  if (!srv) return IOCPSRV_EINVAL;
  if (in_worker_of(srv)) return IOCPSRV_EINCALLBACK;
  iocpsrv_stop(srv, 0);
  pullq_destroy(&srv->pull);
  conntable_destroy(&srv->table);
  srv_mutex_destroy(&srv->task_lock);
  srv_cond_destroy(&srv->life_cond);
  srv_mutex_destroy(&srv->life_lock);
  free(srv);
  return 0;
}

int IOCPSRV_CALL iocpsrv_send(iocpsrv_t *srv, iocpsrv_conn_id_t conn, const void *data,
                              size_t len) {
  if (!srv || (!data && len)) return IOCPSRV_EINVAL;
  iocpsrv_buf_t buf = {data, len};
  return send_packet(srv, conn, &buf, 1, len);
}

int IOCPSRV_CALL iocpsrv_sendv(iocpsrv_t *srv, iocpsrv_conn_id_t conn,
                               const iocpsrv_buf_t *bufs, int count) {
  if (!srv || count < 0 || (count && !bufs)) return IOCPSRV_EINVAL;
  size_t total = 0;
  for (int i = 0; i < count; i++) {
    if (!bufs[i].base && bufs[i].len) return IOCPSRV_EINVAL;
    if (bufs[i].len > SIZE_MAX / 2 - total) return IOCPSRV_ETOOBIG;
    total += bufs[i].len;
  }
  return send_packet(srv, conn, bufs, count, total);
}

int IOCPSRV_CALL iocpsrv_broadcast(iocpsrv_t *srv, const void *data, size_t len) {
  if (!srv || (!data && len)) return IOCPSRV_EINVAL;
  if (srv_state(srv) != SRV_RUNNING) return IOCPSRV_ESTOPPED;
  iocpsrv_buf_t buf = {data, len};
  int sent = 0;
  size_t used = conntable_used(&srv->table);
  for (size_t i = 0; i < used; i++) {
    conn_t *c = (conn_t *)conntable_at(&srv->table, i);
    srv_mutex_lock(&c->slot.lock);
    iocpsrv_conn_id_t id = c->state == CONN_OPEN ? c->slot.id : 0;
    srv_mutex_unlock(&c->slot.lock);
    if (!id) continue;
    int rc = send_packet(srv, id, &buf, 1, len);
    if (rc == IOCPSRV_ETOOBIG || rc == IOCPSRV_ESTOPPED) return rc;
    if (rc == 0) sent++;
  }
  return sent;
}

int IOCPSRV_CALL iocpsrv_disconnect(iocpsrv_t *srv, iocpsrv_conn_id_t conn, int mode) {
  if (!srv || (mode != IOCPSRV_CLOSE_GRACEFUL && mode != IOCPSRV_CLOSE_ABORT))
    return IOCPSRV_EINVAL;
  if (srv_state(srv) == SRV_STOPPED) return IOCPSRV_ESTOPPED;
  conn_t *c = conn_lock_id(srv, conn);
  if (!c) return IOCPSRV_ENOTCONN;
  int abort = mode == IOCPSRV_CLOSE_ABORT;
  request_close_locked(srv, c, abort,
                       abort ? IOCPSRV_REASON_LOCAL_ABORT : IOCPSRV_REASON_LOCAL_CLOSE);
  srv_mutex_unlock(&c->slot.lock);
  return 0;
}

static int set_paused(iocpsrv_t *srv, iocpsrv_conn_id_t conn, int paused) {
  if (!srv) return IOCPSRV_EINVAL;
  if (srv_state(srv) == SRV_STOPPED) return IOCPSRV_ESTOPPED;
  conn_t *c = conn_lock_id(srv, conn);
  if (!c) return IOCPSRV_ENOTCONN;
  if (c->state == CONN_OPEN && c->paused != paused) {
    c->paused = (uint8_t)paused;
    atomic_store(&c->deliver_stop, paused);
    if (paused) rearm_locked(srv, c);
    else schedule_locked(srv, c, NOTE_RESUME);
  }
  srv_mutex_unlock(&c->slot.lock);
  return 0;
}

int IOCPSRV_CALL iocpsrv_pause_receive(iocpsrv_t *srv, iocpsrv_conn_id_t conn) {
  return set_paused(srv, conn, 1);
}

int IOCPSRV_CALL iocpsrv_resume_receive(iocpsrv_t *srv, iocpsrv_conn_id_t conn) {
  return set_paused(srv, conn, 0);
}

int64_t IOCPSRV_CALL iocpsrv_pending_bytes(iocpsrv_t *srv, iocpsrv_conn_id_t conn) {
  if (!srv) return IOCPSRV_EINVAL;
  conn_t *c = conn_lock_id(srv, conn);
  if (!c) return srv_state(srv) == SRV_STOPPED ? IOCPSRV_ESTOPPED : IOCPSRV_ENOTCONN;
  int64_t n = (int64_t)sendbuf_pending(&c->out);
  srv_mutex_unlock(&c->slot.lock);
  return n;
}

int IOCPSRV_CALL iocpsrv_set_conn_user(iocpsrv_t *srv, iocpsrv_conn_id_t conn,
                                       void *conn_user) {
  if (!srv) return IOCPSRV_EINVAL;
  conn_t *c = conn_lock_id(srv, conn);
  if (!c) return srv_state(srv) == SRV_STOPPED ? IOCPSRV_ESTOPPED : IOCPSRV_ENOTCONN;
  atomic_store(&c->user, conn_user);
  srv_mutex_unlock(&c->slot.lock);
  return 0;
}

int IOCPSRV_CALL iocpsrv_conn_info(iocpsrv_t *srv, iocpsrv_conn_id_t conn,
                                   iocpsrv_conn_info_t *info) {
  if (!srv || !info || info->struct_size < offsetof(iocpsrv_conn_info_t, peer))
    return IOCPSRV_EINVAL;
  conn_t *c = conn_lock_id(srv, conn);
  if (!c) return srv_state(srv) == SRV_STOPPED ? IOCPSRV_ESTOPPED : IOCPSRV_ENOTCONN;
  iocpsrv_conn_info_t v;
  memset(&v, 0, sizeof v);
  v.struct_size = (uint32_t)(info->struct_size < sizeof v ? info->struct_size : sizeof v);
  v.flags = (c->paused ? IOCPSRV_CONN_PAUSED : 0) |
            (c->state == CONN_CLOSING ? IOCPSRV_CONN_CLOSING : 0);
  v.id = conn;
  v.connect_time_ms = c->connect_time_ms;
  v.bytes_in = atomic_load(&c->bytes_in);
  v.bytes_out = c->bytes_out;
  v.packets_in = atomic_load(&c->packets_in);
  v.packets_out = c->packets_out;
  v.pending_send_bytes = sendbuf_pending(&c->out);
  snprintf(v.peer, sizeof v.peer, "%s", c->peer);
  struct sockaddr_storage sa;
  socklen_t len = sizeof sa;
  if (getsockname(c->fd, (struct sockaddr *)&sa, &len) == 0)
    format_addr(&sa, v.local, sizeof v.local);
  srv_mutex_unlock(&c->slot.lock);
  memcpy(info, &v, v.struct_size);
  return 0;
}

int IOCPSRV_CALL iocpsrv_connections(iocpsrv_t *srv, iocpsrv_conn_id_t *ids, int max) {
  if (!srv || max < 0 || (max > 0 && !ids)) return IOCPSRV_EINVAL;
  int count = 0;
  size_t used = conntable_used(&srv->table);
  for (size_t i = 0; i < used; i++) {
    conn_t *c = (conn_t *)conntable_at(&srv->table, i);
    srv_mutex_lock(&c->slot.lock);
    if (c->state == CONN_OPEN || c->state == CONN_CLOSING) {
      if (count < max) ids[count] = c->slot.id;
      count++;
    }
    srv_mutex_unlock(&c->slot.lock);
  }
  return count;
}

int IOCPSRV_CALL iocpsrv_stats(iocpsrv_t *srv, iocpsrv_stats_t *stats) {
  if (!srv || !stats || stats->struct_size < offsetof(iocpsrv_stats_t, connections_now))
    return IOCPSRV_EINVAL;
  srv_stats_t *s = &srv->stats;
  iocpsrv_stats_t v;
  memset(&v, 0, sizeof v);
  v.struct_size = (uint32_t)(stats->struct_size < sizeof v ? stats->struct_size : sizeof v);
  v.workers = (uint32_t)atomic_load(&srv->running_workers);
  v.connections_now = atomic_load(&srv->open_count);
  v.connections_total = stat_get(&s->connections_total);
  v.connections_refused = stat_get(&s->connections_refused);
  v.connections_rejected = stat_get(&s->connections_rejected);
  v.packets_in = stat_get(&s->packets_in);
  v.packets_out = stat_get(&s->packets_out);
  v.bytes_in = stat_get(&s->bytes_in);
  v.bytes_out = stat_get(&s->bytes_out);
  v.accept_errors = stat_get(&s->accept_errors);
  v.protocol_errors = stat_get(&s->protocol_errors);
  v.send_queue_rejections = stat_get(&s->send_queue_rejections);
  v.idle_timeouts = stat_get(&s->idle_timeouts);
  v.pull_queue_depth = srv->opt.pull_mode ? pullq_depth(&srv->pull) : 0;
  memcpy(stats, &v, v.struct_size);
  return 0;
}

int IOCPSRV_CALL iocpsrv_poll(iocpsrv_t *srv, iocpsrv_event_t *events, int max,
                              int timeout_ms) {
  if (!srv || !events || max <= 0) return IOCPSRV_EINVAL;
  if (!srv->opt.pull_mode) return IOCPSRV_ENOTSUP;
  if (in_worker_of(srv)) return IOCPSRV_EINCALLBACK;
  return pullq_poll(&srv->pull, events, max, timeout_ms);
}

int64_t IOCPSRV_CALL iocpsrv_wait_handle(iocpsrv_t *srv) {
  if (!srv) return IOCPSRV_EINVAL;
  if (!srv->opt.pull_mode) return IOCPSRV_ENOTSUP;
  return srv_waitable_handle(&srv->pull.waitable);
}
