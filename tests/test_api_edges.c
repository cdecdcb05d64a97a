/*
 * test_api_edges.c -- API details an outside audit found wrong: iocpsrv_set_conn_user
 * called inside the connect callback (it used to be overwritten when the callback
 * returned), iocpsrv_broadcast of an oversize packet with no connection (0 instead of
 * IOCPSRV_ETOOBIG), and iocpsrv_stop(-1) ("no limit") that still reset a peer after
 * IOCPSRV_OPT_CLOSE_TIMEOUT_MS.
 */
#include <stdlib.h>
#include <string.h>

#include "sock.h"
#include "test.h"
#include "thread.h"

typedef struct edge_s {
  int mode;            /* 0: set_conn_user only; 1: set_conn_user, then *conn_user */
  int marker, other;   /* their addresses are the user pointers */
  tt_counter_t packets, disconnects;
  void *seen_user;     /* what the packet callback got */
  void *seen_user_disc;
  tt_mutex_t lock;
} edge_t;

static int IOCPSRV_CALL edge_connect(iocpsrv_t *srv, iocpsrv_conn_id_t id, const char *peer,
                                     void **conn_user) {
  edge_t *e = (edge_t *)iocpsrv_user_data(srv);
  (void)peer;
  CHECK(*conn_user == NULL); /* starts as NULL */
  CHECK_OK(iocpsrv_set_conn_user(srv, id, &e->marker));
  if (e->mode == 1) *conn_user = &e->other; /* the out parameter wins */
  return 0;
}

static int IOCPSRV_CALL edge_packet(iocpsrv_t *srv, iocpsrv_conn_id_t id, void *user,
                                    const uint8_t *data, size_t len) {
  edge_t *e = (edge_t *)iocpsrv_user_data(srv);
  tt_mutex_lock(&e->lock);
  e->seen_user = user;
  tt_mutex_unlock(&e->lock);
  iocpsrv_send(srv, id, data, len);
  tt_counter_add(&e->packets, 1);
  return 0;
}

static void IOCPSRV_CALL edge_disconnect(iocpsrv_t *srv, iocpsrv_conn_id_t id, void *user,
                                         int reason) {
  edge_t *e = (edge_t *)iocpsrv_user_data(srv);
  (void)id, (void)reason;
  tt_mutex_lock(&e->lock);
  e->seen_user_disc = user;
  tt_mutex_unlock(&e->lock);
  tt_counter_add(&e->disconnects, 1);
}

static iocpsrv_t *edge_server(edge_t *e) {
  iocpsrv_t *srv = NULL;
  CHECK_OK(iocpsrv_create(&srv, e));
  CHECK_OK(iocpsrv_set_connect_cb(srv, edge_connect));
  CHECK_OK(iocpsrv_set_packet_cb(srv, edge_packet));
  CHECK_OK(iocpsrv_set_disconnect_cb(srv, edge_disconnect));
  return srv;
}

static void edge_init(edge_t *e, int mode) {
  memset(e, 0, sizeof *e);
  e->mode = mode;
  tt_counter_init(&e->packets);
  tt_counter_init(&e->disconnects);
  tt_mutex_init(&e->lock);
}

static void edge_free(edge_t *e) {
  tt_counter_destroy(&e->packets);
  tt_counter_destroy(&e->disconnects);
  tt_mutex_destroy(&e->lock);
}

static void run_conn_user(int mode) {
  edge_t e;
  edge_init(&e, mode);
  iocpsrv_t *srv = edge_server(&e);
  CHECK_OK(iocpsrv_listen(srv, "127.0.0.1", 0));
  ts_sock_t s = ts_connect("127.0.0.1", iocpsrv_port(srv), TS_WAIT_MS);
  CHECK(s != TS_INVALID);
  CHECK_EQ(ts_send_packet(s, "x", 1), 0);
  uint8_t buf[4];
  size_t got = 0;
  CHECK_EQ(ts_recv_packet(s, buf, sizeof buf, &got, TS_WAIT_MS), 0);
  ts_close(s);
  CHECK_EQ(tt_counter_wait(&e.disconnects, 1, TS_WAIT_MS), 0);
  void *want = mode == 1 ? (void *)&e.other : (void *)&e.marker;
  CHECK_MSG(e.seen_user == want, "packet callback got conn_user %p, expected %p",
            e.seen_user, want);
  CHECK(e.seen_user_disc == want);
  CHECK_OK(iocpsrv_stop(srv, 1000));
  CHECK_OK(iocpsrv_destroy(srv));
  edge_free(&e);
}

