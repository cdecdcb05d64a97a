/*
 * test_proxy_races.c -- regression tests for two PROXY-protocol races (issue 15, items
 * 5 and 6), against the fault-injection build: core/fault.h's test points let the
 * test hold a worker at an exact place, so a window that is microseconds wide in real
 * runs is open for as long as the test needs.
 *
 *   timeout   a PROXY header that completes just as the sweep times the connection
 *             out ("header took too long", IOCPSRV_OPT_CLOSE_TIMEOUT_MS) must not be
 *             introduced: the old code ran the connect callback and delivered the
 *             packet, then skipped the disconnect (the connection was marked refused),
 *             so the host saw a connect without a disconnect.
 *   reuse     a PROXY client refused by the connect callback releases its slot at
 *             once, and the next client takes that slot (the free list is LIFO); the
 *             old code still did `free(c->proxy_buf); proxy_len = 0` on the slot after
 *             the refusal, which threw away the new client's half-received header.
 *
 * Every sub-test ends with stop, one disconnect per connect, connections_now 0.
 */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "core/fault.h"
#include "echo.h"
#include "sock.h"
#include "test.h"
#include "thread.h"

#define NOPTS(a) ((int)(sizeof(a) / sizeof((a)[0])))

enum { HOLD_MS = 5000, CLOSE_TIMEOUT_MS = 100 };

static ts_sock_t connect_to(echo_server_t *es) {
  ts_sock_t s = ts_connect("127.0.0.1", es->port, TS_WAIT_MS);
  CHECK_MSG(s != TS_INVALID, "connect to port %d failed", es->port);
  return s;
}

static void expect_packet(ts_sock_t s, const char *text) {
  uint8_t buf[256];
  size_t got = 0, n = strlen(text);
  int rc = ts_recv_packet(s, buf, sizeof buf, &got, TS_WAIT_MS);
  CHECK_MSG(rc == 0, "waiting for the echo of \"%s\": %s", text, ts_strerror(rc));
  CHECK_EQ(got, n);
  CHECK_MEMEQ(buf, text, n);
}

/* A v1 header naming `src`:`sport`, followed by one framed packet `text`. */
static size_t header_and_packet(uint8_t *out, const char *src, int sport, const char *text) {
  int n = snprintf((char *)out, 128, "PROXY TCP4 %s 5.6.7.8 %d 2000\r\n", src, sport);
  return (size_t)n + ts_frame(out + n, text, strlen(text), 4, 0);
}

/* The engine's last log line, for failure messages. */
static tt_mutex_t g_log_lock;
static char g_last_log[256];

static void IOCPSRV_CALL keep_log(iocpsrv_t *server, int level, const char *message) {
  (void)server, (void)level;
  tt_mutex_lock(&g_log_lock);
  snprintf(g_last_log, sizeof g_last_log, "%s", message);
  tt_mutex_unlock(&g_log_lock);
}

static const char *last_log(void) {
  static char copy[256];
  tt_mutex_lock(&g_log_lock);
  snprintf(copy, sizeof copy, "%s", g_last_log[0] ? g_last_log : "(nothing)");
  tt_mutex_unlock(&g_log_lock);
  return copy;
}

/* The PROXY headers in these tests come from this test's own loopback clients. */
static void trust_loopback(echo_server_t *es) {
  CHECK_OK(iocpsrv_set_option_str(es->srv, IOCPSRV_OPT_PROXY_TRUSTED, "127.0.0.1"));
  CHECK_OK(iocpsrv_set_log_cb(es->srv, keep_log));
}

/* ---- holding a worker at a test point ---- */

typedef struct {
  tt_mutex_t m;
  int point;               /* FAULT_POINT_* to hold at */
  iocpsrv_conn_id_t only;  /* only for this id (0: the next one that comes) */
  int armed;
  iocpsrv_conn_id_t held;  /* the id that was held */
  tt_counter_t entered, released, expired;
} holdpt_t;

static holdpt_t g_hp;

