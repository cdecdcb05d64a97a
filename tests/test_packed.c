/*
 * test_packed.c -- the packed batch formats (issue 17): iocpsrv_poll_packed's event
 * records and iocpsrv_send_packed's send records, on a real server over loopback.
 *
 * The consumer here is the test's own thread (pull mode, no pump): every record field,
 * the alignment and zero padding, ENOSPACE leaving the event queued, malformed send
 * buffers refused whole, and refusals reported per record without reordering a
 * connection's packets.
 */
#include <stdlib.h>

#include "sock.h"
#include "test.h"
#include "thread.h"

#define WAIT_MS 5000

typedef struct packed_server_s {
  iocpsrv_t *srv;
  int port;
} packed_server_t;

/* A pull-mode server; a send_queue_limit > 0 is set, and with batch_sends the
 * consumer's sends wait in the queue until its next poll (IOCPSRV_OPT_PULL_BATCH_SENDS),
 * so the limit can be reached. */
static void packed_start_with(packed_server_t *ps, int64_t send_queue_limit, int batch_sends) {
  CHECK_OK(iocpsrv_create(&ps->srv, NULL));
  CHECK_OK(iocpsrv_set_option(ps->srv, IOCPSRV_OPT_PULL_MODE, 1));
  CHECK_OK(iocpsrv_set_option(ps->srv, IOCPSRV_OPT_WORKER_THREADS, 2));
  CHECK_OK(iocpsrv_set_option(ps->srv, IOCPSRV_OPT_MAX_PACKET_SIZE, 4096));
  if (send_queue_limit)
    CHECK_OK(iocpsrv_set_option(ps->srv, IOCPSRV_OPT_SEND_QUEUE_LIMIT, send_queue_limit));
  CHECK_OK(iocpsrv_set_option(ps->srv, IOCPSRV_OPT_PULL_BATCH_SENDS, batch_sends));
  CHECK_OK(iocpsrv_listen(ps->srv, "127.0.0.1", 0));
  ps->port = iocpsrv_port(ps->srv);
  CHECK_GT(ps->port, 0);
}

/* send_queue_limit > 0 turns IOCPSRV_OPT_PULL_BATCH_SENDS on too. */
static void packed_start(packed_server_t *ps, int64_t send_queue_limit) {
  packed_start_with(ps, send_queue_limit, send_queue_limit > 0);
}

static void packed_stop(packed_server_t *ps) {
  CHECK_OK(iocpsrv_stop(ps->srv, 1000));
  CHECK_OK(iocpsrv_destroy(ps->srv));
}

/* One parsed event record. */
typedef struct rec_s {
  iocpsrv_record_t h;
  const uint8_t *payload;
} rec_t;

/* Parses buf[0..n) into recs; checks alignment, sizes and zero padding. */
static int parse_records(const uint8_t *buf, int64_t n, rec_t *recs, int max) {
  CHECK_EQ(n % 8, 0);
  int count = 0;
  int64_t off = 0;
  while (off < n) {
    CHECK_LT(count, max);
    CHECK_LE(off + (int64_t)sizeof(iocpsrv_record_t), n);
    rec_t *r = &recs[count++];
    memcpy(&r->h, buf + off, sizeof r->h);
    r->payload = buf + off + sizeof r->h;
    int64_t size = (int64_t)IOCPSRV_RECORD_SIZE(r->h.len);
    CHECK_LE(off + size, n);
    for (size_t i = r->h.len; i < IOCPSRV_PACKED_ALIGN(r->h.len); i++)
      CHECK_EQ(r->payload[i], 0); /* padding is zero */
    CHECK(r->h.type >= IOCPSRV_EVENT_CONNECT && r->h.type <= IOCPSRV_EVENT_DRAIN);
    CHECK(r->h.type == IOCPSRV_EVENT_DISCONNECT || r->h.reason == 0);
    off += size;
  }
  return count;
}

/* Polls until one record of `type` for any connection arrives (others are kept in
 * *seen for the caller when non-NULL). */
static rec_t poll_one(packed_server_t *ps, uint8_t *buf, size_t cap, int type) {
  int64_t t0 = tt_now_ms();
  while (tt_now_ms() - t0 < WAIT_MS) {
    int64_t n = iocpsrv_poll_packed(ps->srv, buf, cap, 100);
    CHECK_GE(n, 0);
    rec_t recs[64];
    int k = parse_records(buf, n, recs, 64);
    CHECK_LE(k, 1); /* the callers below expect one event at a time */
    if (k == 1) {
      CHECK_EQ(recs[0].h.type, type);
      return recs[0];
    }
  }
  test_fail(__FILE__, __LINE__, "no event of type %d within %d ms", type, WAIT_MS);
}

