/*
 * test_batch.c -- the packet-batch callback (issue 17): every packet once, in order,
 * in batches of at most IOCPSRV_BATCH_MAX views that stay valid for the call; packets
 * that spanned receives, a PROXY header split over receives, a close or a pause asked
 * for from inside a batch, and the option's limits.
 */
#include <stdlib.h>

#include "sock.h"
#include "test.h"
#include "thread.h"

#define WAIT_MS 5000

typedef struct batch_state_s {
  tt_mutex_t lock;
  tt_counter_t packets;     /* packets seen */
  tt_counter_t disconnects;
  int calls, largest, errors;
  uint32_t next_seq;        /* payloads start with a u32le sequence */
  int close_at_seq;         /* return non-zero from the batch holding this seq (-1: never) */
  int pause_at_seq;         /* pause the connection in the batch holding this seq */
  int last_reason;
  iocpsrv_conn_id_t conn;
} batch_state_t;

static batch_state_t st;

static void state_reset(void) {
  tt_mutex_init(&st.lock);
  tt_counter_init(&st.packets);
  tt_counter_init(&st.disconnects);
  st.calls = st.largest = st.errors = 0;
  st.next_seq = 0;
  st.close_at_seq = st.pause_at_seq = -1;
  st.last_reason = -1;
  st.conn = 0;
}

static void state_free(void) {
  tt_counter_destroy(&st.packets);
  tt_counter_destroy(&st.disconnects);
  tt_mutex_destroy(&st.lock);
}

/* Checks each view (sequence, pattern after it), echoes it, and acts on the test's
 * close/pause markers. */
static int IOCPSRV_CALL on_batch(iocpsrv_t *srv, iocpsrv_conn_id_t conn, void *user,
                                 const iocpsrv_buf_t *packets, int count) {
  (void)user;
  int close = 0, pause = 0;
  tt_mutex_lock(&st.lock);
  st.calls++;
  st.conn = conn;
  if (count > st.largest) st.largest = count;
  if (count < 1 || count > IOCPSRV_BATCH_MAX) st.errors++;
  for (int i = 0; i < count; i++) {
    const uint8_t *p = packets[i].base;
    size_t len = packets[i].len;
    if (!p || len < 4) {
      st.errors++;
      continue;
    }
    uint32_t seq = test_get_u32le(p);
    if (seq != st.next_seq || test_check_pattern(p + 4, len - 4, seq) != (size_t)-1) st.errors++;
    st.next_seq = seq + 1;
    if ((int)seq == st.close_at_seq) close = 1;
    if ((int)seq == st.pause_at_seq) pause = 1;
    if (iocpsrv_send(srv, conn, p, len) != 0) st.errors++;
  }
  tt_mutex_unlock(&st.lock);
  if (pause) iocpsrv_pause_receive(srv, conn);
  tt_counter_add(&st.packets, count);
  return close;
}

static int IOCPSRV_CALL on_packet_never(iocpsrv_t *srv, iocpsrv_conn_id_t conn, void *user,
                                        const uint8_t *data, size_t len) {
  (void)srv, (void)conn, (void)user, (void)data, (void)len;
  tt_mutex_lock(&st.lock);
  st.errors++; /* the batch callback replaces it */
  tt_mutex_unlock(&st.lock);
  return 0;
}

static void IOCPSRV_CALL on_disconnect(iocpsrv_t *srv, iocpsrv_conn_id_t conn, void *user,
                                       int reason) {
  (void)srv, (void)conn, (void)user;
  st.last_reason = reason;
  tt_counter_add(&st.disconnects, 1);
}

static iocpsrv_t *batch_server(int *port, int proxy) {
  iocpsrv_t *srv;
  state_reset();
  CHECK_OK(iocpsrv_create(&srv, NULL));
  CHECK_OK(iocpsrv_set_packet_cb(srv, on_packet_never));
  CHECK_OK(iocpsrv_set_packet_batch_cb(srv, on_batch));
  CHECK_OK(iocpsrv_set_disconnect_cb(srv, on_disconnect));
  if (proxy) {
    CHECK_OK(iocpsrv_set_option(srv, IOCPSRV_OPT_PROXY_PROTOCOL, IOCPSRV_PROXY_OPTIONAL));
    CHECK_OK(iocpsrv_set_option_str(srv, IOCPSRV_OPT_PROXY_TRUSTED, "127.0.0.1"));
  }
  CHECK_OK(iocpsrv_listen(srv, "127.0.0.1", 0));
  *port = iocpsrv_port(srv);
  return srv;
}

static void batch_server_end(iocpsrv_t *srv) {
  CHECK_OK(iocpsrv_stop(srv, 1000));
  CHECK_OK(iocpsrv_destroy(srv));
  CHECK_EQ(st.errors, 0);
  state_free();
}

