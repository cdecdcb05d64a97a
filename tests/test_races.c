/*
 * test_races.c -- regression tests for races in the threading contract (issue 15,
 * items 1, 3 and 4), on real loopback sockets with real threads:
 *
 *   restart       the connection table must not move memory that a thread calling
 *                 conn_info / connections / pending_bytes / set_conn_user can hold
 *                 while iocpsrv_listen raises IOCPSRV_OPT_MAX_CONNECTIONS (the chunk
 *                 array used to be realloc'd: heap-use-after-free under ASan);
 *   send/bcast    a callback that sends to another connection (or broadcasts) and then
 *                 blocks must not hold that connection's bytes, nor its own replies
 *                 made on other workers, until it returns (contract point 7; the send
 *                 used to park the target on the blocked worker's deferred-flush list);
 *   disconnect/   work a callback queues for another connection (a disconnect, a
 *   resume        resume) before it blocks is done at once, not at the next periodic
 *                 pass (on Linux it woke nobody: 72-250 ms instead of ~1 ms).
 *
 * Callbacks block on counters the test controls, always with a bound (HOLD_MS), so a
 * broken engine fails the test instead of hanging it.
 */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "echo.h"
#include "sock.h"
#include "test.h"
#include "thread.h"

#define NOPTS(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* How long a test callback blocks at most, and how soon the connections it must not
 * hold up have to be served while it blocks. */
enum { HOLD_MS = 5000, SERVED_MS = 1000 };

static ts_sock_t connect_to(echo_server_t *es) {
  ts_sock_t s = ts_connect("127.0.0.1", es->port, TS_WAIT_MS);
  CHECK_MSG(s != TS_INVALID, "connect to port %d failed", es->port);
  return s;
}

static void expect_packet(ts_sock_t s, const void *want, size_t want_len) {
  uint8_t buf[256];
  size_t got = 0;
  int rc = ts_recv_packet(s, buf, sizeof buf, &got, TS_WAIT_MS);
  CHECK_MSG(rc == 0, "receiving a %u-byte packet: %s", (unsigned)want_len, ts_strerror(rc));
  CHECK_EQ(got, want_len);
  CHECK_MEMEQ(buf, want, want_len);
}

static void expect_echo(ts_sock_t s, const char *text) {
  CHECK_EQ(ts_send_packet(s, text, strlen(text)), 0);
  expect_packet(s, text, strlen(text));
}

/* ==== item 1: restarting with a larger table while other threads read it ==== */

typedef struct {
  echo_server_t *es;
  tt_mutex_t m;
  /* Under m: the live client's id and record (0 / NULL between runs), the slot
   * indices random ids are drawn from, and the stop flag. */
  iocpsrv_conn_id_t live;
  echo_conn_t *live_rec;
  uint32_t index_span;
  int stop;
  /* The hammer's own (read after join). */
  uint64_t calls, live_hits;
  int bad;
  char what[256];
} hammer_t;

static void hammer_bad(hammer_t *hm, const char *call, iocpsrv_conn_id_t id, long long rc) {
  if (hm->bad++) return;
  snprintf(hm->what, sizeof hm->what, "%s(id %llx) returned %lld %s", call,
           (unsigned long long)id, rc, rc < 0 ? iocpsrv_err_name((int)rc) : "");
}

static int gone_code(long long rc) { return rc == IOCPSRV_ENOTCONN || rc == IOCPSRV_ESTOPPED; }

