/* The send path: the queue limit, own-callback sends gathered per turn, flushing, drain. */
#include "core/internal.h"

/* Bytes left the send queue (taken by the kernel); lock held. Checks drain and the
 * graceful half-close. */
static void sent_locked(iocpsrv_t *srv, conn_t *c, size_t n) {
  ASSERT_LOCKED(c);
  c->bytes_out += (uint64_t)n;
  if (engine_in_worker_of(srv)) tls_worker->bytes_out += (uint64_t)n;
  else engine_stat_add(&srv->stats.bytes_out, (uint64_t)n);
  size_t pending = conn_pending_locked(c);
  size_t limit = (size_t)srv->opt.send_queue_limit;
  if (c->want_drain && pending < limit / 2 && (pending == 0 || pending + c->drain_need <= limit)) {
    c->want_drain = 0;
    c->drain_need = 0;
    engine_schedule_locked(srv, c, NOTE_DRAIN);
  }
  if (c->state == CONN_CLOSING && c->close_mode == CLOSE_GRACEFUL && !c->wr_shut &&
      pending == 0) {
    bk_shutdown(c->sock);
    c->wr_shut = 1;
    if (c->rd_eof) engine_schedule_locked(srv, c, NOTE_CLOSE); /* both FINs: done */
  }
}

/* A write failed: the connection is dead. Lock held; no write is outstanding. */
static void write_failed_locked(iocpsrv_t *srv, conn_t *c) {
  ASSERT_LOCKED(c);
  /* The peer is gone: drop what is queued and let the token holder close. The failed
   * write took the socket's error, so a read may now see a plain end of stream: the
   * reset is recorded here. */
  sendbuf_free(&c->out);
  sendbuf_free(&c->held);
  if (c->state == CONN_OPEN) request_close_locked(srv, c, 1, IOCPSRV_REASON_PEER_RESET);
  else if (c->close_reason == IOCPSRV_REASON_PEER_CLOSED)
    c->close_reason = IOCPSRV_REASON_PEER_RESET;
  engine_schedule_locked(srv, c, NOTE_ERROR);
}

/* Write until the queue is empty or the backend says BK_AGAIN. `done`: bytes a held
 * write finished (BK_WRITE), counted with the rest. A backend whose writes hold their
 * bytes (bk_caps.write_holds_bytes) writes from `held`, which stays put until its
 * BK_WRITE; new sends meanwhile go to `out`, swapped in once `held` is written. */
static void flush_locked(iocpsrv_t *srv, conn_t *c, size_t done) {
  ASSERT_LOCKED(c);
  if (c->write_wait) return; /* BK_WRITE goes on */
  size_t sent = done;
  while (!c->write_wait) {
    sendbuf_t *b = &c->out;
    if (bk_caps.write_holds_bytes) {
      if (!sendbuf_pending(&c->held)) {
        if (!sendbuf_pending(&c->out)) break;
        sendbuf_t t = c->held; /* swap: new sends go to an empty buffer */
        c->held = c->out;
        c->out = t;
      }
      b = &c->held;
    }
    size_t len = sendbuf_write_len(b);
    if (!len) break;
    long n = bk_write(&c->bk, c->sock, sendbuf_data(b), len);
    if (n >= 0) {
      sendbuf_consume(b, (size_t)n);
      sent += (size_t)n;
    } else if (n == BK_AGAIN) {
      c->write_wait = 1; /* until BK_WRITE */
    } else {
      write_failed_locked(srv, c);
      return;
    }
  }
  sent_locked(srv, c, sent);
}

void conn_flush_locked(iocpsrv_t *srv, conn_t *c) { flush_locked(srv, c, 0); }

void conn_write_done_locked(iocpsrv_t *srv, conn_t *c, size_t bytes, int failed) {
  ASSERT_LOCKED(c);
  c->write_wait = 0;
  if (c->state != CONN_OPEN && c->state != CONN_CLOSING) return; /* closed meanwhile */
  if (failed) {
    write_failed_locked(srv, c);
    return;
  }
  if (bytes) sendbuf_consume(&c->held, bytes);
  flush_locked(srv, c, bytes);
}

