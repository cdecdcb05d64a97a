/*
 * test_framing.c -- the length-prefix parser and the framing options, end to end.
 *
 * Every sub-test runs an echo server on loopback, drives it with real client sockets
 * and ends with echo_finish(): stop, no contract breach, connections_now == 0, every
 * connect matched by exactly one disconnect.
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

/* Receive one framed packet and compare it with the expected payload. */
static void expect_packet_ex(ts_sock_t s, const void *want, size_t want_len, int hdr,
                             int be) {
  uint8_t *buf = (uint8_t *)malloc(want_len ? want_len : 1);
  CHECK(buf != NULL);
  size_t got = 0;
  int rc = ts_recv_packet_ex(s, buf, want_len, &got, hdr, be, 30000);
  CHECK_MSG(rc == 0, "receiving a %llu-byte echo: %s (header says %llu)",
            (unsigned long long)want_len, ts_strerror(rc), (unsigned long long)got);
  CHECK_EQ(got, want_len);
  CHECK_MEMEQ(buf, want, want_len);
  free(buf);
}

static void expect_packet(ts_sock_t s, const void *want, size_t want_len) {
  expect_packet_ex(s, want, want_len, 4, 0);
}

/* Close the client and wait for the server's disconnect with the given reason. */
static void close_and_expect(echo_server_t *es, ts_sock_t s, echo_conn_t *c, int reason) {
  ts_close(s);
  CHECK_MSG(echo_wait_disconnect(es, c, TS_WAIT_MS) == 0, "no disconnect callback for %s",
            c->peer);
  echo_conn_t snap = echo_snapshot(es, c);
  CHECK_MSG(snap.reason == reason, "disconnect reason %d (%s), expected %d (%s)",
            snap.reason, iocpsrv_reason_name(snap.reason), reason,
            iocpsrv_reason_name(reason));
}

/* ---- a header split over many reads ---- */
static void framing_header_split(void) {
  echo_config_t cfg = {0};
  cfg.keep_raw = 1;
  cfg.log_events = 1;
  echo_server_t *es = echo_start(&cfg);
  ts_sock_t s = connect_to(es);
  CHECK_EQ(ts_set_nodelay(s, 1), 0);
  echo_conn_t *c = echo_conn_for(es, s);

  static const size_t sizes[] = {10, 0, 1, 300, 5};
  uint8_t payload[5][300];
  uint8_t stream[4 * 5 + 316];
  size_t n = 0, i, concat = 0;
  for (i = 0; i < 5; i++) {
    test_fill_pattern(payload[i], sizes[i], 100 + i);
    n += ts_frame(stream + n, payload[i], sizes[i], 4, 0);
    concat += sizes[i];
  }
  /* One byte per write with TCP_NODELAY and a pause, so the engine sees the headers
   * arrive in pieces (pacing only: correctness does not depend on it). */
  for (i = 0; i < n; i++) {
    CHECK_EQ(ts_send_all(s, stream + i, 1), 0);
    if (i < 64 || i % 16 == 0) tt_sleep_ms(1);
  }
  for (i = 0; i < 5; i++) expect_packet(s, payload[i], sizes[i]);

  CHECK_EQ(echo_wait_packets(es, c, 5, TS_WAIT_MS), 0);
  echo_conn_t snap = echo_snapshot(es, c);
  CHECK_EQ(snap.packets, 5);
  CHECK_EQ(snap.bytes, concat);
  CHECK_EQ(snap.raw_len, concat);
  size_t off = 0;
  for (i = 0; i < 5; i++) {
    CHECK_MEMEQ(snap.raw + off, payload[i], sizes[i]);
    off += sizes[i];
  }

  /* The header of one packet split across two writes with a long gap. */
  uint8_t hdr[4];
  ts_encode_header(hdr, 3, 4, 0);
  CHECK_EQ(ts_send_all(s, hdr, 3), 0);
  tt_sleep_ms(20);
  CHECK_EQ(ts_send_all(s, hdr + 3, 1), 0);
  tt_sleep_ms(20);
  CHECK_EQ(ts_send_all(s, "abc", 3), 0);
  expect_packet(s, "abc", 3);

  close_and_expect(es, s, c, IOCPSRV_REASON_PEER_CLOSED);
  echo_finish(es);
}

