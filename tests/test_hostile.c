/*
 * test_hostile.c -- hostile clients against a real server on loopback.
 *
 * Every sub-test runs a well-behaved client (su_bystander_t) that keeps echoing
 * verified packets the whole time, and checks that it made progress after each
 * hostile act: a misbehaving client costs only its own connection.
 *
 *   oversize header            closed, reason protocol-error, stats.protocol_errors
 *   header (or less) then FIN  exactly one disconnect, nothing delivered, and a client
 *                              announcing 1 GiB costs memory for what it sent only
 *   half a packet then reset   exactly one disconnect (peer-reset), nothing delivered
 *   slowloris                  closed by IOCPSRV_OPT_IDLE_TIMEOUT_MS (300 ms), counted
 *   never reads                send returns IOCPSRV_EQUEUEFULL, pending bytes and the
 *                              process RSS stay bounded
 *   churn                      5,000 connect/disconnect: stats, heap and RSS back to
 *                              baseline
 *   max-connections flood      refused at once, the client sees it, counted
 *   garbage after packets      exactly what a reference parser predicts is delivered,
 *                              then protocol-error or a clean close
 *   bad arguments              every API call with bad input returns a negative code
 *
 * The same source runs under Wine in the windows preset. Wine sends a FIN for an
 * abortive close (SO_LINGER 0), so where a client resets, the server may see
 * peer-closed there instead of peer-reset (DESIGN.md, Wine notes).
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "echo.h"
#include "sock.h"
#include "stress_util.h"
#include "test.h"
#include "thread.h"

#define NOPTS(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* ---- helpers ---- */

static ts_sock_t connect_port(int port) {
  ts_sock_t s = ts_connect("127.0.0.1", port, TS_WAIT_MS);
  CHECK_MSG(s != TS_INVALID, "connect to port %d failed", port);
  return s;
}

static void expect_echo(ts_sock_t s, const void *data, size_t len) {
  uint8_t buf[4096];
  size_t got = 0;
  CHECK(len <= sizeof buf);
  CHECK_EQ(ts_send_packet(s, data, len), 0);
  int rc = ts_recv_packet(s, buf, sizeof buf, &got, TS_WAIT_MS);
  CHECK_MSG(rc == 0, "echo of %u bytes: %s", (unsigned)len, ts_strerror(rc));
  CHECK_EQ(got, len);
  CHECK_MEMEQ(buf, data, len);
}

/* The server closes this client (FIN or reset); returns which. */
static int expect_closed(ts_sock_t s) {
  int rc = ts_wait_close(s, TS_WAIT_MS, NULL);
  CHECK_MSG(rc == TS_EOF || rc == TS_RESET, "expected the server to close: %s",
            ts_strerror(rc));
  return rc;
}

/* The server aborted this client: a reset on Linux (SO_LINGER 0); Wine may send a
 * FIN instead. */
static void expect_aborted(ts_sock_t s) {
  int rc = expect_closed(s);
  if (!test_under_wine())
    CHECK_MSG(rc == TS_RESET, "an abortive close should reset the client, it saw %s",
              ts_strerror(rc));
}

static int reason_of(echo_server_t *es, echo_conn_t *c) {
  CHECK_MSG(echo_wait_disconnect(es, c, TS_WAIT_MS) == 0, "no disconnect for %s", c->peer);
  return echo_snapshot(es, c).reason;
}

#define CHECK_REASON(es, c, want)                                                     \
  do {                                                                                \
    int r_ = reason_of(es, c);                                                        \
    CHECK_MSG(r_ == (want), "disconnect reason %d (%s), expected %s", r_,             \
              iocpsrv_reason_name(r_), #want);                                        \
  } while (0)

/* What a client's reset looks like to the server: peer-reset, or peer-closed under
 * Wine (FIN for SO_LINGER 0). */
#define CHECK_REASON_RESET(es, c)                                                     \
  do {                                                                                \
    int r_ = reason_of(es, c);                                                        \
    CHECK_MSG(r_ == IOCPSRV_REASON_PEER_RESET ||                                      \
                  (test_under_wine() && r_ == IOCPSRV_REASON_PEER_CLOSED),            \
              "disconnect reason %d (%s) after the client reset", r_,                 \
              iocpsrv_reason_name(r_));                                               \
  } while (0)

static iocpsrv_conn_info_t conn_info(iocpsrv_t *srv, iocpsrv_conn_id_t id) {
  iocpsrv_conn_info_t info;
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  CHECK_OK(iocpsrv_conn_info(srv, id, &info));
  return info;
}

/* Wait until the server has read `n` bytes from the connection (there is no event
 * for bytes that complete no packet). 0 when reached. */
static int wait_bytes_in(iocpsrv_t *srv, iocpsrv_conn_id_t id, uint64_t n) {
  int64_t deadline = tt_now_ms() + TS_WAIT_MS;
  for (;;) {
    iocpsrv_conn_info_t info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    if (iocpsrv_conn_info(srv, id, &info) == 0 && info.bytes_in >= n) return 0;
    if (tt_now_ms() > deadline) return -1;
    tt_sleep_ms(1);
  }
}

/* The event log echo.h keeps for a connection ("C;P<len>:<hash>;...;D<reason>;"). */
static void check_log(echo_server_t *es, echo_conn_t *c, const char *want) {
  echo_conn_t snap = echo_snapshot(es, c);
  CHECK_MSG(snap.log && strcmp(snap.log, want) == 0,
            "events for %s:\n  got  %s\n  want %s", c->peer, snap.log ? snap.log : "(none)",
            want);
}

static void log_append(char *buf, size_t cap, const char *fmt, ...) {
  size_t n = strlen(buf);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf + n, cap - n, fmt, ap);
  va_end(ap);
}

static void log_packet(char *buf, size_t cap, const uint8_t *data, size_t len) {
  log_append(buf, cap, "P%llu:%08x;", (unsigned long long)len, test_hash(data, len));
}

/* xorshift64*, for reproducible "random" input. */
static uint64_t rnd_next(uint64_t *x) {
  *x ^= *x >> 12;
  *x ^= *x << 25;
  *x ^= *x >> 27;
  return *x * 0x2545F4914F6CDD1DULL;
}

static const char *mode_name(int pull) { return pull ? "pull mode" : "callback mode"; }

/* ======================================================================== */
/* ---- an oversize length header ---- */

static void run_oversize(int pull) {
  enum { MAXP = 4096 };
  echo_opt_t opts[] = {{IOCPSRV_OPT_MAX_PACKET_SIZE, MAXP}};
  echo_config_t cfg = {0};
  cfg.opts = opts;
  cfg.nopts = NOPTS(opts);
  cfg.pull = pull;
  cfg.log_events = 1;
  echo_server_t *es = echo_start(&cfg);
  su_bystander_t by;
  su_bystander_start(&by, NULL, es->port, MAXP);
  uint64_t errors0 = echo_stats(es).protocol_errors;

  struct {
    const char *what;
    uint32_t claim;
    int split;   /* the header arrives one byte, then the rest */
    size_t tail; /* payload bytes sent after the header */
  } cases[] = {
      {"one byte above the maximum", MAXP + 1, 0, 0},
      {"0xFFFFFFFF with payload after it", 0xFFFFFFFFu, 0, 3000},
      {"1 GiB, the header split over two writes", 1u << 30, 1, 0},
      {"0x80000000 (negative as a signed int)", 0x80000000u, 0, 10},
  };
  int i, n = NOPTS(cases);
  for (i = 0; i < n; i++) {
    ts_sock_t s = connect_port(es->port);
    echo_conn_t *c = echo_conn_for(es, s);
    uint8_t buf[4 + 3000];
    ts_encode_header(buf, cases[i].claim, 4, 0);
    memset(buf + 4, 'x', cases[i].tail);
    if (cases[i].split) {
      CHECK_EQ(ts_send_all(s, buf, 1), 0);
      CHECK_MSG(wait_bytes_in(es->srv, c->id, 1) == 0, "the server did not read 1 byte");
      CHECK_EQ(ts_send_all(s, buf + 1, 3), 0);
    } else {
      CHECK_EQ(ts_send_all(s, buf, 4 + cases[i].tail), 0);
    }
    CHECK_REASON(es, c, IOCPSRV_REASON_PROTOCOL_ERROR);
    expect_aborted(s);
    ts_close(s);
    check_log(es, c, "C;D5;"); /* nothing delivered */
    ECHO_CHECK_STAT(es, protocol_errors, errors0 + (uint64_t)i + 1);
    su_bystander_expect_progress(&by, 3);
  }
  /* A packet of exactly the maximum is fine, on a fresh connection. */
  ts_sock_t s = connect_port(es->port);
  uint8_t *big = (uint8_t *)malloc(MAXP);
  test_fill_pattern(big, MAXP, 77);
  expect_echo(s, big, MAXP);
  free(big);
  ts_close(s);
  CHECK_EQ(echo_stats(es).protocol_errors, errors0 + (uint64_t)n);

  ts_close(su_bystander_stop(&by));
  CHECK_EQ(tt_counter_wait(&es->disconnects, n + 2, TS_WAIT_MS), 0);
  printf("[%s: %d oversize headers closed] ", mode_name(pull), n);
  echo_finish(es);
}

static void hostile_oversize_header(void) { run_oversize(0); }
static void hostile_oversize_header_pull(void) { run_oversize(1); }

/* ======================================================================== */
/* ---- a header (or part of one, or part of a packet), then close ---- */