static void hammer_main(void *p) {
  hammer_t *hm = (hammer_t *)p;
  uint64_t x = 0x9E3779B97F4A7C15ull;
  iocpsrv_conn_id_t ids[64];
  for (;;) {
    tt_mutex_lock(&hm->m);
    int stop = hm->stop;
    iocpsrv_conn_id_t live = hm->live;
    echo_conn_t *rec = hm->live_rec;
    uint32_t span = hm->index_span;
    tt_mutex_unlock(&hm->m);
    if (stop) break;
    int k;
    for (k = 0; k < 32; k++) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      /* A generation this test never reaches (each run reuses slot 0 once): the id
       * is never a live one, but its slot index reaches every chunk, new ones too. */
      iocpsrv_conn_id_t rid = ((((x >> 40) & 0xFFFFu) | 0x10000u) << 24) | (x % span);
      iocpsrv_conn_info_t info;
      memset(&info, 0, sizeof info);
      info.struct_size = sizeof info;
      long long rc;
      if (live) {
        rc = iocpsrv_conn_info(hm->es->srv, live, &info);
        if (rc == 0) {
          hm->live_hits++;
          if (info.id != live) hammer_bad(hm, "conn_info (wrong id in info)", live, rc);
        } else if (!gone_code(rc)) {
          hammer_bad(hm, "conn_info", live, rc);
        }
        rc = iocpsrv_pending_bytes(hm->es->srv, live);
        if (rc < 0 && !gone_code(rc)) hammer_bad(hm, "pending_bytes", live, rc);
        /* The same pointer the echo server gave it: its checks stay valid. */
        rc = iocpsrv_set_conn_user(hm->es->srv, live, rec);
        if (rc != 0 && !gone_code(rc)) hammer_bad(hm, "set_conn_user", live, rc);
      }
      rc = iocpsrv_conn_info(hm->es->srv, rid, &info);
      if (!gone_code(rc)) hammer_bad(hm, "conn_info", rid, rc);
      rc = iocpsrv_pending_bytes(hm->es->srv, rid);
      if (!gone_code(rc)) hammer_bad(hm, "pending_bytes", rid, rc);
      rc = iocpsrv_set_conn_user(hm->es->srv, rid, rec);
      if (!gone_code(rc)) hammer_bad(hm, "set_conn_user", rid, rc);
      rc = iocpsrv_connections(hm->es->srv, ids, 64);
      if (rc < 0 || rc > 1) hammer_bad(hm, "connections (count)", 0, rc);
      else if (rc == 1 && ids[0] == 0) hammer_bad(hm, "connections (id 0)", 0, rc);
      hm->calls += 7;
    }
  }
}

static void hammer_set_live(hammer_t *hm, echo_conn_t *rec) {
  tt_mutex_lock(&hm->m);
  hm->live = rec ? rec->id : 0;
  hm->live_rec = rec;
  tt_mutex_unlock(&hm->m);
}

static void races_restart_raises_max_connections(void) {
  enum { START = 256, STEP = 300, RUN_MS = 800, MIN_ROUNDS = 10, MAX_ROUNDS = 2000 };
  echo_opt_t opts[] = {{IOCPSRV_OPT_WORKER_THREADS, 1}, {IOCPSRV_OPT_MAX_CONNECTIONS, START}};
  echo_config_t cfg = {0};
  cfg.opts = opts;
  cfg.nopts = NOPTS(opts);
  echo_server_t *es = echo_start(&cfg);
  hammer_t hm;
  memset(&hm, 0, sizeof hm);
  hm.es = es;
  tt_mutex_init(&hm.m);
  hm.index_span = START + STEP;

  ts_sock_t s = connect_to(es);
  expect_echo(s, "first run");
  hammer_set_live(&hm, echo_conn_for(es, s));
  tt_thread_t *th = tt_thread_start(hammer_main, &hm);
  CHECK(th != NULL);

  /* Each run needs at least one more chunk of 256 slots than the last: on the old
   * code every listen reallocated the chunk array the hammer was indexing. */
  int64_t max = START, t0 = tt_now_ms();
  int rounds = 0;
  while (rounds < MIN_ROUNDS || (rounds < MAX_ROUNDS && tt_now_ms() - t0 < RUN_MS)) {
    CHECK_OK(echo_stop(es, 0));
    hammer_set_live(&hm, NULL);
    ts_close(s);
    max += STEP;
    CHECK_OK(iocpsrv_set_option(es->srv, IOCPSRV_OPT_MAX_CONNECTIONS, max));
    tt_mutex_lock(&hm.m);
    hm.index_span = (uint32_t)(max + STEP);
    tt_mutex_unlock(&hm.m);
    CHECK_OK(echo_listen(es));
    s = connect_to(es);
    expect_echo(s, "again");
    hammer_set_live(&hm, echo_conn_for(es, s));
    rounds++;
  }
  tt_mutex_lock(&hm.m);
  hm.stop = 1;
  tt_mutex_unlock(&hm.m);
  tt_thread_join(th);
  printf("  %d restarts (max connections %lld), %llu reader calls, %llu on a live id\n",
         rounds, (long long)max, (unsigned long long)hm.calls,
         (unsigned long long)hm.live_hits);
  CHECK_MSG(hm.bad == 0, "%d bad results from the reader thread; first: %s", hm.bad, hm.what);
  CHECK_EQ(tt_counter_get(&es->connects), rounds + 1);
  ts_close(s);
  echo_finish(es);
  tt_mutex_destroy(&hm.m);
}

