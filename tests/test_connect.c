/*
 * test_connect.c -- the client role (iocpsrv_connect, iocpsrv_start; issue 20).
 *
 * A client engine records every outbound connection's callbacks and fails the test on
 * any breach of the contract it can see: a callback for an id before iocpsrv_connect
 * handed it out is fine (conn_user names the attempt), but two callbacks of one
 * connection at once, a packet before connect, anything after the disconnect, a second
 * disconnect, a connect after a failure, or an echo out of order or corrupted is not.
 * Every attempt must end with exactly one disconnect.
 *
 * Sub-tests: echoes through a client engine to an echo server (IPv4 and IPv6), one
 * engine that listens and connects to itself (ids never shared), 1,000 connections at
 * once, refused, timed out (a listener whose backlog is full), names (localhost and
 * one that does not resolve), stop with attempts in flight, the call's own errors,
 * disconnect and info while connecting, pull mode, and IOCPSRV_OPT_CONNECT_SOURCE.
 */
#include <stdlib.h>
#include <string.h>
#ifndef _WIN32
#  include <sys/socket.h> /* listen */
#endif

#include "echo.h"
#include "sock.h"
#include "test.h"
#include "thread.h"

/* ---------------------------------------------------------------- the client ---- */

typedef struct attempt_s {
  struct client_s *cl;
  iocpsrv_conn_id_t id;    /* as iocpsrv_connect returned it (0 until then) */
  iocpsrv_conn_id_t seen;  /* as the callbacks named it */
  int busy, connects, disconnects, reason;
  int refuse;              /* the connect callback refuses it */
  uint32_t sent, echoed;   /* packets sent from the connect callback, echoes verified */
  char peer[64];
} attempt_t;

typedef struct client_s {
  iocpsrv_t *srv;
  int packets_each;        /* sent from the connect callback */
  size_t packet_size;
  int close_when_echoed;   /* disconnect gracefully once every echo is back */
  int stopped;             /* set once iocpsrv_stop returned: no callback may follow */
  tt_mutex_t lock;
  tt_counter_t connected, ended, echoes;
  int reasons[32];
  int errors;
  char first_error[256];
} client_t;

static void client_error(client_t *cl, const char *what, iocpsrv_conn_id_t id) {
  tt_mutex_lock(&cl->lock);
  if (cl->errors++ == 0)
    snprintf(cl->first_error, sizeof cl->first_error, "%s (conn %llu)", what,
             (unsigned long long)id);
  tt_mutex_unlock(&cl->lock);
}

/* Enter one of the attempt's callbacks: serialized, for the id it started with. */
static void enter(attempt_t *a, iocpsrv_conn_id_t id, const char *cb) {
  client_t *cl = a->cl;
  tt_mutex_lock(&cl->lock);
  int clash = a->busy++ != 0;
  int late = cl->stopped || a->disconnects != 0;
  int other = a->seen && a->seen != id;
  a->seen = id;
  tt_mutex_unlock(&cl->lock);
  if (clash) client_error(cl, "two callbacks of one connection at once", id);
  if (late) client_error(cl, cb, id);
  if (other) client_error(cl, "callbacks of one attempt for two ids", id);
}

static void leave(attempt_t *a) {
  tt_mutex_lock(&a->cl->lock);
  a->busy--;
  tt_mutex_unlock(&a->cl->lock);
}

/* 0, or IOCPSRV_ESTOPPED once a stop has begun (a connection established as the stop
 * starts still meets the host, as an accepted one does). */
static void send_seq(iocpsrv_t *srv, iocpsrv_conn_id_t id, uint32_t seq, size_t size) {
  uint8_t buf[4096];
  size_t n = size < 4 ? 4 : size;
  CHECK(n <= sizeof buf);
  test_fill_pattern(buf, n, seq + id);
  test_put_u32le(buf, seq);
  int rc = iocpsrv_send(srv, id, buf, n);
  if (rc != IOCPSRV_ESTOPPED) CHECK_OK(rc);
}

static int IOCPSRV_CALL cl_connect(iocpsrv_t *srv, iocpsrv_conn_id_t id, const char *peer,
                                   void **user) {
  attempt_t *a = (attempt_t *)*user;
  client_t *cl = (client_t *)iocpsrv_user_data(srv);
  CHECK(a != NULL && a->cl == cl); /* *conn_user starts as iocpsrv_connect's */
  enter(a, id, "connect after the disconnect or the stop");
  if (a->connects++) client_error(cl, "a second connect", id);
  snprintf(a->peer, sizeof a->peer, "%s", peer);
  for (int i = 0; i < cl->packets_each; i++) send_seq(srv, id, (uint32_t)i, cl->packet_size);
  a->sent = (uint32_t)cl->packets_each;
  int refuse = a->refuse;
  leave(a);
  tt_counter_add(&cl->connected, 1);
  return refuse;
}

