/*
 * test_samples_flood -- iocpsrv-flood as a verifier: it must pass against a correct echo
 * server (the iocpsrv-echo sample, started as a child process) and fail, saying what
 * was wrong, against echo servers that corrupt, lose or cut short an echo (in-process
 * iocpsrv servers from support/echo.h with a packet hook).
 *
 *   test_samples_flood --echo PATH --flood PATH [FILTER]
 *
 * CMake passes the built samples' paths ($<TARGET_FILE:...>); under Wine a Linux path is
 * started as Z:\...; see support/proc.h.
 */
#include <stdlib.h>
#include <string.h>

#include "echo.h"
#include "proc.h"
#include "sock.h"
#include "test.h"
#include "thread.h"

static const char *g_echo;
static const char *g_flood;
static int g_wait_ms = 15000;  /* a line that must come */
static int g_flood_ms = 60000; /* a whole flood run */

#define LINE 1024

static tp_proc_t *start(const char *const *argv) {
  char err[256];
  tp_proc_t *p = tp_start(argv, err, sizeof err);
  if (p == NULL) test_fail(__FILE__, __LINE__, "%s", err);
  return p;
}

/* Run the flood against 127.0.0.1:port with extra arguments; returns the finished
 * process (the caller checks and frees it) and its exit status. */
static tp_proc_t *run_flood(int port, const char *const *extra, int *status) {
  const char *argv[32];
  char port_text[16];
  int n = 0, i;
  tp_proc_t *p;
  snprintf(port_text, sizeof port_text, "%d", port);
  argv[n++] = g_flood;
  argv[n++] = "--host";
  argv[n++] = "127.0.0.1";
  argv[n++] = "--port";
  argv[n++] = port_text;
  argv[n++] = "--no-progress";
  for (i = 0; extra[i] != NULL && n < 31; i++) argv[n++] = extra[i];
  argv[n] = NULL;
  p = start(argv);
  *status = TP_EXPECT_EXIT(p, g_flood_ms);
  return p;
}

/* The output must contain `needle` somewhere. */
static void expect_output(tp_proc_t *p, const char *needle) {
  TP_EXPECT_LINE(p, 0, needle, NULL, 0, 1);
}

/* ---- against the iocpsrv-echo sample --------------------------------------------- */

static tp_proc_t *echo_sample_start(int *port) {
  const char *argv[] = {g_echo, "--port", "0", "--threads", "2", NULL};
  char line[LINE];
  tp_proc_t *p = start(argv);
  TP_EXPECT_LINE(p, 0, "listening on 127.0.0.1:", line, sizeof line, g_wait_ms);
  *port = atoi(strrchr(line, ':') + 1);
  if (*port <= 0 || *port > 65535) TP_FAIL(p, "no port in \"%s\"", line);
  return p;
}

/* Stop the echo sample as Ctrl+C would and check its stats line; where no console
 * control event can reach it (Windows children started with pipes), kill it. */
static void echo_sample_stop(tp_proc_t *echo, unsigned long long packets) {
  char line[LINE], want[128];
  int rc;
  if (tp_interrupt(echo) == 0) {
    TP_EXPECT_LINE(echo, 0, "stats: connections", line, sizeof line, g_wait_ms);
    snprintf(want, sizeof want, "packets in %llu, packets out %llu,", packets, packets);
    if (strstr(line, want) == NULL) TP_FAIL(echo, "stats line without \"%s\"", want);
    if (strstr(line, "errors 0") == NULL) TP_FAIL(echo, "stats line with errors: %s", line);
    rc = TP_EXPECT_EXIT(echo, g_wait_ms);
    if (rc != 0) TP_FAIL(echo, "exit status %d after SIGINT, expected 0", rc);
  } else {
    printf("(iocpsrv-echo killed: no console control event for a piped child here) ");
  }
  tp_free(echo);
}

/* The text summary and the JSON one, message and pattern payloads, several connections
 * and threads with packets in flight: every echo verified, exit 0. */
static void flood_passes_against_echo_sample(void) {
  static const char *const text_run[] = {"--connections", "4", "--count", "2000",
                                         "--depth", "8", "--threads", "2", NULL};
  static const char *const json_run[] = {"--connections", "3", "--count", "500",
                                         "--size", "3000", "--depth", "4", "--json", NULL};
  int port, status;
  tp_proc_t *echo = echo_sample_start(&port);
  tp_proc_t *flood = run_flood(port, text_run, &status);
  if (status != 0) TP_FAIL(flood, "exit status %d against iocpsrv-echo, expected 0", status);
  expect_output(flood, "packets      8,000 echoed and verified");
  expect_output(flood, "errors       0");
  expect_output(flood, "throughput");
  expect_output(flood, "latency      p50");
  tp_free(flood);

  flood = run_flood(port, json_run, &status);
  if (status != 0) TP_FAIL(flood, "--json: exit status %d, expected 0", status);
  expect_output(flood, "\"packets\":1500,");
  expect_output(flood, "\"errors\":0,\"ok\":true}");
  tp_free(flood);

  echo_sample_stop(echo, 8000 + 1500);
}

/* ---- against broken echo servers ------------------------------------------------- */

enum { BREAK_AT = 5 }; /* the packet (1-based, per connection) that goes wrong */

/* Flip a byte in the middle of the echo of packet BREAK_AT. */
static int hook_corrupt(echo_server_t *es, echo_conn_t *c, const uint8_t *data, size_t len) {
  uint8_t copy[256];
  if (c->packets != BREAK_AT || len == 0 || len > sizeof copy) return ECHO_DEFAULT;
  memcpy(copy, data, len);
  copy[len / 2] ^= 0x20;
  iocpsrv_send(es->srv, c->id, copy, len);
  return ECHO_SKIP;
}

