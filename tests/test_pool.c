/* test_pool.c -- the dynamic worker pool (IOCPSRV_OPT_POOL_*): it grows while every
 * worker is stuck in a callback so a new client is still served, shrinks back to its
 * minimum when the load ends, never passes its maximum, and stops cleanly while
 * growing. The contract tests run again with the pool on (test_contract_pool). */
#include <stdio.h>
#include <string.h>

#include "echo.h"
#include "test.h"

#define NOPTS(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* Packets "BLOCK" wait in the callback until the test opens the gate. */
typedef struct gate_s {
  tt_counter_t blocked; /* callbacks waiting now (+1 each) */
  tt_counter_t open;    /* 1 = released */
} gate_t;

static int block_hook(echo_server_t *es, echo_conn_t *c, const uint8_t *d, size_t n) {
  gate_t *g = (gate_t *)es->cfg.ctx;
  (void)c;
  if (n == 5 && memcmp(d, "BLOCK", 5) == 0) {
    tt_counter_add(&g->blocked, 1);
    tt_counter_wait(&g->open, 1, 30000);
  }
  return ECHO_DEFAULT;
}

static void gate_init(gate_t *g) {
  tt_counter_init(&g->blocked);
  tt_counter_init(&g->open);
}

static void gate_destroy(gate_t *g) {
  tt_counter_destroy(&g->blocked);
  tt_counter_destroy(&g->open);
}

static ts_sock_t connect_to(echo_server_t *es) {
  ts_sock_t s = ts_connect("127.0.0.1", es->port, TS_WAIT_MS);
  CHECK_MSG(s != TS_INVALID, "connect to port %d failed", es->port);
  return s;
}

/* Block `n` workers: n clients each send BLOCK and the test waits until all n
 * callbacks are inside the hook. */
static void block_workers(echo_server_t *es, gate_t *g, ts_sock_t *socks, int n) {
  int i;
  for (i = 0; i < n; i++) {
    socks[i] = connect_to(es);
    CHECK_EQ(ts_send_packet(socks[i], "BLOCK", 5), 0);
  }
  CHECK_EQ(tt_counter_wait(&g->blocked, n, TS_WAIT_MS), 0);
}

static iocpsrv_stats_t stats_of(echo_server_t *es) {
  iocpsrv_stats_t st;
  memset(&st, 0, sizeof st);
  st.struct_size = sizeof st;
  CHECK_OK(iocpsrv_stats(es->srv, &st));
  return st;
}

/* Polls the stats until `workers` equals `want` (the pool has no event to wait on). */
static int wait_workers(echo_server_t *es, uint32_t want, int timeout_ms) {
  int64_t deadline = tt_now_ms() + timeout_ms;
  while (tt_now_ms() < deadline) {
    if (stats_of(es).workers == want) return 0;
    tt_sleep_ms(10);
  }
  return -1;
}

typedef struct timed_echo_s {
  int port;
  int64_t elapsed_ms;
  int rc;
  int gate_was_open; /* whether the gate had been opened when the echo arrived */
  gate_t *gate;
} timed_echo_t;

/* A new client while every worker blocks: how long until its echo. */
static void new_client_echo(echo_server_t *es, gate_t *g, timed_echo_t *t) {
  int64_t start = tt_now_ms();
  ts_sock_t s = connect_to(es);
  uint8_t buf[16];
  size_t got = 0;
  CHECK_EQ(ts_send_packet(s, "ping", 4), 0);
  t->rc = ts_recv_packet(s, buf, sizeof buf, &got, 20000);
  t->elapsed_ms = tt_now_ms() - start;
  t->gate_was_open = tt_counter_get(&g->open) > 0;
  ts_close(s);
}

static void release_later(void *arg) {
  gate_t *g = (gate_t *)arg;
  tt_sleep_ms(1000); /* the fixed pool can only answer after this */
  tt_counter_add(&g->open, 1);
}

