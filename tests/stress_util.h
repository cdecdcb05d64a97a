/*
 * stress_util.h -- helpers shared by test_hostile.c, test_stress.c and test_c15k.c.
 *
 * Header-only (static functions) so the support library's source list stays as it is:
 *   - sanitizer detection, to scale counts down and skip figures a sanitizer distorts;
 *   - process memory: resident set size (Linux /proc/self/statm, Windows
 *     K32GetProcessMemoryInfo) and glibc's heap bytes in use (mallinfo2);
 *   - su_bystander_t: a well-behaved client on its own thread that echoes paced,
 *     sequence-numbered packets and verifies every reply, so a test can show that
 *     other clients are unaffected while a hostile one does its worst;
 *   - su_server_t: a light echo server that allocates nothing per connection once
 *     started (a preallocated pool of records), so memory figures are the library's,
 *     and that checks the contract itself: serialized callbacks, connect first, exactly
 *     one disconnect, and no callback at all once iocpsrv_stop has returned.
 */
#ifndef IOCPSRV_TEST_STRESS_UTIL_H
#define IOCPSRV_TEST_STRESS_UTIL_H

#ifndef _WIN32
#  ifndef _GNU_SOURCE
#    define _GNU_SOURCE
#  endif
#endif

#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "echo.h"
#include "sock.h"
#include "test.h"
#include "thread.h"

#ifdef _WIN32
#  include <windows.h>
#else
#  include <malloc.h>
#  include <unistd.h>
#endif

#if defined(__GNUC__)
#  define SU_UNUSED __attribute__((unused))
#else
#  define SU_UNUSED
#endif

/* ---- sanitizers ---- */
#if defined(__SANITIZE_ADDRESS__)
#  define SU_ASAN 1
#endif
#if defined(__SANITIZE_THREAD__)
#  define SU_TSAN 1
#endif
#if defined(__has_feature)
#  if __has_feature(address_sanitizer) && !defined(SU_ASAN)
#    define SU_ASAN 1
#  endif
#  if __has_feature(thread_sanitizer) && !defined(SU_TSAN)
#    define SU_TSAN 1
#  endif
#endif
#if defined(SU_ASAN) || defined(SU_TSAN)
#  define SU_SANITIZED 1
#endif

static SU_UNUSED int su_sanitized(void) {
#ifdef SU_SANITIZED
  return 1;
#else
  return 0;
#endif
}

static SU_UNUSED const char *su_sanitizer_name(void) {
#if defined(SU_TSAN)
  return "ThreadSanitizer";
#elif defined(SU_ASAN)
  return "AddressSanitizer";
#else
  return "none";
#endif
}

/* A count scaled for the build: full natively, `sanitized` under ASan/TSan, `wine`
 * under Wine (the smaller of the two if both apply). IOCPSRV_TEST_SCALE_PERCENT
 * (1..100) scales further, for a loaded machine. */
static SU_UNUSED int su_count(int full, int sanitized, int wine) {
  int n = full;
  if (su_sanitized() && sanitized < n) n = sanitized;
  if (test_under_wine() && wine < n) n = wine;
  const char *v = getenv("IOCPSRV_TEST_SCALE_PERCENT");
  if (v && atoi(v) > 0 && atoi(v) < 100) {
    n = (int)((int64_t)n * atoi(v) / 100);
    if (n < 1) n = 1;
  }
  return n;
}

/* ---- memory ---- */

/* Resident set size of this process in bytes, or -1 (then *why says why). */
static SU_UNUSED int64_t su_rss_bytes(const char **why) {
  if (why) *why = "";
#ifdef _WIN32
  typedef struct {
    DWORD cb, PageFaultCount;
    SIZE_T PeakWorkingSetSize, WorkingSetSize, QuotaPeakPagedPoolUsage, QuotaPagedPoolUsage,
        QuotaPeakNonPagedPoolUsage, QuotaNonPagedPoolUsage, PagefileUsage, PeakPagefileUsage;
  } su_pmc_t; /* PROCESS_MEMORY_COUNTERS, without needing psapi.h or -lpsapi */
  typedef BOOL(WINAPI * su_gpmi_t)(HANDLE, su_pmc_t *, DWORD);
  static su_gpmi_t fn;
  if (!fn) {
    HMODULE k = GetModuleHandleA("kernel32.dll");
    fn = k ? (su_gpmi_t)(void (*)(void))GetProcAddress(k, "K32GetProcessMemoryInfo") : NULL;
    if (!fn) {
      HMODULE p = LoadLibraryA("psapi.dll");
      fn = p ? (su_gpmi_t)(void (*)(void))GetProcAddress(p, "GetProcessMemoryInfo") : NULL;
    }
  }
  if (!fn) {
    if (why) *why = "neither K32GetProcessMemoryInfo nor psapi!GetProcessMemoryInfo exists";
    return -1;
  }
  su_pmc_t pmc;
  memset(&pmc, 0, sizeof pmc);
  pmc.cb = sizeof pmc;
  if (!fn(GetCurrentProcess(), &pmc, sizeof pmc) || pmc.WorkingSetSize == 0) {
    if (why) *why = "GetProcessMemoryInfo failed or reports a working set of 0";
    return -1;
  }
  return (int64_t)pmc.WorkingSetSize;
#else
  FILE *f = fopen("/proc/self/statm", "r");
  long long size = 0, resident = 0;
  if (!f) {
    if (why) *why = "/proc/self/statm cannot be opened";
    return -1;
  }
  int n = fscanf(f, "%lld %lld", &size, &resident);
  fclose(f);
  if (n != 2) {
    if (why) *why = "/proc/self/statm is not in the expected format";
    return -1;
  }
  return (int64_t)resident * (int64_t)sysconf(_SC_PAGESIZE);
#endif
}

