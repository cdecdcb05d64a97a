/*
 * test_lifecycle.c -- create / listen / stop / destroy, restarts, several servers, stop
 * from a callback and under load, calls after stop, bad arguments, options, errors,
 * version and worker hooks.
 */
#include <stdlib.h>
#include <string.h>

#include "echo.h"
#include "sock.h"
#include "test.h"
#include "thread.h"

#define NOPTS(a) ((int)(sizeof(a) / sizeof((a)[0])))

static ts_sock_t connect_to(echo_server_t *es) {
  ts_sock_t s = ts_connect(es->cfg.host ? es->cfg.host : "127.0.0.1", es->port, TS_WAIT_MS);
  CHECK_MSG(s != TS_INVALID, "connect to port %d failed", es->port);
  return s;
}

static void expect_echo(ts_sock_t s, const char *text) {
  size_t n = strlen(text), got = 0;
  char buf[256];
  CHECK_EQ(ts_send_packet(s, text, n), 0);
  int rc = ts_recv_packet(s, buf, sizeof buf, &got, TS_WAIT_MS);
  CHECK_MSG(rc == 0, "echo of \"%s\": %s", text, ts_strerror(rc));
  CHECK_EQ(got, n);
  CHECK_MEMEQ(buf, text, n);
}

static void expect_closed(ts_sock_t s) {
  int rc = ts_wait_close(s, TS_WAIT_MS, NULL);
  CHECK_MSG(rc == TS_EOF || rc == TS_RESET, "expected the server to close: %s",
            ts_strerror(rc));
}

/* ---- create, listen, stop, listen again, stop, destroy ---- */
static void lifecycle_restart(void) {
  echo_config_t cfg = {0};
  echo_server_t *es = echo_create(&cfg);
  CHECK_ERR(iocpsrv_port(es->srv), IOCPSRV_ESTOPPED);
  CHECK_ERR(iocpsrv_stop(es->srv, 1000), IOCPSRV_ESTOPPED);

  CHECK_OK(echo_listen(es));
  int port1 = es->port;
  CHECK_EQ(iocpsrv_port(es->srv), port1);
  CHECK_ERR(iocpsrv_listen(es->srv, "127.0.0.1", 0), IOCPSRV_ESTATE);
  ts_sock_t s = connect_to(es);
  expect_echo(s, "first run");
  CHECK_OK(iocpsrv_stop(es->srv, 1000));
  expect_closed(s);
  ts_close(s);
  CHECK_ERR(iocpsrv_stop(es->srv, 1000), IOCPSRV_ESTOPPED);
  CHECK_EQ(iocpsrv_port(es->srv), port1); /* "or last run" */
  echo_check_clean(es);
  CHECK_EQ(es->reasons[IOCPSRV_REASON_SERVER_STOPPED], 1);

  /* Nobody listens there any more. */
  ts_sock_t gone = ts_connect("127.0.0.1", port1, 2000);
  CHECK_MSG(gone == TS_INVALID, "port %d still accepts after stop", port1);

  /* Again on a new port. */
  CHECK_OK(echo_listen(es));
  s = connect_to(es);
  expect_echo(s, "second run");
  echo_conn_t *c2 = echo_conn_for(es, s);
  ts_close(s);
  CHECK_EQ(echo_wait_disconnect(es, c2, TS_WAIT_MS), 0);
  CHECK_EQ(echo_snapshot(es, c2).reason, IOCPSRV_REASON_PEER_CLOSED);
  CHECK_OK(iocpsrv_stop(es->srv, 1000));
  echo_check_clean(es);

  /* And on the first port again: a restarted server gets its port back although the
   * connections it closed may linger in TIME_WAIT. */
  CHECK_OK(iocpsrv_listen(es->srv, "127.0.0.1", port1));
  CHECK_EQ(iocpsrv_port(es->srv), port1);
  es->port = port1;
  s = connect_to(es);
  expect_echo(s, "third run, same port");
  CHECK_OK(iocpsrv_stop(es->srv, 1000));
  expect_closed(s);
  ts_close(s);

  iocpsrv_stats_t st = echo_stats(es);
  CHECK_EQ(st.connections_total, 3); /* totals cover restarts */
  CHECK_GE(st.packets_in, 3);
  CHECK_EQ(st.workers, 0);
  echo_check_clean(es);
  echo_destroy(es);
}

/* ---- two servers in one process ---- */
static void lifecycle_two_servers(void) {
  echo_config_t cfg = {0};
  echo_server_t *a = echo_start(&cfg);
  echo_server_t *b = echo_start(&cfg);
  CHECK_NE(a->port, b->port);
  ts_sock_t sa = connect_to(a), sb = connect_to(b);
  expect_echo(sa, "to a");
  expect_echo(sb, "to b");
  echo_conn_t *ca = echo_conn_for(a, sa);
  echo_conn_t *cb = echo_conn_for(b, sb);
  /* Ids belong to their server: a's id means nothing to b (unless equal by chance). */
  if (ca->id != cb->id) {
    CHECK_ERR(iocpsrv_send(b->srv, ca->id, "x", 1), IOCPSRV_ENOTCONN);
  }
  CHECK_EQ(echo_stats(a).connections_now, 1);
  CHECK_EQ(echo_stats(b).connections_now, 1);

  CHECK_OK(echo_stop(a, 1000));
  expect_closed(sa);
  ts_close(sa);
  expect_echo(sb, "b still works");
  ts_sock_t sb2 = connect_to(b);
  expect_echo(sb2, "and accepts");
  echo_check_clean(a);
  echo_destroy(a);
  expect_echo(sb, "b works after a is destroyed");
  ts_close(sb);
  ts_close(sb2);
  echo_finish(b);
}

/* ---- stop / destroy / listen from inside a callback ---- */
typedef struct {
  int stop_rc, destroy_rc, listen_rc;
  tt_counter_t done;
} incb_t;

