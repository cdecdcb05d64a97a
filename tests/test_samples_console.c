/*
 * test_samples_console -- iocpsrv-console driven from the outside, as a user or a script
 * would: commands written to its stdin, its output read line by line (with timeouts,
 * never sleeps), real clients on loopback sockets.
 *
 *   test_samples_console --console PATH [FILTER]
 *
 * CMake passes the built sample's path ($<TARGET_FILE:iocpsrv-console>); under Wine a
 * Linux path is started as Z:\...; see support/proc.h.
 */
#include <stdlib.h>
#include <string.h>

#include "proc.h"
#include "sock.h"
#include "test.h"
#include "thread.h"

static const char *g_console;
static int g_wait_ms = 15000; /* "this line must come": generous, only ever a bound */

#define LINE 1024

/* Start the console with the given extra arguments (NULL-terminated list). */
static tp_proc_t *console_start_args(const char *const *extra) {
  const char *argv[16];
  char err[256];
  int n = 0, i;
  tp_proc_t *p;
  argv[n++] = g_console;
  for (i = 0; extra[i] != NULL && n < 15; i++) argv[n++] = extra[i];
  argv[n] = NULL;
  p = tp_start(argv, err, sizeof err);
  if (p == NULL) test_fail(__FILE__, __LINE__, "%s", err);
  return p;
}

/* Start it on a free port with two workers; returns the port it listens on. */
static tp_proc_t *console_start(int *port) {
  static const char *const args[] = {"--port", "0", "--threads", "2", NULL};
  tp_proc_t *p = console_start_args(args);
  char line[LINE];
  const char *colon;
  TP_EXPECT_LINE(p, 0, "listening on 127.0.0.1:", line, sizeof line, g_wait_ms);
  colon = strrchr(line, ':');
  *port = atoi(colon + 1);
  if (*port <= 0 || *port > 65535) TP_FAIL(p, "no port in \"%s\"", line);
  return p;
}

static void command(tp_proc_t *p, const char *text) {
  if (tp_write(p, text) != 0) TP_FAIL(p, "it stopped reading commands (at \"%s\")", text);
}

/* Connect a client and return its id as the console printed it. */
static ts_sock_t client_connect(tp_proc_t *p, int port, iocpsrv_conn_id_t *id) {
  char addr[64], needle[96], line[LINE];
  unsigned long long v = 0;
  size_t mark = tp_mark(p);
  ts_sock_t s = ts_connect("127.0.0.1", port, g_wait_ms);
  if (s == TS_INVALID) TP_FAIL(p, "cannot connect to port %d", port);
  CHECK_OK(ts_local_addr(s, addr, sizeof addr));
  snprintf(needle, sizeof needle, " connected from %s", addr);
  TP_EXPECT_LINE(p, mark, needle, line, sizeof line, g_wait_ms);
  if (sscanf(line, "client %llu connected from", &v) != 1 || v == 0)
    TP_FAIL(p, "no client id in \"%s\"", line);
  *id = (iocpsrv_conn_id_t)v;
  return s;
}

/* The client must receive one framed packet with exactly this payload. */
static void expect_packet(tp_proc_t *p, ts_sock_t s, const char *text) {
  char buf[256];
  size_t len = 0;
  int rc = ts_recv_packet(s, buf, sizeof buf, &len, g_wait_ms);
  if (rc != TS_OK) TP_FAIL(p, "client: no packet \"%s\": %s", text, ts_strerror(rc));
  if (len != strlen(text) || memcmp(buf, text, len) != 0)
    TP_FAIL(p, "client got \"%.*s\" (%u bytes), expected \"%s\"", (int)len, buf, (unsigned)len,
            text);
}

/* Send `cmd`, then wait for a line containing `needle` in what follows. */
static long command_expect(tp_proc_t *p, const char *cmd, const char *needle, char *line) {
  size_t mark = tp_mark(p);
  command(p, cmd);
  return TP_EXPECT_LINE(p, mark, needle, line, LINE, g_wait_ms);
}

/* One row of `list` for the client at `addr`. */
typedef struct row_s {
  unsigned long long id, packets_in, packets_out, bytes_in, bytes_out;
  char state[32];
} row_t;