/* Bytes glibc's malloc has handed out and not had back (every arena, mmapped blocks
 * included), or -1 where that is not known: not glibc, older than 2.33, or a sanitizer
 * that replaces malloc. This is what a leak moves, whatever the allocator keeps. */
static SU_UNUSED int64_t su_heap_in_use(void) {
#if defined(__GLIBC__) && defined(__GLIBC_PREREQ) && !defined(SU_SANITIZED)
#  if __GLIBC_PREREQ(2, 33)
  struct mallinfo2 mi = mallinfo2();
  return (int64_t)(mi.uordblks + mi.hblkhd);
#  else
  return -1;
#  endif
#else
  return -1;
#endif
}

/* Whether RSS figures mean anything for this build (sanitizers keep freed memory in
 * quarantine and shadow memory moves with it). */
static SU_UNUSED int su_rss_meaningful(const char **why) {
#ifdef SU_SANITIZED
  if (why) *why = "RSS is not the library's under a sanitizer (shadow memory, quarantine)";
  return 0;
#else
  return su_rss_bytes(why) >= 0;
#endif
}

static SU_UNUSED double su_kib(int64_t bytes) { return (double)bytes / 1024.0; }

/* ---- the bystander: a well-behaved client that keeps echoing ---- */

typedef struct su_bystander_s {
  ts_sock_t s;
  tt_thread_t *th;
  tt_counter_t roundtrips;
  atomic_int quit;
  uint32_t seq;
  size_t max_len;  /* largest payload it sends */
  int rc;          /* first TS_* failure, 0 while all is well */
  char what[160];  /* what failed */
  char local[80];  /* the client's address = the server's peer text for it */
} su_bystander_t;

static SU_UNUSED size_t su_bystander_len(const su_bystander_t *b) {
  /* Mostly small, now and then a packet larger than one read (64 KiB). */
  size_t len = b->seq % 97 == 96 ? 100000 : 4 + (size_t)(b->seq * 37u) % 1500;
  return len > b->max_len ? b->max_len : len;
}

/* One round trip; 0 or a TS_* code (what is set). */
static SU_UNUSED int su_bystander_once(su_bystander_t *b, uint8_t *out, uint8_t *in,
                                       size_t cap) {
  size_t len = su_bystander_len(b), got = 0;
  test_fill_pattern(out, len, 0xB157A9DEULL + b->seq);
  test_put_u32le(out, b->seq);
  int rc = ts_send_packet(b->s, out, len);
  if (rc != 0) {
    snprintf(b->what, sizeof b->what, "send of packet %u (%u bytes): %s", b->seq,
             (unsigned)len, ts_strerror(rc));
    return rc;
  }
  rc = ts_recv_packet(b->s, in, cap, &got, TS_WAIT_MS);
  if (rc != 0) {
    snprintf(b->what, sizeof b->what, "echo of packet %u: %s", b->seq, ts_strerror(rc));
    return rc;
  }
  if (got != len || memcmp(in, out, len) != 0) {
    snprintf(b->what, sizeof b->what, "echo of packet %u differs (%u bytes, sent %u)",
             b->seq, (unsigned)got, (unsigned)len);
    return TS_ERR;
  }
  b->seq++;
  return 0;
}

