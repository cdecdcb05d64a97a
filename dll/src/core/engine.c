/* The engine shared by every backend; see engine.h for the model. */
#include "core/engine.h"
#include "core/fault.h"

#include "core/proxy.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* initial-exec: the library's few thread locals come from the static TLS reserve, so
 * reading them is one instruction instead of a __tls_get_addr call per packet. */
#if defined(__GNUC__) && !defined(_WIN32)
#  define ENGINE_TLS _Thread_local __attribute__((tls_model("initial-exec")))
#else
#  define ENGINE_TLS _Thread_local
#endif
static ENGINE_TLS worker_t *tls_worker;
/* Pull mode: the server whose iocpsrv_poll returned this thread's current batch, and
 * which batch (see flush_soon_locked). */
static ENGINE_TLS iocpsrv_t *tls_batch_srv;
static ENGINE_TLS uint64_t tls_batch_seq;

/* ---------------------------------------------------------------- helpers ---- */

void engine_log(iocpsrv_t *srv, int level, const char *fmt, ...) {
  SRV_ASSERT_NO_LOCKS();
  if (!srv->on_log) return;
  char msg[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  srv->on_log(srv, level, msg);
}

void engine_log_throttled(iocpsrv_t *srv, log_gate_t *g, int level, const char *fmt, ...) {
  SRV_ASSERT_NO_LOCKS();
  int64_t now = srv_now_ms();
  int64_t next = atomic_load(&g->next_ms);
  if (now < next || !atomic_compare_exchange_strong(&g->next_ms, &next, now + 1000)) {
    atomic_fetch_add(&g->suppressed, 1);
    return;
  }
  uint64_t more = atomic_exchange(&g->suppressed, 0);
  if (!srv->on_log) return;
  char msg[256];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (more && n >= 0 && (size_t)n < sizeof msg)
    snprintf(msg + n, sizeof msg - (size_t)n, " (and %llu more in the last second)",
             (unsigned long long)more);
  srv->on_log(srv, level, msg);
}

void engine_stat_add(atomic_uint_fast64_t *s, uint64_t n) {
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

int engine_in_worker_of(iocpsrv_t *srv) { return tls_worker && tls_worker->srv == srv; }

static int64_t clock_now(void) { return tls_worker ? tls_worker->now : srv_now_ms(); }

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

/* One connection fewer; wakes a stop waiting for the last one. */
static void open_count_release(iocpsrv_t *srv) {
  srv_mutex_lock(&srv->count_lock);
  if (atomic_fetch_sub(&srv->open_count, 1) == 1) srv_cond_broadcast(&srv->count_cond);
  srv_mutex_unlock(&srv->count_lock);
}

/* The open connection `id` with its lock held, or NULL. */
static conn_t *conn_lock_id(iocpsrv_t *srv, iocpsrv_conn_id_t id) {
  conn_t *c = (conn_t *)conntable_lookup(&srv->table, id);
  if (!c) return NULL;
  srv_mutex_lock(&c->slot.lock);
  if (c->slot.id == id && (c->state == CONN_OPEN || c->state == CONN_CLOSING) &&
      !c->proxy_awaiting)
    return c;
  srv_mutex_unlock(&c->slot.lock);
  return NULL;
}

/* ------------------------------------------------------- token and arming ---- */

/* The run queue: connections with notes that no worker is running yet. Workers take
 * them one at a time, so a callback that blocks holds up only its own connection. */
static void task_push(iocpsrv_t *srv, conn_t *c) {
  srv_mutex_lock(&srv->task_lock);
  int was_empty = srv->task_head == NULL;
  c->next_task = NULL;
  if (srv->task_tail) srv->task_tail->next_task = c;
  else srv->task_head = c;
  srv->task_tail = c;
  srv_mutex_unlock(&srv->task_lock);
  /* Busy workers look at the queue after their current work; wake an idle one only.
   * The rest of a batch a worker is dispatching wakes no one where the backend has a
   * cheaper way to find work a stuck worker left behind (BK_WAKE_FOR_WORKER_TASKS);
   * work queued from a callback (a disconnect, a resume for another connection) does:
   * that callback may block next, and the poller may sleep for a whole sweep period. */
  worker_t *w = tls_worker;
  int mine = w && w->srv == srv;
  int dispatching = mine && w->defer_notify;
  int in_callback = mine && w->running; /* rest of the queue included: it may block */
  if (atomic_load(&srv->idle_workers) > 0 &&
      (in_callback || (was_empty && (BK_WAKE_FOR_WORKER_TASKS || !dispatching))))
    bk_wake_tasks(srv);
}

static conn_t *task_pop(iocpsrv_t *srv, int *more) {
  srv_mutex_lock(&srv->task_lock);
  conn_t *c = srv->task_head;
  if (c) {
    srv->task_head = c->next_task;
    if (!srv->task_head) srv->task_tail = NULL;
  }
  *more = srv->task_head != NULL;
  srv_mutex_unlock(&srv->task_lock);
  return c;
}

int engine_worker_may_sleep(worker_t *w) {
  iocpsrv_t *srv = w->srv;
  atomic_fetch_add(&srv->idle_workers, 1);
  /* Counted idle first, then looked: a push either sees us idle and wakes us, or we
   * see its task here. */
  srv_mutex_lock(&srv->task_lock);
  int empty = srv->task_head == NULL;
  srv_mutex_unlock(&srv->task_lock);
  if (!empty) atomic_fetch_sub(&srv->idle_workers, 1);
  return empty;
}

void engine_worker_woke(worker_t *w) { atomic_fetch_sub(&w->srv->idle_workers, 1); }

/* Leave work for the token holder, or hand the connection to a worker. Lock held. */
void engine_schedule_locked(iocpsrv_t *srv, conn_t *c, uint32_t note) {
  c->notes |= note;
  if (c->busy || c->queued) return;
  c->queued = 1;
  task_push(srv, c);
}

int engine_reading_wanted(const conn_t *c) {
  if (c->rd_eof) return 0;
  return c->state == CONN_CLOSING || (!c->paused && !c->pull_blocked);
}

/* ----------------------------------------------------------------- sending ---- */

void engine_sent_locked(iocpsrv_t *srv, conn_t *c, size_t n) {
  c->bytes_out += (uint64_t)n;
  if (engine_in_worker_of(srv)) tls_worker->bytes_out += (uint64_t)n;
  else engine_stat_add(&srv->stats.bytes_out, (uint64_t)n);
  size_t pending = bk_conn_pending_locked(c);
  size_t limit = (size_t)srv->opt.send_queue_limit;
  if (c->want_drain && pending < limit / 2 && (pending == 0 || pending + c->drain_need <= limit)) {
    c->want_drain = 0;
    c->drain_need = 0;
    engine_schedule_locked(srv, c, NOTE_DRAIN);
  }
  if (c->state == CONN_CLOSING && c->close_mode == CLOSE_GRACEFUL && !c->wr_shut &&
      pending == 0) {
    bk_conn_shutdown_write(c);
    c->wr_shut = 1;
    if (c->rd_eof) engine_schedule_locked(srv, c, NOTE_CLOSE); /* both FINs: done */
  }
}

static void request_close_locked(iocpsrv_t *srv, conn_t *c, int abort, int reason);

void engine_write_failed_locked(iocpsrv_t *srv, conn_t *c) {
  /* The peer is gone: drop what is queued and let the token holder close. The failed
   * write took the socket's error, so a read may now see a plain end of stream: the
   * reset is recorded here. */
  sendbuf_free(&c->out);
  if (c->state == CONN_OPEN) request_close_locked(srv, c, 1, IOCPSRV_REASON_PEER_RESET);
  else if (c->close_reason == IOCPSRV_REASON_PEER_CLOSED)
    c->close_reason = IOCPSRV_REASON_PEER_RESET;
  engine_schedule_locked(srv, c, NOTE_ERROR);
}

/* Write now, or after the current batch when on a worker. Lock held. */
/* Whether this thread is handling the batch its last iocpsrv_poll returned. */
static int in_poll_batch(iocpsrv_t *srv) {
  return srv->opt.pull_batch_sends && tls_batch_srv == srv &&
         tls_batch_seq == atomic_load(&srv->poll_seq);
}

/* Write now, or once for a whole batch: after the worker's callbacks for this
 * connection, or, in pull mode, at the consumer's next iocpsrv_poll. Lock held.
 *
 * Only the connection whose token this worker holds is deferred: a send to another
 * connection from a callback is written at once, since the callback may block next
 * and must not hold that connection's bytes (or, through flush_queued, its own
 * replies made on other workers) back (contract point 7). */
static void flush_soon_locked(iocpsrv_t *srv, conn_t *c) {
  worker_t *w = tls_worker;
  if (engine_in_worker_of(srv) && w->running == c) {
    if (c->flush_queued) return;
    c->flush_queued = 1;
    c->next_flush = w->flush_head;
    w->flush_head = c;
  } else if (!engine_in_worker_of(srv) && in_poll_batch(srv)) {
    if (c->flush_queued) return;
    c->flush_queued = 1;
    srv_mutex_lock(&srv->poll_flush_lock);
    c->next_flush = srv->poll_flush_head;
    srv->poll_flush_head = c;
    srv_mutex_unlock(&srv->poll_flush_lock);
  } else {
    bk_conn_flush_locked(srv, c);
  }
}

/* Write what the pull consumer sent while handling its last batch. */
static void flush_poll_batch(iocpsrv_t *srv) {
  srv_mutex_lock(&srv->poll_flush_lock);
  conn_t *c = srv->poll_flush_head;
  srv->poll_flush_head = NULL;
  srv_mutex_unlock(&srv->poll_flush_lock);
  while (c) {
    conn_t *next;
    srv_mutex_lock(&c->slot.lock);
    next = c->next_flush;
    c->flush_queued = 0;
    if (c->state == CONN_OPEN || c->state == CONN_CLOSING) bk_conn_flush_locked(c->srv, c);
    srv_mutex_unlock(&c->slot.lock);
    c = next;
  }
}

static void flush_deferred(worker_t *w) {
  while (w->flush_head) {
    conn_t *c = w->flush_head;
    srv_mutex_lock(&c->slot.lock);
    w->flush_head = c->next_flush;
    c->flush_queued = 0;
    if (c->state == CONN_OPEN || c->state == CONN_CLOSING) bk_conn_flush_locked(c->srv, c);
    srv_mutex_unlock(&c->slot.lock);
  }
}

/* Whether a queue holding `queued` bytes refuses `framed` more: an empty queue takes
 * any one packet, a busy one stays within the limit. */
static int queue_refuses(const iocpsrv_t *srv, size_t queued, size_t framed) {
  return queued && queued + framed > (size_t)srv->opt.send_queue_limit;
}

/* A send of `framed` bytes was refused: a drain note once there is room for it. */
static void refused_locked(conn_t *c, size_t framed) {
  c->want_drain = 1;
  if (framed > c->drain_need) c->drain_need = framed;
}

/* The connection whose callback is running on this thread, if it is `id`. */
static conn_t *own_conn(iocpsrv_t *srv, iocpsrv_conn_id_t id) {
  worker_t *w = tls_worker;
  if (!w || w->srv != srv || !w->running) return NULL;
  return w->running->slot.id == id ? w->running : NULL; /* the token holder's to read */
}

/* An own send looks refused by the queue as the turn found it (out_seen). That view
 * may be stale: the queue may have drained since (an "empty queue always takes one
 * packet" must hold). So refusals, rare by nature, are judged again under the lock
 * against the real queue; a refusal sets want_drain there, at once, so the drain
 * check of the very next write sees it. Returns 1 if refused. */
static int own_refusal(iocpsrv_t *srv, conn_t *c, size_t framed) {
  srv_mutex_lock(&c->slot.lock);
  c->out_seen = bk_conn_pending_locked(c);
  int refuse = queue_refuses(srv, c->out_seen + sendbuf_pending(&c->own), framed);
  if (refuse) refused_locked(c, framed);
  srv_mutex_unlock(&c->slot.lock);
  if (refuse) engine_stat_add(&srv->stats.send_queue_rejections, 1);
  return refuse;
}

/* A send from the connection's own callback: into `own`, no lock (merge_own_locked
 * moves it at the end of the turn). The queue limit counts `out` as the turn found it. */
static int send_own(iocpsrv_t *srv, conn_t *c, const iocpsrv_buf_t *bufs, int count,
                    size_t total) {
  if (!atomic_load_explicit(&c->send_open, memory_order_relaxed)) return IOCPSRV_ENOTCONN;
  size_t framed = srv->framing.header_bytes + total;
  fault_point(FAULT_POINT_SEND_OWN, c->slot.id);
  if (queue_refuses(srv, c->out_seen + sendbuf_pending(&c->own), framed) &&
      own_refusal(srv, c, framed))
    return IOCPSRV_EQUEUEFULL;
  if (sendbuf_append(&c->own, &srv->framing, bufs, count, total)) {
    engine_stat_add(&srv->stats.alloc_failures, 1);
    return IOCPSRV_ENOMEM;
  }
  c->own_packets++;
  tls_worker->packets_out++;
  return 0;
}

/* End of a turn (lock held, token still held): the own sends join the queue, in order
 * after what other threads queued before, and go out with the worker's flush. Returns
 * -1 when out of memory (the connection is aborted): the caller logs it once the lock
 * is released, since no host callback may run under an engine lock. */
static int merge_own_locked(iocpsrv_t *srv, conn_t *c) {
  if (!sendbuf_pending(&c->own)) return 0;
  if (c->state != CONN_OPEN && c->state != CONN_CLOSING) {
    sendbuf_free(&c->own);
  } else if (sendbuf_take(&c->out, &c->own)) {
    sendbuf_free(&c->own);
    c->own_packets = 0;
    engine_stat_add(&srv->stats.alloc_failures, 1);
    request_close_locked(srv, c, 1, IOCPSRV_REASON_OUT_OF_MEMORY);
    return -1;
  }
  c->packets_out += c->own_packets;
  c->own_packets = 0;
  flush_soon_locked(srv, c);
  return 0;
}

static void log_merge_nomem(iocpsrv_t *srv, conn_t *c) {
  engine_log(srv, 0, "connection %s: out of memory queueing packets", c->peer);
}

static int send_packet(iocpsrv_t *srv, iocpsrv_conn_id_t id, const iocpsrv_buf_t *bufs,
                       int count, size_t total) {
  if (srv_state(srv) != SRV_RUNNING) return IOCPSRV_ESTOPPED;
  if (total > srv->framing.max_packet) return IOCPSRV_ETOOBIG; /* raw mode: per send */
  conn_t *own = own_conn(srv, id);
  if (own) return send_own(srv, own, bufs, count, total);
  conn_t *c = conn_lock_id(srv, id);
  if (!c) return IOCPSRV_ENOTCONN;
  int rc = 0;
  size_t pending = bk_conn_pending_locked(c);
  size_t framed = srv->framing.header_bytes + total;
  if (c->state != CONN_OPEN) {
    rc = IOCPSRV_ENOTCONN;
  } else if (queue_refuses(srv, pending, framed)) {
    refused_locked(c, framed);
    engine_stat_add(&srv->stats.send_queue_rejections, 1);
    rc = IOCPSRV_EQUEUEFULL;
  } else if (sendbuf_append(&c->out, &srv->framing, bufs, count, total)) {
    engine_stat_add(&srv->stats.alloc_failures, 1);
    rc = IOCPSRV_ENOMEM;
  } else {
    c->packets_out++;
    if (engine_in_worker_of(srv)) tls_worker->packets_out++;
    else engine_stat_add(&srv->stats.packets_out, 1);
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
    atomic_store_explicit(&c->send_open, 0, memory_order_relaxed);
    c->close_reason = (uint8_t)reason;
    c->close_deadline = clock_now() + srv->opt.close_timeout_ms;
    atomic_store(&c->deliver_stop, 1);
  } else if (c->state != CONN_CLOSING) {
    return;
  }
  if (abort) c->close_mode = CLOSE_ABORT;
  else if (c->close_mode == CLOSE_NONE) c->close_mode = CLOSE_GRACEFUL;
  engine_schedule_locked(srv, c, NOTE_CLOSE);
}

static int conn_finalize(iocpsrv_t *srv, conn_t *c, int reason, int abort);

/* Queue a CONNECT or DRAIN event (never counted against the packet limit). 0, or -1
 * when out of memory. */
static int deliver_event(iocpsrv_t *srv, conn_t *c, int type, const void *data, size_t len) {
  return pullq_push(&srv->pull, type, c->slot.id, atomic_load(&c->user), 0, data, len) < 0
             ? -1
             : 0;
}

/* An allocation failed for this connection: it is aborted with a reason that says so
 * (its disconnect still comes, if the host knows it). Token held, no lock. */
static int conn_abort_nomem(iocpsrv_t *srv, conn_t *c, const char *what) {
  engine_stat_add(&srv->stats.alloc_failures, 1);
  engine_log(srv, 0, "connection %s: out of memory %s", c->peer, what);
  return conn_finalize(srv, c, IOCPSRV_REASON_OUT_OF_MEMORY, 1);
}

/* The token holder ends the connection: close the socket, then, once the backend has
 * no I/O left on it, one disconnect callback and the slot is freed. Always returns 1
 * ("the connection is gone") for the callers. */
static int conn_finalize(iocpsrv_t *srv, conn_t *c, int reason, int abort) {
  srv_mutex_lock(&c->slot.lock);
  if (c->close_reason) reason = c->close_reason;
  if (c->close_mode == CLOSE_ABORT) abort = 1;
  c->close_reason = (uint8_t)reason;
  c->state = CONN_DEAD;
  atomic_store_explicit(&c->send_open, 0, memory_order_relaxed);
  sendbuf_free(&c->out);
  sendbuf_free(&c->own);
  c->own_packets = 0;
  srv_mutex_unlock(&c->slot.lock);
  framer_free(&c->in);
  free(c->proxy_buf);
  c->proxy_buf = NULL;
  c->proxy_len = 0;
  if (!bk_conn_close(srv, c, abort)) engine_conn_released(srv, c);
  return 1;
}

void engine_conn_released(iocpsrv_t *srv, conn_t *c) {
  iocpsrv_conn_id_t id = c->slot.id;
  int reason = c->close_reason;
  pullq_node_t *bye = c->bye;
  c->bye = NULL;
  if (c->src_counted) { /* before the disconnect: a client told it left may come back */
    c->src_counted = 0;
    srclimit_release(&srv->per_source, &c->src_key);
  }
  if (c->refused || c->proxy_awaiting) {
    /* The host never accepted it, or never heard of it: no disconnect. */
    if (bye) pullq_unreserve(&srv->pull, bye);
  } else if (bye) {
    pullq_push_reserved(&srv->pull, bye, IOCPSRV_EVENT_DISCONNECT, id, atomic_load(&c->user),
                        reason);
  } else if (srv->on_disconnect) {
    SRV_ASSERT_NO_LOCKS();
    srv->on_disconnect(srv, id, atomic_load(&c->user), reason);
  }

  srv_mutex_lock(&c->slot.lock);
  c->slot.id = 0;
  c->state = CONN_FREE;
  c->busy = 0;
  c->notes = 0;
  conntable_release(&srv->table, &c->slot);
  srv_mutex_unlock(&c->slot.lock);

  open_count_release(srv);
}

/* --------------------------------------------------------------- receiving ---- */

typedef struct deliver_ctx_s {
  iocpsrv_t *srv;
  worker_t *w;
  conn_t *c;
  int pull_full;
  int pull_nomem; /* a packet could not be queued: the connection is aborted */
} deliver_ctx_t;

static int deliver_packet(void *arg, const uint8_t *data, size_t len) {
  deliver_ctx_t *d = arg;
  conn_t *c = d->c;
  iocpsrv_t *srv = d->srv;
  counter_add(&c->packets_in, 1);
  d->w->packets_in++;
  atomic_store_explicit(&c->last_packet_ms, d->w->now, memory_order_relaxed);
  if (srv->opt.pull_mode) {
    int r = pullq_push(&srv->pull, IOCPSRV_EVENT_PACKET, c->slot.id, atomic_load(&c->user), 0,
                       data, len);
    if (r != 0) {
      if (r < 0) d->pull_nomem = 1;
      else d->pull_full = 1;
      return 1;
    }
  } else if (srv->on_packet && (SRV_ASSERT_NO_LOCKS(), 1) &&
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
    engine_stat_add(&d->srv->stats.protocol_errors, 1);
    engine_log(d->srv, 1, "connection %s: packet header above the maximum packet size",
            d->c->peer);
    return conn_finalize(d->srv, d->c, IOCPSRV_REASON_PROTOCOL_ERROR, 1);
  }
  if (rc == FRAMER_NOMEM) return conn_abort_nomem(d->srv, d->c, "buffering a packet");
  if (d->pull_nomem) return conn_abort_nomem(d->srv, d->c, "queueing a pull event");
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
  if (c->state != CONN_OPEN) {
    c->notes |= NOTE_CLOSE;
  } else if (srv->opt.pull_mode && !c->proxy_awaiting) {
    /* The host has not seen the packets before the FIN yet: it may still reply. The
     * close starts at its poll after the one that hands over this mark. (A client the
     * host has not met, its PROXY header unfinished, just closes.) */
    srv_mutex_unlock(&c->slot.lock);
    if (pullq_push(&srv->pull, PULLQ_EOF_MARK, c->slot.id, NULL, 0, NULL, 0) < 0)
      return conn_finalize(srv, c, IOCPSRV_REASON_PEER_CLOSED, 0);
    return 0;
  } else {
    request_close_locked(srv, c, 0, IOCPSRV_REASON_PEER_CLOSED);
  }
  srv_mutex_unlock(&c->slot.lock);
  return 0;
}

static int conn_introduce(iocpsrv_t *srv, conn_t *c);
static int source_admit_proxied(iocpsrv_t *srv, conn_t *c, const struct sockaddr_storage *src);

/* A connection that must not reach the host, closed silently: a protocol error, or
 * (nomem) no memory to meet it. */
static int conn_drop_as(iocpsrv_t *srv, conn_t *c, const char *why, int nomem) {
  engine_stat_add(nomem ? &srv->stats.alloc_failures : &srv->stats.protocol_errors, 1);
  engine_log(srv, nomem ? 0 : 1, "connection %s: %s", c->peer, why);
  srv_mutex_lock(&c->slot.lock);
  c->refused = 1;
  srv_mutex_unlock(&c->slot.lock);
  return conn_finalize(srv, c,
                       nomem ? IOCPSRV_REASON_OUT_OF_MEMORY : IOCPSRV_REASON_PROTOCOL_ERROR, 1);
}

static int conn_drop(iocpsrv_t *srv, conn_t *c, const char *why) {
  return conn_drop_as(srv, c, why, 0);
}

/* Bytes before the PROXY header is complete: gather, parse, then meet the host with
 * the real client's address and hand what follows the header to the framer. Returns
 * 1 if the connection is gone. */
static int conn_read_proxy(iocpsrv_t *srv, worker_t *w, conn_t *c, const uint8_t *p,
                           size_t n) {
  if (c->proxy_len + n > PROXY_MAX_HEADER + n || !(c->proxy_len || n)) return 0;
  const uint8_t *data = p;
  size_t len = n;
  if (c->proxy_len) { /* the header was split over receives */
    uint8_t *grown = srv_realloc(c->proxy_buf, c->proxy_len + n);
    if (!grown) return conn_drop_as(srv, c, "out of memory for a PROXY header", 1);
    memcpy(grown + c->proxy_len, p, n);
    c->proxy_buf = grown;
    c->proxy_len += n;
    data = grown;
    len = c->proxy_len;
  }
  proxy_header_t h;
  int r = proxy_parse(data, len, &h);
  if (r == PROXY_NEED_MORE) {
    if (len > PROXY_MAX_HEADER) return conn_drop(srv, c, "PROXY header too long");
    if (!c->proxy_len) {
      c->proxy_buf = srv_malloc(n);
      if (!c->proxy_buf) return conn_drop_as(srv, c, "out of memory for a PROXY header", 1);
      memcpy(c->proxy_buf, p, n);
      c->proxy_len = n;
    }
    return 0;
  }
  if (r == PROXY_MALFORMED) return conn_drop(srv, c, "malformed PROXY protocol header");
  if (r == PROXY_NOT_PROXY && srv->opt.proxy_protocol == IOCPSRV_PROXY_REQUIRED)
    return conn_drop(srv, c, "no PROXY protocol header");
  if (r > 0 && !c->src_trusted) { /* OPTIONAL mode (REQUIRED closed it at accept) */
    engine_stat_add(&srv->stats.proxy_untrusted, 1);
    return conn_drop(srv, c, "PROXY header from a peer not in IOCPSRV_OPT_PROXY_TRUSTED");
  }
  if (r > 0 && h.has_addr && source_admit_proxied(srv, c, &h.src)) return 1;
  size_t used = r > 0 ? (size_t)r : 0;
  fault_point(FAULT_POINT_PROXY_PARSED, c->slot.id);
  srv_mutex_lock(&c->slot.lock);
  /* The sweep may have timed the header out a moment ago (refused and closing, under
   * this lock): then the host must never meet it, or it would get a connect without
   * a disconnect. The pending NOTE_CLOSE finishes it silently. */
  int timed_out = c->state != CONN_OPEN;
  if (!timed_out) {
    if (r > 0) {
      memcpy(c->proxy, c->peer, sizeof c->proxy); /* the balancer */
      if (h.has_addr) format_addr(&h.src, c->peer, sizeof c->peer);
    }
    c->proxy_awaiting = 0;
  }
  srv_mutex_unlock(&c->slot.lock);
  if (timed_out) return 0;
  /* A refused client's slot is released inside conn_introduce and may belong to a new
   * client at once: `c` must not be touched after a refusal (conn_finalize freed the
   * header buffer). */
  if (conn_introduce(srv, c)) return 1;
  fault_point(FAULT_POINT_PROXY_INTRODUCED, c->slot.id);
  int rc = FRAMER_OK;
  deliver_ctx_t d = {srv, w, c, 0, 0};
  if (len > used)
    rc = framer_feed(&c->in, &srv->framing, data + used, len - used, deliver_packet, &d);
  free(c->proxy_buf); /* the framer copied what it keeps */
  c->proxy_buf = NULL;
  c->proxy_len = 0;
  return after_delivery(&d, rc);
}

/* Reads per turn of the token: enough to drain a burst, few enough that one fast
 * sender cannot keep a worker from the connections queued behind it. */
#define READS_PER_TURN 16

enum { READ_DRAINED = 0, READ_GONE = 1, READ_FULL = 2 };

/* One receive into the framer's own space (a large packet's body) or the worker's
 * buffer, and delivery of the whole packets it completes. */
static int conn_read_once(iocpsrv_t *srv, worker_t *w, conn_t *c, int closing, int hup) {
  uint8_t *p = NULL;
  size_t room = closing || c->proxy_awaiting ? 0 : framer_direct_space(&c->in, &srv->framing, &p);
  if (!room) {
    p = w->rbuf;
    room = w->rbuf_size;
  }
  long n = bk_conn_recv(c, p, room);
  if (n == BK_EOF) return conn_peer_eof(srv, c) ? READ_GONE : READ_DRAINED;
  if (n == BK_AGAIN) return READ_DRAINED;
  if (n < 0) return conn_finalize(srv, c, IOCPSRV_REASON_PEER_RESET, 1), READ_GONE;
  counter_add(&c->bytes_in, (uint64_t)n);
  w->bytes_in += (uint64_t)n;
  /* A short read emptied the socket: the next arrival is a new edge. After a hang-up,
   * read on until the end of stream shows itself. */
  int more = (size_t)n == room || hup ? READ_FULL : READ_DRAINED;
  if (closing) return more; /* draining towards the peer's FIN */
  if (c->proxy_awaiting) return conn_read_proxy(srv, w, c, p, (size_t)n) ? READ_GONE : more;

  deliver_ctx_t d = {srv, w, c, 0, 0};
  int rc = p == w->rbuf ? framer_feed(&c->in, &srv->framing, p, (size_t)n, deliver_packet, &d)
                        : framer_direct_commit(&c->in, &srv->framing, (size_t)n,
                                               deliver_packet, &d);
  if (srv->framing.header_bytes == 0)
    atomic_store_explicit(&c->last_packet_ms, w->now, memory_order_relaxed);
  return after_delivery(&d, rc) ? READ_GONE : more;
}

/* Pull mode: the queue is at its limit, so this connection waits for room before it
 * reads (or delivers what it holds): checked before every read, the queue overshoots
 * by at most one packet per worker, not one per connection. Token held, no lock. */
static int pull_full(iocpsrv_t *srv, conn_t *c) {
  if (!srv->opt.pull_mode || c->proxy_awaiting ||
      !pullq_wait_if_full(&srv->pull, c->slot.id))
    return 0;
  srv_mutex_lock(&c->slot.lock);
  c->pull_blocked = 1; /* cleared by the NOTE_ROOM that on_room brings */
  srv_mutex_unlock(&c->slot.lock);
  return 1;
}

/* Read until the socket is empty (an edge-triggered backend hears of it only once),
 * receiving is paused, or the turn is used up. A read skipped while paused is made up
 * at resume; a turn used up goes to the back of the run queue (read_more). */
static int conn_read(iocpsrv_t *srv, worker_t *w, conn_t *c) {
  for (int i = 0; i < READS_PER_TURN; i++) {
    srv_mutex_lock(&c->slot.lock);
    int closing = c->state == CONN_CLOSING;
    int blocked = c->paused || c->pull_blocked;
    int hup = c->hup, eof = c->rd_eof;
    srv_mutex_unlock(&c->slot.lock);
    if (eof) return 0; /* a late hang-up event: the end was already read */
    if (!closing && (blocked || pull_full(srv, c))) {
      c->read_skipped = 1;
      return 0;
    }
    c->read_skipped = 0;
    int r = conn_read_once(srv, w, c, closing, hup);
    if (r != READ_FULL) return r == READ_GONE;
  }
  c->read_more = 1;
  return 0;
}

/* Deliver what waited in the framer while receiving was paused or the queue full. */
static int conn_resume(iocpsrv_t *srv, worker_t *w, conn_t *c, uint32_t notes) {
  srv_mutex_lock(&c->slot.lock);
  if (notes & NOTE_ROOM) c->pull_blocked = 0;
  int go = c->state == CONN_OPEN && !c->paused && !c->pull_blocked;
  srv_mutex_unlock(&c->slot.lock);
  if (!go || (c->in.held && pull_full(srv, c))) return 0;
  deliver_ctx_t d = {srv, w, c, 0, 0};
  return after_delivery(&d, framer_resume(&c->in, &srv->framing, deliver_packet, &d));
}

/* NOTE_CLOSE: abort now, or half-close once the queue is written; the connection is
 * done when both sides have sent their FIN. */
static int conn_close_step(iocpsrv_t *srv, conn_t *c) {
  srv_mutex_lock(&c->slot.lock);
  int abort = c->close_mode == CLOSE_ABORT;
  int nomem = !abort && merge_own_locked(srv, c); /* replies sent before the close */
  if (nomem) abort = 1;
  if (!abort) bk_conn_flush_locked(srv, c); /* it may sit on a deferred list */
  if (!abort && !c->wr_shut && bk_conn_pending_locked(c) == 0) {
    bk_conn_shutdown_write(c);
    c->wr_shut = 1;
  }
  int done = c->wr_shut && c->rd_eof;
  srv_mutex_unlock(&c->slot.lock);
  if (nomem) log_merge_nomem(srv, c);
  framer_free(&c->in); /* nothing more is delivered */
  if (abort) return conn_finalize(srv, c, IOCPSRV_REASON_LOCAL_ABORT, 1);
  return done ? conn_finalize(srv, c, IOCPSRV_REASON_PEER_CLOSED, 0) : 0;
}

/* Returns 1 if the connection is gone (a lost drain would stall the host forever, so
 * a DRAIN event that cannot be queued aborts the connection). */
static int conn_drain(iocpsrv_t *srv, conn_t *c) {
  if (srv->opt.pull_mode) {
    if (deliver_event(srv, c, IOCPSRV_EVENT_DRAIN, NULL, 0))
      return conn_abort_nomem(srv, c, "queueing a drain event");
  } else if (srv->on_drain) {
    SRV_ASSERT_NO_LOCKS();
    srv->on_drain(srv, c->slot.id, atomic_load(&c->user));
  }
  return 0;
}

/* Returns 1 if the connection is gone. */
static int conn_handle(iocpsrv_t *srv, worker_t *w, conn_t *c, uint32_t n) {
  if (n & NOTE_ERROR) return conn_finalize(srv, c, IOCPSRV_REASON_PEER_RESET, 1);
  if ((n & NOTE_CLOSE) && conn_close_step(srv, c)) return 1;
  if (n & NOTE_WRITE) {
    srv_mutex_lock(&c->slot.lock);
    bk_conn_on_writable_locked(srv, c);
    srv_mutex_unlock(&c->slot.lock);
  }
  if (n & (NOTE_RESUME | NOTE_ROOM)) {
    if (conn_resume(srv, w, c, n)) return 1;
    if (c->read_skipped) n |= NOTE_READ; /* what arrived while paused */
  }
  if ((n & NOTE_READ) && conn_read(srv, w, c)) return 1;
  if (n & NOTE_DRAIN) return conn_drain(srv, c);
  return 0;
}

/* Run notes while holding the token; called with the lock held and busy set, returns
 * with the lock released. */
static void conn_run_notes(iocpsrv_t *srv, worker_t *w, conn_t *c) {
  conn_t *outer = w->running;
  w->running = c;
  int nomem = 0;
  do { /* the merge may leave notes (a close, a drain): run them too */
    while (c->notes) {
      uint32_t n = c->notes;
      c->notes = 0;
      c->out_seen = bk_conn_pending_locked(c);
      srv_mutex_unlock(&c->slot.lock);
      if (conn_handle(srv, w, c, n)) {
        w->running = outer;
        if (nomem) log_merge_nomem(srv, c);
        return;
      }
      srv_mutex_lock(&c->slot.lock);
    }
    if (merge_own_locked(srv, c)) nomem = 1;
  } while (c->notes);
  w->running = outer;
  c->busy = 0;
  if (c->read_more) { /* its turn is used up: behind the others, still readable */
    c->read_more = 0;
    engine_schedule_locked(srv, c, NOTE_READ);
  } else {
    bk_conn_arm_locked(srv, c);
  }
  srv_mutex_unlock(&c->slot.lock);
  if (nomem) log_merge_nomem(srv, c); /* c's slot stays valid: its close is only queued */
}

static void conn_run(iocpsrv_t *srv, worker_t *w, conn_t *c) {
  conn_run_notes(srv, w, c);
  /* What this connection's callbacks sent goes out now: one write per connection for
   * the whole batch of packets, and not held back if a later callback on this worker
   * blocks. */
  flush_deferred(w);
}

conn_t *engine_conn_lock_id_event(iocpsrv_t *srv, uint64_t id) {
  conn_t *c = (conn_t *)conntable_lookup(&srv->table, id);
  if (!c) return NULL;
  srv_mutex_lock(&c->slot.lock);
  if (c->slot.id == id) return c;
  srv_mutex_unlock(&c->slot.lock); /* an event for a connection that closed since */
  return NULL;
}

void engine_conn_notify_locked(worker_t *w, conn_t *c, uint32_t notes) {
  c->notes |= notes;
  if (c->busy || !c->notes || c->state == CONN_DEAD || c->state == CONN_FREE) {
    srv_mutex_unlock(&c->slot.lock);
    return;
  }
  if (w->defer_notify) {
    engine_schedule_locked(w->srv, c, 0);
    srv_mutex_unlock(&c->slot.lock);
    return;
  }
  c->busy = 1;
  conn_run(w->srv, w, c);
}

void engine_run_tasks(worker_t *w) {
  iocpsrv_t *srv = w->srv;
  int more;
  conn_t *c;
  w->defer_notify = 0;
  while ((c = task_pop(srv, &more)) != NULL) {
    /* This one may block: let an idle worker take the rest. */
    if (BK_WAKE_FOR_WORKER_TASKS && more && atomic_load(&srv->idle_workers) > 0)
      bk_wake_tasks(srv);
    srv_mutex_lock(&c->slot.lock);
    /* `queued` is cleared here, not at free: the slot may be on this list while it is
     * reused, and the notes found now are the new connection's own. */
    c->queued = 0;
    if (c->slot.id) engine_conn_notify_locked(w, c, 0);
    else srv_mutex_unlock(&c->slot.lock);
  }
}

/* ---------------------------------------------------------------- accepting ---- */

/* A slot for a fresh socket, token held by the caller. NULL when the table is full. */
static conn_t *conn_open(iocpsrv_t *srv, worker_t *w, bk_socket_t sock,
                         const struct sockaddr_storage *sa) {
  int nomem;
  conn_t *c = (conn_t *)conntable_alloc(&srv->table, &nomem);
  if (!c) {
    if (nomem) engine_stat_add(&srv->stats.alloc_failures, 1);
    return NULL;
  }
  srv_mutex_lock(&c->slot.lock);
  c->state = CONN_OPEN;
  c->close_mode = CLOSE_NONE;
  c->close_reason = 0;
  c->busy = 1;
  c->srv = srv;
  c->paused = c->pull_blocked = c->want_drain = 0;
  c->wr_shut = c->rd_eof = c->hup = 0;
  c->read_skipped = c->read_more = 0;
  c->drain_need = 0;
  c->own_packets = 0;
  atomic_store_explicit(&c->send_open, 1, memory_order_relaxed);
  c->notes = 0;
  c->sock = sock;
  c->refused = 0;
  c->proxy_awaiting = 0;
  c->proxy[0] = 0;
  c->bye = NULL;
  c->out_seen = 0;
  /* Before anyone can see the id: sends from other threads may start at once. */
  int reg_err = bk_conn_register(srv, c);
  if (reg_err) c->notes |= NOTE_ERROR;
  c->bytes_out = c->packets_out = 0;
  atomic_store(&c->deliver_stop, 0);
  atomic_store(&c->user, NULL);
  atomic_store(&c->bytes_in, 0);
  atomic_store(&c->packets_in, 0);
  atomic_store(&c->last_packet_ms, w->now);
  c->connect_time_ms = srv_unix_ms();
  format_addr(sa, c->peer, sizeof c->peer);
  srv_mutex_unlock(&c->slot.lock);
  if (reg_err)
    engine_log(srv, 0, "connection %s: cannot watch the socket (%s)", c->peer,
               iocpsrv_strerror(reg_err));
  return c;
}

/* The connect callback refused: the client is closed and never heard of again. */
static void conn_refuse(iocpsrv_t *srv, conn_t *c) {
  srv_mutex_lock(&c->slot.lock);
  c->refused = 1;
  srv_mutex_unlock(&c->slot.lock);
  engine_stat_add(&srv->stats.connections_rejected, 1);
  conn_finalize(srv, c, IOCPSRV_REASON_LOCAL_CLOSE, 0);
}

/* The connect callback (or pull CONNECT event). Returns 1 if the host refused it (the
 * connection is gone then). Token held. */
static int conn_introduce(iocpsrv_t *srv, conn_t *c) {
  if (srv->opt.pull_mode) {
    /* Its DISCONNECT is allocated now, so that it can never be lost later; without
     * memory for both events the host never meets this client. */
    c->bye = pullq_reserve(&srv->pull);
    if (!c->bye || deliver_event(srv, c, IOCPSRV_EVENT_CONNECT, c->peer, strlen(c->peer))) {
      srv_mutex_lock(&c->slot.lock);
      c->refused = 1;
      srv_mutex_unlock(&c->slot.lock);
      conn_drop_as(srv, c, "out of memory for its connect event", 1);
      return 1;
    }
  } else if (srv->on_connect) {
    /* *conn_user starts as the current value: a callback that sets it through
     * iocpsrv_set_conn_user instead of the out parameter keeps what it set. */
    void *before = atomic_load(&c->user);
    void *user = before;
    /* Its own sends from the connect callback are gathered like a packet callback's
     * (the token is ours), and work it queues for others wakes a worker. */
    worker_t *w = tls_worker;
    conn_t *outer = w->running;
    w->running = c;
    SRV_ASSERT_NO_LOCKS();
    int refuse = srv->on_connect(srv, c->slot.id, c->peer, &user);
    w->running = outer;
    if (user != before) atomic_store(&c->user, user);
    if (refuse) {
      conn_refuse(srv, c);
      return 1;
    }
  }
  engine_stat_add(&srv->stats.connections_total, 1);
  return 0;
}

/* Closes a client we will not serve. */
static void refuse_socket(iocpsrv_t *srv, bk_socket_t sock) {
  bk_close_socket(sock);
  engine_stat_add(&srv->stats.connections_refused, 1);
}

/* ---- Source addresses (core/srcaddr.h): PROXY trust, connections per source ---- */

typedef struct src_admit_s {
  srcaddr_key_t key;
  uint8_t trusted, counted;
} src_admit_t;

/* A fresh client, before it takes a slot: is its peer a trusted PROXY sender, and
 * may its address hold one more connection? Returns 0 to go on (a->counted: a count
 * taken), or -1 when the socket was closed here, counted and logged. No lock held. */
static int source_admit(iocpsrv_t *srv, bk_socket_t sock, const struct sockaddr_storage *sa,
                        src_admit_t *a) {
  memset(a, 0, sizeof *a);
  int64_t max = srv->opt.max_connections_per_source;
  int64_t proxy = srv->opt.proxy_protocol;
  if (!max && !proxy) return 0;
  srcaddr_key_from(sa, &a->key);
  if (proxy) a->trusted = (uint8_t)srcaddr_list_match(&srv->opt.proxy_trusted, &a->key);
  char who[64];
  if (proxy == IOCPSRV_PROXY_REQUIRED && !a->trusted) {
    /* Whatever it would send, its header would not be believed: closed at once. */
    bk_close_socket(sock);
    engine_stat_add(&srv->stats.protocol_errors, 1);
    engine_stat_add(&srv->stats.proxy_untrusted, 1);
    format_addr(sa, who, sizeof who);
    engine_log_throttled(srv, &srv->trust_log, 1,
                         "connection %s: closed: PROXY protocol required and the peer is "
                         "not in IOCPSRV_OPT_PROXY_TRUSTED", who);
    return -1;
  }
  /* A trusted balancer is not counted: the clients its headers name are. */
  if (!max || a->trusted) return 0;
  int r = srclimit_acquire(&srv->per_source, &a->key, (uint32_t)max);
  if (r == SRCLIMIT_OK) {
    a->counted = 1;
    return 0;
  }
  refuse_socket(srv, sock);
  engine_stat_add(r == SRCLIMIT_FULL ? &srv->stats.source_refusals : &srv->stats.alloc_failures, 1);
  format_addr(sa, who, sizeof who);
  engine_log_throttled(srv, &srv->trust_log, 1, "connection %s: refused: %s", who,
                       r == SRCLIMIT_FULL ? "its address holds IOCPSRV_OPT_MAX_CONNECTIONS_PER_SOURCE"
                                          : "out of memory counting connections per source");
  return -1;
}

/* A trusted PROXY header named the client `src`: count it under that address. Returns
 * 1 if the connection is gone (over the limit: closed unseen by the host). Token held,
 * no lock. */
static int source_admit_proxied(iocpsrv_t *srv, conn_t *c, const struct sockaddr_storage *src) {
  int64_t max = srv->opt.max_connections_per_source;
  srcaddr_key_t key;
  if (!max || srcaddr_key_from(src, &key)) return 0;
  int r = srclimit_acquire(&srv->per_source, &key, (uint32_t)max);
  if (r == SRCLIMIT_OK) {
    c->src_key = key;
    c->src_counted = 1;
    return 0;
  }
  engine_stat_add(&srv->stats.connections_refused, 1);
  engine_stat_add(r == SRCLIMIT_FULL ? &srv->stats.source_refusals : &srv->stats.alloc_failures, 1);
  char who[64];
  format_addr(src, who, sizeof who);
  engine_log_throttled(srv, &srv->trust_log, 1, "connection %s via %s: refused: %s", who,
                       c->peer,
                       r == SRCLIMIT_FULL ? "its address holds IOCPSRV_OPT_MAX_CONNECTIONS_PER_SOURCE"
                                          : "out of memory counting connections per source");
  srv_mutex_lock(&c->slot.lock);
  c->refused = 1; /* the host never heard of it: no disconnect */
  srv_mutex_unlock(&c->slot.lock);
  return conn_finalize(srv, c, IOCPSRV_REASON_LOCAL_CLOSE, 0);
}

void engine_accept(worker_t *w, bk_socket_t sock, const struct sockaddr_storage *sa) {
  iocpsrv_t *srv = w->srv;
  /* Count first, then look at the state: a stop that starts now either sees this
   * connection in open_count and waits for it, or we see the stop. */
  size_t before = atomic_fetch_add(&srv->open_count, 1);
  conn_t *c = NULL;
  src_admit_t adm;
  if (srv_state(srv) == SRV_RUNNING && before < (size_t)srv->opt.max_connections) {
    if (source_admit(srv, sock, sa, &adm)) {
      open_count_release(srv);
      return;
    }
    c = conn_open(srv, w, sock, sa);
    if (!c && adm.counted) srclimit_release(&srv->per_source, &adm.key);
  }
  if (!c) {
    refuse_socket(srv, sock);
    open_count_release(srv);
    return;
  }
  c->src_trusted = adm.trusted; /* the token is ours (conn_open): no one else reads them */
  c->src_counted = adm.counted;
  c->src_key = adm.key;
  srv_mutex_lock(&c->slot.lock);
  int unwatched = (c->notes & NOTE_ERROR) != 0;
  if (unwatched) c->refused = 1; /* the backend cannot watch it: the host never meets it */
  srv_mutex_unlock(&c->slot.lock);
  if (unwatched) {
    engine_stat_add(&srv->stats.accept_errors, 1);
    conn_finalize(srv, c, IOCPSRV_REASON_PEER_RESET, 1);
    return;
  }
  bk_tune_socket(srv, sock);
  if (srv->opt.proxy_protocol) {
    /* The host meets this client once its PROXY header names it (conn_read_proxy). */
    srv_mutex_lock(&c->slot.lock);
    c->proxy_awaiting = 1;
    srv_mutex_unlock(&c->slot.lock);
  } else if (conn_introduce(srv, c)) {
    return;
  }
  srv_mutex_lock(&c->slot.lock);
  /* A stop that began while this client was being accepted may have missed it. */
  if (srv_state(srv) != SRV_RUNNING)
    request_close_locked(srv, c, srv->stop_abort, IOCPSRV_REASON_SERVER_STOPPED);
  conn_run(srv, w, c);
}

/* ------------------------------------------------------------------ timers ---- */

/* A connection quiet for this long gives back its empty buffers. */
#define TRIM_AFTER_MS 1000

/* Free the empty send buffer and packet stash of a quiet connection, so an idle
 * connection costs its slot and nothing else. The hot path keeps them between packets
 * (no allocation per packet); this runs only from the sweep. Lock held, token free:
 * nobody else is touching the framer. */
static void trim_locked(conn_t *c) {
  if (sendbuf_pending(&c->out) == 0 && c->out.buf) sendbuf_free(&c->out);
  if (sendbuf_pending(&c->own) == 0 && c->own.buf) sendbuf_free(&c->own);
  if (framer_buffered(&c->in) == 0 && c->in.buf) framer_free(&c->in);
  bk_conn_trim_locked(c);
}

/* Idle timeouts, overdue graceful closes and buffer trimming, a few times a second. */
static void sweep(iocpsrv_t *srv, worker_t *w) {
  int64_t now = w->now;
  int64_t idle = srv->opt.idle_timeout_ms;
  int stopping = srv_state(srv) == SRV_STOPPING;
  int64_t stop_deadline = atomic_load(&srv->stop_deadline);
  size_t used = conntable_used(&srv->table);
  for (size_t i = 0; i < used; i++) {
    conn_t *c = (conn_t *)conntable_at(&srv->table, i);
    srv_mutex_lock(&c->slot.lock);
    if (c->state == CONN_OPEN && c->proxy_awaiting &&
        now - atomic_load_explicit(&c->last_packet_ms, memory_order_relaxed) >
            srv->opt.close_timeout_ms) {
      /* A PROXY header that never comes must not hold a slot the host cannot see. */
      engine_stat_add(&srv->stats.protocol_errors, 1);
      c->refused = 1;
      request_close_locked(srv, c, 1, IOCPSRV_REASON_PROTOCOL_ERROR);
    } else if (c->state == CONN_OPEN && idle &&
        now - atomic_load_explicit(&c->last_packet_ms, memory_order_relaxed) > idle) {
      engine_stat_add(&srv->stats.idle_timeouts, 1);
      request_close_locked(srv, c, 1, IOCPSRV_REASON_IDLE_TIMEOUT);
    } else if (c->state == CONN_CLOSING && c->close_mode != CLOSE_ABORT) {
      /* During a stop its timeout governs every close (negative: none at all), not
       * IOCPSRV_OPT_CLOSE_TIMEOUT_MS. */
      int64_t deadline = stopping ? stop_deadline : c->close_deadline;
      if (now >= deadline) request_close_locked(srv, c, 1, c->close_reason);
    } else if (c->state == CONN_OPEN && !c->busy &&
               now - atomic_load_explicit(&c->last_packet_ms, memory_order_relaxed) >
                   TRIM_AFTER_MS) {
      trim_locked(c);
    }
    srv_mutex_unlock(&c->slot.lock);
  }
}

/* Sweep if due; one worker wins each period. */
static void sweep_if_due(iocpsrv_t *srv, worker_t *w) {
  int64_t due = atomic_load(&srv->next_sweep_ms);
  if (w->now < due) return;
  if (atomic_compare_exchange_strong(&srv->next_sweep_ms, &due, w->now + srv->sweep_period_ms)) {
    sweep(srv, w);
    bk_periodic(srv, w->now);
  }
}

/* ------------------------------------------------------------------ workers ---- */

static void publish_stats(iocpsrv_t *srv, worker_t *w) {
  if (w->packets_in) engine_stat_add(&srv->stats.packets_in, w->packets_in);
  if (w->bytes_in) engine_stat_add(&srv->stats.bytes_in, w->bytes_in);
  if (w->packets_out) engine_stat_add(&srv->stats.packets_out, w->packets_out);
  if (w->bytes_out) engine_stat_add(&srv->stats.bytes_out, w->bytes_out);
  w->packets_in = w->bytes_in = w->packets_out = w->bytes_out = 0;
}

int engine_after_batch(worker_t *w) {
  iocpsrv_t *srv = w->srv;
  flush_deferred(w);
  publish_stats(srv, w);
  w->now = srv_now_ms();
  sweep_if_due(srv, w);
  return srv->sweep_period_ms;
}

int engine_worker_should_retire(worker_t *w) { return pool_worker_should_retire(w); }

void engine_worker_main(void *arg) {
  worker_t *w = arg;
  iocpsrv_t *srv = w->srv;
  tls_worker = w;
  w->now = srv_now_ms();
  if (srv->on_worker_start) srv->on_worker_start(srv, w->index);
  do {
    bk_worker_loop(w);
  } while (w->retired && BK_PARK_RETIRED && pool_park(w));
  if (srv->on_worker_stop) srv->on_worker_stop(srv, w->index);
  flush_deferred(w);
  publish_stats(srv, w);
  if (!w->retired) atomic_fetch_sub(&srv->running_workers, 1);
  tls_worker = NULL;
  atomic_store(&w->state, WORKER_EXITED); /* last touch: the slot may be joined now */
}

/* ----------------------------------------------------------------- lifecycle ---- */

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
  bk_stop_accepting(srv);
  close_all(srv, srv->stop_abort);
}

/* Second half, on a thread that is not a worker: wait for the connections, abort the
 * stragglers at the deadline, join the workers. life_lock held. */
static void finish_stop(iocpsrv_t *srv) {
  int aborted = srv->stop_abort;
  srv_mutex_lock(&srv->count_lock);
  while (atomic_load(&srv->open_count) > 0) {
    int64_t deadline = atomic_load(&srv->stop_deadline);
    int64_t left = deadline == INT64_MAX ? -1 : deadline - srv_now_ms();
    if (!aborted && deadline != INT64_MAX && left <= 0) {
      srv_mutex_unlock(&srv->count_lock);
      close_all(srv, 1);
      srv_mutex_lock(&srv->count_lock);
      aborted = 1;
      continue;
    }
    srv_cond_wait_ms(&srv->count_cond, &srv->count_lock, aborted ? 100 : left);
  }
  srv_mutex_unlock(&srv->count_lock);
  pool_stop(srv);
  bk_release(srv);
  if (srv->opt.pull_mode) pullq_set_stopped(&srv->pull);
  srv->need_join = 0;
  atomic_store(&srv->state, SRV_STOPPED);
}

/* --------------------------------------------------------------- public API ---- */

int IOCPSRV_CALL iocpsrv_create(iocpsrv_t **out, void *user) {
  if (!out) return IOCPSRV_EINVAL;
  *out = NULL;
  iocpsrv_t *srv = srv_calloc(1, sizeof *srv);
  if (!srv) return IOCPSRV_ENOMEM;
  srv->user = user;
  srv_options_init(&srv->opt);
  srv->listen_sock = BK_INVALID_SOCKET;
  int rc = IOCPSRV_ENOMEM;
  if (conntable_init(&srv->table, sizeof(conn_t))) goto err_free;
  rc = IOCPSRV_ESYSTEM;
  if (bk_global_init()) goto err_table;
  if (pullq_init(&srv->pull, NULL, srv)) goto err_global;
  srv_mutex_init(&srv->life_lock);
  srv_mutex_init(&srv->count_lock);
  srv_cond_init(&srv->count_cond);
  srv_mutex_init(&srv->task_lock);
  srv_mutex_init(&srv->poll_flush_lock);
  *out = srv;
  return 0;
err_global:
  bk_global_cleanup();
err_table:
  conntable_destroy(&srv->table);
err_free:
  free(srv);
  return rc;
}

void *IOCPSRV_CALL iocpsrv_user_data(iocpsrv_t *srv) { return srv ? srv->user : NULL; }

/* Options and callbacks change only while stopped; life_lock orders that with listen. */
#define WITH_STOPPED_SERVER(srv, stmt)                        \
  do {                                                        \
    if (!(srv)) return IOCPSRV_EINVAL;                        \
    if (engine_in_worker_of(srv)) return IOCPSRV_ESTATE;      \
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

int IOCPSRV_CALL iocpsrv_set_option_str(iocpsrv_t *srv, int option, const char *value) {
  WITH_STOPPED_SERVER(srv, rc_ = srv_options_set_str(&srv->opt, option, value));
}

int64_t IOCPSRV_CALL iocpsrv_get_option_str(iocpsrv_t *srv, int option, char *buf,
                                            size_t size) {
  if (!srv || (!buf && size)) return IOCPSRV_EINVAL;
  /* A worker's server is running: nobody can change the text under it. Elsewhere
   * life_lock keeps a set_option_str on another thread from freeing it meanwhile. */
  if (engine_in_worker_of(srv)) return srv_options_get_str(&srv->opt, option, buf, size);
  srv_mutex_lock(&srv->life_lock);
  int64_t rc = srv_options_get_str(&srv->opt, option, buf, size);
  srv_mutex_unlock(&srv->life_lock);
  return rc;
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

/* Pull mode: the host has handled what came before these connections' FIN. */
static void on_pull_eof(void *ctx, const iocpsrv_conn_id_t *ids, size_t n) {
  iocpsrv_t *srv = ctx;
  for (size_t i = 0; i < n; i++) {
    conn_t *c = conn_lock_id(srv, ids[i]);
    if (!c) continue;
    request_close_locked(srv, c, 0, IOCPSRV_REASON_PEER_CLOSED);
    srv_mutex_unlock(&c->slot.lock);
  }
}

int engine_bind_listener(iocpsrv_t *srv, const char *host, int port) {
  /* No host: all interfaces, dual stack, falling back to IPv4 where IPv6 is off. */
  int any = host == NULL || host[0] == 0;
  const char *candidates[2] = {any ? "::" : host, any ? "0.0.0.0" : NULL};
  int err = IOCPSRV_EADDRNOTAVAIL;
  char service[16];
  snprintf(service, sizeof service, "%d", port);
  for (int k = 0; k < 2 && candidates[k]; k++) {
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    if (getaddrinfo(candidates[k], service, &hints, &res) != 0) continue;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
      err = bk_listen_on(srv, ai);
      if (err == 0) break;
    }
    freeaddrinfo(res);
    if (err == 0) return 0;
  }
  return err;
}

/* The pull queue has room: the connections that waited for it resume. */
static void on_pull_room(void *ctx, const iocpsrv_conn_id_t *ids, size_t n) {
  iocpsrv_t *srv = ctx;
  for (size_t i = 0; i < n; i++) {
    conn_t *c = conn_lock_id(srv, ids[i]);
    if (!c) continue;
    engine_schedule_locked(srv, c, NOTE_ROOM);
    srv_mutex_unlock(&c->slot.lock);
  }
}

int IOCPSRV_CALL iocpsrv_listen(iocpsrv_t *srv, const char *host, int port) {
  if (!srv || port < 0 || port > 65535) return IOCPSRV_EINVAL;
  if (engine_in_worker_of(srv)) return IOCPSRV_EINCALLBACK;
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
  srclimit_init(&srv->per_source); /* once; empty again after every stop */
  int trust_warning = srv->opt.proxy_protocol && srv->opt.proxy_trusted.n == 0;
  int64_t period = srv->opt.idle_timeout_ms ? srv->opt.idle_timeout_ms / 4 : 250;
  srv->sweep_period_ms = (int)(period > 250 ? 250 : period < 10 ? 10 : period);
  atomic_store(&srv->next_sweep_ms, srv_now_ms() + srv->sweep_period_ms);
  if (!rc) rc = bk_start(srv, host, port);
  if (!rc) {
    srv->pull.on_room = on_pull_room;
    srv->pull.on_eof = on_pull_eof;
    srv->pull.room_ctx = srv;
    pullq_reset(&srv->pull, (size_t)srv->opt.pull_queue_limit);
    atomic_store(&srv->state, SRV_RUNNING);
    rc = pool_start(srv);
    if (rc) atomic_store(&srv->state, SRV_STOPPED);
  }
  if (rc) bk_release(srv);
  else srv->need_join = 1;
  srv_mutex_unlock(&srv->life_lock);
  if (!rc && trust_warning)
    engine_log(srv, 1, "PROXY protocol is on but IOCPSRV_OPT_PROXY_TRUSTED is empty: every "
                       "PROXY header is refused%s",
               srv->opt.proxy_protocol == IOCPSRV_PROXY_REQUIRED ? ", and so is every client" : "");
  return rc;
}

int IOCPSRV_CALL iocpsrv_port(iocpsrv_t *srv) {
  if (!srv) return IOCPSRV_EINVAL;
  return srv->port ? srv->port : IOCPSRV_ESTOPPED;
}

int IOCPSRV_CALL iocpsrv_stop(iocpsrv_t *srv, int timeout_ms) {
  if (!srv) return IOCPSRV_EINVAL;
  if (srv->opt.pull_mode) flush_poll_batch(srv); /* the consumer may never poll again */
  if (engine_in_worker_of(srv)) {
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
  if (engine_in_worker_of(srv)) return IOCPSRV_EINCALLBACK;
  iocpsrv_stop(srv, 0);
  pullq_destroy(&srv->pull);
  conntable_destroy(&srv->table);
  srclimit_destroy(&srv->per_source);
  srv_options_free(&srv->opt);
  srv_mutex_destroy(&srv->task_lock);
  srv_mutex_destroy(&srv->poll_flush_lock);
  srv_cond_destroy(&srv->count_cond);
  srv_mutex_destroy(&srv->count_lock);
  srv_mutex_destroy(&srv->life_lock);
  free(srv);
  bk_global_cleanup();
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
  if (len > srv->framing.max_packet) return IOCPSRV_ETOOBIG; /* with or without clients */
  iocpsrv_buf_t buf = {data, len};
  int sent = 0;
  size_t used = conntable_used(&srv->table);
  for (size_t i = 0; i < used; i++) {
    conn_t *c = (conn_t *)conntable_at(&srv->table, i);
    srv_mutex_lock(&c->slot.lock);
    iocpsrv_conn_id_t id = c->state == CONN_OPEN && !c->proxy_awaiting ? c->slot.id : 0;
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
    if (paused) bk_conn_arm_locked(srv, c);
    else engine_schedule_locked(srv, c, NOTE_RESUME);
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
  int64_t n = (int64_t)bk_conn_pending_locked(c);
  srv_mutex_unlock(&c->slot.lock);
  if (own_conn(srv, conn) == c) n += (int64_t)sendbuf_pending(&c->own); /* not merged yet */
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
  v.pending_send_bytes = bk_conn_pending_locked(c);
  snprintf(v.peer, sizeof v.peer, "%s", c->peer);
  snprintf(v.proxy, sizeof v.proxy, "%s", c->proxy);
  struct sockaddr_storage sa;
  if (bk_local_addr(c, &sa) == 0) format_addr(&sa, v.local, sizeof v.local);
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
    if ((c->state == CONN_OPEN || c->state == CONN_CLOSING) && !c->proxy_awaiting) {
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
  int busy = atomic_load(&srv->running_workers) - atomic_load(&srv->idle_workers);
  v.workers_busy = (uint32_t)(busy > 0 ? busy : 0);
  v.workers_peak = atomic_load(&srv->pool.peak);
  v.pool_grows = atomic_load(&srv->pool.grows);
  v.pool_shrinks = atomic_load(&srv->pool.shrinks);
  v.alloc_failures = stat_get(&s->alloc_failures);
  v.source_refusals = stat_get(&s->source_refusals);
  v.proxy_untrusted = stat_get(&s->proxy_untrusted);
  memcpy(stats, &v, v.struct_size);
  return 0;
}

int IOCPSRV_CALL iocpsrv_poll(iocpsrv_t *srv, iocpsrv_event_t *events, int max,
                              int timeout_ms) {
  if (!srv || !events || max <= 0) return IOCPSRV_EINVAL;
  if (!srv->opt.pull_mode) return IOCPSRV_ENOTSUP;
  if (engine_in_worker_of(srv)) return IOCPSRV_EINCALLBACK;
  flush_poll_batch(srv);
  uint64_t seq = atomic_fetch_add(&srv->poll_seq, 1) + 1; /* the last batch is over */
  int n = pullq_poll(&srv->pull, events, max, timeout_ms);
  tls_batch_srv = srv;
  tls_batch_seq = seq;
  return n;
}

int64_t IOCPSRV_CALL iocpsrv_wait_handle(iocpsrv_t *srv) {
  if (!srv) return IOCPSRV_EINVAL;
  if (!srv->opt.pull_mode) return IOCPSRV_ENOTSUP;
  return srv_waitable_handle(&srv->pull.waitable);
}