static int incb_hook(echo_server_t *es, echo_conn_t *c, const uint8_t *d, size_t n) {
  incb_t *x = (incb_t *)es->cfg.ctx;
  if (n == 4 && memcmp(d, "STOP", 4) == 0) {
    x->stop_rc = iocpsrv_stop(es->srv, 2000);
    tt_counter_add(&x->done, 1);
    return ECHO_SKIP;
  }
  if (n == 7 && memcmp(d, "DESTROY", 7) == 0) {
    x->destroy_rc = iocpsrv_destroy(es->srv);
    x->listen_rc = iocpsrv_listen(es->srv, "127.0.0.1", 0);
    return ECHO_DEFAULT;
  }
  return ECHO_DEFAULT;
}

static void lifecycle_stop_from_callback(void) {
  incb_t x;
  memset(&x, 0, sizeof x);
  tt_counter_init(&x.done);
  echo_opt_t opts[] = {{IOCPSRV_OPT_WORKER_THREADS, 2}};
  echo_config_t cfg = {0};
  cfg.opts = opts;
  cfg.nopts = NOPTS(opts);
  cfg.on_packet = incb_hook;
  cfg.ctx = &x;
  echo_server_t *es = echo_start(&cfg);
  ts_sock_t s[4];
  int i;
  for (i = 0; i < 4; i++) {
    s[i] = connect_to(es);
    expect_echo(s[i], "hello");
  }
  /* destroy and listen are refused inside a callback, and nothing breaks. */
  expect_echo(s[1], "DESTROY");
  CHECK_ERR(x.destroy_rc, IOCPSRV_EINCALLBACK);
  CHECK_FAILS(x.listen_rc);
  expect_echo(s[1], "still alive");

  /* stop from a packet callback: it returns at once (the callback finishes). */
  CHECK_EQ(ts_send_packet(s[0], "STOP", 4), 0);
  CHECK_MSG(tt_counter_wait(&x.done, 1, TS_WAIT_MS) == 0,
            "iocpsrv_stop called from a callback did not return");
  CHECK_OK(x.stop_rc);
  /* A stop from this thread finishes it. */
  int rc = echo_stop(es, 2000);
  CHECK_MSG(rc == 0 || rc == IOCPSRV_ESTOPPED, "second stop: %s", iocpsrv_err_name(rc));
  CHECK_EQ(tt_counter_get(&es->disconnects), 4);
  CHECK_EQ(es->reasons[IOCPSRV_REASON_SERVER_STOPPED], 4);
  for (i = 0; i < 4; i++) {
    expect_closed(s[i]);
    ts_close(s[i]);
  }
  echo_check_clean(es);

  /* The server can listen again. */
  CHECK_OK(echo_listen(es));
  ts_sock_t t = connect_to(es);
  expect_echo(t, "after restart");
  ts_close(t);
  echo_finish(es);

  /* Stop from a callback, then destroy (no stop) from this thread. */
  tt_counter_set(&x.done, 0);
  es = echo_start(&cfg);
  for (i = 0; i < 3; i++) {
    s[i] = connect_to(es);
    expect_echo(s[i], "hello");
  }
  CHECK_EQ(ts_send_packet(s[2], "STOP", 4), 0);
  CHECK_EQ(tt_counter_wait(&x.done, 1, TS_WAIT_MS), 0);
  CHECK_OK(x.stop_rc);
  CHECK_OK(iocpsrv_destroy(es->srv));
  CHECK_EQ(tt_counter_get(&es->disconnects), 3);
  CHECK_EQ(es->reasons[IOCPSRV_REASON_SERVER_STOPPED], 3);
  CHECK_EQ(es->contract_errors, 0);
  for (i = 0; i < 3; i++) {
    expect_closed(s[i]);
    ts_close(s[i]);
  }
  echo_free(es);
  tt_counter_destroy(&x.done);
}

/* ---- stop while 100 clients pump data ---- */
enum { LOAD_CLIENTS = 100 };

typedef struct {
  int port;
  tt_counter_t *connected;
  tt_counter_t *roundtrips;
  int end;      /* TS_* result that ended the loop */
  int mismatch; /* an echo that was not what was sent */
  uint32_t sent;
} load_client_t;

static void load_client_main(void *p) {
  load_client_t *lc = (load_client_t *)p;
  ts_sock_t s = ts_connect("127.0.0.1", lc->port, TS_WAIT_MS);
  if (s == TS_INVALID) {
    lc->end = TS_ERR;
    tt_counter_add(lc->connected, 1);
    return;
  }
  tt_counter_add(lc->connected, 1);
  uint8_t out[64], in[64];
  for (;;) {
    size_t len = 4 + lc->sent % 60, got;
    test_fill_pattern(out, len, lc->sent);
    test_put_u32le(out, lc->sent);
    int rc = ts_send_packet(s, out, len);
    if (rc != 0) {
      lc->end = rc;
      break;
    }
    lc->sent++;
    rc = ts_recv_packet(s, in, sizeof in, &got, TS_WAIT_MS);
    if (rc != 0) {
      lc->end = rc;
      break;
    }
    if (got != len || memcmp(in, out, len) != 0) lc->mismatch++;
    tt_counter_add(lc->roundtrips, 1);
  }
  /* Drain to the end: a reset may follow a FIN, both mean "closed". */
  if (lc->end == TS_EOF || lc->end == TS_RESET) {
    int rc = ts_wait_close(s, TS_WAIT_MS, NULL);
    if (rc != TS_EOF && rc != TS_RESET) lc->end = rc;
  }
  ts_close(s);
}

