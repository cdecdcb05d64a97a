/* echo.c -- see echo.h. */
#ifndef _WIN32
#  define _GNU_SOURCE
#endif
#include "echo.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test.h"

#ifndef _WIN32
#  include <errno.h>
#  include <poll.h>
#endif

#define ECHO_HASH(id) ((size_t)(((id) ^ ((id) >> 17) ^ ((id) >> 40)) & 1023u))

static void echo_contract_errorv(echo_server_t *es, echo_conn_t *c, const char *fmt,
                                 va_list ap) {
  char msg[400];
  vsnprintf(msg, sizeof msg, fmt, ap);
  tt_mutex_lock(&es->lock);
  if (es->contract_errors++ == 0)
    snprintf(es->first_error, sizeof es->first_error, "conn %llu (%s): %s",
             c ? (unsigned long long)c->id : 0ULL, c ? c->peer : "?", msg);
  if (c) c->errors++;
  tt_mutex_unlock(&es->lock);
  fprintf(stderr, "[echo] contract breach on conn %llu: %s\n",
          c ? (unsigned long long)c->id : 0ULL, msg);
}

void echo_contract_error(echo_server_t *es, echo_conn_t *c, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  echo_contract_errorv(es, c, fmt, ap);
  va_end(ap);
}

/* Caller holds es->lock. */
static echo_conn_t *echo_find_locked(echo_server_t *es, iocpsrv_conn_id_t id) {
  echo_conn_t *c;
  for (c = es->hash[ECHO_HASH(id)]; c; c = c->next_hash)
    if (c->id == id) return c;
  return NULL;
}

echo_conn_t *echo_find(echo_server_t *es, iocpsrv_conn_id_t id) {
  tt_mutex_lock(&es->lock);
  echo_conn_t *c = echo_find_locked(es, id);
  tt_mutex_unlock(&es->lock);
  return c;
}

