/* The per-connection API: send, broadcast, disconnect, flow control, info, stats, poll. */
#include "core/internal.h"

#include "core/deliver.h"

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
    iocpsrv_conn_id_t id =
        c->state == CONN_OPEN && !c->proxy_awaiting && !c->connecting ? c->slot.id : 0;
    srv_mutex_unlock(&c->slot.lock);
    if (!id) continue;
    int rc = send_packet(srv, id, &buf, 1, len);
    if (rc == IOCPSRV_ETOOBIG || rc == IOCPSRV_ESTOPPED) return rc;
    if (rc == 0) sent++;
  }
  return sent;
}

int IOCPSRV_CALL iocpsrv_disconnect(iocpsrv_t *srv, iocpsrv_conn_id_t conn, int mode) {
  if (!srv || (mode != IOCPSRV_CLOSE_GRACEFUL && mode != IOCPSRV_CLOSE_ABORT &&
               mode != IOCPSRV_CLOSE_REFUSE))
    return IOCPSRV_EINVAL;
  if (srv_state(srv) == SRV_STOPPED) return IOCPSRV_ESTOPPED;
  conn_t *c = conn_lock_known(srv, conn); /* connecting too: the attempt is dropped */
  if (!c) return IOCPSRV_ENOTCONN;
  int abort = mode == IOCPSRV_CLOSE_ABORT;
  if (mode == IOCPSRV_CLOSE_REFUSE && !c->refused) {
    c->refused = 1; /* no further event or callback, not even its disconnect */
    engine_stat_add(&srv->stats.connections_rejected, 1);
  }
  request_close_locked(srv, c, abort,
                       abort ? IOCPSRV_REASON_LOCAL_ABORT : IOCPSRV_REASON_LOCAL_CLOSE);
  deliver_close_locked(srv, c); /* what is queued for it is not handed over any more */
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
    deliver_pause_locked(srv, c, paused); /* pull mode: queued packets wait too */
    if (paused) conn_arm_locked(srv, c);
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
  int64_t n = (int64_t)conn_pending_locked(c);
  srv_mutex_unlock(&c->slot.lock);
  if (own_conn(srv, conn) == c) n += (int64_t)sendbuf_pending(&c->own); /* not merged yet */
  return n;
}

int IOCPSRV_CALL iocpsrv_set_conn_user(iocpsrv_t *srv, iocpsrv_conn_id_t conn,
                                       void *conn_user) {
  if (!srv) return IOCPSRV_EINVAL;
  conn_t *c = conn_lock_known(srv, conn);
  if (!c) return srv_state(srv) == SRV_STOPPED ? IOCPSRV_ESTOPPED : IOCPSRV_ENOTCONN;
  atomic_store(&c->user, conn_user);
  srv_mutex_unlock(&c->slot.lock);
  return 0;
}

int IOCPSRV_CALL iocpsrv_conn_info(iocpsrv_t *srv, iocpsrv_conn_id_t conn,
                                   iocpsrv_conn_info_t *info) {
  if (!srv || !info || info->struct_size < offsetof(iocpsrv_conn_info_t, peer))
    return IOCPSRV_EINVAL;
  conn_t *c = conn_lock_known(srv, conn);
  if (!c) return srv_state(srv) == SRV_STOPPED ? IOCPSRV_ESTOPPED : IOCPSRV_ENOTCONN;
  iocpsrv_conn_info_t v;
  memset(&v, 0, sizeof v);
  v.struct_size = (uint32_t)(info->struct_size < sizeof v ? info->struct_size : sizeof v);
  v.flags = (c->paused ? IOCPSRV_CONN_PAUSED : 0) |
            (c->state == CONN_CLOSING ? IOCPSRV_CONN_CLOSING : 0) |
            (c->outbound ? IOCPSRV_CONN_OUTBOUND : 0) |
            (c->connecting ? IOCPSRV_CONN_CONNECTING : 0);
  v.id = conn;
  v.connect_time_ms = c->connect_time_ms;
  v.bytes_in = atomic_load(&c->bytes_in);
  v.bytes_out = c->bytes_out;
  v.packets_in = atomic_load(&c->packets_in);
  v.packets_out = c->packets_out;
  v.pending_send_bytes = conn_pending_locked(c);
  snprintf(v.peer, sizeof v.peer, "%s", c->peer);
  snprintf(v.proxy, sizeof v.proxy, "%s", c->proxy);
  struct sockaddr_storage sa;
  if (c->sock != BK_INVALID_SOCKET && bk_sockname(c->sock, &sa) == 0)
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
  uint64_t seq = poll_begin(srv);
  int n = pullq_poll(&srv->pull, events, max, timeout_ms);
  poll_end(srv, seq);
  return n;
}

uint64_t poll_begin(iocpsrv_t *srv) {
  flush_poll_batch(srv); /* the sends the consumer made for the last batch */
  return atomic_fetch_add(&srv->poll_seq, 1) + 1; /* the last batch is over */
}

void poll_end(iocpsrv_t *srv, uint64_t seq) {
  /* Sends this thread makes from now on belong to the batch just taken. */
  tls_batch_srv = srv;
  tls_batch_seq = seq;
}

int64_t IOCPSRV_CALL iocpsrv_wait_handle(iocpsrv_t *srv) {
  if (!srv) return IOCPSRV_EINVAL;
  if (!srv->opt.pull_mode) return IOCPSRV_ENOTSUP;
  return srv_waitable_handle(&srv->pull.waitable);
}