static void lifecycle_stop_under_load(void) {
  echo_opt_t opts[] = {{IOCPSRV_OPT_WORKER_THREADS, 4}};
  echo_config_t cfg = {0};
  cfg.opts = opts;
  cfg.nopts = NOPTS(opts);
  cfg.check_seq = 1;
  echo_server_t *es = echo_start(&cfg);
  tt_counter_t connected, roundtrips;
  tt_counter_init(&connected);
  tt_counter_init(&roundtrips);
  load_client_t lc[LOAD_CLIENTS];
  tt_thread_t *th[LOAD_CLIENTS];
  int i;
  memset(lc, 0, sizeof lc);
  for (i = 0; i < LOAD_CLIENTS; i++) {
    lc[i].port = es->port;
    lc[i].connected = &connected;
    lc[i].roundtrips = &roundtrips;
    th[i] = tt_thread_start(load_client_main, &lc[i]);
    CHECK(th[i] != NULL);
  }
  CHECK_EQ(tt_counter_wait(&connected, LOAD_CLIENTS, 20000), 0);
  CHECK_MSG(tt_counter_wait(&es->connects, LOAD_CLIENTS, 20000) == 0,
            "only %lld of %d clients accepted", (long long)tt_counter_get(&es->connects),
            LOAD_CLIENTS);
  CHECK_EQ(tt_counter_wait(&roundtrips, LOAD_CLIENTS * 20, 20000), 0);

  CHECK_OK(echo_stop(es, 2000));
  /* When stop returns, every connection has had its disconnect. */
  CHECK_EQ(tt_counter_get(&es->disconnects), LOAD_CLIENTS);
  CHECK_EQ(es->reasons[IOCPSRV_REASON_SERVER_STOPPED], LOAD_CLIENTS);
  int64_t cb_after = tt_counter_get(&es->packets);

  for (i = 0; i < LOAD_CLIENTS; i++) tt_thread_join(th[i]);
  for (i = 0; i < LOAD_CLIENTS; i++) {
    CHECK_MSG(lc[i].end == TS_EOF || lc[i].end == TS_RESET,
              "client %d ended with %s instead of seeing the close", i,
              ts_strerror(lc[i].end));
    CHECK_EQ(lc[i].mismatch, 0);
  }
  /* No callback ran after stop returned. */
  CHECK_EQ(tt_counter_get(&es->packets), cb_after);
  echo_check_clean(es);
  echo_destroy(es);
  tt_counter_destroy(&connected);
  tt_counter_destroy(&roundtrips);
}

/* ---- destroy a running server ---- */
static void lifecycle_destroy_running(void) {
  echo_config_t cfg = {0};
  echo_server_t *es = echo_start(&cfg);
  ts_sock_t s[5];
  int i;
  for (i = 0; i < 5; i++) {
    s[i] = connect_to(es);
    expect_echo(s[i], "x");
  }
  CHECK_OK(iocpsrv_destroy(es->srv));
  CHECK_EQ(tt_counter_get(&es->disconnects), 5);
  CHECK_EQ(es->reasons[IOCPSRV_REASON_SERVER_STOPPED], 5);
  CHECK_EQ(es->contract_errors, 0);
  for (i = 0; i < 5; i++) {
    expect_closed(s[i]);
    ts_close(s[i]);
  }
  echo_free(es);

  /* Destroy right after create, and after a stop. */
  iocpsrv_t *srv = NULL;
  CHECK_OK(iocpsrv_create(&srv, NULL));
  CHECK(iocpsrv_user_data(srv) == NULL);
  CHECK_OK(iocpsrv_destroy(srv));
  CHECK_OK(iocpsrv_create(&srv, &srv));
  CHECK(iocpsrv_user_data(srv) == &srv);
  CHECK_OK(iocpsrv_listen(srv, "127.0.0.1", 0)); /* no callbacks at all */
  ts_sock_t c = ts_connect("127.0.0.1", iocpsrv_port(srv), TS_WAIT_MS);
  CHECK(c != TS_INVALID);
  CHECK_EQ(ts_send_packet(c, "nobody listens", 14), 0);
  CHECK_OK(iocpsrv_stop(srv, 1000));
  expect_closed(c);
  ts_close(c);
  CHECK_OK(iocpsrv_destroy(srv));
}

/* ---- every call after stop fails cleanly ---- */
static void lifecycle_calls_after_stop(void) {
  echo_config_t cfg = {0};
  echo_server_t *es = echo_create(&cfg);
  iocpsrv_t *srv = es->srv;
  iocpsrv_conn_id_t ids[4];
  iocpsrv_conn_info_t info;
  iocpsrv_event_t ev[4];
  iocpsrv_buf_t buf = {"x", 1};

  /* Before the first listen. */
  CHECK_ERR2(iocpsrv_send(srv, 1, "x", 1), IOCPSRV_ESTOPPED, IOCPSRV_ENOTCONN);
  CHECK_LE(iocpsrv_connections(srv, ids, 4), 0);
  CHECK_ERR(iocpsrv_port(srv), IOCPSRV_ESTOPPED);

  CHECK_OK(echo_listen(es));
  int port = es->port;
  ts_sock_t s = connect_to(es);
  expect_echo(s, "hi");
  echo_conn_t *c = echo_conn_for(es, s);
  iocpsrv_conn_id_t id = c->id;
  CHECK_EQ(iocpsrv_connections(srv, ids, 4), 1);
  CHECK_EQ(ids[0], id);
  CHECK_OK(iocpsrv_stop(srv, 1000));
  expect_closed(s);
  ts_close(s);

  CHECK_ERR2(iocpsrv_send(srv, id, "x", 1), IOCPSRV_ESTOPPED, IOCPSRV_ENOTCONN);
  CHECK_ERR2(iocpsrv_sendv(srv, id, &buf, 1), IOCPSRV_ESTOPPED, IOCPSRV_ENOTCONN);
  CHECK_LE(iocpsrv_broadcast(srv, "x", 1), 0);
  CHECK_ERR2(iocpsrv_disconnect(srv, id, IOCPSRV_CLOSE_GRACEFUL), IOCPSRV_ESTOPPED,
             IOCPSRV_ENOTCONN);
  CHECK_ERR2(iocpsrv_disconnect(srv, id, IOCPSRV_CLOSE_ABORT), IOCPSRV_ESTOPPED,
             IOCPSRV_ENOTCONN);
  CHECK_ERR2(iocpsrv_pause_receive(srv, id), IOCPSRV_ESTOPPED, IOCPSRV_ENOTCONN);
  CHECK_ERR2(iocpsrv_resume_receive(srv, id), IOCPSRV_ESTOPPED, IOCPSRV_ENOTCONN);
  CHECK_ERR2(iocpsrv_pending_bytes(srv, id), IOCPSRV_ESTOPPED, IOCPSRV_ENOTCONN);
  CHECK_ERR2(iocpsrv_set_conn_user(srv, id, &info), IOCPSRV_ESTOPPED, IOCPSRV_ENOTCONN);
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  CHECK_ERR2(iocpsrv_conn_info(srv, id, &info), IOCPSRV_ESTOPPED, IOCPSRV_ENOTCONN);
  CHECK_LE(iocpsrv_connections(srv, ids, 4), 0);
  CHECK_LE(iocpsrv_connections(srv, NULL, 0), 0);
  CHECK_ERR(iocpsrv_stop(srv, 0), IOCPSRV_ESTOPPED);
  CHECK_ERR(iocpsrv_stop(srv, -1), IOCPSRV_ESTOPPED);
  CHECK_EQ(iocpsrv_port(srv), port);
  CHECK_ERR(iocpsrv_poll(srv, ev, 4, 0), IOCPSRV_ENOTSUP);
  CHECK_FAILS(iocpsrv_wait_handle(srv));
  iocpsrv_stats_t st = echo_stats(es);
  CHECK_EQ(st.connections_now, 0);
  CHECK_EQ(st.connections_total, 1);
  CHECK_EQ(st.workers, 0);
  /* Options and callbacks may change again. */
  CHECK_OK(iocpsrv_set_option(srv, IOCPSRV_OPT_MAX_PACKET_SIZE, 4096));
  int64_t v = 0;
  CHECK_OK(iocpsrv_get_option(srv, IOCPSRV_OPT_MAX_PACKET_SIZE, &v));
  CHECK_EQ(v, 4096);
  CHECK_OK(iocpsrv_set_log_cb(srv, NULL));
  echo_check_clean(es);
  echo_destroy(es);
}

