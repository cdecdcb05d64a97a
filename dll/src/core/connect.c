/* The client role: iocpsrv_connect and the life of an outbound connection until it is
 * established, after which it is an ordinary connection.
 *
 * An outbound connection takes a slot at the call (it counts against max connections
 * and its id is the host's at once) with `connecting` set: only this file's step runs
 * for it (conn_handle), sends and flow control see no connection yet (conn_lock_id).
 * Its addresses come from the call (a numeric host) or from the resolver thread (a
 * name, resolver.c), which hands them over with a NOTE_CONNECT. The token holder
 * starts a connect on the next address (bk_connect), and the backend's event for the
 * socket brings another NOTE_CONNECT, which asks bk_connect_result how it went:
 * established (the host meets it as a client: connect callback or CONNECT event),
 * failed (the next address, or the end with that failure's reason) or not yet (a late
 * event of an earlier socket). A close requested meanwhile (iocpsrv_disconnect, a stop,
 * the sweep's IOCPSRV_OPT_CONNECT_TIMEOUT_MS) ends it with its reason. Every way out
 * goes through conn_finalize, so each attempt ends with exactly one disconnect. */
#include "core/internal.h"

#include "core/deliver.h"

/* The addresses of a resolved host, those of IOCPSRV_OPT_CONNECT_SOURCE's family only
 * when one is set. NULL when out of memory; count 0 when none fits. */
static conn_target_t *target_from(iocpsrv_t *srv, const struct addrinfo *res) {
  conn_target_t *t = srv_calloc(1, sizeof *t);
  if (!t) return NULL;
  int family = srv->opt.connect_source_len ? srv->opt.connect_source.ss_family : AF_UNSPEC;
  t->last_reason = IOCPSRV_REASON_NAME_NOT_RESOLVED;
  for (const struct addrinfo *ai = res; ai && t->count < 8; ai = ai->ai_next) {
    if (ai->ai_addrlen > sizeof t->addr[0]) continue;
    if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6) continue;
    if (family != AF_UNSPEC && ai->ai_family != family) continue;
    memcpy(&t->addr[t->count], ai->ai_addr, ai->ai_addrlen);
    t->addr_len[t->count++] = (int)ai->ai_addrlen;
  }
  return t;
}

/* Start connecting to the target's next address that can be tried. 0: under way (an
 * event follows); otherwise no address is left, and target->last_reason says why the
 * last failed, or a negative IOCPSRV_E code: no socket could be made. Token held. */
static int connect_next(iocpsrv_t *srv, conn_t *c, conn_target_t *t) {
  ASSERT_TOKEN(c);
  const srv_options_t *o = &srv->opt;
  const struct sockaddr *from = o->connect_source_len ? (const struct sockaddr *)&o->connect_source : NULL;
  while (t->next < t->count) {
    int i = t->next++;
    bk_socket_t s;
    srv_mutex_lock(&c->slot.lock);
    int rc = bk_connect(&srv->bk, &c->bk, c->slot.id, (const struct sockaddr *)&t->addr[i],
                        t->addr_len[i], from, o->connect_source_len, &s);
    if (rc == 0) {
      c->sock = s;
      c->hup = 0; /* an earlier socket's hang-up is not this one's */
      format_addr(&t->addr[i], c->peer, sizeof c->peer);
    }
    srv_mutex_unlock(&c->slot.lock);
    if (rc <= 0) return rc;
    t->last_reason = rc;
  }
  return 1;
}

/* Connected: from now on an ordinary connection, introduced to the host. Returns 1 if
 * it is gone (the host refused it, or a close came first). */
static int conn_established(iocpsrv_t *srv, conn_t *c, uint32_t *notes) {
  srv_mutex_lock(&c->slot.lock);
  if (c->state != CONN_OPEN) {
    /* A close (iocpsrv_disconnect, a stop, the timeout) came while the connect ended:
     * it wins, and the host never meets the connection. */
    srv_mutex_unlock(&c->slot.lock);
    return conn_finalize(srv, c, IOCPSRV_REASON_LOCAL_ABORT, 1);
  }
  c->connecting = 0;
  conn_target_t *t = c->target;
  c->target = NULL;
  c->connect_time_ms = srv_unix_ms();
  atomic_store_explicit(&c->last_packet_ms, clock_now(), memory_order_relaxed);
  atomic_store_explicit(&c->send_open, 1, memory_order_relaxed);
  srv_mutex_unlock(&c->slot.lock);
  free(t);
  bk_tune(&srv->bk, c->sock);
  if (conn_introduce(srv, c)) return 1;
  *notes |= NOTE_READ; /* what came with the connect: its edge will not come again */
  return 0;
}