static row_t list_row(tp_proc_t *p, const char *addr, int *clients) {
  char line[LINE], peer[64];
  row_t r;
  size_t mark = tp_mark(p);
  long after;
  memset(&r, 0, sizeof r);
  command(p, "list\n");
  after = TP_EXPECT_LINE(p, mark, addr, line, sizeof line, g_wait_ms);
  if (sscanf(line, "%llu %63s %*s %llu %llu %llu %llu %31s", &r.id, peer, &r.packets_in,
             &r.packets_out, &r.bytes_in, &r.bytes_out, r.state) != 7 ||
      strcmp(peer, addr) != 0)
    TP_FAIL(p, "cannot read the list row \"%s\"", line);
  TP_EXPECT_LINE(p, (size_t)after, " client", line, sizeof line, g_wait_ms);
  *clients = atoi(line);
  return r;
}

/* `stats` until its counters say `want` (server totals are published when a worker's
 * batch ends, just after the callback whose output the test saw). */
static void expect_stats(tp_proc_t *p, const char *want) {
  char line[LINE];
  int64_t deadline = tt_now_ms() + g_wait_ms;
  for (;;) {
    size_t mark = tp_mark(p);
    long after;
    command(p, "stats\n");
    after = TP_EXPECT_LINE(p, mark, "stats: connections now", line, sizeof line, g_wait_ms);
    if (strstr(line, want) != NULL) return;
    after = TP_EXPECT_LINE(p, (size_t)after, "stats: packets in", line, sizeof line, g_wait_ms);
    if (strstr(line, want) != NULL) return;
    if (tt_now_ms() > deadline) TP_FAIL(p, "stats never said \"%s\"", want);
    tt_sleep_ms(20); /* pacing the retries, not synchronisation */
  }
}

/* Read whatever the client still gets until the server closes it. */
static int client_wait_close(ts_sock_t s) {
  return ts_wait_close(s, g_wait_ms, NULL);
}

/* ---- sub-tests ------------------------------------------------------------------- */

/* The whole article session: clients come and go, packets shown, list, send,
 * broadcast, stats, kick (graceful and abort), errors, quit. */