/* ---- bad arguments ---- */
static void lifecycle_bad_arguments(void) {
  iocpsrv_conn_id_t ids[4];
  iocpsrv_conn_info_t info;
  iocpsrv_stats_t st;
  iocpsrv_event_t ev[4];
  iocpsrv_buf_t buf = {"x", 1};
  int64_t v;

  /* A NULL server. */
  CHECK_ERR(iocpsrv_create(NULL, NULL), IOCPSRV_EINVAL);
  CHECK(iocpsrv_user_data(NULL) == NULL);
  CHECK_ERR(iocpsrv_set_option(NULL, IOCPSRV_OPT_NODELAY, 1), IOCPSRV_EINVAL);
  CHECK_ERR(iocpsrv_get_option(NULL, IOCPSRV_OPT_NODELAY, &v), IOCPSRV_EINVAL);
  CHECK_ERR(iocpsrv_set_connect_cb(NULL, NULL), IOCPSRV_EINVAL);
  CHECK_ERR(iocpsrv_set_packet_cb(NULL, NULL), IOCPSRV_EINVAL);
  CHECK_ERR(iocpsrv_set_disconnect_cb(NULL, NULL), IOCPSRV_EINVAL);
  CHECK_ERR(iocpsrv_set_drain_cb(NULL, NULL), IOCPSRV_EINVAL);
  CHECK_ERR(iocpsrv_set_worker_hooks(NULL, NULL, NULL), IOCPSRV_EINVAL);
  CHECK_ERR(iocpsrv_set_log_cb(NULL, NULL), IOCPSRV_EINVAL);
  CHECK_ERR(iocpsrv_listen(NULL, "127.0.0.1", 0), IOCPSRV_EINVAL);
  CHECK_FAILS(iocpsrv_port(NULL));
  CHECK_ERR(iocpsrv_stop(NULL, 0), IOCPSRV_EINVAL);
  CHECK_ERR2(iocpsrv_destroy(NULL), IOCPSRV_EINVAL, 0);
  CHECK_ERR(iocpsrv_send(NULL, 1, "x", 1), IOCPSRV_EINVAL);
  CHECK_ERR(iocpsrv_sendv(NULL, 1, &buf, 1), IOCPSRV_EINVAL);
  CHECK_ERR(iocpsrv_broadcast(NULL, "x", 1), IOCPSRV_EINVAL);
  CHECK_ERR(iocpsrv_disconnect(NULL, 1, 0), IOCPSRV_EINVAL);
  CHECK_ERR(iocpsrv_pause_receive(NULL, 1), IOCPSRV_EINVAL);
  CHECK_ERR(iocpsrv_resume_receive(NULL, 1), IOCPSRV_EINVAL);
  CHECK_ERR(iocpsrv_pending_bytes(NULL, 1), IOCPSRV_EINVAL);
  CHECK_ERR(iocpsrv_set_conn_user(NULL, 1, NULL), IOCPSRV_EINVAL);
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  CHECK_ERR(iocpsrv_conn_info(NULL, 1, &info), IOCPSRV_EINVAL);
  CHECK_ERR(iocpsrv_connections(NULL, ids, 4), IOCPSRV_EINVAL);
  memset(&st, 0, sizeof st);
  st.struct_size = sizeof st;
  CHECK_ERR(iocpsrv_stats(NULL, &st), IOCPSRV_EINVAL);
  CHECK_ERR(iocpsrv_poll(NULL, ev, 4, 0), IOCPSRV_EINVAL);
  CHECK_ERR(iocpsrv_wait_handle(NULL), IOCPSRV_EINVAL);

  /* A running server and bad ids or buffers. */
  echo_config_t cfg = {0};
  echo_server_t *es = echo_start(&cfg);
  iocpsrv_t *srv = es->srv;
  ts_sock_t s = connect_to(es);
  expect_echo(s, "hi");
  echo_conn_t *c = echo_conn_for(es, s);
  iocpsrv_conn_id_t id = c->id;
  CHECK_NE(id, 0);

  CHECK_ERR(iocpsrv_send(srv, id, NULL, 5), IOCPSRV_EINVAL);
  CHECK_ERR(iocpsrv_broadcast(srv, NULL, 5), IOCPSRV_EINVAL);
  CHECK_ERR(iocpsrv_sendv(srv, id, NULL, 1), IOCPSRV_EINVAL);
  CHECK_ERR(iocpsrv_sendv(srv, id, &buf, -1), IOCPSRV_EINVAL);
  iocpsrv_buf_t badbuf = {NULL, 3};
  CHECK_ERR(iocpsrv_sendv(srv, id, &badbuf, 1), IOCPSRV_EINVAL);
  CHECK_ERR2(iocpsrv_send(srv, 0, "x", 1), IOCPSRV_ENOTCONN, IOCPSRV_EINVAL);
  CHECK_ERR2(iocpsrv_disconnect(srv, 0, 0), IOCPSRV_ENOTCONN, IOCPSRV_EINVAL);
  CHECK_ERR(iocpsrv_disconnect(srv, id, 7), IOCPSRV_EINVAL);
  CHECK_ERR(iocpsrv_disconnect(srv, id, -1), IOCPSRV_EINVAL);
  CHECK_ERR2(iocpsrv_pending_bytes(srv, 0), IOCPSRV_ENOTCONN, IOCPSRV_EINVAL);
  CHECK_ERR(iocpsrv_conn_info(srv, id, NULL), IOCPSRV_EINVAL);
  info.struct_size = 0;
  CHECK_ERR(iocpsrv_conn_info(srv, id, &info), IOCPSRV_EINVAL);
  info.struct_size = 4;
  CHECK_ERR(iocpsrv_conn_info(srv, id, &info), IOCPSRV_EINVAL);
  CHECK_ERR(iocpsrv_stats(srv, NULL), IOCPSRV_EINVAL);
  CHECK_ERR(iocpsrv_connections(srv, NULL, 4), IOCPSRV_EINVAL);
  CHECK_ERR(iocpsrv_connections(srv, ids, -1), IOCPSRV_EINVAL);
  CHECK_ERR(iocpsrv_get_option(srv, IOCPSRV_OPT_NODELAY, NULL), IOCPSRV_EINVAL);
  CHECK_ERR(iocpsrv_listen(srv, "127.0.0.1", 0), IOCPSRV_ESTATE);

  /* Random ids: never a hit, never data to the real client. */
  uint64_t x = 0x243F6A8885A308D3ULL;
  int i;
  for (i = 0; i < 2000; i++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    if (x == id) continue;
    int rc = iocpsrv_send(srv, x, "WRONG", 5);
    CHECK_MSG(rc == IOCPSRV_ENOTCONN, "send to random id %llx returned %d %s",
              (unsigned long long)x, rc, iocpsrv_err_name(rc));
    CHECK_ERR(iocpsrv_pending_bytes(srv, x), IOCPSRV_ENOTCONN);
    CHECK_ERR(iocpsrv_pause_receive(srv, x), IOCPSRV_ENOTCONN);
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    CHECK_ERR(iocpsrv_conn_info(srv, x, &info), IOCPSRV_ENOTCONN);
  }
  /* Small ids near the real one (slot-like values) too. */
  for (i = 1; i < 300; i++) {
    if ((iocpsrv_conn_id_t)i == id || id + (uint64_t)i == 0) continue;
    CHECK_ERR(iocpsrv_send(srv, (iocpsrv_conn_id_t)i, "WRONG", 5), IOCPSRV_ENOTCONN);
    CHECK_ERR(iocpsrv_send(srv, id + (uint64_t)i, "WRONG", 5), IOCPSRV_ENOTCONN);
    CHECK_ERR(iocpsrv_send(srv, id ^ ((uint64_t)i << 32), "WRONG", 5), IOCPSRV_ENOTCONN);
  }
  /* The first thing the client gets is this marker, nothing sent to a wrong id. */
  CHECK_OK(iocpsrv_send(srv, id, "marker", 6));
  char got[16];
  size_t n = 0;
  CHECK_EQ(ts_recv_packet(s, got, sizeof got, &n, TS_WAIT_MS), 0);
  CHECK_EQ(n, 6);
  CHECK_MEMEQ(got, "marker", 6);
  expect_echo(s, "still fine");
  ts_close(s);
  echo_finish(es);
}

