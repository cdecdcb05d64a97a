/*
 * test_fault_paths.c -- failure paths, one at a time, with the fault-injection build
 * (dll/src/core/fault.h):
 *   - pull mode when memory runs out: a packet, connect or drain event that cannot be
 *     queued used to vanish (a connect without disconnect, a packet lost without a
 *     trace). Now the connection is aborted with IOCPSRV_REASON_OUT_OF_MEMORY and still
 *     gets its one DISCONNECT, or, when its CONNECT cannot be queued, the host never
 *     hears of it;
 *   - the log callback is never called with an engine lock held: a log callback that
 *     calls back into the API (connections, conn_info, stats, broadcast) while the
 *     failure paths that log fire (epoll_ctl failing for a new client, a send queue
 *     that cannot grow at the end of a callback) used to deadlock.
 */
#include <stdlib.h>
#include <string.h>

#include "core/fault.h"
#include "sock.h"
#include "test.h"
#include "thread.h"

static iocpsrv_t *pull_server(void) {
  iocpsrv_t *srv = NULL;
  CHECK_OK(iocpsrv_create(&srv, NULL));
  CHECK_OK(iocpsrv_set_option(srv, IOCPSRV_OPT_PULL_MODE, 1));
  CHECK_OK(iocpsrv_set_option(srv, IOCPSRV_OPT_WORKER_THREADS, 2));
  CHECK_OK(iocpsrv_listen(srv, "127.0.0.1", 0));
  return srv;
}

/* Polls until an event of `type` for `conn` (0: any connection) arrives; returns it. */
static iocpsrv_event_t poll_for(iocpsrv_t *srv, int type, iocpsrv_conn_id_t conn) {
  iocpsrv_event_t ev[8];
  int64_t end = tt_now_ms() + TS_WAIT_MS;
  for (;;) {
    CHECK_MSG(tt_now_ms() < end, "no event of type %d within %d ms", type, TS_WAIT_MS);
    int n = iocpsrv_poll(srv, ev, 8, 100);
    CHECK_OK(n);
    for (int i = 0; i < n; i++)
      if (ev[i].type == type && (!conn || ev[i].conn == conn)) return ev[i];
  }
}

static uint64_t stat_alloc_failures(iocpsrv_t *srv) {
  iocpsrv_stats_t st;
  memset(&st, 0, sizeof st);
  st.struct_size = sizeof st;
  CHECK_OK(iocpsrv_stats(srv, &st));
  return st.alloc_failures;
}

/* The packet event cannot be queued: the connection ends with OUT_OF_MEMORY, and its
 * DISCONNECT still comes (it was set aside when it connected). */
static void fault_pull_packet_nomem_still_disconnects(void) {
  iocpsrv_t *srv = pull_server();
  ts_sock_t s = ts_connect("127.0.0.1", iocpsrv_port(srv), TS_WAIT_MS);
  CHECK(s != TS_INVALID);
  iocpsrv_event_t con = poll_for(srv, IOCPSRV_EVENT_CONNECT, 0);
  iocpsrv_fault_arm(FAULT_ALLOC, 1, 1); /* every allocation fails from now */
  CHECK_EQ(ts_send_packet(s, "lost?", 5), 0);
  iocpsrv_event_t ev[8];
  int64_t end = tt_now_ms() + TS_WAIT_MS;
  int n = 0;
  while (n == 0) { /* nothing may arrive but the disconnect */
    CHECK_MSG(tt_now_ms() < end, "no disconnect after a packet that could not be queued");
    n = iocpsrv_poll(srv, ev, 8, 100);
    CHECK_OK(n);
  }
  iocpsrv_fault_arm(FAULT_ALLOC, 0, 0);
  CHECK_EQ(n, 1);
  CHECK_EQ(ev[0].type, IOCPSRV_EVENT_DISCONNECT);
  CHECK_EQ(ev[0].conn, con.conn);
  CHECK_EQ(ev[0].reason, IOCPSRV_REASON_OUT_OF_MEMORY);
  CHECK_GE(stat_alloc_failures(srv), 1);
  int rc = ts_wait_close(s, TS_WAIT_MS, NULL);
  CHECK(rc == TS_EOF || rc == TS_RESET);
  ts_close(s);
  /* The server goes on. */
  ts_sock_t s2 = ts_connect("127.0.0.1", iocpsrv_port(srv), TS_WAIT_MS);
  CHECK(s2 != TS_INVALID);
  CHECK_EQ(ts_send_packet(s2, "ok", 2), 0);
  iocpsrv_event_t pkt = poll_for(srv, IOCPSRV_EVENT_PACKET, 0);
  CHECK_EQ(pkt.len, 2);
  ts_close(s2);
  poll_for(srv, IOCPSRV_EVENT_DISCONNECT, pkt.conn);
  CHECK_OK(iocpsrv_stop(srv, 1000));
  CHECK_OK(iocpsrv_destroy(srv));
}