static int IOCPSRV_CALL cl_packet(iocpsrv_t *srv, iocpsrv_conn_id_t id, void *user,
                                  const uint8_t *data, size_t len) {
  attempt_t *a = (attempt_t *)user;
  client_t *cl = (client_t *)iocpsrv_user_data(srv);
  enter(a, id, "packet after the disconnect or the stop");
  if (!a->connects) client_error(cl, "packet before connect", id);
  size_t n = cl->packet_size < 4 ? 4 : cl->packet_size;
  uint8_t want[4096];
  test_fill_pattern(want, n, a->echoed + id);
  test_put_u32le(want, a->echoed);
  if (len != n || memcmp(data, want, n) != 0) client_error(cl, "echo out of order or corrupted", id);
  a->echoed++;
  int done = a->echoed == a->sent && cl->close_when_echoed;
  leave(a);
  tt_counter_add(&cl->echoes, 1);
  return done; /* non-zero: close gracefully */
}

static void IOCPSRV_CALL cl_disconnect(iocpsrv_t *srv, iocpsrv_conn_id_t id, void *user,
                                       int reason) {
  attempt_t *a = (attempt_t *)user;
  client_t *cl = (client_t *)iocpsrv_user_data(srv);
  enter(a, id, "disconnect after the stop or a second one");
  tt_mutex_lock(&cl->lock);
  a->disconnects++;
  a->reason = reason;
  if (reason > 0 && reason < 32) cl->reasons[reason]++;
  tt_mutex_unlock(&cl->lock);
  leave(a);
  tt_counter_add(&cl->ended, 1);
}

static client_t *client_new(int packets_each, size_t packet_size) {
  client_t *cl = calloc(1, sizeof *cl);
  CHECK(cl != NULL);
  cl->packets_each = packets_each;
  cl->packet_size = packet_size;
  cl->close_when_echoed = 1;
  tt_mutex_init(&cl->lock);
  tt_counter_init(&cl->connected);
  tt_counter_init(&cl->ended);
  tt_counter_init(&cl->echoes);
  CHECK_OK(iocpsrv_create(&cl->srv, cl));
  CHECK_OK(iocpsrv_set_connect_cb(cl->srv, cl_connect));
  CHECK_OK(iocpsrv_set_packet_cb(cl->srv, cl_packet));
  CHECK_OK(iocpsrv_set_disconnect_cb(cl->srv, cl_disconnect));
  return cl;
}

static attempt_t *attempts_new(client_t *cl, int n) {
  attempt_t *a = calloc((size_t)n, sizeof *a);
  CHECK(a != NULL);
  for (int i = 0; i < n; i++) a[i].cl = cl;
  return a;
}

static void client_connect(client_t *cl, attempt_t *a, const char *host, int port) {
  iocpsrv_conn_id_t id = 0;
  CHECK_OK(iocpsrv_connect(cl->srv, host, port, a, &id));
  CHECK_NE(id, 0);
  tt_mutex_lock(&cl->lock);
  a->id = id;
  tt_mutex_unlock(&cl->lock);
}

/* Stop, then: no breach, every attempt exactly one disconnect, none left. */
static void client_finish(client_t *cl, attempt_t *a, int n) {
  CHECK_OK(iocpsrv_stop(cl->srv, 2000));
  tt_mutex_lock(&cl->lock);
  cl->stopped = 1;
  tt_mutex_unlock(&cl->lock);
  CHECK_MSG(cl->errors == 0, "%d contract errors, first: %s", cl->errors, cl->first_error);
  for (int i = 0; i < n; i++) {
    CHECK_EQ(a[i].disconnects, a[i].refuse ? 0 : 1); /* refused: no disconnect */
    CHECK_EQ(a[i].seen, a[i].id);
  }
  iocpsrv_stats_t st = test_stats(cl->srv);
  CHECK_EQ(st.connections_now, 0);
}

static void client_destroy(client_t *cl, attempt_t *a) {
  CHECK_OK(iocpsrv_destroy(cl->srv));
  CHECK_MSG(cl->errors == 0, "%d contract errors, first: %s", cl->errors, cl->first_error);
  tt_counter_destroy(&cl->connected);
  tt_counter_destroy(&cl->ended);
  tt_counter_destroy(&cl->echoes);
  tt_mutex_destroy(&cl->lock);
  free(cl);
  free(a);
}

