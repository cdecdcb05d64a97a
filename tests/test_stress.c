/*
 * test_stress.c -- stop under load, and start/stop cycles with clients connected.
 *
 *   stop_under_load_abort     500 clients pumping echoes from 20 threads; stop(0)
 *   stop_under_load_graceful  the same with stop(1500) while 16 more clients neither
 *                             read nor close: they are reset at the deadline
 *   stop_under_load_pull      the same load in pull mode (echo.h's pump), stop(500)
 *   start_stop_cycles         100 listen/stop cycles with clients connected and data
 *                             in flight, timeouts 0 / 10 / 200 / 2000 ms, the server
 *                             destroyed and created again every 25 cycles
 *
 * Each checks: every connect gets exactly one disconnect (reason server-stopped), no
 * callback runs once iocpsrv_stop has returned (su_server_t records any that starts or
 * is still running then, and the callback counters must not move afterwards), every
 * client sees its connection close (FIN or reset), every echo it got was right.
 *
 * These run under the linux-asan and linux-tsan presets and under Wine (windows
 * preset) with the same counts; IOCPSRV_TEST_SCALE_PERCENT scales them down.
 */
#include <stdlib.h>
#include <string.h>

#include "echo.h"
#include "sock.h"
#include "stress_util.h"
#include "test.h"
#include "thread.h"

#define NOPTS(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* ---- the pumping clients ---- */

enum { PUMP_THREADS = 20, PUMP_MAX_LEN = 32 * 1024 };

typedef struct {
  int port, index, nsock;
  ts_sock_t *s;
  uint32_t *seq;
  int *open;
  tt_counter_t *connected, *roundtrips;
  atomic_llong *stopped_at; /* tt_now_ms() when the server's stop returned, 0 before */
  int errors, eof, reset;
  char what[200];
} pump_t;

static size_t pump_len(uint32_t seq, int index) {
  /* Small packets mostly; every 16th one 32 KiB, so replies are queued at the stop. */
  return seq % 16 == 15 ? PUMP_MAX_LEN : 4 + (size_t)((seq * 131u + (uint32_t)index) % 1200);
}

static void pump_error(pump_t *p, const char *fmt, int i, int rc) {
  if (p->errors++ == 0) {
    snprintf(p->what, sizeof p->what, fmt, i, ts_strerror(rc));
  }
}

/* The server closed socket i (rc is how). */
static void pump_closed(pump_t *p, int i, int rc) {
  if (rc == TS_EOF) p->eof++;
  else p->reset++;
  p->open[i] = 0;
  ts_close(p->s[i]);
  p->s[i] = TS_INVALID;
}

static void pump_main(void *arg) {
  pump_t *p = (pump_t *)arg;
  uint8_t *out = (uint8_t *)malloc(PUMP_MAX_LEN), *in = (uint8_t *)malloc(PUMP_MAX_LEN);
  int *sent = (int *)calloc((size_t)p->nsock, sizeof *sent);
  int i, open = 0;
  if (!out || !in || !sent) test_fail(__FILE__, __LINE__, "out of memory");
  for (i = 0; i < p->nsock; i++) {
    p->s[i] = ts_connect("127.0.0.1", p->port, TS_WAIT_MS);
    p->open[i] = p->s[i] != TS_INVALID;
    if (!p->open[i]) pump_error(p, "connect %d failed (%s)", i, TS_ERR);
    open += p->open[i];
  }
  tt_counter_add(p->connected, 1);
  while (open > 0) {
    /* Bounded: a server still echoing long after its stop returned is a failure. */
    long long stopped = atomic_load(p->stopped_at);
    if (stopped && tt_now_ms() > stopped + 20000) {
      pump_error(p, "%d socket(s) still served 20 s after stop returned (%s)", open, TS_ERR);
      for (i = 0; i < p->nsock; i++)
        if (p->open[i]) pump_closed(p, i, TS_EOF);
      break;
    }
    /* One packet to every open socket, then every echo. */
    for (i = 0; i < p->nsock; i++) {
      sent[i] = 0;
      if (!p->open[i]) continue;
      size_t len = pump_len(p->seq[i], p->index);
      test_fill_pattern(out, len, ((uint64_t)p->index << 40) + ((uint64_t)i << 20) + p->seq[i]);
      test_put_u32le(out, p->seq[i]);
      int rc = ts_send_packet(p->s[i], out, len);
      if (rc == 0) {
        sent[i] = 1;
      } else if (rc == TS_RESET || rc == TS_EOF || rc == TS_ERR) {
        pump_closed(p, i, TS_RESET); /* writing to a connection the server closed */
        open--;
      } else {
        pump_error(p, "send on socket %d: %s", i, rc);
        pump_closed(p, i, rc);
        open--;
      }
    }
    for (i = 0; i < p->nsock; i++) {
      if (!sent[i] || !p->open[i]) continue;
      size_t len = pump_len(p->seq[i], p->index), got = 0;
      test_fill_pattern(out, len, ((uint64_t)p->index << 40) + ((uint64_t)i << 20) + p->seq[i]);
      test_put_u32le(out, p->seq[i]);
      int rc = ts_recv_packet(p->s[i], in, PUMP_MAX_LEN, &got, TS_WAIT_MS);
      if (rc == 0) {
        if (got != len || memcmp(in, out, len) != 0)
          pump_error(p, "socket %d: a wrong echo (%s)", i, TS_ERR);
        p->seq[i]++;
        tt_counter_add(p->roundtrips, 1);
      } else if (rc == TS_EOF || rc == TS_RESET) {
        pump_closed(p, i, rc);
        open--;
      } else {
        /* Neither an echo nor a close within TS_WAIT_MS: the server lost it. */
        pump_error(p, "socket %d: no echo and no close: %s", i, rc);
        pump_closed(p, i, rc);
        open--;
      }
    }
  }
  free(out);
  free(in);
  free(sent);
}

