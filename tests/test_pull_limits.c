/*
 * test_pull_limits.c -- pull mode at its edges: the queue limit holds within one packet
 * per worker (not one per connection), iocpsrv_poll before the first listen, a poll
 * that must not return 0 early when only internal end-of-stream marks are queued, and
 * a PROXY client that sends half a header and leaves (closed at once, as in callback
 * mode, not kept until the header timeout).
 *
 * The consumer is the test itself (no pump thread), so the queue fills for certain.
 */
#include <stdlib.h>
#include <string.h>

#include "echo.h"
#include "sock.h"
#include "test.h"
#include "thread.h"

#define CLIENTS 40
#define WORKERS 2

static iocpsrv_t *pull_server(int64_t limit, int proxy) {
  iocpsrv_t *srv = NULL;
  CHECK_OK(iocpsrv_create(&srv, NULL));
  CHECK_OK(iocpsrv_set_option(srv, IOCPSRV_OPT_PULL_MODE, 1));
  CHECK_OK(iocpsrv_set_option(srv, IOCPSRV_OPT_PULL_QUEUE_LIMIT, limit));
  CHECK_OK(iocpsrv_set_option(srv, IOCPSRV_OPT_WORKER_THREADS, WORKERS));
  if (proxy) {
    CHECK_OK(iocpsrv_set_option(srv, IOCPSRV_OPT_PROXY_PROTOCOL, IOCPSRV_PROXY_REQUIRED));
    CHECK_OK(iocpsrv_set_option_str(srv, IOCPSRV_OPT_PROXY_TRUSTED, "127.0.0.1"));
    CHECK_OK(iocpsrv_set_option(srv, IOCPSRV_OPT_CLOSE_TIMEOUT_MS, 5000));
  }
  CHECK_OK(iocpsrv_listen(srv, "127.0.0.1", 0));
  return srv;
}

static uint64_t queue_depth(iocpsrv_t *srv) {
  iocpsrv_stats_t st;
  memset(&st, 0, sizeof st);
  st.struct_size = sizeof st;
  CHECK_OK(iocpsrv_stats(srv, &st));
  return st.pull_queue_depth;
}

/* Waits until the queue depth has not changed for `quiet_ms` (the workers have stopped
 * adding), at most `max_ms`; returns the depth. */
static uint64_t settled_depth(iocpsrv_t *srv, int quiet_ms, int max_ms) {
  int64_t end = tt_now_ms() + max_ms, since = tt_now_ms();
  uint64_t last = queue_depth(srv);
  while (tt_now_ms() < end) {
    tt_sleep_ms(10); /* sampling a counter nobody signals: no event to wait on */
    uint64_t d = queue_depth(srv);
    if (d != last) {
      last = d;
      since = tt_now_ms();
    } else if (tt_now_ms() - since >= quiet_ms) {
      break;
    }
  }
  return last;
}

/* One client's packets: `packets` numbered payloads of `size` bytes, framed, sent in
 * writes of up to 64 KiB (many small packets reach the server in one receive). */
typedef struct sender_s {
  ts_sock_t s;
  size_t size;
  int packets;
  int rc;
} sender_t;

static void sender_main(void *arg) {
  sender_t *x = (sender_t *)arg;
  size_t frame = 4 + x->size, per_write = frame >= 65536 ? 1 : 65536 / frame;
  uint8_t *buf = (uint8_t *)malloc(frame * per_write);
  CHECK(buf != NULL);
  for (int i = 0; i < x->packets && x->rc == 0;) {
    size_t used = 0;
    for (size_t k = 0; k < per_write && i < x->packets; k++, i++) {
      test_put_u32le(buf + used, (uint32_t)x->size);
      memset(buf + used + 4, 'p', x->size);
      test_put_u32le(buf + used + 4, (uint32_t)i);
      used += frame;
    }
    x->rc = ts_send_all(x->s, buf, used);
  }
  free(buf);
}

