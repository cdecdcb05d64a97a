/* test.c -- the runner and helpers behind test.h. */
#ifndef _WIN32
#  define _GNU_SOURCE
#endif
#include "test.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "sock.h"
#include "thread.h"

#ifdef _WIN32
#  include <windows.h>
#  include <process.h>
#else
#  include <signal.h>
#  include <sys/resource.h>
#  include <unistd.h>
#endif

int test_watchdog_seconds = 45;
static const char *g_current = "(init)";
static const char *g_filter = NULL;
static int g_ran, g_skipped_now, g_skipped;
static tt_counter_t g_done;

#if defined(__GNUC__)
__attribute__((noreturn))
#endif
static void test_exit_now(int code) {
  fflush(stdout);
  fflush(stderr);
  _exit(code);
}

void test_fail(const char *file, int line, const char *fmt, ...) {
  va_list ap;
  fprintf(stderr, "\n%s:%d: [%s] ", file, line, g_current);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fprintf(stderr, "\nFAILED\n");
  test_exit_now(1);
}

#ifndef _WIN32
static void on_sigpipe(int sig) {
  (void)sig;
  static const char msg[] =
      "\nSIGPIPE raised: a write to a closed socket without MSG_NOSIGNAL "
      "(the test clients always pass it, so this came from the library)\nFAILED\n";
  ssize_t rc = write(2, msg, sizeof msg - 1);
  (void)rc;
  _exit(1);
}
#endif

void test_init(int argc, char **argv) {
  setvbuf(stdout, NULL, _IONBF, 0);
  setvbuf(stderr, NULL, _IONBF, 0);
  if (ts_init() != 0) {
    fprintf(stderr, "socket start-up failed\n");
    test_exit_now(1);
  }
#ifndef _WIN32
  /* Deliberately not SIG_IGN: a library that lets SIGPIPE through would kill its
   * host, and the test must say so. */
  signal(SIGPIPE, on_sigpipe);
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
#endif
  tt_counter_init(&g_done);
  if (argc > 1) g_filter = argv[1];
  const char *v = getenv("IOCPSRV_TEST_WATCHDOG");
  if (v && atoi(v) > 0) test_watchdog_seconds = atoi(v);
  printf("iocpsrv %s (header %d.%d.%d)\n", iocpsrv_version_string(),
         IOCPSRV_VERSION_MAJOR, IOCPSRV_VERSION_MINOR, IOCPSRV_VERSION_PATCH);
}

const char *test_current(void) { return g_current; }

typedef struct {
  int64_t gen;
  const char *name;
} watchdog_arg_t;

static void watchdog(void *p) {
  watchdog_arg_t *a = (watchdog_arg_t *)p;
  if (tt_counter_wait(&g_done, a->gen, test_watchdog_seconds * 1000) != 0) {
    fprintf(stderr, "\nWATCHDOG: sub-test %s still running after %d s (hung?)\nFAILED\n",
            a->name, test_watchdog_seconds);
    test_exit_now(3);
  }
}

void test_run(const char *name, void (*fn)(void)) {
  if (g_filter && !strstr(name, g_filter)) return;
  watchdog_arg_t a;
  a.gen = tt_counter_get(&g_done) + 1;
  a.name = name;
  g_current = name;
  g_skipped_now = 0;
  printf("%s ... ", name);
  tt_thread_t *wd = tt_thread_start(watchdog, &a);
  int64_t t0 = tt_now_ms();
  fn();
  int64_t t1 = tt_now_ms();
  tt_counter_add(&g_done, 1);
  tt_thread_join(wd);
  if (g_skipped_now)
    g_skipped++;
  else
    printf("ok (%lld ms)\n", (long long)(t1 - t0));
  g_ran++;
  g_current = "(between tests)";
}

void test_skip(const char *fmt, ...) {
  va_list ap;
  printf("SKIPPED: ");
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  printf("\n");
  g_skipped_now = 1;
}

int test_done(void) {
  if (g_ran == 0) {
    printf("no sub-test matched the filter \"%s\"\n", g_filter ? g_filter : "");
    return 1;
  }
  printf("all %d sub-tests passed (%d skipped)\n", g_ran - g_skipped, g_skipped);
  return 0;
}

uint8_t test_pattern_byte(uint64_t seed, size_t i) {
  uint64_t x = seed * 0x9E3779B97F4A7C15ULL + (uint64_t)i * 0xBF58476D1CE4E5B9ULL;
  x ^= x >> 31;
  x *= 0x94D049BB133111EBULL;
  x ^= x >> 29;
  return (uint8_t)x;
}

void test_fill_pattern(void *buf, size_t len, uint64_t seed) {
  uint8_t *p = (uint8_t *)buf;
  size_t i;
  for (i = 0; i < len; i++) p[i] = test_pattern_byte(seed, i);
}

size_t test_check_pattern(const void *buf, size_t len, uint64_t seed) {
  const uint8_t *p = (const uint8_t *)buf;
  size_t i;
  for (i = 0; i < len; i++)
    if (p[i] != test_pattern_byte(seed, i)) return i;
  return (size_t)-1;
}

void test_put_u32le(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
  p[2] = (uint8_t)(v >> 16);
  p[3] = (uint8_t)(v >> 24);
}

uint32_t test_get_u32le(const uint8_t *p) {
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
         ((uint32_t)p[3] << 24);
}

uint32_t test_hash(const void *data, size_t len) {
  const uint8_t *p = (const uint8_t *)data;
  uint32_t h = 2166136261u;
  size_t i;
  for (i = 0; i < len; i++) {
    h ^= p[i];
    h *= 16777619u;
  }
  return h;
}

int test_under_wine(void) {
#ifdef _WIN32
  /* Wine's ntdll exports wine_get_version; Windows' does not. */
  HMODULE ntdll = GetModuleHandleA("ntdll.dll");
  return ntdll && GetProcAddress(ntdll, "wine_get_version") != NULL;
#else
  return 0;
#endif
}

iocpsrv_stats_t test_stats(iocpsrv_t *srv) {
  iocpsrv_stats_t st;
  memset(&st, 0, sizeof st);
  st.struct_size = sizeof st;
  CHECK_OK(iocpsrv_stats(srv, &st));
  return st;
}

iocpsrv_conn_info_t test_conn_info(iocpsrv_t *srv, iocpsrv_conn_id_t id) {
  iocpsrv_conn_info_t info;
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  CHECK_OK(iocpsrv_conn_info(srv, id, &info));
  return info;
}

int test_wait_connections_now(iocpsrv_t *srv, uint64_t n, int timeout_ms) {
  int64_t end = tt_now_ms() + timeout_ms;
  while (test_stats(srv).connections_now != n) {
    if (tt_now_ms() >= end) return -1;
    tt_sleep_ms(1);
  }
  return 0;
}
