/* The server's life: create, options, callbacks, listen, stop, destroy. */
#include "core/internal.h"

static void close_all(iocpsrv_t *srv, int abort) {
  size_t used = conntable_used(&srv->table);
  for (size_t i = 0; i < used; i++) {
    conn_t *c = (conn_t *)conntable_at(&srv->table, i);
    srv_mutex_lock(&c->slot.lock);
    if (c->slot.id) request_close_locked(srv, c, abort, IOCPSRV_REASON_SERVER_STOPPED);
    srv_mutex_unlock(&c->slot.lock);
  }
}

static void begin_stop(iocpsrv_t *srv, int timeout_ms) {
  int expected = SRV_RUNNING;
  if (!atomic_compare_exchange_strong(&srv->state, &expected, SRV_STOPPING)) return;
  srv->stop_abort = timeout_ms == 0;
  atomic_store(&srv->stop_deadline, timeout_ms < 0 ? INT64_MAX : srv_now_ms() + timeout_ms);
  bk_quit(&srv->bk, 0);
  close_all(srv, srv->stop_abort);
}

/* Second half, on a thread that is not a worker: wait for the connections, abort the
 * stragglers at the deadline, join the workers. life_lock held. */
static void finish_stop(iocpsrv_t *srv) {
  SRV_ASSERT_HELD(&srv->life_lock);
  SRV_ASSERT(!engine_in_worker_of(srv)); /* it joins the workers */
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
  resolver_detach(srv); /* no connection is left to wait for an answer */
  pool_stop(srv);
  bk_release(&srv->bk);
  if (srv->opt.pull_mode) pullq_set_stopped(&srv->pull);
  srv->need_join = 0;
  atomic_store(&srv->state, SRV_STOPPED);
}

int IOCPSRV_CALL iocpsrv_create(iocpsrv_t **out, void *user) {
  if (!out) return IOCPSRV_EINVAL;
  *out = NULL;
  iocpsrv_t *srv = srv_calloc(1, sizeof *srv);
  if (!srv) return IOCPSRV_ENOMEM;
  srv->user = user;
  srv_options_init(&srv->opt);
  int rc = IOCPSRV_ENOMEM;
  if (conntable_init(&srv->table, sizeof(conn_t))) goto err_free;
  rc = IOCPSRV_ESYSTEM;
  if (srv_net_init()) goto err_table;
  if (pullq_init(&srv->pull, NULL, srv)) goto err_global;
  srv_mutex_init(&srv->life_lock);
  srv_mutex_init(&srv->count_lock);
  srv_cond_init(&srv->count_cond);
  srv_mutex_init(&srv->task_lock);
  srv_mutex_init(&srv->poll_flush_lock);
  srv_mutex_init(&srv->resolver_lock);
  *out = srv;
  return 0;
err_global:
  srv_net_cleanup();
err_table:
  conntable_destroy(&srv->table);
err_free:
  free(srv);
  return rc;
}

void *IOCPSRV_CALL iocpsrv_user_data(iocpsrv_t *srv) { return srv ? srv->user : NULL; }

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

int IOCPSRV_CALL iocpsrv_set_packet_batch_cb(iocpsrv_t *srv, iocpsrv_packet_batch_cb cb) {
  WITH_STOPPED_SERVER(srv, srv->on_packet_batch = cb);
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

static void on_pull_eof(void *ctx, const iocpsrv_conn_id_t *ids, size_t n) {
  iocpsrv_t *srv = ctx;
  for (size_t i = 0; i < n; i++) {
    conn_t *c = conn_lock_id(srv, ids[i]);
    if (!c) continue;
    request_close_locked(srv, c, 0, IOCPSRV_REASON_PEER_CLOSED);
    srv_mutex_unlock(&c->slot.lock);
  }
}

/* The port of a bound address (the one the OS picked for port 0). */
static int bound_port(const struct sockaddr_storage *sa) {
  return ntohs(sa->ss_family == AF_INET6 ? ((const struct sockaddr_in6 *)sa)->sin6_port
                                         : ((const struct sockaddr_in *)sa)->sin_port);
}

/* Resolve `host` (NULL or "": every interface) and listen on the first address that
 * works. 0 or a negative IOCPSRV_E code. */
static int bind_listener(iocpsrv_t *srv, const char *host, int port) {
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
      struct sockaddr_storage bound;
      memset(&bound, 0, sizeof bound);
      err = bk_listen(&srv->bk, ai, &bound);
      if (err == 0) {
        srv->port = bound_port(&bound);
        break;
      }
    }
    freeaddrinfo(res);
    if (err == 0) return 0;
  }
  return err;
}