/* Frames packets [first, first+n) (sequence + pattern, 4..40 bytes) into out. */
static size_t frame_packets(uint8_t *out, uint32_t first, int n) {
  size_t off = 0;
  uint8_t p[64];
  for (uint32_t seq = first; seq < first + (uint32_t)n; seq++) {
    size_t len = 4 + seq % 37;
    test_put_u32le(p, seq);
    test_fill_pattern(p + 4, len - 4, seq);
    off += ts_frame(out + off, p, len, 4, 0);
  }
  return off;
}

static void expect_echoes(ts_sock_t s, uint32_t first, int n) {
  for (uint32_t seq = first; seq < first + (uint32_t)n; seq++) {
    uint8_t got[64];
    size_t len;
    CHECK_OK(ts_recv_packet(s, got, sizeof got, &len, WAIT_MS));
    CHECK_EQ(len, 4 + seq % 37);
    CHECK_EQ(test_get_u32le(got), seq);
  }
}

/* 200 packets in one write: gathered into batches of at most IOCPSRV_BATCH_MAX (fewer
 * calls than packets), all echoed in order. */
static void batch_gathers_a_read(void) {
  int port;
  iocpsrv_t *srv = batch_server(&port, 0);
  ts_sock_t s = ts_connect("127.0.0.1", port, WAIT_MS);
  CHECK(s != TS_INVALID);
  uint8_t *buf = malloc(200 * 48);
  size_t n = frame_packets(buf, 0, 200);
  CHECK_OK(ts_send_all(s, buf, n));
  expect_echoes(s, 0, 200);
  CHECK_EQ(tt_counter_get(&st.packets), 200);
  printf("  200 packets in %d calls, largest %d\n", st.calls, st.largest);
  CHECK_LT(st.calls, 200);
  CHECK_LE(st.largest, IOCPSRV_BATCH_MAX);
  ts_close(s);
  CHECK_OK(tt_counter_wait(&st.disconnects, 1, WAIT_MS));
  CHECK_EQ(st.last_reason, IOCPSRV_REASON_PEER_CLOSED);
  free(buf);
  batch_server_end(srv);
}

/* Waits until the server has received `bytes` bytes in all. */
static void wait_bytes_in(iocpsrv_t *srv, uint64_t bytes) {
  iocpsrv_stats_t s;
  s.struct_size = sizeof s;
  int64_t t0 = tt_now_ms();
  do {
    CHECK_OK(iocpsrv_stats(srv, &s));
    if (s.bytes_in >= bytes) return;
    tt_sleep_ms(1); /* polling a counter: the engine has no event for "bytes read" */
  } while (tt_now_ms() - t0 < WAIT_MS);
  test_fail(__FILE__, __LINE__, "server read %llu of %llu bytes", (unsigned long long)s.bytes_in,
            (unsigned long long)bytes);
}

/* Packets that span receives (completed in the framer's stash) and a large one
 * received in place, glued to whole ones: every packet once, in order. */
static void batch_spanning_reads(void) {
  int port;
  iocpsrv_t *srv = batch_server(&port, 0);
  ts_sock_t s = ts_connect("127.0.0.1", port, WAIT_MS);
  CHECK(s != TS_INVALID);
  CHECK_OK(ts_set_nodelay(s, 1)); /* each cut leaves at once */
  uint8_t *buf = malloc(64 * 1024);
  size_t n = frame_packets(buf, 0, 50);
  size_t sent = 0;
  for (size_t cut = 7; sent < n; cut += 13) { /* cuts inside headers and payloads */
    size_t end = cut < n ? cut : n;
    CHECK_OK(ts_send_all(s, buf + sent, end - sent));
    sent = end;
    wait_bytes_in(srv, sent);
  }
  expect_echoes(s, 0, 50);
  /* A 40 KiB packet (received in place), then two small ones in the same write. */
  size_t big = 40 * 1024;
  uint8_t *p = malloc(big);
  test_put_u32le(p, 50);
  test_fill_pattern(p + 4, big - 4, 50);
  size_t off = ts_frame(buf, p, big, 4, 0);
  off += frame_packets(buf + off, 51, 2);
  CHECK_OK(ts_send_all(s, buf, off));
  uint8_t *got = malloc(big);
  size_t len;
  CHECK_OK(ts_recv_packet(s, got, big, &len, WAIT_MS));
  CHECK_EQ(len, big);
  CHECK(memcmp(got, p, big) == 0);
  expect_echoes(s, 51, 2);
  CHECK_EQ(tt_counter_get(&st.packets), 53);
  free(got);
  free(p);
  free(buf);
  ts_close(s);
  batch_server_end(srv);
}

/* Non-zero from a batch closes gracefully: the batch's replies are written, no later
 * batch comes (the packets sent after it are never delivered), reason LOCAL_CLOSE. */
