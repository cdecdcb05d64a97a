/*
 * test_send_queue.c -- the send-queue limit and the drain callback under the cases an
 * outside audit proved broken: sends from a connection's own callback judged against a
 * stale view of the queue (IOCPSRV_EQUEUEFULL with nothing queued), and a refusal whose
 * drain never came because the queue emptied before the refusal was recorded (a host
 * waiting for the drain stalled forever). Also the write-size clamp of the Windows
 * backend (a WSABUF length is 32 bits).
 *
 * Rules checked on every refusal: the queue (pending bytes, own-callback sends
 * included) was not empty and the packet did not fit; and a drain callback follows
 * every refusal once the client reads.
 */
#include <stdlib.h>
#include <string.h>

#include "core/sendbuf.h"
#include "echo.h"
#include "sock.h"
#include "test.h"
#include "thread.h"

#define NOPTS(a) ((int)(sizeof(a) / sizeof((a)[0])))

#define LIMIT 200000
#define CHUNK 10000

typedef struct fill_s {
  int block_ms;            /* the callback blocks this long after a refusal */
  tt_counter_t rounds;     /* fill commands handled */
  tt_mutex_t lock;
  int refused_round;       /* the last round had a refusal */
  int64_t bad_pending;     /* pending bytes at an illegitimate refusal, or -1 */
  uint64_t sent;           /* bytes the server queued (framed), all rounds */
} fill_t;

/* "F" + u32 size: queue CHUNK-byte packets up to that many bytes, stop at a refusal. */
static int fill_hook(echo_server_t *es, echo_conn_t *c, const uint8_t *d, size_t n) {
  fill_t *f = (fill_t *)es->cfg.ctx;
  if (n != 5 || d[0] != 'F') return ECHO_DEFAULT;
  uint32_t want = test_get_u32le(d + 1);
  static uint8_t chunk[CHUNK];
  uint64_t sent = 0;
  int refused = 0;
  int64_t bad = -1;
  while (sent < want) {
    /* Read before the send: nobody else adds to this queue, it can only shrink (the
     * kernel takes bytes meanwhile), so a legitimate refusal needs this much already. */
    int64_t pending = iocpsrv_pending_bytes(es->srv, c->id);
    int rc = iocpsrv_send(es->srv, c->id, chunk, CHUNK);
    if (rc == IOCPSRV_EQUEUEFULL) {
      if (pending <= 0 || pending + CHUNK + 4 <= LIMIT) bad = pending;
      refused = 1;
      if (f->block_ms) tt_sleep_ms(f->block_ms); /* the host's own blocking work */
      break;
    }
    CHECK_OK(rc);
    sent += CHUNK + 4;
  }
  tt_mutex_lock(&f->lock);
  f->refused_round = refused;
  if (bad >= 0 && f->bad_pending < 0) f->bad_pending = bad;
  f->sent += sent;
  tt_mutex_unlock(&f->lock);
  tt_counter_add(&f->rounds, 1);
  return ECHO_SKIP;
}

typedef struct reader_s {
  ts_sock_t s;
  tt_counter_t bytes; /* read so far */
  tt_counter_t stop;  /* 1: the test is done */
} reader_t;

/* The client reads everything as it comes, as a live client would. */
static void reader_main(void *arg) {
  reader_t *r = (reader_t *)arg;
  static uint8_t buf[65536];
  while (tt_counter_get(&r->stop) == 0) {
    int n = ts_recv_some(r->s, buf, sizeof buf, 50);
    if (n > 0) tt_counter_add(&r->bytes, n);
    else if (n != TS_TIMEOUT) break;
  }
}