static void console_session(void) {
  int port, clients, rc;
  char line[LINE], want[256], addr_a[64], addr_b[64], addr_c[64];
  iocpsrv_conn_id_t a_id, b_id, c_id;
  uint8_t bin[40];
  char big[300];
  size_t mark;
  row_t r;
  tp_proc_t *p = console_start(&port);
  ts_sock_t a, b, c;

  /* A client connects and sends text, binary, empty and long packets. */
  a = client_connect(p, port, &a_id);
  CHECK_OK(ts_local_addr(a, addr_a, sizeof addr_a));
  mark = tp_mark(p);
  CHECK_EQ(ts_send_packet(a, "hello console", 13), TS_OK);
  for (size_t i = 0; i < sizeof bin; i++) bin[i] = (uint8_t)i;
  CHECK_EQ(ts_send_packet(a, bin, sizeof bin), TS_OK);
  CHECK_EQ(ts_send_packet(a, "", 0), TS_OK);
  memset(big, 'x', sizeof big);
  CHECK_EQ(ts_send_packet(a, big, sizeof big), TS_OK);
  snprintf(want, sizeof want, "client %llu packet, 13 bytes: \"hello console\"",
           (unsigned long long)a_id);
  mark = (size_t)TP_EXPECT_LINE(p, mark, want, line, sizeof line, g_wait_ms);
  snprintf(want, sizeof want, "client %llu packet, 40 bytes, binary: 00 01 02 03",
           (unsigned long long)a_id);
  mark = (size_t)TP_EXPECT_LINE(p, mark, want, line, sizeof line, g_wait_ms);
  if (strstr(line, "more bytes)") == NULL) TP_FAIL(p, "binary preview not cut short: %s", line);
  snprintf(want, sizeof want, "client %llu packet, 0 bytes", (unsigned long long)a_id);
  mark = (size_t)TP_EXPECT_LINE(p, mark, want, line, sizeof line, g_wait_ms);
  snprintf(want, sizeof want, "client %llu packet, 300 bytes: \"xxxx", (unsigned long long)a_id);
  mark = (size_t)TP_EXPECT_LINE(p, mark, want, line, sizeof line, g_wait_ms);
  if (strstr(line, "more bytes)") == NULL) TP_FAIL(p, "text preview not cut short: %s", line);

  /* list shows it with the engine's counters. */
  r = list_row(p, addr_a, &clients);
  CHECK_EQ(r.id, a_id);
  CHECK_EQ(r.packets_in, 4);
  CHECK_EQ(r.packets_out, 0);
  CHECK_EQ(r.bytes_in, 4 * 4 + 13 + 40 + 0 + 300);
  CHECK_STREQ(r.state, "open");
  CHECK_EQ(clients, 1);

  /* send ID TEXT reaches that client as one framed packet. */
  snprintf(want, sizeof want, "send %llu hi there\n", (unsigned long long)a_id);
  command_expect(p, want, "sent 8 bytes to client", line);
  expect_packet(p, a, "hi there");

  /* A second client; broadcast reaches both. */
  b = client_connect(p, port, &b_id);
  CHECK_OK(ts_local_addr(b, addr_b, sizeof addr_b));
  CHECK_NE(a_id, b_id);
  command_expect(p, "broadcast to everyone\n", "broadcast 11 bytes to 2 clients", line);
  expect_packet(p, a, "to everyone");
  expect_packet(p, b, "to everyone");

  /* stats counts them. */
  expect_stats(p, "connections now 2, total 2");
  expect_stats(p, "packets in 4, packets out 3");
  r = list_row(p, addr_a, &clients);
  CHECK_EQ(r.packets_out, 2);
  CHECK_EQ(clients, 2);

  /* Mistakes are reported, not fatal. */
  command_expect(p, "send 18446744073709551615 nobody\n", "error: send to client", line);
  if (strstr(line, "no such connection") == NULL) TP_FAIL(p, "unexpected: %s", line);
  command_expect(p, "send\n", "usage: send ID TEXT", line);
  command_expect(p, "kick 0\n", "usage: kick ID", line);
  command_expect(p, "frobnicate now\n", "unknown command 'frobnicate'", line);

  /* kick ID: a graceful close, the client reads the end of the stream. */
  mark = tp_mark(p);
  snprintf(want, sizeof want, "kick %llu\n", (unsigned long long)a_id);
  command(p, want);
  snprintf(want, sizeof want, "kicking client %llu (graceful)", (unsigned long long)a_id);
  TP_EXPECT_LINE(p, mark, want, line, sizeof line, g_wait_ms);
  rc = client_wait_close(a);
  if (rc != TS_EOF) TP_FAIL(p, "kicked client: %s, expected end of stream", ts_strerror(rc));
  ts_close(a);
  snprintf(want, sizeof want, "client %llu disconnected: local-close (%s,",
           (unsigned long long)a_id, addr_a);
  TP_EXPECT_LINE(p, mark, want, line, sizeof line, g_wait_ms);

  /* kick ID abort: a reset (Wine sends a FIN for an abortive close, see test_contract). */
  c = client_connect(p, port, &c_id);
  CHECK_OK(ts_local_addr(c, addr_c, sizeof addr_c));
  mark = tp_mark(p);
  snprintf(want, sizeof want, "kick %llu abort\n", (unsigned long long)c_id);
  command(p, want);
  rc = client_wait_close(c);
  if (!(rc == TS_RESET || (test_under_wine() && rc == TS_EOF)))
    TP_FAIL(p, "aborted client: %s, expected a reset", ts_strerror(rc));
  ts_close(c);
  snprintf(want, sizeof want, "client %llu disconnected: local-abort", (unsigned long long)c_id);
  TP_EXPECT_LINE(p, mark, want, line, sizeof line, g_wait_ms);
  snprintf(want, sizeof want, "kick %llu\n", (unsigned long long)c_id);
  command_expect(p, want, "error: kick client", line); /* its id is dead now */

  r = list_row(p, addr_b, &clients);
  CHECK_EQ(r.id, b_id);
  CHECK_EQ(clients, 1);

  /* quit: the last client is closed (server-stopped), the console exits 0. */
  mark = tp_mark(p);
  command(p, "quit\n");
  TP_EXPECT_LINE(p, mark, "quit: stopping", line, sizeof line, g_wait_ms);
  rc = client_wait_close(b);
  if (rc != TS_EOF) TP_FAIL(p, "client at quit: %s, expected end of stream", ts_strerror(rc));
  ts_close(b);
  snprintf(want, sizeof want, "client %llu disconnected: server-stopped",
           (unsigned long long)b_id);
  TP_EXPECT_LINE(p, mark, want, line, sizeof line, g_wait_ms);
  TP_EXPECT_LINE(p, mark, "stopped: 3 connections served, 4 packets in, 3 packets out", line,
                 sizeof line, g_wait_ms);
  rc = TP_EXPECT_EXIT(p, g_wait_ms);
  if (rc != 0) TP_FAIL(p, "exit status %d after quit, expected 0", rc);
  tp_free(p);
}

