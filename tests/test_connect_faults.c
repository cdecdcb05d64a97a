/*
 * test_connect_faults.c -- iocpsrv_connect when the system says no (fault-injection
 * build, dll/src/core/fault.h):
 *   - no socket to be had (FAULT_CONNECT fails socket creation as EMFILE): the call
 *     returns IOCPSRV_ELIMIT, nothing is left behind, the next call works;
 *   - descriptors really exhausted (Linux: RLIMIT_NOFILE lowered and used up): the
 *     same, and connecting works again once descriptors are back;
 *   - every allocation of an attempt failing in turn (SQLite-style: the 1st, then the
 *     2nd, ... until a run needs no more), in pull mode, for a numeric host and for a
 *     name: the call either fails (IOCPSRV_ENOMEM, or IOCPSRV_ESYSTEM when the resolver
 *     thread cannot start) and the host never hears of the id, or it succeeds and the
 *     attempt ends with exactly one DISCONNECT, whatever failed on the way.
 */
#include <stdlib.h>
#include <string.h>
#ifndef _WIN32
#  include <sys/resource.h>
#  include <unistd.h>
#endif

#include "core/fault.h"
#include "sock.h"
#include "test.h"
#include "thread.h"

static void wait_no_connections(iocpsrv_t *srv) {
  CHECK_OK(test_wait_connections_now(srv, 0, TS_WAIT_MS));
}

static iocpsrv_t *client_engine(int pull) {
  iocpsrv_t *srv = NULL;
  CHECK_OK(iocpsrv_create(&srv, NULL));
  CHECK_OK(iocpsrv_set_option(srv, IOCPSRV_OPT_PULL_MODE, pull));
  CHECK_OK(iocpsrv_set_option(srv, IOCPSRV_OPT_WORKER_THREADS, 2));
  CHECK_OK(iocpsrv_start(srv));
  return srv;
}

static void connect_fault_no_socket(void) {
  int port = 0;
  ts_sock_t l = ts_listen("127.0.0.1", 0, &port);
  CHECK(l != TS_INVALID);
  iocpsrv_t *srv = client_engine(1);
  iocpsrv_conn_id_t id = 7;
  iocpsrv_fault_arm(FAULT_CONNECT, 1, 0);
  CHECK_ERR(iocpsrv_connect(srv, "127.0.0.1", port, NULL, &id), IOCPSRV_ELIMIT);
  CHECK_EQ(id, 0);
  CHECK_EQ(iocpsrv_fault_failures(FAULT_CONNECT), 1);
  CHECK_EQ(test_stats(srv).connections_now, 0);
  CHECK_OK(iocpsrv_connect(srv, "127.0.0.1", port, NULL, &id)); /* works again */
  iocpsrv_event_t ev;
  CHECK_EQ(iocpsrv_poll(srv, &ev, 1, TS_WAIT_MS), 1);
  CHECK_EQ(ev.type, IOCPSRV_EVENT_CONNECT); /* the failed call left no event behind */
  CHECK_EQ(ev.conn, id);
  CHECK_OK(iocpsrv_stop(srv, 0));
  CHECK_OK(iocpsrv_destroy(srv));
  ts_close(l);
}

#ifndef _WIN32
/* The process's descriptors really used up: ELIMIT, and connecting works again after. */
static void connect_fault_descriptors_exhausted(void) {
  int port = 0;
  ts_sock_t l = ts_listen("127.0.0.1", 0, &port);
  CHECK(l != TS_INVALID);
  iocpsrv_t *srv = client_engine(1);
  struct rlimit old, low;
  CHECK_EQ(getrlimit(RLIMIT_NOFILE, &old), 0);
  low = old;
  low.rlim_cur = 256;
  CHECK_EQ(setrlimit(RLIMIT_NOFILE, &low), 0);
  int fds[256], n = 0;
  while (n < 256 && (fds[n] = dup(0)) >= 0) n++; /* every descriptor left */
  CHECK_LT(n, 256);
  iocpsrv_conn_id_t id;
  int rc = iocpsrv_connect(srv, "127.0.0.1", port, NULL, &id);
  while (n > 0) close(fds[--n]);
  CHECK_EQ(setrlimit(RLIMIT_NOFILE, &old), 0);
  CHECK_ERR(rc, IOCPSRV_ELIMIT);
  CHECK_EQ(test_stats(srv).connections_now, 0);
  CHECK_OK(iocpsrv_connect(srv, "127.0.0.1", port, NULL, &id));
  iocpsrv_event_t ev;
  CHECK_EQ(iocpsrv_poll(srv, &ev, 1, TS_WAIT_MS), 1);
  CHECK_EQ(ev.type, IOCPSRV_EVENT_CONNECT);
  CHECK_OK(iocpsrv_stop(srv, 0));
  CHECK_OK(iocpsrv_destroy(srv));
  ts_close(l);
}
#endif