/* ---- hundreds of packets in one write ---- */
static void framing_many_in_one_write(void) {
  enum { N = 600 };
  echo_config_t cfg = {0};
  cfg.check_seq = 1;
  echo_server_t *es = echo_start(&cfg);
  ts_sock_t s = connect_to(es);
  echo_conn_t *c = echo_conn_for(es, s);

  size_t *len = (size_t *)calloc(N, sizeof *len);
  uint8_t *stream = (uint8_t *)malloc((size_t)N * (4 + 4 + 400));
  uint8_t payload[4 + 400];
  size_t n = 0, total = 0;
  uint32_t seq = 0;
  int i;
  for (i = 0; i < N; i++) {
    len[i] = (i % 50 == 7) ? 0 : 4 + (size_t)((i * 37) % 400);
    test_fill_pattern(payload, len[i], (uint64_t)i);
    if (len[i] >= 4) test_put_u32le(payload, seq++);
    n += ts_frame(stream + n, payload, len[i], 4, 0);
    total += len[i];
  }
  CHECK_EQ(ts_send_all(s, stream, n), 0); /* one write of ~130 KB */

  seq = 0;
  for (i = 0; i < N; i++) {
    test_fill_pattern(payload, len[i], (uint64_t)i);
    if (len[i] >= 4) test_put_u32le(payload, seq++);
    expect_packet(s, payload, len[i]);
  }
  CHECK_EQ(echo_wait_packets(es, c, N, TS_WAIT_MS), 0);
  echo_conn_t snap = echo_snapshot(es, c);
  CHECK_EQ(snap.packets, N);
  CHECK_EQ(snap.bytes, total);

  /* The same again as many small writes glued by the kernel: pipelined. */
  n = 0;
  for (i = 0; i < 200; i++) {
    uint8_t p[8];
    test_put_u32le(p, seq + (uint32_t)i);
    test_put_u32le(p + 4, (uint32_t)i);
    n = ts_frame(stream, p, 8, 4, 0);
    CHECK_EQ(ts_send_all(s, stream, n), 0);
  }
  for (i = 0; i < 200; i++) {
    uint8_t p[8];
    test_put_u32le(p, seq + (uint32_t)i);
    test_put_u32le(p + 4, (uint32_t)i);
    expect_packet(s, p, 8);
  }

  ECHO_WAIT_FOR(echo_stats(es).packets_in >= N + 200 && echo_stats(es).packets_out >= N + 200);
  iocpsrv_stats_t st = echo_stats(es);
  CHECK_GE(st.packets_in, N + 200);
  CHECK_GE(st.packets_out, N + 200);
  CHECK_EQ(st.protocol_errors, 0);

  close_and_expect(es, s, c, IOCPSRV_REASON_PEER_CLOSED);
  free(len);
  free(stream);
  echo_finish(es);
}

/* ---- zero-length packets ---- */
static void framing_zero_length(void) {
  echo_config_t cfg = {0};
  cfg.log_events = 1;
  echo_server_t *es = echo_start(&cfg);
  ts_sock_t s = connect_to(es);
  echo_conn_t *c = echo_conn_for(es, s);
  int i;
  for (i = 0; i < 10; i++) {
    CHECK_EQ(ts_send_packet(s, "", 0), 0);
    expect_packet(s, "", 0);
  }
  /* Zero-length packets glued to normal ones in one write. */
  uint8_t stream[64];
  size_t n = 0;
  n += ts_frame(stream + n, "", 0, 4, 0);
  n += ts_frame(stream + n, "xy", 2, 4, 0);
  n += ts_frame(stream + n, "", 0, 4, 0);
  n += ts_frame(stream + n, "", 0, 4, 0);
  n += ts_frame(stream + n, "z", 1, 4, 0);
  CHECK_EQ(ts_send_all(s, stream, n), 0);
  expect_packet(s, "", 0);
  expect_packet(s, "xy", 2);
  expect_packet(s, "", 0);
  expect_packet(s, "", 0);
  expect_packet(s, "z", 1);
  CHECK_EQ(echo_wait_packets(es, c, 15, TS_WAIT_MS), 0);
  echo_conn_t snap = echo_snapshot(es, c);
  CHECK_EQ(snap.packets, 15);
  CHECK_EQ(snap.bytes, 3);
  close_and_expect(es, s, c, IOCPSRV_REASON_PEER_CLOSED);
  echo_finish(es);
}