/* End of input quits like `quit`, closing the clients. */
static void console_end_of_input(void) {
  int port, rc;
  iocpsrv_conn_id_t id;
  char line[LINE], want[128];
  tp_proc_t *p = console_start(&port);
  ts_sock_t s = client_connect(p, port, &id);
  size_t mark = tp_mark(p);
  tp_close_stdin(p);
  TP_EXPECT_LINE(p, mark, "end of input: stopping", line, sizeof line, g_wait_ms);
  rc = client_wait_close(s);
  if (rc != TS_EOF) TP_FAIL(p, "client: %s, expected end of stream", ts_strerror(rc));
  ts_close(s);
  snprintf(want, sizeof want, "client %llu disconnected: server-stopped", (unsigned long long)id);
  TP_EXPECT_LINE(p, mark, want, line, sizeof line, g_wait_ms);
  rc = TP_EXPECT_EXIT(p, g_wait_ms);
  if (rc != 0) TP_FAIL(p, "exit status %d at end of input, expected 0", rc);
  tp_free(p);
}

/* A whole script piped in at once: commands run in order, comments and blank lines
 * are skipped, no prompt is printed into the pipe. */
static void console_script(void) {
  int port, rc;
  char line[LINE], *out, *s;
  long pos;
  tp_proc_t *p = console_start(&port);
  command(p, "# a comment\n\nhelp\nlist\r\nstats\nsleep 0.01\nquit\nlist\n");
  pos = TP_EXPECT_LINE(p, 0, "commands:", line, sizeof line, g_wait_ms);
  pos = TP_EXPECT_LINE(p, (size_t)pos, "0 clients", line, sizeof line, g_wait_ms);
  pos = TP_EXPECT_LINE(p, (size_t)pos, "stats: connections now 0, total 0", line, sizeof line,
                       g_wait_ms);
  TP_EXPECT_LINE(p, (size_t)pos, "stopped: 0 connections served", line, sizeof line, g_wait_ms);
  rc = TP_EXPECT_EXIT(p, g_wait_ms);
  if (rc != 0) TP_FAIL(p, "exit status %d, expected 0", rc);
  out = tp_output(p);
  CHECK(out != NULL);
  for (s = out; s != NULL && *s; s = strchr(s, '\n') ? strchr(s, '\n') + 1 : NULL) {
    if (strncmp(s, "> ", 2) == 0 || strncmp(s, "error", 5) == 0 || strncmp(s, "usage", 5) == 0)
      TP_FAIL(p, "unexpected output for a piped script: %.40s", s);
  }
  {
    /* Nothing after quit ran: exactly one list. */
    const char *first = strstr(out, "0 clients");
    if (first != NULL && strstr(first + 1, "0 clients") != NULL)
      TP_FAIL(p, "a command after quit ran");
  }
  free(out);
  tp_free(p);
}

/* Echo mode: packets go back to their sender while it is on (so iocpsrv-flood can be
 * the console's client), and only then. */
static void console_echo(void) {
  static const char *const args[] = {"--port", "0", "--threads", "2", "--echo", NULL};
  int port, rc;
  iocpsrv_conn_id_t id;
  char line[LINE], want[128];
  size_t mark;
  tp_proc_t *p = console_start_args(args);
  ts_sock_t s;
  TP_EXPECT_LINE(p, 0, "listening on 127.0.0.1:", line, sizeof line, g_wait_ms);
  port = atoi(strrchr(line, ':') + 1);
  s = client_connect(p, port, &id);
  CHECK_EQ(ts_send_packet(s, "first", 5), TS_OK);
  expect_packet(p, s, "first");

  command_expect(p, "echo off\n", "echo is off", line);
  mark = tp_mark(p);
  CHECK_EQ(ts_send_packet(s, "not echoed", 10), TS_OK);
  snprintf(want, sizeof want, "client %llu packet, 10 bytes: \"not echoed\"",
           (unsigned long long)id);
  TP_EXPECT_LINE(p, mark, want, line, sizeof line, g_wait_ms); /* its echo was decided */
  command_expect(p, "echo on\n", "echo is on", line);
  CHECK_EQ(ts_send_packet(s, "echoed again", 12), TS_OK);
  expect_packet(p, s, "echoed again"); /* the first packet back: "not echoed" was not */
  command_expect(p, "echo maybe\n", "usage: echo on|off", line);
  command_expect(p, "echo\n", "echo is on", line);

  mark = tp_mark(p);
  tp_close_stdin(p);
  rc = client_wait_close(s);
  if (rc != TS_EOF) TP_FAIL(p, "client: %s, expected end of stream", ts_strerror(rc));
  ts_close(s);
  TP_EXPECT_LINE(p, mark, "stopped: 1 connections served, 3 packets in, 2 packets out", line,
                 sizeof line, g_wait_ms);
  rc = TP_EXPECT_EXIT(p, g_wait_ms);
  if (rc != 0) TP_FAIL(p, "exit status %d, expected 0", rc);
  tp_free(p);
}