static void hp_init(void) {
  memset(&g_hp, 0, sizeof g_hp);
  tt_mutex_init(&g_hp.m);
  tt_counter_init(&g_hp.entered);
  tt_counter_init(&g_hp.released);
  tt_counter_init(&g_hp.expired);
}

static void hp_destroy(void) {
  iocpsrv_fault_set_hook(NULL, NULL);
  tt_counter_destroy(&g_hp.entered);
  tt_counter_destroy(&g_hp.released);
  tt_counter_destroy(&g_hp.expired);
  tt_mutex_destroy(&g_hp.m);
}

static void hp_arm(int point, iocpsrv_conn_id_t only) {
  tt_mutex_lock(&g_hp.m);
  g_hp.point = point;
  g_hp.only = only;
  g_hp.armed = 1;
  tt_mutex_unlock(&g_hp.m);
}

static void hp_disarm(void) {
  tt_mutex_lock(&g_hp.m);
  g_hp.armed = 0;
  tt_mutex_unlock(&g_hp.m);
}

/* Runs on a worker at every test point: holds it (bounded) at the armed one. */
static void hp_hook(int point, uint64_t arg, void *ctx) {
  holdpt_t *hp = (holdpt_t *)ctx;
  tt_mutex_lock(&hp->m);
  int hold = hp->armed && point == hp->point && (hp->only == 0 || hp->only == arg);
  if (hold) {
    hp->armed = 0;
    hp->held = arg;
  }
  tt_mutex_unlock(&hp->m);
  if (!hold) return;
  int64_t me = tt_counter_add(&hp->entered, 1);
  if (tt_counter_wait(&hp->released, me, HOLD_MS) != 0) tt_counter_add(&hp->expired, 1);
}

/* ==== item 5: the header completes as the sweep times the connection out ==== */