static void hostile_header_then_close(void) {
  enum { BIG = 300 * 1024 };
  echo_opt_t opts[] = {{IOCPSRV_OPT_MAX_PACKET_SIZE, 1 << 30}};
  echo_config_t cfg = {0};
  cfg.opts = opts;
  cfg.nopts = NOPTS(opts);
  cfg.log_events = 1;
  echo_server_t *es = echo_start(&cfg);
  su_bystander_t by;
  su_bystander_start(&by, NULL, es->port, 0);
  uint8_t buf[4 + 100];
  ts_encode_header(buf, 100, 4, 0);
  memset(buf + 4, 'p', 100);

  struct {
    const char *what;
    size_t bytes;  /* of buf */
    int half_close; /* shutdown(SHUT_WR) and wait for the server's FIN */
  } cases[] = {
      {"a whole header for 100 bytes, then FIN", 4, 0},
      {"2 of the 4 header bytes, then FIN", 2, 0},
      {"the header and 50 of 100 payload bytes, then FIN", 4 + 50, 0},
      {"the header and 99 of 100 payload bytes, half-close, wait for the server", 4 + 99, 1},
  };
  int i;
  for (i = 0; i < NOPTS(cases); i++) {
    ts_sock_t s = connect_port(es->port);
    echo_conn_t *c = echo_conn_for(es, s);
    CHECK_EQ(ts_send_all(s, buf, cases[i].bytes), 0);
    CHECK_MSG(wait_bytes_in(es->srv, c->id, cases[i].bytes) == 0, "%s: not read",
              cases[i].what);
    if (cases[i].half_close) {
      CHECK_EQ(ts_shutdown_write(s), 0);
      int rc = ts_wait_close(s, TS_WAIT_MS, NULL);
      CHECK_MSG(rc == TS_EOF, "%s: the server should close cleanly, the client saw %s",
                cases[i].what, ts_strerror(rc));
    }
    ts_close(s);
    CHECK_REASON(es, c, IOCPSRV_REASON_PEER_CLOSED);
    check_log(es, c, "C;D1;");
    su_bystander_expect_progress(&by, 2);
  }

  /* A whole packet, then a lone header: the packet is delivered and echoed, the
   * header is not. */
  {
    ts_sock_t s = connect_port(es->port);
    echo_conn_t *c = echo_conn_for(es, s);
    expect_echo(s, "whole", 5);
    CHECK_EQ(ts_send_all(s, buf, 4), 0);
    CHECK_EQ(wait_bytes_in(es->srv, c->id, 4 + 5 + 4), 0);
    ts_close(s);
    char want[128] = "C;";
    log_packet(want, sizeof want, (const uint8_t *)"whole", 5);
    log_append(want, sizeof want, "D1;");
    CHECK_REASON(es, c, IOCPSRV_REASON_PEER_CLOSED);
    check_log(es, c, want);
  }

  /* Announce 1 GiB (allowed: the maximum is 1 GiB here), send 300 KiB, stop: the
   * server holds memory for what arrived, never for what was announced. */
  {
    const char *why = "";
    int measure = su_rss_meaningful(&why);
    uint8_t *data = (uint8_t *)malloc(BIG);
    test_fill_pattern(data, BIG, 5);
    ts_sock_t s = connect_port(es->port);
    echo_conn_t *c = echo_conn_for(es, s);
    int64_t rss0 = su_rss_bytes(NULL);
    ts_encode_header(data, 1u << 30, 4, 0);
    CHECK_EQ(ts_send_all(s, data, BIG), 0);
    CHECK_MSG(wait_bytes_in(es->srv, c->id, BIG) == 0, "the server did not read %d bytes",
              BIG);
    int64_t rss1 = su_rss_bytes(NULL);
    su_bystander_expect_progress(&by, 2);
    ts_close(s);
    CHECK_REASON(es, c, IOCPSRV_REASON_PEER_CLOSED);
    check_log(es, c, "C;D1;");
    free(data);
    if (measure) {
      printf("[1 GiB announced, %d KiB sent: RSS +%.0f KiB] ", BIG / 1024,
             su_kib(rss1 - rss0));
      /* The stash grows by doubling from 64 KiB: at most ~2x what arrived, plus the
       * allocator's slack. 8 MiB is far below the 1 GiB that was claimed. */
      CHECK_LT(rss1 - rss0, 8 << 20);
    } else {
      printf("[RSS not measured: %s] ", why);
    }
  }

  ts_close(su_bystander_stop(&by));
  CHECK_EQ(tt_counter_wait(&es->disconnects, NOPTS(cases) + 3, TS_WAIT_MS), 0);
  CHECK_EQ(es->reasons[IOCPSRV_REASON_PEER_CLOSED], NOPTS(cases) + 3);
  echo_finish(es);
}

/* ======================================================================== */
/* ---- half a packet, then a reset ---- */

static void run_half_packet_reset(int pull) {
  enum { CLIENTS = 24 };
  echo_config_t cfg = {0};
  cfg.pull = pull;
  cfg.log_events = 1;
  echo_server_t *es = echo_start(&cfg);
  su_bystander_t by;
  su_bystander_start(&by, NULL, es->port, 0);
  uint8_t buf[4 + 1000];
  ts_encode_header(buf, 1000, 4, 0);
  test_fill_pattern(buf + 4, 1000, 3);
  echo_conn_t *conns[CLIENTS];
  char wants[CLIENTS][64];
  int i;
  for (i = 0; i < CLIENTS; i++) {
    ts_sock_t s = connect_port(es->port);
    echo_conn_t *c = conns[i] = echo_conn_for(es, s);
    snprintf(wants[i], sizeof wants[i], "C;");
    size_t n = 0;
    switch (i % 4) {
      case 0: n = 4 + 500; break; /* header and half the payload */
      case 1: n = 4; break;       /* header only */
      case 2: n = 3; break;       /* 3 of 4 header bytes */
      case 3:                     /* a whole packet first, then half of the next */
        expect_echo(s, "complete", 8);
        log_packet(wants[i], sizeof wants[i], (const uint8_t *)"complete", 8);
        n = 4 + 999;
        break;
    }
    CHECK_EQ(ts_send_all(s, buf, n), 0);
    /* Half the clients reset before the server has read the half packet, half after. */
    if (i % 2 == 0)
      CHECK_MSG(wait_bytes_in(es->srv, c->id, n + (i % 4 == 3 ? 12 : 0)) == 0,
                "the server did not read the half packet");
    ts_reset_close(s);
  }
  for (i = 0; i < CLIENTS; i++) {
    CHECK_REASON_RESET(es, conns[i]);
    echo_conn_t snap = echo_snapshot(es, conns[i]);
    CHECK_EQ(snap.disconnects, 1);
    char want[96];
    snprintf(want, sizeof want, "%sD%d;", wants[i], snap.reason);
    check_log(es, conns[i], want);
  }
  su_bystander_expect_progress(&by, 5);
  ECHO_CHECK_STAT(es, connections_now, 1);
  ts_close(su_bystander_stop(&by));
  CHECK_EQ(tt_counter_wait(&es->disconnects, CLIENTS + 1, TS_WAIT_MS), 0);
  /* echo_finish fails on a second disconnect for any of them. */
  echo_finish(es);
}

static void hostile_half_packet_reset(void) { run_half_packet_reset(0); }
static void hostile_half_packet_reset_pull(void) { run_half_packet_reset(1); }

/* ======================================================================== */
/* ---- slowloris: bytes trickle in, no packet ever completes ---- */

/* The slow but legitimate client's second half of a 1-byte packet, and its echo. */
static void slow_finish_packet(ts_sock_t slow, uint8_t b) {
  uint8_t in[4];
  size_t got = 0;
  CHECK_EQ(ts_send_all(slow, &b, 1), 0);
  int rc = ts_recv_packet(slow, in, sizeof in, &got, TS_WAIT_MS);
  CHECK_MSG(rc == 0, "the slow but legitimate client lost its echo: %s", ts_strerror(rc));
  CHECK_EQ(got, 1);
  CHECK_EQ(in[0], b);
}