/* Arguments: --help, bad usage (2), a port already in use (1). */
static void console_usage(void) {
  static const char *const help[] = {"--help", NULL};
  static const char *const bad_port[] = {"--port", "http", NULL};
  static const char *const bad_arg[] = {"--frobnicate", NULL};
  char line[LINE], port_text[16];
  int rc, busy_port = 0;
  tp_proc_t *p;
  ts_sock_t l;

  p = console_start_args(help);
  TP_EXPECT_LINE(p, 0, "usage: iocpsrv-console", line, sizeof line, g_wait_ms);
  TP_EXPECT_LINE(p, 0, "kick ID [abort]", line, sizeof line, g_wait_ms);
  rc = TP_EXPECT_EXIT(p, g_wait_ms);
  if (rc != 0) TP_FAIL(p, "--help: exit status %d, expected 0", rc);
  tp_free(p);

  p = console_start_args(bad_port);
  TP_EXPECT_LINE(p, 0, "--port needs a number", line, sizeof line, g_wait_ms);
  rc = TP_EXPECT_EXIT(p, g_wait_ms);
  if (rc != 2) TP_FAIL(p, "bad --port: exit status %d, expected 2", rc);
  tp_free(p);

  p = console_start_args(bad_arg);
  TP_EXPECT_LINE(p, 0, "unknown argument '--frobnicate'", line, sizeof line, g_wait_ms);
  rc = TP_EXPECT_EXIT(p, g_wait_ms);
  if (rc != 2) TP_FAIL(p, "unknown argument: exit status %d, expected 2", rc);
  tp_free(p);

  l = ts_listen("127.0.0.1", 0, &busy_port);
  CHECK(l != TS_INVALID);
  snprintf(port_text, sizeof port_text, "%d", busy_port);
  {
    const char *const busy[] = {"--port", port_text, NULL};
    p = console_start_args(busy);
  }
  TP_EXPECT_LINE(p, 0, "iocpsrv-console: listen:", line, sizeof line, g_wait_ms);
  rc = TP_EXPECT_EXIT(p, g_wait_ms);
  if (rc != 1) TP_FAIL(p, "port in use: exit status %d, expected 1", rc);
  tp_free(p);
  ts_close(l);
}

/* Ctrl+C (SIGINT) stops the server like quit, even while stdin stays open. */
static void console_interrupt(void) {
  int port, rc;
  iocpsrv_conn_id_t id;
  char line[LINE];
  tp_proc_t *p = console_start(&port);
  ts_sock_t s = client_connect(p, port, &id);
  size_t mark = tp_mark(p);
  if (tp_interrupt(p) != 0) {
    /* Measured under Wine 8: a child started with pipes shares no console with the
     * test (GenerateConsoleCtrlEvent fails), and one started with CREATE_NEW_CONSOLE
     * plus AttachConsole gets "success" but never sees the event. */
    test_skip("no console control event reaches a child started with pipes on Windows");
    ts_close(s);
    tp_free(p);
    return;
  }
  TP_EXPECT_LINE(p, mark, "SIGINT: stopping", line, sizeof line, g_wait_ms);
  rc = client_wait_close(s);
  if (rc != TS_EOF) TP_FAIL(p, "client: %s, expected end of stream", ts_strerror(rc));
  ts_close(s);
  TP_EXPECT_LINE(p, mark, "disconnected: server-stopped", line, sizeof line, g_wait_ms);
  rc = TP_EXPECT_EXIT(p, g_wait_ms);
  if (rc != 0) TP_FAIL(p, "exit status %d after SIGINT, expected 0", rc);
  tp_free(p);
}

int main(int argc, char **argv) {
  char *rest[3] = {argv[0], NULL, NULL};
  int i, n = 1;
  for (i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--console") == 0 && i + 1 < argc) g_console = argv[++i];
    else if (n < 2) rest[n++] = argv[i]; /* a sub-test filter */
  }
  if (g_console == NULL) {
    fprintf(stderr, "usage: %s --console PATH-TO-iocpsrv-console [FILTER]\n", argv[0]);
    return 2;
  }
  test_watchdog_seconds = 120;
  test_init(n, rest);
  if (test_under_wine()) g_wait_ms = 40000; /* starting a Wine process takes seconds */
  printf("console: %s\n", g_console);
  TEST_RUN(console_session);
  TEST_RUN(console_end_of_input);
  TEST_RUN(console_script);
  TEST_RUN(console_echo);
  TEST_RUN(console_usage);
  TEST_RUN(console_interrupt);
  return test_done();
}