/* Its CONNECT cannot be queued: the client is closed and the host never hears of it
 * (no packet, no disconnect for an id it never saw). */
static void fault_pull_connect_nomem_is_never_seen(void) {
  iocpsrv_t *srv = pull_server();
  iocpsrv_fault_arm(FAULT_ALLOC, 1, 1);
  ts_sock_t s = ts_connect("127.0.0.1", iocpsrv_port(srv), TS_WAIT_MS);
  CHECK(s != TS_INVALID);
  ts_send_packet(s, "x", 1); /* may fail: the server may have closed it already */
  int rc = ts_wait_close(s, TS_WAIT_MS, NULL);
  iocpsrv_fault_arm(FAULT_ALLOC, 0, 0);
  CHECK_MSG(rc == TS_EOF || rc == TS_RESET, "the client was not closed: %s", ts_strerror(rc));
  ts_close(s);
  CHECK_GE(stat_alloc_failures(srv), 1);
  iocpsrv_event_t ev[8];
  CHECK_EQ(iocpsrv_poll(srv, ev, 8, 50), 0); /* nothing at all for the host */
  ts_sock_t s2 = ts_connect("127.0.0.1", iocpsrv_port(srv), TS_WAIT_MS);
  CHECK(s2 != TS_INVALID);
  iocpsrv_event_t con = poll_for(srv, IOCPSRV_EVENT_CONNECT, 0);
  ts_close(s2);
  poll_for(srv, IOCPSRV_EVENT_DISCONNECT, con.conn);
  CHECK_OK(iocpsrv_stop(srv, 1000));
  CHECK_OK(iocpsrv_destroy(srv));
}

/* `count` numbered 4-byte packets (framed: 8 bytes each) in one write. */
static void send_numbered(ts_sock_t s, int count) {
  uint8_t *buf = (uint8_t *)malloc((size_t)count * 8);
  CHECK(buf != NULL);
  for (int i = 0; i < count; i++) {
    test_put_u32le(buf + i * 8, 4);
    test_put_u32le(buf + i * 8 + 4, (uint32_t)i);
  }
  CHECK_EQ(ts_send_all(s, buf, (size_t)count * 8), 0);
  free(buf);
}

/* Memory runs out in the middle of a receive whose packets the worker queues together
 * (a pull batch, with room reserved ahead and nodes reused): the packets before the
 * failure come, in order, then the DISCONNECT (OUT_OF_MEMORY), nothing after it. The
 * room the batch reserved is given back: a later client sends many times the queue
 * limit and every packet arrives. */