/* ==== a packet callback that acts on another connection, then blocks ==== */

enum { ACT_SEND = 1, ACT_BCAST, ACT_DISCONNECT, ACT_RESUME };

typedef struct {
  /* Set by the test before it triggers the callback. */
  int action;
  iocpsrv_conn_id_t target;
  int mode;       /* ACT_DISCONNECT: IOCPSRV_CLOSE_* */
  int two_phase;  /* wait for `go` before acting (the test checks the takeover first) */
  /* Written by the callback before it bumps `acted` (the counter's lock orders it). */
  int call_rc;
  int64_t call_ms;
  tt_counter_t entered, go, acted, released, expired;
  /* The disconnect callback of `target` (on_disconnect hook). */
  int64_t target_gone_ms;
  tt_counter_t target_gone;
} hold_t;

static void hold_init(hold_t *h) {
  memset(h, 0, sizeof *h);
  tt_counter_init(&h->entered);
  tt_counter_init(&h->go);
  tt_counter_init(&h->acted);
  tt_counter_init(&h->released);
  tt_counter_init(&h->expired);
  tt_counter_init(&h->target_gone);
}

static void hold_destroy(hold_t *h) {
  tt_counter_destroy(&h->entered);
  tt_counter_destroy(&h->go);
  tt_counter_destroy(&h->acted);
  tt_counter_destroy(&h->released);
  tt_counter_destroy(&h->expired);
  tt_counter_destroy(&h->target_gone);
}

/* Runs inside X's packet callback for the packet "HOLD". */
static int hold_hook(echo_server_t *es, echo_conn_t *c, const uint8_t *d, size_t n) {
  hold_t *h = (hold_t *)es->cfg.ctx;
  (void)c;
  if (!(n == 4 && memcmp(d, "HOLD", 4) == 0)) return ECHO_DEFAULT;
  int64_t me = tt_counter_add(&h->entered, 1);
  if (h->two_phase && tt_counter_wait(&h->go, me, HOLD_MS) != 0) tt_counter_add(&h->expired, 1);
  int rc = 0;
  switch (h->action) {
    case ACT_SEND: rc = iocpsrv_send(es->srv, h->target, "from X", 6); break;
    case ACT_BCAST: rc = iocpsrv_broadcast(es->srv, "to all", 6); break;
    case ACT_DISCONNECT: rc = iocpsrv_disconnect(es->srv, h->target, h->mode); break;
    case ACT_RESUME: rc = iocpsrv_resume_receive(es->srv, h->target); break;
  }
  h->call_ms = tt_now_ms();
  h->call_rc = rc;
  tt_counter_add(&h->acted, 1);
  /* Now block this worker, as a slow database call would. */
  if (tt_counter_wait(&h->released, me, HOLD_MS) != 0) tt_counter_add(&h->expired, 1);
  return ECHO_SKIP;
}

