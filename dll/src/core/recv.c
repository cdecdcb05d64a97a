/* The receive path: reads, the PROXY header, the framer and delivery to the host. */
#include "core/internal.h"

#include "core/deliver.h"

typedef struct deliver_ctx_s {
  iocpsrv_t *srv;
  worker_t *w;
  conn_t *c;
  int pull_full;
  int pull_nomem; /* a packet could not be queued: the connection is aborted */
  /* The packet-batch callback: packets lying in [stable, stable_end) stay valid until
   * the caller's batch_flush, so they are gathered in w->batch; any other packet (in
   * the framer's stash, which the framer may move once deliver returns) is handed
   * over at once with those gathered before it. */
  int batching, gathered;
  const uint8_t *stable, *stable_end;
  pullq_batch_t pull; /* pull mode: the packets queued together */
} deliver_ctx_t;

static void ctx_init(deliver_ctx_t *d, iocpsrv_t *srv, worker_t *w, conn_t *c,
                     const uint8_t *stable, size_t stable_len) {
  d->srv = srv;
  d->w = w;
  d->c = c;
  d->pull_full = d->pull_nomem = 0;
  d->batching = deliver_batches(srv);
  d->gathered = 0;
  d->stable = stable;
  d->stable_end = stable ? stable + stable_len : NULL;
  pullq_batch_init(&d->pull);
}

/* Hands the gathered packets over: 0 to go on, 1 to stop delivering. */
static int batch_flush(deliver_ctx_t *d) {
  int n = d->gathered;
  if (!n) return 0;
  d->gathered = 0;
  return deliver_batch_to_host(d->srv, d->c, d->w->batch, n) != DELIVER_ON;
}

static int gather_packet(deliver_ctx_t *d, const uint8_t *data, size_t len) {
  iocpsrv_buf_t *v = &d->w->batch[d->gathered++];
  v->base = data;
  v->len = len;
  int stable = data >= d->stable && data + len <= d->stable_end;
  if (stable && d->gathered < IOCPSRV_BATCH_MAX) return 0;
  return batch_flush(d);
}

static int deliver_packet(void *arg, const uint8_t *data, size_t len) {
  deliver_ctx_t *d = arg;
  conn_t *c = d->c;
  counter_add(&c->packets_in, 1);
  d->w->packets_in++;
  atomic_store_explicit(&c->last_packet_ms, d->w->now, memory_order_relaxed);
  if (d->batching) return gather_packet(d, data, len);
  int r = deliver_packet_to_host(d->srv, c, &d->pull, data, len);
  if (r == DELIVER_ON) return 0;
  if (r == DELIVER_NOMEM) d->pull_nomem = 1;
  else if (r == DELIVER_FULL) d->pull_full = 1;
  return 1;
}

static int after_delivery(deliver_ctx_t *d, int rc) {
  batch_flush(d); /* what the framer delivered before it stopped or failed */
  deliver_packets_end(d->srv, d->c, &d->pull);
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
  ASSERT_TOKEN(c);
  ASSERT_UNLOCKED(c);
  srv_mutex_lock(&c->slot.lock);
  c->rd_eof = 1;
  int open = c->state == CONN_OPEN;
  if (!open) c->notes |= NOTE_CLOSE;
  srv_mutex_unlock(&c->slot.lock);
  if (!open) return 0;
  int now = deliver_peer_eof(srv, c);
  if (now < 0) return conn_finalize(srv, c, IOCPSRV_REASON_PEER_CLOSED, 0);
  if (now) {
    srv_mutex_lock(&c->slot.lock);
    request_close_locked(srv, c, 0, IOCPSRV_REASON_PEER_CLOSED);
    srv_mutex_unlock(&c->slot.lock);
  }
  return 0;
}

/* Bytes before the PROXY header is complete: gather, parse, then meet the host with
 * the real client's address and hand what follows the header to the framer. Returns
 * 1 if the connection is gone. */
int conn_read_proxy(iocpsrv_t *srv, worker_t *w, conn_t *c, const uint8_t *p,
                           size_t n) {
  ASSERT_TOKEN(c);
  SRV_ASSERT(c->proxy_awaiting);
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
  deliver_ctx_t d;
  ctx_init(&d, srv, w, c, data + used, len - used);
  if (len > used)
    rc = framer_feed(&c->in, &srv->framing, data + used, len - used, deliver_packet, &d);
  int gone = after_delivery(&d, rc); /* before the free: a batch may view the buffer */
  free(c->proxy_buf); /* the framer copied what it keeps */
  c->proxy_buf = NULL;
  c->proxy_len = 0;
  return gone;
}

/* Reads per turn of the token: enough to drain a burst, few enough that one fast
 * sender cannot keep a worker from the connections queued behind it. */
#define READS_PER_TURN 16

enum { READ_DRAINED = 0, READ_GONE = 1, READ_FULL = 2 };

/* One receive into the framer's own space (a large packet's body) or the worker's
 * buffer, and delivery of the whole packets it completes. */
static int conn_read_once(iocpsrv_t *srv, worker_t *w, conn_t *c, int closing, int hup) {
  ASSERT_TOKEN(c);
  ASSERT_UNLOCKED(c);
  uint8_t *p = NULL;
  size_t room = closing || c->proxy_awaiting ? 0 : framer_direct_space(&c->in, &srv->framing, &p);
  if (!room) {
    p = w->rbuf;
    room = w->rbuf_size;
  }
  long n = bk_read(c->sock, p, room);
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

  deliver_ctx_t d;
  ctx_init(&d, srv, w, c, p == w->rbuf ? p : NULL, (size_t)n);
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
  ASSERT_TOKEN(c);
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
int conn_read(iocpsrv_t *srv, worker_t *w, conn_t *c) {
  ASSERT_TOKEN(c);
  SRV_ASSERT(w == tls_worker);
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

int conn_resume(iocpsrv_t *srv, worker_t *w, conn_t *c, uint32_t notes) {
  ASSERT_TOKEN(c);
  srv_mutex_lock(&c->slot.lock);
  if (notes & NOTE_ROOM) c->pull_blocked = 0;
  int go = c->state == CONN_OPEN && !c->paused && !c->pull_blocked;
  srv_mutex_unlock(&c->slot.lock);
  if (!go || (c->in.held && pull_full(srv, c))) return 0;
  deliver_ctx_t d;
  ctx_init(&d, srv, w, c, NULL, 0);
  return after_delivery(&d, framer_resume(&c->in, &srv->framing, deliver_packet, &d));
}