/* Polls until every packet of every client came, checking their order. */
static void poll_all_in_order(iocpsrv_t *srv, int clients, size_t size, int packets) {
  uint32_t *next = (uint32_t *)calloc((size_t)clients, sizeof *next);
  iocpsrv_conn_id_t *ids = (iocpsrv_conn_id_t *)calloc((size_t)clients, sizeof *ids);
  CHECK(next && ids);
  int nids = 0, got = 0;
  iocpsrv_event_t ev[16];
  int64_t end = tt_now_ms() + 20000;
  while (got < clients * packets) {
    CHECK_MSG(tt_now_ms() < end, "only %d of %d packets polled", got, clients * packets);
    int n = iocpsrv_poll(srv, ev, 16, 100);
    CHECK_OK(n);
    for (int k = 0; k < n; k++) {
      if (ev[k].type == IOCPSRV_EVENT_CONNECT) {
        CHECK_LT(nids, clients);
        ids[nids++] = ev[k].conn;
      } else if (ev[k].type == IOCPSRV_EVENT_PACKET) {
        int j = 0;
        while (j < nids && ids[j] != ev[k].conn) j++;
        CHECK_MSG(j < nids, "a packet for a connection never announced");
        CHECK_EQ(ev[k].len, size);
        CHECK_EQ(test_get_u32le(ev[k].data), next[j]);
        next[j]++;
        got++;
      }
    }
  }
  free(next);
  free(ids);
}

/* `clients` clients each send `packets` packets of `size` bytes to a consumer that
 * does not poll yet: the queue must hold at most limit + one per worker packets (plus
 * the connect events, which are not counted against the limit). Then everything is
 * polled: every packet arrives, in order, nothing dropped, one disconnect each. */
static void limit_holds(int clients, size_t size, int packets, int limit) {
  iocpsrv_t *srv = pull_server(limit, 0);
  int port = iocpsrv_port(srv);
  sender_t *x = (sender_t *)calloc((size_t)clients, sizeof *x);
  tt_thread_t **th = (tt_thread_t **)calloc((size_t)clients, sizeof *th);
  CHECK(x && th);
  for (int i = 0; i < clients; i++) {
    x[i].size = size;
    x[i].packets = packets;
    x[i].s = ts_connect("127.0.0.1", port, TS_WAIT_MS);
    CHECK(x[i].s != TS_INVALID);
  }
  for (int i = 0; i < clients; i++) th[i] = tt_thread_start(sender_main, &x[i]);
  uint64_t depth = settled_depth(srv, 300, 5000);
  printf("  %zu-byte packets, limit %d: %llu events queued with the consumer away "
         "(%d connects + packets)\n",
         size, limit, (unsigned long long)depth, clients);
  CHECK_MSG(depth <= (uint64_t)(clients + limit + WORKERS),
            "%llu events queued: %llu packets past a limit of %d with %d workers",
            (unsigned long long)depth, (unsigned long long)(depth - (uint64_t)clients),
            limit, WORKERS);
  poll_all_in_order(srv, clients, size, packets);
  for (int i = 0; i < clients; i++) {
    tt_thread_join(th[i]);
    CHECK_EQ(x[i].rc, 0);
    ts_close(x[i].s);
  }
  CHECK_OK(iocpsrv_stop(srv, 1000));
  int disconnects = 0;
  iocpsrv_event_t ev[16];
  for (;;) {
    int n = iocpsrv_poll(srv, ev, 16, 1000);
    if (n == IOCPSRV_ESTOPPED) break;
    CHECK_OK(n);
    for (int k = 0; k < n; k++) disconnects += ev[k].type == IOCPSRV_EVENT_DISCONNECT;
  }
  CHECK_EQ(disconnects, clients);
  free(x);
  free(th);
  CHECK_OK(iocpsrv_destroy(srv));
}

/* 40 clients, 10 packets of 32 KiB each, a limit of 4 packets. The queue used to hold
 * one packet per connection beyond the limit (42 packets, 1.3 MiB). */
static void pull_limit_holds_within_one_packet_per_worker(void) {
  limit_holds(CLIENTS, 32768, 10, 4);
}