static SU_UNUSED void su_bystander_main(void *p) {
  su_bystander_t *b = (su_bystander_t *)p;
  size_t cap = b->max_len;
  uint8_t *out = (uint8_t *)malloc(cap), *in = (uint8_t *)malloc(cap);
  if (!out || !in) test_fail(__FILE__, __LINE__, "out of memory");
  while (!atomic_load(&b->quit)) {
    int rc = su_bystander_once(b, out, in, cap);
    if (rc != 0) {
      b->rc = rc;
      tt_counter_add(&b->roundtrips, 1000000000); /* wake any waiter: it checks rc */
      break;
    }
    tt_counter_add(&b->roundtrips, 1);
    tt_sleep_ms(1); /* pacing: a steady, light client, not a flood */
  }
  free(out);
  free(in);
}

/* Connect to host:port, check one echo here, then keep echoing on a thread. Payloads
 * go up to max_len bytes (0: 100000, more than one 64 KiB read; at least 4). */
static SU_UNUSED void su_bystander_start(su_bystander_t *b, const char *host, int port,
                                         size_t max_len) {
  memset(b, 0, sizeof *b);
  b->max_len = max_len == 0 ? 100000 : max_len < 4 ? 4 : max_len;
  tt_counter_init(&b->roundtrips);
  atomic_init(&b->quit, 0);
  b->s = ts_connect(host ? host : "127.0.0.1", port, TS_WAIT_MS);
  CHECK_MSG(b->s != TS_INVALID, "bystander: connect to port %d failed", port);
  CHECK_EQ(ts_local_addr(b->s, b->local, sizeof b->local), 0);
  uint8_t out[64], in[64];
  b->seq = 0;
  int rc = su_bystander_once(b, out, in, sizeof in); /* seq 0: 4 bytes */
  CHECK_MSG(rc == 0, "bystander: %s", b->what);
  b->th = tt_thread_start(su_bystander_main, b);
  CHECK(b->th != NULL);
}

/* The bystander is still served: n more round trips complete (within TS_WAIT_MS). */
static SU_UNUSED void su_bystander_expect_progress(su_bystander_t *b, int n) {
  int64_t target = tt_counter_get(&b->roundtrips) + n;
  int rc = tt_counter_wait(&b->roundtrips, target, TS_WAIT_MS);
  CHECK_MSG(b->rc == 0, "the well-behaved client was affected: %s", b->what);
  CHECK_MSG(rc == 0, "the well-behaved client made no progress for %d ms (%lld round "
            "trips so far)", TS_WAIT_MS, (long long)tt_counter_get(&b->roundtrips));
}

/* Stop echoing, check that nothing went wrong, keep the socket open (returned). */
static SU_UNUSED ts_sock_t su_bystander_stop(su_bystander_t *b) {
  atomic_store(&b->quit, 1);
  tt_thread_join(b->th);
  b->th = NULL;
  CHECK_MSG(b->rc == 0, "the well-behaved client was affected: %s", b->what);
  CHECK_GT(b->seq, 1);
  tt_counter_destroy(&b->roundtrips);
  return b->s;
}

/* ---- su_server_t: a light, self-checking echo server ---- */

typedef struct su_conn_s {
  iocpsrv_conn_id_t id;
  atomic_int busy;        /* a callback for it is running */
  atomic_int state;       /* 0 never used, 1 open, 2 disconnected */
  atomic_int reason;
  atomic_int disconnects;
  atomic_uint_fast64_t packets;
} su_conn_t;

typedef struct su_server_s su_server_t;
/* Optional packet hook: return 0 to echo, 1 to skip the echo. */
typedef int (*su_packet_hook_t)(su_server_t *s, su_conn_t *c, const uint8_t *data,
                                size_t len);

struct su_server_s {
  iocpsrv_t *srv;
  int port;
  su_conn_t *pool;
  int cap;
  atomic_int next;          /* records handed out */
  tt_counter_t connects, disconnects, packets;
  atomic_int in_callback;   /* callbacks running now */
  atomic_int stop_returned; /* set once iocpsrv_stop has returned: no callback may run */
  atomic_int violations;
  atomic_int reasons[16];
  atomic_int send_errors, last_send_error;
  int echo;                 /* echo every packet (default 1) */
  su_packet_hook_t on_packet;
  void *ctx;
  tt_mutex_t lock;
  char first_violation[256];
};