/* ------------------------------------------------------------------ echoes ---- */

static void echo_through(const char *host, int n, int packets_each, size_t size) {
  echo_config_t cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.host = host;
  echo_server_t *es = echo_start(&cfg);
  client_t *cl = client_new(packets_each, size);
  attempt_t *a = attempts_new(cl, n);
  CHECK_OK(iocpsrv_start(cl->srv));
  CHECK_ERR(iocpsrv_port(cl->srv), IOCPSRV_ESTOPPED); /* no listener */
  for (int i = 0; i < n; i++) client_connect(cl, &a[i], host, es->port);
  CHECK_OK(tt_counter_wait(&cl->ended, n, 30000));
  CHECK_EQ(tt_counter_get(&cl->connected), n);
  CHECK_EQ(tt_counter_get(&cl->echoes), (int64_t)n * packets_each);
  CHECK_EQ(cl->reasons[IOCPSRV_REASON_LOCAL_CLOSE], n); /* we closed once echoed */
  char want[64];
  snprintf(want, sizeof want, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, es->port);
  for (int i = 0; i < n; i++) CHECK_STREQ(a[i].peer, want);
  iocpsrv_stats_t st = test_stats(cl->srv);
  CHECK_EQ(st.connections_total, n);
  client_finish(cl, a, n);
  client_destroy(cl, a);
  ECHO_CHECK_STAT(es, connections_now, 0);
  echo_finish(es);
}

static void connect_echo_two_engines(void) { echo_through("127.0.0.1", 4, 200, 100); }

static void connect_echo_ipv6(void) {
  if (!ts_ipv6_available()) {
    test_skip("no IPv6 on this machine");
    return;
  }
  echo_through("::1", 2, 50, 1000);
}

static void connect_1000_at_once(void) { echo_through("127.0.0.1", 1000, 2, 16); }

/* One engine listening and connecting to itself: the outbound side (conn_user set)
 * verifies echoes, the inbound side (conn_user NULL) echoes. */
static tt_mutex_t self_lock;
static iocpsrv_conn_id_t self_ids[64];
static int self_nids;

static void self_note_id(iocpsrv_conn_id_t id) {
  tt_mutex_lock(&self_lock);
  for (int i = 0; i < self_nids; i++) CHECK_NE(self_ids[i], id);
  CHECK_LT(self_nids, 64);
  self_ids[self_nids++] = id;
  tt_mutex_unlock(&self_lock);
}

static int IOCPSRV_CALL self_connect(iocpsrv_t *srv, iocpsrv_conn_id_t id, const char *peer,
                                     void **user) {
  iocpsrv_conn_info_t info = test_conn_info(srv, id);
  CHECK_EQ(!!(info.flags & IOCPSRV_CONN_OUTBOUND), *user != NULL);
  CHECK_EQ(info.flags & IOCPSRV_CONN_CONNECTING, 0);
  self_note_id(id);
  return *user ? cl_connect(srv, id, peer, user) : 0;
}

static int IOCPSRV_CALL self_packet(iocpsrv_t *srv, iocpsrv_conn_id_t id, void *user,
                                    const uint8_t *data, size_t len) {
  if (user) return cl_packet(srv, id, user, data, len);
  CHECK_OK(iocpsrv_send(srv, id, data, len));
  return 0;
}

static void IOCPSRV_CALL self_disconnect(iocpsrv_t *srv, iocpsrv_conn_id_t id, void *user,
                                         int reason) {
  if (user) cl_disconnect(srv, id, user, reason);
}

static void connect_to_itself(void) {
  tt_mutex_init(&self_lock);
  self_nids = 0;
  client_t *cl = client_new(100, 64);
  attempt_t *a = attempts_new(cl, 8);
  CHECK_OK(iocpsrv_set_connect_cb(cl->srv, self_connect));
  CHECK_OK(iocpsrv_set_packet_cb(cl->srv, self_packet));
  CHECK_OK(iocpsrv_set_disconnect_cb(cl->srv, self_disconnect));
  CHECK_OK(iocpsrv_listen(cl->srv, "127.0.0.1", 0));
  CHECK_ERR(iocpsrv_start(cl->srv), IOCPSRV_ESTATE);
  int port = iocpsrv_port(cl->srv);
  for (int round = 0; round < 2; round++) /* the second round reuses freed slots */
    for (int i = round * 4; i < round * 4 + 4; i++) {
      client_connect(cl, &a[i], "127.0.0.1", port);
      if (i % 4 == 3) CHECK_OK(tt_counter_wait(&cl->ended, i + 1, 10000));
    }
  CHECK_EQ(tt_counter_get(&cl->echoes), 8 * 100);
  CHECK_EQ(self_nids, 16); /* 8 outbound and 8 inbound, all different */
  client_finish(cl, a, 8);
  client_destroy(cl, a);
  tt_mutex_destroy(&self_lock);
}