typedef struct {
  pump_t p[PUMP_THREADS];
  tt_thread_t *th[PUMP_THREADS];
  tt_counter_t connected, roundtrips;
  atomic_llong stopped_at;
  int clients;
} load_t;

static void load_start(load_t *l, int port, int clients) {
  int i;
  memset(l, 0, sizeof *l);
  atomic_init(&l->stopped_at, 0);
  tt_counter_init(&l->connected);
  tt_counter_init(&l->roundtrips);
  l->clients = clients;
  for (i = 0; i < PUMP_THREADS; i++) {
    pump_t *p = &l->p[i];
    p->port = port;
    p->index = i;
    p->nsock = clients / PUMP_THREADS + (i < clients % PUMP_THREADS);
    p->s = (ts_sock_t *)calloc((size_t)p->nsock + 1, sizeof *p->s);
    p->seq = (uint32_t *)calloc((size_t)p->nsock + 1, sizeof *p->seq);
    p->open = (int *)calloc((size_t)p->nsock + 1, sizeof *p->open);
    p->connected = &l->connected;
    p->roundtrips = &l->roundtrips;
    p->stopped_at = &l->stopped_at;
    l->th[i] = tt_thread_start(pump_main, p);
    CHECK(l->th[i] != NULL);
  }
  CHECK_MSG(tt_counter_wait(&l->connected, PUMP_THREADS, 60000) == 0,
            "the client threads did not connect");
  for (i = 0; i < PUMP_THREADS; i++)
    CHECK_MSG(l->p[i].errors == 0, "client thread %d: %s", i, l->p[i].what);
}

/* Join the clients; each socket ended with a close seen by the client. */
static void load_finish(load_t *l) {
  int i, eof = 0, reset = 0;
  for (i = 0; i < PUMP_THREADS; i++) tt_thread_join(l->th[i]);
  for (i = 0; i < PUMP_THREADS; i++) {
    pump_t *p = &l->p[i];
    CHECK_MSG(p->errors == 0, "client thread %d: %d error(s); first: %s", i, p->errors,
              p->what);
    CHECK_EQ(p->eof + p->reset, p->nsock);
    eof += p->eof;
    reset += p->reset;
    free(p->s);
    free(p->seq);
    free(p->open);
  }
  printf("[clients saw %d FIN, %d reset; %lld round trips] ", eof, reset,
         (long long)tt_counter_get(&l->roundtrips));
  tt_counter_destroy(&l->connected);
  tt_counter_destroy(&l->roundtrips);
}

/* Clients that connect, send a little and then neither read nor close. */
static void stubborn_open(ts_sock_t *s, int n, int port) {
  int i;
  uint8_t big[8192];
  memset(big, 's', sizeof big);
  for (i = 0; i < n; i++) {
    s[i] = ts_connect("127.0.0.1", port, TS_WAIT_MS);
    CHECK(s[i] != TS_INVALID);
    CHECK_EQ(ts_send_packet(s[i], big, sizeof big), 0);
  }
}

/* ---- stop under load, callback mode ---- */