int conn_connect_step(iocpsrv_t *srv, conn_t *c, uint32_t *notes) {
  ASSERT_TOKEN(c);
  SRV_ASSERT(c->connecting);
  srv_mutex_lock(&c->slot.lock);
  int closing = c->state != CONN_OPEN;
  conn_target_t *t = c->target;
  srv_mutex_unlock(&c->slot.lock);
  /* Its close_reason says why: disconnect, stop, timeout. */
  if (closing) return conn_finalize(srv, c, IOCPSRV_REASON_LOCAL_ABORT, 1);
  if (!(*notes & NOTE_CONNECT) || !t) return 0; /* its name is still being looked up */
  *notes &= ~NOTE_CONNECT;
  if (c->sock != BK_INVALID_SOCKET) {
    int r = bk_connect_result(&c->bk, c->sock);
    if (r == BK_AGAIN) return 0;
    if (r == 0) return conn_established(srv, c, notes);
    t->last_reason = r;
    srv_mutex_lock(&c->slot.lock);
    bk_socket_t s = c->sock;
    c->sock = BK_INVALID_SOCKET; /* conn_info must not look at a closed socket */
    srv_mutex_unlock(&c->slot.lock);
    int running = bk_close(&c->bk, s, 1); /* its connect has ended: no I/O is left */
    SRV_ASSERT(!running);
    (void)running;
  }
  int rc = connect_next(srv, c, t);
  if (rc == 0) return 0;
  if (rc < 0) {
    engine_log(srv, 0, "connection %s: cannot connect: %s", c->peer, iocpsrv_strerror(rc));
    t->last_reason = IOCPSRV_REASON_CONNECT_FAILED;
  }
  return conn_finalize(srv, c, t->last_reason, 1);
}

void connect_resolved(iocpsrv_t *srv, uint64_t id, const struct addrinfo *res) {
  conn_target_t *t = target_from(srv, res);
  conn_t *c = conn_lock_known(srv, id);
  if (!c || !c->connecting || c->target || c->state != CONN_OPEN) {
    if (c) srv_mutex_unlock(&c->slot.lock);
    free(t); /* closed meanwhile (a disconnect, a stop, the timeout) */
    return;
  }
  if (!t) {
    engine_stat_add(&srv->stats.alloc_failures, 1);
    request_close_locked(srv, c, 1, IOCPSRV_REASON_OUT_OF_MEMORY);
  } else {
    c->target = t;
    engine_schedule_locked(srv, c, NOTE_CONNECT);
  }
  srv_mutex_unlock(&c->slot.lock);
}

/* ------------------------------------------------------------------ the call ---- */

/* A numeric host ("127.0.0.1", "::1", "[::1]") as a target, without any lookup:
 * 0 with *out, 1 for a name (the resolver's), or a negative code. */
static int numeric_target(iocpsrv_t *srv, const char *host, int port, conn_target_t **out) {
  char name[INET6_ADDRSTRLEN + 8], service[16];
  size_t len = strlen(host);
  if (len >= 2 && host[0] == '[' && host[len - 1] == ']' && len - 2 < sizeof name) {
    memcpy(name, host + 1, len - 2); /* the bracketed form of an IPv6 address */
    name[len - 2] = 0;
  } else if (len < sizeof name) {
    memcpy(name, host, len + 1);
  } else {
    return 1;
  }
  snprintf(service, sizeof service, "%d", port);
  struct addrinfo hints, *res = NULL;
  memset(&hints, 0, sizeof hints);
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
  if (getaddrinfo(name, service, &hints, &res) != 0) return 1;
  *out = target_from(srv, res);
  freeaddrinfo(res);
  if (!*out) return IOCPSRV_ENOMEM;
  if ((*out)->count == 0) { /* not of IOCPSRV_OPT_CONNECT_SOURCE's family */
    free(*out);
    return IOCPSRV_EADDRNOTAVAIL;
  }
  return 0;
}