/* ---- options ---- */
static void expect_default(iocpsrv_t *srv, int opt, int64_t want) {
  int64_t v = -12345;
  CHECK_OK(iocpsrv_get_option(srv, opt, &v));
  CHECK_MSG(v == want, "option %d defaults to %lld, expected %lld", opt, (long long)v,
            (long long)want);
}

static void expect_range(iocpsrv_t *srv, int opt, int64_t bad) {
  int64_t before = 0, after = 0;
  CHECK_OK(iocpsrv_get_option(srv, opt, &before));
  int rc = iocpsrv_set_option(srv, opt, bad);
  CHECK_MSG(rc == IOCPSRV_ERANGE, "option %d = %lld returned %d %s, expected ERANGE", opt,
            (long long)bad, rc, iocpsrv_err_name(rc));
  CHECK_OK(iocpsrv_get_option(srv, opt, &after));
  CHECK_EQ(after, before);
}

static void expect_accepts(iocpsrv_t *srv, int opt, int64_t good) {
  int64_t v = 0;
  int rc = iocpsrv_set_option(srv, opt, good);
  CHECK_MSG(rc == 0, "option %d = %lld returned %d %s", opt, (long long)good, rc,
            iocpsrv_err_name(rc));
  CHECK_OK(iocpsrv_get_option(srv, opt, &v));
  CHECK_EQ(v, good);
}

static int IOCPSRV_CALL nop_connect(iocpsrv_t *s, iocpsrv_conn_id_t c, const char *p,
                                    void **u) {
  return 0;
}