/* set_conn_user inside the connect callback sticks when *conn_user is left alone. */
static void edge_set_conn_user_in_connect_callback(void) { run_conn_user(0); }

/* ...and the out parameter, when the callback sets it, wins. */
static void edge_conn_user_out_parameter_wins(void) { run_conn_user(1); }

/* An oversize broadcast is an error whether or not anyone is connected. */
static void edge_broadcast_too_big_without_clients(void) {
  edge_t e;
  edge_init(&e, 0);
  iocpsrv_t *srv = edge_server(&e);
  CHECK_OK(iocpsrv_set_option(srv, IOCPSRV_OPT_MAX_PACKET_SIZE, 1000));
  CHECK_OK(iocpsrv_listen(srv, "127.0.0.1", 0));
  static uint8_t big[1001];
  CHECK_ERR(iocpsrv_broadcast(srv, big, sizeof big), IOCPSRV_ETOOBIG);
  CHECK_EQ(iocpsrv_broadcast(srv, big, 1000), 0); /* fits: nobody to take it */
  CHECK_OK(iocpsrv_stop(srv, 1000));
  CHECK_OK(iocpsrv_destroy(srv));
  edge_free(&e);
}

typedef struct stopper_s {
  iocpsrv_t *srv;
  tt_counter_t done;
} stopper_t;

static void stopper_main(void *arg) {
  stopper_t *st = (stopper_t *)arg;
  CHECK_OK(iocpsrv_stop(st->srv, -1));
  tt_counter_add(&st->done, 1);
}

/* stop(-1) waits for the peer's FIN however long it takes: the close timeout (100 ms
 * here) does not turn it into a reset. */
static void edge_stop_without_limit_waits_for_the_peer(void) {
  edge_t e;
  edge_init(&e, 0);
  iocpsrv_t *srv = edge_server(&e);
  CHECK_OK(iocpsrv_set_option(srv, IOCPSRV_OPT_CLOSE_TIMEOUT_MS, 100));
  CHECK_OK(iocpsrv_listen(srv, "127.0.0.1", 0));
  ts_sock_t s = ts_connect("127.0.0.1", iocpsrv_port(srv), TS_WAIT_MS);
  CHECK(s != TS_INVALID);
  CHECK_EQ(ts_send_packet(s, "x", 1), 0);
  CHECK_EQ(tt_counter_wait(&e.packets, 1, TS_WAIT_MS), 0);
  stopper_t st;
  st.srv = srv;
  tt_counter_init(&st.done);
  tt_thread_t *th = tt_thread_start(stopper_main, &st);
  /* The server's FIN comes (after the echo); its reset must not, for well over the
   * close timeout: the stop keeps waiting for our FIN. */
  uint8_t buf[16];
  size_t got = 0;
  CHECK_EQ(ts_recv_packet(s, buf, sizeof buf, &got, TS_WAIT_MS), 0);
  int rc = ts_wait_close(s, 1000, NULL);
  CHECK_MSG(rc == TS_EOF, "expected the server's FIN: %s", ts_strerror(rc));
  CHECK_MSG(tt_counter_wait(&st.done, 1, 600) != 0, "stop(-1) returned while the peer "
            "had not closed (the close timeout reset it)");
  CHECK_EQ(tt_counter_get(&e.disconnects), 0);
  ts_close(s); /* our FIN: now the stop can end */
  CHECK_EQ(tt_counter_wait(&st.done, 1, TS_WAIT_MS), 0);
  tt_thread_join(th);
  CHECK_EQ(tt_counter_get(&e.disconnects), 1);
  CHECK_OK(iocpsrv_destroy(srv));
  tt_counter_destroy(&st.done);
  edge_free(&e);
}

int main(int argc, char **argv) {
  test_init(argc, argv);
  TEST_RUN(edge_set_conn_user_in_connect_callback);
  TEST_RUN(edge_conn_user_out_parameter_wins);
  TEST_RUN(edge_broadcast_too_big_without_clients);
  TEST_RUN(edge_stop_without_limit_waits_for_the_peer);
  return test_done();
}
