/*
 * test_accept_faults.c -- accepting fails for a while (issue 15, item 7), with the
 * fault-injection build (dll/src/core/fault.h, FAULT_ACCEPT): on Linux an injected
 * failure of accept4 is EMFILE; on Windows posting an AcceptEx fails (WSASocket with
 * WSAEMFILE, AcceptEx with WSAENOBUFS), which no descriptor limit can provoke there.
 *
 *   accept_fails_persistently  every accept fails: no spin (process CPU under 20% of a
 *                              core, a few tries a second), accept_errors counted, a log
 *                              line a second at most, existing clients keep echoing;
 *                              once accepting works again the waiting clients are
 *                              served, and so is a new one. (Before: Linux spun on the
 *                              readable listener; Windows dropped each failed accept
 *                              slot for good and never accepted again.)
 *   accept_fails_at_listen     the accepts posted by listen fail (Windows): listen
 *                              still succeeds, the failure is counted and logged later,
 *                              never from inside iocpsrv_listen (life_lock held), and
 *                              the server accepts once posting works
 *   accept_fails_once          one failure: counted and logged, clients go on being
 *                              served
 *
 * The log callback calls iocpsrv_stats and iocpsrv_connections (it would deadlock
 * under an engine lock).
 */
#include <stdlib.h>
#include <string.h>

#include "core/fault.h"
#include "echo.h"
#include "sock.h"
#include "test.h"
#include "thread.h"

#ifdef _WIN32
#  include <windows.h>
#else
#  include <time.h>
#endif

#define NOPTS(a) ((int)(sizeof(a) / sizeof((a)[0])))
#define MAX_STAMPS 256

/* ---- the log callback ---------------------------------------------------------- */

static tt_mutex_t g_log_lock;
static int64_t g_stamps[MAX_STAMPS];
static int g_lines;
static char g_last[256];
static volatile int g_in_listen;
static uint64_t g_listen_thread;
static int g_logged_in_listen;

static void IOCPSRV_CALL log_cb(iocpsrv_t *srv, int level, const char *msg) {
  iocpsrv_stats_t st;
  iocpsrv_conn_id_t ids[4];
  memset(&st, 0, sizeof st);
  st.struct_size = sizeof st;
  int rc_stats = iocpsrv_stats(srv, &st);
  int rc_conns = iocpsrv_connections(srv, ids, 4);
  tt_mutex_lock(&g_log_lock);
  if (g_in_listen && tt_thread_self() == g_listen_thread) g_logged_in_listen++;
  if (g_lines < MAX_STAMPS) g_stamps[g_lines] = tt_now_ms();
  g_lines++;
  snprintf(g_last, sizeof g_last, "[%d] %s", level, msg);
  tt_mutex_unlock(&g_log_lock);
  if (rc_stats < 0 || rc_conns < 0)
    test_fail(__FILE__, __LINE__, "API call from the log callback failed");
}

static void log_setup(echo_server_t *es) { CHECK_OK(iocpsrv_set_log_cb(es->srv, log_cb)); }

static void log_reset(void) {
  tt_mutex_lock(&g_log_lock);
  g_lines = 0;
  g_last[0] = '\0';
  tt_mutex_unlock(&g_log_lock);
}

static int log_lines(void) {
  tt_mutex_lock(&g_log_lock);
  int n = g_lines;
  tt_mutex_unlock(&g_log_lock);
  return n;
}

/* Lines since log_reset: at least `min`, never two within 900 ms. */
static void check_log_lines(int min) {
  tt_mutex_lock(&g_log_lock);
  int n = g_lines, i;
  char last[256];
  int64_t stamps[MAX_STAMPS];
  memcpy(last, g_last, sizeof last);
  memcpy(stamps, g_stamps, sizeof stamps);
  tt_mutex_unlock(&g_log_lock);
  CHECK_MSG(n >= min, "%d log lines, expected at least %d", n, min);
  CHECK_MSG(n < MAX_STAMPS, "%d log lines: not throttled (last: %s)", n, last);
  for (i = 1; i < n; i++)
    CHECK_MSG(stamps[i] - stamps[i - 1] >= 900, "log lines %d and %d only %lld ms apart (%s)",
              i - 1, i, (long long)(stamps[i] - stamps[i - 1]), last);
  printf("(%d log line%s: \"%s\") ", n, n == 1 ? "" : "s", last);
}