/* Caller holds es->lock. */
static void echo_log(echo_server_t *es, echo_conn_t *c, const char *fmt, ...) {
  if (!es->cfg.log_events) return;
  char item[64];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(item, sizeof item, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if (c->log_len + (size_t)n + 1 > c->log_cap) {
    size_t cap = c->log_cap ? c->log_cap * 2 : 256;
    while (cap < c->log_len + (size_t)n + 1) cap *= 2;
    char *p = (char *)realloc(c->log, cap);
    if (!p) return;
    c->log = p;
    c->log_cap = cap;
  }
  memcpy(c->log + c->log_len, item, (size_t)n + 1);
  c->log_len += (size_t)n;
}

/* Look the record up and mark a callback for it as running. NULL (and a breach) if
 * the id is unknown or another callback for it is running. */
static echo_conn_t *echo_enter(echo_server_t *es, iocpsrv_conn_id_t id, const char *what) {
  tt_mutex_lock(&es->lock);
  echo_conn_t *c = echo_find_locked(es, id);
  int busy = c ? c->busy : 0;
  if (c) c->busy = 1;
  tt_mutex_unlock(&es->lock);
  if (!c) {
    echo_contract_error(es, NULL, "%s callback for unknown id %llu", what,
                        (unsigned long long)id);
    return NULL;
  }
  if (busy)
    echo_contract_error(es, c, "%s callback while another callback for the same "
                        "connection runs (not serialized)", what);
  return c;
}

static void echo_leave(echo_server_t *es, echo_conn_t *c) {
  tt_mutex_lock(&es->lock);
  c->busy = 0;
  tt_mutex_unlock(&es->lock);
}

/* ---- the handlers, shared by callback and pull mode ---- */

static int echo_on_connect(echo_server_t *es, iocpsrv_conn_id_t id, const char *peer,
                           echo_conn_t **out) {
  echo_conn_t *c = (echo_conn_t *)calloc(1, sizeof *c);
  if (!c) test_fail(__FILE__, __LINE__, "out of memory");
  c->id = id;
  snprintf(c->peer, sizeof c->peer, "%s", peer ? peer : "(null)");
  c->expected_user = c;
  c->busy = 1;
  tt_mutex_lock(&es->lock);
  echo_conn_t *old = echo_find_locked(es, id);
  c->next_hash = es->hash[ECHO_HASH(id)];
  es->hash[ECHO_HASH(id)] = c;
  c->next_all = es->all;
  es->all = c;
  tt_mutex_unlock(&es->lock);
  if (id == 0) echo_contract_error(es, c, "connection id 0");
  if (old) echo_contract_error(es, c, "connection id reused (was %s)", old->peer);
  if (!peer || !peer[0]) echo_contract_error(es, c, "empty peer text");

  int refuse = es->cfg.on_connect ? es->cfg.on_connect(es, id, c->peer) : 0;
  tt_mutex_lock(&es->lock);
  c->state = refuse ? 3 : 1;
  c->busy = 0;
  if (!refuse) echo_log(es, c, "C;");
  tt_mutex_unlock(&es->lock);
  if (refuse)
    tt_counter_add(&es->rejects, 1);
  else
    tt_counter_add(&es->connects, 1);
  *out = c;
  return refuse;
}

/* Returns non-zero when the connection must close. */
static int echo_on_packet(echo_server_t *es, iocpsrv_conn_id_t id, void *user,
                          const uint8_t *data, size_t len, int pull) {
  echo_conn_t *c = echo_enter(es, id, "packet");
  if (!c) return 0;
  if (pull && user == NULL) {
    c->pull_null_user++;
  } else if (user != c->expected_user) {
    echo_contract_error(es, c, "packet: conn_user %p, expected %p", user, c->expected_user);
  }
  if (c->state != 1)
    echo_contract_error(es, c, "packet callback in state %d (%s)", c->state,
                        c->state == 0 ? "before connect finished"
                        : c->state == 2 ? "after disconnect"
                                        : "refused connection");
  if (data == NULL) echo_contract_error(es, c, "packet data is NULL (len %llu)", (unsigned long long)len);
  if (es->cfg.check_seq && len >= 4 && data) {
    uint32_t seq = test_get_u32le(data);
    if (seq != c->next_seq)
      echo_contract_error(es, c, "packet out of order: sequence %u, expected %u", seq,
                          c->next_seq);
    c->next_seq = seq + 1;
  }
  tt_mutex_lock(&es->lock);
  c->packets++;
  c->bytes += len;
  echo_log(es, c, "P%llu:%08x;", (unsigned long long)len, data ? test_hash(data, len) : 0u);
  if (es->cfg.keep_raw && data && len) {
    if (c->raw_len + len > c->raw_cap) {
      size_t cap = c->raw_cap ? c->raw_cap * 2 : 65536;
      while (cap < c->raw_len + len) cap *= 2;
      uint8_t *p = (uint8_t *)realloc(c->raw, cap);
      if (!p) test_fail(__FILE__, __LINE__, "out of memory");
      c->raw = p;
      c->raw_cap = cap;
    }
    memcpy(c->raw + c->raw_len, data, len);
    c->raw_len += len;
  }
  tt_mutex_unlock(&es->lock);

  int action = es->cfg.on_packet ? es->cfg.on_packet(es, c, data, len) : ECHO_DEFAULT;
  if (action == ECHO_DEFAULT || action == ECHO_CLOSE) {
    int rc = iocpsrv_send(es->srv, id, data, len);
    if (rc < 0) {
      tt_mutex_lock(&es->lock);
      es->send_errors++;
      es->last_send_error = rc;
      tt_mutex_unlock(&es->lock);
    }
  }
  echo_leave(es, c);
  tt_counter_add(&es->packets, 1);
  return action == ECHO_CLOSE || action == ECHO_SKIP_CLOSE;
}

static void echo_on_disconnect(echo_server_t *es, iocpsrv_conn_id_t id, void *user,
                               int reason, int pull) {
  echo_conn_t *c = echo_enter(es, id, "disconnect");
  if (!c) return;
  if (pull && user == NULL) {
    c->pull_null_user_disc++;
  } else if (user != c->expected_user) {
    echo_contract_error(es, c, "disconnect: conn_user %p, expected %p", user,
                        c->expected_user);
  }
  if (c->state == 3) echo_contract_error(es, c, "disconnect for a refused connection");
  if (c->state == 2) echo_contract_error(es, c, "second disconnect");
  if (reason < IOCPSRV_REASON_PEER_CLOSED || reason > IOCPSRV_REASON_SERVER_STOPPED)
    echo_contract_error(es, c, "disconnect reason %d out of range", reason);
  tt_mutex_lock(&es->lock);
  c->disconnects++;
  c->reason = reason;
  if (c->state != 3) c->state = 2;
  if (reason >= 0 && reason < 16) es->reasons[reason]++;
  echo_log(es, c, "D%d;", reason);
  tt_mutex_unlock(&es->lock);
  if (es->cfg.on_disconnect) es->cfg.on_disconnect(es, c, reason);
  echo_leave(es, c);
  tt_counter_add(&es->disconnects, 1);
}

static void echo_on_drain(echo_server_t *es, iocpsrv_conn_id_t id, void *user, int pull) {
  echo_conn_t *c = echo_enter(es, id, "drain");
  if (!c) return;
  if (!(pull && user == NULL) && user != c->expected_user)
    echo_contract_error(es, c, "drain: conn_user %p, expected %p", user, c->expected_user);
  if (c->state != 1) echo_contract_error(es, c, "drain callback in state %d", c->state);
  tt_mutex_lock(&es->lock);
  c->drains++;
  tt_mutex_unlock(&es->lock);
  echo_leave(es, c);
  tt_counter_add(&es->drains, 1);
}

/* ---- callback mode ---- */

static echo_server_t *echo_of(iocpsrv_t *server) {
  echo_server_t *es = (echo_server_t *)iocpsrv_user_data(server);
  if (!es || es->srv != server)
    test_fail(__FILE__, __LINE__, "iocpsrv_user_data(server) is not the echo server");
  return es;
}

static int IOCPSRV_CALL cb_connect(iocpsrv_t *server, iocpsrv_conn_id_t conn,
                                   const char *peer, void **conn_user) {
  echo_server_t *es = echo_of(server);
  echo_conn_t *c;
  if (!conn_user) {
    echo_contract_error(es, NULL, "connect callback with conn_user == NULL");
    return 0;
  }
  if (*conn_user != NULL)
    echo_contract_error(es, NULL, "connect callback: *conn_user starts as %p, not NULL",
                        *conn_user);
  int refuse = echo_on_connect(es, conn, peer, &c);
  *conn_user = c;
  return refuse;
}

static int IOCPSRV_CALL cb_packet(iocpsrv_t *server, iocpsrv_conn_id_t conn,
                                  void *conn_user, const uint8_t *data, size_t len) {
  return echo_on_packet(echo_of(server), conn, conn_user, data, len, 0);
}

static void IOCPSRV_CALL cb_disconnect(iocpsrv_t *server, iocpsrv_conn_id_t conn,
                                       void *conn_user, int reason) {
  echo_on_disconnect(echo_of(server), conn, conn_user, reason, 0);
}

static void IOCPSRV_CALL cb_drain(iocpsrv_t *server, iocpsrv_conn_id_t conn,
                                  void *conn_user) {
  echo_on_drain(echo_of(server), conn, conn_user, 0);
}

/* ---- pull mode ---- */

/* Wait until the wait handle is signalled (or timeout). */
static void echo_wait_on_handle(echo_server_t *es, int64_t h, int timeout_ms) {
#ifdef _WIN32
  WaitForSingleObject((HANDLE)(intptr_t)h, (DWORD)timeout_ms);
#else
  struct pollfd p;
  p.fd = (int)h;
  p.events = POLLIN;
  p.revents = 0;
  int n = poll(&p, 1, timeout_ms);
  if (n < 0 && errno != EINTR)
    echo_contract_error(es, NULL, "poll(2) on the wait handle failed: errno %d", errno);
#endif
}

static void echo_pump(void *arg) {
  echo_server_t *es = (echo_server_t *)arg;
  int batch = es->cfg.pull_batch > 0 ? es->cfg.pull_batch : 64;
  iocpsrv_event_t *ev = (iocpsrv_event_t *)calloc((size_t)batch, sizeof *ev);
  int64_t h = -1;
  if (es->cfg.pull_wait_handle) {
    h = iocpsrv_wait_handle(es->srv);
    if (h < 0) echo_contract_error(es, NULL, "iocpsrv_wait_handle: %lld", (long long)h);
  }
  for (;;) {
    int n;
    if (h >= 0) {
      echo_wait_on_handle(es, h, 1000);
      n = iocpsrv_poll(es->srv, ev, batch, 0);
    } else {
      n = iocpsrv_poll(es->srv, ev, batch, 250);
    }
    es->pump_result = n;
    if (n < 0) {
      if (n != IOCPSRV_ESTOPPED)
        echo_contract_error(es, NULL, "iocpsrv_poll returned %d %s", n, iocpsrv_err_name(n));
      break;
    }
    if (n > batch) {
      echo_contract_error(es, NULL, "iocpsrv_poll returned %d > max %d", n, batch);
      break;
    }
    int i;
    for (i = 0; i < n; i++) {
      iocpsrv_event_t *e = &ev[i];
      es->pump_events++;
      if (es->cfg.pull_pace_every > 0 && es->pump_events % es->cfg.pull_pace_every == 0)
        tt_sleep_ms(1); /* pacing a deliberately slow consumer */
      if (e->data == NULL)
        echo_contract_error(es, NULL, "event type %d with data == NULL", (int)e->type);
      switch (e->type) {
        case IOCPSRV_EVENT_CONNECT: {
          char peer[64] = "";
          if (e->data) {
            size_t l = strlen((const char *)e->data);
            if (l != e->len && l + 1 != e->len)
              echo_contract_error(es, NULL, "connect event: len %llu, peer text \"%s\"",
                                  (unsigned long long)e->len, (const char *)e->data);
            snprintf(peer, sizeof peer, "%s", (const char *)e->data);
          }
          echo_conn_t *c;
          if (echo_on_connect(es, e->conn, peer, &c) == 0) {
            int rc = iocpsrv_set_conn_user(es->srv, e->conn, c);
            /* The connection may already be gone (its disconnect queued behind). */
            if (rc < 0 && rc != IOCPSRV_ENOTCONN)
              echo_contract_error(es, c, "iocpsrv_set_conn_user: %s", iocpsrv_err_name(rc));
          } else {
            iocpsrv_disconnect(es->srv, e->conn, IOCPSRV_CLOSE_GRACEFUL);
          }
          break;
        }
        case IOCPSRV_EVENT_PACKET:
          if (echo_on_packet(es, e->conn, e->conn_user, e->data, e->len, 1))
            iocpsrv_disconnect(es->srv, e->conn, IOCPSRV_CLOSE_GRACEFUL);
          break;
        case IOCPSRV_EVENT_DISCONNECT:
          echo_on_disconnect(es, e->conn, e->conn_user, e->reason, 1);
          break;
        case IOCPSRV_EVENT_DRAIN:
          echo_on_drain(es, e->conn, e->conn_user, 1);
          break;
        default:
          echo_contract_error(es, NULL, "unknown event type %d", (int)e->type);
      }
    }
  }
  free(ev);
}

/* ---- lifecycle ---- */

echo_server_t *echo_create(const echo_config_t *cfg) {
  echo_server_t *es = (echo_server_t *)calloc(1, sizeof *es);
  if (!es) test_fail(__FILE__, __LINE__, "out of memory");
  if (cfg) es->cfg = *cfg;
  tt_mutex_init(&es->lock);
  tt_counter_init(&es->connects);
  tt_counter_init(&es->rejects);
  tt_counter_init(&es->packets);
  tt_counter_init(&es->disconnects);
  tt_counter_init(&es->drains);
  es->pump_result = 1;
  CHECK_OK(iocpsrv_create(&es->srv, es));
  CHECK(es->srv != NULL);
  CHECK(iocpsrv_user_data(es->srv) == es);
  int i;
  for (i = 0; i < es->cfg.nopts; i++) {
    int rc = iocpsrv_set_option(es->srv, es->cfg.opts[i].option, es->cfg.opts[i].value);
    if (rc < 0)
      test_fail(__FILE__, __LINE__, "iocpsrv_set_option(%d, %lld) failed: %s",
                es->cfg.opts[i].option, (long long)es->cfg.opts[i].value,
                iocpsrv_err_name(rc));
  }
  if (es->cfg.pull) CHECK_OK(iocpsrv_set_option(es->srv, IOCPSRV_OPT_PULL_MODE, 1));
  if (getenv("IOCPSRV_TEST_POOL")) {
    /* The same tests with a dynamic pool that grows and shrinks eagerly: the contract
     * must hold whatever the pool does. */
    CHECK_OK(iocpsrv_set_option(es->srv, IOCPSRV_OPT_POOL_MAX, 64));
    CHECK_OK(iocpsrv_set_option(es->srv, IOCPSRV_OPT_POOL_BUSY_MS, 20));
    CHECK_OK(iocpsrv_set_option(es->srv, IOCPSRV_OPT_POOL_IDLE_MS, 100));
  }
  CHECK_OK(iocpsrv_set_connect_cb(es->srv, cb_connect));
  CHECK_OK(iocpsrv_set_packet_cb(es->srv, cb_packet));
  CHECK_OK(iocpsrv_set_disconnect_cb(es->srv, cb_disconnect));
  if (!es->cfg.no_drain_cb) CHECK_OK(iocpsrv_set_drain_cb(es->srv, cb_drain));
  if (es->cfg.setup) es->cfg.setup(es);
  return es;
}

int echo_listen(echo_server_t *es) {
  int rc = iocpsrv_listen(es->srv, es->cfg.host ? es->cfg.host : "127.0.0.1", 0);
  if (rc < 0) return rc;
  es->port = iocpsrv_port(es->srv);
  CHECK_GT(es->port, 0);
  CHECK_LT(es->port, 65536);
  if (es->cfg.pull && !es->cfg.pull_manual) {
    es->pump_result = 1;
    es->pump = tt_thread_start(echo_pump, es);
    CHECK(es->pump != NULL);
  }
  return rc;
}

echo_server_t *echo_start(const echo_config_t *cfg) {
  echo_server_t *es = echo_create(cfg);
  CHECK_OK(echo_listen(es));
  return es;
}

int echo_stop(echo_server_t *es, int timeout_ms) {
  int rc = iocpsrv_stop(es->srv, timeout_ms);
  if (es->pump) {
    tt_thread_join(es->pump);
    es->pump = NULL;
  }
  return rc;
}

iocpsrv_stats_t echo_stats(echo_server_t *es) {
  iocpsrv_stats_t st;
  memset(&st, 0, sizeof st);
  st.struct_size = sizeof st;
  CHECK_OK(iocpsrv_stats(es->srv, &st));
  return st;
}

void echo_check_clean(echo_server_t *es) {
  if (es->contract_errors)
    test_fail(__FILE__, __LINE__, "%d contract breach(es); first: %s", es->contract_errors,
              es->first_error);
  iocpsrv_stats_t st = echo_stats(es);
  if (st.connections_now != 0)
    test_fail(__FILE__, __LINE__, "after stop: stats.connections_now = %llu, expected 0",
              (unsigned long long)st.connections_now);
  int64_t connects = tt_counter_get(&es->connects);
  int64_t disconnects = tt_counter_get(&es->disconnects);
  tt_mutex_lock(&es->lock);
  echo_conn_t *c;
  for (c = es->all; c; c = c->next_all) {
    if (c->state == 3) {
      if (c->disconnects != 0) break;
      continue;
    }
    if (c->disconnects != 1 || c->state != 2) break;
  }
  tt_mutex_unlock(&es->lock);
  if (c)
    test_fail(__FILE__, __LINE__,
              "after stop: connection %llu (%s) has state %d and %d disconnect callbacks",
              (unsigned long long)c->id, c->peer, c->state, c->disconnects);
  if (connects != disconnects)
    test_fail(__FILE__, __LINE__, "after stop: %lld connects but %lld disconnects",
              (long long)connects, (long long)disconnects);
  if (st.connections_total < (uint64_t)connects)
    test_fail(__FILE__, __LINE__, "stats.connections_total %llu < %lld connect callbacks",
              (unsigned long long)st.connections_total, (long long)connects);
  if (st.connections_rejected != (uint64_t)tt_counter_get(&es->rejects))
    test_fail(__FILE__, __LINE__, "stats.connections_rejected %llu, refused %lld",
              (unsigned long long)st.connections_rejected,
              (long long)tt_counter_get(&es->rejects));
  if (es->cfg.pull && es->pump_result != IOCPSRV_ESTOPPED && es->pump_result != 1)
    test_fail(__FILE__, __LINE__, "pull pump ended with %d %s", es->pump_result,
              iocpsrv_err_name(es->pump_result));
}

void echo_destroy(echo_server_t *es) {
  if (es->pump) {
    iocpsrv_stop(es->srv, 0);
    tt_thread_join(es->pump);
    es->pump = NULL;
  }
  CHECK_OK(iocpsrv_destroy(es->srv));
  echo_free(es);
}

void echo_free(echo_server_t *es) {
  if (es->pump) {
    tt_thread_join(es->pump);
    es->pump = NULL;
  }
  echo_conn_t *c = es->all;
  while (c) {
    echo_conn_t *n = c->next_all;
    free(c->log);
    free(c->raw);
    free(c);
    c = n;
  }
  tt_counter_destroy(&es->connects);
  tt_counter_destroy(&es->rejects);
  tt_counter_destroy(&es->packets);
  tt_counter_destroy(&es->disconnects);
  tt_counter_destroy(&es->drains);
  tt_mutex_destroy(&es->lock);
  free(es);
}

void echo_finish(echo_server_t *es) {
  int rc = echo_stop(es, 5000);
  if (rc < 0 && rc != IOCPSRV_ESTOPPED)
    test_fail(__FILE__, __LINE__, "iocpsrv_stop failed: %s", iocpsrv_err_name(rc));
  echo_check_clean(es);
  echo_destroy(es);
}

/* ---- queries ---- */

echo_conn_t *echo_wait_peer(echo_server_t *es, const char *peer, int timeout_ms) {
  int64_t deadline = tt_now_ms() + timeout_ms;
  for (;;) {
    int64_t seen = tt_counter_get(&es->connects);
    echo_conn_t *c, *found = NULL;
    tt_mutex_lock(&es->lock);
    for (c = es->all; c; c = c->next_all)
      if (strcmp(c->peer, peer) == 0 && c->state != 0) {
        found = c; /* newest first: a reused port finds the live connection */
        break;
      }
    tt_mutex_unlock(&es->lock);
    if (found) return found;
    int left = (int)(deadline - tt_now_ms());
    if (left <= 0) return NULL;
    /* Wake on the next connect; refused clients do not bump it, hence the cap. */
    tt_counter_wait(&es->connects, seen + 1, left < 50 ? left : 50);
  }
}

echo_conn_t *echo_conn_for(echo_server_t *es, ts_sock_t s) {
  char local[80];
  if (ts_local_addr(s, local, sizeof local) != 0)
    test_fail(__FILE__, __LINE__, "getsockname failed");
  echo_conn_t *c = echo_wait_peer(es, local, TS_WAIT_MS);
  if (!c)
    test_fail(__FILE__, __LINE__, "no connect callback for client %s within %d ms", local,
              TS_WAIT_MS);
  return c;
}

int echo_wait_disconnect(echo_server_t *es, echo_conn_t *c, int timeout_ms) {
  int64_t deadline = tt_now_ms() + timeout_ms;
  for (;;) {
    int64_t seen = tt_counter_get(&es->disconnects);
    tt_mutex_lock(&es->lock);
    int done = c->disconnects > 0;
    tt_mutex_unlock(&es->lock);
    if (done) return 0;
    int left = (int)(deadline - tt_now_ms());
    if (left <= 0) return -1;
    tt_counter_wait(&es->disconnects, seen + 1, left);
  }
}

int echo_wait_packets(echo_server_t *es, echo_conn_t *c, uint64_t n, int timeout_ms) {
  int64_t deadline = tt_now_ms() + timeout_ms;
  for (;;) {
    int64_t seen = tt_counter_get(&es->packets);
    tt_mutex_lock(&es->lock);
    int done = c->packets >= n && !c->busy;
    tt_mutex_unlock(&es->lock);
    if (done) return 0;
    int left = (int)(deadline - tt_now_ms());
    if (left <= 0) return -1;
    tt_counter_wait(&es->packets, seen + 1, left);
  }
}

echo_conn_t echo_snapshot(echo_server_t *es, echo_conn_t *c) {
  tt_mutex_lock(&es->lock);
  echo_conn_t copy = *c;
  tt_mutex_unlock(&es->lock);
  return copy;
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

char *echo_digests(echo_server_t *es) {
  tt_mutex_lock(&es->lock);
  size_t n = 0, total = 1;
  echo_conn_t *c;
  for (c = es->all; c; c = c->next_all)
    if (c->state != 3) {
      n++;
      total += c->log_len + 1;
    }
  const char **v = (const char **)calloc(n ? n : 1, sizeof *v);
  char *out = (char *)malloc(total);
  if (!v || !out) test_fail(__FILE__, __LINE__, "out of memory");
  size_t i = 0;
  for (c = es->all; c; c = c->next_all)
    if (c->state != 3) v[i++] = c->log ? c->log : "";
  qsort(v, n, sizeof *v, cmp_str);
  size_t pos = 0;
  for (i = 0; i < n; i++) {
    size_t l = strlen(v[i]);
    memcpy(out + pos, v[i], l);
    pos += l;
    out[pos++] = '\n';
  }
  out[pos] = 0;
  tt_mutex_unlock(&es->lock);
  free(v);
  return out;
}