static void hostile_slowloris(void) {
  enum { IDLE = 300, TICK = 50, LORIS = 3 };
  echo_opt_t opts[] = {{IOCPSRV_OPT_IDLE_TIMEOUT_MS, IDLE}};
  echo_config_t cfg = {0};
  cfg.opts = opts;
  cfg.nopts = NOPTS(opts);
  echo_server_t *es = echo_start(&cfg);
  su_bystander_t by;
  su_bystander_start(&by, NULL, es->port, 0);
  /* Late closes are slow machines, not bugs: allow a lot under sanitizers/Wine. */
  int slack = su_sanitized() || test_under_wine() ? 6000 : 3000;

  /* 0: a header for 1000 bytes, then one payload byte per tick;
   * 1: the header itself one byte per tick, then payload bytes;
   * 2: connects and sends nothing. */
  ts_sock_t loris[LORIS];
  echo_conn_t *lc[LORIS];
  int64_t t0[LORIS], closed_at[LORIS];
  uint8_t hdr[4];
  ts_encode_header(hdr, 1000, 4, 0);
  int i;
  for (i = 0; i < LORIS; i++) {
    t0[i] = tt_now_ms();
    loris[i] = connect_port(es->port);
    CHECK_EQ(ts_set_nodelay(loris[i], 1), 0);
    lc[i] = echo_conn_for(es, loris[i]);
    closed_at[i] = 0;
  }
  CHECK_EQ(ts_send_all(loris[0], hdr, 4), 0);
  /* A slow but legitimate client: half a packet per tick, a whole one every 100 ms. */
  ts_sock_t slow = connect_port(es->port);
  CHECK_EQ(ts_set_nodelay(slow, 1), 0);
  echo_conn_t *sc = echo_conn_for(es, slow);
  uint8_t slow_hdr[4];
  ts_encode_header(slow_hdr, 1, 4, 0);

  int sent[LORIS] = {0, 0, 0}, open = LORIS, tick = 0, slow_packets = 0;
  int64_t deadline = tt_now_ms() + IDLE + slack;
  while (open > 0 && tt_now_ms() < deadline) {
    tt_sleep_ms(TICK); /* pacing the trickle */
    tick++;
    for (i = 0; i < LORIS; i++) {
      if (closed_at[i]) continue;
      if (echo_snapshot(es, lc[i]).disconnects) {
        closed_at[i] = tt_now_ms();
        open--;
        continue;
      }
      if (i == 0) {
        ts_send_all(loris[0], "x", 1); /* may fail once the server has closed it */
        sent[0]++;
      } else if (i == 1) {
        ts_send_all(loris[1], sent[1] < 4 ? hdr + sent[1] : (const uint8_t *)"y", 1);
        sent[1]++;
      }
    }
    if (tick % 2 == 1) {
      CHECK_EQ(ts_send_all(slow, slow_hdr, 4), 0);
    } else {
      slow_finish_packet(slow, (uint8_t)tick);
      slow_packets++;
    }
  }
  if (tick % 2 == 1) slow_finish_packet(slow, 0xEE); /* it is half-way through one */
  CHECK_MSG(open == 0, "%d slowloris client(s) still open %d ms after the idle timeout",
            open, slack);
  for (i = 0; i < LORIS; i++) {
    CHECK_REASON(es, lc[i], IOCPSRV_REASON_IDLE_TIMEOUT);
    int64_t lived = closed_at[i] - t0[i];
    printf("[loris %d: %d bytes, closed after %lld ms] ", i, sent[i], (long long)lived);
    /* Never before the timeout (the clock ticks in 16 ms steps on Windows). */
    CHECK_GE(lived, IDLE - 20);
    CHECK_LE(lived, IDLE + slack);
    expect_aborted(loris[i]);
    ts_close(loris[i]);
  }
  CHECK_GE(sent[0], 2); /* bytes kept arriving; none of them counted as activity */
  ECHO_CHECK_STAT(es, idle_timeouts, LORIS);
  /* The others are still there. */
  CHECK_EQ(echo_snapshot(es, sc).disconnects, 0);
  CHECK_GT(slow_packets, 0);
  expect_echo(slow, "still here", 10);
  su_bystander_expect_progress(&by, 3);
  ts_close(su_bystander_stop(&by));
  ts_close(slow);
  CHECK_EQ(tt_counter_wait(&es->disconnects, LORIS + 2, TS_WAIT_MS), 0);
  CHECK_EQ(echo_stats(es).idle_timeouts, LORIS);
  echo_finish(es);
}

/* ======================================================================== */
/* ---- a client that never reads ---- */

/* The host keeps sending to a client that never reads. */
static void hostile_never_reads(void) {
  enum { LIMIT = 256 * 1024, PKT = 4096, MORE_REFUSALS = 4000 };
  echo_opt_t opts[] = {{IOCPSRV_OPT_SEND_QUEUE_LIMIT, LIMIT}, {IOCPSRV_OPT_SNDBUF, 16384}};
  echo_config_t cfg = {0};
  cfg.opts = opts;
  cfg.nopts = NOPTS(opts);
  echo_server_t *es = echo_start(&cfg);
  su_bystander_t by;
  su_bystander_start(&by, NULL, es->port, 0);
  ts_sock_t s = ts_connect_ex("127.0.0.1", es->port, TS_WAIT_MS, 16384);
  CHECK(s != TS_INVALID);
  echo_conn_t *c = echo_conn_for(es, s);
  uint8_t *pkt = (uint8_t *)malloc(PKT);
  test_fill_pattern(pkt, PKT, 11);
  const char *why = "";
  int measure = su_rss_meaningful(&why);
  uint64_t rejections0 = echo_stats(es).send_queue_rejections;
  int64_t rss0 = su_rss_bytes(NULL), rss_max = rss0;

  int64_t accepted = 0, refused = 0, attempts = 0, max_pending = 0;
  while (refused < MORE_REFUSALS && attempts < 100000) {
    int rc = iocpsrv_send(es->srv, c->id, pkt, PKT);
    attempts++;
    if (rc == 0) {
      accepted++;
    } else {
      CHECK_ERR(rc, IOCPSRV_EQUEUEFULL);
      refused++;
    }
    int64_t pending = iocpsrv_pending_bytes(es->srv, c->id);
    CHECK_OK(pending);
    /* An empty queue takes one packet, a non-empty one stops at the limit. */
    CHECK_LE(pending, LIMIT + PKT + 4);
    if (pending > max_pending) max_pending = pending;
    if (attempts % 256 == 0 && measure) {
      int64_t r = su_rss_bytes(NULL);
      if (r > rss_max) rss_max = r;
    }
  }
  CHECK_EQ(refused, MORE_REFUSALS);
  int64_t rss1 = su_rss_bytes(NULL);
  if (rss1 > rss_max) rss_max = rss1;
  iocpsrv_stats_t st = echo_stats(es);
  CHECK_EQ(st.send_queue_rejections - rejections0, (uint64_t)refused);
  CHECK_EQ(conn_info(es->srv, c->id).packets_out, (uint64_t)accepted);
  CHECK_EQ(tt_counter_get(&es->drains), 0); /* it never read: no drain */
  CHECK_GT(max_pending, LIMIT / 2);
  su_bystander_expect_progress(&by, 5);
  printf("[%lld sends tried (%lld MiB), %lld taken, %lld refused; pending at most %lld "
         "bytes (limit %d)",
         (long long)attempts, (long long)(attempts * PKT >> 20), (long long)accepted,
         (long long)refused, (long long)max_pending, LIMIT);
  if (measure) {
    printf("; RSS grew by at most %.0f KiB] ", su_kib(rss_max - rss0));
    /* The queue is one buffer that grows by doubling: at most 2 x (limit + packet),
     * plus allocator slack. Unbounded queueing would have taken the whole ~16 MiB. */
    CHECK_LE(rss_max - rss0, 2 * (LIMIT + PKT) + (2 << 20));
  } else {
    printf("; RSS not measured: %s] ", why);
  }
  ts_reset_close(s);
  /* With sends queued the reset is first seen by the failing write, which takes the
   * socket's error; it must still be reported as a reset, not a clean close. */
  CHECK_REASON_RESET(es, c);
  CHECK_ERR(iocpsrv_pending_bytes(es->srv, c->id), IOCPSRV_ENOTCONN);
  CHECK_ERR(iocpsrv_send(es->srv, c->id, pkt, PKT), IOCPSRV_ENOTCONN);
  free(pkt);
  ts_close(su_bystander_stop(&by));
  CHECK_EQ(tt_counter_wait(&es->disconnects, 2, TS_WAIT_MS), 0);
  echo_finish(es);
}

/* The client floods packets and never reads the echoes. */
static void hostile_never_reads_echoes(void) {
  enum { LIMIT = 128 * 1024, PKT = 4096, COUNT = 1500 };
  echo_opt_t opts[] = {{IOCPSRV_OPT_SEND_QUEUE_LIMIT, LIMIT}, {IOCPSRV_OPT_SNDBUF, 16384}};
  echo_config_t cfg = {0};
  cfg.opts = opts;
  cfg.nopts = NOPTS(opts);
  echo_server_t *es = echo_start(&cfg);
  su_bystander_t by;
  su_bystander_start(&by, NULL, es->port, 0);
  ts_sock_t s = ts_connect_ex("127.0.0.1", es->port, TS_WAIT_MS, 16384);
  CHECK(s != TS_INVALID);
  echo_conn_t *c = echo_conn_for(es, s);
  uint8_t *pkt = (uint8_t *)malloc(PKT);
  const char *why = "";
  int measure = su_rss_meaningful(&why);
  int64_t rss0 = su_rss_bytes(NULL);
  int i;
  for (i = 0; i < COUNT; i++) {
    test_fill_pattern(pkt, PKT, (uint64_t)i);
    CHECK_EQ(ts_send_packet(s, pkt, PKT), 0);
    if (i % 100 == 99) {
      int64_t pending = iocpsrv_pending_bytes(es->srv, c->id);
      CHECK_OK(pending);
      CHECK_LE(pending, LIMIT + PKT + 4);
    }
  }
  CHECK_MSG(echo_wait_packets(es, c, COUNT, TS_WAIT_MS) == 0, "the server read only %llu "
            "of %d packets", (unsigned long long)echo_snapshot(es, c).packets, COUNT);
  int64_t rss1 = su_rss_bytes(NULL);
  int64_t pending = iocpsrv_pending_bytes(es->srv, c->id);
  CHECK_LE(pending, LIMIT + PKT + 4);
  tt_mutex_lock(&es->lock);
  int send_errors = es->send_errors, last = es->last_send_error;
  tt_mutex_unlock(&es->lock);
  CHECK_GT(send_errors, 0);
  CHECK_ERR(last, IOCPSRV_EQUEUEFULL);
  CHECK_GE(echo_stats(es).send_queue_rejections, (uint64_t)send_errors);
  su_bystander_expect_progress(&by, 5);
  printf("[%d packets in, %d echoes refused, %lld bytes pending", COUNT, send_errors,
         (long long)pending);
  if (measure) {
    printf(", RSS +%.0f KiB] ", su_kib(rss1 - rss0));
    CHECK_LE(rss1 - rss0, 2 * (LIMIT + PKT) + (2 << 20));
  } else {
    printf(", RSS not measured: %s] ", why);
  }
  ts_close(s); /* with unread data: the kernel resets */
  CHECK_EQ(echo_wait_disconnect(es, c, TS_WAIT_MS), 0);
  free(pkt);
  ts_close(su_bystander_stop(&by));
  CHECK_EQ(tt_counter_wait(&es->disconnects, 2, TS_WAIT_MS), 0);
  echo_finish(es);
}