/* The echo of packet BREAK_AT has one byte too many. */
static int hook_longer(echo_server_t *es, echo_conn_t *c, const uint8_t *data, size_t len) {
  uint8_t copy[257];
  if (c->packets != BREAK_AT || len >= sizeof copy) return ECHO_DEFAULT;
  memcpy(copy, data, len);
  copy[len] = '!';
  iocpsrv_send(es->srv, c->id, copy, len + 1);
  return ECHO_SKIP;
}

/* Packet BREAK_AT is never echoed. */
static int hook_lose(echo_server_t *es, echo_conn_t *c, const uint8_t *data, size_t len) {
  return c->packets == BREAK_AT ? ECHO_SKIP : ECHO_DEFAULT;
}

/* The server closes the connection instead of echoing packet BREAK_AT. */
static int hook_close(echo_server_t *es, echo_conn_t *c, const uint8_t *data, size_t len) {
  return c->packets == BREAK_AT ? ECHO_SKIP_CLOSE : ECHO_DEFAULT;
}

/* Run the flood (2 connections, message payloads) against an in-process echo with
 * `hook`; it must exit 1 and print every `needles` entry. */
static void flood_must_fail(echo_packet_hook_t hook, const char *const *extra,
                            const char *const *needles) {
  const char *args[24];
  int n = 0, i, status;
  echo_config_t cfg;
  echo_server_t *es;
  tp_proc_t *flood;
  memset(&cfg, 0, sizeof cfg);
  cfg.on_packet = hook;
  es = echo_start(&cfg);
  args[n++] = "--connections";
  args[n++] = "2";
  args[n++] = "--count";
  args[n++] = "50";
  for (i = 0; extra[i] != NULL && n < 23; i++) args[n++] = extra[i];
  args[n] = NULL;
  flood = run_flood(es->port, args, &status);
  if (status != 1) TP_FAIL(flood, "exit status %d against a broken echo, expected 1", status);
  for (i = 0; needles[i] != NULL; i++) expect_output(flood, needles[i]);
  tp_free(flood);
  echo_finish(es);
}

static void flood_detects_corrupted_byte(void) {
  static const char *const extra[] = {"--depth", "4", NULL};
  /* "Test Item 5": the middle byte (5 of 11) is 'I', flipped to 'i'. */
  static const char *const needles[] = {
      "iocpsrv-flood: connection 0: echo 5 differs at payload byte 5: got 0x69, expected 0x49",
      "iocpsrv-flood: connection 1: echo 5 differs at payload byte 5",
      "iocpsrv-flood: FAILED: 2 connections had errors", NULL};
  flood_must_fail(hook_corrupt, extra, needles);
}

static void flood_detects_wrong_length(void) {
  static const char *const extra[] = {NULL};
  static const char *const needles[] = {"echo 5 has length 12, expected 11",
                                        "FAILED: 2 connections had errors", NULL};
  flood_must_fail(hook_longer, extra, needles);
}

static void flood_detects_lost_echo(void) {
  static const char *const extra[] = {"--timeout", "1", NULL};
  static const char *const needles[] = {"4 of 5 sent echoed, 1 in flight (lost, or never echoed)",
                                        "FAILED: 2 connections had errors (stalled)", NULL};
  flood_must_fail(hook_lose, extra, needles);
}

static void flood_detects_early_close(void) {
  static const char *const extra[] = {NULL};
  static const char *const needles[] = {"server closed the connection early: 4 of 5 echoed",
                                        "FAILED: 2 connections had errors", NULL};
  flood_must_fail(hook_close, extra, needles);
}

/* Nothing listening: a clear message and exit 1; bad usage: exit 2. */
static void flood_usage_and_refused(void) {
  static const char *const none[] = {NULL};
  static const char *const bad[] = {"--depth", "zero", NULL};
  int port = 0, status;
  tp_proc_t *flood;
  ts_sock_t l = ts_listen("127.0.0.1", 0, &port); /* a free port, closed again: refused */
  CHECK(l != TS_INVALID);
  ts_close(l);
  flood = run_flood(port, none, &status);
  if (status != 1) TP_FAIL(flood, "nothing listening: exit status %d, expected 1", status);
  expect_output(flood, "iocpsrv-flood: cannot connect to 127.0.0.1:");
  tp_free(flood);
  flood = run_flood(port, bad, &status);
  if (status != 2) TP_FAIL(flood, "bad --depth: exit status %d, expected 2", status);
  expect_output(flood, "--depth");
  tp_free(flood);
}

int main(int argc, char **argv) {
  char *rest[3] = {argv[0], NULL, NULL};
  int i, n = 1;
  for (i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--echo") == 0 && i + 1 < argc) g_echo = argv[++i];
    else if (strcmp(argv[i], "--flood") == 0 && i + 1 < argc) g_flood = argv[++i];
    else if (n < 2) rest[n++] = argv[i]; /* a sub-test filter */
  }
  if (g_echo == NULL || g_flood == NULL) {
    fprintf(stderr, "usage: %s --echo PATH --flood PATH [FILTER]\n", argv[0]);
    return 2;
  }
  test_watchdog_seconds = 150;
  test_init(n, rest);
  if (test_under_wine()) { /* about ten times slower, and process start-up takes seconds */
    g_wait_ms = 40000;
    g_flood_ms = 120000;
  }
  printf("echo: %s\nflood: %s\n", g_echo, g_flood);
  TEST_RUN(flood_passes_against_echo_sample);
  TEST_RUN(flood_detects_corrupted_byte);
  TEST_RUN(flood_detects_wrong_length);
  TEST_RUN(flood_detects_lost_echo);
  TEST_RUN(flood_detects_early_close);
  TEST_RUN(flood_usage_and_refused);
  return test_done();
}