/* Every event type, in order, with its fields: CONNECT with the peer text and no NUL,
 * packets of 0, 1, 7, 8, 9 and the maximum size, DISCONNECT with its reason, and the
 * conn_user set with iocpsrv_set_conn_user. */
static void packed_poll_every_type(void) {
  packed_server_t ps;
  packed_start(&ps, 0);
  size_t cap = IOCPSRV_RECORD_SIZE(4096) * 8;
  uint8_t *buf = malloc(cap);
  CHECK(buf != NULL);
  ts_sock_t s = ts_connect("127.0.0.1", ps.port, WAIT_MS);
  CHECK(s != TS_INVALID);
  char local[64];
  CHECK_OK(ts_local_addr(s, local, sizeof local));

  rec_t c = poll_one(&ps, buf, cap, IOCPSRV_EVENT_CONNECT);
  CHECK_EQ(c.h.len, strlen(local));
  CHECK(memcmp(c.payload, local, c.h.len) == 0);
  CHECK_EQ(c.h.conn_user, 0);
  CHECK_OK(iocpsrv_set_conn_user(ps.srv, c.h.conn, (void *)(uintptr_t)0x1234));

  static const size_t sizes[] = {0, 1, 7, 8, 9, 4096};
  uint8_t *payload = malloc(4096);
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    test_fill_pattern(payload, sizes[i], i);
    CHECK_OK(ts_send_packet(s, payload, sizes[i]));
  }
  size_t got = 0;
  int64_t t0 = tt_now_ms();
  while (got < 6 && tt_now_ms() - t0 < WAIT_MS) {
    int64_t n = iocpsrv_poll_packed(ps.srv, buf, cap, 100);
    CHECK_GE(n, 0);
    rec_t recs[16];
    int k = parse_records(buf, n, recs, 16);
    for (int j = 0; j < k; j++, got++) {
      CHECK_EQ(recs[j].h.type, IOCPSRV_EVENT_PACKET);
      CHECK_EQ(recs[j].h.conn, c.h.conn);
      CHECK_EQ(recs[j].h.conn_user, 0x1234);
      CHECK_EQ(recs[j].h.len, sizes[got]);
      CHECK_EQ(test_check_pattern(recs[j].payload, sizes[got], got), (size_t)-1);
    }
  }
  CHECK_EQ(got, 6);
  ts_close(s);
  rec_t d = poll_one(&ps, buf, cap, IOCPSRV_EVENT_DISCONNECT);
  CHECK_EQ(d.h.conn, c.h.conn);
  CHECK_EQ(d.h.len, 0);
  CHECK_EQ(d.h.reason, IOCPSRV_REASON_PEER_CLOSED);
  CHECK_EQ(d.h.conn_user, 0x1234);
  free(payload);
  free(buf);
  packed_stop(&ps);
}

/* A buffer too small for the first event: ENOSPACE and the event stays queued; a
 * buffer that takes some events but not all leaves the rest queued in order. */
static void packed_poll_nospace(void) {
  packed_server_t ps;
  packed_start(&ps, 0);
  uint8_t buf[IOCPSRV_RECORD_SIZE(4096) * 4];
  ts_sock_t s = ts_connect("127.0.0.1", ps.port, WAIT_MS);
  CHECK(s != TS_INVALID);
  rec_t c = poll_one(&ps, buf, sizeof buf, IOCPSRV_EVENT_CONNECT);
  uint8_t payload[100];
  for (int i = 0; i < 5; i++) {
    test_fill_pattern(payload, sizeof payload, (uint64_t)i);
    CHECK_OK(ts_send_packet(s, payload, sizeof payload));
  }
  iocpsrv_stats_t st;
  st.struct_size = sizeof st;
  int64_t t0 = tt_now_ms();
  do {
    CHECK_OK(iocpsrv_stats(ps.srv, &st));
  } while (st.pull_queue_depth < 5 && tt_now_ms() - t0 < WAIT_MS);
  CHECK_EQ(st.pull_queue_depth, 5);

  /* 24 + 104 bytes per record: 127 bytes takes none, 255 takes one, 300 two. */
  CHECK_EQ(iocpsrv_poll_packed(ps.srv, buf, 127, 0), IOCPSRV_ENOSPACE);
  CHECK_EQ(iocpsrv_poll_packed(ps.srv, buf, 8, 0), IOCPSRV_ENOSPACE);
  CHECK_OK(iocpsrv_stats(ps.srv, &st));
  CHECK_EQ(st.pull_queue_depth, 5);
  int seq = 0;
  static const size_t caps[] = {128, 255, 300, sizeof buf};
  static const int64_t taken[] = {128, 128, 256, 128}; /* 1, 1, 2, then the last one */
  for (size_t i = 0; i < 4; i++) {
    int64_t n = iocpsrv_poll_packed(ps.srv, buf, caps[i], 0);
    CHECK_EQ(n, taken[i]);
    rec_t recs[8];
    int k = parse_records(buf, n, recs, 8);
    for (int j = 0; j < k; j++, seq++) {
      CHECK_EQ(recs[j].h.conn, c.h.conn);
      CHECK_EQ(recs[j].h.len, 100);
      CHECK_EQ(test_check_pattern(recs[j].payload, 100, (uint64_t)seq), (size_t)-1);
    }
  }
  CHECK_EQ(seq, 5);
  CHECK_EQ(iocpsrv_poll_packed(ps.srv, buf, sizeof buf, 0), 0);
  ts_close(s);
  packed_stop(&ps);
}