/* ---- a payload of exactly the maximum size, and one byte over on send ---- */
static int max_size_hook(echo_server_t *es, echo_conn_t *c, const uint8_t *d, size_t n) {
  int *rcs = (int *)es->cfg.ctx;
  if (n == 7 && memcmp(d, "sendbig", 7) == 0) {
    uint8_t *big = (uint8_t *)malloc(1001);
    test_fill_pattern(big, 1001, 77);
    rcs[0] = iocpsrv_send(es->srv, c->id, big, 1001); /* one over: refused */
    rcs[1] = iocpsrv_send(es->srv, c->id, big, 1000); /* exactly the max: taken */
    iocpsrv_buf_t bufs[2] = {{big, 600}, {big + 600, 401}};
    rcs[2] = iocpsrv_sendv(es->srv, c->id, bufs, 2); /* 1001 gathered: refused */
    free(big);
    return ECHO_SKIP;
  }
  return ECHO_DEFAULT;
}

static void framing_max_size_exact(void) {
  echo_opt_t opts[] = {{IOCPSRV_OPT_MAX_PACKET_SIZE, 1000}};
  int rcs[3] = {1, 1, 1};
  echo_config_t cfg = {0};
  cfg.opts = opts;
  cfg.nopts = NOPTS(opts);
  cfg.on_packet = max_size_hook;
  cfg.ctx = rcs;
  echo_server_t *es = echo_start(&cfg);
  int64_t v = 0;
  CHECK_OK(iocpsrv_get_option(es->srv, IOCPSRV_OPT_MAX_PACKET_SIZE, &v));
  CHECK_EQ(v, 1000);
  ts_sock_t s = connect_to(es);
  echo_conn_t *c = echo_conn_for(es, s);

  uint8_t buf[1000];
  test_fill_pattern(buf, 1000, 5);
  CHECK_EQ(ts_send_packet(s, buf, 1000), 0);
  expect_packet(s, buf, 1000);
  CHECK_EQ(ts_send_packet(s, buf, 999), 0);
  expect_packet(s, buf, 999);

  CHECK_EQ(ts_send_packet(s, "sendbig", 7), 0);
  uint8_t big[1000];
  test_fill_pattern(big, 1000, 77);
  expect_packet(s, big, 1000);
  CHECK_ERR(rcs[0], IOCPSRV_ETOOBIG);
  CHECK_OK(rcs[1]);
  CHECK_ERR(rcs[2], IOCPSRV_ETOOBIG);

  iocpsrv_stats_t st = echo_stats(es);
  CHECK_EQ(st.protocol_errors, 0);
  close_and_expect(es, s, c, IOCPSRV_REASON_PEER_CLOSED);
  echo_finish(es);
}