/* 8 clients, 20,000 packets of 10 bytes each, thousands to a receive, a limit of 100:
 * the workers queue a receive's packets together (in batches of up to 64 reserved
 * ahead), and the limit still holds within one packet per worker. */
static void pull_limit_holds_for_batched_small_packets(void) {
  limit_holds(8, 10, 20000, 100);
}

/* Before the first listen there is nothing to wait for: IOCPSRV_ESTOPPED at once, with
 * any timeout (it used to return 0, or wait forever with -1). */
static void pull_poll_before_listen_is_stopped(void) {
  iocpsrv_t *srv = NULL;
  CHECK_OK(iocpsrv_create(&srv, NULL));
  CHECK_OK(iocpsrv_set_option(srv, IOCPSRV_OPT_PULL_MODE, 1));
  iocpsrv_event_t ev[4];
  int64_t t0 = tt_now_ms();
  CHECK_ERR(iocpsrv_poll(srv, ev, 4, 0), IOCPSRV_ESTOPPED);
  CHECK_ERR(iocpsrv_poll(srv, ev, 4, 2000), IOCPSRV_ESTOPPED);
  CHECK_LT(tt_now_ms() - t0, 1000);
  CHECK_OK(iocpsrv_destroy(srv));
}

/* A client sends a packet, the consumer takes it, then the client half-closes: all the
 * queue holds is the internal end-of-stream mark. A poll with no timeout must wait for
 * the real next event (the disconnect), never return 0. */
static void pull_poll_forever_skips_end_of_stream_marks(void) {
  iocpsrv_t *srv = pull_server(64, 0);
  ts_sock_t s = ts_connect("127.0.0.1", iocpsrv_port(srv), TS_WAIT_MS);
  CHECK(s != TS_INVALID);
  CHECK_EQ(ts_send_packet(s, "hi", 2), 0);
  iocpsrv_event_t ev[8];
  int got_packet = 0;
  while (!got_packet) {
    int n = iocpsrv_poll(srv, ev, 8, TS_WAIT_MS);
    CHECK_GT(n, 0);
    for (int k = 0; k < n; k++) got_packet |= ev[k].type == IOCPSRV_EVENT_PACKET;
  }
  CHECK_EQ(ts_shutdown_write(s), 0);
  int n = iocpsrv_poll(srv, ev, 8, -1);
  CHECK_MSG(n > 0, "poll(-1) returned %d with only an end-of-stream mark queued", n);
  CHECK_EQ(ev[0].type, IOCPSRV_EVENT_DISCONNECT);
  CHECK_EQ(ev[0].reason, IOCPSRV_REASON_PEER_CLOSED);
  CHECK_EQ(ts_wait_close(s, TS_WAIT_MS, NULL), TS_EOF);
  ts_close(s);
  CHECK_OK(iocpsrv_stop(srv, 1000));
  CHECK_ERR(iocpsrv_poll(srv, ev, 8, 1000), IOCPSRV_ESTOPPED);
  CHECK_OK(iocpsrv_destroy(srv));
}

/* PROXY mode: half a header, then the client leaves. The host never met it, so it is
 * closed at once (as in callback mode), not kept for the header timeout. */
static void pull_proxy_half_header_then_close_frees_the_slot(void) {
  iocpsrv_t *srv = pull_server(64, 1);
  ts_sock_t s = ts_connect("127.0.0.1", iocpsrv_port(srv), TS_WAIT_MS);
  CHECK(s != TS_INVALID);
  const char *half = "PROXY TCP4 1.2";
  CHECK_EQ(ts_send_all(s, half, strlen(half)), 0);
  int64_t t0 = tt_now_ms();
  while (1) {
    iocpsrv_stats_t st;
    memset(&st, 0, sizeof st);
    st.struct_size = sizeof st;
    CHECK_OK(iocpsrv_stats(srv, &st));
    if (st.connections_now == 1) break;
    CHECK_MSG(tt_now_ms() - t0 < TS_WAIT_MS, "the client was never accepted");
    tt_sleep_ms(1);
  }
  ts_close(s);
  t0 = tt_now_ms();
  for (;;) {
    iocpsrv_stats_t st;
    memset(&st, 0, sizeof st);
    st.struct_size = sizeof st;
    CHECK_OK(iocpsrv_stats(srv, &st));
    if (st.connections_now == 0) break;
    CHECK_MSG(tt_now_ms() - t0 < 1000, "a half-header client that left still holds its slot "
              "after %lld ms", (long long)(tt_now_ms() - t0));
    tt_sleep_ms(2); /* polling a counter: the host gets no event for this client */
  }
  iocpsrv_event_t ev[4];
  CHECK_EQ(iocpsrv_poll(srv, ev, 4, 0), 0); /* nothing for the host: it never met it */
  CHECK_OK(iocpsrv_stop(srv, 1000));
  CHECK_OK(iocpsrv_destroy(srv));
}