/* Argument and state errors. */
static void packed_errors(void) {
  uint8_t buf[256];
  iocpsrv_t *srv;
  CHECK_OK(iocpsrv_create(&srv, NULL));
  CHECK_EQ(iocpsrv_poll_packed(srv, buf, sizeof buf, 0), IOCPSRV_ENOTSUP); /* no pull mode */
  CHECK_OK(iocpsrv_set_option(srv, IOCPSRV_OPT_PULL_MODE, 1));
  CHECK_EQ(iocpsrv_poll_packed(NULL, buf, sizeof buf, 0), IOCPSRV_EINVAL);
  CHECK_EQ(iocpsrv_poll_packed(srv, NULL, sizeof buf, 0), IOCPSRV_EINVAL);
  CHECK_EQ(iocpsrv_poll_packed(srv, buf, 0, 0), IOCPSRV_EINVAL);
  CHECK_EQ(iocpsrv_poll_packed(srv, buf, sizeof buf, 0), IOCPSRV_ESTOPPED); /* before listen */
  CHECK_EQ(iocpsrv_send_packed(srv, buf, 0, NULL, 0), IOCPSRV_ESTOPPED);
  CHECK_EQ(iocpsrv_send_packed(NULL, buf, 0, NULL, 0), IOCPSRV_EINVAL);
  iocpsrv_send_result_t res[1];
  CHECK_EQ(iocpsrv_send_packed(srv, buf, 0, res, -1), IOCPSRV_EINVAL);
  CHECK_EQ(iocpsrv_send_packed(srv, buf, 0, NULL, 1), IOCPSRV_EINVAL);
  CHECK_OK(iocpsrv_listen(srv, "127.0.0.1", 0));
  CHECK_EQ(iocpsrv_send_packed(srv, NULL, 0, NULL, 0), 0); /* an empty batch */
  CHECK_EQ(iocpsrv_poll_packed(srv, buf, sizeof buf, 0), 0);
  CHECK_OK(iocpsrv_stop(srv, 1000));
  CHECK_EQ(iocpsrv_poll_packed(srv, buf, sizeof buf, 0), IOCPSRV_ESTOPPED);
  CHECK_EQ(iocpsrv_send_packed(srv, buf, 0, NULL, 0), IOCPSRV_ESTOPPED);
  CHECK_OK(iocpsrv_destroy(srv));
}

/* Appends one send record to b at *off. */
static void put_send_record(uint8_t *b, size_t *off, iocpsrv_conn_id_t conn,
                            const void *payload, uint32_t len) {
  iocpsrv_send_record_t h = {conn, len, 0};
  memcpy(b + *off, &h, sizeof h);
  *off += sizeof h;
  if (len) memcpy(b + *off, payload, len);
  memset(b + *off + len, 0, IOCPSRV_PACKED_ALIGN(len) - len);
  *off += IOCPSRV_PACKED_ALIGN(len);
}

/* Accepts one client and returns its id (polled from the queue). */
static iocpsrv_conn_id_t accept_one(packed_server_t *ps, ts_sock_t *s) {
  uint8_t buf[512];
  *s = ts_connect("127.0.0.1", ps->port, WAIT_MS);
  CHECK(*s != TS_INVALID);
  return poll_one(ps, buf, sizeof buf, IOCPSRV_EVENT_CONNECT).h.conn;
}

static uint64_t packets_out(iocpsrv_t *srv) {
  iocpsrv_stats_t st;
  st.struct_size = sizeof st;
  CHECK_OK(iocpsrv_stats(srv, &st));
  return st.packets_out;
}

/* Packed sends to two clients, interleaved, with payloads of 0..17 bytes: every one
 * arrives, in order, framed. */