/* Take a slot for an outbound connection, as engine_accept does for a client. */
static int outbound_slot(iocpsrv_t *srv, const char *host, int port, void *user,
                         conn_t **out) {
  int rc = conn_admit(srv);
  if (rc) return rc;
  int nomem = 0;
  conn_t *c = conn_new(srv, &nomem);
  if (!c) rc = nomem ? IOCPSRV_ENOMEM : IOCPSRV_ELIMIT;
  pullq_node_t *bye = NULL;
  if (c && srv->opt.pull_mode && !(bye = pullq_reserve(&srv->pull))) rc = IOCPSRV_ENOMEM;
  if (c && rc) engine_stat_add(&srv->stats.alloc_failures, 1); /* its DISCONNECT's */
  if (rc) {
    if (c) { /* never seen by anyone: the host hears nothing of it */
      c->refused = 1;
      conn_finalize(srv, c, IOCPSRV_REASON_OUT_OF_MEMORY, 1);
    } else {
      conn_admit_undo(srv);
    }
    return rc;
  }
  srv_mutex_lock(&c->slot.lock);
  c->outbound = c->connecting = 1;
  c->bye = bye; /* its DISCONNECT, whatever happens */
  atomic_store_explicit(&c->send_open, 0, memory_order_relaxed);
  atomic_store(&c->user, user);
  int64_t timeout = srv->opt.connect_timeout_ms;
  c->connect_deadline = timeout ? clock_now() + timeout : INT64_MAX;
  snprintf(c->peer, sizeof c->peer, strchr(host, ':') && host[0] != '[' ? "[%s]:%d" : "%s:%d",
           host, port);
  srv_mutex_unlock(&c->slot.lock);
  *out = c;
  return 0;
}

/* Hand the token back: the connection's events and notes go to the workers now. A
 * stop that began meanwhile may have missed it in its sweep of the table. */
static void release_token(iocpsrv_t *srv, conn_t *c) {
  srv_mutex_lock(&c->slot.lock);
  c->busy = 0;
  if (srv_state(srv) != SRV_RUNNING)
    request_close_locked(srv, c, srv->stop_abort, IOCPSRV_REASON_SERVER_STOPPED);
  if (c->notes) engine_schedule_locked(srv, c, 0);
  srv_mutex_unlock(&c->slot.lock);
}

int IOCPSRV_CALL iocpsrv_connect(iocpsrv_t *srv, const char *host, int port, void *conn_user,
                                 iocpsrv_conn_id_t *conn) {
  if (conn) *conn = 0;
  if (!srv || !host || !host[0] || !conn || port < 1 || port > 65535) return IOCPSRV_EINVAL;
  if (srv_state(srv) != SRV_RUNNING) return IOCPSRV_ESTOPPED;
  conn_target_t *t = NULL;
  int numeric = numeric_target(srv, host, port, &t);
  if (numeric == IOCPSRV_ENOMEM) engine_stat_add(&srv->stats.alloc_failures, 1);
  if (numeric < 0) return numeric;
  conn_t *c;
  int rc = outbound_slot(srv, host, port, conn_user, &c);
  if (rc) {
    free(t);
    return rc;
  }
  if (numeric == 0) {
    /* Started here, so that a failure to make a socket is the caller's error. */
    rc = connect_next(srv, c, t);
    if (rc == 1) rc = 0; /* failed at once: that is the attempt's outcome, a worker's */
    if (rc == 0) {
      srv_mutex_lock(&c->slot.lock);
      c->target = t;
      if (c->sock == BK_INVALID_SOCKET) c->notes |= NOTE_CONNECT;
      srv_mutex_unlock(&c->slot.lock);
    }
  } else {
    rc = resolver_submit(srv, c->slot.id, host, port);
  }
  if (rc) {
    if (c->target != t) free(t);
    srv_mutex_lock(&c->slot.lock);
    c->refused = 1; /* the host never had its id: no disconnect */
    srv_mutex_unlock(&c->slot.lock);
    conn_finalize(srv, c, IOCPSRV_REASON_CONNECT_FAILED, 1);
    return rc;
  }
  *conn = c->slot.id;
  release_token(srv, c);
  return 0;
}