int conn_close_socket(iocpsrv_t *srv, conn_t *c, int abort) {
  if (c->sock == BK_INVALID_SOCKET) return 0; /* outbound: no attempt under way */
  int running = bk_close(&c->bk, c->sock, abort);
  c->sock = BK_INVALID_SOCKET;
  if (!running) sendbuf_free(&c->held); /* else the OS still reads it: BK_RELEASED frees */
  return running;
}

void conn_trim_send_locked(conn_t *c) {
  ASSERT_LOCKED(c);
  if (sendbuf_pending(&c->out) == 0 && c->out.buf) sendbuf_free(&c->out);
  if (sendbuf_pending(&c->own) == 0 && c->own.buf) sendbuf_free(&c->own);
  if (!c->write_wait && sendbuf_pending(&c->held) == 0 && c->held.buf) sendbuf_free(&c->held);
}

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
  ASSERT_LOCKED(c);
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
    conn_flush_locked(srv, c);
  }
}

void flush_poll_batch(iocpsrv_t *srv) {
  srv_mutex_lock(&srv->poll_flush_lock);
  conn_t *c = srv->poll_flush_head;
  srv->poll_flush_head = NULL;
  srv_mutex_unlock(&srv->poll_flush_lock);
  while (c) {
    conn_t *next;
    srv_mutex_lock(&c->slot.lock);
    next = c->next_flush;
    c->flush_queued = 0;
    if (c->state == CONN_OPEN || c->state == CONN_CLOSING) conn_flush_locked(c->srv, c);
    srv_mutex_unlock(&c->slot.lock);
    c = next;
  }
}

void flush_deferred(worker_t *w) {
  while (w->flush_head) {
    conn_t *c = w->flush_head;
    srv_mutex_lock(&c->slot.lock);
    w->flush_head = c->next_flush;
    c->flush_queued = 0;
    if (c->state == CONN_OPEN || c->state == CONN_CLOSING) conn_flush_locked(c->srv, c);
    srv_mutex_unlock(&c->slot.lock);
  }
}

/* Whether a queue holding `queued` bytes refuses `framed` more: an empty queue takes
 * any one packet, a busy one stays within the limit. */
static int queue_refuses(const iocpsrv_t *srv, size_t queued, size_t framed) {
  return queued && queued + framed > (size_t)srv->opt.send_queue_limit;
}

static void refused_locked(conn_t *c, size_t framed) {
  ASSERT_LOCKED(c);
  c->want_drain = 1;
  if (framed > c->drain_need) c->drain_need = framed;
}

conn_t *own_conn(iocpsrv_t *srv, iocpsrv_conn_id_t id) {
  worker_t *w = tls_worker;
  if (!w || w->srv != srv || !w->running) return NULL;
  return w->running->slot.id == id ? w->running : NULL; /* the token holder's to read */
}

/* An own send looks refused by the queue as the turn found it (out_seen). That view
 * may be stale: the queue may have drained since (an "empty queue always takes one
 * packet" must hold). So refusals, rare by nature, are judged again under the lock
 * against the real queue; a refusal sets want_drain there, at once, so the drain
 * check of the very next write sees it. Returns 1 if refused. */
SRV_COLD static int own_refusal(iocpsrv_t *srv, conn_t *c, size_t framed) {
  ASSERT_TOKEN(c);
  ASSERT_UNLOCKED(c);
  srv_mutex_lock(&c->slot.lock);
  c->out_seen = conn_pending_locked(c);
  int refuse = queue_refuses(srv, c->out_seen + sendbuf_pending(&c->own), framed);
  if (refuse) refused_locked(c, framed);
  srv_mutex_unlock(&c->slot.lock);
  if (refuse) engine_stat_add(&srv->stats.send_queue_rejections, 1);
  return refuse;
}

SRV_COLD static int send_nomem(iocpsrv_t *srv) {
  engine_stat_add(&srv->stats.alloc_failures, 1);
  return IOCPSRV_ENOMEM;
}