static void packed_send_delivers(void) {
  packed_server_t ps;
  packed_start(&ps, 0);
  ts_sock_t a, b;
  iocpsrv_conn_id_t ia = accept_one(&ps, &a), ib = accept_one(&ps, &b);
  uint8_t buf[4096], payload[32];
  size_t off = 0;
  for (uint32_t len = 0; len < 18; len++) {
    test_fill_pattern(payload, len, len);
    put_send_record(buf, &off, len % 2 ? ia : ib, payload, len);
  }
  CHECK_EQ(iocpsrv_send_packed(ps.srv, buf, off, NULL, 0), 0);
  for (uint32_t len = 0; len < 18; len++) {
    uint8_t got[64];
    size_t n;
    CHECK_OK(ts_recv_packet(len % 2 ? a : b, got, sizeof got, &n, WAIT_MS));
    CHECK_EQ(n, len);
    CHECK_EQ(test_check_pattern(got, n, len), (size_t)-1);
  }
  CHECK_EQ(packets_out(ps.srv), 18);
  ts_close(a);
  ts_close(b);
  packed_stop(&ps);
}

/* Malformed buffers are refused whole (IOCPSRV_EINVAL) and queue nothing, even when
 * their first records are well formed. */
static void packed_send_malformed(void) {
  packed_server_t ps;
  packed_start(&ps, 0);
  ts_sock_t s;
  iocpsrv_conn_id_t id = accept_one(&ps, &s);
  uint8_t good[64], bad[128];
  size_t glen = 0;
  put_send_record(good, &glen, id, "first", 5); /* 16 + 8 = 24 bytes */

  /* 1: size not a multiple of 8 */
  memcpy(bad, good, glen);
  size_t off = glen;
  put_send_record(bad, &off, id, "second", 6);
  CHECK_EQ(iocpsrv_send_packed(ps.srv, bad, off - 4, NULL, 0), IOCPSRV_EINVAL);
  /* 2: a header cut short */
  CHECK_EQ(iocpsrv_send_packed(ps.srv, bad, glen + 8, NULL, 0), IOCPSRV_EINVAL);
  /* 3: a length that runs past the end */
  iocpsrv_send_record_t h = {id, 1000, 0};
  memcpy(bad + glen, &h, sizeof h);
  CHECK_EQ(iocpsrv_send_packed(ps.srv, bad, off, NULL, 0), IOCPSRV_EINVAL);
  /* 4: non-zero flags */
  h.len = 6;
  h.flags = 1;
  memcpy(bad + glen, &h, sizeof h);
  CHECK_EQ(iocpsrv_send_packed(ps.srv, bad, off, NULL, 0), IOCPSRV_EINVAL);
  /* 5: non-zero padding */
  h.flags = 0;
  memcpy(bad + glen, &h, sizeof h);
  bad[glen + 16 + 7] = 0xff;
  CHECK_EQ(iocpsrv_send_packed(ps.srv, bad, off, NULL, 0), IOCPSRV_EINVAL);
  /* 6: a length near 4 GiB (the end check must not wrap) */
  h.len = 0xfffffff9u;
  memcpy(bad + glen, &h, sizeof h);
  CHECK_EQ(iocpsrv_send_packed(ps.srv, bad, off, NULL, 0), IOCPSRV_EINVAL);

  CHECK_EQ(packets_out(ps.srv), 0);
  /* The connection is untouched: a good buffer goes through, and it is the first
   * packet the client sees. */
  CHECK_EQ(iocpsrv_send_packed(ps.srv, good, glen, NULL, 0), 0);
  uint8_t got[16];
  size_t n;
  CHECK_OK(ts_recv_packet(s, got, sizeof got, &n, WAIT_MS));
  CHECK_EQ(n, 5);
  CHECK(memcmp(got, "first", 5) == 0);
  ts_close(s);
  packed_stop(&ps);
}

/* Refusals: an unknown id (ENOTCONN), a payload over the maximum (ETOOBIG) and a full
 * queue (EQUEUEFULL) are reported per record, and once a connection's record is
 * refused, its later records in the buffer are refused too: a smaller packet that
 * would fit is not sent ahead of the one refused. */