/* ======================================================================== */
/* ---- 5,000 connect/disconnect: back to baseline ---- */

enum { CHURN_THREADS = 4 };

typedef struct {
  int port, index, count;
  int rc;
  char what[128];
  int kinds[6];
} churn_t;

/* One short-lived client of kind k. */
static int churn_one(churn_t *ch, int k, int i) {
  ts_sock_t s = ts_connect("127.0.0.1", ch->port, TS_WAIT_MS);
  if (s == TS_INVALID) {
    snprintf(ch->what, sizeof ch->what, "connect %d failed", i);
    return TS_ERR;
  }
  int rc = 0;
  uint8_t buf[64], in[64];
  size_t got = 0;
  switch (k) {
    case 0: /* echo, then FIN */
    case 1: /* echo, then reset */
      test_fill_pattern(buf, 24, (uint64_t)i);
      rc = ts_send_packet(s, buf, 24);
      if (rc == 0) rc = ts_recv_packet(s, in, sizeof in, &got, TS_WAIT_MS);
      if (rc == 0 && (got != 24 || memcmp(in, buf, 24) != 0)) rc = TS_ERR;
      if (rc) snprintf(ch->what, sizeof ch->what, "echo on client %d: %s", i, ts_strerror(rc));
      if (k == 0) ts_close(s);
      else ts_reset_close(s);
      break;
    case 2: ts_close(s); break;       /* connect and leave */
    case 3: ts_reset_close(s); break; /* connect and reset */
    case 4:                           /* half a packet, then FIN */
      ts_encode_header(buf, 40, 4, 0);
      rc = ts_send_all(s, buf, 4 + 10);
      ts_close(s);
      break;
    case 5: /* an oversize header: the server closes */
      memset(buf, 0xff, 8);
      rc = ts_send_all(s, buf, 8);
      if (rc == 0) {
        rc = ts_wait_close(s, TS_WAIT_MS, NULL);
        rc = rc == TS_EOF || rc == TS_RESET ? 0 : rc;
      }
      if (rc) snprintf(ch->what, sizeof ch->what, "oversize client %d: %s", i, ts_strerror(rc));
      ts_close(s);
      break;
  }
  return rc;
}

static void churn_main(void *p) {
  churn_t *ch = (churn_t *)p;
  int i;
  for (i = 0; i < ch->count && ch->rc == 0; i++) {
    int k = (i * CHURN_THREADS + ch->index) % 6;
    ch->rc = churn_one(ch, k, i);
    ch->kinds[k]++;
  }
}

/* Run `total` clients from CHURN_THREADS threads; returns how many were of kind 5. */
static int churn_run(int port, int total) {
  churn_t ch[CHURN_THREADS];
  tt_thread_t *th[CHURN_THREADS];
  int i, oversize = 0;
  memset(ch, 0, sizeof ch);
  for (i = 0; i < CHURN_THREADS; i++) {
    ch[i].port = port;
    ch[i].index = i;
    ch[i].count = total / CHURN_THREADS + (i < total % CHURN_THREADS);
    th[i] = tt_thread_start(churn_main, &ch[i]);
    CHECK(th[i] != NULL);
  }
  for (i = 0; i < CHURN_THREADS; i++) tt_thread_join(th[i]);
  for (i = 0; i < CHURN_THREADS; i++) {
    CHECK_MSG(ch[i].rc == 0, "churn thread %d: %s (%s)", i, ch[i].what,
              ts_strerror(ch[i].rc));
    oversize += ch[i].kinds[5];
  }
  return oversize;
}

static void hostile_churn(void) {
  int total = su_count(5000, 5000, 5000), warm = total / 10;
  su_server_t *s = su_server_create(total + warm + 8, NULL, 0);
  su_server_listen(s);
  su_bystander_t by;
  su_bystander_start(&by, NULL, s->port, 0);
  CHECK_EQ(tt_counter_wait(&s->connects, 1, TS_WAIT_MS), 0);

  /* Warm up first (arenas, slots, thread stacks), then take the baseline. */
  churn_run(s->port, warm);
  CHECK_MSG(tt_counter_wait(&s->disconnects, warm, TS_WAIT_MS) == 0, "%lld of %d warm-up "
            "disconnects", (long long)tt_counter_get(&s->disconnects), warm);
  ECHO_WAIT_FOR(su_stats(s).connections_now == 1);
  iocpsrv_stats_t st0 = su_stats(s);
  CHECK_EQ(st0.connections_now, 1);
  int64_t connects0 = tt_counter_get(&s->connects);
  int64_t disconnects0 = tt_counter_get(&s->disconnects);
  int64_t heap0 = su_heap_in_use();
  int64_t rss0 = su_rss_bytes(NULL);
  int64_t t0 = tt_now_ms();

  int oversize = churn_run(s->port, total);
  CHECK_MSG(tt_counter_wait(&s->connects, connects0 + total, TS_WAIT_MS) == 0,
            "%lld of %d churn clients accepted",
            (long long)(tt_counter_get(&s->connects) - connects0), total);
  CHECK_MSG(tt_counter_wait(&s->disconnects, disconnects0 + total, TS_WAIT_MS) == 0,
            "%lld of %d churn disconnects",
            (long long)(tt_counter_get(&s->disconnects) - disconnects0), total);
  int64_t elapsed = tt_now_ms() - t0;
  ECHO_WAIT_FOR(su_stats(s).connections_now == 1);
  iocpsrv_stats_t st1 = su_stats(s);
  CHECK_EQ(st1.connections_now, st0.connections_now);
  CHECK_EQ(iocpsrv_connections(s->srv, NULL, 0), 1);
  CHECK_EQ(st1.connections_total - st0.connections_total, (uint64_t)total);
  CHECK_EQ(st1.connections_refused, st0.connections_refused);
  CHECK_EQ(st1.accept_errors, st0.accept_errors);
  CHECK_EQ(st1.protocol_errors - st0.protocol_errors, (uint64_t)oversize);
  CHECK_EQ(atomic_load(&s->violations), 0);
  su_bystander_expect_progress(&by, 5);

  int64_t heap1 = su_heap_in_use();
  int64_t rss1 = su_rss_bytes(NULL);
  const char *why = "";
  printf("[%d connections in %lld ms", total, (long long)elapsed);
  if (heap0 >= 0 && heap1 >= 0) {
    printf("; heap in use %+lld bytes", (long long)(heap1 - heap0));
    /* Legitimate growth: at most one more 256-slot chunk of the connection table
     * (~90 KB) if a burst of slow disconnects needed more slots than the warm-up, and
     * the bystander's two send buffers (the queue and its callbacks' own), which an
     * active connection keeps between packets up to 128 KiB each (core/sendbuf.c).
     * 384 KiB is 79 bytes per connection: any per-connection leak shows. */
    CHECK_LE(heap1 - heap0, 384 * 1024);
  } else {
#ifdef SU_ASAN
    printf("; heap in use not known here (LeakSanitizer checks for leaks at exit)");
#else
    printf("; heap in use not known here");
#endif
  }
  if (su_rss_meaningful(&why)) {
    printf("; RSS %+.0f KiB] ", su_kib(rss1 - rss0));
    /* The allocator keeps some of what was freed (per-thread arenas, fragments, a
     * burst that needed one more 256-slot chunk of the connection table); measured:
     * 0.1 to 0.5 MiB. 2 MiB is 400 bytes per connection: leaking one send buffer
     * (>= 1 KiB) per connection would show as 5 MiB. The heap figure above is the
     * exact leak check; this one catches memory kept outside malloc. */
    CHECK_LE(rss1 - rss0, 2 << 20);
  } else {
    printf("; RSS not measured: %s] ", why);
  }

  ts_close(su_bystander_stop(&by));
  CHECK_EQ(tt_counter_wait(&s->disconnects, disconnects0 + total + 1, TS_WAIT_MS), 0);
  CHECK_OK(su_server_stop(s, 2000));
  su_server_check(s);
  su_server_destroy(s);
}

/* ======================================================================== */
/* ---- a flood past max connections ---- */

enum { FLOOD_THREADS = 4 };

typedef struct {
  int port, count, index;
  int closed_eof, closed_reset, bad;
  int64_t max_ms, total_ms;
  size_t echoed;
  char what[128];
} flood_t;

static void flood_main(void *p) {
  flood_t *f = (flood_t *)p;
  int i;
  for (i = 0; i < f->count; i++) {
    int64_t t0 = tt_now_ms();
    ts_sock_t s = ts_connect("127.0.0.1", f->port, TS_WAIT_MS);
    if (s == TS_INVALID) {
      /* Refused before the handshake completed is also refused (a full backlog). */
      f->closed_reset++;
      continue;
    }
    if ((i + f->index) % 2 == 0) ts_send_packet(s, "let me in", 9); /* may fail */
    size_t got = 0;
    int rc = ts_wait_close(s, TS_WAIT_MS, &got);
    int64_t ms = tt_now_ms() - t0;
    if (ms > f->max_ms) f->max_ms = ms;
    f->total_ms += ms;
    f->echoed += got;
    if (rc == TS_EOF) f->closed_eof++;
    else if (rc == TS_RESET) f->closed_reset++;
    else if (f->bad++ == 0)
      snprintf(f->what, sizeof f->what, "flood client %d: %s", i, ts_strerror(rc));
    ts_close(s);
  }
}