/* A gateway's way: a connection's packet callback opens another connection (to the
 * same server here); the new one is served on the workers while that callback runs. */
typedef struct chain_s {
  client_t *cl;
  attempt_t *next; /* opened from the first echo of the attempt before it */
  int port;
} chain_t;
static chain_t chain;

static int IOCPSRV_CALL chain_packet(iocpsrv_t *srv, iocpsrv_conn_id_t id, void *user,
                                     const uint8_t *data, size_t len) {
  attempt_t *a = (attempt_t *)user;
  if (a->echoed == 0 && a + 1 < chain.next) { /* not the last in the chain */
    iocpsrv_conn_id_t next_id = 0;
    CHECK_OK(iocpsrv_connect(srv, "127.0.0.1", chain.port, a + 1, &next_id));
    CHECK_NE(next_id, id);
  }
  return cl_packet(srv, id, user, data, len);
}

static void connect_from_a_callback(void) {
  echo_config_t cfg;
  memset(&cfg, 0, sizeof cfg);
  echo_server_t *es = echo_start(&cfg);
  client_t *cl = client_new(5, 16);
  attempt_t *a = attempts_new(cl, 20);
  CHECK_OK(iocpsrv_set_packet_cb(cl->srv, chain_packet));
  chain.cl = cl;
  chain.next = a + 20;
  chain.port = es->port;
  CHECK_OK(iocpsrv_start(cl->srv));
  client_connect(cl, &a[0], "127.0.0.1", es->port);
  CHECK_OK(tt_counter_wait(&cl->ended, 20, 20000)); /* each opened the next */
  CHECK_EQ(tt_counter_get(&cl->echoes), 20 * 5);
  for (int i = 1; i < 20; i++) a[i].id = a[i].seen; /* ids were handed out in callbacks */
  client_finish(cl, a, 20);
  client_destroy(cl, a);
  echo_finish(es);
}

/* An outbound connection once established is served like an accepted one, options
 * included: the connect callback may refuse it (no disconnect, counted as rejected),
 * the idle timeout ends it, and an engine that wants PROXY headers from its clients
 * does not want one from the server it called. */
static void connect_served_like_a_client(void) {
  echo_config_t cfg;
  memset(&cfg, 0, sizeof cfg);
  echo_server_t *es = echo_start(&cfg);
  client_t *cl = client_new(3, 16);
  cl->close_when_echoed = 0;
  attempt_t *a = attempts_new(cl, 2);
  a[0].refuse = 1;
  CHECK_OK(iocpsrv_set_option(cl->srv, IOCPSRV_OPT_IDLE_TIMEOUT_MS, 300));
  CHECK_OK(iocpsrv_set_option(cl->srv, IOCPSRV_OPT_PROXY_PROTOCOL, IOCPSRV_PROXY_REQUIRED));
  CHECK_OK(iocpsrv_listen(cl->srv, "127.0.0.1", 0));
  client_connect(cl, &a[0], "127.0.0.1", es->port);
  client_connect(cl, &a[1], "127.0.0.1", es->port);
  CHECK_OK(tt_counter_wait(&cl->ended, 1, 10000)); /* the idle one */
  CHECK_EQ(a[1].reason, IOCPSRV_REASON_IDLE_TIMEOUT);
  CHECK_EQ(a[1].echoed, 3);
  ECHO_WAIT_FOR(test_stats(cl->srv).connections_now == 0);
  iocpsrv_stats_t st = test_stats(cl->srv);
  CHECK_EQ(st.connections_now, 0);
  CHECK_EQ(st.connections_rejected, 1);
  CHECK_EQ(st.idle_timeouts, 1);
  CHECK_EQ(st.protocol_errors, 0);
  a[0].seen = a[0].id;
  client_finish(cl, a, 2);
  CHECK_EQ(a[0].disconnects, 0);
  client_destroy(cl, a);
  echo_finish(es);
}

