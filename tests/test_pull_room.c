/*
 * test_pull_room.c -- pull mode: a connection that waits for room in a full queue gets
 * it once the room is there, even when the consumer made that room without polling
 * packets: by pausing (or disconnecting) the connection whose packets filled the
 * queue. The waiting connection must not stay stalled until the consumer's poll times
 * out (or for ever, with a poll of no timeout) while nothing else is queued.
 *
 * The same when the queue only looks full for a moment: a worker's batch has reserved
 * all the room left (pullq_batch_t) when another connection checks the limit, and the
 * batch's packets then go behind their connection's gate (paused meanwhile): the room
 * is given back with nothing queued to poll (held at FAULT_POINT_PULL_RESERVED).
 *
 * The consumer is the test itself (no pump thread), so the queue fills for certain.
 * Linked against the fault build (core/fault.h) for the test point.
 */
#include <stdlib.h>
#include <string.h>

#include "core/fault.h"
#include "sock.h"
#include "test.h"
#include "thread.h"

#define LIMIT 16
#define FLOOD 400 /* packets from the connection that fills the queue */

static iocpsrv_t *pull_server(void) {
  iocpsrv_t *srv = NULL;
  CHECK_OK(iocpsrv_create(&srv, NULL));
  CHECK_OK(iocpsrv_set_option(srv, IOCPSRV_OPT_PULL_MODE, 1));
  CHECK_OK(iocpsrv_set_option(srv, IOCPSRV_OPT_PULL_QUEUE_LIMIT, LIMIT));
  CHECK_OK(iocpsrv_set_option(srv, IOCPSRV_OPT_WORKER_THREADS, 2));
  CHECK_OK(iocpsrv_set_option(srv, IOCPSRV_OPT_CLOSE_TIMEOUT_MS, 30000));
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

/* Polls one event of `type` (events of other types are not expected). */
static iocpsrv_event_t poll_one(iocpsrv_t *srv, int type) {
  iocpsrv_event_t ev;
  int n = iocpsrv_poll(srv, &ev, 1, TS_WAIT_MS);
  CHECK_EQ(n, 1);
  CHECK_EQ(ev.type, type);
  return ev;
}

/* A client connects and the consumer meets it; returns its id. */
static iocpsrv_conn_id_t connect_met(iocpsrv_t *srv, int port, ts_sock_t *s) {
  *s = ts_connect("127.0.0.1", port, TS_WAIT_MS);
  CHECK(*s != TS_INVALID);
  return poll_one(srv, IOCPSRV_EVENT_CONNECT).conn;
}

/* B is met; A connects and fills the queue (its packets only); B then sends one
 * packet, which its worker cannot read (the queue is full: B waits for room). The
 * consumer pauses (pause) or disconnects A: A's packets leave the queue, and B's
 * packet must come with the next poll, long before that poll's timeout. */
static void room_after_consumer_empties_queue(int pause) {
  iocpsrv_t *srv = pull_server();
  int port = iocpsrv_port(srv);
  ts_sock_t b, a;
  iocpsrv_conn_id_t idb = connect_met(srv, port, &b);
  iocpsrv_conn_id_t ida = connect_met(srv, port, &a);

  /* A's flood in one write: the queue fills to its limit (and a packet per worker). */
  size_t frame = 4 + 8;
  uint8_t *buf = (uint8_t *)malloc(frame * FLOOD);
  CHECK(buf != NULL);
  for (int i = 0; i < FLOOD; i++) {
    test_put_u32le(buf + i * frame, 8);
    test_put_u32le(buf + i * frame + 4, (uint32_t)i);
    test_put_u32le(buf + i * frame + 8, 0);
  }
  CHECK_EQ(ts_send_all(a, buf, frame * FLOOD), 0);
  free(buf);
  int64_t t0 = tt_now_ms();
  while (queue_depth(srv) < LIMIT) {
    CHECK_MSG(tt_now_ms() - t0 < TS_WAIT_MS, "the queue never filled");
    tt_sleep_ms(2); /* a counter nobody signals */
  }

  CHECK_EQ(ts_send_packet(b, "from-b", 6), 0);
  /* B's worker finds the queue full and registers B as waiting for room. Nothing
   * signals that, so give it time; if it has not happened yet, B just reads and the
   * test passes without testing the stall. */
  tt_sleep_ms(300);
  uint64_t before = queue_depth(srv);
  CHECK_GE(before, LIMIT); /* B's packet is not in: it waits */

  if (pause) CHECK_OK(iocpsrv_pause_receive(srv, ida));
  else CHECK_OK(iocpsrv_disconnect(srv, ida, IOCPSRV_CLOSE_GRACEFUL));
  CHECK_EQ(queue_depth(srv), 0); /* A's packets left the queue: nothing to poll */

  /* A's client neither reads nor closes: a graceful close waits for it (30 s), so no
   * DISCONNECT wakes the consumer meanwhile. */
  iocpsrv_event_t ev[4];
  t0 = tt_now_ms();
  int n = iocpsrv_poll(srv, ev, 4, 4000);
  int64_t waited = tt_now_ms() - t0;
  CHECK_MSG(n == 1, "poll returned %d after %lld ms: B's packet stalled behind a queue "
            "that is no longer full", n, (long long)waited);
  CHECK_EQ(ev[0].type, IOCPSRV_EVENT_PACKET);
  CHECK_EQ(ev[0].conn, idb);
  CHECK_EQ(ev[0].len, 6);
  CHECK_MEMEQ(ev[0].data, "from-b", 6);
  CHECK_LT(waited, 2000);

  ts_reset_close(a);
  ts_close(b);
  CHECK_OK(iocpsrv_stop(srv, 0));
  int disconnects = 0;
  for (;;) {
    n = iocpsrv_poll(srv, ev, 4, 1000);
    if (n == IOCPSRV_ESTOPPED) break;
    CHECK_OK(n);
    for (int k = 0; k < n; k++) {
      CHECK(pause || ev[k].conn != ida || ev[k].type == IOCPSRV_EVENT_DISCONNECT);
      disconnects += ev[k].type == IOCPSRV_EVENT_DISCONNECT;
    }
  }
  CHECK_EQ(disconnects, 2);
  CHECK_OK(iocpsrv_destroy(srv));
}

static void pull_pause_of_the_filler_hands_room_to_a_waiter(void) {
  room_after_consumer_empties_queue(1);
}

static void pull_disconnect_of_the_filler_hands_room_to_a_waiter(void) {
  room_after_consumer_empties_queue(0);
}

/* ---- the room a batch reserved, given back behind a gate ---- */

typedef struct hold_s {
  tt_mutex_t m;
  iocpsrv_conn_id_t only; /* hold the worker of this connection, once */
  tt_counter_t entered, released;
} hold_t;

static hold_t g_hold;

static void hold_hook(int point, uint64_t arg, void *ctx) {
  hold_t *h = (hold_t *)ctx;
  if (point != FAULT_POINT_PULL_RESERVED) return;
  tt_mutex_lock(&h->m);
  int hold = h->only != 0 && h->only == arg;
  if (hold) h->only = 0;
  tt_mutex_unlock(&h->m);
  if (!hold) return;
  tt_counter_add(&h->entered, 1);
  tt_counter_wait(&h->released, 1, TS_WAIT_MS); /* bounded: the test releases it */
}

/* A's worker reserves all the room (an empty queue, a limit below a batch) and is held
 * there; B's worker then finds the queue full and waits for room. The consumer pauses
 * A, and A's worker goes on: its packet goes behind A's gate and the room comes back
 * with nothing queued. B's packet must come with the consumer's next poll. */
static void pull_room_reserved_then_held_reaches_a_waiter(void) {
  tt_mutex_init(&g_hold.m);
  tt_counter_init(&g_hold.entered);
  tt_counter_init(&g_hold.released);
  g_hold.only = 0;
  iocpsrv_fault_set_hook(hold_hook, &g_hold);
  iocpsrv_t *srv = pull_server();
  int port = iocpsrv_port(srv);
  ts_sock_t b, a;
  iocpsrv_conn_id_t idb = connect_met(srv, port, &b);
  iocpsrv_conn_id_t ida = connect_met(srv, port, &a);

  tt_mutex_lock(&g_hold.m);
  g_hold.only = ida;
  tt_mutex_unlock(&g_hold.m);
  CHECK_EQ(ts_send_packet(a, "from-a", 6), 0);
  CHECK_EQ(tt_counter_wait(&g_hold.entered, 1, TS_WAIT_MS), 0); /* A holds the room */
  CHECK_EQ(ts_send_packet(b, "from-b", 6), 0);
  tt_sleep_ms(300); /* B's worker finds the queue full (nothing signals it) */
  CHECK_OK(iocpsrv_pause_receive(srv, ida));
  tt_counter_add(&g_hold.released, 1);

  iocpsrv_event_t ev[4];
  int64_t t0 = tt_now_ms();
  int n = iocpsrv_poll(srv, ev, 4, 4000);
  int64_t waited = tt_now_ms() - t0;
  CHECK_MSG(n == 1, "poll returned %d after %lld ms: B's packet stalled behind room a "
            "batch gave back", n, (long long)waited);
  CHECK_EQ(ev[0].type, IOCPSRV_EVENT_PACKET);
  CHECK_EQ(ev[0].conn, idb);
  CHECK_MEMEQ(ev[0].data, "from-b", 6);
  CHECK_LT(waited, 2000);

  /* A's packet was held, in order, and comes at resume. */
  CHECK_OK(iocpsrv_resume_receive(srv, ida));
  n = iocpsrv_poll(srv, ev, 4, TS_WAIT_MS);
  CHECK_EQ(n, 1);
  CHECK_EQ(ev[0].conn, ida);
  CHECK_MEMEQ(ev[0].data, "from-a", 6);

  iocpsrv_fault_set_hook(NULL, NULL);
  ts_close(a);
  ts_close(b);
  CHECK_OK(iocpsrv_stop(srv, 1000));
  int disconnects = 0;
  for (;;) {
    n = iocpsrv_poll(srv, ev, 4, 1000);
    if (n == IOCPSRV_ESTOPPED) break;
    CHECK_OK(n);
    for (int k = 0; k < n; k++) disconnects += ev[k].type == IOCPSRV_EVENT_DISCONNECT;
  }
  CHECK_EQ(disconnects, 2);
  CHECK_OK(iocpsrv_destroy(srv));
  tt_counter_destroy(&g_hold.entered);
  tt_counter_destroy(&g_hold.released);
  tt_mutex_destroy(&g_hold.m);
}

int main(int argc, char **argv) {
  test_init(argc, argv);
  TEST_RUN(pull_pause_of_the_filler_hands_room_to_a_waiter);
  TEST_RUN(pull_disconnect_of_the_filler_hands_room_to_a_waiter);
  TEST_RUN(pull_room_reserved_then_held_reaches_a_waiter);
  return test_done();
}