static void hostile_max_connections_flood(void) {
  enum { MAXC = 6 };
  int per = su_count(60, 60, 25), total = per * FLOOD_THREADS;
  echo_opt_t opts[] = {{IOCPSRV_OPT_MAX_CONNECTIONS, MAXC}};
  echo_config_t cfg = {0};
  cfg.opts = opts;
  cfg.nopts = NOPTS(opts);
  echo_server_t *es = echo_start(&cfg);
  su_bystander_t by;
  su_bystander_start(&by, NULL, es->port, 0);
  ts_sock_t good[MAXC - 1];
  int i;
  for (i = 0; i < MAXC - 1; i++) {
    good[i] = connect_port(es->port);
    expect_echo(good[i], "inside", 6);
  }
  CHECK_EQ(tt_counter_get(&es->connects), MAXC);
  ECHO_CHECK_STAT(es, connections_now, MAXC);

  flood_t f[FLOOD_THREADS];
  tt_thread_t *th[FLOOD_THREADS];
  memset(f, 0, sizeof f);
  for (i = 0; i < FLOOD_THREADS; i++) {
    f[i].port = es->port;
    f[i].count = per;
    f[i].index = i;
    th[i] = tt_thread_start(flood_main, &f[i]);
    CHECK(th[i] != NULL);
  }
  /* The ones inside are served while the flood goes on. */
  for (i = 0; i < MAXC - 1; i++) expect_echo(good[i], "during the flood", 16);
  su_bystander_expect_progress(&by, 3);
  int eof = 0, reset = 0;
  int64_t max_ms = 0, sum_ms = 0;
  for (i = 0; i < FLOOD_THREADS; i++) {
    tt_thread_join(th[i]);
    CHECK_MSG(f[i].bad == 0, "%d flood client(s) not closed by the server; first: %s",
              f[i].bad, f[i].what);
    CHECK_EQ(f[i].echoed, 0); /* a refused client is never served */
    eof += f[i].closed_eof;
    reset += f[i].closed_reset;
    if (f[i].max_ms > max_ms) max_ms = f[i].max_ms;
    sum_ms += f[i].total_ms;
  }
  CHECK_EQ(eof + reset, total);
  printf("[%d refused: %d saw FIN, %d reset; connect-to-close %.1f ms on average, %lld "
         "at most] ", total, eof, reset, (double)sum_ms / total, (long long)max_ms);
  /* "At once": no refused client waits for a timeout of any kind. */
  CHECK_LE(max_ms, su_sanitized() || test_under_wine() ? 5000 : 2000);
  ECHO_CHECK_STAT(es, connections_refused, total);
  CHECK_EQ(tt_counter_get(&es->connects), MAXC); /* the host never saw them */
  iocpsrv_stats_t st = echo_stats(es);
  CHECK_EQ(st.connections_total, MAXC);
  CHECK_EQ(st.connections_now, MAXC);
  for (i = 0; i < MAXC - 1; i++) expect_echo(good[i], "after the flood", 15);
  su_bystander_expect_progress(&by, 3);

  /* One leaves: room for exactly one more. */
  echo_conn_t *c0 = echo_conn_for(es, good[0]);
  ts_close(good[0]);
  CHECK_EQ(echo_wait_disconnect(es, c0, TS_WAIT_MS), 0);
  ECHO_CHECK_STAT(es, connections_now, MAXC - 1);
  good[0] = connect_port(es->port);
  expect_echo(good[0], "room again", 10);
  CHECK_EQ(echo_stats(es).connections_refused, (uint64_t)total);

  for (i = 0; i < MAXC - 1; i++) ts_close(good[i]);
  ts_close(su_bystander_stop(&by));
  CHECK_EQ(tt_counter_wait(&es->disconnects, MAXC + 1, TS_WAIT_MS), 0);
  echo_finish(es);
}

/* ======================================================================== */
/* ---- garbage after valid packets ---- */

enum { GARBAGE_MAX = 2048 };

/* What the server must do with a byte stream (the reference parser): the packets it
 * delivers, and whether it then finds a header above the maximum. */
typedef struct {
  char log[16384]; /* "C;P..;P..;" */
  int npackets;
  int protocol_error;
  size_t consumed;  /* bytes up to the end of the last whole packet */
} model_t;

static void model_parse(model_t *m, const uint8_t *p, size_t n) {
  size_t pos = 0;
  snprintf(m->log, sizeof m->log, "C;");
  m->npackets = 0;
  m->protocol_error = 0;
  for (;;) {
    if (n - pos < 4) break;
    uint32_t len = test_get_u32le(p + pos);
    if (len > GARBAGE_MAX) {
      m->protocol_error = 1;
      break;
    }
    if (n - pos - 4 < len) break;
    log_packet(m->log, sizeof m->log, p + pos + 4, len);
    m->npackets++;
    pos += 4 + len;
  }
  m->consumed = pos;
}

/* Send the stream in odd-sized chunks (stop quietly once the server has closed). */
static void send_chunked(ts_sock_t s, const uint8_t *p, size_t n, uint64_t *rnd) {
  size_t off = 0;
  while (off < n) {
    size_t k = 1 + (size_t)(rnd_next(rnd) % 700);
    if (k > n - off) k = n - off;
    if (ts_send_all(s, p + off, k) != 0) return;
    off += k;
  }
}

/* One connection: send `p`, check what the server did against the model. */
static void garbage_case(echo_server_t *es, const char *what, const uint8_t *p, size_t n,
                         uint64_t seed) {
  model_t *m = (model_t *)malloc(sizeof *m);
  CHECK(m != NULL);
  model_parse(m, p, n);
  ts_sock_t s = connect_port(es->port);
  echo_conn_t *c = echo_conn_for(es, s);
  uint64_t rnd = seed * 2654435761u + 1;
  send_chunked(s, p, n, &rnd);
  if (m->protocol_error) {
    /* Whatever came before is delivered, then the connection is aborted (its queued
     * echoes may or may not have gone out before the reset). */
    int r = reason_of(es, c);
    CHECK_MSG(r == IOCPSRV_REASON_PROTOCOL_ERROR, "%s: reason %s, expected protocol-error",
              what, iocpsrv_reason_name(r));
    expect_closed(s);
    log_append(m->log, sizeof m->log, "D5;");
  } else {
    /* No error: every whole packet comes back in order, the incomplete tail does not,
     * then the server closes cleanly after our FIN. The FIN goes first: replies to a
     * half-closed client are still written, in pull mode too. */
    CHECK_EQ(ts_shutdown_write(s), 0);
    size_t pos = 0;
    int k;
    uint8_t *in = (uint8_t *)malloc(GARBAGE_MAX + 1);
    for (k = 0; k < m->npackets; k++) {
      size_t got = 0;
      uint32_t len = test_get_u32le(p + pos);
      int rc = ts_recv_packet(s, in, GARBAGE_MAX, &got, TS_WAIT_MS);
      CHECK_MSG(rc == 0, "%s: echo %d of %d: %s", what, k, m->npackets, ts_strerror(rc));
      CHECK_EQ(got, len);
      CHECK_MEMEQ(in, p + pos + 4, len);
      pos += 4 + len;
    }
    free(in);
    int rc = ts_wait_close(s, TS_WAIT_MS, NULL);
    CHECK_MSG(rc == TS_EOF, "%s: after the echoes the server should close cleanly: %s",
              what, ts_strerror(rc));
    CHECK_REASON(es, c, IOCPSRV_REASON_PEER_CLOSED);
    log_append(m->log, sizeof m->log, "D1;");
  }
  ts_close(s);
  check_log(es, c, m->log);
  free(m);
}

/* A reproducible stream: mostly frames with a valid length, some with a random 32-bit
 * header (almost always above the maximum), sometimes a cut-off tail. */
static size_t random_stream(uint8_t *out, size_t cap, uint64_t seed) {
  uint64_t x = seed * 0x9E3779B97F4A7C15ULL + 7;
  size_t n = 0;
  int frames = 1 + (int)(rnd_next(&x) % 12);
  while (frames-- > 0 && n + 4 + GARBAGE_MAX + 64 < cap) {
    uint64_t r = rnd_next(&x);
    uint32_t len;
    if (r % 10 < 8) len = (uint32_t)(rnd_next(&x) % 300);
    else if (r % 10 == 8) len = (uint32_t)(rnd_next(&x) % (GARBAGE_MAX + 1));
    else len = (uint32_t)rnd_next(&x);
    test_put_u32le(out + n, len);
    n += 4;
    size_t body = len <= GARBAGE_MAX ? len : (size_t)(rnd_next(&x) % 64);
    size_t i;
    for (i = 0; i < body; i++) out[n + i] = (uint8_t)rnd_next(&x);
    n += body;
  }
  if (rnd_next(&x) % 3 == 0) n -= (size_t)(rnd_next(&x) % 4); /* cut the tail */
  return n;
}