/* ---------------------------------------------------------------- failures ---- */

/* n attempts that must all fail with `reason`, and never connect. */
static void expect_failures(const char *host, int port, int n, int reason,
                            int64_t timeout_ms) {
  client_t *cl = client_new(0, 0);
  attempt_t *a = attempts_new(cl, n);
  if (timeout_ms) CHECK_OK(iocpsrv_set_option(cl->srv, IOCPSRV_OPT_CONNECT_TIMEOUT_MS, timeout_ms));
  CHECK_OK(iocpsrv_start(cl->srv));
  int64_t t0 = tt_now_ms();
  for (int i = 0; i < n; i++) client_connect(cl, &a[i], host, port);
  CHECK_OK(tt_counter_wait(&cl->ended, n, 20000));
  int64_t took = tt_now_ms() - t0;
  CHECK_EQ(tt_counter_get(&cl->connected), 0);
  for (int i = 0; i < n; i++) CHECK_MSG(a[i].reason == reason, "attempt %d: %s, expected %s", i,
                                        iocpsrv_reason_name(a[i].reason), iocpsrv_reason_name(reason));
  if (timeout_ms) CHECK_GE(took, timeout_ms - 5); /* not before its time */
  client_finish(cl, a, n);
  client_destroy(cl, a);
}

static void connect_refused(void) {
  expect_failures("127.0.0.1", ts_dead_port(), 20, IOCPSRV_REASON_CONNECT_REFUSED, 0);
}

static void connect_name_not_resolved(void) {
  expect_failures("no-such-host.invalid", 80, 3, IOCPSRV_REASON_NAME_NOT_RESOLVED, 0);
}

/* A listener nobody accepts from, its backlog filled by plain sockets: further SYNs are
 * dropped, so a connect to it neither succeeds nor fails until the timeout. */
static ts_sock_t full_listener(int *port, ts_sock_t *fillers, int nfill) {
  ts_sock_t l = ts_listen("127.0.0.1", 0, port);
  CHECK(l != TS_INVALID);
  listen(l, 0); /* the smallest backlog */
  for (int i = 0; i < nfill; i++) fillers[i] = ts_connect("127.0.0.1", *port, 300);
  return l;
}

static void close_fillers(ts_sock_t l, ts_sock_t *fillers, int nfill) {
  for (int i = 0; i < nfill; i++)
    if (fillers[i] != TS_INVALID) ts_close(fillers[i]);
  ts_close(l);
}

static void connect_timeout(void) {
  int port;
  ts_sock_t fill[4];
  ts_sock_t l = full_listener(&port, fill, 4);
  expect_failures("127.0.0.1", port, 3, IOCPSRV_REASON_CONNECT_TIMEOUT, 600);
  close_fillers(l, fill, 4);
}

/* A name whose lookup works ("localhost"): the resolver thread hands the addresses to
 * a worker, which tries them in order (::1 may be refused where only 127.0.0.1 has the
 * server: the next one is tried). */
static void connect_by_name(void) {
  echo_config_t cfg;
  memset(&cfg, 0, sizeof cfg);
  echo_server_t *es = echo_start(&cfg); /* 127.0.0.1 */
  client_t *cl = client_new(10, 32);
  attempt_t *a = attempts_new(cl, 5);
  CHECK_OK(iocpsrv_start(cl->srv));
  for (int i = 0; i < 5; i++) client_connect(cl, &a[i], "localhost", es->port);
  CHECK_OK(tt_counter_wait(&cl->ended, 5, 20000));
  CHECK_EQ(tt_counter_get(&cl->connected), 5);
  CHECK_EQ(tt_counter_get(&cl->echoes), 50);
  for (int i = 0; i < 5; i++) CHECK_EQ(strncmp(a[i].peer, "127.0.0.1:", 10), 0);
  client_finish(cl, a, 5);
  client_destroy(cl, a);
  echo_finish(es);
}

/* Stop with attempts of every kind in flight: hanging, refused, resolving, connected.
 * After stop returns no callback comes, and each attempt had its one disconnect. */