static void lifecycle_options(void) {
  iocpsrv_t *srv = NULL;
  CHECK_OK(iocpsrv_create(&srv, NULL));
  int64_t v;
  CHECK_OK(iocpsrv_get_option(srv, IOCPSRV_OPT_WORKER_THREADS, &v));
  CHECK_GE(v, 0);
  expect_default(srv, IOCPSRV_OPT_CONCURRENCY, 0);
  expect_default(srv, IOCPSRV_OPT_LISTEN_BACKLOG, 0);
  expect_default(srv, IOCPSRV_OPT_ACCEPTS_POSTED, 32);
  expect_default(srv, IOCPSRV_OPT_MAX_CONNECTIONS, 10000);
  expect_default(srv, IOCPSRV_OPT_MAX_PACKET_SIZE, 1024 * 1024);
  expect_default(srv, IOCPSRV_OPT_FRAMING, IOCPSRV_FRAMING_LEN32_LE);
  expect_default(srv, IOCPSRV_OPT_SEND_QUEUE_LIMIT, 4 * 1024 * 1024);
  expect_default(srv, IOCPSRV_OPT_IDLE_TIMEOUT_MS, 0);
  expect_default(srv, IOCPSRV_OPT_KEEPALIVE_MS, 0);
  expect_default(srv, IOCPSRV_OPT_NODELAY, 1);
  expect_default(srv, IOCPSRV_OPT_RCVBUF, 0);
  expect_default(srv, IOCPSRV_OPT_SNDBUF, 0);
  expect_default(srv, IOCPSRV_OPT_READ_BUFFER, 65536);
  expect_default(srv, IOCPSRV_OPT_PULL_MODE, 0);
  expect_default(srv, IOCPSRV_OPT_PULL_QUEUE_LIMIT, 8192);
  expect_default(srv, IOCPSRV_OPT_CLOSE_TIMEOUT_MS, 5000);
  expect_default(srv, IOCPSRV_OPT_IPV6_ONLY, 0);

  /* Unknown options, for set and get. */
  static const int unknown[] = {0, -1, 100, 9999, 0x7fffffff};
  int i;
  for (i = 0; i < NOPTS(unknown); i++) {
    CHECK_ERR(iocpsrv_set_option(srv, unknown[i], 1), IOCPSRV_EUNKNOWNOPT);
    CHECK_ERR(iocpsrv_get_option(srv, unknown[i], &v), IOCPSRV_EUNKNOWNOPT);
  }

  /* Ranges the header states. */
  expect_range(srv, IOCPSRV_OPT_WORKER_THREADS, -1);
  expect_range(srv, IOCPSRV_OPT_WORKER_THREADS, 1025);
  expect_accepts(srv, IOCPSRV_OPT_WORKER_THREADS, 1024);
  expect_accepts(srv, IOCPSRV_OPT_WORKER_THREADS, 1);
  expect_accepts(srv, IOCPSRV_OPT_WORKER_THREADS, 0);
  expect_range(srv, IOCPSRV_OPT_MAX_CONNECTIONS, 0);
  expect_range(srv, IOCPSRV_OPT_MAX_CONNECTIONS, 16777216);
  expect_range(srv, IOCPSRV_OPT_MAX_CONNECTIONS, -5);
  expect_accepts(srv, IOCPSRV_OPT_MAX_CONNECTIONS, 16777215);
  expect_accepts(srv, IOCPSRV_OPT_MAX_CONNECTIONS, 1);
  expect_range(srv, IOCPSRV_OPT_MAX_PACKET_SIZE, (1LL << 30) + 1);
  expect_range(srv, IOCPSRV_OPT_MAX_PACKET_SIZE, -1);
  expect_range(srv, IOCPSRV_OPT_MAX_PACKET_SIZE, 1LL << 40);
  expect_accepts(srv, IOCPSRV_OPT_MAX_PACKET_SIZE, 1LL << 30);
  expect_range(srv, IOCPSRV_OPT_FRAMING, -1);
  expect_range(srv, IOCPSRV_OPT_FRAMING, 5);
  expect_accepts(srv, IOCPSRV_OPT_FRAMING, IOCPSRV_FRAMING_RAW);
  expect_range(srv, IOCPSRV_OPT_READ_BUFFER, 511);
  expect_range(srv, IOCPSRV_OPT_READ_BUFFER, 16 * 1024 * 1024 + 1);
  expect_accepts(srv, IOCPSRV_OPT_READ_BUFFER, 512);
  expect_accepts(srv, IOCPSRV_OPT_READ_BUFFER, 16 * 1024 * 1024);
  expect_range(srv, IOCPSRV_OPT_SEND_QUEUE_LIMIT, -1);
  expect_range(srv, IOCPSRV_OPT_IDLE_TIMEOUT_MS, -1);
  expect_range(srv, IOCPSRV_OPT_KEEPALIVE_MS, -1);
  expect_range(srv, IOCPSRV_OPT_RCVBUF, -1);
  expect_range(srv, IOCPSRV_OPT_SNDBUF, -1);
  expect_range(srv, IOCPSRV_OPT_CLOSE_TIMEOUT_MS, -1);
  expect_range(srv, IOCPSRV_OPT_PULL_QUEUE_LIMIT, -1);
  /* A 64-bit value must not be truncated into range. */
  expect_range(srv, IOCPSRV_OPT_WORKER_THREADS, (1LL << 32) + 2);
  expect_range(srv, IOCPSRV_OPT_MAX_CONNECTIONS, (1LL << 32) + 5);
  CHECK_OK(iocpsrv_destroy(srv));

  /* While running: options and callbacks are frozen. */
  echo_config_t cfg = {0};
  echo_server_t *es = echo_start(&cfg);
  CHECK_ERR(iocpsrv_set_option(es->srv, IOCPSRV_OPT_NODELAY, 0), IOCPSRV_ESTATE);
  CHECK_ERR(iocpsrv_set_option(es->srv, IOCPSRV_OPT_MAX_PACKET_SIZE, 100), IOCPSRV_ESTATE);
  CHECK_OK(iocpsrv_get_option(es->srv, IOCPSRV_OPT_NODELAY, &v));
  CHECK_EQ(v, 1);
  CHECK_FAILS(iocpsrv_set_connect_cb(es->srv, nop_connect));
  CHECK_FAILS(iocpsrv_set_packet_cb(es->srv, NULL));
  CHECK_FAILS(iocpsrv_set_disconnect_cb(es->srv, NULL));
  CHECK_FAILS(iocpsrv_set_worker_hooks(es->srv, NULL, NULL));
  /* ... and the server still uses the registered ones. */
  ts_sock_t s = connect_to(es);
  expect_echo(s, "callbacks unchanged");
  ts_close(s);
  CHECK_OK(echo_stop(es, 1000));
  CHECK_OK(iocpsrv_set_option(es->srv, IOCPSRV_OPT_NODELAY, 0));
  CHECK_OK(iocpsrv_set_option(es->srv, IOCPSRV_OPT_NODELAY, 1));
  echo_check_clean(es);
  echo_destroy(es);
}