static void packed_send_refusals(void) {
  packed_server_t ps;
  packed_start(&ps, 4096);
  ts_sock_t a, b;
  iocpsrv_conn_id_t ia = accept_one(&ps, &a), ib = accept_one(&ps, &b);
  size_t cap = 64 * 1024;
  uint8_t *buf = malloc(cap), *big = calloc(1, 5000);
  CHECK(buf && big);
  size_t off = 0;
  put_send_record(buf, &off, ia, big, 3000);             /* 0: taken (empty queue) */
  put_send_record(buf, &off, ia, big, 3000);             /* 1: EQUEUEFULL */
  put_send_record(buf, &off, ib, "b0", 2);               /* 2: taken */
  put_send_record(buf, &off, ia, "small", 5);            /* 3: refused: after 1 */
  put_send_record(buf, &off, ia + 0x100000000ull, "x", 1); /* 4: ENOTCONN */
  put_send_record(buf, &off, ib, big, 4097);             /* 5: ETOOBIG */
  put_send_record(buf, &off, ib, "b1", 2);               /* 6: refused: after 5 */
  put_send_record(buf, &off, 0, "", 0);                  /* 7: ENOTCONN */
  iocpsrv_send_result_t res[8];
  CHECK_EQ(iocpsrv_send_packed(ps.srv, buf, off, res, 8), 6);
  static const struct { uint32_t index; int32_t error; } want[] = {
      {1, IOCPSRV_EQUEUEFULL}, {3, IOCPSRV_EQUEUEFULL}, {4, IOCPSRV_ENOTCONN},
      {5, IOCPSRV_ETOOBIG},    {6, IOCPSRV_ETOOBIG},    {7, IOCPSRV_ENOTCONN}};
  for (int i = 0; i < 6; i++) {
    CHECK_EQ(res[i].index, want[i].index);
    CHECK_EQ(res[i].error, want[i].error);
  }
  /* With room for two results only: the count is still 6, two are described. */
  memset(res, 0xee, sizeof res);
  off = 0;
  put_send_record(buf, &off, ia, big, 3000);
  put_send_record(buf, &off, ia, "s", 1);
  put_send_record(buf, &off, ia, "s", 1);
  CHECK_EQ(iocpsrv_send_packed(ps.srv, buf, off, res, 2), 3);
  CHECK_EQ(res[1].index, 1);
  CHECK_EQ(res[2].index, 0xeeeeeeeeu); /* untouched */
  /* The next poll writes the batch's sends; what it returns can only be a's drain. */
  int64_t got_n = iocpsrv_poll_packed(ps.srv, buf, cap, 0);
  rec_t recs[4];
  int k = parse_records(buf, got_n, recs, 4);
  for (int i = 0; i < k; i++) {
    CHECK_EQ(recs[i].h.type, IOCPSRV_EVENT_DRAIN);
    CHECK_EQ(recs[i].h.conn, ia);
  }

  /* b got exactly b0; a got exactly the first 3000 bytes. */
  uint8_t got[4096];
  size_t n;
  CHECK_OK(ts_recv_packet(b, got, sizeof got, &n, WAIT_MS));
  CHECK_EQ(n, 2);
  CHECK(memcmp(got, "b0", 2) == 0);
  CHECK_OK(ts_recv_packet(a, got, sizeof got, &n, WAIT_MS));
  CHECK_EQ(n, 3000);
  CHECK_EQ(ts_readable(a, 200), 0);
  CHECK_EQ(ts_readable(b, 200), 0);
  free(buf);
  free(big);
  ts_close(a);
  ts_close(b);
  packed_stop(&ps);
}

/* Puts `count` records of 100 bytes for `conn`, each filled with its number. */
static void put_numbered(uint8_t *b, size_t *off, iocpsrv_conn_id_t conn, int first, int count) {
  uint8_t payload[100];
  for (int i = first; i < first + count; i++) {
    memset(payload, i, sizeof payload);
    put_send_record(b, off, conn, payload, sizeof payload);
  }
}

/* Receives packets first..first+count-1 of put_numbered, in order. */
static void recv_numbered(ts_sock_t s, int first, int count) {
  uint8_t got[256];
  size_t n;
  for (int i = first; i < first + count; i++) {
    CHECK_OK(ts_recv_packet(s, got, sizeof got, &n, WAIT_MS));
    CHECK_EQ(n, 100);
    CHECK_EQ(got[0], (uint8_t)i);
    CHECK_EQ(got[99], (uint8_t)i);
  }
}

/* Long runs of records for one connection (the engine takes consecutive records of a
 * connection together, up to 64 at a time): with sends waiting for the batch, the
 * limit refuses from the 40th on, across run boundaries, each with its own index; with
 * sends written at once, what a run queued is written before the limit is judged, so
 * nothing is refused, as when each record was sent alone. */