/* Own sends of at least this many payload bytes to an idle connection are written
 * straight from the host's memory (where the backend can: bk_write_now), saving the
 * copy into the queue that dominates a large echo's user-space cost. */
#define SEND_NOW_MIN (16u * 1024)

enum { SENT_NOW = 0, NOT_NOW = 1 };

/* The rest of a packet bk_write_now took `done` bytes of goes into `out` as is, and
 * out with the worker's flush. Lock held. Returns 0 or IOCPSRV_ENOMEM (the connection
 * is then aborted: part of the packet is on the wire). */
static int queue_rest_locked(iocpsrv_t *srv, conn_t *c, const uint8_t *head, size_t hlen,
                             const void *body, size_t blen, size_t done) {
  ASSERT_LOCKED(c);
  static const framing_cfg_t raw = {0, 0, UINT32_MAX};
  iocpsrv_buf_t rest[2] = {{head + (done < hlen ? done : hlen), done < hlen ? hlen - done : 0},
                           {(const uint8_t *)body + (done > hlen ? done - hlen : 0),
                            done > hlen ? blen - (done - hlen) : blen}};
  if (sendbuf_append(&c->out, &raw, rest, 2, rest[0].len + rest[1].len) == 0) {
    flush_soon_locked(srv, c);
    return 0;
  }
  engine_stat_add(&srv->stats.alloc_failures, 1);
  request_close_locked(srv, c, 1, IOCPSRV_REASON_OUT_OF_MEMORY);
  return IOCPSRV_ENOMEM;
}

/* A large own send to a connection with nothing queued, written now from the host's
 * buffer; what the socket does not take is queued. NOT_NOW when the queue is not
 * idle (the caller then copies as usual), else SENT_NOW with *rc the send's result. */
static int send_now(iocpsrv_t *srv, conn_t *c, const void *data, size_t len, int *rc) {
  ASSERT_TOKEN(c);
  srv_mutex_lock(&c->slot.lock);
  c->out_seen = conn_pending_locked(c); /* the limit's view, fresh while we are here */
  if (c->state != CONN_OPEN || c->write_wait || c->out_seen) {
    srv_mutex_unlock(&c->slot.lock);
    return NOT_NOW;
  }
  uint8_t head[4];
  size_t hlen = framing_write_header(&srv->framing, head, len);
  long n = bk_write_now(c->sock, head, hlen, data, len);
  *rc = 0;
  if (n == BK_ERROR) {
    write_failed_locked(srv, c); /* as a queued packet whose write failed */
  } else {
    if ((size_t)n < hlen + len) *rc = queue_rest_locked(srv, c, head, hlen, data, len, (size_t)n);
    if (*rc == 0) c->packets_out++;
    if (n > 0) sent_locked(srv, c, (size_t)n);
    c->out_seen = conn_pending_locked(c);
  }
  srv_mutex_unlock(&c->slot.lock);
  if (*rc == 0) tls_worker->packets_out++;
  return SENT_NOW;
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
  int rc;
  if (total >= SEND_NOW_MIN && count == 1 && !bk_caps.write_holds_bytes &&
      !sendbuf_pending(&c->own) && send_now(srv, c, bufs[0].base, total, &rc) == SENT_NOW)
    return rc;
  if (sendbuf_append(&c->own, &srv->framing, bufs, count, total)) return send_nomem(srv);
  c->own_packets++;
  tls_worker->packets_out++;
  return 0;
}

/* End of a turn (lock held, token still held): the own sends join the queue, in order
 * after what other threads queued before, and go out with the worker's flush. Returns
 * -1 when out of memory (the connection is aborted): the caller logs it once the lock
 * is released, since no host callback may run under an engine lock. */