static void proxy_races_header_completes_as_it_times_out(void) {
  enum { ROUNDS = 3, MAX_TRIES = 10 };
  hp_init();
  echo_opt_t opts[] = {{IOCPSRV_OPT_PROXY_PROTOCOL, IOCPSRV_PROXY_REQUIRED},
                       {IOCPSRV_OPT_CLOSE_TIMEOUT_MS, CLOSE_TIMEOUT_MS},
                       {IOCPSRV_OPT_WORKER_THREADS, 2}};
  echo_config_t cfg = {0};
  cfg.opts = opts;
  cfg.nopts = NOPTS(opts);
  cfg.setup = trust_loopback;
  echo_server_t *es = echo_start(&cfg);
  iocpsrv_fault_set_hook(hp_hook, &g_hp);
  uint8_t msg[256];

  /* The set-up works: an unheld PROXY client is met under the header's address. */
  ts_sock_t ok = connect_to(es);
  CHECK_EQ(ts_send_all(ok, msg, header_and_packet(msg, "1.2.3.4", 1000, "plain")), 0);
  expect_packet(ok, "plain");
  CHECK(echo_wait_peer(es, "1.2.3.4:1000", TS_WAIT_MS) != NULL);
  CHECK_EQ(tt_counter_get(&es->connects), 1);
  ts_close(ok);
  CHECK_EQ(tt_counter_wait(&es->disconnects, 1, TS_WAIT_MS), 0);
  ECHO_CHECK_STAT(es, connections_now, 0);

  int held = 0, tries = 0;
  while (held < ROUNDS) {
    CHECK_MSG(++tries <= MAX_TRIES, "the header was never read before the sweep timed "
              "it out (%d tries)", MAX_TRIES);
    iocpsrv_stats_t st0 = echo_stats(es);
    int64_t connects0 = tt_counter_get(&es->connects);
    int64_t packets0 = tt_counter_get(&es->packets);
    int64_t disconnects0 = tt_counter_get(&es->disconnects);
    int64_t entered0 = tt_counter_get(&g_hp.entered);
    hp_arm(FAULT_POINT_PROXY_PARSED, 0);
    ts_sock_t s = connect_to(es);
    /* The whole header and a packet in one write: the worker parses it at once and
     * is held right there, before the host meets the connection. */
    CHECK_EQ(ts_send_all(s, msg, header_and_packet(msg, "1.2.3.4", 1000 + tries, "late")), 0);
    int64_t deadline = tt_now_ms() + TS_WAIT_MS;
    while (tt_counter_get(&g_hp.entered) == entered0 &&
           echo_stats(es).protocol_errors == st0.protocol_errors && tt_now_ms() < deadline)
      tt_counter_wait(&g_hp.entered, entered0 + 1, 10);
    if (tt_counter_get(&g_hp.entered) == entered0) {
      /* The sweep was first (a very slow start): not the race under test, retry. */
      hp_disarm();
      CHECK_MSG(echo_stats(es).protocol_errors > st0.protocol_errors,
                "the PROXY header was neither parsed nor timed out within %d ms", TS_WAIT_MS);
      printf("  try %d: timed out before its header was read; again\n", tries);
      CHECK(ts_wait_close(s, TS_WAIT_MS, NULL) != TS_TIMEOUT);
      ts_close(s);
      ECHO_CHECK_STAT(es, connections_now, 0);
      continue;
    }
    held++;
    /* The worker holds the parsed header; the other worker's sweep now finds the
     * connection past IOCPSRV_OPT_CLOSE_TIMEOUT_MS without a header and times it
     * out. */
    int64_t t0 = tt_now_ms();
    ECHO_WAIT_FOR(echo_stats(es).protocol_errors > st0.protocol_errors);
    CHECK_MSG(echo_stats(es).protocol_errors == st0.protocol_errors + 1,
              "round %d: the sweep did not time the held connection out (protocol_errors "
              "%llu, was %llu)", held, (unsigned long long)echo_stats(es).protocol_errors,
              (unsigned long long)st0.protocol_errors);
    int64_t waited = tt_now_ms() - t0;
    CHECK_EQ(tt_counter_get(&g_hp.expired), 0);
    tt_counter_add(&g_hp.released, 1);
    /* The client is closed, and the host never heard of it. */
    int rc = ts_wait_close(s, TS_WAIT_MS, NULL);
    CHECK_MSG(rc == TS_RESET || rc == TS_EOF, "round %d: the timed-out client was not "
              "closed: %s", held, ts_strerror(rc));
    ts_close(s);
    ECHO_CHECK_STAT(es, connections_now, 0);
    int64_t connects = tt_counter_get(&es->connects) - connects0;
    int64_t packets = tt_counter_get(&es->packets) - packets0;
    int64_t disconnects = tt_counter_get(&es->disconnects) - disconnects0;
    printf("  round %d: held %lld ms until the sweep timed it out; host saw %lld connect, "
           "%lld packet callbacks\n", held, (long long)waited, (long long)connects,
           (long long)packets);
    CHECK_MSG(connects == 0 && packets == 0,
              "round %d: the host met a connection the sweep had already timed out: %lld "
              "connect and %lld packet callbacks (and %lld disconnects: a connect without "
              "a disconnect)", held, (long long)connects, (long long)packets,
              (long long)disconnects);
    iocpsrv_stats_t st = echo_stats(es);
    CHECK_EQ(st.connections_total, st0.connections_total);
    CHECK_EQ(st.protocol_errors, st0.protocol_errors + 1);
  }

  /* Still serving. */
  ts_sock_t after = connect_to(es);
  CHECK_EQ(ts_send_all(after, msg, header_and_packet(msg, "1.2.3.4", 999, "after")), 0);
  expect_packet(after, "after");
  ts_close(after);
  iocpsrv_fault_set_hook(NULL, NULL);
  echo_finish(es);
  hp_destroy();
}

/* ==== item 6: a refused PROXY client's slot, reused at once ==== */

typedef struct {
  tt_mutex_t m;
  iocpsrv_conn_id_t refused_id; /* the last client refused ("10.0.0.1") */
  iocpsrv_conn_id_t met_id;     /* the last client met ("10.0.0.2") */
  char met_peer[64];
} reuse_t;