/* ---- a header above the max packet size closes that connection only ---- */
static void framing_oversize_header(void) {
  echo_opt_t opts[] = {{IOCPSRV_OPT_MAX_PACKET_SIZE, 1000}};
  echo_config_t cfg = {0};
  cfg.opts = opts;
  cfg.nopts = NOPTS(opts);
  echo_server_t *es = echo_start(&cfg);
  ts_sock_t good = connect_to(es);
  echo_conn_t *cgood = echo_conn_for(es, good);
  CHECK_EQ(ts_send_packet(good, "before", 6), 0);
  expect_packet(good, "before", 6);

  /* 1001 claimed, a few payload bytes sent. */
  ts_sock_t bad = connect_to(es);
  echo_conn_t *cbad = echo_conn_for(es, bad);
  uint8_t hdr[4 + 16];
  ts_encode_header(hdr, 1001, 4, 0);
  memset(hdr + 4, 'x', 16);
  CHECK_EQ(ts_send_all(bad, hdr, sizeof hdr), 0);
  int rc = ts_wait_close(bad, TS_WAIT_MS, NULL);
  CHECK_MSG(rc == TS_EOF || rc == TS_RESET,
            "client with an oversize header: %s, expected the server to close it",
            ts_strerror(rc));
  CHECK_EQ(echo_wait_disconnect(es, cbad, TS_WAIT_MS), 0);
  echo_conn_t snap = echo_snapshot(es, cbad);
  CHECK_MSG(snap.reason == IOCPSRV_REASON_PROTOCOL_ERROR, "reason %d (%s)", snap.reason,
            iocpsrv_reason_name(snap.reason));
  CHECK_EQ(snap.packets, 0);
  ts_close(bad);

  /* 4 GiB - 1 claimed: must not be allocated, same outcome. */
  ts_sock_t huge = connect_to(es);
  echo_conn_t *chuge = echo_conn_for(es, huge);
  ts_encode_header(hdr, 0xFFFFFFFFu, 4, 0);
  CHECK_EQ(ts_send_all(huge, hdr, 4), 0);
  rc = ts_wait_close(huge, TS_WAIT_MS, NULL);
  CHECK_MSG(rc == TS_EOF || rc == TS_RESET, "client claiming 4 GiB: %s", ts_strerror(rc));
  CHECK_EQ(echo_wait_disconnect(es, chuge, TS_WAIT_MS), 0);
  snap = echo_snapshot(es, chuge);
  CHECK_EQ(snap.reason, IOCPSRV_REASON_PROTOCOL_ERROR);
  ts_close(huge);

  /* A valid packet followed by an oversize header in the same write: the first is
   * still delivered and echoed. */
  ts_sock_t mixed = connect_to(es);
  echo_conn_t *cmixed = echo_conn_for(es, mixed);
  uint8_t stream[4 + 5 + 4];
  size_t n = ts_frame(stream, "valid", 5, 4, 0);
  ts_encode_header(stream + n, 5000, 4, 0);
  n += 4;
  CHECK_EQ(ts_send_all(mixed, stream, n), 0);
  CHECK_EQ(echo_wait_disconnect(es, cmixed, TS_WAIT_MS), 0);
  snap = echo_snapshot(es, cmixed);
  CHECK_EQ(snap.reason, IOCPSRV_REASON_PROTOCOL_ERROR);
  CHECK_EQ(snap.packets, 1);
  rc = ts_wait_close(mixed, TS_WAIT_MS, NULL);
  CHECK(rc == TS_EOF || rc == TS_RESET);
  ts_close(mixed);

  ECHO_CHECK_STAT(es, protocol_errors, 3);

  /* The other client never noticed. */
  CHECK_EQ(ts_send_packet(good, "after", 5), 0);
  expect_packet(good, "after", 5);
  snap = echo_snapshot(es, cgood);
  CHECK_EQ(snap.disconnects, 0);
  close_and_expect(es, good, cgood, IOCPSRV_REASON_PEER_CLOSED);
  echo_finish(es);
}

/* ---- other header shapes ---- */
typedef struct {
  int sent[4]; /* results of the hook's sends */
  tt_counter_t hooked; /* the hook has stored them (its 64 KiB reply may arrive first:
                          a large send to an idle connection is written at once) */
} hdr_ctx_t;

static int len16_hook(echo_server_t *es, echo_conn_t *c, const uint8_t *d, size_t n) {
  hdr_ctx_t *x = (hdr_ctx_t *)es->cfg.ctx;
  if (n == 7 && memcmp(d, "sendbig", 7) == 0) {
    uint8_t *big = (uint8_t *)malloc(70000);
    test_fill_pattern(big, 70000, 16);
    x->sent[0] = iocpsrv_send(es->srv, c->id, big, 65536); /* cannot be framed */
    x->sent[1] = iocpsrv_send(es->srv, c->id, big, 70000);
    x->sent[2] = iocpsrv_send(es->srv, c->id, big, 65535); /* the largest that fits */
    free(big);
    tt_counter_add(&x->hooked, 1);
    return ECHO_SKIP;
  }
  return ECHO_DEFAULT;
}