/* PROXY mode: the header and 300 packets in one write. The packets after the header
 * are queued from the receive that completed it (conn_read_proxy, through a pull
 * batch): the CONNECT carries the header's address and comes first, every packet
 * follows in order, and the limit holds there too. */
static void pull_proxy_header_and_packets_in_one_receive(void) {
  enum { N = 300, LIMIT = 16 };
  iocpsrv_t *srv = pull_server(LIMIT, 1);
  ts_sock_t s = ts_connect("127.0.0.1", iocpsrv_port(srv), TS_WAIT_MS);
  CHECK(s != TS_INVALID);
  static const char hdr[] = "PROXY TCP4 10.1.2.3 10.0.0.1 4444 80\r\n";
  size_t hlen = sizeof hdr - 1;
  uint8_t *buf = (uint8_t *)malloc(hlen + N * 8);
  CHECK(buf != NULL);
  memcpy(buf, hdr, hlen);
  for (int i = 0; i < N; i++) {
    test_put_u32le(buf + hlen + i * 8, 4);
    test_put_u32le(buf + hlen + i * 8 + 4, (uint32_t)i);
  }
  CHECK_EQ(ts_send_all(s, buf, hlen + N * 8), 0);
  free(buf);
  uint64_t depth = settled_depth(srv, 300, 5000);
  CHECK_LE(depth, 1 + LIMIT + WORKERS); /* the connect, the limit, one per worker */
  iocpsrv_event_t ev[16];
  int64_t end = tt_now_ms() + TS_WAIT_MS;
  int connected = 0;
  uint32_t next = 0;
  while (next < N) {
    CHECK_MSG(tt_now_ms() < end, "only %u of %d packets", next, N);
    int n = iocpsrv_poll(srv, ev, 16, 100);
    CHECK_OK(n);
    for (int k = 0; k < n; k++) {
      if (ev[k].type == IOCPSRV_EVENT_CONNECT) {
        CHECK(!connected);
        CHECK_STREQ((const char *)ev[k].data, "10.1.2.3:4444");
        connected = 1;
        continue;
      }
      CHECK(connected);
      CHECK_EQ(ev[k].type, IOCPSRV_EVENT_PACKET);
      CHECK_EQ(test_get_u32le(ev[k].data), next);
      next++;
    }
  }
  ts_close(s);
  int n = iocpsrv_poll(srv, ev, 16, TS_WAIT_MS);
  CHECK_EQ(n, 1);
  CHECK_EQ(ev[0].type, IOCPSRV_EVENT_DISCONNECT);
  CHECK_OK(iocpsrv_stop(srv, 1000));
  CHECK_OK(iocpsrv_destroy(srv));
}

int main(int argc, char **argv) {
  test_init(argc, argv);
  TEST_RUN(pull_limit_holds_within_one_packet_per_worker);
  TEST_RUN(pull_limit_holds_for_batched_small_packets);
  TEST_RUN(pull_poll_before_listen_is_stopped);
  TEST_RUN(pull_poll_forever_skips_end_of_stream_marks);
  TEST_RUN(pull_proxy_half_header_then_close_frees_the_slot);
  TEST_RUN(pull_proxy_header_and_packets_in_one_receive);
  return test_done();
}