int merge_own_locked(iocpsrv_t *srv, conn_t *c) {
  ASSERT_LOCKED(c);
  ASSERT_TOKEN(c);
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

void log_merge_nomem_of(iocpsrv_t *srv, const char *peer) {
  engine_log(srv, 0, "connection %s: out of memory queueing packets", peer);
}

void log_merge_nomem(iocpsrv_t *srv, conn_t *c) { log_merge_nomem_of(srv, c->peer); }

/* A send from a thread that is not the connection's own: into `out`, written soon.
 * Lock held. Returns 0 or the refusal; the caller counts the packets sent. */
static int send_foreign_locked(iocpsrv_t *srv, conn_t *c, const iocpsrv_buf_t *bufs,
                               int count, size_t total) {
  ASSERT_LOCKED(c);
  size_t framed = srv->framing.header_bytes + total;
  if (total > srv->framing.max_packet) return IOCPSRV_ETOOBIG;
  if (c->state != CONN_OPEN) return IOCPSRV_ENOTCONN;
  if (queue_refuses(srv, conn_pending_locked(c), framed)) {
    refused_locked(c, framed);
    engine_stat_add(&srv->stats.send_queue_rejections, 1);
    return IOCPSRV_EQUEUEFULL;
  }
  if (sendbuf_append(&c->out, &srv->framing, bufs, count, total)) {
    engine_stat_add(&srv->stats.alloc_failures, 1);
    return IOCPSRV_ENOMEM;
  }
  c->packets_out++;
  return 0;
}

static void count_foreign_sends(iocpsrv_t *srv, size_t n) {
  if (engine_in_worker_of(srv)) tls_worker->packets_out += n;
  else engine_stat_add(&srv->stats.packets_out, n);
}

/* What every send is judged by before its connection is looked up: a stopped server,
 * then the size (so a too-big packet to an unknown id is ETOOBIG, not ENOTCONN). */
static int send_refused_at_entry(iocpsrv_t *srv, size_t total) {
  if (srv_state(srv) != SRV_RUNNING) return IOCPSRV_ESTOPPED;
  if (total > srv->framing.max_packet) return IOCPSRV_ETOOBIG; /* raw mode: per send */
  return 0;
}

int send_packet(iocpsrv_t *srv, iocpsrv_conn_id_t id, const iocpsrv_buf_t *bufs,
                       int count, size_t total) {
  int refused = send_refused_at_entry(srv, total);
  if (refused) return refused;
  conn_t *own = own_conn(srv, id);
  if (own) return send_own(srv, own, bufs, count, total);
  conn_t *c = conn_lock_id(srv, id);
  if (!c) return IOCPSRV_ENOTCONN;
  int rc = send_foreign_locked(srv, c, bufs, count, total);
  if (!rc) flush_soon_locked(srv, c);
  srv_mutex_unlock(&c->slot.lock);
  if (!rc) count_foreign_sends(srv, 1);
  return rc;
}

size_t send_run(iocpsrv_t *srv, iocpsrv_conn_id_t id, const send_record_t *recs, size_t n,
                int *err) {
  SRV_ASSERT(n > 0 && own_conn(srv, id) == NULL);
  for (size_t i = 0; i < n; i++) SRV_ASSERT(recs[i].conn == id);
  *err = send_refused_at_entry(srv, recs[0].len); /* as send_packet judges it */
  conn_t *c = *err ? NULL : conn_lock_id(srv, id);
  if (!c) {
    if (!*err) *err = IOCPSRV_ENOTCONN;
    return 0;
  }
  size_t sent = 0, unflushed = 0;
  while (sent < n) {
    iocpsrv_buf_t b = {recs[sent].payload, recs[sent].len};
    /* As record-by-record sends would: what the run queued goes out (unless sends
     * wait for the batch) before the limit can refuse the next one. */
    if (unflushed && queue_refuses(srv, conn_pending_locked(c),
                                   srv->framing.header_bytes + recs[sent].len)) {
      flush_soon_locked(srv, c);
      unflushed = 0;
    }
    *err = send_foreign_locked(srv, c, &b, 1, recs[sent].len);
    if (*err) break;
    sent++;
    unflushed++;
  }
  if (unflushed) flush_soon_locked(srv, c);
  srv_mutex_unlock(&c->slot.lock);
  if (sent) count_foreign_sends(srv, sent);
  return sent;
}