static void hold_target_gone(echo_server_t *es, echo_conn_t *c, int reason) {
  hold_t *h = (hold_t *)es->cfg.ctx;
  (void)reason;
  if (c->id != h->target) return;
  h->target_gone_ms = tt_now_ms();
  tt_counter_add(&h->target_gone, 1);
}

/* Receive `text` on s within SERVED_MS while X's callback blocks. On failure, release
 * the callback and report how long after that the packet came (if it came): then it
 * was held behind the blocked worker. */
static void expect_while_held(hold_t *h, ts_sock_t s, const char *text, const char *what,
                              int round) {
  size_t n = strlen(text), got = 0;
  char buf[64];
  int rc = ts_recv_packet(s, buf, sizeof buf, &got, SERVED_MS);
  if (rc != 0) {
    tt_counter_add(&h->released, 1000);
    int64_t t1 = tt_now_ms();
    int later = ts_recv_packet(s, buf, sizeof buf, &got, TS_WAIT_MS);
    CHECK_MSG(rc == 0,
              "round %d: %s did not arrive within %d ms while another connection's "
              "callback was blocked (contract point 7): %s; after the blocked callback "
              "was released it %s %lld ms later",
              round, what, SERVED_MS, ts_strerror(rc),
              later == 0 ? "arrived" : "still did not arrive", (long long)(tt_now_ms() - t1));
  }
  CHECK_EQ(got, n);
  CHECK_MEMEQ(buf, text, n);
  CHECK_MSG(tt_counter_get(&h->released) < round && tt_counter_get(&h->expired) == 0,
            "round %d: %s came only after the callback stopped blocking", round, what);
}

/* Start X's blocking callback and wait until it runs. */
static void trigger_hold(hold_t *h, ts_sock_t x, int round) {
  CHECK_EQ(ts_send_packet(x, "HOLD", 4), 0);
  CHECK_MSG(tt_counter_wait(&h->entered, round, TS_WAIT_MS) == 0,
            "round %d: X's packet callback never ran", round);
}

/* ==== item 3: a send to another connection, then the callback blocks ==== */

static void races_send_to_other_then_block(void) {
  enum { ROUNDS = 3, PINGS = 3 };
  hold_t h;
  hold_init(&h);
  echo_opt_t opts[] = {{IOCPSRV_OPT_WORKER_THREADS, 4}};
  echo_config_t cfg = {0};
  cfg.opts = opts;
  cfg.nopts = NOPTS(opts);
  cfg.on_packet = hold_hook;
  cfg.ctx = &h;
  echo_server_t *es = echo_start(&cfg);
  ts_sock_t x = connect_to(es), y = connect_to(es);
  expect_echo(x, "x");
  expect_echo(y, "y");
  h.action = ACT_SEND;
  h.target = echo_conn_for(es, y)->id;
  int r, k;
  for (r = 1; r <= ROUNDS; r++) {
    int64_t t0 = tt_now_ms();
    trigger_hold(&h, x, r);
    CHECK_EQ(tt_counter_wait(&h.acted, r, TS_WAIT_MS), 0);
    CHECK_OK(h.call_rc);
    /* What X's callback sent to Y, then Y's own replies, made on other workers. */
    expect_while_held(&h, y, "from X", "the packet X's callback sent to Y", r);
    for (k = 0; k < PINGS; k++) {
      char ping[16];
      snprintf(ping, sizeof ping, "ping %d.%d", r, k);
      CHECK_EQ(ts_send_packet(y, ping, strlen(ping)), 0);
      expect_while_held(&h, y, ping, "Y's echo of its own packet", r);
    }
    int64_t served = tt_now_ms() - t0;
    tt_counter_add(&h.released, 1);
    printf("  round %d: Y served in %lld ms while X's callback blocked\n", r,
           (long long)served);
    expect_echo(x, "x after");
  }
  CHECK_EQ(tt_counter_get(&h.expired), 0);
  ts_close(x);
  ts_close(y);
  CHECK_EQ(tt_counter_wait(&es->disconnects, 2, TS_WAIT_MS), 0);
  echo_finish(es);
  hold_destroy(&h);
}