static void packed_send_long_runs(void) {
  for (int batch_sends = 1; batch_sends >= 0; batch_sends--) {
    packed_server_t ps;
    packed_start_with(&ps, 4096, batch_sends);
    ts_sock_t a, b;
    iocpsrv_conn_id_t ia = accept_one(&ps, &a), ib = accept_one(&ps, &b);
    enum { RUN = 150, TAKEN = 4096 / 104 }; /* 104: a 100-byte packet framed */
    size_t off = 0, cap = (RUN + 2) * IOCPSRV_SEND_RECORD_SIZE(100);
    uint8_t *buf = malloc(cap);
    CHECK(buf != NULL);
    put_numbered(buf, &off, ia, 0, RUN);
    put_numbered(buf, &off, ib, 7, 1);
    put_numbered(buf, &off, ia, RUN, 1);
    iocpsrv_send_result_t res[RUN];
    int refused = iocpsrv_send_packed(ps.srv, buf, off, res, RUN);
    if (batch_sends) {
      CHECK_EQ(refused, RUN - TAKEN + 1);
      for (int i = 0; i < RUN - TAKEN; i++) {
        CHECK_EQ(res[i].index, (uint32_t)(TAKEN + i));
        CHECK_EQ(res[i].error, IOCPSRV_EQUEUEFULL);
      }
      CHECK_EQ(res[RUN - TAKEN].index, (uint32_t)RUN + 1);
      CHECK_EQ(iocpsrv_poll_packed(ps.srv, buf, cap, 0) >= 0, 1); /* writes the batch */
    } else {
      CHECK_EQ(refused, 0);
    }
    recv_numbered(b, 7, 1);
    recv_numbered(a, 0, batch_sends ? TAKEN : RUN + 1);
    CHECK_EQ(ts_readable(a, 200), 0);
    free(buf);
    ts_close(a);
    ts_close(b);
    packed_stop(&ps);
  }
}

/* A too-big record for an id that is not (or no longer) a connection is refused with
 * IOCPSRV_ETOOBIG, as iocpsrv_send refuses it (the size is judged before the id), and
 * the later records for that id with it; also when they come as one run of records
 * for the same connection, which is looked up once. */
static void packed_send_too_big_for_a_stale_id(void) {
  packed_server_t ps;
  packed_start(&ps, 0);
  ts_sock_t s;
  iocpsrv_conn_id_t id = accept_one(&ps, &s), stale = id + 0x100000000ull;
  uint8_t *big = calloc(1, 4097), buf[3 * IOCPSRV_SEND_RECORD_SIZE(4097)];
  CHECK(big != NULL);
  CHECK_ERR(iocpsrv_send(ps.srv, stale, big, 4097), IOCPSRV_ETOOBIG); /* the oracle */
  for (int alone = 1; alone >= 0; alone--) {
    size_t off = 0;
    put_send_record(buf, &off, stale, big, 4097); /* 0: ETOOBIG */
    if (alone) put_send_record(buf, &off, id, "-", 1); /* ends the run */
    put_send_record(buf, &off, stale, "x", 1);    /* refused as 0 was */
    iocpsrv_send_result_t res[3];
    CHECK_EQ(iocpsrv_send_packed(ps.srv, buf, off, res, 3), 2);
    CHECK_EQ(res[0].index, 0);
    CHECK_ERR(res[0].error, IOCPSRV_ETOOBIG);
    CHECK_EQ(res[1].index, (uint32_t)(alone ? 2 : 1));
    CHECK_ERR(res[1].error, IOCPSRV_ETOOBIG);
  }
  uint8_t got[8];
  size_t n;
  CHECK_OK(ts_recv_packet(s, got, sizeof got, &n, WAIT_MS));
  CHECK_EQ(n, 1);
  CHECK_EQ(got[0], '-');
  free(big);
  ts_close(s);
  packed_stop(&ps);
}

/* ---- iocpsrv_send_packed from a packet callback (callback mode) ---- */

typedef struct cb_packed_s {
  tt_mutex_t m;
  iocpsrv_conn_id_t b; /* the other client, known from its "b" packet */
  tt_counter_t seen_b, done;
  int refused;
  iocpsrv_send_result_t res[4];
} cb_packed_t;

static cb_packed_t g_cbp;

/* "b": remember this client. "go": one packed buffer mixing records for the calling
 * connection (its own queue, written after the callback) with records for the other
 * one (written at once), and a too-big own record that refuses the own ones after it. */