static void run_stop_under_load(int timeout_ms, int stubborn) {
  int clients = su_count(500, 500, 500);
  echo_opt_t opts[] = {{IOCPSRV_OPT_WORKER_THREADS, 4}, {IOCPSRV_OPT_CLOSE_TIMEOUT_MS, 60000}};
  su_server_t *s = su_server_create(clients + stubborn + 8, opts, NOPTS(opts));
  su_server_listen(s);
  load_t *l = (load_t *)calloc(1, sizeof *l);
  load_start(l, s->port, clients);
  ts_sock_t st[32];
  CHECK(stubborn <= 32);
  stubborn_open(st, stubborn, s->port);
  CHECK_MSG(tt_counter_wait(&s->connects, clients + stubborn, 30000) == 0,
            "only %lld of %d clients accepted", (long long)tt_counter_get(&s->connects),
            clients + stubborn);
  /* Everyone pumping: a few round trips per client on average. */
  CHECK_MSG(tt_counter_wait(&l->roundtrips, (int64_t)clients * 20, 60000) == 0,
            "only %lld round trips", (long long)tt_counter_get(&l->roundtrips));
  CHECK_EQ(tt_counter_wait(&s->packets, clients + stubborn, TS_WAIT_MS), 0);

  int64_t t0 = tt_now_ms();
  CHECK_OK(su_server_stop(s, timeout_ms));
  atomic_store(&l->stopped_at, tt_now_ms());
  int64_t stop_ms = tt_now_ms() - t0;
  /* When stop returns, every connection has had its one disconnect. */
  int64_t connects = tt_counter_get(&s->connects), disconnects = tt_counter_get(&s->disconnects);
  int64_t packets = tt_counter_get(&s->packets);
  CHECK_EQ(connects, clients + stubborn);
  CHECK_EQ(disconnects, connects);
  CHECK_EQ(atomic_load(&s->reasons[IOCPSRV_REASON_SERVER_STOPPED]), connects);
  iocpsrv_stats_t stats = su_stats(s);
  CHECK_EQ(stats.connections_now, 0);
  CHECK_EQ(stats.workers, 0);

  load_finish(l);
  int i;
  for (i = 0; i < stubborn; i++) {
    int rc = ts_wait_close(st[i], TS_WAIT_MS, NULL);
    CHECK_MSG(rc == TS_RESET || rc == TS_EOF, "stubborn client %d: %s", i, ts_strerror(rc));
    ts_close(st[i]);
  }
  if (stubborn && timeout_ms > 0) {
    /* They kept the graceful stop waiting until its deadline, not longer. */
    printf("[stop(%d) with %d stubborn clients took %lld ms] ", timeout_ms, stubborn,
           (long long)stop_ms);
    CHECK_GE(stop_ms, timeout_ms - 20);
    CHECK_LE(stop_ms, timeout_ms + (su_sanitized() || test_under_wine() ? 10000 : 5000));
  } else {
    printf("[stop(%d) took %lld ms] ", timeout_ms, (long long)stop_ms);
  }
  /* Nothing ran after stop returned, while the clients kept writing and closing. */
  CHECK_EQ(tt_counter_get(&s->connects), connects);
  CHECK_EQ(tt_counter_get(&s->disconnects), disconnects);
  CHECK_EQ(tt_counter_get(&s->packets), packets);
  su_server_check(s);
  su_server_destroy(s);
  free(l);
}

static void stop_under_load_abort(void) { run_stop_under_load(0, 0); }
static void stop_under_load_graceful(void) { run_stop_under_load(1500, 16); }

/* ---- stop under load, pull mode ---- */

static void stop_under_load_pull(void) {
  int clients = su_count(500, 500, 500);
  echo_opt_t opts[] = {{IOCPSRV_OPT_WORKER_THREADS, 4}};
  echo_config_t cfg = {0};
  cfg.opts = opts;
  cfg.nopts = NOPTS(opts);
  cfg.pull = 1;
  cfg.pull_batch = 256;
  cfg.check_seq = 1;
  echo_server_t *es = echo_start(&cfg);
  load_t *l = (load_t *)calloc(1, sizeof *l);
  load_start(l, es->port, clients);
  CHECK_EQ(tt_counter_wait(&es->connects, clients, 30000), 0);
  CHECK_EQ(tt_counter_wait(&l->roundtrips, (int64_t)clients * 20, 60000), 0);
  CHECK_OK(echo_stop(es, 500)); /* joins the pump, which drains what is left */
  atomic_store(&l->stopped_at, tt_now_ms());
  int64_t connects = tt_counter_get(&es->connects);
  CHECK_EQ(connects, clients);
  CHECK_EQ(tt_counter_get(&es->disconnects), connects);
  CHECK_EQ(es->reasons[IOCPSRV_REASON_SERVER_STOPPED], clients);
  iocpsrv_event_t ev[4];
  CHECK_ERR(iocpsrv_poll(es->srv, ev, 4, 0), IOCPSRV_ESTOPPED); /* nothing left */
  load_finish(l);
  CHECK_ERR(iocpsrv_poll(es->srv, ev, 4, 0), IOCPSRV_ESTOPPED);
  echo_check_clean(es);
  echo_destroy(es);
  free(l);
}

/* ---- 100 start/stop cycles ---- */

enum { CYCLE_CLIENTS = 6 };

typedef struct {
  ts_sock_t *s;
  int n, eof, reset, bad;
} closer_t;