/* ==== item 3: a broadcast, then the callback blocks ==== */

static void races_broadcast_then_block(void) {
  enum { OTHERS = 4, ROUNDS = 3 };
  hold_t h;
  hold_init(&h);
  echo_opt_t opts[] = {{IOCPSRV_OPT_WORKER_THREADS, 4}};
  echo_config_t cfg = {0};
  cfg.opts = opts;
  cfg.nopts = NOPTS(opts);
  cfg.on_packet = hold_hook;
  cfg.ctx = &h;
  echo_server_t *es = echo_start(&cfg);
  ts_sock_t x = connect_to(es), o[OTHERS];
  expect_echo(x, "x");
  int i, r;
  for (i = 0; i < OTHERS; i++) {
    o[i] = connect_to(es);
    expect_echo(o[i], "other");
  }
  h.action = ACT_BCAST;
  for (r = 1; r <= ROUNDS; r++) {
    int64_t t0 = tt_now_ms();
    trigger_hold(&h, x, r);
    CHECK_EQ(tt_counter_wait(&h.acted, r, TS_WAIT_MS), 0);
    CHECK_EQ(h.call_rc, OTHERS + 1); /* X itself included */
    for (i = 0; i < OTHERS; i++) {
      char what[64], ping[32];
      snprintf(what, sizeof what, "the broadcast to client %d", i);
      expect_while_held(&h, o[i], "to all", what, r);
      snprintf(ping, sizeof ping, "ping %d.%d", r, i);
      snprintf(what, sizeof what, "client %d's echo of its own packet", i);
      CHECK_EQ(ts_send_packet(o[i], ping, strlen(ping)), 0);
      expect_while_held(&h, o[i], ping, what, r);
    }
    int64_t served = tt_now_ms() - t0;
    tt_counter_add(&h.released, 1);
    printf("  round %d: %d clients served in %lld ms while X's callback blocked\n", r,
           OTHERS, (long long)served);
    /* X's own copy goes out once its callback returned. */
    expect_packet(x, "to all", 6);
    expect_echo(x, "x after");
  }
  CHECK_EQ(tt_counter_get(&h.expired), 0);
  ts_close(x);
  for (i = 0; i < OTHERS; i++) ts_close(o[i]);
  CHECK_EQ(tt_counter_wait(&es->disconnects, OTHERS + 1, TS_WAIT_MS), 0);
  echo_finish(es);
  hold_destroy(&h);
}

/* ==== item 4: work queued for another connection, then the callback blocks ==== */

/* With two workers: X's callback holds one, the other takes over polling (checked:
 * Z is served while X blocks). Then X's callback queues work for Y and blocks again.
 * Nothing else happens on the network, so on the old code the work waited for the
 * poller's next periodic wake-up (up to the 250 ms sweep period). */
enum { QROUNDS = 5, QBOUND_MS = 50 };

static int cmp_i64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return x < y ? -1 : x > y;
}

static int64_t median_of(int64_t *v, int n) {
  int64_t s[QROUNDS];
  memcpy(s, v, sizeof(int64_t) * (size_t)n);
  qsort(s, (size_t)n, sizeof s[0], cmp_i64);
  return s[n / 2];
}

static echo_server_t *start_two_workers(hold_t *h) {
  static const echo_opt_t opts[] = {{IOCPSRV_OPT_WORKER_THREADS, 2}};
  echo_config_t cfg = {0};
  cfg.opts = opts;
  cfg.nopts = NOPTS(opts);
  cfg.on_packet = hold_hook;
  cfg.on_disconnect = hold_target_gone;
  cfg.ctx = h;
  return echo_start(&cfg);
}

/* X's callback runs and blocks; the other worker serves Z twice (so it has taken over
 * and finished every batch before), then X's callback acts and blocks again. Returns
 * when it has acted. */