static void run_garbage(int pull) {
  echo_opt_t opts[] = {{IOCPSRV_OPT_MAX_PACKET_SIZE, GARBAGE_MAX}};
  echo_config_t cfg = {0};
  cfg.opts = opts;
  cfg.nopts = NOPTS(opts);
  cfg.pull = pull;
  cfg.log_events = 1;
  echo_server_t *es = echo_start(&cfg);
  su_bystander_t by;
  su_bystander_start(&by, NULL, es->port, GARBAGE_MAX);
  uint64_t errors0 = echo_stats(es).protocol_errors;
  int expected_errors = 0;
  size_t cap = 64 * 1024;
  uint8_t *buf = (uint8_t *)malloc(cap);
  size_t n;

  /* 1. Three packets, then bytes whose first four read as a length above the max. */
  n = ts_frame(buf, "one", 3, 4, 0);
  n += ts_frame(buf + n, "", 0, 4, 0);
  n += ts_frame(buf + n, "three", 5, 4, 0);
  memcpy(buf + n, "\xff\xfe\xfd\xfc garbage that never ends", 28);
  n += 28;
  garbage_case(es, "packets, then a header above the maximum", buf, n, 1);
  expected_errors++;

  /* 2. Two packets, then "garbage" that happens to be a valid frame, then two stray
   * bytes (an incomplete header): three packets delivered, the stray bytes never. */
  n = ts_frame(buf, "first", 5, 4, 0);
  n += ts_frame(buf + n, "second", 6, 4, 0);
  memcpy(buf + n, "\x07\x00\x00\x00garbage\x01\x02", 13);
  n += 13;
  garbage_case(es, "packets, then a valid-looking frame and two stray bytes", buf, n, 2);

  /* 3. A packet, then a line of text (an HTTP request to the wrong port): "GET "
   * reads as 0x20544547, far above the maximum. */
  n = ts_frame(buf, "hello", 5, 4, 0);
  memcpy(buf + n, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 27);
  n += 27;
  garbage_case(es, "a packet, then an HTTP request", buf, n, 3);
  expected_errors++;

  /* 4. Reproducible random streams, checked against the reference parser. */
  int seeds = su_count(40, 40, 20), seed, errors = 0;
  for (seed = 0; seed < seeds; seed++) {
    n = random_stream(buf, cap, (uint64_t)seed + 100);
    model_t *m = (model_t *)malloc(sizeof *m);
    model_parse(m, buf, n);
    errors += m->protocol_error;
    free(m);
    char what[64];
    snprintf(what, sizeof what, "random stream %d (%u bytes)", seed, (unsigned)n);
    garbage_case(es, what, buf, n, (uint64_t)seed);
    if (seed % 8 == 0) su_bystander_expect_progress(&by, 2);
  }
  expected_errors += errors;
  printf("[%s: %d random streams, %d ended in a protocol error] ", mode_name(pull), seeds,
         errors);
  CHECK_GT(errors, 0);
  CHECK_LT(errors, seeds);
  ECHO_CHECK_STAT(es, protocol_errors, errors0 + (uint64_t)expected_errors);
  su_bystander_expect_progress(&by, 3);
  free(buf);
  ts_close(su_bystander_stop(&by));
  CHECK_EQ(tt_counter_wait(&es->disconnects, 3 + seeds + 1, TS_WAIT_MS), 0);
  echo_finish(es);
}

static void hostile_garbage_after_packets(void) { run_garbage(0); }
static void hostile_garbage_after_packets_pull(void) { run_garbage(1); }

/* ======================================================================== */
/* ---- bad arguments to every call ---- */

/* Results of calls made inside a packet callback. */
typedef struct {
  int destroy_rc, listen_rc, set_option_rc, set_cb_rc, poll_rc, stop_other_rc;
  tt_counter_t done;
} incb_t;

static int badargs_hook(echo_server_t *es, echo_conn_t *c, const uint8_t *d, size_t n) {
  incb_t *x = (incb_t *)es->cfg.ctx;
  if (n == 9 && memcmp(d, "incallbk!", 9) == 0) {
    iocpsrv_event_t ev[2];
    x->destroy_rc = iocpsrv_destroy(es->srv);
    x->listen_rc = iocpsrv_listen(es->srv, "127.0.0.1", 0);
    x->set_option_rc = iocpsrv_set_option(es->srv, IOCPSRV_OPT_NODELAY, 0);
    x->set_cb_rc = iocpsrv_set_packet_cb(es->srv, NULL);
    x->poll_rc = iocpsrv_poll(es->srv, ev, 2, 0);
    x->stop_other_rc = iocpsrv_stop(NULL, 0);
    tt_counter_add(&x->done, 1);
    return ECHO_DEFAULT;
  }
  return ECHO_DEFAULT;
}

/* Every id-taking call with this id must fail (ENOTCONN for a well-formed request). */
static void expect_dead_id(iocpsrv_t *srv, iocpsrv_conn_id_t id) {
  iocpsrv_conn_info_t info;
  iocpsrv_buf_t b = {"WRONG", 5};
  int rc = iocpsrv_send(srv, id, "WRONG", 5);
  CHECK_MSG(rc == IOCPSRV_ENOTCONN, "send to id %llx returned %d %s", (unsigned long long)id,
            rc, iocpsrv_err_name(rc));
  CHECK_ERR(iocpsrv_sendv(srv, id, &b, 1), IOCPSRV_ENOTCONN);
  CHECK_ERR(iocpsrv_disconnect(srv, id, IOCPSRV_CLOSE_ABORT), IOCPSRV_ENOTCONN);
  CHECK_ERR(iocpsrv_disconnect(srv, id, IOCPSRV_CLOSE_GRACEFUL), IOCPSRV_ENOTCONN);
  CHECK_ERR(iocpsrv_pause_receive(srv, id), IOCPSRV_ENOTCONN);
  CHECK_ERR(iocpsrv_resume_receive(srv, id), IOCPSRV_ENOTCONN);
  CHECK_ERR(iocpsrv_pending_bytes(srv, id), IOCPSRV_ENOTCONN);
  CHECK_ERR(iocpsrv_set_conn_user(srv, id, &info), IOCPSRV_ENOTCONN);
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  CHECK_ERR(iocpsrv_conn_info(srv, id, &info), IOCPSRV_ENOTCONN);
}