/* Before/after: a new client's echo while 2 workers block, with the pool off and on. */
static void run_blocking_round(int pool_on, timed_echo_t *t) {
  gate_t g;
  gate_init(&g);
  echo_opt_t opts[] = {{IOCPSRV_OPT_WORKER_THREADS, 2},
                       {IOCPSRV_OPT_POOL_MAX, pool_on ? 8 : 0},
                       {IOCPSRV_OPT_POOL_BUSY_MS, 100}};
  echo_config_t cfg = {0};
  cfg.opts = opts;
  cfg.nopts = pool_on ? 3 : 1;
  cfg.on_packet = block_hook;
  cfg.ctx = &g;
  echo_server_t *es = echo_start(&cfg);
  ts_sock_t socks[2];
  block_workers(es, &g, socks, 2);
  tt_thread_t *rel = pool_on ? NULL : tt_thread_start(release_later, &g);
  new_client_echo(es, &g, t);
  if (rel) tt_thread_join(rel);
  else tt_counter_add(&g.open, 1);
  int i;
  for (i = 0; i < 2; i++) {
    uint8_t buf[8];
    size_t got = 0;
    CHECK_EQ(ts_recv_packet(socks[i], buf, sizeof buf, &got, TS_WAIT_MS), 0);
    ts_close(socks[i]);
  }
  iocpsrv_stats_t st = stats_of(es);
  if (pool_on) {
    CHECK_GE(st.pool_grows, 1);
    CHECK(st.workers_peak >= 3 && st.workers_peak <= 8);
  } else {
    CHECK_EQ(st.pool_grows, 0);
  }
  echo_finish(es);
  gate_destroy(&g);
}

static void pool_serves_new_client_while_callbacks_block(void) {
  timed_echo_t off, on;
  memset(&off, 0, sizeof off);
  memset(&on, 0, sizeof on);
  run_blocking_round(0, &off);
  run_blocking_round(1, &on);
  printf("(new client's echo while 2 of 2 workers block: pool off %lld ms, pool on %lld ms) ",
         (long long)off.elapsed_ms, (long long)on.elapsed_ms);
  CHECK_EQ(off.rc, 0);
  CHECK_EQ(on.rc, 0);
  /* The fixed pool could only answer once the gate opened; the dynamic one answered
   * while both callbacks still blocked. */
  CHECK_MSG(off.gate_was_open, "a fixed pool of 2 answered while both workers blocked?");
  CHECK_MSG(!on.gate_was_open, "the pool did not serve the new client while blocked");
}

static void pool_shrinks_back_to_min(void) {
  gate_t g;
  gate_init(&g);
  echo_opt_t opts[] = {{IOCPSRV_OPT_POOL_MIN, 2},
                       {IOCPSRV_OPT_POOL_MAX, 6},
                       {IOCPSRV_OPT_POOL_BUSY_MS, 20},
                       {IOCPSRV_OPT_POOL_IDLE_MS, 200}};
  echo_config_t cfg = {0};
  cfg.opts = opts;
  cfg.nopts = NOPTS(opts);
  cfg.on_packet = block_hook;
  cfg.ctx = &g;
  echo_server_t *es = echo_start(&cfg);
  CHECK_EQ(stats_of(es).workers, 2);
  ts_sock_t socks[4];
  block_workers(es, &g, socks, 4); /* 4 blocked callbacks need 4 workers: it grew */
  CHECK_GE(stats_of(es).workers, 4);
  tt_counter_add(&g.open, 1);
  int i;
  for (i = 0; i < 4; i++) ts_close(socks[i]);
  CHECK_MSG(wait_workers(es, 2, 15000) == 0, "the pool did not shrink back to 2 (now %u)",
            stats_of(es).workers);
  iocpsrv_stats_t st = stats_of(es);
  CHECK_GE(st.pool_shrinks, 2);
  CHECK_GE(st.pool_grows, 2);
  /* Back at the minimum it still serves. */
  ts_sock_t s = connect_to(es);
  uint8_t buf[8];
  size_t got = 0;
  CHECK_EQ(ts_send_packet(s, "after", 5), 0);
  CHECK_EQ(ts_recv_packet(s, buf, sizeof buf, &got, TS_WAIT_MS), 0);
  ts_close(s);
  echo_finish(es);
  gate_destroy(&g);
}