static void connect_stop_in_flight(void) {
  int port;
  ts_sock_t fill[4];
  ts_sock_t l = full_listener(&port, fill, 4);
  echo_config_t cfg;
  memset(&cfg, 0, sizeof cfg);
  echo_server_t *es = echo_start(&cfg);
  int dead = ts_dead_port();
  for (int round = 0; round < 3; round++) {
    client_t *cl = client_new(1, 8);
    cl->close_when_echoed = 0; /* the echoed ones stay open until the stop */
    attempt_t *a = attempts_new(cl, 200);
    CHECK_OK(iocpsrv_start(cl->srv));
    for (int i = 0; i < 200; i++) {
      const char *host = i % 4 == 2 ? "localhost" : "127.0.0.1";
      int p = i % 4 == 0 ? port : i % 4 == 1 ? dead : es->port;
      client_connect(cl, &a[i], host, p);
    }
    if (round == 1) CHECK_OK(tt_counter_wait(&cl->echoes, 50, 10000)); /* some echoed */
    client_finish(cl, a, 200); /* the stop: one disconnect each, none after */
    int stopped = 0, refused = 0;
    for (int i = 0; i < 200; i++) {
      stopped += a[i].reason == IOCPSRV_REASON_SERVER_STOPPED;
      refused += a[i].reason == IOCPSRV_REASON_CONNECT_REFUSED;
    }
    CHECK_GE(stopped, 50); /* at least the hanging ones */
    CHECK_EQ(stopped + refused, 200);
    client_destroy(cl, a);
  }
  echo_finish(es);
  close_fillers(l, fill, 4);
}

/* The thread that called iocpsrv_connect ends while the attempt is still under way
 * (Wine cancels some overlapped I/O of a thread that exits, see docs/windows.md; a
 * pending ConnectEx must survive it). The listener's backlog is full at first, so the
 * attempt is pending when the thread ends; then room is made and it must connect. */
typedef struct exiting_s {
  client_t *cl;
  attempt_t *a;
  int port;
} exiting_t;

static void connect_and_exit(void *arg) {
  exiting_t *x = (exiting_t *)arg;
  client_connect(x->cl, x->a, "127.0.0.1", x->port);
}

static void connect_from_a_thread_that_exits(void) {
  int port;
  ts_sock_t fill[4];
  ts_sock_t l = full_listener(&port, fill, 4);
  client_t *cl = client_new(0, 0);
  cl->close_when_echoed = 0;
  attempt_t *a = attempts_new(cl, 1);
  CHECK_OK(iocpsrv_set_option(cl->srv, IOCPSRV_OPT_CONNECT_TIMEOUT_MS, 20000));
  CHECK_OK(iocpsrv_start(cl->srv));
  exiting_t x = {cl, &a[0], port};
  tt_thread_join(tt_thread_start(connect_and_exit, &x));
  iocpsrv_conn_info_t info = test_conn_info(cl->srv, a[0].id);
  CHECK(info.flags & IOCPSRV_CONN_CONNECTING); /* still pending as the thread is gone */
  for (int i = 0; i < 4; i++) { /* room in the backlog: accept what waits there */
    ts_sock_t s = ts_readable(l, 0) > 0 ? accept(l, NULL, NULL) : TS_INVALID;
    if (s != TS_INVALID) ts_close(s);
    if (fill[i] != TS_INVALID) ts_close(fill[i]);
    fill[i] = TS_INVALID;
  }
  CHECK_OK(tt_counter_wait(&cl->connected, 1, 15000)); /* the SYN is sent again */
  client_finish(cl, a, 1);
  CHECK_EQ(a[0].reason, IOCPSRV_REASON_SERVER_STOPPED);
  client_destroy(cl, a);
  close_fillers(l, fill, 4);
}

/* --------------------------------------------------------------- the call ---- */