static int IOCPSRV_CALL cbp_on_packet(iocpsrv_t *srv, iocpsrv_conn_id_t conn, void *user,
                                      const uint8_t *data, size_t len) {
  (void)user;
  if (len == 1 && data[0] == 'b') {
    tt_mutex_lock(&g_cbp.m);
    g_cbp.b = conn;
    tt_mutex_unlock(&g_cbp.m);
    tt_counter_add(&g_cbp.seen_b, 1);
    return 0;
  }
  tt_mutex_lock(&g_cbp.m);
  iocpsrv_conn_id_t b = g_cbp.b;
  tt_mutex_unlock(&g_cbp.m);
  static uint8_t buf[16 * IOCPSRV_SEND_RECORD_SIZE(8) + IOCPSRV_SEND_RECORD_SIZE(5000)];
  static uint8_t big[5000];
  size_t off = 0;
  put_send_record(buf, &off, conn, "a0", 2);
  put_send_record(buf, &off, conn, "a1", 2);
  put_send_record(buf, &off, b, "b0", 2);
  put_send_record(buf, &off, conn, "a2", 2);
  put_send_record(buf, &off, b, "b1", 2);
  put_send_record(buf, &off, b, "b2", 2);
  put_send_record(buf, &off, conn, "a3", 2);
  put_send_record(buf, &off, conn, big, sizeof big); /* 7: ETOOBIG */
  put_send_record(buf, &off, conn, "a4", 2);          /* 8: refused as 7 */
  put_send_record(buf, &off, b, "b3", 2);
  g_cbp.refused = iocpsrv_send_packed(srv, buf, off, g_cbp.res, 4);
  tt_counter_add(&g_cbp.done, 1);
  return 0;
}

static void expect_packets(ts_sock_t s, const char *const *want, int n) {
  char got[16];
  size_t len;
  for (int i = 0; i < n; i++) {
    CHECK_OK(ts_recv_packet(s, got, sizeof got, &len, WAIT_MS));
    CHECK_EQ(len, strlen(want[i]));
    CHECK_MEMEQ(got, want[i], len);
  }
  CHECK_EQ(ts_readable(s, 200), 0);
}

static void packed_send_from_a_callback_mixes_own_and_others(void) {
  memset(&g_cbp, 0, sizeof g_cbp);
  tt_mutex_init(&g_cbp.m);
  tt_counter_init(&g_cbp.seen_b);
  tt_counter_init(&g_cbp.done);
  iocpsrv_t *srv = NULL;
  CHECK_OK(iocpsrv_create(&srv, NULL));
  CHECK_OK(iocpsrv_set_option(srv, IOCPSRV_OPT_WORKER_THREADS, 2));
  CHECK_OK(iocpsrv_set_option(srv, IOCPSRV_OPT_MAX_PACKET_SIZE, 4096));
  CHECK_OK(iocpsrv_set_packet_cb(srv, cbp_on_packet));
  CHECK_OK(iocpsrv_listen(srv, "127.0.0.1", 0));
  int port = iocpsrv_port(srv);
  ts_sock_t a = ts_connect("127.0.0.1", port, WAIT_MS), b = ts_connect("127.0.0.1", port, WAIT_MS);
  CHECK(a != TS_INVALID && b != TS_INVALID);
  CHECK_EQ(ts_send_packet(b, "b", 1), 0);
  CHECK_EQ(tt_counter_wait(&g_cbp.seen_b, 1, WAIT_MS), 0);
  CHECK_EQ(ts_send_packet(a, "go", 2), 0);
  CHECK_EQ(tt_counter_wait(&g_cbp.done, 1, WAIT_MS), 0);
  CHECK_EQ(g_cbp.refused, 2);
  CHECK_EQ(g_cbp.res[0].index, 7);
  CHECK_ERR(g_cbp.res[0].error, IOCPSRV_ETOOBIG);
  CHECK_EQ(g_cbp.res[1].index, 8);
  CHECK_ERR(g_cbp.res[1].error, IOCPSRV_ETOOBIG);
  static const char *const want_a[] = {"a0", "a1", "a2", "a3"};
  static const char *const want_b[] = {"b0", "b1", "b2", "b3"};
  expect_packets(a, want_a, 4);
  expect_packets(b, want_b, 4);
  ts_close(a);
  ts_close(b);
  CHECK_OK(iocpsrv_stop(srv, 1000));
  CHECK_OK(iocpsrv_destroy(srv));
  tt_counter_destroy(&g_cbp.seen_b);
  tt_counter_destroy(&g_cbp.done);
  tt_mutex_destroy(&g_cbp.m);
}

/* More refused connections than the inline table holds (it grows): each keeps its
 * own refusal, and connections never refused are still served. */