/* ---- helpers ------------------------------------------------------------------- */

static int64_t cpu_ms(void) {
#ifdef _WIN32
  FILETIME c, e, k, u;
  ULARGE_INTEGER kk, uu;
  GetProcessTimes(GetCurrentProcess(), &c, &e, &k, &u);
  kk.LowPart = k.dwLowDateTime, kk.HighPart = k.dwHighDateTime;
  uu.LowPart = u.dwLowDateTime, uu.HighPart = u.dwHighDateTime;
  return (int64_t)((kk.QuadPart + uu.QuadPart) / 10000);
#else
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
#endif
}

static ts_sock_t connect_port(int port) {
  ts_sock_t s = ts_connect("127.0.0.1", port, TS_WAIT_MS);
  CHECK_MSG(s != TS_INVALID, "connect to port %d failed", port);
  return s;
}

static void expect_echo(ts_sock_t s, const char *what) {
  uint8_t buf[256];
  size_t got = 0, len = strlen(what);
  int rc;
  CHECK_EQ(ts_send_packet(s, what, len), 0);
  rc = ts_recv_packet(s, buf, sizeof buf, &got, TS_WAIT_MS);
  CHECK_MSG(rc == 0, "echo of \"%s\": %s", what, ts_strerror(rc));
  CHECK_EQ(got, len);
  CHECK_MEMEQ(buf, what, len);
}

static echo_server_t *create_server(void) {
  /* Two posted accepts: on Windows the injection bites after two clients. */
  static const echo_opt_t opts[] = {{IOCPSRV_OPT_WORKER_THREADS, 2},
                                    {IOCPSRV_OPT_ACCEPTS_POSTED, 2}};
  echo_config_t cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.opts = opts;
  cfg.nopts = NOPTS(opts);
  cfg.setup = log_setup;
  return echo_create(&cfg);
}

static echo_server_t *start_server(void) {
  echo_server_t *es = create_server();
  CHECK_OK(echo_listen(es));
  return es;
}

/* ---- sub-tests ----------------------------------------------------------------- */

enum { EXISTING = 2, WAITING = 4 };

static void accept_fails_persistently(void) {
  echo_server_t *es = start_server();
  ts_sock_t existing[EXISTING], waiting[WAITING];
  int i;
  for (i = 0; i < EXISTING; i++) {
    existing[i] = connect_port(es->port);
    expect_echo(existing[i], "before");
  }
  iocpsrv_stats_t st0 = echo_stats(es);
  log_reset();
  iocpsrv_fault_arm(FAULT_ACCEPT, 1, 1); /* every accept fails from now */
  for (i = 0; i < WAITING; i++) waiting[i] = connect_port(es->port);
  ECHO_WAIT_FOR(echo_stats(es).accept_errors > st0.accept_errors);
  CHECK_GT(echo_stats(es).accept_errors, st0.accept_errors);

  /* Failing the whole time: no loop. */
  int64_t t0 = tt_now_ms(), c0 = cpu_ms(), calls0 = iocpsrv_fault_calls(FAULT_ACCEPT);
  while (tt_now_ms() - t0 < 1200) tt_sleep_ms(10);
  int64_t t1 = tt_now_ms(), c1 = cpu_ms(), calls1 = iocpsrv_fault_calls(FAULT_ACCEPT);
  printf("(CPU %lld ms in %lld ms, %lld accept tries) ", (long long)(c1 - c0),
         (long long)(t1 - t0), (long long)(calls1 - calls0));
  CHECK_MSG((c1 - c0) * 5 < (t1 - t0), "%lld ms of CPU in %lld ms while accepting fails",
            (long long)(c1 - c0), (long long)(t1 - t0));
  CHECK_MSG(calls1 - calls0 < 100, "%lld accept tries in %lld ms: a retry loop",
            (long long)(calls1 - calls0), (long long)(t1 - t0));
  iocpsrv_stats_t st = echo_stats(es);
  printf("(%llu accept errors) ", (unsigned long long)(st.accept_errors - st0.accept_errors));
  CHECK_LT(st.accept_errors - st0.accept_errors, 200);
  check_log_lines(1);
  for (i = 0; i < EXISTING; i++) expect_echo(existing[i], "during");

  /* Accepting works again: the waiting clients are served, then a new one. */
  iocpsrv_fault_arm(FAULT_ACCEPT, 0, 0);
  for (i = 0; i < WAITING; i++) expect_echo(waiting[i], "served later");
  ts_sock_t late = connect_port(es->port);
  expect_echo(late, "after");
  st = echo_stats(es);
  CHECK_EQ(st.connections_refused, st0.connections_refused);
  CHECK_EQ(st.connections_total, st0.connections_total + WAITING + 1);
  ts_close(late);
  for (i = 0; i < EXISTING; i++) ts_close(existing[i]);
  for (i = 0; i < WAITING; i++) ts_close(waiting[i]);
  CHECK_EQ(tt_counter_wait(&es->disconnects, EXISTING + WAITING + 1, TS_WAIT_MS), 0);
  echo_finish(es);
}