static void connect_call_errors(void) {
  client_t *cl = client_new(0, 0);
  attempt_t *a = attempts_new(cl, 4);
  iocpsrv_conn_id_t id = 99;
  CHECK_ERR(iocpsrv_connect(cl->srv, "127.0.0.1", 80, a, &id), IOCPSRV_ESTOPPED);
  CHECK_EQ(id, 0);
  CHECK_ERR(iocpsrv_connect(NULL, "127.0.0.1", 80, a, &id), IOCPSRV_EINVAL);
  CHECK_OK(iocpsrv_set_option(cl->srv, IOCPSRV_OPT_MAX_CONNECTIONS, 2));
  CHECK_OK(iocpsrv_set_option_str(cl->srv, IOCPSRV_OPT_CONNECT_SOURCE, "127.0.0.1"));
  CHECK_ERR(iocpsrv_set_option_str(cl->srv, IOCPSRV_OPT_CONNECT_SOURCE, "not-an-address"),
            IOCPSRV_EINVAL);
  char text[64];
  CHECK_EQ(iocpsrv_get_option_str(cl->srv, IOCPSRV_OPT_CONNECT_SOURCE, text, sizeof text), 9);
  CHECK_STREQ(text, "127.0.0.1");
  CHECK_OK(iocpsrv_start(cl->srv));
  CHECK_ERR(iocpsrv_start(cl->srv), IOCPSRV_ESTATE);
  CHECK_ERR(iocpsrv_listen(cl->srv, "127.0.0.1", 0), IOCPSRV_ESTATE);
  CHECK_ERR(iocpsrv_connect(cl->srv, NULL, 80, a, &id), IOCPSRV_EINVAL);
  CHECK_ERR(iocpsrv_connect(cl->srv, "", 80, a, &id), IOCPSRV_EINVAL);
  CHECK_ERR(iocpsrv_connect(cl->srv, "127.0.0.1", 0, a, &id), IOCPSRV_EINVAL);
  CHECK_ERR(iocpsrv_connect(cl->srv, "127.0.0.1", 65536, a, &id), IOCPSRV_EINVAL);
  CHECK_ERR(iocpsrv_connect(cl->srv, "127.0.0.1", 80, a, NULL), IOCPSRV_EINVAL);
  CHECK_ERR(iocpsrv_connect(cl->srv, "::1", 80, a, &id), IOCPSRV_EADDRNOTAVAIL); /* source v4 */
  /* Two attempts that hang hold both slots; the third finds none. */
  int port;
  ts_sock_t fill[4];
  ts_sock_t l = full_listener(&port, fill, 4);
  client_connect(cl, &a[0], "127.0.0.1", port);
  client_connect(cl, &a[1], "127.0.0.1", port);
  CHECK_ERR(iocpsrv_connect(cl->srv, "127.0.0.1", port, &a[2], &id), IOCPSRV_ELIMIT);
  /* While connecting: info says so, sending is not possible yet, user may change. */
  iocpsrv_conn_info_t info = test_conn_info(cl->srv, a[0].id);
  CHECK_EQ(info.flags & (IOCPSRV_CONN_OUTBOUND | IOCPSRV_CONN_CONNECTING),
           IOCPSRV_CONN_OUTBOUND | IOCPSRV_CONN_CONNECTING);
  char want[64];
  snprintf(want, sizeof want, "127.0.0.1:%d", port);
  CHECK_STREQ(info.peer, want);
  CHECK_ERR(iocpsrv_send(cl->srv, a[0].id, "x", 1), IOCPSRV_ENOTCONN);
  CHECK_ERR(iocpsrv_pause_receive(cl->srv, a[0].id), IOCPSRV_ENOTCONN);
  CHECK_OK(iocpsrv_set_conn_user(cl->srv, a[0].id, &a[0]));
  iocpsrv_conn_id_t ids[4];
  CHECK_EQ(iocpsrv_connections(cl->srv, ids, 4), 2);
  /* Disconnecting an attempt drops it: LOCAL_CLOSE, or nothing at all after REFUSE. */
  CHECK_OK(iocpsrv_disconnect(cl->srv, a[0].id, IOCPSRV_CLOSE_GRACEFUL));
  CHECK_OK(iocpsrv_disconnect(cl->srv, a[1].id, IOCPSRV_CLOSE_REFUSE));
  CHECK_OK(tt_counter_wait(&cl->ended, 1, 5000));
  CHECK_EQ(a[0].reason, IOCPSRV_REASON_LOCAL_CLOSE);
  ECHO_WAIT_FOR(test_stats(cl->srv).connections_now == 0);
  CHECK_EQ(test_stats(cl->srv).connections_now, 0);
  CHECK_EQ(a[1].disconnects, 0);
  a[1].disconnects = 1; /* for client_finish: refused, as asked */
  a[1].seen = a[1].id;
  client_finish(cl, a, 2);
  CHECK_ERR(iocpsrv_connect(cl->srv, "127.0.0.1", port, a, &id), IOCPSRV_ESTOPPED);
  client_destroy(cl, a);
  close_fillers(l, fill, 4);
}