static void run_fills(int block_ms, int rounds) {
  fill_t f;
  memset(&f, 0, sizeof f);
  f.block_ms = block_ms;
  f.bad_pending = -1;
  tt_counter_init(&f.rounds);
  tt_mutex_init(&f.lock);
  echo_opt_t opts[] = {{IOCPSRV_OPT_SEND_QUEUE_LIMIT, LIMIT},
                       {IOCPSRV_OPT_SNDBUF, 16384},
                       {IOCPSRV_OPT_WORKER_THREADS, 2}};
  echo_config_t cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.opts = opts;
  cfg.nopts = NOPTS(opts);
  cfg.on_packet = fill_hook;
  cfg.ctx = &f;
  echo_server_t *es = echo_start(&cfg);
  ts_sock_t s = ts_connect_ex("127.0.0.1", es->port, TS_WAIT_MS, 16384);
  CHECK(s != TS_INVALID);
  reader_t r;
  memset(&r, 0, sizeof r);
  r.s = s;
  tt_counter_init(&r.bytes);
  tt_counter_init(&r.stop);
  tt_thread_t *th = tt_thread_start(reader_main, &r);

  /* Sizes around the limit: below it, just over it, well over it. */
  static const uint32_t sizes[] = {70000, 90000, 130000, 250000, 400000, 190000, 30000};
  int refusals = 0;
  for (int i = 0; i < rounds; i++) {
    int64_t drains = tt_counter_get(&es->drains);
    uint8_t cmd[5] = {'F'};
    test_put_u32le(cmd + 1, sizes[i % (sizeof sizes / sizeof sizes[0])]);
    CHECK_EQ(ts_send_packet(s, cmd, sizeof cmd), 0);
    CHECK_MSG(tt_counter_wait(&f.rounds, i + 1, TS_WAIT_MS) == 0, "round %d not handled", i);
    tt_mutex_lock(&f.lock);
    int refused = f.refused_round;
    int64_t bad = f.bad_pending;
    tt_mutex_unlock(&f.lock);
    CHECK_MSG(bad < 0, "round %d: IOCPSRV_EQUEUEFULL with %lld bytes queued (limit %d, "
              "packet %d)", i, (long long)bad, LIMIT, CHUNK + 4);
    if (!refused) continue;
    refusals++;
    /* The client reads on; the host waits for the drain, as a throttling host does. */
    CHECK_MSG(tt_counter_wait(&es->drains, drains + 1, 5000) == 0,
              "round %d: a send was refused and no drain came (client read %lld bytes)", i,
              (long long)tt_counter_get(&r.bytes));
  }
  CHECK_GT(refusals, 0); /* the test must have exercised refusals */
  tt_mutex_lock(&f.lock);
  int64_t total = (int64_t)f.sent;
  tt_mutex_unlock(&f.lock);
  CHECK_MSG(tt_counter_wait(&r.bytes, total, TS_WAIT_MS) == 0, "client got %lld of %lld bytes",
            (long long)tt_counter_get(&r.bytes), (long long)total);
  tt_counter_set(&r.stop, 1);
  tt_thread_join(th);
  ts_close(s);
  echo_finish(es);
  tt_counter_destroy(&r.bytes);
  tt_counter_destroy(&r.stop);
  tt_counter_destroy(&f.rounds);
  tt_mutex_destroy(&f.lock);
}

/* Own-callback sends against a queue that a reading client keeps draining. */
static void send_queue_full_only_when_busy_and_drain_always_follows(void) {
  run_fills(0, 120);
}

/* The same with a callback that blocks after its refusal, so the queue empties while
 * it blocks: the drain must still come. */
static void send_queue_drain_after_refusal_in_blocking_callback(void) {
  run_fills(30, 40);
}

/* A WSABUF length is a ULONG: the clamp keeps every write within 32 bits, and never
 * turns a non-empty queue into a zero-length write (2^32 bytes used to). */
static void send_queue_write_size_fits_32_bits(void) {
  sendbuf_t b;
  memset(&b, 0, sizeof b);
  static const uint64_t cases[] = {1, 65536, (1ull << 30), (1ull << 30) + 1, (1ull << 32) - 1,
                                   (1ull << 32), (1ull << 32) + 16, (1ull << 33), (1ull << 40)};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    if ((size_t)cases[i] != cases[i]) continue; /* 32-bit size_t */
    b.off = 0;
    b.len = (size_t)cases[i];
    size_t n = sendbuf_write_len(&b);
    CHECK_GT(n, 0);
    CHECK_LE(n, cases[i]);
    CHECK_LE((uint64_t)n, 0xffffffffull);
    CHECK_EQ((uint32_t)n, n); /* what (ULONG) keeps is the whole write */
  }
}

int main(int argc, char **argv) {
  test_init(argc, argv);
  TEST_RUN(send_queue_full_only_when_busy_and_drain_always_follows);
  TEST_RUN(send_queue_drain_after_refusal_in_blocking_callback);
  TEST_RUN(send_queue_write_size_fits_32_bits);
  return test_done();
}