static void hostile_bad_arguments(void) {
  static const int all_options[] = {
      IOCPSRV_OPT_WORKER_THREADS,   IOCPSRV_OPT_CONCURRENCY,      IOCPSRV_OPT_LISTEN_BACKLOG,
      IOCPSRV_OPT_ACCEPTS_POSTED,   IOCPSRV_OPT_MAX_CONNECTIONS,  IOCPSRV_OPT_MAX_PACKET_SIZE,
      IOCPSRV_OPT_FRAMING,          IOCPSRV_OPT_SEND_QUEUE_LIMIT, IOCPSRV_OPT_IDLE_TIMEOUT_MS,
      IOCPSRV_OPT_KEEPALIVE_MS,     IOCPSRV_OPT_NODELAY,          IOCPSRV_OPT_RCVBUF,
      IOCPSRV_OPT_SNDBUF,           IOCPSRV_OPT_READ_BUFFER,      IOCPSRV_OPT_PULL_MODE,
      IOCPSRV_OPT_PULL_QUEUE_LIMIT, IOCPSRV_OPT_CLOSE_TIMEOUT_MS, IOCPSRV_OPT_IPV6_ONLY};
  /* Below each option's minimum (0 is valid for some, so -1 then), and above the max. */
  static const struct {
    int option;
    int64_t low, high;
  } ranges[] = {
      {IOCPSRV_OPT_WORKER_THREADS, -1, 1025},
      {IOCPSRV_OPT_ACCEPTS_POSTED, 0, 1025},
      {IOCPSRV_OPT_MAX_CONNECTIONS, 0, 16777216},
      {IOCPSRV_OPT_MAX_PACKET_SIZE, 0, (INT64_C(1) << 30) + 1},
      {IOCPSRV_OPT_FRAMING, -1, IOCPSRV_FRAMING_RAW + 1},
      {IOCPSRV_OPT_SEND_QUEUE_LIMIT, 0, INT64_MAX},
      {IOCPSRV_OPT_IDLE_TIMEOUT_MS, -1, INT64_MAX},
      {IOCPSRV_OPT_NODELAY, -1, 2},
      {IOCPSRV_OPT_READ_BUFFER, 511, (INT64_C(16) << 20) + 1},
      {IOCPSRV_OPT_PULL_MODE, -1, 2},
      {IOCPSRV_OPT_PULL_QUEUE_LIMIT, 0, (INT64_C(1) << 24) + 1},
      {IOCPSRV_OPT_IPV6_ONLY, -1, 2},
  };
  /* Never valid: options are numbered from 1 and only appended, a few at a time. */
  static const int bad_options[] = {0, -1, -100, 100000, 0x7fff0000, INT_MAX, INT_MIN};
  static const int bad_modes[] = {3, 4, -1, 100, INT_MAX, INT_MIN}; /* 2: IOCPSRV_CLOSE_REFUSE */
  iocpsrv_conn_id_t ids[4];
  iocpsrv_event_t ev[4];
  int i, j;

  /* Strings for any number: never NULL, never empty. */
  for (i = -1000; i <= 1000; i++) {
    CHECK(iocpsrv_strerror(i) && iocpsrv_strerror(i)[0]);
    CHECK(iocpsrv_err_name(i) && iocpsrv_err_name(i)[0]);
    CHECK(iocpsrv_reason_name(i) && iocpsrv_reason_name(i)[0]);
  }
  CHECK(iocpsrv_strerror(INT_MIN) && iocpsrv_err_name(INT_MAX) && iocpsrv_reason_name(INT_MIN));

  /* A stopped server: options out of range or unknown leave the value as it was. */
  iocpsrv_t *off = NULL;
  CHECK_OK(iocpsrv_create(&off, NULL));
  for (i = 0; i < NOPTS(bad_options); i++) {
    int64_t v = 0;
    CHECK_ERR(iocpsrv_set_option(off, bad_options[i], 1), IOCPSRV_EUNKNOWNOPT);
    CHECK_ERR(iocpsrv_get_option(off, bad_options[i], &v), IOCPSRV_EUNKNOWNOPT);
  }
  for (i = 0; i < NOPTS(all_options); i++) {
    int64_t before = -7, after = -7;
    CHECK_OK(iocpsrv_get_option(off, all_options[i], &before));
    CHECK_ERR(iocpsrv_set_option(off, all_options[i], INT64_MIN), IOCPSRV_ERANGE);
    CHECK_ERR(iocpsrv_set_option(off, all_options[i], -1000000), IOCPSRV_ERANGE);
    CHECK_ERR(iocpsrv_get_option(off, all_options[i], NULL), IOCPSRV_EINVAL);
    CHECK_OK(iocpsrv_get_option(off, all_options[i], &after));
    CHECK_EQ(after, before);
  }
  for (i = 0; i < NOPTS(ranges); i++) {
    int64_t before = -7, after = -7;
    CHECK_OK(iocpsrv_get_option(off, ranges[i].option, &before));
    CHECK_ERR(iocpsrv_set_option(off, ranges[i].option, ranges[i].low), IOCPSRV_ERANGE);
    CHECK_ERR(iocpsrv_set_option(off, ranges[i].option, ranges[i].high), IOCPSRV_ERANGE);
    CHECK_OK(iocpsrv_get_option(off, ranges[i].option, &after));
    CHECK_EQ(after, before);
  }
  /* Ports out of range, addresses that parse but are not ours; the server is fine
   * afterwards. (Only numeric hosts: a name would go to DNS.) */
  static const int bad_ports[] = {-1, 65536, 100000, INT_MAX, INT_MIN};
  for (i = 0; i < NOPTS(bad_ports); i++)
    CHECK_ERR(iocpsrv_listen(off, "127.0.0.1", bad_ports[i]), IOCPSRV_EINVAL);
  CHECK_FAILS(iocpsrv_listen(off, "192.0.2.1", 0)); /* TEST-NET-1: not a local address */
  CHECK_ERR(iocpsrv_port(off), IOCPSRV_ESTOPPED);
  CHECK_ERR(iocpsrv_stop(off, 0), IOCPSRV_ESTOPPED);
  CHECK_OK(iocpsrv_listen(off, "127.0.0.1", 0));
  CHECK_GT(iocpsrv_port(off), 0);
  CHECK_OK(iocpsrv_stop(off, 0));
  /* Pull-mode argument checks on a pull server. */
  CHECK_OK(iocpsrv_set_option(off, IOCPSRV_OPT_PULL_MODE, 1));
  CHECK_OK(iocpsrv_listen(off, "127.0.0.1", 0));
  CHECK_ERR(iocpsrv_poll(off, NULL, 4, 0), IOCPSRV_EINVAL);
  CHECK_ERR(iocpsrv_poll(off, ev, 0, 0), IOCPSRV_EINVAL);
  CHECK_ERR(iocpsrv_poll(off, ev, -1, 0), IOCPSRV_EINVAL);
  CHECK_ERR(iocpsrv_poll(off, ev, INT_MIN, 0), IOCPSRV_EINVAL);
  CHECK_GE(iocpsrv_poll(off, ev, 4, 0), 0);
  CHECK_OK(iocpsrv_stop(off, 0));
  CHECK_OK(iocpsrv_destroy(off));

  /* A NULL server, for every call that takes one. */
  {
    iocpsrv_conn_info_t info;
    iocpsrv_stats_t st;
    iocpsrv_buf_t b = {"x", 1};
    int64_t v;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    memset(&st, 0, sizeof st);
    st.struct_size = sizeof st;
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
    CHECK_ERR(iocpsrv_destroy(NULL), IOCPSRV_EINVAL);
    CHECK_ERR(iocpsrv_send(NULL, 1, "x", 1), IOCPSRV_EINVAL);
    CHECK_ERR(iocpsrv_sendv(NULL, 1, &b, 1), IOCPSRV_EINVAL);
    CHECK_ERR(iocpsrv_broadcast(NULL, "x", 1), IOCPSRV_EINVAL);
    CHECK_ERR(iocpsrv_disconnect(NULL, 1, 0), IOCPSRV_EINVAL);
    CHECK_ERR(iocpsrv_pause_receive(NULL, 1), IOCPSRV_EINVAL);
    CHECK_ERR(iocpsrv_resume_receive(NULL, 1), IOCPSRV_EINVAL);
    CHECK_ERR(iocpsrv_pending_bytes(NULL, 1), IOCPSRV_EINVAL);
    CHECK_ERR(iocpsrv_set_conn_user(NULL, 1, NULL), IOCPSRV_EINVAL);
    CHECK_ERR(iocpsrv_conn_info(NULL, 1, &info), IOCPSRV_EINVAL);
    CHECK_ERR(iocpsrv_connections(NULL, ids, 4), IOCPSRV_EINVAL);
    CHECK_ERR(iocpsrv_connections(NULL, NULL, 0), IOCPSRV_EINVAL);
    CHECK_ERR(iocpsrv_stats(NULL, &st), IOCPSRV_EINVAL);
    CHECK_ERR(iocpsrv_poll(NULL, ev, 4, 0), IOCPSRV_EINVAL);
    CHECK_ERR(iocpsrv_wait_handle(NULL), IOCPSRV_EINVAL);
  }

  /* A running server in callback mode, with the bystander and one quiet client. */
  incb_t x;
  memset(&x, 0, sizeof x);
  tt_counter_init(&x.done);
  echo_config_t cfg = {0};
  cfg.on_packet = badargs_hook;
  cfg.ctx = &x;
  echo_server_t *es = echo_start(&cfg);
  iocpsrv_t *srv = es->srv;
  su_bystander_t by;
  su_bystander_start(&by, NULL, es->port, 0);
  ts_sock_t s = connect_port(es->port);
  echo_conn_t *c = echo_conn_for(es, s);
  iocpsrv_conn_id_t id = c->id;
  /* A stale id: a client that came and went. */
  ts_sock_t gone = connect_port(es->port);
  echo_conn_t *cg = echo_conn_for(es, gone);
  iocpsrv_conn_id_t stale = cg->id;
  ts_close(gone);
  CHECK_EQ(echo_wait_disconnect(es, cg, TS_WAIT_MS), 0);

  /* Not while running. */
  CHECK_ERR(iocpsrv_listen(srv, "127.0.0.1", 0), IOCPSRV_ESTATE);
  for (i = 0; i < NOPTS(all_options); i++)
    CHECK_ERR(iocpsrv_set_option(srv, all_options[i], 1), IOCPSRV_ESTATE);
  CHECK_ERR(iocpsrv_set_connect_cb(srv, NULL), IOCPSRV_ESTATE);
  CHECK_ERR(iocpsrv_set_packet_cb(srv, NULL), IOCPSRV_ESTATE);
  CHECK_ERR(iocpsrv_set_disconnect_cb(srv, NULL), IOCPSRV_ESTATE);
  CHECK_ERR(iocpsrv_set_drain_cb(srv, NULL), IOCPSRV_ESTATE);
  CHECK_ERR(iocpsrv_set_worker_hooks(srv, NULL, NULL), IOCPSRV_ESTATE);
  CHECK_ERR(iocpsrv_set_log_cb(srv, NULL), IOCPSRV_ESTATE);
  /* Pull-mode calls on a callback-mode server. */
  CHECK_ERR(iocpsrv_poll(srv, ev, 4, 0), IOCPSRV_ENOTSUP);
  CHECK_FAILS(iocpsrv_poll(srv, NULL, 4, 0));
  CHECK_FAILS(iocpsrv_poll(srv, ev, -1, 0));
  CHECK_FAILS(iocpsrv_wait_handle(srv));

  /* NULL pointers and bad sizes. */
  {
    uint8_t one = 'x';
    CHECK_ERR(iocpsrv_send(srv, id, NULL, 5), IOCPSRV_EINVAL);
    CHECK_ERR(iocpsrv_send(srv, id, NULL, SIZE_MAX), IOCPSRV_EINVAL);
    CHECK_ERR(iocpsrv_broadcast(srv, NULL, 5), IOCPSRV_EINVAL);
    CHECK_ERR(iocpsrv_sendv(srv, id, NULL, 1), IOCPSRV_EINVAL);
    CHECK_ERR(iocpsrv_sendv(srv, id, NULL, INT_MAX), IOCPSRV_EINVAL);
    iocpsrv_buf_t b1 = {&one, 1};
    CHECK_ERR(iocpsrv_sendv(srv, id, &b1, -1), IOCPSRV_EINVAL);
    CHECK_ERR(iocpsrv_sendv(srv, id, &b1, INT_MIN), IOCPSRV_EINVAL);
    iocpsrv_buf_t nullbase[2] = {{&one, 1}, {NULL, 3}};
    CHECK_ERR(iocpsrv_sendv(srv, id, nullbase, 2), IOCPSRV_EINVAL);
    /* Huge lengths with a 1-byte buffer: refused before a byte is read (ASan would
     * see a read past `one`). The max packet size is 1 MiB here. */
    static const size_t huge[] = {(1u << 20) + 1, (size_t)1 << 31, (size_t)UINT32_MAX,
                                  (size_t)UINT32_MAX + 5, SIZE_MAX / 2, SIZE_MAX - 3,
                                  SIZE_MAX};
    for (i = 0; i < NOPTS(huge); i++) {
      CHECK_ERR(iocpsrv_send(srv, id, &one, huge[i]), IOCPSRV_ETOOBIG);
      CHECK_ERR(iocpsrv_broadcast(srv, &one, huge[i]), IOCPSRV_ETOOBIG);
      iocpsrv_buf_t hb = {&one, huge[i]};
      CHECK_ERR(iocpsrv_sendv(srv, id, &hb, 1), IOCPSRV_ETOOBIG);
      /* Huge ids too: the length check may come first, either is an error. */
      CHECK_FAILS(iocpsrv_send(srv, 0, &one, huge[i]));
    }
    /* Lengths whose sum wraps around. */
    iocpsrv_buf_t wrap[3] = {{&one, SIZE_MAX / 2 + 1}, {&one, SIZE_MAX / 2 + 1}, {&one, 2}};
    CHECK_ERR(iocpsrv_sendv(srv, id, wrap, 3), IOCPSRV_ETOOBIG);
    iocpsrv_buf_t wrap2[2] = {{&one, SIZE_MAX}, {&one, 1}};
    CHECK_ERR(iocpsrv_sendv(srv, id, wrap2, 2), IOCPSRV_ETOOBIG);
    iocpsrv_buf_t many[4] = {{&one, 1u << 19}, {&one, 1u << 19}, {&one, 1}, {&one, 1}};
    CHECK_ERR(iocpsrv_sendv(srv, id, many, 4), IOCPSRV_ETOOBIG);

    for (i = 0; i < NOPTS(bad_modes); i++)
      CHECK_ERR(iocpsrv_disconnect(srv, id, bad_modes[i]), IOCPSRV_EINVAL);
    iocpsrv_conn_info_t info;
    CHECK_ERR(iocpsrv_conn_info(srv, id, NULL), IOCPSRV_EINVAL);
    static const uint32_t small_sizes[] = {0, 1, 4, 8, 16, 24};
    for (i = 0; i < NOPTS(small_sizes); i++) {
      memset(&info, 0, sizeof info);
      info.struct_size = small_sizes[i];
      CHECK_ERR(iocpsrv_conn_info(srv, id, &info), IOCPSRV_EINVAL);
    }
    iocpsrv_stats_t st;
    CHECK_ERR(iocpsrv_stats(srv, NULL), IOCPSRV_EINVAL);
    static const uint32_t small_stats[] = {0, 1, 4, 7};
    for (i = 0; i < NOPTS(small_stats); i++) {
      memset(&st, 0, sizeof st);
      st.struct_size = small_stats[i];
      CHECK_ERR(iocpsrv_stats(srv, &st), IOCPSRV_EINVAL);
    }
    /* A newer caller's larger struct: filled up to what this library knows, the rest
     * untouched, struct_size says how much. */
    struct {
      iocpsrv_stats_t st;
      uint8_t canary[64];
    } big_st;
    memset(&big_st, 0xA5, sizeof big_st);
    big_st.st.struct_size = (uint32_t)sizeof big_st;
    CHECK_OK(iocpsrv_stats(srv, &big_st.st));
    CHECK_EQ(big_st.st.struct_size, sizeof(iocpsrv_stats_t));
    for (j = 0; j < 64; j++) CHECK_EQ(big_st.canary[j], 0xA5);
    struct {
      iocpsrv_conn_info_t info;
      uint8_t canary[64];
    } big_info;
    memset(&big_info, 0xA5, sizeof big_info);
    big_info.info.struct_size = (uint32_t)sizeof big_info;
    CHECK_OK(iocpsrv_conn_info(srv, id, &big_info.info));
    CHECK_EQ(big_info.info.struct_size, sizeof(iocpsrv_conn_info_t));
    CHECK_EQ(big_info.info.id, id);
    for (j = 0; j < 64; j++) CHECK_EQ(big_info.canary[j], 0xA5);

    CHECK_ERR(iocpsrv_connections(srv, NULL, 4), IOCPSRV_EINVAL);
    CHECK_ERR(iocpsrv_connections(srv, ids, -1), IOCPSRV_EINVAL);
    CHECK_ERR(iocpsrv_connections(srv, ids, INT_MIN), IOCPSRV_EINVAL);
    CHECK_EQ(iocpsrv_connections(srv, NULL, 0), 2); /* the bystander and `s` */
    CHECK_EQ(iocpsrv_connections(srv, ids, 1), 2);  /* more than fit: still the count */
  }

  /* Dead ids: 0, the stale one, near misses of the live one, random ones. */
  expect_dead_id(srv, 0);
  expect_dead_id(srv, stale);
  expect_dead_id(srv, UINT64_MAX);
  for (i = 0; i < 64; i++) {
    /* Another generation or another slot; skip the (other) live connection. */
    iocpsrv_conn_id_t nearby = id ^ ((uint64_t)1 << i);
    echo_conn_t *e = echo_find(es, nearby);
    if (!(e && echo_snapshot(es, e).state == 1)) expect_dead_id(srv, nearby);
    if (i > 0) expect_dead_id(srv, (iocpsrv_conn_id_t)i); /* slot-like small numbers */
  }
  uint64_t r = 0x243F6A8885A308D3ULL;
  int randoms = su_count(3000, 3000, 500);
  for (i = 0; i < randoms; i++) {
    iocpsrv_conn_id_t rid = rnd_next(&r);
    if (echo_find(es, rid)) continue; /* astronomically unlikely */
    expect_dead_id(srv, rid);
  }

  /* From inside a callback: what may not be done there is refused. */
  CHECK_EQ(ts_send_packet(s, "incallbk!", 9), 0);
  CHECK_EQ(tt_counter_wait(&x.done, 1, TS_WAIT_MS), 0);
  CHECK_ERR(x.destroy_rc, IOCPSRV_EINCALLBACK);
  CHECK_ERR(x.listen_rc, IOCPSRV_EINCALLBACK);
  CHECK_ERR(x.set_option_rc, IOCPSRV_ESTATE);
  CHECK_ERR(x.set_cb_rc, IOCPSRV_ESTATE);
  CHECK_FAILS(x.poll_rc);
  CHECK_ERR(x.stop_other_rc, IOCPSRV_EINVAL);
  char got[16];
  size_t n = 0;
  CHECK_EQ(ts_recv_packet(s, got, sizeof got, &n, TS_WAIT_MS), 0); /* its echo */
  CHECK_EQ(n, 9);

  /* Nothing of all that reached the client or closed it: the next thing it gets is
   * this marker, and it still echoes. */
  CHECK_OK(iocpsrv_send(srv, id, "marker", 6));
  CHECK_EQ(ts_recv_packet(s, got, sizeof got, &n, TS_WAIT_MS), 0);
  CHECK_EQ(n, 6);
  CHECK_MEMEQ(got, "marker", 6);
  expect_echo(s, "still fine", 10);
  CHECK_EQ(echo_snapshot(es, c).disconnects, 0);
  su_bystander_expect_progress(&by, 5);
  ts_close(su_bystander_stop(&by));
  ts_close(s);
  CHECK_EQ(tt_counter_wait(&es->disconnects, 3, TS_WAIT_MS), 0);
  echo_finish(es);
  tt_counter_destroy(&x.done);
}