static void run_header_shape(int framing, int hdr, int be) {
  hdr_ctx_t x;
  memset(&x, 1, sizeof x);
  tt_counter_init(&x.hooked);
  echo_opt_t opts[] = {{IOCPSRV_OPT_FRAMING, framing}};
  echo_config_t cfg = {0};
  cfg.opts = opts;
  cfg.nopts = NOPTS(opts);
  cfg.on_packet = len16_hook;
  cfg.ctx = &x;
  echo_server_t *es = echo_start(&cfg);
  int64_t v = -1;
  CHECK_OK(iocpsrv_get_option(es->srv, IOCPSRV_OPT_FRAMING, &v));
  CHECK_EQ(v, framing);
  ts_sock_t s = connect_to(es);
  echo_conn_t *c = echo_conn_for(es, s);

  static const size_t sizes4[] = {0, 1, 255, 256, 65535, 65536, 70000, 300000};
  static const size_t sizes2[] = {0, 1, 255, 256, 4097, 65534, 65535};
  const size_t *sizes = hdr == 4 ? sizes4 : sizes2;
  int count = hdr == 4 ? NOPTS(sizes4) : NOPTS(sizes2);
  uint8_t *buf = (uint8_t *)malloc(300000);
  int i;
  for (i = 0; i < count; i++) {
    test_fill_pattern(buf, sizes[i], 1000 + (uint64_t)i);
    CHECK_EQ(ts_send_packet_ex(s, buf, sizes[i], hdr, be), 0);
    expect_packet_ex(s, buf, sizes[i], hdr, be);
  }
  /* All at once. */
  uint8_t *stream = (uint8_t *)malloc(400000);
  size_t n = 0;
  for (i = 0; i < count && n + sizes[i] + 4 < 400000; i++) {
    test_fill_pattern(buf, sizes[i], 2000 + (uint64_t)i);
    n += ts_frame(stream + n, buf, sizes[i], hdr, be);
  }
  int sent = i;
  CHECK_EQ(ts_send_all(s, stream, n), 0);
  for (i = 0; i < sent; i++) {
    test_fill_pattern(buf, sizes[i], 2000 + (uint64_t)i);
    expect_packet_ex(s, buf, sizes[i], hdr, be);
  }

  if (hdr == 2) {
    CHECK_EQ(ts_send_packet_ex(s, "sendbig", 7, hdr, be), 0);
    test_fill_pattern(buf, 65535, 16);
    expect_packet_ex(s, buf, 65535, hdr, be);
    CHECK_OK(tt_counter_wait(&x.hooked, 1, TS_WAIT_MS));
    CHECK_ERR(x.sent[0], IOCPSRV_ETOOBIG);
    CHECK_ERR(x.sent[1], IOCPSRV_ETOOBIG);
    CHECK_OK(x.sent[2]);
  }
  iocpsrv_stats_t st = echo_stats(es);
  CHECK_EQ(st.protocol_errors, 0);
  close_and_expect(es, s, c, IOCPSRV_REASON_PEER_CLOSED);
  free(buf);
  free(stream);
  echo_finish(es);
  tt_counter_destroy(&x.hooked);
}

static void framing_len32_be(void) { run_header_shape(IOCPSRV_FRAMING_LEN32_BE, 4, 1); }
static void framing_len32_le_explicit(void) {
  run_header_shape(IOCPSRV_FRAMING_LEN32_LE, 4, 0);
}
static void framing_len16_le(void) { run_header_shape(IOCPSRV_FRAMING_LEN16_LE, 2, 0); }
static void framing_len16_be(void) { run_header_shape(IOCPSRV_FRAMING_LEN16_BE, 2, 1); }

/* A big-endian server reads a little-endian header of 5 as 0x05000000 bytes: above
 * the max, so the connection is closed as a protocol error (not a 80 MB wait). */
static void framing_be_rejects_le_header(void) {
  echo_opt_t opts[] = {{IOCPSRV_OPT_FRAMING, IOCPSRV_FRAMING_LEN32_BE}};
  echo_config_t cfg = {0};
  cfg.opts = opts;
  cfg.nopts = NOPTS(opts);
  echo_server_t *es = echo_start(&cfg);
  ts_sock_t s = connect_to(es);
  echo_conn_t *c = echo_conn_for(es, s);
  CHECK_EQ(ts_send_packet_ex(s, "hello", 5, 4, 0), 0);
  int rc = ts_wait_close(s, TS_WAIT_MS, NULL);
  CHECK(rc == TS_EOF || rc == TS_RESET);
  CHECK_EQ(echo_wait_disconnect(es, c, TS_WAIT_MS), 0);
  CHECK_EQ(echo_snapshot(es, c).reason, IOCPSRV_REASON_PROTOCOL_ERROR);
  ts_close(s);
  echo_finish(es);
}

/* ---- raw mode ---- */
typedef struct {
  ts_sock_t s;
  uint8_t *buf;
  size_t want, got;
  int rc;
} reader_t;

static void reader_main(void *p) {
  reader_t *r = (reader_t *)p;
  r->rc = 0;
  while (r->got < r->want) {
    int n = ts_recv_some(r->s, r->buf + r->got, r->want - r->got, 30000);
    if (n < 0) {
      r->rc = n;
      return;
    }
    r->got += (size_t)n;
  }
}

