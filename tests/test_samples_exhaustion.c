/*
 * test_samples_exhaustion -- iocpsrv-echo out of descriptors (issue 15, item 7, "done
 * when"): started under `ulimit -n 64` and given 100 clients, it must use under 20% of
 * a core, keep echoing for the clients it accepted, log at most a line a second, close
 * (or later serve) the clients past the limit, and serve a new client once the others
 * leave. Before the fix it spun at a whole core and printed millions of "accept
 * failed" lines while the clients past the limit hung.
 *
 *   test_samples_exhaustion --echo PATH [FILTER]
 *
 * Linux only (ulimit, /proc/PID/stat); CMake does not register it on Windows, where
 * test_accept_faults covers AcceptEx failures.
 */
#include <stdlib.h>
#include <string.h>

#include "proc.h"
#include "sock.h"
#include "test.h"
#include "thread.h"

#ifndef _WIN32
#  include <unistd.h>
#endif

static const char *g_echo;

#define LINE 1024
#define CLIENTS 100
#define WINDOW_MS 2000

#ifndef _WIN32

/* utime + stime of a process, in ms, from /proc/PID/stat. */
static int64_t proc_cpu_ms(long pid) {
  char path[64], buf[1024];
  FILE *f;
  size_t n;
  char *p;
  unsigned long long utime = 0, stime = 0;
  int field;
  snprintf(path, sizeof path, "/proc/%ld/stat", pid);
  f = fopen(path, "r");
  CHECK_MSG(f != NULL, "cannot open %s", path);
  n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  p = strrchr(buf, ')'); /* the command name may hold spaces */
  CHECK(p != NULL);
  p++;
  /* Field 3 (state) follows ')'; utime and stime are fields 14 and 15. */
  for (field = 3; field <= 15 && *p; field++) {
    while (*p == ' ') p++;
    if (field == 14) utime = strtoull(p, NULL, 10);
    if (field == 15) stime = strtoull(p, NULL, 10);
    while (*p && *p != ' ') p++;
  }
  return (int64_t)((utime + stime) * 1000ULL / (unsigned long long)sysconf(_SC_CLK_TCK));
}

/* Lines of the child's output that contain `needle`. */
static int count_lines(tp_proc_t *p, const char *needle) {
  char *out = tp_output(p), *s = out;
  int n = 0;
  while (s && (s = strstr(s, needle)) != NULL) {
    n++;
    s += strlen(needle);
  }
  free(out);
  return n;
}

/* Send a packet; 1 if it comes back, 0 if the server closes the client instead. */
static int echo_or_closed(tp_proc_t *echo, ts_sock_t s, int i) {
  uint8_t buf[64];
  size_t got = 0;
  int rc = ts_send_packet(s, "ping", 4);
  if (rc == 0) rc = ts_recv_packet(s, buf, sizeof buf, &got, 5000);
  if (rc == 0) {
    if (got != 4 || memcmp(buf, "ping", 4) != 0) TP_FAIL(echo, "client %d: wrong echo", i);
    return 1;
  }
  if (rc == TS_EOF || rc == TS_RESET || rc == TS_ERR) return 0;
  TP_FAIL(echo, "client %d: neither echoed nor closed within 5 s: %s", i, ts_strerror(rc));
}

static void expect_echo(tp_proc_t *echo, ts_sock_t s, const char *what) {
  uint8_t buf[64];
  size_t got = 0;
  int rc = ts_send_packet(s, what, strlen(what));
  if (rc == 0) rc = ts_recv_packet(s, buf, sizeof buf, &got, TS_WAIT_MS);
  if (rc != 0) TP_FAIL(echo, "no echo for \"%s\": %s", what, ts_strerror(rc));
  if (got != strlen(what) || memcmp(buf, what, got) != 0)
    TP_FAIL(echo, "wrong echo for \"%s\"", what);
}