static void pool_never_exceeds_max(void) {
  gate_t g;
  gate_init(&g);
  echo_opt_t opts[] = {{IOCPSRV_OPT_POOL_MIN, 1},
                       {IOCPSRV_OPT_POOL_MAX, 3},
                       {IOCPSRV_OPT_POOL_BUSY_MS, 5}};
  echo_config_t cfg = {0};
  cfg.opts = opts;
  cfg.nopts = NOPTS(opts);
  cfg.on_packet = block_hook;
  cfg.ctx = &g;
  echo_server_t *es = echo_start(&cfg);
  ts_sock_t socks[6];
  int i;
  for (i = 0; i < 6; i++) {
    socks[i] = connect_to(es);
    CHECK_EQ(ts_send_packet(socks[i], "BLOCK", 5), 0);
  }
  /* Three callbacks block (one per worker the pool may have); the other three wait. */
  CHECK_EQ(tt_counter_wait(&g.blocked, 3, TS_WAIT_MS), 0);
  for (i = 0; i < 20; i++) { /* watch it for a while: it must stay at 3 */
    iocpsrv_stats_t st = stats_of(es);
    CHECK(st.workers <= 3);
    CHECK(st.workers_peak <= 3);
    tt_sleep_ms(10);
  }
  CHECK_EQ(tt_counter_get(&g.blocked), 3);
  tt_counter_add(&g.open, 1);
  for (i = 0; i < 6; i++) {
    uint8_t buf[8];
    size_t got = 0;
    CHECK_EQ(ts_recv_packet(socks[i], buf, sizeof buf, &got, TS_WAIT_MS), 0);
    ts_close(socks[i]);
  }
  CHECK_EQ(stats_of(es).workers_peak, 3);
  echo_finish(es);
  gate_destroy(&g);
}

static void open_gate_soon(void *arg) {
  gate_t *g = (gate_t *)arg;
  tt_sleep_ms(50);
  tt_counter_add(&g->open, 1);
}

static void pool_stop_while_growing(void) {
  gate_t g;
  gate_init(&g);
  echo_opt_t opts[] = {{IOCPSRV_OPT_POOL_MIN, 1},
                       {IOCPSRV_OPT_POOL_MAX, 8},
                       {IOCPSRV_OPT_POOL_BUSY_MS, 1}};
  echo_config_t cfg = {0};
  cfg.opts = opts;
  cfg.nopts = NOPTS(opts);
  cfg.on_packet = block_hook;
  cfg.ctx = &g;
  echo_server_t *es = echo_start(&cfg);
  ts_sock_t socks[6];
  int i;
  for (i = 0; i < 6; i++) {
    socks[i] = connect_to(es);
    CHECK_EQ(ts_send_packet(socks[i], "BLOCK", 5), 0);
  }
  CHECK_EQ(tt_counter_wait(&g.blocked, 2, TS_WAIT_MS), 0); /* it has grown at least once */
  tt_thread_t *opener = tt_thread_start(open_gate_soon, &g);
  CHECK_OK(echo_stop(es, 500)); /* while the monitor may be adding workers */
  tt_thread_join(opener);
  echo_check_clean(es);
  CHECK_EQ(stats_of(es).workers, 0);
  for (i = 0; i < 6; i++) ts_close(socks[i]);
  echo_destroy(es);
  gate_destroy(&g);
}

static void pool_options(void) {
  iocpsrv_t *srv = NULL;
  CHECK_OK(iocpsrv_create(&srv, NULL));
  CHECK_OK(iocpsrv_set_option(srv, IOCPSRV_OPT_POOL_MIN, 4));
  CHECK_OK(iocpsrv_set_option(srv, IOCPSRV_OPT_POOL_MAX, 2));
  CHECK_ERR(iocpsrv_listen(srv, "127.0.0.1", 0), IOCPSRV_ERANGE); /* max < min */
  CHECK_ERR(iocpsrv_set_option(srv, IOCPSRV_OPT_POOL_CPU_HIGH, 101), IOCPSRV_ERANGE);
  CHECK_ERR(iocpsrv_set_option(srv, IOCPSRV_OPT_POOL_BUSY_MS, 0), IOCPSRV_ERANGE);
  CHECK_OK(iocpsrv_set_option(srv, IOCPSRV_OPT_POOL_MAX, 4));
  CHECK_OK(iocpsrv_set_option(srv, IOCPSRV_OPT_POOL_CPU_HIGH, 95));
  CHECK_OK(iocpsrv_set_option(srv, IOCPSRV_OPT_POOL_CPU_LOW, 80));
  CHECK_OK(iocpsrv_listen(srv, "127.0.0.1", 0));
  iocpsrv_stats_t st;
  memset(&st, 0, sizeof st);
  st.struct_size = sizeof st;
  CHECK_OK(iocpsrv_stats(srv, &st));
  CHECK_EQ(st.workers, 4);
  CHECK_OK(iocpsrv_stop(srv, 0));
  CHECK_OK(iocpsrv_destroy(srv));
}

int main(int argc, char **argv) {
  test_init(argc, argv);
  TEST_RUN(pool_options);
  TEST_RUN(pool_serves_new_client_while_callbacks_block);
  TEST_RUN(pool_shrinks_back_to_min);
  TEST_RUN(pool_never_exceeds_max);
  TEST_RUN(pool_stop_while_growing);
  return test_done();
}