static int reuse_connect(echo_server_t *es, iocpsrv_conn_id_t id, const char *peer) {
  reuse_t *ru = (reuse_t *)es->cfg.ctx;
  int refuse = strncmp(peer, "10.0.0.1:", 9) == 0;
  tt_mutex_lock(&ru->m);
  if (refuse) {
    ru->refused_id = id;
    /* Hold the worker right after this refusal, before it returns from reading the
     * header (the old code's free(c->proxy_buf) came there). The current code has no
     * test point after a refusal (it touches nothing): the hold never happens. */
    hp_arm(FAULT_POINT_PROXY_INTRODUCED, id);
  } else {
    ru->met_id = id;
    snprintf(ru->met_peer, sizeof ru->met_peer, "%s", peer);
  }
  tt_mutex_unlock(&ru->m);
  return refuse;
}

static iocpsrv_conn_id_t slot_of(iocpsrv_conn_id_t id) { return id & 0xFFFFFFu; }

static void proxy_races_refused_slot_reused(void) {
  enum { ROUNDS = 20 };
  hp_init();
  reuse_t ru;
  memset(&ru, 0, sizeof ru);
  tt_mutex_init(&ru.m);
  echo_opt_t opts[] = {{IOCPSRV_OPT_PROXY_PROTOCOL, IOCPSRV_PROXY_REQUIRED},
                       {IOCPSRV_OPT_WORKER_THREADS, 2}};
  echo_config_t cfg = {0};
  cfg.opts = opts;
  cfg.nopts = NOPTS(opts);
  cfg.setup = trust_loopback;
  cfg.on_connect = reuse_connect;
  cfg.ctx = &ru;
  echo_server_t *es = echo_start(&cfg);
  iocpsrv_fault_set_hook(hp_hook, &g_hp);
  uint8_t a_msg[128], b_msg[128];
  int r, same_slot = 0, holds = 0;
  for (r = 1; r <= ROUNDS; r++) {
    /* Quiet first: every byte so far counted, every slot back on the free list. */
    ECHO_CHECK_STAT(es, connections_now, 0);
    uint64_t in0 = echo_stats(es).bytes_in;
    int64_t entered0 = tt_counter_get(&g_hp.entered);

    /* A: header and packet whole, refused by the connect callback. */
    char a_text[32], b_text[32];
    snprintf(a_text, sizeof a_text, "A's packet %d", r);
    size_t a_len = header_and_packet(a_msg, "10.0.0.1", 1000 + r, a_text);
    ts_sock_t a = connect_to(es);
    CHECK_EQ(ts_send_all(a, a_msg, a_len), 0);
    CHECK_EQ(tt_counter_wait(&es->rejects, r, TS_WAIT_MS), 0);
    int rc = ts_wait_close(a, TS_WAIT_MS, NULL);
    CHECK_MSG(rc == TS_EOF || rc == TS_RESET, "round %d: refused A not closed: %s", r,
              ts_strerror(rc));
    ts_close(a);
    ECHO_CHECK_STAT(es, connections_now, 0); /* A's slot is back on the free list */

    /* B takes the slot A released and sends half of its header. */
    snprintf(b_text, sizeof b_text, "B's packet %d", r);
    size_t b_len = header_and_packet(b_msg, "10.0.0.2", 2000 + r, b_text);
    size_t half = 17; /* "PROXY TCP4 10.0.0" */
    ts_sock_t b = connect_to(es);
    CHECK_EQ(ts_send_all(b, b_msg, half), 0);
    /* The half is stored once its bytes are counted (a worker publishes its counts
     * after the batch that read them). A's count may still be held with A's worker. */
    ECHO_WAIT_FOR(echo_stats(es).bytes_in == in0 + half ||
                  echo_stats(es).bytes_in == in0 + a_len + half);
    uint64_t in1 = echo_stats(es).bytes_in;
    CHECK_MSG(in1 == in0 + half || in1 == in0 + a_len + half,
              "round %d: bytes_in %llu, expected %llu + %u (+ %u)", r, (unsigned long long)in1,
              (unsigned long long)in0, (unsigned)half, (unsigned)a_len);

    /* Whatever held A's worker after the refusal lets go now (nothing, on the current
     * code), then B completes its header. */
    int was_held = tt_counter_get(&g_hp.entered) > entered0;
    holds += was_held;
    hp_disarm();
    tt_counter_add(&g_hp.released, 1);
    /* ... and A's worker is done with that batch once it has published A's bytes. */
    ECHO_CHECK_STAT(es, bytes_in, in0 + a_len + half);
    CHECK_EQ(ts_send_all(b, b_msg + half, b_len - half), 0);
    uint8_t buf[64];
    size_t got = 0;
    rc = ts_recv_packet(b, buf, sizeof buf, &got, TS_WAIT_MS);
    CHECK_MSG(rc == 0, "round %d: B (in the slot refused A had a moment before%s) sent its "
              "PROXY header in two parts and was %s instead of being met and echoed; the "
              "server's last log line: \"%s\"", r,
              was_held ? ", A's worker held after the refusal" : "", ts_strerror(rc),
              last_log());
    CHECK_EQ(got, strlen(b_text));
    CHECK_MEMEQ(buf, b_text, got);
    tt_mutex_lock(&ru.m);
    iocpsrv_conn_id_t a_id = ru.refused_id, b_id = ru.met_id;
    char b_peer[64];
    snprintf(b_peer, sizeof b_peer, "%s", ru.met_peer);
    tt_mutex_unlock(&ru.m);
    char want_peer[64];
    snprintf(want_peer, sizeof want_peer, "10.0.0.2:%d", 2000 + r);
    CHECK_STREQ(b_peer, want_peer);
    if (slot_of(a_id) == slot_of(b_id)) same_slot++;
#ifndef _WIN32
    /* epoll releases a refused client's slot inside the refusal, so B gets it (LIFO).
     * (IOCP may release it later, when its last I/O completes.) */
    CHECK_MSG(slot_of(a_id) == slot_of(b_id), "round %d: B got slot %llu, A had %llu", r,
              (unsigned long long)slot_of(b_id), (unsigned long long)slot_of(a_id));
#endif
    echo_conn_t *cb = echo_find(es, b_id);
    CHECK(cb != NULL);
    ts_close(b);
    CHECK_EQ(echo_wait_disconnect(es, cb, TS_WAIT_MS), 0);
  }
  printf("  %d rounds: B reused A's slot in %d, A's worker held after the refusal in %d\n",
         ROUNDS, same_slot, holds);
  CHECK_EQ(tt_counter_get(&g_hp.expired), 0);
  iocpsrv_fault_set_hook(NULL, NULL);
  ECHO_CHECK_STAT(es, connections_rejected, ROUNDS);
  echo_finish(es);
  tt_mutex_destroy(&ru.m);
  hp_destroy();
}