static void echo_under_ulimit_64(void) {
  /* The shell's pid is the sample's after exec. */
  const char *argv[] = {"/bin/sh", "-c", "echo \"pid $$\"; ulimit -n 64 && exec \"$0\" --port 0",
                        g_echo, NULL};
  char err[256], line[LINE];
  ts_sock_t clients[CLIENTS];
  int served = 0, closed = 0, first_served = -1, i, rc;
  long pid;
  tp_proc_t *echo = tp_start(argv, err, sizeof err);
  if (echo == NULL) test_fail(__FILE__, __LINE__, "%s", err);
  TP_EXPECT_LINE(echo, 0, "pid ", line, sizeof line, 15000);
  pid = atol(line + 4);
  TP_EXPECT_LINE(echo, 0, "listening on 127.0.0.1:", line, sizeof line, 15000);
  int port = atoi(strrchr(line, ':') + 1);
  if (pid <= 0 || port <= 0) TP_FAIL(echo, "no pid or port");

  int64_t t0 = tt_now_ms();
  for (i = 0; i < CLIENTS; i++) {
    clients[i] = ts_connect("127.0.0.1", port, TS_WAIT_MS);
    if (clients[i] == TS_INVALID) TP_FAIL(echo, "connect %d failed", i);
  }
  /* The clients wait (or are closed) now: the sample must not spin meanwhile. */
  int64_t c0 = proc_cpu_ms(pid), w0 = tt_now_ms();
  while (tt_now_ms() - w0 < WINDOW_MS) tt_sleep_ms(20);
  int64_t c1 = proc_cpu_ms(pid), w1 = tt_now_ms();
  printf("(CPU %lld ms in %lld ms) ", (long long)(c1 - c0), (long long)(w1 - w0));
  if ((c1 - c0) * 5 >= w1 - w0)
    TP_FAIL(echo, "iocpsrv-echo used %lld ms of CPU in %lld ms (over 20%% of a core)",
            (long long)(c1 - c0), (long long)(w1 - w0));

  for (i = 0; i < CLIENTS; i++) {
    if (echo_or_closed(echo, clients[i], i)) {
      served++;
      if (first_served < 0) first_served = i;
    } else {
      closed++;
    }
  }
  printf("(%d served, %d closed) ", served, closed);
  if (served < 1) TP_FAIL(echo, "no client was served");
  if (closed < 1) TP_FAIL(echo, "every client was served: the limit did not bite");
  /* Still echoing for the clients it has. */
  expect_echo(echo, clients[first_served], "still here");

  int64_t elapsed = tt_now_ms() - t0;
  int lines = count_lines(echo, "iocpsrv: ");
  printf("(%d log lines in %lld ms) ", lines, (long long)elapsed);
  if (lines < 1) TP_FAIL(echo, "no log line about the failing accepts");
  if (lines > elapsed / 1000 + 1)
    TP_FAIL(echo, "%d log lines in %lld ms: more than one a second", lines, (long long)elapsed);

  /* The others leave: a new client is served. The server closes their sockets as it
   * sees them go, so a client that comes at once may still find no descriptor (and
   * be closed): try until one is served, within a deadline. */
  for (i = 0; i < CLIENTS; i++) ts_close(clients[i]);
  int64_t deadline = tt_now_ms() + TS_WAIT_MS;
  int tries = 0;
  for (;;) {
    ts_sock_t late = ts_connect("127.0.0.1", port, TS_WAIT_MS);
    if (late == TS_INVALID) TP_FAIL(echo, "connect after the others left failed");
    tries++;
    rc = echo_or_closed(echo, late, CLIENTS + tries);
    ts_close(late);
    if (rc) break;
    if (tt_now_ms() > deadline)
      TP_FAIL(echo, "no new client served within %d ms after the others left", TS_WAIT_MS);
    tt_sleep_ms(20);
  }
  printf("(a new client served at try %d) ", tries);

  if (tp_interrupt(echo) == 0) {
    TP_EXPECT_LINE(echo, 0, "stats: connections", line, sizeof line, 15000);
    rc = TP_EXPECT_EXIT(echo, 15000);
    if (rc != 0) TP_FAIL(echo, "exit status %d after SIGINT, expected 0", rc);
  }
  tp_free(echo);
}

#endif

int main(int argc, char **argv) {
  int i;
  for (i = 1; i + 1 < argc; i++)
    if (strcmp(argv[i], "--echo") == 0) g_echo = argv[i + 1];
  if (g_echo == NULL) {
    fprintf(stderr, "usage: test_samples_exhaustion --echo PATH\n");
    return 2;
  }
  test_init(1, argv);
#ifdef _WIN32
  printf("skipped: Linux only (ulimit)\n");
  return 0;
#else
  TEST_RUN(echo_under_ulimit_64);
  return test_done();
#endif
}