static void fault_pull_nomem_in_the_middle_of_a_batch(void) {
  iocpsrv_t *srv = NULL;
  CHECK_OK(iocpsrv_create(&srv, NULL));
  CHECK_OK(iocpsrv_set_option(srv, IOCPSRV_OPT_PULL_MODE, 1));
  CHECK_OK(iocpsrv_set_option(srv, IOCPSRV_OPT_PULL_QUEUE_LIMIT, 64));
  CHECK_OK(iocpsrv_set_option(srv, IOCPSRV_OPT_WORKER_THREADS, 2));
  CHECK_OK(iocpsrv_listen(srv, "127.0.0.1", 0));
  ts_sock_t s = ts_connect("127.0.0.1", iocpsrv_port(srv), TS_WAIT_MS);
  CHECK(s != TS_INVALID);
  iocpsrv_conn_id_t a = poll_for(srv, IOCPSRV_EVENT_CONNECT, 0).conn;
  iocpsrv_fault_arm(FAULT_ALLOC, 10, 0); /* one failure, a few nodes into the batch */
  send_numbered(s, 200);
  iocpsrv_event_t ev[16];
  int64_t end = tt_now_ms() + TS_WAIT_MS;
  uint32_t next = 0;
  int done = 0;
  while (!done) {
    CHECK_MSG(tt_now_ms() < end, "no disconnect after %u packets", next);
    int n = iocpsrv_poll(srv, ev, 16, 100);
    CHECK_OK(n);
    for (int i = 0; i < n; i++) {
      CHECK(!done); /* nothing after the disconnect */
      CHECK_EQ(ev[i].conn, a);
      if (ev[i].type == IOCPSRV_EVENT_DISCONNECT) {
        CHECK_EQ(ev[i].reason, IOCPSRV_REASON_OUT_OF_MEMORY);
        done = 1;
        continue;
      }
      CHECK_EQ(ev[i].type, IOCPSRV_EVENT_PACKET);
      CHECK_EQ(ev[i].len, 4);
      CHECK_EQ(test_get_u32le(ev[i].data), next);
      next++;
    }
  }
  CHECK_EQ(iocpsrv_fault_failures(FAULT_ALLOC), 1);
  iocpsrv_fault_arm(FAULT_ALLOC, 0, 0);
  printf("  %u packets before the failure\n", next);
  CHECK_LT(next, 200);
  CHECK_EQ(iocpsrv_poll(srv, ev, 16, 50), 0);
  ts_close(s);

  ts_sock_t s2 = ts_connect("127.0.0.1", iocpsrv_port(srv), TS_WAIT_MS);
  CHECK(s2 != TS_INVALID);
  iocpsrv_conn_id_t b = poll_for(srv, IOCPSRV_EVENT_CONNECT, 0).conn;
  enum { MANY = 64 * 40 };
  send_numbered(s2, MANY);
  end = tt_now_ms() + TS_WAIT_MS;
  next = 0;
  while (next < MANY) {
    CHECK_MSG(tt_now_ms() < end, "only %u of %d packets after the failure", next, MANY);
    int n = iocpsrv_poll(srv, ev, 16, 100);
    CHECK_OK(n);
    for (int i = 0; i < n; i++) {
      CHECK_EQ(ev[i].conn, b);
      CHECK_EQ(ev[i].type, IOCPSRV_EVENT_PACKET);
      CHECK_EQ(test_get_u32le(ev[i].data), next);
      next++;
    }
  }
  ts_close(s2);
  poll_for(srv, IOCPSRV_EVENT_DISCONNECT, b);
  CHECK_OK(iocpsrv_stop(srv, 1000));
  CHECK_OK(iocpsrv_destroy(srv));
}

/* ---- the log callback may call the API while failure paths log ---- */

typedef struct logctx_s {
  tt_counter_t lines;
  tt_counter_t packets;
  tt_counter_t disconnects;
  tt_counter_t connects;
  iocpsrv_conn_id_t last_conn;
  int big_sent;
} logctx_t;

/* Everything contract point 5 allows from any callback, the log callback included. */
static void IOCPSRV_CALL api_log(iocpsrv_t *srv, int level, const char *msg) {
  logctx_t *x = (logctx_t *)iocpsrv_user_data(srv);
  (void)level;
  iocpsrv_fault_arm(FAULT_ALLOC, 0, 0); /* the failure has been reported: stop failing */
  iocpsrv_conn_id_t ids[64];
  CHECK_OK(iocpsrv_connections(srv, ids, 64));
  iocpsrv_stats_t st;
  memset(&st, 0, sizeof st);
  st.struct_size = sizeof st;
  CHECK_OK(iocpsrv_stats(srv, &st));
  iocpsrv_conn_info_t info;
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  if (x->last_conn) iocpsrv_conn_info(srv, x->last_conn, &info);
  iocpsrv_broadcast(srv, "log", 3);
  printf("  log: %s\n", msg);
  tt_counter_add(&x->lines, 1);
}

static int IOCPSRV_CALL log_connect(iocpsrv_t *srv, iocpsrv_conn_id_t id, const char *peer,
                                    void **user) {
  logctx_t *x = (logctx_t *)iocpsrv_user_data(srv);
  (void)peer, (void)user;
  x->last_conn = id;
  tt_counter_add(&x->connects, 1);
  return 0;
}