static void packed_send_many_refused(void) {
  packed_server_t ps;
  packed_start(&ps, 0);
  ts_sock_t s;
  iocpsrv_conn_id_t id = accept_one(&ps, &s);
  enum { DEAD = 300 };
  size_t cap = (DEAD * 2 + 2) * IOCPSRV_SEND_RECORD_SIZE(1);
  uint8_t *buf = malloc(cap);
  size_t off = 0;
  for (int round = 0; round < 2; round++)
    for (uint64_t i = 0; i < DEAD; i++) put_send_record(buf, &off, id + ((i + 1) << 32), "d", 1);
  put_send_record(buf, &off, id, "L", 1);
  iocpsrv_send_result_t *res = malloc(sizeof *res * DEAD * 2);
  CHECK_EQ(iocpsrv_send_packed(ps.srv, buf, off, res, DEAD * 2), DEAD * 2);
  for (int i = 0; i < DEAD * 2; i++) {
    CHECK_EQ(res[i].index, (uint32_t)i);
    CHECK_EQ(res[i].error, IOCPSRV_ENOTCONN);
  }
  uint8_t got[8];
  size_t n;
  CHECK_OK(ts_recv_packet(s, got, sizeof got, &n, WAIT_MS));
  CHECK_EQ(n, 1);
  CHECK_EQ(got[0], 'L');
  free(res);
  free(buf);
  ts_close(s);
  packed_stop(&ps);
}

/* An echo through both packed calls with many clients: each batch is answered with
 * one iocpsrv_send_packed; every byte comes back in order. */
typedef struct echo_client_s {
  int port, packets;
  int ok;
} echo_client_t;

static void echo_client(void *arg) {
  echo_client_t *c = arg;
  ts_sock_t s = ts_connect("127.0.0.1", c->port, WAIT_MS);
  if (s == TS_INVALID) return;
  uint8_t p[64], got[64];
  for (int i = 0; i < c->packets; i++) {
    size_t len = (size_t)(i % 40);
    test_fill_pattern(p, len, (uint64_t)i);
    if (ts_send_packet(s, p, len)) goto out;
  }
  for (int i = 0; i < c->packets; i++) {
    size_t n;
    if (ts_recv_packet(s, got, sizeof got, &n, WAIT_MS)) goto out;
    if (n != (size_t)(i % 40) || test_check_pattern(got, n, (uint64_t)i) != (size_t)-1) goto out;
  }
  c->ok = 1;
out:
  ts_close(s);
}

static void packed_echo_many_clients(void) {
  packed_server_t ps;
  packed_start(&ps, 0);
  enum { CLIENTS = 20, PACKETS = 500 };
  echo_client_t clients[CLIENTS];
  tt_thread_t *threads[CLIENTS];
  for (int i = 0; i < CLIENTS; i++) {
    clients[i] = (echo_client_t){ps.port, PACKETS, 0};
    threads[i] = tt_thread_start(echo_client, &clients[i]);
  }
  size_t cap = 16 * 1024;
  uint8_t *in = malloc(cap), *out = malloc(cap * 2);
  int disconnects = 0, batches = 0, most = 0;
  int64_t t0 = tt_now_ms();
  while (disconnects < CLIENTS && tt_now_ms() - t0 < 20000) {
    int64_t n = iocpsrv_poll_packed(ps.srv, in, cap, 100);
    CHECK_GE(n, 0);
    rec_t recs[1024];
    int k = parse_records(in, n, recs, 1024);
    size_t off = 0;
    int packets = 0;
    for (int j = 0; j < k; j++) {
      if (recs[j].h.type == IOCPSRV_EVENT_DISCONNECT) disconnects++;
      if (recs[j].h.type != IOCPSRV_EVENT_PACKET) continue;
      put_send_record(out, &off, recs[j].h.conn, recs[j].payload, recs[j].h.len);
      packets++;
    }
    if (packets > most) most = packets;
    if (off) {
      CHECK_EQ(iocpsrv_send_packed(ps.srv, out, off, NULL, 0), 0);
      batches++;
    }
  }
  for (int i = 0; i < CLIENTS; i++) {
    tt_thread_join(threads[i]);
    CHECK_MSG(clients[i].ok, "client %d: echo incomplete or wrong", i);
  }
  CHECK_EQ(disconnects, CLIENTS);
  CHECK_GT(most, 1); /* batches really carried several packets */
  printf("  %d packets in %d batches (largest %d)\n", CLIENTS * PACKETS, batches, most);
  free(in);
  free(out);
  packed_stop(&ps);
}

int main(int argc, char **argv) {
  test_init(argc, argv);
  TEST_RUN(packed_poll_every_type);
  TEST_RUN(packed_poll_nospace);
  TEST_RUN(packed_errors);
  TEST_RUN(packed_send_delivers);
  TEST_RUN(packed_send_malformed);
  TEST_RUN(packed_send_refusals);
  TEST_RUN(packed_send_many_refused);
  TEST_RUN(packed_send_too_big_for_a_stale_id);
  TEST_RUN(packed_send_from_a_callback_mixes_own_and_others);
  TEST_RUN(packed_send_long_runs);
  TEST_RUN(packed_echo_many_clients);
  return test_done();
}