static void on_pull_room(void *ctx, const iocpsrv_conn_id_t *ids, size_t n) {
  iocpsrv_t *srv = ctx;
  for (size_t i = 0; i < n; i++) {
    conn_t *c = conn_lock_id(srv, ids[i]);
    if (!c) continue;
    engine_schedule_locked(srv, c, NOTE_ROOM);
    srv_mutex_unlock(&c->slot.lock);
  }
}

/* Slots for IOCPSRV_OPT_MAX_CONNECTIONS connections, and for those whose disconnect
 * callback runs meanwhile (no longer counted: it may connect again), one per worker. */
static size_t table_slots(const iocpsrv_t *srv) {
  size_t want = (size_t)srv->opt.max_connections + 1024; /* the most workers there are */
  size_t cap = (size_t)CONN_MAX_CHUNKS * CONN_CHUNK;
  return want < cap ? want : cap;
}

/* Start the engine, listening on host:port when `listening`. */
static int engine_start(iocpsrv_t *srv, int listening, const char *host, int port) {
  if (engine_in_worker_of(srv)) return IOCPSRV_EINCALLBACK;
  srv_mutex_lock(&srv->life_lock);
  if (srv->need_join && srv_state(srv) == SRV_STOPPING) finish_stop(srv);
  if (srv_state(srv) != SRV_STOPPED) {
    srv_mutex_unlock(&srv->life_lock);
    return IOCPSRV_ESTATE;
  }
  int rc = 0;
  if (framing_cfg_from_option(&srv->framing, srv->opt.framing, srv->opt.max_packet_size) ||
      conntable_reserve(&srv->table, table_slots(srv))) {
    rc = IOCPSRV_ENOMEM;
  }
  srclimit_init(&srv->per_source); /* once; empty again after every stop */
  int trust_warning = srv->opt.proxy_protocol && srv->opt.proxy_trusted.n == 0;
  int64_t period = srv->opt.idle_timeout_ms ? srv->opt.idle_timeout_ms / 4 : 250;
  srv->sweep_period_ms = (int)(period > 250 ? 250 : period < 10 ? 10 : period);
  atomic_store(&srv->next_sweep_ms, srv_now_ms() + srv->sweep_period_ms);
  srv->port = 0;
  if (!rc) rc = bk_open(&srv->bk, srv, &srv->opt);
  if (!rc && listening) rc = bind_listener(srv, host, port);
  if (!rc) {
    srv->pull.on_room = on_pull_room;
    srv->pull.on_eof = on_pull_eof;
    srv->pull.room_ctx = srv;
    pullq_reset(&srv->pull, (size_t)srv->opt.pull_queue_limit);
    atomic_store(&srv->state, SRV_RUNNING);
    rc = pool_start(srv);
    if (rc) atomic_store(&srv->state, SRV_STOPPED);
  }
  if (rc) bk_release(&srv->bk);
  else srv->need_join = 1;
  srv_mutex_unlock(&srv->life_lock);
  if (!rc && trust_warning)
    engine_log(srv, 1, "PROXY protocol is on but IOCPSRV_OPT_PROXY_TRUSTED is empty: every "
                       "PROXY header is refused%s",
               srv->opt.proxy_protocol == IOCPSRV_PROXY_REQUIRED ? ", and so is every client" : "");
  return rc;
}

int IOCPSRV_CALL iocpsrv_listen(iocpsrv_t *srv, const char *host, int port) {
  if (!srv || port < 0 || port > 65535) return IOCPSRV_EINVAL;
  return engine_start(srv, 1, host, port);
}

int IOCPSRV_CALL iocpsrv_start(iocpsrv_t *srv) {
  if (!srv) return IOCPSRV_EINVAL;
  return engine_start(srv, 0, NULL, 0);
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
  srv_mutex_destroy(&srv->resolver_lock);
  srv_cond_destroy(&srv->count_cond);
  srv_mutex_destroy(&srv->count_lock);
  srv_mutex_destroy(&srv->life_lock);
  free(srv);
  srv_net_cleanup();
  return 0;
}