static void framing_raw(void) {
  enum { TOTAL = 512 * 1024 };
  echo_opt_t opts[] = {{IOCPSRV_OPT_FRAMING, IOCPSRV_FRAMING_RAW}};
  echo_config_t cfg = {0};
  cfg.opts = opts;
  cfg.nopts = NOPTS(opts);
  cfg.keep_raw = 1;
  echo_server_t *es = echo_start(&cfg);
  ts_sock_t s = connect_to(es);
  echo_conn_t *c = echo_conn_for(es, s);

  uint8_t *out = (uint8_t *)malloc(TOTAL);
  test_fill_pattern(out, TOTAL, 4242);
  reader_t r;
  memset(&r, 0, sizeof r);
  r.s = s;
  r.want = TOTAL;
  r.buf = (uint8_t *)malloc(TOTAL);
  tt_thread_t *th = tt_thread_start(reader_main, &r);
  CHECK(th != NULL);
  /* Writes of odd sizes; the echo is the same byte stream back, unframed. */
  size_t off = 0, chunk = 1;
  while (off < TOTAL) {
    size_t k = chunk;
    if (k > TOTAL - off) k = TOTAL - off;
    CHECK_EQ(ts_send_all(s, out + off, k), 0);
    off += k;
    chunk = (chunk * 7 + 13) % 9000 + 1;
  }
  tt_thread_join(th);
  CHECK_MSG(r.rc == 0, "reading the raw echo: %s after %llu bytes", ts_strerror(r.rc),
            (unsigned long long)r.got);
  CHECK_MEMEQ(r.buf, out, TOTAL);

  /* What the packet callbacks saw, concatenated, is what was sent. */
  CHECK_EQ(echo_wait_packets(es, c, 1, TS_WAIT_MS), 0);
  int64_t deadline = tt_now_ms() + TS_WAIT_MS;
  while (echo_snapshot(es, c).bytes < TOTAL && tt_now_ms() < deadline)
    tt_counter_wait(&es->packets, tt_counter_get(&es->packets) + 1, 100);
  echo_conn_t snap = echo_snapshot(es, c);
  CHECK_EQ(snap.bytes, TOTAL);
  CHECK_EQ(snap.raw_len, TOTAL);
  CHECK_MEMEQ(snap.raw, out, TOTAL);
  CHECK_GE(snap.packets, 1);

  /* A send in raw mode writes the bytes as given, no header. */
  CHECK_OK(iocpsrv_send(es->srv, c->id, "hello raw", 9));
  char got[9];
  CHECK_EQ(ts_recv_exact(s, got, 9, TS_WAIT_MS), 0);
  CHECK_MEMEQ(got, "hello raw", 9);
  iocpsrv_buf_t bufs[3] = {{"ab", 2}, {"", 0}, {"cde", 3}};
  CHECK_OK(iocpsrv_sendv(es->srv, c->id, bufs, 3));
  CHECK_EQ(ts_recv_exact(s, got, 5, TS_WAIT_MS), 0);
  CHECK_MEMEQ(got, "abcde", 5);

  /* Bytes that look like a huge header are just bytes in raw mode. */
  uint8_t fake[4] = {0xff, 0xff, 0xff, 0x7f};
  CHECK_EQ(ts_send_all(s, fake, 4), 0);
  CHECK_EQ(ts_recv_exact(s, got, 4, TS_WAIT_MS), 0);
  CHECK_MEMEQ(got, fake, 4);
  CHECK_EQ(echo_stats(es).protocol_errors, 0);

  close_and_expect(es, s, c, IOCPSRV_REASON_PEER_CLOSED);
  free(out);
  free(r.buf);
  echo_finish(es);
}

/* ---- sendv frames the concatenation as one packet ---- */
static int sendv_hook(echo_server_t *es, echo_conn_t *c, const uint8_t *d, size_t n) {
  int *rc = (int *)es->cfg.ctx;
  iocpsrv_buf_t bufs[4] = {{"head:", 5}, {d, n}, {"", 0}, {":tail", 5}};
  *rc = iocpsrv_sendv(es->srv, c->id, bufs, 4);
  return ECHO_SKIP;
}