/* Framed: exactly the 8 MiB the buffer doubles to, so the next append must grow it (the
 * kernel takes far less than half of it, so sliding the rest to the front is no
 * option either). */
#define BIG ((8 << 20) - 4)
#ifdef _WIN32
#  define ARM_AT '3'
#else
#  define ARM_AT '2'
#endif
static const char FILLER[1020] = "filler";

/* The first packet queues 1 MiB that the client does not read (the queue stays busy);
 * the second queues a little more and then makes every allocation fail, so the queue
 * cannot grow when the callback's sends join it at the end of the turn. */
static int IOCPSRV_CALL log_packet(iocpsrv_t *srv, iocpsrv_conn_id_t id, void *user,
                                   const uint8_t *data, size_t len) {
  logctx_t *x = (logctx_t *)iocpsrv_user_data(srv);
  (void)user, (void)data, (void)len;
  if (!x->big_sent) {
    uint8_t *big = (uint8_t *)calloc(1, BIG);
    CHECK(big != NULL);
    x->big_sent = 1;
    /* Gathered from two pieces: a large one-piece send to an idle connection would be
     * written straight from `big` (Linux), and only what the kernel leaves queued,
     * in a buffer of another size; this test needs the queue's own growth path. */
    iocpsrv_buf_t pieces[2] = {{big, BIG - 1}, {big + BIG - 1, 1}};
    CHECK_OK(iocpsrv_sendv(srv, id, pieces, 2));
    free(big);
  } else {
    /* IOCP moves the queue into the outstanding WSASend's buffer, so the queue the
     * next sends join is empty there: one more turn fills it (1 KiB, the size a new
     * buffer starts with) so that the turn after it must grow it. */
    int arm = data[0] == ARM_AT;
    CHECK_OK(iocpsrv_send(srv, id, FILLER, arm ? 5 : 1020));
    if (arm) iocpsrv_fault_arm(FAULT_ALLOC, 1, 1);
  }
  tt_counter_add(&x->packets, 1);
  return 0;
}

static void IOCPSRV_CALL log_disconnect(iocpsrv_t *srv, iocpsrv_conn_id_t id, void *user,
                                        int reason) {
  logctx_t *x = (logctx_t *)iocpsrv_user_data(srv);
  (void)id, (void)user, (void)reason;
  tt_counter_add(&x->disconnects, 1);
}

static iocpsrv_t *log_server(logctx_t *x) {
  memset(x, 0, sizeof *x);
  tt_counter_init(&x->lines);
  tt_counter_init(&x->packets);
  tt_counter_init(&x->disconnects);
  tt_counter_init(&x->connects);
  iocpsrv_t *srv = NULL;
  CHECK_OK(iocpsrv_create(&srv, x));
  CHECK_OK(iocpsrv_set_log_cb(srv, api_log));
  CHECK_OK(iocpsrv_set_connect_cb(srv, log_connect));
  CHECK_OK(iocpsrv_set_packet_cb(srv, log_packet));
  CHECK_OK(iocpsrv_set_disconnect_cb(srv, log_disconnect));
  CHECK_OK(iocpsrv_set_option(srv, IOCPSRV_OPT_SNDBUF, 65536));
  CHECK_OK(iocpsrv_set_option(srv, IOCPSRV_OPT_MAX_PACKET_SIZE, 16 << 20));
  CHECK_OK(iocpsrv_set_option(srv, IOCPSRV_OPT_SEND_QUEUE_LIMIT, 64 << 20));
  CHECK_OK(iocpsrv_listen(srv, "127.0.0.1", 0));
  return srv;
}

static void log_server_free(iocpsrv_t *srv, logctx_t *x) {
  CHECK_OK(iocpsrv_stop(srv, 1000));
  CHECK_EQ(tt_counter_get(&x->connects), tt_counter_get(&x->disconnects));
  CHECK_OK(iocpsrv_destroy(srv));
  tt_counter_destroy(&x->lines);
  tt_counter_destroy(&x->packets);
  tt_counter_destroy(&x->disconnects);
  tt_counter_destroy(&x->connects);
}

