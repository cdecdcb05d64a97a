/* Connection life: accept, introduction to the host, closing, the one disconnect, release. */
#include "core/internal.h"

#include "core/deliver.h"

void format_addr(const struct sockaddr_storage *sa, char *out, size_t size) {
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

void open_count_release(iocpsrv_t *srv) {
  srv_mutex_lock(&srv->count_lock);
  if (atomic_fetch_sub(&srv->open_count, 1) == 1) srv_cond_broadcast(&srv->count_cond);
  srv_mutex_unlock(&srv->count_lock);
}

int conn_admit(iocpsrv_t *srv) {
  /* Counted first, then the state looked at: a stop that starts now either sees this
   * connection in open_count and waits for it, or we see the stop. */
  atomic_fetch_add(&srv->open_count, 1);
  size_t before = atomic_fetch_add(&srv->admitted, 1);
  int rc = srv_state(srv) != SRV_RUNNING ? IOCPSRV_ESTOPPED
           : before >= (size_t)srv->opt.max_connections ? IOCPSRV_ELIMIT : 0;
  if (rc) conn_admit_undo(srv);
  return rc;
}

void conn_admit_undo(iocpsrv_t *srv) {
  atomic_fetch_sub(&srv->admitted, 1);
  open_count_release(srv);
}

conn_t *conn_lock_known(iocpsrv_t *srv, iocpsrv_conn_id_t id) {
  conn_t *c = (conn_t *)conntable_lookup(&srv->table, id);
  if (!c) return NULL;
  srv_mutex_lock(&c->slot.lock);
  if (c->slot.id == id && (c->state == CONN_OPEN || c->state == CONN_CLOSING) &&
      !c->proxy_awaiting)
    return c;
  srv_mutex_unlock(&c->slot.lock);
  return NULL;
}

conn_t *conn_lock_id(iocpsrv_t *srv, iocpsrv_conn_id_t id) {
  conn_t *c = conn_lock_known(srv, id);
  if (c && c->connecting) {
    srv_mutex_unlock(&c->slot.lock);
    return NULL;
  }
  return c;
}

void request_close_locked(iocpsrv_t *srv, conn_t *c, int abort, int reason) {
  ASSERT_LOCKED(c);
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

/* An allocation failed for this connection: it is aborted with a reason that says so
 * (its disconnect still comes, if the host knows it). Token held, no lock. */
int conn_abort_nomem(iocpsrv_t *srv, conn_t *c, const char *what) {
  ASSERT_TOKEN(c);
  ASSERT_UNLOCKED(c);
  engine_stat_add(&srv->stats.alloc_failures, 1);
  engine_log(srv, 0, "connection %s: out of memory %s", c->peer, what);
  return conn_finalize(srv, c, IOCPSRV_REASON_OUT_OF_MEMORY, 1);
}

/* The token holder ends the connection: close the socket, then, once the backend has
 * no I/O left on it, one disconnect callback and the slot is freed. Always returns 1
 * ("the connection is gone") for the callers. */
int conn_finalize(iocpsrv_t *srv, conn_t *c, int reason, int abort) {
  ASSERT_TOKEN(c);
  ASSERT_UNLOCKED(c);
  srv_mutex_lock(&c->slot.lock);
  if (c->close_reason) reason = c->close_reason;
  if (c->close_mode == CLOSE_ABORT) abort = 1;
  c->close_reason = (uint8_t)reason;
  c->state = CONN_DEAD;
  atomic_store_explicit(&c->send_open, 0, memory_order_relaxed);
  sendbuf_free(&c->out);
  sendbuf_free(&c->own);
  c->own_packets = 0;
  conn_target_t *target = c->target;
  c->target = NULL;
  srv_mutex_unlock(&c->slot.lock);
  free(target);
  framer_free(&c->in);
  free(c->proxy_buf);
  c->proxy_buf = NULL;
  c->proxy_len = 0;
  if (!conn_close_socket(srv, c, abort)) engine_conn_released(srv, c);
  return 1;
}

void engine_conn_released(iocpsrv_t *srv, conn_t *c) {
  ASSERT_UNLOCKED(c);
  if (c->src_counted) { /* before the disconnect: a client told it left may come back */
    c->src_counted = 0;
    srclimit_release(&srv->per_source, &c->src_key);
  }
  /* Likewise for IOCPSRV_OPT_MAX_CONNECTIONS: the disconnect callback may connect again
   * (a reconnect loop) at the limit. A stop still waits for it (open_count). */
  atomic_fetch_sub(&srv->admitted, 1);
  deliver_disconnect(srv, c, c->close_reason);

  srv_mutex_lock(&c->slot.lock);
  c->slot.id = 0;
  c->state = CONN_FREE;
  c->busy = 0;
  c->notes = 0;
  conntable_release(&srv->table, &c->slot);
  srv_mutex_unlock(&c->slot.lock);

  open_count_release(srv);
}

/* A connection that must not reach the host, closed silently: a protocol error, or
 * (nomem) no memory to meet it. */
int conn_drop_as(iocpsrv_t *srv, conn_t *c, const char *why, int nomem) {
  ASSERT_TOKEN(c);
  engine_stat_add(nomem ? &srv->stats.alloc_failures : &srv->stats.protocol_errors, 1);
  engine_log(srv, nomem ? 0 : 1, "connection %s: %s", c->peer, why);
  srv_mutex_lock(&c->slot.lock);
  c->refused = 1;
  srv_mutex_unlock(&c->slot.lock);
  return conn_finalize(srv, c,
                       nomem ? IOCPSRV_REASON_OUT_OF_MEMORY : IOCPSRV_REASON_PROTOCOL_ERROR, 1);
}

int conn_drop(iocpsrv_t *srv, conn_t *c, const char *why) {
  return conn_drop_as(srv, c, why, 0);
}

/* NOTE_CLOSE: abort now, or half-close once the queue is written; the connection is
 * done when both sides have sent their FIN. */
int conn_close_step(iocpsrv_t *srv, conn_t *c) {
  ASSERT_TOKEN(c);
  srv_mutex_lock(&c->slot.lock);
  int abort = c->close_mode == CLOSE_ABORT;
  int nomem = !abort && merge_own_locked(srv, c); /* replies sent before the close */
  if (nomem) abort = 1;
  if (!abort) conn_flush_locked(srv, c); /* it may sit on a deferred list */
  if (!abort && !c->wr_shut && conn_pending_locked(c) == 0) {
    bk_shutdown(c->sock);
    c->wr_shut = 1;
  }
  int done = c->wr_shut && c->rd_eof;
  srv_mutex_unlock(&c->slot.lock);
  if (nomem) log_merge_nomem(srv, c);
  framer_free(&c->in); /* nothing more is delivered */
  if (abort) return conn_finalize(srv, c, IOCPSRV_REASON_LOCAL_ABORT, 1);
  return done ? conn_finalize(srv, c, IOCPSRV_REASON_PEER_CLOSED, 0) : 0;
}

/* A fresh connection slot, token held by the caller (busy), no socket yet; NULL when
 * the table is full or out of memory (*nomem). Its fields are set under its lock:
 * sends from other threads may look at it as soon as its id is out. */
conn_t *conn_new(iocpsrv_t *srv, int *nomem) {
  conn_t *c = (conn_t *)conntable_alloc(&srv->table, nomem);
  if (!c) {
    if (*nomem) engine_stat_add(&srv->stats.alloc_failures, 1);
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
  c->sock = BK_INVALID_SOCKET;
  c->read_armed = c->write_wait = 0;
  c->refused = 0;
  c->proxy_awaiting = 0;
  c->outbound = c->connecting = 0;
  c->target = NULL;
  c->proxy[0] = 0;
  c->bye = NULL;
  c->out_seen = 0;
  c->bytes_out = c->packets_out = 0;
  atomic_store(&c->deliver_stop, 0);
  atomic_store(&c->user, NULL);
  atomic_store(&c->bytes_in, 0);
  atomic_store(&c->packets_in, 0);
  atomic_store(&c->last_packet_ms, clock_now());
  c->connect_time_ms = srv_unix_ms();
  c->src_counted = c->src_trusted = 0;
  srv_mutex_unlock(&c->slot.lock);
  return c;
}

static conn_t *conn_open(iocpsrv_t *srv, bk_socket_t sock, const struct sockaddr_storage *sa) {
  int nomem;
  conn_t *c = conn_new(srv, &nomem);
  if (!c) return NULL;
  srv_mutex_lock(&c->slot.lock);
  c->sock = sock;
  /* Before anyone can see the id: sends from other threads may start at once. */
  int reg_err = conn_watch_locked(srv, c);
  if (reg_err) c->notes |= NOTE_ERROR;
  format_addr(sa, c->peer, sizeof c->peer);
  srv_mutex_unlock(&c->slot.lock);
  if (reg_err)
    engine_log(srv, 0, "connection %s: cannot watch the socket (%s)", c->peer,
               iocpsrv_strerror(reg_err));
  return c;
}

static void conn_refuse(iocpsrv_t *srv, conn_t *c) {
  ASSERT_TOKEN(c);
  srv_mutex_lock(&c->slot.lock);
  c->refused = 1;
  srv_mutex_unlock(&c->slot.lock);
  engine_stat_add(&srv->stats.connections_rejected, 1);
  conn_finalize(srv, c, IOCPSRV_REASON_LOCAL_CLOSE, 0);
}

/* The connect callback (or pull CONNECT event). Returns 1 if the host refused it (the
 * connection is gone then). Token held. */
int conn_introduce(iocpsrv_t *srv, conn_t *c) {
  int r = deliver_connect(srv, c);
  if (r == DELIVER_REFUSED) conn_refuse(srv, c);
  return r != DELIVER_MET;
}

void engine_accept(worker_t *w, bk_socket_t sock, const struct sockaddr_storage *sa) {
  iocpsrv_t *srv = w->srv;
  int admitted = conn_admit(srv) == 0;
  conn_t *c = NULL;
  src_admit_t adm;
  if (admitted) {
    if (source_admit(srv, sock, sa, &adm)) {
      conn_admit_undo(srv);
      return;
    }
    c = conn_open(srv, sock, sa);
    if (!c && adm.counted) srclimit_release(&srv->per_source, &adm.key);
  }
  if (!c) {
    refuse_socket(srv, sock);
    if (admitted) conn_admit_undo(srv);
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
  bk_tune(&srv->bk, sock);
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