/* ---- address in use, address not available ---- */
static void lifecycle_address_errors(void) {
  int port = 0;
  ts_sock_t l = ts_listen("127.0.0.1", 0, &port);
  CHECK(l != TS_INVALID);
  iocpsrv_t *srv = NULL;
  CHECK_OK(iocpsrv_create(&srv, NULL));
  CHECK_ERR(iocpsrv_listen(srv, "127.0.0.1", port), IOCPSRV_EADDRINUSE);
  CHECK_ERR(iocpsrv_port(srv), IOCPSRV_ESTOPPED);
  ts_close(l);

  /* Another iocpsrv server's port. */
  echo_config_t cfg = {0};
  echo_server_t *es = echo_start(&cfg);
  CHECK_ERR(iocpsrv_listen(srv, "127.0.0.1", es->port), IOCPSRV_EADDRINUSE);
  /* Not an address of this machine (TEST-NET-1). */
  CHECK_ERR(iocpsrv_listen(srv, "192.0.2.1", 0), IOCPSRV_EADDRNOTAVAIL);
  CHECK_FAILS(iocpsrv_listen(srv, "127.0.0.1", -1));
  CHECK_FAILS(iocpsrv_listen(srv, "127.0.0.1", 65536));

  /* The failed listens left the server usable. */
  CHECK_OK(iocpsrv_listen(srv, "127.0.0.1", 0));
  CHECK_GT(iocpsrv_port(srv), 0);
  CHECK_NE(iocpsrv_port(srv), es->port);
  ts_sock_t c = ts_connect("127.0.0.1", iocpsrv_port(srv), TS_WAIT_MS);
  CHECK(c != TS_INVALID);
  ts_close(c);
  CHECK_OK(iocpsrv_stop(srv, 1000));
  CHECK_OK(iocpsrv_destroy(srv));

  ts_sock_t s = connect_to(es);
  expect_echo(s, "unaffected");
  ts_close(s);
  echo_finish(es);
}

/* ---- error strings, reason names, version ---- */
typedef struct {
  int code;
  const char *name;
  const char *text;
} err_row_t;

static const err_row_t err_rows[] = {
#define ROW_(name, value, text) {value, "IOCPSRV_E" #name, text},
    IOCPSRV_ERRNO_MAP(ROW_)
#undef ROW_
};

static void lifecycle_strings(void) {
  int i, j;
  for (i = 0; i < NOPTS(err_rows); i++) {
    const char *t = iocpsrv_strerror(err_rows[i].code);
    const char *n = iocpsrv_err_name(err_rows[i].code);
    CHECK(t != NULL && n != NULL);
    CHECK_STREQ(n, err_rows[i].name);
    CHECK_STREQ(t, err_rows[i].text);
    for (j = 0; j < i; j++) CHECK_NE(err_rows[j].code, err_rows[i].code);
  }
  CHECK_EQ(IOCPSRV_EINVAL, -1);
  CHECK_EQ(NOPTS(err_rows), 18);
  static const int unknown[] = {1, 42, -19, -1000, 0x7fffffff, -0x7fffffff - 1};
  for (i = 0; i < NOPTS(unknown); i++) {
    const char *t = iocpsrv_strerror(unknown[i]);
    CHECK(t != NULL);
    CHECK_STREQ(t, "unknown error");
    CHECK(iocpsrv_err_name(unknown[i]) != NULL);
  }
  CHECK(iocpsrv_strerror(0) != NULL);
  CHECK(iocpsrv_err_name(0) != NULL);

  const char *names[IOCPSRV_REASON_CONNECT_FAILED + 1];
  for (i = IOCPSRV_REASON_PEER_CLOSED; i <= IOCPSRV_REASON_CONNECT_FAILED; i++) {
    names[i] = iocpsrv_reason_name(i);
    CHECK(names[i] != NULL && names[i][0] != 0);
    for (j = 1; j < i; j++) CHECK(strcmp(names[i], names[j]) != 0);
  }
  CHECK_STREQ(iocpsrv_reason_name(IOCPSRV_REASON_PEER_CLOSED), "peer-closed");
  CHECK_STREQ(iocpsrv_reason_name(IOCPSRV_REASON_CONNECT_REFUSED), "connect-refused");
  CHECK_STREQ(iocpsrv_reason_name(IOCPSRV_REASON_CONNECT_FAILED), "connect-failed");
  CHECK_STREQ(iocpsrv_reason_name(14), "unknown");
  CHECK(iocpsrv_reason_name(0) != NULL);
  CHECK(iocpsrv_reason_name(99) != NULL);
  CHECK(iocpsrv_reason_name(-1) != NULL);

  CHECK_EQ(iocpsrv_version(), IOCPSRV_VERSION_HEX);
  CHECK_EQ(iocpsrv_version() >> 16, IOCPSRV_VERSION_MAJOR);
  const char *vs = iocpsrv_version_string();
  char want[32];
  snprintf(want, sizeof want, "%d.%d.%d ", IOCPSRV_VERSION_MAJOR, IOCPSRV_VERSION_MINOR,
           IOCPSRV_VERSION_PATCH);
  CHECK(vs != NULL);
  CHECK_MSG(strncmp(vs, want, strlen(want)) == 0 && strlen(vs) > strlen(want),
            "version string \"%s\" should be \"%s<backend>\"", vs, want);
  CHECK(vs == iocpsrv_version_string()); /* static */
}

/* ---- worker start / stop hooks ---- */
enum { HOOK_WORKERS = 3 };

typedef struct {
  tt_mutex_t m;
  tt_counter_t starts, stops;
  int started[64], stopped[64];
  uint64_t thread_of[64];
  int bad_index, bad_server, stop_thread_mismatch, stop_before_start;
  iocpsrv_t *srv;
  int packet_on_foreign_thread;
} hooks_t;

static hooks_t g_hooks;

static void IOCPSRV_CALL hook_start(iocpsrv_t *srv, int worker) {
  hooks_t *h = &g_hooks;
  tt_mutex_lock(&h->m);
  if (srv != h->srv) h->bad_server++;
  if (worker < 0 || worker >= 64) {
    h->bad_index++;
  } else {
    h->started[worker]++;
    h->thread_of[worker] = tt_thread_self();
  }
  tt_mutex_unlock(&h->m);
  tt_counter_add(&h->starts, 1);
}

static void IOCPSRV_CALL hook_stop(iocpsrv_t *srv, int worker) {
  hooks_t *h = &g_hooks;
  tt_mutex_lock(&h->m);
  if (srv != h->srv) h->bad_server++;
  if (worker < 0 || worker >= 64) {
    h->bad_index++;
  } else {
    if (h->started[worker] <= h->stopped[worker]) h->stop_before_start++;
    h->stopped[worker]++;
    if (h->thread_of[worker] != tt_thread_self()) h->stop_thread_mismatch++;
  }
  tt_mutex_unlock(&h->m);
  tt_counter_add(&h->stops, 1);
}

