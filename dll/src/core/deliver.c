/* Delivery to the host: the callback implementation and the pull-queue one behind one
 * interface (see deliver.h). */
#include "core/deliver.h"

#include "core/internal.h"

/* ------------------------------------------------------------------ callbacks ---- */

static int cb_connect(iocpsrv_t *srv, conn_t *c) {
  if (!srv->on_connect) return 0;
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
  return refuse ? DELIVER_REFUSED : DELIVER_MET;
}

/* After a packet or batch callback returned `closing`: non-zero closes gracefully
 * (LOCAL_CLOSE); a pause or close asked for meanwhile stops delivery too. */
static int after_packet_cb(iocpsrv_t *srv, conn_t *c, int closing) {
  if (closing) {
    srv_mutex_lock(&c->slot.lock);
    request_close_locked(srv, c, 0, IOCPSRV_REASON_LOCAL_CLOSE);
    srv_mutex_unlock(&c->slot.lock);
    return DELIVER_STOP;
  }
  return atomic_load_explicit(&c->deliver_stop, memory_order_relaxed) ? DELIVER_STOP
                                                                       : DELIVER_ON;
}

static int cb_packet(iocpsrv_t *srv, conn_t *c, const uint8_t *data, size_t len) {
  int closing = 0;
  if (srv->on_packet) {
    SRV_ASSERT_NO_LOCKS();
    closing = srv->on_packet(srv, c->slot.id, atomic_load(&c->user), data, len);
  }
  return after_packet_cb(srv, c, closing);
}

static int cb_packet_batch(iocpsrv_t *srv, conn_t *c, const iocpsrv_buf_t *views, int n) {
  SRV_ASSERT(n > 0 && n <= IOCPSRV_BATCH_MAX);
  SRV_ASSERT_NO_LOCKS();
  return after_packet_cb(srv, c,
                         srv->on_packet_batch(srv, c->slot.id, atomic_load(&c->user), views, n));
}

static void cb_drain(iocpsrv_t *srv, conn_t *c) {
  if (!srv->on_drain) return;
  SRV_ASSERT_NO_LOCKS();
  srv->on_drain(srv, c->slot.id, atomic_load(&c->user));
}

static void cb_disconnect(iocpsrv_t *srv, conn_t *c, int reason) {
  if (!srv->on_disconnect) return;
  SRV_ASSERT_NO_LOCKS();
  srv->on_disconnect(srv, c->slot.id, atomic_load(&c->user), reason);
}

/* ---------------------------------------------------------------- pull queue ---- */

static int pull_event(iocpsrv_t *srv, conn_t *c, int type, const void *data, size_t len) {
  return pullq_push(&srv->pull, &c->pq, type, c->slot.id, atomic_load(&c->user), 0, data,
                    len);
}

static int pull_connect(iocpsrv_t *srv, conn_t *c) {
  if (!c->bye) c->bye = pullq_reserve(&srv->pull); /* outbound: set aside at the call */
  if (c->bye && pull_event(srv, c, IOCPSRV_EVENT_CONNECT, c->peer, strlen(c->peer)) >= 0)
    return DELIVER_MET;
  if (c->outbound) { /* the host has its id: it hears how the attempt ended */
    conn_abort_nomem(srv, c, "queueing its connect event");
    return DELIVER_GONE;
  }
  srv_mutex_lock(&c->slot.lock);
  c->refused = 1; /* the host never hears of it: no DISCONNECT either */
  srv_mutex_unlock(&c->slot.lock);
  conn_drop_as(srv, c, "out of memory for its connect event", 1);
  return DELIVER_GONE;
}

static int pull_packet(iocpsrv_t *srv, conn_t *c, pullq_batch_t *b, const uint8_t *data,
                       size_t len) {
  int r = pullq_batch_add(&srv->pull, b, &c->pq, c->slot.id, atomic_load(&c->user), data, len);
  if (r < 0) return DELIVER_NOMEM;
  if (r > 0) return DELIVER_FULL;
  return atomic_load_explicit(&c->deliver_stop, memory_order_relaxed) ? DELIVER_STOP
                                                                       : DELIVER_ON;
}