/* The send queue cannot grow at the end of a turn: the connection is aborted with
 * OUT_OF_MEMORY and the log line is written with no lock held. */
static void fault_log_callback_may_call_api_when_queue_cannot_grow(void) {
  logctx_t x;
  iocpsrv_t *srv = log_server(&x);
  ts_sock_t s = ts_connect_ex("127.0.0.1", iocpsrv_port(srv), TS_WAIT_MS, 16384);
  CHECK(s != TS_INVALID);
  CHECK_EQ(ts_send_packet(s, "1", 1), 0);
  CHECK_EQ(tt_counter_wait(&x.packets, 1, TS_WAIT_MS), 0);
  /* The turn that ran the first callback must be over (its sends joined the queue),
   * or "2" would be read in the same turn and join an empty queue. */
  int64_t end = tt_now_ms() + TS_WAIT_MS;
  while (iocpsrv_pending_bytes(srv, x.last_conn) <= 0) {
    CHECK_MSG(tt_now_ms() < end, "the 8 MiB send never reached the queue");
    tt_sleep_ms(1); /* no event tells a test thread that a turn ended */
  }
  for (char p = '2'; p <= ARM_AT; p++) {
    int64_t before = iocpsrv_pending_bytes(srv, x.last_conn);
    CHECK_EQ(ts_send_packet(s, &p, 1), 0);
    if (p == ARM_AT) break;
    /* ...and so must the turn of each packet before the last. */
    while (iocpsrv_pending_bytes(srv, x.last_conn) <= before) {
      CHECK_MSG(tt_now_ms() < end, "packet %c's send never reached the queue", p);
      tt_sleep_ms(1);
    }
  }
  CHECK_MSG(tt_counter_wait(&x.lines, 1, TS_WAIT_MS) == 0,
            "no log line: the out-of-memory path did not run (or deadlocked)");
  CHECK_EQ(tt_counter_wait(&x.disconnects, 1, TS_WAIT_MS), 0);
  ts_close(s);
  log_server_free(srv, &x);
}

#ifndef _WIN32
/* epoll_ctl fails for a new client: logged with no lock held, the client is closed
 * before the host meets it, and the next client is served. */
static void fault_log_callback_may_call_api_when_watch_fails(void) {
  logctx_t x;
  iocpsrv_t *srv = log_server(&x);
  iocpsrv_fault_arm(FAULT_EPOLL_CTL, 1, 0);
  /* The server resets this client at once: the reset may even beat the end of our
   * connect, which then fails. */
  ts_sock_t s = ts_connect("127.0.0.1", iocpsrv_port(srv), TS_WAIT_MS);
  CHECK_MSG(tt_counter_wait(&x.lines, 1, TS_WAIT_MS) == 0, "no log line (or a deadlock)");
  if (s != TS_INVALID) {
    int rc = ts_wait_close(s, TS_WAIT_MS, NULL);
    CHECK(rc == TS_EOF || rc == TS_RESET);
    ts_close(s);
  }
  CHECK_EQ(tt_counter_get(&x.connects), 0); /* the host never met it */
  iocpsrv_fault_arm(FAULT_EPOLL_CTL, 0, 0);
  ts_sock_t s2 = ts_connect("127.0.0.1", iocpsrv_port(srv), TS_WAIT_MS);
  CHECK(s2 != TS_INVALID);
  CHECK_EQ(ts_send_packet(s2, "1", 1), 0);
  CHECK_EQ(tt_counter_wait(&x.packets, 1, TS_WAIT_MS), 0);
  ts_close(s2);
  CHECK_EQ(tt_counter_wait(&x.disconnects, 1, TS_WAIT_MS), 0);
  log_server_free(srv, &x);
}
#endif

int main(int argc, char **argv) {
  test_init(argc, argv);
  TEST_RUN(fault_pull_packet_nomem_still_disconnects);
  TEST_RUN(fault_pull_connect_nomem_is_never_seen);
  TEST_RUN(fault_pull_nomem_in_the_middle_of_a_batch);
  TEST_RUN(fault_log_callback_may_call_api_when_queue_cannot_grow);
#ifndef _WIN32
  TEST_RUN(fault_log_callback_may_call_api_when_watch_fails);
#endif
  return test_done();
}