static void held_then_act(echo_server_t *es, hold_t *h, ts_sock_t x, ts_sock_t z, int r,
                          void (*before_takeover)(echo_server_t *, void *), void *arg) {
  trigger_hold(h, x, r);
  if (before_takeover) before_takeover(es, arg);
  char ping[32];
  int k;
  for (k = 0; k < 2; k++) {
    snprintf(ping, sizeof ping, "z %d.%d", r, k);
    CHECK_EQ(ts_send_packet(z, ping, strlen(ping)), 0);
    expect_while_held(h, z, ping, "Z's echo (the other worker took over)", r);
  }
  tt_counter_add(&h->go, 1);
  CHECK_EQ(tt_counter_wait(&h->acted, r, TS_WAIT_MS), 0);
  CHECK_OK(h->call_rc);
}

static void run_disconnect_from_held(int mode) {
  hold_t h;
  hold_init(&h);
  h.action = ACT_DISCONNECT;
  h.mode = mode;
  h.two_phase = 1;
  echo_server_t *es = start_two_workers(&h);
  ts_sock_t x = connect_to(es), z = connect_to(es);
  expect_echo(x, "x");
  expect_echo(z, "z");
  int64_t to_close[QROUNDS], to_callback[QROUNDS];
  int r;
  for (r = 1; r <= QROUNDS; r++) {
    ts_sock_t y = connect_to(es);
    expect_echo(y, "y");
    echo_conn_t *cy = echo_conn_for(es, y);
    h.target = cy->id;
    held_then_act(es, &h, x, z, r, NULL, NULL);
    int64_t t0 = h.call_ms;
    int rc = ts_wait_close(y, HOLD_MS / 2, NULL);
    to_close[r - 1] = tt_now_ms() - t0;
    if (mode == IOCPSRV_CLOSE_GRACEFUL) {
      CHECK_MSG(rc == TS_EOF, "round %d: Y's client expected a FIN: %s", r, ts_strerror(rc));
      ts_close(y); /* the close completes with Y's FIN */
    } else {
      CHECK_MSG(rc == TS_RESET || rc == TS_EOF, "round %d: Y's client expected a reset: %s",
                r, ts_strerror(rc));
      ts_close(y);
    }
    CHECK_MSG(tt_counter_wait(&h.target_gone, r, HOLD_MS / 2) == 0,
              "round %d: no disconnect callback for Y while X's callback blocked", r);
    to_callback[r - 1] = h.target_gone_ms - t0;
    CHECK_MSG(tt_counter_get(&h.released) < r && tt_counter_get(&h.expired) == 0,
              "round %d: X's callback stopped blocking before Y was closed", r);
    tt_counter_add(&h.released, 1);
    CHECK_EQ(echo_snapshot(es, cy).reason, mode == IOCPSRV_CLOSE_GRACEFUL
                                               ? IOCPSRV_REASON_LOCAL_CLOSE
                                               : IOCPSRV_REASON_LOCAL_ABORT);
    expect_echo(x, "x after");
  }
  int64_t m_close = median_of(to_close, QROUNDS), m_cb = median_of(to_callback, QROUNDS);
  printf("  %s from a blocked callback: client saw the close after", mode ? "abort" : "graceful");
  for (r = 0; r < QROUNDS; r++) printf(" %lld", (long long)to_close[r]);
  printf(" ms (median %lld), disconnect callback after", (long long)m_close);
  for (r = 0; r < QROUNDS; r++) printf(" %lld", (long long)to_callback[r]);
  printf(" ms (median %lld)\n", (long long)m_cb);
  CHECK_MSG(m_close < QBOUND_MS,
            "iocpsrv_disconnect from a callback that then blocked took effect after a "
            "median %lld ms (bound %d): the work waited for a periodic wake-up",
            (long long)m_close, QBOUND_MS);
  CHECK_MSG(m_cb < QBOUND_MS, "Y's disconnect callback came a median %lld ms after "
            "iocpsrv_disconnect (bound %d)", (long long)m_cb, QBOUND_MS);
  ts_close(x);
  ts_close(z);
  CHECK_EQ(tt_counter_wait(&es->disconnects, QROUNDS + 2, TS_WAIT_MS), 0);
  echo_finish(es);
  hold_destroy(&h);
}