/* Read each client until the server closes it, then close it (so a graceful stop sees
 * every FIN it waits for). */
static void closer_main(void *arg) {
  closer_t *c = (closer_t *)arg;
  int i;
  for (i = 0; i < c->n; i++) {
    int rc = ts_wait_close(c->s[i], TS_WAIT_MS, NULL);
    if (rc == TS_EOF) c->eof++;
    else if (rc == TS_RESET) c->reset++;
    else c->bad++;
    ts_close(c->s[i]);
  }
}

static void start_stop_cycles(void) {
  static const int timeouts[] = {0, 10, 200, 2000};
  int cycles = su_count(100, 100, 100);
  echo_opt_t opts[] = {{IOCPSRV_OPT_WORKER_THREADS, 2}};
  su_server_t *s = su_server_create(CYCLE_CLIENTS + 4, opts, NOPTS(opts));
  int cycle, i, eof = 0, reset = 0;
  int64_t stop_total = 0;
  for (cycle = 0; cycle < cycles; cycle++) {
    if (cycle > 0 && cycle % 25 == 0) {
      su_server_destroy(s);
      s = su_server_create(CYCLE_CLIENTS + 4, opts, NOPTS(opts));
    }
    su_server_listen(s);
    ts_sock_t cs[CYCLE_CLIENTS];
    for (i = 0; i < CYCLE_CLIENTS; i++) {
      uint8_t out[600], in[600];
      size_t got = 0, len = 8 + (size_t)((cycle * 7 + i * 13) % 500);
      cs[i] = ts_connect("127.0.0.1", s->port, TS_WAIT_MS);
      CHECK_MSG(cs[i] != TS_INVALID, "cycle %d: connect %d failed", cycle, i);
      test_fill_pattern(out, len, (uint64_t)cycle * 100 + (uint64_t)i);
      CHECK_EQ(ts_send_packet(cs[i], out, len), 0);
      CHECK_EQ(ts_recv_packet(cs[i], in, sizeof in, &got, TS_WAIT_MS), 0);
      CHECK_EQ(got, len);
      CHECK_MEMEQ(in, out, len);
      /* More in flight when the stop comes: echoes queued or being written. */
      CHECK_EQ(ts_send_packet(cs[i], out, len), 0);
      CHECK_EQ(ts_send_packet(cs[i], out, len / 2), 0);
    }
    CHECK_EQ(tt_counter_wait(&s->connects, CYCLE_CLIENTS, TS_WAIT_MS), 0);
    closer_t cl;
    memset(&cl, 0, sizeof cl);
    cl.s = cs;
    cl.n = CYCLE_CLIENTS;
    tt_thread_t *th = tt_thread_start(closer_main, &cl);
    CHECK(th != NULL);
    int timeout = timeouts[cycle % NOPTS(timeouts)];
    int64_t t0 = tt_now_ms();
    CHECK_OK(su_server_stop(s, timeout));
    stop_total += tt_now_ms() - t0;
    int64_t connects = tt_counter_get(&s->connects);
    int64_t disconnects = tt_counter_get(&s->disconnects);
    int64_t packets = tt_counter_get(&s->packets);
    CHECK_EQ(connects, CYCLE_CLIENTS);
    CHECK_MSG(disconnects == connects, "cycle %d: %lld disconnects for %lld connects",
              cycle, (long long)disconnects, (long long)connects);
    CHECK_EQ(atomic_load(&s->reasons[IOCPSRV_REASON_SERVER_STOPPED]), CYCLE_CLIENTS);
    CHECK_EQ(su_stats(s).workers, 0);
    tt_thread_join(th);
    CHECK_MSG(cl.bad == 0, "cycle %d: %d client(s) not closed by the stop", cycle, cl.bad);
    eof += cl.eof;
    reset += cl.reset;
    CHECK_EQ(tt_counter_get(&s->connects), connects);
    CHECK_EQ(tt_counter_get(&s->disconnects), disconnects);
    CHECK_EQ(tt_counter_get(&s->packets), packets);
    su_server_check(s);
    CHECK_ERR(iocpsrv_stop(s->srv, 0), IOCPSRV_ESTOPPED);
  }
  printf("[%d cycles x %d clients: %d FIN, %d reset; %lld ms in stop] ", cycles,
         CYCLE_CLIENTS, eof, reset, (long long)stop_total);
  su_server_destroy(s);
}

int main(int argc, char **argv) {
  test_init(argc, argv);
  if (su_sanitized() || test_under_wine()) test_watchdog_seconds *= 3;
  TEST_RUN(stop_under_load_abort);
  TEST_RUN(stop_under_load_graceful);
  TEST_RUN(stop_under_load_pull);
  TEST_RUN(start_stop_cycles);
  return test_done();
}