/* Raw mode: a send with an absurd length fails at once (it once looped forever inside
 * the library while doubling its buffer). */
static void hostile_raw_huge_send(void) {
  echo_opt_t opts[] = {{IOCPSRV_OPT_FRAMING, IOCPSRV_FRAMING_RAW}};
  echo_config_t cfg = {0};
  cfg.opts = opts;
  cfg.nopts = NOPTS(opts);
  echo_server_t *es = echo_start(&cfg);
  ts_sock_t s = connect_port(es->port);
  echo_conn_t *c = echo_conn_for(es, s);
  uint8_t one = 'x';
  static const size_t huge[] = {(size_t)1 << 62, SIZE_MAX / 2 + 2, SIZE_MAX - 3, SIZE_MAX};
  int i;
  for (i = 0; i < NOPTS(huge); i++) {
    CHECK_FAILS(iocpsrv_send(es->srv, c->id, &one, huge[i]));
    CHECK_FAILS(iocpsrv_broadcast(es->srv, &one, huge[i]));
  }
  CHECK_OK(iocpsrv_send(es->srv, c->id, "ok", 2));
  char got[2];
  CHECK_EQ(ts_recv_exact(s, got, 2, TS_WAIT_MS), 0);
  ts_close(s);
  CHECK_EQ(tt_counter_wait(&es->disconnects, 1, TS_WAIT_MS), 0);
  echo_finish(es);
}

int main(int argc, char **argv) {
  test_init(argc, argv);
  TEST_RUN(hostile_oversize_header);
  TEST_RUN(hostile_oversize_header_pull);
  TEST_RUN(hostile_header_then_close);
  TEST_RUN(hostile_half_packet_reset);
  TEST_RUN(hostile_half_packet_reset_pull);
  TEST_RUN(hostile_slowloris);
  TEST_RUN(hostile_never_reads);
  TEST_RUN(hostile_never_reads_echoes);
  TEST_RUN(hostile_churn);
  TEST_RUN(hostile_max_connections_flood);
  TEST_RUN(hostile_garbage_after_packets);
  TEST_RUN(hostile_garbage_after_packets_pull);
  TEST_RUN(hostile_bad_arguments);
  TEST_RUN(hostile_raw_huge_send);
  return test_done();
}
