/*
 * test_large_sends.c -- large sends to an idle connection, which the engine writes
 * straight from the host's buffer where the backend can (Linux; issue 17: no copy into
 * the queue), queueing only what the socket does not take. Checked: every packet
 * arrives whole and in order from a connection's own callback, mixed with small sends
 * (queued) and with large sends from another thread at the same time; the stats count
 * each packet and byte once.
 */
#include <stdlib.h>
#include <string.h>

#include "sock.h"
#include "test.h"
#include "thread.h"

#define WAIT_MS 10000
#define SEED_OTHER 1000 /* seeds of the packets another thread sends */

/* Payload sizes the connection's own callback sends for one "go": large ones (written
 * at once when the queue is idle) between small ones (always queued). */
static const size_t own_sizes[] = {200000, 20000, 17, 300000, 16384, 70000, 5, 1 << 20};
#define OWN_COUNT ((int)(sizeof own_sizes / sizeof own_sizes[0]))

typedef struct large_ctx_s {
  tt_counter_t connected;
  iocpsrv_conn_id_t conn;
  uint8_t *payload; /* the largest payload, refilled per packet */
  int errors;
} large_ctx_t;

/* The first 4 bytes of a payload are its seed; the rest is the seed's pattern. */
static void fill_packet(uint8_t *p, size_t len, uint32_t seed) {
  uint8_t s[4];
  test_put_u32le(s, seed);
  memcpy(p, s, len < 4 ? len : 4);
  if (len > 4) test_fill_pattern(p + 4, len - 4, seed);
}

static int IOCPSRV_CALL on_connect(iocpsrv_t *srv, iocpsrv_conn_id_t conn, const char *peer,
                                   void **user) {
  large_ctx_t *x = iocpsrv_user_data(srv);
  (void)peer, (void)user;
  x->conn = conn;
  tt_counter_add(&x->connected, 1);
  return 0;
}

static int IOCPSRV_CALL on_packet(iocpsrv_t *srv, iocpsrv_conn_id_t conn, void *user,
                                  const uint8_t *data, size_t len) {
  large_ctx_t *x = iocpsrv_user_data(srv);
  (void)user, (void)data, (void)len;
  for (int i = 0; i < OWN_COUNT; i++) {
    fill_packet(x->payload, own_sizes[i], (uint32_t)i);
    if (iocpsrv_send(srv, conn, x->payload, own_sizes[i]) != 0) x->errors++;
    /* The engine must not read the host's buffer after send returns. */
    memset(x->payload, 0xAB, own_sizes[i]);
  }
  return 0;
}

static iocpsrv_t *large_server(large_ctx_t *x) {
  memset(x, 0, sizeof *x);
  tt_counter_init(&x->connected);
  x->payload = malloc(1 << 20);
  CHECK(x->payload != NULL);
  iocpsrv_t *srv;
  CHECK_OK(iocpsrv_create(&srv, x));
  CHECK_OK(iocpsrv_set_option(srv, IOCPSRV_OPT_MAX_PACKET_SIZE, 2 << 20));
  CHECK_OK(iocpsrv_set_option(srv, IOCPSRV_OPT_SEND_QUEUE_LIMIT, 64 << 20));
  CHECK_OK(iocpsrv_set_option(srv, IOCPSRV_OPT_SNDBUF, 32768)); /* partial writes */
  CHECK_OK(iocpsrv_set_connect_cb(srv, on_connect));
  CHECK_OK(iocpsrv_set_packet_cb(srv, on_packet));
  CHECK_OK(iocpsrv_listen(srv, "127.0.0.1", 0));
  return srv;
}

static void large_server_end(iocpsrv_t *srv, large_ctx_t *x) {
  CHECK_OK(iocpsrv_stop(srv, 1000));
  CHECK_OK(iocpsrv_destroy(srv));
  CHECK_EQ(x->errors, 0);
  free(x->payload);
  tt_counter_destroy(&x->connected);
}

/* Reads one packet and checks it against its seed; returns the seed. */
static uint32_t read_checked(ts_sock_t s, uint8_t *buf, size_t cap, size_t want_len) {
  size_t len;
  CHECK_OK(ts_recv_packet(s, buf, cap, &len, WAIT_MS));
  if (want_len != (size_t)-1) CHECK_EQ(len, want_len);
  CHECK_GE(len, 4);
  uint32_t seed = test_get_u32le(buf);
  CHECK_MSG(test_check_pattern(buf + 4, len - 4, seed) == (size_t)-1,
            "packet %u (%zu bytes) corrupted", seed, len);
  return seed;
}

