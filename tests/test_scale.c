/*
 * test_scale.c -- many clients at once, connection churn, the max-connections limit,
 * and IPv6 (::1, dual-stack "::").
 */
#include <stdlib.h>
#include <string.h>

#include "echo.h"
#include "sock.h"
#include "test.h"
#include "thread.h"

#define NOPTS(a) ((int)(sizeof(a) / sizeof((a)[0])))

static ts_sock_t connect_host(const char *host, int port) {
  ts_sock_t s = ts_connect(host, port, TS_WAIT_MS);
  CHECK_MSG(s != TS_INVALID, "connect to %s port %d failed", host, port);
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

/* ---- 1,000 concurrent clients ---- */
enum { SCALE_THREADS = 4, SCALE_PER_THREAD = 250, SCALE_ROUNDS = 5 };
#define SCALE_CLIENTS (SCALE_THREADS * SCALE_PER_THREAD)

typedef struct {
  echo_server_t *es;
  int index;
  tt_counter_t *connected, *go;
  int rc;
  const char *what;
  ts_sock_t s[SCALE_PER_THREAD];
} scale_thread_t;

static void scale_fail(scale_thread_t *t, int rc, const char *what) {
  if (t->rc == 0) {
    t->rc = rc;
    t->what = what;
  }
}

static void scale_main(void *p) {
  scale_thread_t *t = (scale_thread_t *)p;
  int i, r;
  for (i = 0; i < SCALE_PER_THREAD; i++) {
    t->s[i] = ts_connect("127.0.0.1", t->es->port, 20000);
    if (t->s[i] == TS_INVALID) scale_fail(t, TS_ERR, "connect");
  }
  tt_counter_add(t->connected, 1);
  if (tt_counter_wait(t->go, 1, 60000) != 0) scale_fail(t, TS_TIMEOUT, "waiting for go");
  if (t->rc) goto out;

  /* The broadcast the main thread sent before "go". */
  for (i = 0; i < SCALE_PER_THREAD; i++) {
    char buf[32];
    size_t got;
    int rc = ts_recv_packet(t->s[i], buf, sizeof buf, &got, 20000);
    if (rc != 0 || got != 9 || memcmp(buf, "hello all", 9) != 0) {
      scale_fail(t, rc ? rc : -100, "broadcast");
      goto out;
    }
  }
  /* Rounds: one packet to every socket, then every echo. */
  for (r = 0; r < SCALE_ROUNDS; r++) {
    uint8_t pkt[64], in[64];
    for (i = 0; i < SCALE_PER_THREAD; i++) {
      size_t len = 8 + (size_t)((i + r) % 50);
      test_fill_pattern(pkt, len, (uint64_t)(t->index * 100000 + i * 10 + r));
      test_put_u32le(pkt, (uint32_t)r); /* the echo server checks the sequence */
      int rc = ts_send_packet(t->s[i], pkt, len);
      if (rc != 0) {
        scale_fail(t, rc, "send");
        goto out;
      }
    }
    for (i = 0; i < SCALE_PER_THREAD; i++) {
      size_t len = 8 + (size_t)((i + r) % 50), got;
      test_fill_pattern(pkt, len, (uint64_t)(t->index * 100000 + i * 10 + r));
      test_put_u32le(pkt, (uint32_t)r);
      int rc = ts_recv_packet(t->s[i], in, sizeof in, &got, 20000);
      if (rc != 0 || got != len || memcmp(in, pkt, len) != 0) {
        scale_fail(t, rc ? rc : -100, "echo");
        goto out;
      }
    }
  }
out:
  for (i = 0; i < SCALE_PER_THREAD; i++) ts_close(t->s[i]);
}

static void scale_1000_clients(void) {
  echo_config_t cfg = {0};
  cfg.check_seq = 1;
  echo_server_t *es = echo_start(&cfg);
  tt_counter_t connected, go;
  tt_counter_init(&connected);
  tt_counter_init(&go);
  scale_thread_t *t = (scale_thread_t *)calloc(SCALE_THREADS, sizeof *t);
  tt_thread_t *th[SCALE_THREADS];
  int i;
  for (i = 0; i < SCALE_THREADS; i++) {
    t[i].es = es;
    t[i].index = i;
    t[i].connected = &connected;
    t[i].go = &go;
    th[i] = tt_thread_start(scale_main, &t[i]);
    CHECK(th[i] != NULL);
  }
  CHECK_EQ(tt_counter_wait(&connected, SCALE_THREADS, 40000), 0);
  for (i = 0; i < SCALE_THREADS; i++)
    CHECK_MSG(t[i].rc == 0, "client thread %d: %s failed: %s", i, t[i].what,
              ts_strerror(t[i].rc));
  CHECK_MSG(tt_counter_wait(&es->connects, SCALE_CLIENTS, 20000) == 0,
            "%lld of %d clients got a connect callback",
            (long long)tt_counter_get(&es->connects), SCALE_CLIENTS);
  /* All at once. */
  ECHO_CHECK_STAT(es, connections_now, SCALE_CLIENTS);
  CHECK_EQ(iocpsrv_connections(es->srv, NULL, 0), SCALE_CLIENTS);
  CHECK_EQ(iocpsrv_broadcast(es->srv, "hello all", 9), SCALE_CLIENTS);
  tt_counter_add(&go, 1);
  for (i = 0; i < SCALE_THREADS; i++) tt_thread_join(th[i]);
  for (i = 0; i < SCALE_THREADS; i++)
    CHECK_MSG(t[i].rc == 0, "client thread %d: %s failed: %s", i, t[i].what,
              ts_strerror(t[i].rc));
  CHECK_MSG(tt_counter_wait(&es->disconnects, SCALE_CLIENTS, 20000) == 0,
            "%lld of %d disconnect callbacks", (long long)tt_counter_get(&es->disconnects),
            SCALE_CLIENTS);
  ECHO_CHECK_STAT(es, connections_now, 0);
  ECHO_CHECK_STAT(es, packets_in, SCALE_CLIENTS * SCALE_ROUNDS);
  ECHO_CHECK_STAT(es, packets_out, SCALE_CLIENTS * (SCALE_ROUNDS + 1));
  iocpsrv_stats_t st = echo_stats(es);
  CHECK_EQ(st.connections_total, SCALE_CLIENTS);
  CHECK_EQ(st.connections_refused, 0);
  CHECK_EQ(es->reasons[IOCPSRV_REASON_PEER_CLOSED], SCALE_CLIENTS);
  echo_finish(es);
  free(t);
  tt_counter_destroy(&connected);
  tt_counter_destroy(&go);
}

/* ---- churn: thousands of short connections, ids never reused ---- */
enum { CHURN_THREADS = 4, CHURN_EACH = 500 };

typedef struct {
  int port, rc;
} churn_t;

static void churn_main(void *p) {
  churn_t *c = (churn_t *)p;
  int i;
  for (i = 0; i < CHURN_EACH && c->rc == 0; i++) {
    ts_sock_t s = ts_connect("127.0.0.1", c->port, TS_WAIT_MS);
    if (s == TS_INVALID) {
      c->rc = TS_ERR;
      break;
    }
    char buf[16];
    size_t got;
    int rc = ts_send_packet(s, "churn", 5);
    if (rc == 0) rc = ts_recv_packet(s, buf, sizeof buf, &got, TS_WAIT_MS);
    if (rc == 0 && (got != 5 || memcmp(buf, "churn", 5) != 0)) rc = -100;
    c->rc = rc;
    if (i % 3 == 0) ts_reset_close(s); else ts_close(s);
  }
}

static void scale_churn(void) {
  echo_config_t cfg = {0};
  echo_server_t *es = echo_start(&cfg);
  churn_t c[CHURN_THREADS];
  tt_thread_t *th[CHURN_THREADS];
  int i;
  for (i = 0; i < CHURN_THREADS; i++) {
    c[i].port = es->port;
    c[i].rc = 0;
    th[i] = tt_thread_start(churn_main, &c[i]);
  }
  for (i = 0; i < CHURN_THREADS; i++) tt_thread_join(th[i]);
  for (i = 0; i < CHURN_THREADS; i++)
    CHECK_MSG(c[i].rc == 0, "churn thread %d: %s", i, ts_strerror(c[i].rc));
  CHECK_EQ(tt_counter_wait(&es->disconnects, CHURN_THREADS * CHURN_EACH, 20000), 0);
  /* The echo server flags any id seen twice ("connection id reused"). */
  CHECK_EQ(es->contract_errors, 0);
  ECHO_CHECK_STAT(es, connections_now, 0);
  CHECK_EQ(echo_stats(es).connections_total, CHURN_THREADS * CHURN_EACH);
  echo_finish(es);
}

/* ---- max connections ---- */
static void scale_max_connections(void) {
  enum { MAX = 5 };
  echo_opt_t opts[] = {{IOCPSRV_OPT_MAX_CONNECTIONS, MAX}};
  echo_config_t cfg = {0};
  cfg.opts = opts;
  cfg.nopts = NOPTS(opts);
  echo_server_t *es = echo_start(&cfg);
  ts_sock_t s[MAX];
  int i;
  for (i = 0; i < MAX; i++) {
    s[i] = connect_host("127.0.0.1", es->port);
    expect_echo(s[i], "inside the limit");
  }
  /* One too many: closed at once, counted, never seen by the host. */
  ts_sock_t extra = connect_host("127.0.0.1", es->port);
  expect_closed(extra);
  ts_close(extra);
  ECHO_CHECK_STAT(es, connections_refused, 1);
  CHECK_EQ(tt_counter_get(&es->connects), MAX);
  for (i = 0; i < MAX; i++) expect_echo(s[i], "still served");

  /* Room again after one leaves. */
  echo_conn_t *c0 = echo_conn_for(es, s[0]);
  ts_close(s[0]);
  CHECK_EQ(echo_wait_disconnect(es, c0, TS_WAIT_MS), 0);
  ECHO_CHECK_STAT(es, connections_now, MAX - 1);
  s[0] = connect_host("127.0.0.1", es->port);
  expect_echo(s[0], "room again");
  CHECK_EQ(echo_stats(es).connections_refused, 1);
  for (i = 0; i < MAX; i++) ts_close(s[i]);
  CHECK_EQ(tt_counter_wait(&es->disconnects, MAX + 1, TS_WAIT_MS), 0);
  echo_finish(es);
}

/* ---- IPv6 ---- */
static void scale_ipv6(void) {
  if (!ts_ipv6_available()) {
    test_skip("::1 is not available on this machine");
    return;
  }
  echo_config_t cfg = {0};
  cfg.host = "::1";
  echo_server_t *es = echo_start(&cfg);
  ts_sock_t s[10];
  int i;
  for (i = 0; i < 10; i++) {
    s[i] = connect_host("::1", es->port);
    expect_echo(s[i], "over IPv6");
  }
  char local[80], want_local[80];
  CHECK_EQ(ts_local_addr(s[3], local, sizeof local), 0);
  CHECK_EQ(strncmp(local, "[::1]:", 6), 0);
  echo_conn_t *c = echo_conn_for(es, s[3]); /* peer text "[::1]:port" */
  iocpsrv_conn_info_t info;
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  CHECK_OK(iocpsrv_conn_info(es->srv, c->id, &info));
  CHECK_STREQ(info.peer, local);
  snprintf(want_local, sizeof want_local, "[::1]:%d", es->port);
  CHECK_STREQ(info.local, want_local);
  /* Not listening on IPv4. */
  ts_sock_t v4 = ts_connect("127.0.0.1", es->port, 2000);
  if (v4 != TS_INVALID) {
    /* Something else may own that IPv4 port; it is not us if no connect arrives. */
    ts_close(v4);
  }
  for (i = 0; i < 10; i++) ts_close(s[i]);
  CHECK_EQ(tt_counter_wait(&es->disconnects, 10, TS_WAIT_MS), 0);
  CHECK_EQ(tt_counter_get(&es->connects), 10);
  echo_finish(es);

  /* "::" is dual stack by default: IPv4 and IPv6 clients alike. */
  cfg.host = "::";
  es = echo_start(&cfg);
  ts_sock_t a = connect_host("::1", es->port);
  ts_sock_t b = connect_host("127.0.0.1", es->port);
  expect_echo(a, "v6 client on ::");
  expect_echo(b, "v4 client on ::");
  ts_close(a);
  ts_close(b);
  CHECK_EQ(tt_counter_wait(&es->disconnects, 2, TS_WAIT_MS), 0);
  echo_finish(es);

  /* IPV6_ONLY: the IPv4 client is turned away by the kernel. */
  echo_opt_t opts[] = {{IOCPSRV_OPT_IPV6_ONLY, 1}};
  cfg.opts = opts;
  cfg.nopts = NOPTS(opts);
  es = echo_start(&cfg);
  a = connect_host("::1", es->port);
  expect_echo(a, "v6 only");
  b = ts_connect("127.0.0.1", es->port, 2000);
  if (b != TS_INVALID) {
    /* Connected to someone else's IPv4 socket on the same port number, or to us. */
    CHECK_MSG(tt_counter_wait(&es->connects, 2, 300) != 0,
              "an IPv4 client was accepted by an IPV6_ONLY listener");
    ts_close(b);
  }
  ts_close(a);
  CHECK_EQ(tt_counter_wait(&es->disconnects, 1, TS_WAIT_MS), 0);
  CHECK_EQ(tt_counter_get(&es->connects), 1);
  echo_finish(es);

  /* NULL host means "::" (or 0.0.0.0): loopback IPv4 reaches it. */
  cfg.host = NULL;
  cfg.opts = NULL;
  cfg.nopts = 0;
  echo_server_t *any = echo_create(&cfg);
  CHECK_OK(iocpsrv_listen(any->srv, NULL, 0));
  any->port = iocpsrv_port(any->srv);
  CHECK_GT(any->port, 0);
  b = connect_host("127.0.0.1", any->port);
  expect_echo(b, "to the NULL host");
  ts_close(b);
  CHECK_EQ(tt_counter_wait(&any->disconnects, 1, TS_WAIT_MS), 0);
  echo_finish(any);
}

int main(int argc, char **argv) {
  test_init(argc, argv);
  TEST_RUN(scale_1000_clients);
  TEST_RUN(scale_churn);
  TEST_RUN(scale_max_connections);
  TEST_RUN(scale_ipv6);
  return test_done();
}