static SU_UNUSED void su_violation(su_server_t *s, const char *fmt, ...) {
  char msg[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  tt_mutex_lock(&s->lock);
  if (atomic_fetch_add(&s->violations, 1) == 0)
    snprintf(s->first_violation, sizeof s->first_violation, "%s", msg);
  tt_mutex_unlock(&s->lock);
  fprintf(stderr, "[su_server] contract breach: %s\n", msg);
}

static SU_UNUSED su_server_t *su_of(iocpsrv_t *srv) {
  su_server_t *s = (su_server_t *)iocpsrv_user_data(srv);
  if (!s || s->srv != srv) test_fail(__FILE__, __LINE__, "iocpsrv_user_data is not ours");
  return s;
}

static SU_UNUSED void su_enter(su_server_t *s, const char *what) {
  atomic_fetch_add(&s->in_callback, 1);
  if (atomic_load(&s->stop_returned))
    su_violation(s, "%s callback started after iocpsrv_stop returned", what);
}

static SU_UNUSED void su_leave(su_server_t *s, const char *what) {
  if (atomic_load(&s->stop_returned))
    su_violation(s, "%s callback still running after iocpsrv_stop returned", what);
  atomic_fetch_sub(&s->in_callback, 1);
}

static SU_UNUSED su_conn_t *su_conn_enter(su_server_t *s, iocpsrv_conn_id_t id, void *user,
                                          const char *what) {
  su_conn_t *c = (su_conn_t *)user;
  if (!c || c < s->pool || c >= s->pool + s->cap) {
    su_violation(s, "%s callback for %llx with conn_user %p, not one of ours", what,
                 (unsigned long long)id, user);
    return NULL;
  }
  if (c->id != id)
    su_violation(s, "%s callback: id %llx, the record says %llx", what,
                 (unsigned long long)id, (unsigned long long)c->id);
  if (atomic_exchange(&c->busy, 1))
    su_violation(s, "%s callback for %llx while another one for it runs", what,
                 (unsigned long long)id);
  int st = atomic_load(&c->state);
  if (st != 1)
    su_violation(s, "%s callback for %llx in state %d (%s)", what, (unsigned long long)id,
                 st, st == 2 ? "after its disconnect" : "before its connect");
  return c;
}

static SU_UNUSED int IOCPSRV_CALL su_cb_connect(iocpsrv_t *srv, iocpsrv_conn_id_t id,
                                                const char *peer, void **user) {
  su_server_t *s = su_of(srv);
  su_enter(s, "connect");
  int i = atomic_fetch_add(&s->next, 1);
  int refuse = 0;
  if (i >= s->cap) {
    su_violation(s, "more than %d connections: the record pool is too small", s->cap);
    refuse = 1;
  } else {
    su_conn_t *c = &s->pool[i];
    c->id = id;
    atomic_store(&c->state, 1);
    *user = c;
  }
  if (!peer || !peer[0]) su_violation(s, "connect callback with an empty peer");
  su_leave(s, "connect");
  if (!refuse) tt_counter_add(&s->connects, 1);
  return refuse;
}

static SU_UNUSED int IOCPSRV_CALL su_cb_packet(iocpsrv_t *srv, iocpsrv_conn_id_t id,
                                               void *user, const uint8_t *data, size_t len) {
  su_server_t *s = su_of(srv);
  su_enter(s, "packet");
  su_conn_t *c = su_conn_enter(s, id, user, "packet");
  if (c) {
    atomic_fetch_add(&c->packets, 1);
    int skip = s->on_packet ? s->on_packet(s, c, data, len) : 0;
    if (s->echo && !skip) {
      int rc = iocpsrv_send(srv, id, data, len);
      if (rc < 0) {
        atomic_fetch_add(&s->send_errors, 1);
        atomic_store(&s->last_send_error, rc);
      }
    }
    atomic_store(&c->busy, 0);
  }
  su_leave(s, "packet");
  tt_counter_add(&s->packets, 1);
  return 0;
}

static SU_UNUSED void IOCPSRV_CALL su_cb_disconnect(iocpsrv_t *srv, iocpsrv_conn_id_t id,
                                                    void *user, int reason) {
  su_server_t *s = su_of(srv);
  su_enter(s, "disconnect");
  su_conn_t *c = su_conn_enter(s, id, user, "disconnect");
  if (c) {
    if (atomic_fetch_add(&c->disconnects, 1) != 0)
      su_violation(s, "second disconnect for %llx", (unsigned long long)id);
    atomic_store(&c->reason, reason);
    atomic_store(&c->state, 2);
    if (reason > 0 && reason < 16) atomic_fetch_add(&s->reasons[reason], 1);
    else su_violation(s, "disconnect reason %d out of range", reason);
    atomic_store(&c->busy, 0);
  }
  su_leave(s, "disconnect");
  tt_counter_add(&s->disconnects, 1);
}

static SU_UNUSED void IOCPSRV_CALL su_cb_drain(iocpsrv_t *srv, iocpsrv_conn_id_t id,
                                               void *user) {
  su_server_t *s = su_of(srv);
  su_enter(s, "drain");
  su_conn_t *c = su_conn_enter(s, id, user, "drain");
  if (c) atomic_store(&c->busy, 0);
  su_leave(s, "drain");
}

/* Forget the previous run's connections (between stop and the next listen). */
static SU_UNUSED void su_server_reset(su_server_t *s) {
  memset(s->pool, 0, (size_t)s->cap * sizeof *s->pool);
  atomic_store(&s->next, 0);
  tt_counter_set(&s->connects, 0);
  tt_counter_set(&s->disconnects, 0);
  tt_counter_set(&s->packets, 0);
  atomic_store(&s->stop_returned, 0);
  for (int i = 0; i < 16; i++) atomic_store(&s->reasons[i], 0);
}

/* Create a server with room for `cap` connections per run and the options given as
 * (option, value) pairs; not listening yet. */
static SU_UNUSED su_server_t *su_server_create(int cap, const echo_opt_t *opts, int nopts) {
  su_server_t *s = (su_server_t *)calloc(1, sizeof *s);
  CHECK(s != NULL);
  s->cap = cap;
  s->pool = (su_conn_t *)calloc((size_t)cap, sizeof *s->pool);
  CHECK(s->pool != NULL);
  s->echo = 1;
  tt_mutex_init(&s->lock);
  tt_counter_init(&s->connects);
  tt_counter_init(&s->disconnects);
  tt_counter_init(&s->packets);
  CHECK_OK(iocpsrv_create(&s->srv, s));
  for (int i = 0; i < nopts; i++) {
    int rc = iocpsrv_set_option(s->srv, opts[i].option, opts[i].value);
    if (rc < 0)
      test_fail(__FILE__, __LINE__, "iocpsrv_set_option(%d, %lld): %s", opts[i].option,
                (long long)opts[i].value, iocpsrv_err_name(rc));
  }
  CHECK_OK(iocpsrv_set_connect_cb(s->srv, su_cb_connect));
  CHECK_OK(iocpsrv_set_packet_cb(s->srv, su_cb_packet));
  CHECK_OK(iocpsrv_set_disconnect_cb(s->srv, su_cb_disconnect));
  CHECK_OK(iocpsrv_set_drain_cb(s->srv, su_cb_drain));
  return s;
}

static SU_UNUSED void su_server_listen(su_server_t *s) {
  su_server_reset(s);
  CHECK_OK(iocpsrv_listen(s->srv, "127.0.0.1", 0));
  s->port = iocpsrv_port(s->srv);
  CHECK_GT(s->port, 0);
}

/* iocpsrv_stop, then: nothing running, and from now on any callback is a breach. */
static SU_UNUSED int su_server_stop(su_server_t *s, int timeout_ms) {
  int rc = iocpsrv_stop(s->srv, timeout_ms);
  atomic_store(&s->stop_returned, 1);
  int running = atomic_load(&s->in_callback);
  if (running != 0)
    su_violation(s, "%d callback(s) still running when iocpsrv_stop returned", running);
  return rc;
}

static SU_UNUSED iocpsrv_stats_t su_stats(su_server_t *s) {
  iocpsrv_stats_t st;
  memset(&st, 0, sizeof st);
  st.struct_size = sizeof st;
  CHECK_OK(iocpsrv_stats(s->srv, &st));
  return st;
}

/* After a stop: no breach, every connect had exactly one disconnect. */
static SU_UNUSED void su_server_check(su_server_t *s) {
  CHECK_MSG(atomic_load(&s->violations) == 0, "%d contract breach(es); first: %s",
            atomic_load(&s->violations), s->first_violation);
  int n = atomic_load(&s->next);
  if (n > s->cap) n = s->cap;
  for (int i = 0; i < n; i++) {
    su_conn_t *c = &s->pool[i];
    CHECK_MSG(atomic_load(&c->disconnects) == 1 && atomic_load(&c->state) == 2,
              "connection %llx: %d disconnect callbacks, state %d",
              (unsigned long long)c->id, atomic_load(&c->disconnects),
              atomic_load(&c->state));
  }
  CHECK_EQ(tt_counter_get(&s->connects), tt_counter_get(&s->disconnects));
  CHECK_EQ(su_stats(s).connections_now, 0);
}

static SU_UNUSED void su_server_destroy(su_server_t *s) {
  CHECK_OK(iocpsrv_destroy(s->srv));
  tt_counter_destroy(&s->connects);
  tt_counter_destroy(&s->disconnects);
  tt_counter_destroy(&s->packets);
  tt_mutex_destroy(&s->lock);
  free(s->pool);
  free(s);
}

#endif /* IOCPSRV_TEST_STRESS_UTIL_H */