static void accept_fails_at_listen(void) {
  echo_server_t *es = create_server();
  log_reset();
  tt_mutex_lock(&g_log_lock);
  g_logged_in_listen = 0;
  g_listen_thread = tt_thread_self();
  g_in_listen = 1;
  tt_mutex_unlock(&g_log_lock);
  iocpsrv_fault_arm(FAULT_ACCEPT, 1, 1);
  int rc = echo_listen(es); /* Windows posts its accepts here: they all fail */
  tt_mutex_lock(&g_log_lock);
  g_in_listen = 0;
  int in_listen = g_logged_in_listen;
  tt_mutex_unlock(&g_log_lock);
  CHECK_OK(rc);
  CHECK_MSG(in_listen == 0, "%d log line(s) from inside iocpsrv_listen (life_lock held)",
            in_listen);

  ts_sock_t s = connect_port(es->port);
  ECHO_WAIT_FOR(echo_stats(es).accept_errors > 0 && log_lines() > 0);
  CHECK_GT(echo_stats(es).accept_errors, 0);
  check_log_lines(1);
  CHECK_EQ(tt_counter_get(&es->connects), 0);

  iocpsrv_fault_arm(FAULT_ACCEPT, 0, 0);
  expect_echo(s, "served later");
  ts_close(s);
  CHECK_EQ(tt_counter_wait(&es->disconnects, 1, TS_WAIT_MS), 0);
  echo_finish(es);
}

static void accept_fails_once(void) {
  echo_server_t *es = start_server();
  iocpsrv_stats_t st0 = echo_stats(es);
  int i;
  log_reset();
  iocpsrv_fault_arm(FAULT_ACCEPT, 2, 0); /* the second call fails, once */
  /* Clients one at a time until the failure happened: each is served, or (Linux: a
   * client waiting when the injected EMFILE came) closed at once. */
  for (i = 0; i < 8 && iocpsrv_fault_failures(FAULT_ACCEPT) == 0; i++) {
    ts_sock_t s = connect_port(es->port);
    uint8_t buf[64];
    size_t got = 0;
    int rc = ts_send_packet(s, "one", 3);
    if (rc == 0) rc = ts_recv_packet(s, buf, sizeof buf, &got, TS_WAIT_MS);
    CHECK_MSG(rc == 0 || rc == TS_EOF || rc == TS_RESET, "client %d: %s", i,
              ts_strerror(rc));
    ts_close(s);
  }
  CHECK_EQ(iocpsrv_fault_failures(FAULT_ACCEPT), 1);
  ECHO_WAIT_FOR(echo_stats(es).accept_errors > st0.accept_errors && log_lines() > 0);
  CHECK_EQ(echo_stats(es).accept_errors, st0.accept_errors + 1);
  check_log_lines(1);
  /* And on it goes. */
  for (i = 0; i < 3; i++) {
    ts_sock_t s = connect_port(es->port);
    expect_echo(s, "after");
    ts_close(s);
  }
  iocpsrv_fault_arm(FAULT_ACCEPT, 0, 0);
  echo_finish(es);
}

int main(int argc, char **argv) {
  test_init(argc, argv);
  tt_mutex_init(&g_log_lock);
  TEST_RUN(accept_fails_persistently);
  TEST_RUN(accept_fails_at_listen);
  TEST_RUN(accept_fails_once);
  return test_done();
}
