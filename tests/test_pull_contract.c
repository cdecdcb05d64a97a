/*
 * test_pull_contract.c -- pull mode keeps the callback contract in C: events already
 * queued for a connection obey the host's later calls.
 *   - after iocpsrv_disconnect returns, no queued packet of it is handed out (its
 *     DISCONNECT still comes);
 *   - after iocpsrv_pause_receive, its queued packets wait, in order, until
 *     iocpsrv_resume_receive; a connection that ends paused never hands them out;
 *   - IOCPSRV_CLOSE_REFUSE: nothing more at all, not even the DISCONNECT, and the
 *     refusal is counted; in callback mode the same from a packet callback.
 * The consumer is the test itself: it polls one event at a time, so packets sit in
 * the queue when it acts.
 */
#include <stdlib.h>
#include <string.h>

#include "sock.h"
#include "test.h"
#include "thread.h"

#define PACKETS 10

static iocpsrv_t *pull_server(void) {
  iocpsrv_t *srv = NULL;
  CHECK_OK(iocpsrv_create(&srv, NULL));
  CHECK_OK(iocpsrv_set_option(srv, IOCPSRV_OPT_PULL_MODE, 1));
  CHECK_OK(iocpsrv_listen(srv, "127.0.0.1", 0));
  return srv;
}

static uint64_t depth(iocpsrv_t *srv) {
  iocpsrv_stats_t st;
  memset(&st, 0, sizeof st);
  st.struct_size = sizeof st;
  CHECK_OK(iocpsrv_stats(srv, &st));
  return st.pull_queue_depth;
}

/* Waits (bounded) until at least `n` events are queued. */
static void wait_depth(iocpsrv_t *srv, uint64_t n) {
  int64_t end = tt_now_ms() + TS_WAIT_MS;
  while (depth(srv) < n) {
    CHECK_MSG(tt_now_ms() < end, "only %llu of %llu events queued",
              (unsigned long long)depth(srv), (unsigned long long)n);
    tt_sleep_ms(1); /* a queue depth has no event to wait on */
  }
}

static iocpsrv_event_t poll_one(iocpsrv_t *srv, int timeout_ms) {
  iocpsrv_event_t ev;
  int n = iocpsrv_poll(srv, &ev, 1, timeout_ms);
  CHECK_MSG(n == 1, "poll returned %d", n);
  return ev;
}

/* A client that sends PACKETS numbered packets; returns its socket. */
static ts_sock_t client_sending(iocpsrv_t *srv, int first, int count) {
  ts_sock_t s = ts_connect("127.0.0.1", iocpsrv_port(srv), TS_WAIT_MS);
  CHECK(s != TS_INVALID);
  for (int i = first; i < first + count; i++) {
    uint8_t p[4];
    test_put_u32le(p, (uint32_t)i);
    CHECK_EQ(ts_send_packet(s, p, 4), 0);
  }
  return s;
}

static void stop_and_destroy(iocpsrv_t *srv) {
  CHECK_OK(iocpsrv_stop(srv, 1000));
  iocpsrv_event_t ev[8];
  while (iocpsrv_poll(srv, ev, 8, 1000) > 0) {
  }
  CHECK_OK(iocpsrv_destroy(srv));
}

static void pull_disconnect_drops_queued_packets(void) {
  iocpsrv_t *srv = pull_server();
  ts_sock_t s = client_sending(srv, 0, PACKETS);
  wait_depth(srv, 1 + PACKETS);
  iocpsrv_event_t con = poll_one(srv, TS_WAIT_MS);
  CHECK_EQ(con.type, IOCPSRV_EVENT_CONNECT);
  CHECK_OK(iocpsrv_disconnect(srv, con.conn, IOCPSRV_CLOSE_GRACEFUL));
  iocpsrv_event_t ev = poll_one(srv, TS_WAIT_MS);
  CHECK_MSG(ev.type == IOCPSRV_EVENT_DISCONNECT,
            "event type %d for a connection the host disconnected (4-byte packet %u?)",
            ev.type, ev.len == 4 ? test_get_u32le(ev.data) : 0);
  CHECK_EQ(ev.conn, con.conn);
  CHECK_EQ(ev.reason, IOCPSRV_REASON_LOCAL_CLOSE);
  ts_close(s);
  stop_and_destroy(srv);
}

static void pull_pause_holds_queued_packets_in_order(void) {
  iocpsrv_t *srv = pull_server();
  ts_sock_t s = client_sending(srv, 0, PACKETS);
  wait_depth(srv, 1 + PACKETS);
  iocpsrv_event_t con = poll_one(srv, TS_WAIT_MS);
  CHECK_EQ(con.type, IOCPSRV_EVENT_CONNECT);
  iocpsrv_event_t first = poll_one(srv, TS_WAIT_MS);
  CHECK_EQ(first.type, IOCPSRV_EVENT_PACKET);
  CHECK_EQ(test_get_u32le(first.data), 0);
  CHECK_OK(iocpsrv_pause_receive(srv, con.conn));
  for (int i = PACKETS; i < PACKETS + 5; i++) { /* more while paused */
    uint8_t p[4];
    test_put_u32le(p, (uint32_t)i);
    CHECK_EQ(ts_send_packet(s, p, 4), 0);
  }
  iocpsrv_event_t ev[4];
  int n = iocpsrv_poll(srv, ev, 4, 200);
  CHECK_MSG(n == 0, "%d event(s) (type %d) handed out for a paused connection", n,
            n > 0 ? ev[0].type : 0);
  CHECK_OK(iocpsrv_resume_receive(srv, con.conn));
  for (uint32_t want = 1; want < PACKETS + 5; want++) {
    iocpsrv_event_t p = poll_one(srv, TS_WAIT_MS);
    CHECK_EQ(p.type, IOCPSRV_EVENT_PACKET);
    CHECK_EQ(p.conn, con.conn);
    CHECK_EQ(test_get_u32le(p.data), want);
  }
  ts_close(s);
  iocpsrv_event_t d = poll_one(srv, TS_WAIT_MS);
  CHECK_EQ(d.type, IOCPSRV_EVENT_DISCONNECT);
  stop_and_destroy(srv);
}