static void races_disconnect_graceful_from_blocked_callback(void) {
  run_disconnect_from_held(IOCPSRV_CLOSE_GRACEFUL);
}

static void races_disconnect_abort_from_blocked_callback(void) {
  run_disconnect_from_held(IOCPSRV_CLOSE_ABORT);
}

typedef struct {
  ts_sock_t y;
  iocpsrv_conn_id_t id;
  int round;
} paused_t;

/* While X's callback blocks: pause Y from this thread, and Y's client sends a packet
 * that must wait (the Z round trips that follow make sure the other worker saw it). */
static void pause_and_send(echo_server_t *es, void *arg) {
  paused_t *p = (paused_t *)arg;
  char text[32];
  CHECK_OK(iocpsrv_pause_receive(es->srv, p->id));
  snprintf(text, sizeof text, "y %d", p->round);
  CHECK_EQ(ts_send_packet(p->y, text, strlen(text)), 0);
}

static void races_resume_from_blocked_callback(void) {
  hold_t h;
  hold_init(&h);
  h.action = ACT_RESUME;
  h.two_phase = 1;
  echo_server_t *es = start_two_workers(&h);
  ts_sock_t x = connect_to(es), z = connect_to(es), y = connect_to(es);
  expect_echo(x, "x");
  expect_echo(z, "z");
  expect_echo(y, "y");
  h.target = echo_conn_for(es, y)->id;
  int64_t to_echo[QROUNDS];
  int r;
  for (r = 1; r <= QROUNDS; r++) {
    paused_t p = {y, h.target, r};
    held_then_act(es, &h, x, z, r, pause_and_send, &p);
    int64_t t0 = h.call_ms;
    char text[32], buf[32];
    size_t got = 0;
    snprintf(text, sizeof text, "y %d", r);
    int rc = ts_recv_packet(y, buf, sizeof buf, &got, HOLD_MS / 2);
    to_echo[r - 1] = tt_now_ms() - t0;
    CHECK_MSG(rc == 0, "round %d: Y's packet was not echoed after the resume: %s", r,
              ts_strerror(rc));
    CHECK_EQ(got, strlen(text));
    CHECK_MEMEQ(buf, text, got);
    CHECK_MSG(tt_counter_get(&h.released) < r && tt_counter_get(&h.expired) == 0,
              "round %d: X's callback stopped blocking before Y was served", r);
    tt_counter_add(&h.released, 1);
    expect_echo(x, "x after");
  }
  int64_t m = median_of(to_echo, QROUNDS);
  printf("  resume from a blocked callback: Y's held packet echoed after");
  for (r = 0; r < QROUNDS; r++) printf(" %lld", (long long)to_echo[r]);
  printf(" ms (median %lld)\n", (long long)m);
  CHECK_MSG(m < QBOUND_MS,
            "iocpsrv_resume_receive from a callback that then blocked took effect after "
            "a median %lld ms (bound %d): the work waited for a periodic wake-up",
            (long long)m, QBOUND_MS);
  ts_close(x);
  ts_close(y);
  ts_close(z);
  CHECK_EQ(tt_counter_wait(&es->disconnects, 3, TS_WAIT_MS), 0);
  echo_finish(es);
  hold_destroy(&h);
}

int main(int argc, char **argv) {
  test_init(argc, argv);
  TEST_RUN(races_restart_raises_max_connections);
  TEST_RUN(races_send_to_other_then_block);
  TEST_RUN(races_broadcast_then_block);
  TEST_RUN(races_disconnect_graceful_from_blocked_callback);
  TEST_RUN(races_disconnect_abort_from_blocked_callback);
  TEST_RUN(races_resume_from_blocked_callback);
  return test_done();
}