static void batch_close_from_inside(void) {
  int port;
  iocpsrv_t *srv = batch_server(&port, 0);
  st.close_at_seq = 4;
  ts_sock_t s = ts_connect("127.0.0.1", port, WAIT_MS);
  CHECK(s != TS_INVALID);
  uint8_t buf[4096];
  size_t n = frame_packets(buf, 0, 5);
  CHECK_OK(ts_send_all(s, buf, n));
  expect_echoes(s, 0, 5); /* written after the batch that asked to close */
  n = frame_packets(buf, 5, 5); /* too late: the server only discards them now */
  CHECK_OK(ts_send_all(s, buf, n));
  size_t discarded = 0;
  CHECK_EQ(ts_wait_close(s, WAIT_MS, &discarded), TS_EOF);
  CHECK_EQ(discarded, 0);
  ts_close(s);
  CHECK_OK(tt_counter_wait(&st.disconnects, 1, WAIT_MS));
  CHECK_EQ(st.last_reason, IOCPSRV_REASON_LOCAL_CLOSE);
  CHECK_EQ(tt_counter_get(&st.packets), 5);
  batch_server_end(srv);
}

/* A pause from inside a batch: the packets of that batch were handed over; the next
 * ones wait for resume, then come in order. */
static void batch_pause_from_inside(void) {
  int port;
  iocpsrv_t *srv = batch_server(&port, 0);
  st.pause_at_seq = 2;
  ts_sock_t s = ts_connect("127.0.0.1", port, WAIT_MS);
  CHECK(s != TS_INVALID);
  uint8_t buf[4096];
  size_t n = frame_packets(buf, 0, 3);
  CHECK_OK(ts_send_all(s, buf, n));
  expect_echoes(s, 0, 3);
  n = frame_packets(buf, 3, 10);
  CHECK_OK(ts_send_all(s, buf, n));
  CHECK_EQ(ts_readable(s, 200), 0); /* paused: nothing echoed */
  CHECK_EQ(tt_counter_get(&st.packets), 3);
  CHECK_OK(iocpsrv_resume_receive(srv, st.conn));
  expect_echoes(s, 3, 10);
  ts_close(s);
  batch_server_end(srv);
}

/* A PROXY header split over two receives, with packets behind it in the second: the
 * batch views the joined header buffer, which must outlive the call. */
static void batch_after_split_proxy_header(void) {
  int port;
  iocpsrv_t *srv = batch_server(&port, 1);
  ts_sock_t s = ts_connect("127.0.0.1", port, WAIT_MS);
  CHECK(s != TS_INVALID);
  const char *head = "PROXY TCP4 192.0.2.1 192.0.2.2 1000 2000";
  CHECK_OK(ts_send_all(s, head, strlen(head)));
  wait_bytes_in(srv, strlen(head));
  uint8_t buf[4096];
  memcpy(buf, "\r\n", 2);
  size_t n = 2 + frame_packets(buf + 2, 0, 20);
  CHECK_OK(ts_send_all(s, buf, n));
  expect_echoes(s, 0, 20);
  iocpsrv_conn_info_t info;
  info.struct_size = sizeof info;
  CHECK_OK(iocpsrv_conn_info(srv, st.conn, &info));
  CHECK_STREQ(info.peer, "192.0.2.1:1000");
  ts_close(s);
  batch_server_end(srv);
}

/* Set only while stopped; pull mode keeps its events (packed poll batches there). */
static void batch_option_limits(void) {
  int port;
  iocpsrv_t *srv = batch_server(&port, 0);
  CHECK_EQ(iocpsrv_set_packet_batch_cb(srv, on_batch), IOCPSRV_ESTATE);
  CHECK_EQ(iocpsrv_set_packet_batch_cb(NULL, on_batch), IOCPSRV_EINVAL);
  batch_server_end(srv);

  state_reset();
  CHECK_OK(iocpsrv_create(&srv, NULL));
  CHECK_OK(iocpsrv_set_packet_batch_cb(srv, on_batch));
  CHECK_OK(iocpsrv_set_option(srv, IOCPSRV_OPT_PULL_MODE, 1));
  CHECK_OK(iocpsrv_listen(srv, "127.0.0.1", 0));
  ts_sock_t s = ts_connect("127.0.0.1", iocpsrv_port(srv), WAIT_MS);
  uint8_t buf[256];
  size_t n = frame_packets(buf, 0, 1);
  CHECK_OK(ts_send_all(s, buf, n));
  iocpsrv_event_t ev[4];
  int got = 0;
  int64_t t0 = tt_now_ms();
  while (got < 2 && tt_now_ms() - t0 < WAIT_MS) {
    int k = iocpsrv_poll(srv, ev, 4, 100);
    CHECK_GE(k, 0);
    for (int i = 0; i < k; i++) CHECK_EQ(ev[i].type, got + i == 0 ? IOCPSRV_EVENT_CONNECT : IOCPSRV_EVENT_PACKET);
    got += k;
  }
  CHECK_EQ(got, 2);
  CHECK_EQ(st.calls, 0);
  ts_close(s);
  batch_server_end(srv);
}

int main(int argc, char **argv) {
  test_init(argc, argv);
  TEST_RUN(batch_gathers_a_read);
  TEST_RUN(batch_spanning_reads);
  TEST_RUN(batch_close_from_inside);
  TEST_RUN(batch_pause_from_inside);
  TEST_RUN(batch_after_split_proxy_header);
  TEST_RUN(batch_option_limits);
  return test_done();
}