/* Contract line 1: callbacks run on the engine's worker threads. */
static int hooks_packet(echo_server_t *es, echo_conn_t *c, const uint8_t *d, size_t n) {
  hooks_t *h = &g_hooks;
  uint64_t self = tt_thread_self();
  int i, found = 0;
  tt_mutex_lock(&h->m);
  for (i = 0; i < 64; i++)
    if (h->started[i] > h->stopped[i] && h->thread_of[i] == self) found = 1;
  if (!found) h->packet_on_foreign_thread++;
  tt_mutex_unlock(&h->m);
  return ECHO_DEFAULT;
}

static void hooks_setup(echo_server_t *es) {
  g_hooks.srv = es->srv;
  CHECK_OK(iocpsrv_set_worker_hooks(es->srv, hook_start, hook_stop));
}

static void run_hooks(int workers) {
  hooks_t *h = &g_hooks;
  memset(h, 0, sizeof *h);
  tt_mutex_init(&h->m);
  tt_counter_init(&h->starts);
  tt_counter_init(&h->stops);
  echo_opt_t opts[] = {{IOCPSRV_OPT_WORKER_THREADS, workers}};
  echo_config_t cfg = {0};
  cfg.opts = opts;
  cfg.nopts = NOPTS(opts);
  cfg.setup = hooks_setup;
  cfg.on_packet = hooks_packet;
  echo_server_t *es = echo_create(&cfg);
  CHECK_EQ(tt_counter_get(&h->starts), 0);
  int run, i;
  for (run = 1; run <= 2; run++) {
    CHECK_OK(echo_listen(es));
    CHECK_MSG(tt_counter_wait(&h->starts, (int64_t)workers * run, TS_WAIT_MS) == 0,
              "%lld worker start hooks, expected %d", (long long)tt_counter_get(&h->starts),
              workers * run);
    ECHO_CHECK_STAT(es, workers, workers);
    ts_sock_t s[8];
    for (i = 0; i < 8; i++) {
      s[i] = connect_to(es);
      expect_echo(s[i], "on a worker?");
    }
    for (i = 0; i < 8; i++) ts_close(s[i]);
    CHECK_EQ(tt_counter_wait(&es->disconnects, 8 * run, TS_WAIT_MS), 0);
    CHECK_OK(echo_stop(es, 1000));
    /* stop joined the workers: every stop hook has run. */
    CHECK_EQ(tt_counter_get(&h->starts), (int64_t)workers * run);
    CHECK_EQ(tt_counter_get(&h->stops), (int64_t)workers * run);
    CHECK_EQ(echo_stats(es).workers, 0);
    tt_mutex_lock(&h->m);
    for (i = 0; i < 64; i++) {
      int want = i < workers ? run : 0;
      CHECK_MSG(h->started[i] == want && h->stopped[i] == want,
                "worker %d: %d starts, %d stops, expected %d each", i, h->started[i],
                h->stopped[i], want);
    }
    CHECK_EQ(h->bad_index, 0);
    CHECK_EQ(h->bad_server, 0);
    CHECK_EQ(h->stop_before_start, 0);
    CHECK_EQ(h->stop_thread_mismatch, 0);
    CHECK_EQ(h->packet_on_foreign_thread, 0);
    tt_mutex_unlock(&h->m);
    echo_check_clean(es);
  }
  echo_destroy(es);
  CHECK_EQ(tt_counter_get(&h->stops), (int64_t)workers * 2);
  tt_counter_destroy(&h->starts);
  tt_counter_destroy(&h->stops);
  tt_mutex_destroy(&h->m);
}

static void lifecycle_worker_hooks(void) {
  run_hooks(HOOK_WORKERS);
  run_hooks(1);
}

/* ---- the log callback is optional and harmless ---- */
static tt_counter_t g_logs;
static int g_log_bad;

static void IOCPSRV_CALL log_cb(iocpsrv_t *srv, int level, const char *msg) {
  if (level < 0 || level > 3 || msg == NULL) g_log_bad++;
  tt_counter_add(&g_logs, 1);
}

static void log_setup(echo_server_t *es) { CHECK_OK(iocpsrv_set_log_cb(es->srv, log_cb)); }

static void lifecycle_log_callback(void) {
  tt_counter_init(&g_logs);
  echo_opt_t opts[] = {{IOCPSRV_OPT_MAX_PACKET_SIZE, 100}};
  echo_config_t cfg = {0};
  cfg.opts = opts;
  cfg.nopts = NOPTS(opts);
  cfg.setup = log_setup;
  echo_server_t *es = echo_start(&cfg);
  ts_sock_t s = connect_to(es);
  expect_echo(s, "fine");
  uint8_t hdr[4];
  ts_encode_header(hdr, 1000, 4, 0);
  CHECK_EQ(ts_send_all(s, hdr, 4), 0); /* a protocol error, which engines like to log */
  expect_closed(s);
  ts_close(s);
  CHECK_EQ(tt_counter_wait(&es->disconnects, 1, TS_WAIT_MS), 0);
  echo_finish(es);
  CHECK_EQ(g_log_bad, 0);
  printf("(%lld log lines) ", (long long)tt_counter_get(&g_logs));
  tt_counter_destroy(&g_logs);
}

int main(int argc, char **argv) {
  test_init(argc, argv);
  TEST_RUN(lifecycle_strings);
  TEST_RUN(lifecycle_restart);
  TEST_RUN(lifecycle_two_servers);
  TEST_RUN(lifecycle_stop_from_callback);
  TEST_RUN(lifecycle_stop_under_load);
  TEST_RUN(lifecycle_destroy_running);
  TEST_RUN(lifecycle_calls_after_stop);
  TEST_RUN(lifecycle_bad_arguments);
  TEST_RUN(lifecycle_options);
  TEST_RUN(lifecycle_address_errors);
  TEST_RUN(lifecycle_worker_hooks);
  TEST_RUN(lifecycle_log_callback);
  return test_done();
}