/* IOCPSRV_OPT_CONNECT_SOURCE: the server sees the chosen source address. */
static void connect_from_source(void) {
  echo_config_t cfg;
  memset(&cfg, 0, sizeof cfg);
  echo_server_t *es = echo_start(&cfg);
  client_t *cl = client_new(1, 8);
  cl->close_when_echoed = 0;
  attempt_t *a = attempts_new(cl, 1);
  CHECK_OK(iocpsrv_set_option_str(cl->srv, IOCPSRV_OPT_CONNECT_SOURCE, "127.0.0.2"));
  CHECK_OK(iocpsrv_start(cl->srv));
  client_connect(cl, &a[0], "127.0.0.1", es->port);
  CHECK_OK(tt_counter_wait(&cl->echoes, 1, 10000));
  iocpsrv_conn_info_t info = test_conn_info(cl->srv, a[0].id);
  CHECK_EQ(strncmp(info.local, "127.0.0.2:", 10), 0);
  CHECK(echo_wait_peer(es, info.local, 5000) != NULL);
  client_finish(cl, a, 1);
  CHECK_EQ(a[0].reason, IOCPSRV_REASON_SERVER_STOPPED);
  client_destroy(cl, a);
  echo_finish(es);
}

/* ---------------------------------------------------------------- pull mode ---- */

static void connect_pull_mode(void) {
  echo_config_t cfg;
  memset(&cfg, 0, sizeof cfg);
  echo_server_t *es = echo_start(&cfg);
  iocpsrv_t *srv;
  CHECK_OK(iocpsrv_create(&srv, NULL));
  CHECK_OK(iocpsrv_set_option(srv, IOCPSRV_OPT_PULL_MODE, 1));
  CHECK_OK(iocpsrv_start(srv));
  int marker_ok = 1, marker_bad = 2;
  iocpsrv_conn_id_t ok_id, bad_id;
  CHECK_OK(iocpsrv_connect(srv, "127.0.0.1", es->port, &marker_ok, &ok_id));
  CHECK_OK(iocpsrv_connect(srv, "127.0.0.1", ts_dead_port(), &marker_bad, &bad_id));
  int got_connect = 0, got_packets = 0, ok_gone = 0, bad_gone = 0;
  int64_t deadline = tt_now_ms() + 10000;
  while ((!ok_gone || !bad_gone) && tt_now_ms() < deadline) {
    iocpsrv_event_t ev[16];
    int n = iocpsrv_poll(srv, ev, 16, 100);
    CHECK_OK(n);
    for (int i = 0; i < n; i++) {
      if (ev[i].conn == ok_id) {
        CHECK(ev[i].conn_user == &marker_ok);
        CHECK(!ok_gone);
        if (ev[i].type == IOCPSRV_EVENT_CONNECT) {
          CHECK(!got_connect);
          got_connect = 1;
          for (uint32_t k = 0; k < 10; k++) send_seq(srv, ok_id, k, 16);
        } else if (ev[i].type == IOCPSRV_EVENT_PACKET) {
          CHECK(got_connect);
          CHECK_EQ(test_get_u32le(ev[i].data), (uint32_t)got_packets);
          if (++got_packets == 10) CHECK_OK(iocpsrv_disconnect(srv, ok_id, IOCPSRV_CLOSE_GRACEFUL));
        } else if (ev[i].type == IOCPSRV_EVENT_DISCONNECT) {
          CHECK_EQ(ev[i].reason, IOCPSRV_REASON_LOCAL_CLOSE);
          ok_gone = 1;
        }
      } else {
        CHECK_EQ(ev[i].conn, bad_id);
        CHECK(ev[i].conn_user == &marker_bad);
        CHECK_EQ(ev[i].type, IOCPSRV_EVENT_DISCONNECT); /* nothing else: never connected */
        CHECK_EQ(ev[i].reason, IOCPSRV_REASON_CONNECT_REFUSED);
        CHECK(!bad_gone);
        bad_gone = 1;
      }
    }
  }
  CHECK(ok_gone && bad_gone);
  CHECK_EQ(got_packets, 10);
  CHECK_OK(iocpsrv_stop(srv, 1000));
  CHECK_OK(iocpsrv_destroy(srv));
  echo_finish(es);
}

int main(int argc, char **argv) {
  test_init(argc, argv);
  TEST_RUN(connect_echo_two_engines);
  TEST_RUN(connect_echo_ipv6);
  TEST_RUN(connect_to_itself);
  TEST_RUN(connect_1000_at_once);
  TEST_RUN(connect_from_a_callback);
  TEST_RUN(connect_served_like_a_client);
  TEST_RUN(connect_refused);
  TEST_RUN(connect_timeout);
  TEST_RUN(connect_name_not_resolved);
  TEST_RUN(connect_by_name);
  TEST_RUN(connect_stop_in_flight);
  TEST_RUN(connect_from_a_thread_that_exits);
  TEST_RUN(connect_call_errors);
  TEST_RUN(connect_from_source);
  TEST_RUN(connect_pull_mode);
  return test_done();
}