/* The same without holding anyone: client threads refuse and reconnect as fast as they
 * can, split headers into two writes, and every client that is met must get its own
 * address and its packets back. */
enum { STRESS_THREADS = 4, STRESS_ROUNDS = 200 };

typedef struct {
  int port, index, rc, round;
  char what[160];
} stress_t;

static void stress_main(void *p) {
  stress_t *t = (stress_t *)p;
  uint8_t msg[128], buf[64];
  int r;
  for (r = 0; r < STRESS_ROUNDS && t->rc == 0; r++) {
    t->round = r;
    char text[32];
    snprintf(text, sizeof text, "t%d r%d", t->index, r);
    /* A refused client (10.0.0.1), then at once a client with a split header. */
    ts_sock_t a = ts_connect("127.0.0.1", t->port, TS_WAIT_MS);
    if (a == TS_INVALID) {
      t->rc = TS_ERR;
      snprintf(t->what, sizeof t->what, "connect A");
      break;
    }
    size_t a_len = header_and_packet(msg, "10.0.0.1", 1000 + t->index, "refused");
    ts_send_all(a, msg, a_len);
    ts_sock_t b = ts_connect("127.0.0.1", t->port, TS_WAIT_MS);
    if (b == TS_INVALID) {
      t->rc = TS_ERR;
      snprintf(t->what, sizeof t->what, "connect B");
      ts_close(a);
      break;
    }
    int rc = ts_wait_close(a, TS_WAIT_MS, NULL);
    ts_close(a);
    if (rc != TS_EOF && rc != TS_RESET) {
      t->rc = rc == 0 ? TS_ERR : rc;
      snprintf(t->what, sizeof t->what, "refused A not closed");
      ts_close(b);
      break;
    }
    size_t b_len = header_and_packet(msg, "10.0.0.2", 3000 + t->index * 100 + r % 100, text);
    size_t half = 9 + (size_t)(r % 20);
    rc = ts_send_all(b, msg, half);
    if (rc == 0) rc = ts_send_all(b, msg + half, b_len - half);
    size_t got = 0;
    if (rc == 0) rc = ts_recv_packet(b, buf, sizeof buf, &got, TS_WAIT_MS);
    if (rc == 0 && (got != strlen(text) || memcmp(buf, text, got) != 0)) rc = TS_ERR;
    if (rc != 0) {
      t->rc = rc;
      snprintf(t->what, sizeof t->what, "B's header split after %u bytes: %s",
               (unsigned)half, ts_strerror(rc));
    }
    ts_close(b);
  }
}