static void pull_disconnect(iocpsrv_t *srv, conn_t *c, int reason) {
  pullq_node_t *bye = c->bye;
  c->bye = NULL;
  SRV_ASSERT(bye != NULL); /* set aside when the host met it */
  pullq_push_last(&srv->pull, &c->pq, bye, IOCPSRV_EVENT_DISCONNECT, c->slot.id,
                  atomic_load(&c->user), reason);
}

/* ------------------------------------------------------------------ interface ---- */

int deliver_connect(iocpsrv_t *srv, conn_t *c) {
  ASSERT_TOKEN(c);
  SRV_ASSERT(!c->proxy_awaiting);
  int r = srv->opt.pull_mode ? pull_connect(srv, c) : cb_connect(srv, c);
  if (r == DELIVER_MET) engine_stat_add(&srv->stats.connections_total, 1);
  return r;
}

int deliver_packet_to_host(iocpsrv_t *srv, conn_t *c, pullq_batch_t *pull,
                           const uint8_t *data, size_t len) {
  ASSERT_TOKEN(c);
  return srv->opt.pull_mode ? pull_packet(srv, c, pull, data, len)
                            : cb_packet(srv, c, data, len);
}

void deliver_packets_end(iocpsrv_t *srv, conn_t *c, pullq_batch_t *pull) {
  if (srv->opt.pull_mode) pullq_batch_end(&srv->pull, pull, &c->pq);
}

int deliver_batches(const iocpsrv_t *srv) {
  return !srv->opt.pull_mode && srv->on_packet_batch != NULL;
}

int deliver_batch_to_host(iocpsrv_t *srv, conn_t *c, const iocpsrv_buf_t *views, int n) {
  ASSERT_TOKEN(c);
  SRV_ASSERT(deliver_batches(srv));
  return cb_packet_batch(srv, c, views, n);
}

int deliver_peer_eof(iocpsrv_t *srv, conn_t *c) {
  if (!srv->opt.pull_mode || c->proxy_awaiting) return 1;
  /* The host has not seen the packets before the FIN yet: it may still reply. The
   * close starts at its poll after the one that hands over this mark. */
  return pullq_push(&srv->pull, &c->pq, PULLQ_EOF_MARK, c->slot.id, NULL, 0, NULL, 0) < 0
             ? -1
             : 0;
}

int deliver_drain(iocpsrv_t *srv, conn_t *c) {
  if (!srv->opt.pull_mode) {
    cb_drain(srv, c);
    return 0;
  }
  if (pull_event(srv, c, IOCPSRV_EVENT_DRAIN, NULL, 0) < 0)
    return conn_abort_nomem(srv, c, "queueing a drain event");
  return 0;
}

void deliver_disconnect(iocpsrv_t *srv, conn_t *c, int reason) {
  SRV_ASSERT(c->state == CONN_DEAD);
  SRV_ASSERT_NO_LOCKS();
  if (c->refused || c->proxy_awaiting) { /* refused, or never met: no last word */
    if (c->bye) pullq_unreserve(&srv->pull, c->bye);
    c->bye = NULL;
    if (srv->opt.pull_mode) pullq_forget(&srv->pull, &c->pq);
    return;
  }
  if (srv->opt.pull_mode) pull_disconnect(srv, c, reason);
  else cb_disconnect(srv, c, reason);
}

void deliver_pause_locked(iocpsrv_t *srv, conn_t *c, int paused) {
  ASSERT_LOCKED(c);
  if (!srv->opt.pull_mode) return; /* callbacks: deliver_stop is enough */
  if (paused) pullq_hold(&srv->pull, &c->pq, c->slot.id);
  else pullq_resume(&srv->pull, &c->pq);
}

void deliver_close_locked(iocpsrv_t *srv, conn_t *c) {
  ASSERT_LOCKED(c);
  if (srv->opt.pull_mode) pullq_drop(&srv->pull, &c->pq, c->slot.id);
}