/* Paused, then disconnected: what it held is never handed out, its DISCONNECT is. */
static void pull_pause_then_disconnect(void) {
  iocpsrv_t *srv = pull_server();
  ts_sock_t s = client_sending(srv, 0, PACKETS);
  wait_depth(srv, 1 + PACKETS);
  iocpsrv_event_t con = poll_one(srv, TS_WAIT_MS);
  CHECK_OK(iocpsrv_pause_receive(srv, con.conn));
  CHECK_EQ(depth(srv), 0);
  CHECK_OK(iocpsrv_disconnect(srv, con.conn, IOCPSRV_CLOSE_ABORT));
  iocpsrv_event_t d = poll_one(srv, TS_WAIT_MS);
  CHECK_EQ(d.type, IOCPSRV_EVENT_DISCONNECT);
  CHECK_EQ(d.reason, IOCPSRV_REASON_LOCAL_ABORT);
  ts_close(s);
  stop_and_destroy(srv);
}

static void pull_refuse_gives_nothing_more(void) {
  iocpsrv_t *srv = pull_server();
  ts_sock_t s = client_sending(srv, 0, PACKETS);
  wait_depth(srv, 1 + PACKETS);
  iocpsrv_event_t con = poll_one(srv, TS_WAIT_MS);
  CHECK_EQ(con.type, IOCPSRV_EVENT_CONNECT);
  CHECK_OK(iocpsrv_disconnect(srv, con.conn, IOCPSRV_CLOSE_REFUSE));
  int rc = ts_wait_close(s, TS_WAIT_MS, NULL);
  CHECK_MSG(rc == TS_EOF || rc == TS_RESET, "the refused client was not closed: %s",
            ts_strerror(rc));
  ts_close(s);
  iocpsrv_event_t ev[4];
  CHECK_EQ(iocpsrv_poll(srv, ev, 4, 300), 0);
  iocpsrv_stats_t st;
  memset(&st, 0, sizeof st);
  st.struct_size = sizeof st;
  CHECK_OK(iocpsrv_stats(srv, &st));
  CHECK_EQ(st.connections_rejected, 1);
  CHECK_EQ(st.connections_now, 0);
  CHECK_ERR(iocpsrv_disconnect(srv, con.conn, IOCPSRV_CLOSE_REFUSE), IOCPSRV_ENOTCONN);
  stop_and_destroy(srv);
}

/* Callback mode: IOCPSRV_CLOSE_REFUSE from the packet callback, no disconnect. */
static tt_counter_t cb_packets, cb_disconnects;

static int IOCPSRV_CALL refuse_packet(iocpsrv_t *srv, iocpsrv_conn_id_t id, void *user,
                                      const uint8_t *data, size_t len) {
  (void)user, (void)data, (void)len;
  CHECK_OK(iocpsrv_disconnect(srv, id, IOCPSRV_CLOSE_REFUSE));
  tt_counter_add(&cb_packets, 1);
  return 0;
}

static void IOCPSRV_CALL count_disconnect(iocpsrv_t *srv, iocpsrv_conn_id_t id, void *user,
                                          int reason) {
  (void)srv, (void)id, (void)user, (void)reason;
  tt_counter_add(&cb_disconnects, 1);
}

static void callback_refuse_from_packet_callback(void) {
  tt_counter_init(&cb_packets);
  tt_counter_init(&cb_disconnects);
  iocpsrv_t *srv = NULL;
  CHECK_OK(iocpsrv_create(&srv, NULL));
  CHECK_OK(iocpsrv_set_packet_cb(srv, refuse_packet));
  CHECK_OK(iocpsrv_set_disconnect_cb(srv, count_disconnect));
  CHECK_OK(iocpsrv_listen(srv, "127.0.0.1", 0));
  ts_sock_t s = client_sending(srv, 0, PACKETS);
  int rc = ts_wait_close(s, TS_WAIT_MS, NULL);
  CHECK(rc == TS_EOF || rc == TS_RESET);
  ts_close(s);
  CHECK_OK(iocpsrv_stop(srv, 1000));
  CHECK_EQ(tt_counter_get(&cb_packets), 1); /* nothing after the refusal */
  CHECK_EQ(tt_counter_get(&cb_disconnects), 0);
  CHECK_OK(iocpsrv_destroy(srv));
  tt_counter_destroy(&cb_packets);
  tt_counter_destroy(&cb_disconnects);
}

int main(int argc, char **argv) {
  test_init(argc, argv);
  TEST_RUN(pull_disconnect_drops_queued_packets);
  TEST_RUN(pull_pause_holds_queued_packets_in_order);
  TEST_RUN(pull_pause_then_disconnect);
  TEST_RUN(pull_refuse_gives_nothing_more);
  TEST_RUN(callback_refuse_from_packet_callback);
  return test_done();
}