static uint64_t framed_total(const size_t *sizes, int n) {
  uint64_t t = 0;
  for (int i = 0; i < n; i++) t += 4 + sizes[i];
  return t;
}

/* Own sends, large and small, to a client that reads slowly (small receive buffer):
 * all whole and in order, counted once each. */
static void large_sends_own_in_order(void) {
  large_ctx_t x;
  iocpsrv_t *srv = large_server(&x);
  ts_sock_t s = ts_connect_ex("127.0.0.1", iocpsrv_port(srv), WAIT_MS, 16384);
  CHECK(s != TS_INVALID);
  uint8_t *buf = malloc(2 << 20);
  for (int round = 0; round < 3; round++) {
    CHECK_OK(ts_send_packet(s, "go", 2));
    for (int i = 0; i < OWN_COUNT; i++)
      CHECK_EQ(read_checked(s, buf, 2 << 20, own_sizes[i]), (uint32_t)i);
  }
  /* Workers publish their byte counts once per batch, maybe just after the client
   * read the last byte: wait (bounded) for the totals, then they must be exact. */
  iocpsrv_stats_t st;
  st.struct_size = sizeof st;
  uint64_t want = 3 * framed_total(own_sizes, OWN_COUNT);
  int64_t end = tt_now_ms() + WAIT_MS;
  do {
    CHECK_OK(iocpsrv_stats(srv, &st));
    if (st.bytes_out >= want) break;
    tt_sleep_ms(1); /* no event tells a test that a worker published its counts */
  } while (tt_now_ms() < end);
  CHECK_EQ(st.packets_out, 3 * OWN_COUNT);
  CHECK_EQ(st.bytes_out, want);
  iocpsrv_conn_info_t info;
  info.struct_size = sizeof info;
  CHECK_OK(iocpsrv_conn_info(srv, x.conn, &info));
  CHECK_EQ(info.packets_out, 3 * OWN_COUNT);
  CHECK_EQ(info.pending_send_bytes, 0);
  free(buf);
  ts_close(s);
  large_server_end(srv, &x);
}

typedef struct other_sender_s {
  iocpsrv_t *srv;
  iocpsrv_conn_id_t conn;
  int count, errors;
} other_sender_t;

static void other_sender_main(void *arg) {
  other_sender_t *o = arg;
  uint8_t *p = malloc(100000);
  for (int i = 0; i < o->count; i++) {
    size_t len = 50000 + (size_t)i * 997;
    fill_packet(p, len, SEED_OTHER + (uint32_t)i);
    if (iocpsrv_send(o->srv, o->conn, p, len) != 0) o->errors++;
  }
  free(p);
}

/* Another thread sends large packets to the same connection while its own callback
 * does: each packet arrives whole, each sender's packets in its order. */
static void large_sends_with_another_thread(void) {
  large_ctx_t x;
  iocpsrv_t *srv = large_server(&x);
  ts_sock_t s = ts_connect_ex("127.0.0.1", iocpsrv_port(srv), WAIT_MS, 16384);
  CHECK(s != TS_INVALID);
  CHECK_OK(tt_counter_wait(&x.connected, 1, WAIT_MS));
  other_sender_t o = {srv, x.conn, 20, 0};
  tt_thread_t *t = tt_thread_start(other_sender_main, &o);
  CHECK_OK(ts_send_packet(s, "go", 2));
  CHECK_OK(ts_send_packet(s, "go", 2));
  uint8_t *buf = malloc(2 << 20);
  uint32_t next_own = 0, next_other = SEED_OTHER;
  for (int i = 0; i < 2 * OWN_COUNT + o.count; i++) {
    uint32_t seed = read_checked(s, buf, 2 << 20, (size_t)-1);
    if (seed >= SEED_OTHER) {
      CHECK_EQ(seed, next_other);
      next_other++;
    } else {
      CHECK_EQ(seed, next_own % OWN_COUNT);
      next_own++;
    }
  }
  tt_thread_join(t);
  CHECK_EQ(o.errors, 0);
  CHECK_EQ(next_own, 2 * OWN_COUNT);
  CHECK_EQ(next_other, SEED_OTHER + 20);
  free(buf);
  ts_close(s);
  large_server_end(srv, &x);
}

int main(int argc, char **argv) {
  test_init(argc, argv);
  TEST_RUN(large_sends_own_in_order);
  TEST_RUN(large_sends_with_another_thread);
  return test_done();
}