static void framing_sendv(void) {
  int rc = 1;
  echo_config_t cfg = {0};
  cfg.on_packet = sendv_hook;
  cfg.ctx = &rc;
  echo_server_t *es = echo_start(&cfg);
  ts_sock_t s = connect_to(es);
  echo_conn_t *c = echo_conn_for(es, s);
  CHECK_EQ(ts_send_packet(s, "body", 4), 0);
  expect_packet(s, "head:body:tail", 14);
  CHECK_OK(rc);
  CHECK_EQ(ts_send_packet(s, "", 0), 0);
  expect_packet(s, "head::tail", 10);
  CHECK_ERR(iocpsrv_sendv(es->srv, c->id, NULL, 1), IOCPSRV_EINVAL);
  close_and_expect(es, s, c, IOCPSRV_REASON_PEER_CLOSED);
  echo_finish(es);
}

/* ---- 8 MiB payloads ---- */
static void framing_8mib(void) {
  enum { BIG = 8 * 1024 * 1024 };
  echo_opt_t opts[] = {{IOCPSRV_OPT_MAX_PACKET_SIZE, 16 * 1024 * 1024},
                       {IOCPSRV_OPT_SEND_QUEUE_LIMIT, 64 * 1024 * 1024}};
  echo_config_t cfg = {0};
  cfg.opts = opts;
  cfg.nopts = NOPTS(opts);
  echo_server_t *es = echo_start(&cfg);
  ts_sock_t s = connect_to(es);
  echo_conn_t *c = echo_conn_for(es, s);
  uint8_t *out = (uint8_t *)malloc(BIG);
  uint8_t *in = (uint8_t *)malloc(BIG);
  CHECK(out && in);
  size_t got;
  int i, rc;

  /* One at a time. */
  for (i = 0; i < 2; i++) {
    test_fill_pattern(out, BIG, 800 + (uint64_t)i);
    CHECK_EQ(ts_send_packet(s, out, BIG), 0);
    rc = ts_recv_packet(s, in, BIG, &got, 30000);
    CHECK_MSG(rc == 0, "8 MiB echo %d: %s", i, ts_strerror(rc));
    CHECK_EQ(got, BIG);
    size_t bad = test_check_pattern(in, BIG, 800 + (uint64_t)i);
    CHECK_MSG(bad == (size_t)-1, "8 MiB echo %d differs at byte %llu", i,
              (unsigned long long)bad);
  }
  /* Two back to back before reading: the server keeps reading while its replies
   * queue. */
  test_fill_pattern(out, BIG, 900);
  CHECK_EQ(ts_send_packet(s, out, BIG), 0);
  test_fill_pattern(out, BIG, 901);
  CHECK_EQ(ts_send_packet(s, out, BIG), 0);
  for (i = 0; i < 2; i++) {
    rc = ts_recv_packet(s, in, BIG, &got, 30000);
    CHECK_MSG(rc == 0, "pipelined 8 MiB echo %d: %s", i, ts_strerror(rc));
    CHECK_EQ(got, BIG);
    size_t bad = test_check_pattern(in, BIG, 900 + (uint64_t)i);
    CHECK_MSG(bad == (size_t)-1, "pipelined 8 MiB echo %d differs at byte %llu", i,
              (unsigned long long)bad);
  }

  iocpsrv_conn_info_t info;
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  /* Counters may move just after the callback whose echo the client already has. */
  ECHO_WAIT_FOR(iocpsrv_conn_info(es->srv, c->id, &info) == 0 && info.packets_in == 4 &&
                info.bytes_out == 4ull * (BIG + 4));
  CHECK_OK(iocpsrv_conn_info(es->srv, c->id, &info));
  CHECK_EQ(info.packets_in, 4);
  CHECK_EQ(info.bytes_in, 4ull * (BIG + 4));
  CHECK_EQ(info.packets_out, 4);
  CHECK_EQ(info.bytes_out, 4ull * (BIG + 4));

  close_and_expect(es, s, c, IOCPSRV_REASON_PEER_CLOSED);
  free(out);
  free(in);
  echo_finish(es);
}

int main(int argc, char **argv) {
  test_init(argc, argv);
  TEST_RUN(framing_header_split);
  TEST_RUN(framing_many_in_one_write);
  TEST_RUN(framing_zero_length);
  TEST_RUN(framing_max_size_exact);
  TEST_RUN(framing_oversize_header);
  TEST_RUN(framing_len32_le_explicit);
  TEST_RUN(framing_len32_be);
  TEST_RUN(framing_len16_le);
  TEST_RUN(framing_len16_be);
  TEST_RUN(framing_be_rejects_le_header);
  TEST_RUN(framing_raw);
  TEST_RUN(framing_sendv);
  TEST_RUN(framing_8mib);
  return test_done();
}