static int stress_connect(echo_server_t *es, iocpsrv_conn_id_t id, const char *peer) {
  (void)es, (void)id;
  return strncmp(peer, "10.0.0.1:", 9) == 0;
}

static void proxy_races_refused_slot_reuse_stress(void) {
  echo_opt_t opts[] = {{IOCPSRV_OPT_PROXY_PROTOCOL, IOCPSRV_PROXY_REQUIRED},
                       {IOCPSRV_OPT_WORKER_THREADS, 4}};
  echo_config_t cfg = {0};
  cfg.opts = opts;
  cfg.nopts = NOPTS(opts);
  cfg.setup = trust_loopback;
  cfg.on_connect = stress_connect;
  echo_server_t *es = echo_start(&cfg);
  stress_t t[STRESS_THREADS];
  tt_thread_t *th[STRESS_THREADS];
  int i;
  memset(t, 0, sizeof t);
  for (i = 0; i < STRESS_THREADS; i++) {
    t[i].port = es->port;
    t[i].index = i;
    th[i] = tt_thread_start(stress_main, &t[i]);
    CHECK(th[i] != NULL);
  }
  for (i = 0; i < STRESS_THREADS; i++) tt_thread_join(th[i]);
  for (i = 0; i < STRESS_THREADS; i++)
    CHECK_MSG(t[i].rc == 0, "client thread %d, round %d: %s (the server's last log line: "
              "\"%s\")", i, t[i].round, t[i].what, last_log());
  CHECK_EQ(tt_counter_wait(&es->disconnects, STRESS_THREADS * STRESS_ROUNDS, TS_WAIT_MS), 0);
  /* Every met client was named by its own header. */
  tt_mutex_lock(&es->lock);
  echo_conn_t *c;
  int met = 0;
  for (c = es->all; c; c = c->next_all) {
    if (c->state == 3) continue;
    met++;
    CHECK_MSG(strncmp(c->peer, "10.0.0.2:", 9) == 0, "a client met as %s", c->peer);
    CHECK_EQ(c->packets, 1);
  }
  tt_mutex_unlock(&es->lock);
  CHECK_EQ(met, STRESS_THREADS * STRESS_ROUNDS);
  ECHO_CHECK_STAT(es, connections_rejected, STRESS_THREADS * STRESS_ROUNDS);
  echo_finish(es);
}

int main(int argc, char **argv) {
  test_init(argc, argv);
  tt_mutex_init(&g_log_lock);
  TEST_RUN(proxy_races_header_completes_as_it_times_out);
  TEST_RUN(proxy_races_refused_slot_reused);
  TEST_RUN(proxy_races_refused_slot_reuse_stress);
  return test_done();
}