/* One attempt with the n-th allocation failing. Returns the failures injected. */
static int64_t attempt_with_failure(iocpsrv_t *srv, const char *host, int port, int64_t n) {
  int marker = 0;
  iocpsrv_conn_id_t id = 0;
  iocpsrv_fault_arm(FAULT_ALLOC, n, 0);
  int rc = iocpsrv_connect(srv, host, port, &marker, &id);
  if (rc < 0) {
    CHECK_MSG(rc == IOCPSRV_ENOMEM || rc == IOCPSRV_ESYSTEM, "allocation %lld: %s",
              (long long)n, iocpsrv_err_name(rc));
    CHECK_EQ(id, 0);
    wait_no_connections(srv);
    iocpsrv_event_t ev;
    CHECK_EQ(iocpsrv_poll(srv, &ev, 1, 0), 0); /* the host never hears of it */
    int64_t f = iocpsrv_fault_failures(FAULT_ALLOC);
    iocpsrv_fault_arm(FAULT_ALLOC, 0, 0);
    return f;
  }
  /* Exactly one DISCONNECT, maybe after a CONNECT (then we close it ourselves). */
  int connected = 0, gone = 0;
  int64_t end = tt_now_ms() + TS_WAIT_MS;
  while (!gone) {
    CHECK_MSG(tt_now_ms() < end, "allocation %lld: attempt never ended", (long long)n);
    iocpsrv_event_t ev[8];
    int k = iocpsrv_poll(srv, ev, 8, 50);
    CHECK_OK(k);
    for (int i = 0; i < k; i++) {
      CHECK_EQ(ev[i].conn, id);
      CHECK(ev[i].conn_user == &marker);
      CHECK(!gone);
      if (ev[i].type == IOCPSRV_EVENT_CONNECT) {
        CHECK(!connected);
        connected = 1;
        CHECK_OK(iocpsrv_disconnect(srv, id, IOCPSRV_CLOSE_ABORT));
      } else if (ev[i].type == IOCPSRV_EVENT_DISCONNECT) {
        gone = 1;
      }
    }
  }
  wait_no_connections(srv);
  int64_t f = iocpsrv_fault_failures(FAULT_ALLOC);
  iocpsrv_fault_arm(FAULT_ALLOC, 0, 0);
  return f;
}

static void each_allocation(const char *host) {
  int port = 0;
  ts_sock_t l = ts_listen("127.0.0.1", 0, &port); /* the kernel accepts: no engine there */
  CHECK(l != TS_INVALID);
  iocpsrv_t *srv = client_engine(1);
  /* Once without a failure first: what the engine allocates only once (its table's
   * first chunk, the resolver thread) must not shift the count of the runs after. */
  CHECK_EQ(attempt_with_failure(srv, host, port, 0), 0);
  int64_t n;
  for (n = 1; n < 200; n++)
    if (attempt_with_failure(srv, host, port, n) == 0) break; /* needed no n-th one */
  CHECK_LT(n, 200);
  CHECK_GT(n, 2); /* the slot, the target, its DISCONNECT: a few at least */
  printf("  %s: %lld allocations, each failed once\n", host, (long long)(n - 1));
  CHECK_OK(iocpsrv_stop(srv, 0));
  CHECK_OK(iocpsrv_destroy(srv));
  ts_close(l);
}

static void connect_fault_each_allocation_numeric(void) { each_allocation("127.0.0.1"); }
static void connect_fault_each_allocation_name(void) { each_allocation("localhost"); }

int main(int argc, char **argv) {
  test_init(argc, argv);
  TEST_RUN(connect_fault_no_socket);
#ifndef _WIN32
  TEST_RUN(connect_fault_descriptors_exhausted);
#endif
  TEST_RUN(connect_fault_each_allocation_numeric);
  TEST_RUN(connect_fault_each_allocation_name);
  return test_done();
}
