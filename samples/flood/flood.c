/*
 * iocpsrv-flood -- load generator and verifier for any server that echoes length-prefixed
 * packets (4-byte little-endian length, then the payload), such as iocpsrv-echo.
 *
 * The 2001 article's client had a "flood" button; this is that button grown up: N
 * connections, each sending M packets (or for S seconds) with D packets in flight,
 * checking that every echoed byte comes back in order, then printing throughput and
 * round-trip latency.
 *
 * Payloads are verifiable without keeping copies:
 *   --message TEXT   TEXT followed by the packet's sequence number, 1-based per connection
 *                    ("Test Item 1", "Test Item 2", ... as in the article);
 *   --size BYTES     BYTES of a pattern computed from (connection, sequence).
 * A wrong length, byte, order, a missing packet (no progress for --timeout seconds), an
 * early close or unexpected bytes after the last echo is an error: the connection is
 * reported and closed, the run goes on, and the exit status is 1.
 *
 * Engine: the library's client role. One iocpsrv engine started without a listener
 * (iocpsrv_start) opens every connection with iocpsrv_connect; its worker threads
 * (--threads, IOCPSRV_OPT_WORKER_THREADS) do all the I/O and run the callbacks below.
 * Points worth copying into a real client:
 *   - the connection's state lives in its conn_user (handed to iocpsrv_connect, so it
 *     names the attempt even when a callback runs before iocpsrv_connect returns) and
 *     is touched only by that connection's callbacks, which the engine serializes: no
 *     lock on the hot path;
 *   - the next packets go out from the packet callback that received the echoes, as
 *     one iocpsrv_send: the engine gathers a connection's own sends and writes them once
 *     per batch; a full send queue (IOCPSRV_EQUEUEFULL) waits for the drain callback;
 *   - per-worker figures (latency histogram, counters) are found through the worker
 *     start hook and merged once the engine has stopped.
 * The engine runs in raw framing (IOCPSRV_FRAMING_RAW): it hands over the bytes as they
 * arrive and flood cuts them into packets itself, checking each byte in place. The
 * verifier so shares no framing code with the server it tests (iocpsrv-echo uses the
 * engine's framer), sees a packet's length before its body arrives, and knows when a
 * server closes in the middle of an echo.
 *
 * At the end each connection closes gracefully (iocpsrv_disconnect): its FIN goes out
 * and the engine waits for the server's close. The engine discards bytes that arrive
 * while a connection closes, so bytes sent after the last echo are found by comparing
 * the engine's received-byte count (iocpsrv_stats) with the bytes delivered to flood.
 */
#if !defined(_WIN32) && !defined(_GNU_SOURCE)
#  define _GNU_SOURCE
#endif
#if defined(_WIN32) && !defined(_WIN32_WINNT)
#  define _WIN32_WINNT 0x0600 /* condition variables */
#endif

#include <iocpsrv.h>

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef _WIN32
#  define WIN32_LEAN_AND_MEAN
#  include <windows.h>
#  include <io.h>
#  define STDOUT_IS_TTY() _isatty(_fileno(stdout))
#else
#  include <pthread.h>
#  include <sched.h>
#  include <sys/resource.h>
#  include <time.h>
#  include <unistd.h>
#  define STDOUT_IS_TTY() isatty(STDOUT_FILENO)
#endif

/* ------------------------------------------------------------------------------------ */
/* Small portability layer: clock, atomics, one mutex and condition for the main thread. */

#define ATOMIC_LOAD(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define ATOMIC_STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
#define ATOMIC_ADD(p, v) __atomic_add_fetch((p), (v), __ATOMIC_RELAXED)

static uint64_t now_ns(void) {
#ifdef _WIN32
  static LARGE_INTEGER freq;
  LARGE_INTEGER c;
  if (freq.QuadPart == 0) QueryPerformanceFrequency(&freq);
  QueryPerformanceCounter(&c);
  return (uint64_t)((double)c.QuadPart * 1e9 / (double)freq.QuadPart);
#else
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
#endif
}

static void yield_cpu(void) {
#ifdef _WIN32
  SwitchToThread();
#else
  sched_yield();
#endif
}

/* The main thread waits on g_cv for the callbacks' news (an attempt settled, a
 * connection ended); the callbacks signal under g_mu, so no wake-up is lost. */
#ifdef _WIN32
static CRITICAL_SECTION g_mu;
static CONDITION_VARIABLE g_cv;
static void sync_init(void) {
  InitializeCriticalSection(&g_mu);
  InitializeConditionVariable(&g_cv);
}
static void sync_lock(void) { EnterCriticalSection(&g_mu); }
static void sync_unlock(void) { LeaveCriticalSection(&g_mu); }
static void sync_broadcast(void) { WakeAllConditionVariable(&g_cv); }
static void sync_wait_ms(int ms) { SleepConditionVariableCS(&g_cv, &g_mu, (DWORD)ms); }
#else
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cv;
static void sync_init(void) {
  pthread_condattr_t a;
  pthread_condattr_init(&a);
  pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
  pthread_cond_init(&g_cv, &a);
  pthread_condattr_destroy(&a);
}
static void sync_lock(void) { pthread_mutex_lock(&g_mu); }
static void sync_unlock(void) { pthread_mutex_unlock(&g_mu); }
static void sync_broadcast(void) { pthread_cond_broadcast(&g_cv); }
static void sync_wait_ms(int ms) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  ts.tv_sec += ms / 1000;
  ts.tv_nsec += (long)(ms % 1000) * 1000000L;
  if (ts.tv_nsec >= 1000000000L) {
    ts.tv_sec++;
    ts.tv_nsec -= 1000000000L;
  }
  pthread_cond_timedwait(&g_cv, &g_mu, &ts);
}
#endif

/* ------------------------------------------------------------------------------------ */
/* Options.                                                                              */

typedef struct config_s {
  const char *host;
  int port;
  long connections;
  uint64_t count;     /* packets per connection (0 when --duration is used) */
  double duration;    /* seconds, or 0 */
  long size;          /* --size, or -1 for message mode */
  const char *message;
  size_t message_len;
  long depth;
  long threads;       /* the engine's worker threads */
  double timeout;     /* seconds without progress before the run is declared stalled */
  int json;
  int progress;       /* live line: -1 auto (TTY), 0 off, 1 on */
} config_t;

static config_t g_cfg = {"127.0.0.1", 5150, 1, 10000, 0, -1, NULL, 0, 1, 1, 10.0, 0, -1};

#define DEFAULT_MESSAGE "Test Item "
#define MAX_CONNECTIONS 1000000L
#define MAX_SIZE (64L * 1024 * 1024)
#define MAX_MESSAGE 4096
#define MAX_DEPTH 65536L

static void usage(FILE *out) {
  fprintf(out,
    "usage: iocpsrv-flood [options]\n"
    "\n"
    "Open connections to an echo server, send length-prefixed packets (4-byte little-endian\n"
    "length + payload), verify every echoed byte and its order, and report throughput and\n"
    "round-trip latency. The connections are iocpsrv's client role (iocpsrv_connect).\n"
    "\n"
    "  --host H            server address or name (default 127.0.0.1)\n"
    "  --port P            server port (default 5150)\n"
    "  --connections N     concurrent connections (default 1)\n"
    "  --count M           packets per connection (default 10000)\n"
    "  --duration S        send for S seconds instead of a fixed count (each connection\n"
    "                      then waits for its last echoes)\n"
    "  --message TEXT      payload = TEXT + the packet's 1-based sequence number on its\n"
    "                      connection, as the article's \"Test Item 1234\" (the default,\n"
    "                      with TEXT \"" DEFAULT_MESSAGE "\")\n"
    "  --size BYTES        payload = BYTES of a pattern derived from the connection and the\n"
    "                      sequence number (0..%ld; instead of --message)\n"
    "  --depth D           packets in flight per connection (default 1: send, wait for the\n"
    "                      echo, send the next)\n"
    "  --threads T         the engine's worker threads (IOCPSRV_OPT_WORKER_THREADS), which\n"
    "                      do the I/O and the checking for every connection (default 1;\n"
    "                      at most the number of connections)\n"
    "  --timeout S         fail when no byte arrives for S seconds; also the limit of each\n"
    "                      connection attempt (default 10)\n"
    "  --json              print one JSON object instead of the text summary\n"
    "  --progress          force the live progress line (default: only when stdout is a\n"
    "                      terminal and --json is not given)\n"
    "  --no-progress       never print the progress line\n"
    "  --help              this text\n"
    "\n"
    "msgs/s counts verified echoes per second; MB/s counts the echoed bytes (headers\n"
    "included, one direction) in 10^6 bytes per second. Latency is the time from queueing\n"
    "a packet to reading its echo, in microseconds.\n"
    "\n"
    "Exit status: 0 when every packet came back intact and in order, 1 on any error\n"
    "(mismatch, loss, early close, cannot connect), 2 on bad usage.\n"
    "\n"
    "The article's headline, 99,999 messages on one connection:\n"
    "  iocpsrv-flood --count 99999 --message \"Test Item \"\n",
    MAX_SIZE);
}

static int parse_u64(const char *text, uint64_t min, uint64_t max, uint64_t *out) {
  char *end;
  unsigned long long v;
  if (text == NULL || *text < '0' || *text > '9') return -1;
  errno = 0;
  v = strtoull(text, &end, 10);
  if (errno != 0 || *end != '\0' || v < min || v > max) return -1;
  *out = v;
  return 0;
}

static int parse_long(const char *text, long min, long max, long *out) {
  uint64_t v;
  if (parse_u64(text, (uint64_t)min, (uint64_t)max, &v) != 0) return -1;
  *out = (long)v;
  return 0;
}

static int parse_seconds(const char *text, double *out) {
  char *end;
  double v;
  if (text == NULL || *text == '\0') return -1;
  v = strtod(text, &end);
  if (*end != '\0' || !(v > 0) || v > 1e6) return -1;
  *out = v;
  return 0;
}

static int usage_error(const char *fmt, ...) {
  va_list ap;
  fputs("iocpsrv-flood: ", stderr);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputs(" (see --help)\n", stderr);
  return 2;
}

static int parse_args(int argc, char **argv) {
  int i, have_count = 0;
  for (i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    uint64_t u;
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      usage(stdout);
      exit(0);
    } else if (strcmp(a, "--json") == 0) {
      g_cfg.json = 1;
      continue;
    } else if (strcmp(a, "--progress") == 0) {
      g_cfg.progress = 1;
      continue;
    } else if (strcmp(a, "--no-progress") == 0) {
      g_cfg.progress = 0;
      continue;
    }
    /* Everything else takes a value. */
    if (v == NULL) return usage_error("%s needs a value", a);
    i++;
    if (strcmp(a, "--host") == 0) {
      g_cfg.host = v;
    } else if (strcmp(a, "--port") == 0) {
      long p;
      if (parse_long(v, 1, 65535, &p) != 0) return usage_error("--port wants 1..65535");
      g_cfg.port = (int)p;
    } else if (strcmp(a, "--connections") == 0 || strcmp(a, "-c") == 0) {
      if (parse_long(v, 1, MAX_CONNECTIONS, &g_cfg.connections) != 0)
        return usage_error("--connections wants 1..%ld", MAX_CONNECTIONS);
    } else if (strcmp(a, "--count") == 0 || strcmp(a, "-n") == 0) {
      if (parse_u64(v, 1, UINT64_MAX / 2, &u) != 0)
        return usage_error("--count wants a positive number");
      g_cfg.count = u;
      have_count = 1;
    } else if (strcmp(a, "--duration") == 0 || strcmp(a, "-d") == 0) {
      if (parse_seconds(v, &g_cfg.duration) != 0)
        return usage_error("--duration wants seconds > 0");
    } else if (strcmp(a, "--size") == 0 || strcmp(a, "-s") == 0) {
      if (parse_long(v, 0, MAX_SIZE, &g_cfg.size) != 0)
        return usage_error("--size wants 0..%ld bytes", MAX_SIZE);
    } else if (strcmp(a, "--message") == 0 || strcmp(a, "-m") == 0) {
      g_cfg.message = v;
    } else if (strcmp(a, "--depth") == 0) {
      if (parse_long(v, 1, MAX_DEPTH, &g_cfg.depth) != 0)
        return usage_error("--depth wants 1..%ld", MAX_DEPTH);
    } else if (strcmp(a, "--threads") == 0 || strcmp(a, "-t") == 0) {
      if (parse_long(v, 1, 1024, &g_cfg.threads) != 0)
        return usage_error("--threads wants 1..1024");
    } else if (strcmp(a, "--timeout") == 0) {
      if (parse_seconds(v, &g_cfg.timeout) != 0)
        return usage_error("--timeout wants seconds > 0");
    } else {
      return usage_error("unknown option '%s'", a);
    }
  }
  if (have_count && g_cfg.duration > 0) return usage_error("--count and --duration exclude each other");
  if (g_cfg.duration > 0) g_cfg.count = 0;
  if (g_cfg.message != NULL && g_cfg.size >= 0) return usage_error("--message and --size exclude each other");
  if (g_cfg.size < 0) {
    if (g_cfg.message == NULL) g_cfg.message = DEFAULT_MESSAGE;
    g_cfg.message_len = strlen(g_cfg.message);
    if (g_cfg.message_len > MAX_MESSAGE) return usage_error("--message is longer than %d bytes", MAX_MESSAGE);
  }
  if (g_cfg.threads > g_cfg.connections) g_cfg.threads = g_cfg.connections;
  if (g_cfg.progress < 0) g_cfg.progress = !g_cfg.json && STDOUT_IS_TTY();
  if (g_cfg.json) g_cfg.progress = 0;
  return 0;
}

/* ------------------------------------------------------------------------------------ */
/* Payloads: generated from (connection, sequence), so no copy is kept for checking.      */

static size_t digits_u64(uint64_t v, char *out) { /* no NUL; returns the length */
  char tmp[20];
  size_t n = 0, i;
  do {
    tmp[n++] = (char)('0' + v % 10);
    v /= 10;
  } while (v != 0);
  for (i = 0; i < n; i++) out[i] = tmp[n - 1 - i];
  return n;
}

static uint64_t mix64(uint64_t x) { /* splitmix64's finalizer */
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

/* The pattern's 8-byte word k (little-endian) is seed + k * PATTERN_STEP. */
#define PATTERN_STEP 0x9E3779B97F4A7C15ull

static uint64_t pattern_seed(uint32_t conn, uint64_t seq) {
  return mix64(((uint64_t)conn << 40) ^ seq ^ 0x1F0CD5E7A3B2C461ull);
}

static void store_le64(uint8_t *p, uint64_t v) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  memcpy(p, &v, 8);
#else
  int i;
  for (i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
#endif
}

static uint64_t load_le64(const uint8_t *p) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  uint64_t v;
  memcpy(&v, p, 8);
  return v;
#else
  uint64_t v = 0;
  int i;
  for (i = 7; i >= 0; i--) v = (v << 8) | p[i];
  return v;
#endif
}

static void put_le32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
  p[2] = (uint8_t)(v >> 16);
  p[3] = (uint8_t)(v >> 24);
}

static uint32_t get_le32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Write the payload of packet `seq` of connection `conn`; returns its length. */
static size_t payload_write(uint8_t *out, uint32_t conn, uint64_t seq) {
  if (g_cfg.size < 0) {
    memcpy(out, g_cfg.message, g_cfg.message_len);
    return g_cfg.message_len + digits_u64(seq, (char *)out + g_cfg.message_len);
  } else {
    size_t len = (size_t)g_cfg.size, j;
    uint64_t w = pattern_seed(conn, seq);
    uint8_t tail[8];
    for (j = 0; j + 8 <= len; j += 8, w += PATTERN_STEP) store_le64(out + j, w);
    if (j < len) {
      store_le64(tail, w);
      memcpy(out + j, tail, len - j);
    }
    return len;
  }
}

/* What the echo being received must hold, set up when its header is complete. */
typedef struct expect_s {
  uint64_t seed;       /* --size: the pattern's first word */
  char digits[20];     /* --message: the sequence number's digits */
  size_t ndigits;
} expect_t;

/* Check bytes [off, off + n) of a payload against --message; returns -1 when they are
 * right, else the first wrong offset (the expected byte in *want). */
static long check_message(const expect_t *e, const uint8_t *p, size_t off, size_t n,
                          uint8_t *want) {
  size_t mlen = g_cfg.message_len, k;
  size_t head = off < mlen ? (mlen - off < n ? mlen - off : n) : 0;
  if (memcmp(p, g_cfg.message + off, head) == 0 &&
      (head == n || memcmp(p + head, e->digits + (off + head - mlen), n - head) == 0))
    return -1;
  for (k = 0; k < n; k++) {
    size_t o = off + k;
    uint8_t b = o < mlen ? (uint8_t)g_cfg.message[o] : (uint8_t)e->digits[o - mlen];
    if (p[k] != b) {
      *want = b;
      return (long)o;
    }
  }
  return -1;
}

/* The same against the --size pattern, from any offset (an echo may come in pieces). */
static long check_pattern(const expect_t *e, const uint8_t *p, size_t off, size_t n,
                          uint8_t *want) {
  size_t o = off, end = off + n;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  if ((off & 7) == 0) { /* the usual case, a whole echo: words, then a masked tail */
    uint64_t w = e->seed + (uint64_t)(off >> 3) * PATTERN_STEP, t = 0;
    size_t k = 0;
    while (k + 8 <= n && load_le64(p + k) == w) {
      k += 8;
      w += PATTERN_STEP;
    }
    if (k == n) return -1;
    if (n - k < 8) {
      memcpy(&t, p + k, n - k);
      if (((t ^ w) & (~0ull >> (64 - 8 * (n - k)))) == 0) return -1;
    }
  }
#endif
  for (;;) {
    uint64_t w = e->seed + (uint64_t)(o >> 3) * PATTERN_STEP;
    if ((o & 7) == 0)
      for (; o + 8 <= end && load_le64(p + (o - off)) == w; o += 8) w += PATTERN_STEP;
    if (o >= end) return -1;
    /* A partial word (the piece's first or last) or a mismatch: byte by byte. */
    do {
      uint8_t b = (uint8_t)(w >> (8 * (o & 7)));
      if (p[o - off] != b) {
        *want = b;
        return (long)o;
      }
      o++;
    } while (o < end && (o & 7) != 0);
    if (o >= end) return -1;
  }
}

/* ------------------------------------------------------------------------------------ */
/* Latency histogram: log-linear buckets, 64 per power of two (under 1.6% error).         */

#define HIST_SUB_BITS 6
#define HIST_SUB (1u << HIST_SUB_BITS)
#define HIST_BUCKETS (HIST_SUB * (64 - HIST_SUB_BITS) + HIST_SUB)

static unsigned hist_index(uint64_t v) {
  unsigned msb, shift;
  if (v < 2 * HIST_SUB) return (unsigned)v;
  msb = 63u - (unsigned)__builtin_clzll(v);
  shift = msb - HIST_SUB_BITS;
  return HIST_SUB * shift + (unsigned)(v >> shift);
}

static double hist_value(unsigned idx) { /* the middle of the bucket */
  unsigned shift;
  if (idx < 2 * HIST_SUB) return (double)idx;
  shift = idx / HIST_SUB - 1;
  return ((double)(idx - HIST_SUB * shift) + 0.5) * (double)(1ull << shift);
}

/* ------------------------------------------------------------------------------------ */
/* Connections and workers.                                                              */

enum { C_CONNECTING, C_RUNNING, C_CLOSING, C_DONE, C_FAILED };

/* A connection's state: its conn_user. Only its own callbacks touch it once the main
 * thread has sent its first packets ("kicked" it), so no lock is needed; until then a
 * callback (a server that closes or talks first) and the kick take `lock` in turn. */
typedef struct conn_s {
  iocpsrv_conn_id_t id;
  uint32_t index;      /* 0-based connection number (part of the --size pattern) */
  int state;
  int kicked;          /* atomic: the main thread is done with it */
  int lock;            /* spin lock of the callbacks against the kick, until kicked */
  int waiting_drain;   /* a send was refused: the drain callback sends again */
  uint64_t next_send;  /* sequence number of the next packet to queue (from 1) */
  uint64_t next_recv;  /* sequence number of the next echo expected */
  uint64_t target;     /* last sequence number to send; UINT64_MAX while --duration runs */
  uint64_t *sent_at;   /* queue time of each packet in flight, by seq & g_ring_mask */
  /* The echo being received: its header (hdr_have bytes of it), then its payload. */
  uint8_t hdr[4];
  uint32_t hdr_have;
  size_t cur_len, cur_off;
  expect_t expect;
} conn_t;

/* One per engine worker (found through the worker start hook), plus one for the main
 * thread's first sends: each is written by one thread only. */
typedef struct worker_s {
  uint8_t *scratch;    /* where the next packets are formatted before iocpsrv_send */
  uint64_t *hist;
  uint64_t lat_max;
  uint64_t end_ns;     /* when this worker's last echo arrived */
  uint64_t packets;    /* verified echoes; read by the progress line (atomic stores) */
  uint64_t bytes;      /* bytes delivered; read by the progress line (atomic stores) */
  uint64_t errors;
  char pad[64];        /* the next worker's counters on another cache line */
} worker_t;

static iocpsrv_t *g_srv;
static worker_t *g_workers;     /* g_cfg.threads + 1: the last is the main thread's */
static _Thread_local worker_t *tls_worker;
static size_t g_scratch_cap;    /* bytes formatted per iocpsrv_send (at least a packet) */
static size_t g_max_packet;     /* header + the largest payload this run sends */
static uint64_t g_ring_mask;    /* sent_at has a power of two >= --depth entries */
static uint64_t g_deadline;     /* --duration: stop queueing at this time */
static uint64_t g_t0;
static unsigned g_reported;     /* error lines printed so far */
static int g_stalled;           /* atomic: the run stalled, the engine is being stopped */
static int g_quitting;          /* atomic: giving up before the run (cannot connect) */
#define MAX_REPORTED 20u

/* Guarded by g_mu: what the main thread waits for. */
static long g_connecting;       /* attempts not yet established or failed */
static long g_established;
static long g_failed_attempts;
static int g_first_failure;     /* the first failed attempt's reason */
static long g_ended;            /* disconnect callbacks so far */

static worker_t *self_worker(void) {
  /* Callbacks run on the engine's workers (contract point 1), each found by its hook. */
  return tls_worker != NULL ? tls_worker : &g_workers[g_cfg.threads];
}

static void IOCPSRV_CALL on_worker_start(iocpsrv_t *srv, int index) {
  (void)srv;
  if (index >= 0 && index < g_cfg.threads) tls_worker = &g_workers[index];
}

static void conn_enter(conn_t *c, int *locked) {
  *locked = !__atomic_load_n(&c->kicked, __ATOMIC_ACQUIRE);
  if (*locked)
    while (__atomic_exchange_n(&c->lock, 1, __ATOMIC_ACQUIRE)) yield_cpu();
}

static void conn_leave(conn_t *c, int locked) {
  if (locked) __atomic_store_n(&c->lock, 0, __ATOMIC_RELEASE);
}

static void conn_error(worker_t *w, conn_t *c, const char *fmt, ...) {
  va_list ap;
  unsigned reported;
  if (c->state == C_DONE || c->state == C_FAILED) return;
  w->errors++;
  c->state = C_FAILED;
  reported = ATOMIC_ADD(&g_reported, 1u);
  if (reported <= MAX_REPORTED) {
    char line[512];
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%siocpsrv-flood: connection %u: %s\n", g_cfg.progress ? "\n" : "",
            (unsigned)c->index, line);
    if (reported == MAX_REPORTED)
      fprintf(stderr, "iocpsrv-flood: further errors are counted, not printed\n");
  }
}

/* Queue as many packets as the window allows, formatted into one buffer per
 * iocpsrv_send. Returns -1 if the connection is going away (its disconnect follows). */
static int conn_pump(worker_t *w, conn_t *c, uint64_t now) {
  uint64_t depth = (uint64_t)g_cfg.depth;
  if (c->state != C_RUNNING) return 0;
  if (c->target == UINT64_MAX && now >= g_deadline) c->target = c->next_send - 1;
  if (c->waiting_drain) return 0;
  while (c->next_send <= c->target && c->next_send - c->next_recv < depth) {
    uint64_t first = c->next_send;
    size_t used = 0;
    int rc;
    do {
      size_t len = payload_write(w->scratch + used + 4, c->index, c->next_send);
      put_le32(w->scratch + used, (uint32_t)len);
      used += 4 + len;
      c->sent_at[c->next_send & g_ring_mask] = now;
      c->next_send++;
    } while (c->next_send <= c->target && c->next_send - c->next_recv < depth &&
             used + g_max_packet <= g_scratch_cap);
    rc = iocpsrv_send(g_srv, c->id, w->scratch, used);
    if (rc == 0) continue;
    c->next_send = first; /* nothing of it was queued */
    if (rc == IOCPSRV_EQUEUEFULL) {
      c->waiting_drain = 1;
      return 0;
    }
    if (rc != IOCPSRV_ENOTCONN && rc != IOCPSRV_ESTOPPED) {
      conn_error(w, c, "cannot send after %llu of %llu echoes: %s",
                 (unsigned long long)(c->next_recv - 1),
                 (unsigned long long)(c->next_send - 1), iocpsrv_strerror(rc));
      iocpsrv_disconnect(g_srv, c->id, IOCPSRV_CLOSE_ABORT);
    }
    return -1;
  }
  return 0;
}

/* A new echo's header is complete: check its length and set up its expected bytes.
 * Returns -1 on an error (reported). */
static int echo_begin(worker_t *w, conn_t *c, uint32_t len, size_t left) {
  uint64_t seq = c->next_recv;
  size_t want_len;
  if (seq >= c->next_send) {
    if (c->next_recv > c->target)
      conn_error(w, c, "%lu unexpected bytes after the last echo", (unsigned long)(left + 4));
    else
      conn_error(w, c, "received a packet (length %lu) when none was in flight "
                 "(%llu sent, all echoed)", (unsigned long)len, (unsigned long long)(seq - 1));
    return -1;
  }
  if (g_cfg.size >= 0) {
    want_len = (size_t)g_cfg.size;
    c->expect.seed = pattern_seed(c->index, seq);
  } else {
    c->expect.ndigits = digits_u64(seq, c->expect.digits);
    want_len = g_cfg.message_len + c->expect.ndigits;
  }
  if (len != want_len) {
    conn_error(w, c, "echo %llu has length %lu, expected %lu", (unsigned long long)seq,
               (unsigned long)len, (unsigned long)want_len);
    return -1;
  }
  c->cur_len = len;
  c->cur_off = 0;
  return 0;
}

/* Bytes as they arrived: cut into echoes, each checked in place. Returns -1 on an
 * error (reported). */
static int conn_receive(worker_t *w, conn_t *c, const uint8_t *p, size_t n, uint64_t now) {
  const uint8_t *end = p + n;
  uint64_t first = c->next_recv;
  int rc = 0;
  while (p < end) {
    size_t take;
    uint8_t want = 0;
    long bad;
    if (c->hdr_have < 4) {
      uint32_t len;
      if (c->hdr_have == 0 && end - p >= 4) {
        len = get_le32(p);
        p += 4;
      } else {
        while (c->hdr_have < 4 && p < end) c->hdr[c->hdr_have++] = *p++;
        if (c->hdr_have < 4) break;
        len = get_le32(c->hdr);
      }
      c->hdr_have = 4;
      if (echo_begin(w, c, len, (size_t)(end - p)) != 0) {
        rc = -1;
        break;
      }
    }
    take = (size_t)(end - p);
    if (take > c->cur_len - c->cur_off) take = c->cur_len - c->cur_off;
    bad = g_cfg.size >= 0 ? check_pattern(&c->expect, p, c->cur_off, take, &want)
                          : check_message(&c->expect, p, c->cur_off, take, &want);
    if (bad >= 0) {
      conn_error(w, c, "echo %llu differs at payload byte %ld: got 0x%02x, expected 0x%02x",
                 (unsigned long long)c->next_recv, bad, p[(size_t)bad - c->cur_off], want);
      rc = -1;
      break;
    }
    p += take;
    c->cur_off += take;
    if (c->cur_off == c->cur_len) {
      uint64_t lat = now - c->sent_at[c->next_recv & g_ring_mask];
      w->hist[hist_index(lat)]++;
      if (lat > w->lat_max) w->lat_max = lat;
      c->next_recv++;
      c->hdr_have = 0;
    }
  }
  /* This thread is the only writer; the stores are atomic for the progress reader. */
  ATOMIC_STORE(&w->bytes, w->bytes + (uint64_t)n);
  if (c->next_recv != first) {
    ATOMIC_STORE(&w->packets, w->packets + (c->next_recv - first));
    w->end_ns = now > w->end_ns ? now : w->end_ns;
  }
  return rc;
}

/* Every packet is echoed: close gracefully. Our FIN goes out, and the engine waits for
 * the server's close (the disconnect callback then says LOCAL_CLOSE). Returns 1 to
 * close, -1 on an error (reported), else 0. */
static int conn_maybe_done(worker_t *w, conn_t *c) {
  if (c->state != C_RUNNING || c->next_recv <= c->target || c->next_send <= c->target)
    return 0;
  if (c->hdr_have > 0) { /* the start of another packet's header */
    conn_error(w, c, "%lu unexpected bytes after the last echo", (unsigned long)c->hdr_have);
    return -1;
  }
  c->state = C_CLOSING;
  return 1;
}

static int IOCPSRV_CALL on_connect(iocpsrv_t *srv, iocpsrv_conn_id_t id, const char *peer,
                                   void **conn_user) {
  conn_t *c = (conn_t *)*conn_user;
  int locked;
  (void)srv;
  (void)peer;
  conn_enter(c, &locked);
  c->id = id;
  c->state = C_RUNNING;
  conn_leave(c, locked);
  sync_lock();
  g_connecting--;
  g_established++;
  sync_broadcast();
  sync_unlock();
  return 0;
}

static int IOCPSRV_CALL on_packet(iocpsrv_t *srv, iocpsrv_conn_id_t id, void *conn_user,
                                  const uint8_t *data, size_t len) {
  conn_t *c = (conn_t *)conn_user;
  worker_t *w = self_worker();
  uint64_t now = now_ns();
  int locked, close = 0;
  conn_enter(c, &locked);
  if (c->state == C_RUNNING && conn_receive(w, c, data, len, now) == 0 &&
      conn_pump(w, c, now) == 0)
    close = conn_maybe_done(w, c);
  /* A connection found wrong is reset at once: what else it sends proves nothing. */
  if (c->state == C_FAILED) iocpsrv_disconnect(srv, id, IOCPSRV_CLOSE_ABORT);
  conn_leave(c, locked);
  return close > 0; /* non-zero: close gracefully */
}

static void IOCPSRV_CALL on_drain(iocpsrv_t *srv, iocpsrv_conn_id_t id, void *conn_user) {
  conn_t *c = (conn_t *)conn_user;
  int locked;
  conn_enter(c, &locked);
  c->waiting_drain = 0;
  if (conn_pump(self_worker(), c, now_ns()) == 0 && conn_maybe_done(self_worker(), c) > 0)
    iocpsrv_disconnect(srv, id, IOCPSRV_CLOSE_GRACEFUL);
  if (c->state == C_FAILED) iocpsrv_disconnect(srv, id, IOCPSRV_CLOSE_ABORT);
  conn_leave(c, locked);
}

static const char *attempt_failure(int reason) {
  static char text[96];
  switch (reason) {
  case IOCPSRV_REASON_CONNECT_REFUSED: return "connection refused";
  case IOCPSRV_REASON_CONNECT_UNREACHABLE: return "network or host unreachable";
  case IOCPSRV_REASON_CONNECT_TIMEOUT:
    snprintf(text, sizeof text, "no connection within %g s (--timeout)", g_cfg.timeout);
    return text;
  case IOCPSRV_REASON_NAME_NOT_RESOLVED: return "cannot resolve the host name";
  default: return iocpsrv_reason_name(reason);
  }
}

static void IOCPSRV_CALL on_disconnect(iocpsrv_t *srv, iocpsrv_conn_id_t id, void *conn_user,
                                       int reason) {
  conn_t *c = (conn_t *)conn_user;
  worker_t *w = self_worker();
  unsigned long long echoed = c->next_recv - 1, sent = c->next_send - 1;
  int locked, attempt = 0;
  (void)srv;
  (void)id;
  conn_enter(c, &locked);
  if (c->state == C_CONNECTING) {
    attempt = 1;
    c->state = C_FAILED;
  } else if (ATOMIC_LOAD(&g_quitting)) {
    c->state = C_FAILED;
  } else if (c->state == C_RUNNING && ATOMIC_LOAD(&g_stalled)) {
    conn_error(w, c, "no data for %.0f s: %llu of %llu sent echoed, %llu in flight "
               "(lost, or never echoed)", g_cfg.timeout, echoed, sent, sent - echoed);
  } else if (c->state == C_RUNNING) {
    if (reason == IOCPSRV_REASON_PEER_CLOSED && c->hdr_have > 0)
      conn_error(w, c, "server closed the connection in the middle of echo %llu "
                 "(%llu of %llu echoed)", echoed + 1, echoed, sent);
    else if (reason == IOCPSRV_REASON_PEER_CLOSED)
      conn_error(w, c, "server closed the connection early: %llu of %llu echoed", echoed, sent);
    else if (reason == IOCPSRV_REASON_PEER_RESET)
      conn_error(w, c, "connection reset after %llu of %llu echoes", echoed, sent);
    else
      conn_error(w, c, "connection ended (%s) after %llu of %llu echoes",
                 iocpsrv_reason_name(reason), echoed, sent);
  } else if (c->state == C_CLOSING && ATOMIC_LOAD(&g_stalled)) {
    conn_error(w, c, "all %llu echoes arrived, but the server did not close the "
               "connection within %.0f s of the client's FIN", echoed, g_cfg.timeout);
  } else if (c->state == C_CLOSING) {
    /* The close began with ours, so the reason stays LOCAL_CLOSE whichever way it
     * ended; IOCPSRV_OPT_CLOSE_TIMEOUT_MS is set out of reach, so it was the server's. */
    if (reason == IOCPSRV_REASON_LOCAL_CLOSE) c->state = C_DONE;
    else conn_error(w, c, "%s instead of the server's close after the last echo",
                    iocpsrv_reason_name(reason));
  }
  conn_leave(c, locked);
  sync_lock();
  if (attempt) {
    g_connecting--;
    if (g_failed_attempts++ == 0) g_first_failure = reason;
  }
  g_ended++;
  sync_broadcast();
  sync_unlock();
}

/* The main thread sends a connection's first packets once every connection is up, so
 * the clock starts with all of them ready, as a blocking connect loop would have it. */
static void conn_kick(conn_t *c, uint64_t now) {
  while (__atomic_exchange_n(&c->lock, 1, __ATOMIC_ACQUIRE)) yield_cpu();
  if (c->state == C_RUNNING) conn_pump(&g_workers[g_cfg.threads], c, now);
  __atomic_store_n(&c->kicked, 1, __ATOMIC_RELEASE);
  __atomic_store_n(&c->lock, 0, __ATOMIC_RELEASE);
}

/* ------------------------------------------------------------------------------------ */
/* Setup.                                                                                */

static void raise_fd_limit(long connections) {
#ifndef _WIN32
  struct rlimit rl;
  rlim_t need = (rlim_t)connections + 64;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= need) return;
  rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= need ? need : rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);
#else
  (void)connections;
#endif
}

static int engine_error(const char *what, int rc) {
  fprintf(stderr, "iocpsrv-flood: %s: %s (%s)\n", what, iocpsrv_strerror(rc),
          iocpsrv_err_name(rc));
  return 1;
}

/* An engine in the client role: raw framing (flood cuts the packets itself), callbacks
 * on --threads workers, a close that waits for the server however long it takes (the
 * stall detection is flood's), an attempt limited by --timeout. */
static int engine_create(void) {
  struct { int opt; int64_t value; } opts[6];
  int rc, i, n = 0;
  double close_ms = 2147483647.0, connect_ms = g_cfg.timeout * 1000.0;
  rc = iocpsrv_create(&g_srv, NULL);
  if (rc < 0) return engine_error("iocpsrv_create", rc);
  opts[n].opt = IOCPSRV_OPT_WORKER_THREADS, opts[n++].value = g_cfg.threads;
  opts[n].opt = IOCPSRV_OPT_FRAMING, opts[n++].value = IOCPSRV_FRAMING_RAW;
  /* Raw framing: the limit of one send, which holds a batch of whole packets. */
  opts[n].opt = IOCPSRV_OPT_MAX_PACKET_SIZE, opts[n++].value = (int64_t)g_scratch_cap;
  opts[n].opt = IOCPSRV_OPT_MAX_CONNECTIONS, opts[n++].value = g_cfg.connections;
  opts[n].opt = IOCPSRV_OPT_CLOSE_TIMEOUT_MS, opts[n++].value = (int64_t)close_ms;
  opts[n].opt = IOCPSRV_OPT_CONNECT_TIMEOUT_MS,
  opts[n++].value = connect_ms > 86400000.0 ? 86400000 : connect_ms < 1 ? 1 : (int64_t)connect_ms;
  for (i = 0; i < n; i++) {
    rc = iocpsrv_set_option(g_srv, opts[i].opt, opts[i].value);
    if (rc < 0) return engine_error("iocpsrv_set_option", rc);
  }
  iocpsrv_set_worker_hooks(g_srv, on_worker_start, NULL);
  iocpsrv_set_connect_cb(g_srv, on_connect);
  iocpsrv_set_packet_cb(g_srv, on_packet);
  iocpsrv_set_drain_cb(g_srv, on_drain);
  iocpsrv_set_disconnect_cb(g_srv, on_disconnect);
  rc = iocpsrv_start(g_srv);
  if (rc < 0) return engine_error("iocpsrv_start", rc);
  return 0;
}

/* Most attempts in flight at once: a burst of thousands of SYNs would overflow a small
 * listen backlog (Windows' is 200) and cost the retransmission's second or more. */
#define CONNECTS_IN_FLIGHT 128

/* Open every connection; returns 0 when all are established. */
static int connect_all(conn_t *conns) {
  long i, failed, up;
  int rc = 0;
  for (i = 0; i < g_cfg.connections; i++) {
    iocpsrv_conn_id_t id;
    sync_lock();
    while (g_connecting >= CONNECTS_IN_FLIGHT && g_failed_attempts == 0) sync_wait_ms(1000);
    failed = g_failed_attempts;
    if (!failed) g_connecting++;
    sync_unlock();
    if (failed) break;
    rc = iocpsrv_connect(g_srv, g_cfg.host, g_cfg.port, &conns[i], &id);
    if (rc < 0) {
      sync_lock();
      g_connecting--;
      sync_unlock();
      break;
    }
  }
  sync_lock();
  while (g_connecting > 0) sync_wait_ms(1000);
  failed = g_failed_attempts;
  up = g_established;
  sync_unlock();
  if (rc == 0 && failed == 0) return 0;
  fprintf(stderr, "iocpsrv-flood: cannot connect to %s:%d: %s", g_cfg.host, g_cfg.port,
          rc < 0 ? iocpsrv_strerror(rc) : attempt_failure(g_first_failure));
  if (up > 0) fprintf(stderr, " (after %ld connections)", up);
  fputc('\n', stderr);
  return -1;
}

/* ------------------------------------------------------------------------------------ */
/* Reporting.                                                                            */

static const char *fmt_u64(char *buf, uint64_t v) { /* 1234567 -> "1,234,567" */
  char d[20];
  size_t n = digits_u64(v, d), i, o = 0;
  for (i = 0; i < n; i++) {
    if (i > 0 && (n - i) % 3 == 0) buf[o++] = ',';
    buf[o++] = d[i];
  }
  buf[o] = '\0';
  return buf;
}

/* The p-quantile in microseconds; a bucket's middle, but never above the true maximum. */
static double percentile_us(const uint64_t *hist, uint64_t total, double p, uint64_t max_ns) {
  uint64_t rank, seen = 0;
  unsigned i;
  if (total == 0) return 0;
  rank = (uint64_t)(p * (double)total);
  if ((double)rank < p * (double)total) rank++;
  if (rank == 0) rank = 1;
  for (i = 0; i < HIST_BUCKETS; i++) {
    seen += hist[i];
    if (seen >= rank) {
      double v = hist_value(i);
      return (v > (double)max_ns ? (double)max_ns : v) / 1000.0;
    }
  }
  return 0;
}

static void json_string(FILE *f, const char *s) {
  fputc('"', f);
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\') fprintf(f, "\\%c", ch);
    else if (ch < 0x20) fprintf(f, "\\u%04x", ch);
    else fputc(ch, f);
  }
  fputc('"', f);
}

static void progress_line(uint64_t t, uint64_t packets, uint64_t expected, double rate,
                          double mbs) {
  char a[32], b[32], r[32];
  if (expected > 0)
    printf("\r%7.1f s  %s/%s echoes  %s msgs/s  %.2f MB/s   ", (double)(t - g_t0) / 1e9,
           fmt_u64(a, packets), fmt_u64(b, expected), fmt_u64(r, (uint64_t)rate), mbs);
  else
    printf("\r%7.1f s  %s echoes  %s msgs/s  %.2f MB/s   ", (double)(t - g_t0) / 1e9,
           fmt_u64(a, packets), fmt_u64(r, (uint64_t)rate), mbs);
  fflush(stdout);
}

/* Wait for every connection to end, printing the progress line and declaring a stall
 * when neither an echo nor a byte arrived for --timeout seconds. Returns 1 if stalled. */
static int watch(uint64_t expected) {
  uint64_t now, last_seen = 0, last_change = g_t0, last_print = g_t0;
  uint64_t last_packets = 0, last_bytes = 0;
  long i, ended;
  for (;;) {
    uint64_t seen_packets = 0, seen_bytes = 0;
    sync_lock();
    if (g_ended < g_cfg.connections) sync_wait_ms(g_cfg.progress ? 50 : 100);
    ended = g_ended;
    sync_unlock();
    if (ended >= g_cfg.connections) return 0;
    now = now_ns();
    for (i = 0; i <= g_cfg.threads; i++) {
      seen_packets += ATOMIC_LOAD(&g_workers[i].packets);
      seen_bytes += ATOMIC_LOAD(&g_workers[i].bytes);
    }
    if (seen_packets + seen_bytes != last_seen) {
      last_seen = seen_packets + seen_bytes;
      last_change = now;
    } else if ((double)(now - last_change) / 1e9 >= g_cfg.timeout) {
      /* Every connection still open gets its disconnect (SERVER_STOPPED), which reports
       * it; when stop returns, no callback runs any more. */
      ATOMIC_STORE(&g_stalled, 1);
      iocpsrv_stop(g_srv, 0);
      return 1;
    }
    if (g_cfg.progress && now - last_print >= 250000000u) {
      double dt = (double)(now - last_print) / 1e9;
      progress_line(now, seen_packets, expected, (double)(seen_packets - last_packets) / dt,
                    (double)(seen_bytes - last_bytes) / dt / 1e6);
      last_print = now;
      last_packets = seen_packets;
      last_bytes = seen_bytes;
    }
  }
}

int main(int argc, char **argv) {
  char n1[32], n2[32], n3[32];
  /* Static: early error exits leave them to the OS, and leak checkers see them as
   * still reachable rather than lost. */
  static conn_t *conns;
  static uint64_t *hist;
  iocpsrv_stats_t st;
  uint64_t packets = 0, bytes = 0, errors = 0, lat_max = 0, end = 0, now, expected, unseen;
  double elapsed, p50, p99, p999;
  int rc, stalled;
  long i;

  rc = parse_args(argc, argv);
  if (rc != 0) return rc;
  raise_fd_limit(g_cfg.connections);
  sync_init();

  /* A send holds whole packets: the largest one, plus room for batching, as the old
   * per-connection output buffers had (the engine copies it into its queue). */
  g_max_packet = 4 + (g_cfg.size >= 0 ? (size_t)g_cfg.size : g_cfg.message_len + 20);
  g_scratch_cap = g_max_packet + 65536;
  for (g_ring_mask = 1; g_ring_mask < (uint64_t)g_cfg.depth; g_ring_mask <<= 1) {
  }
  g_ring_mask--;

  g_workers = (worker_t *)calloc((size_t)g_cfg.threads + 1, sizeof *g_workers);
  conns = (conn_t *)calloc((size_t)g_cfg.connections, sizeof *conns);
  hist = (uint64_t *)calloc(HIST_BUCKETS, sizeof *hist);
  if (g_workers == NULL || conns == NULL || hist == NULL) goto oom;
  for (i = 0; i <= g_cfg.threads; i++) {
    g_workers[i].scratch = (uint8_t *)malloc(g_scratch_cap);
    g_workers[i].hist = (uint64_t *)calloc(HIST_BUCKETS, sizeof(uint64_t));
    if (g_workers[i].scratch == NULL || g_workers[i].hist == NULL) goto oom;
  }
  for (i = 0; i < g_cfg.connections; i++) {
    conn_t *c = &conns[i];
    c->index = (uint32_t)i;
    c->state = C_CONNECTING;
    c->next_send = c->next_recv = 1;
    c->target = g_cfg.duration > 0 ? UINT64_MAX : g_cfg.count;
    c->sent_at = (uint64_t *)calloc((size_t)g_ring_mask + 1, sizeof(uint64_t));
    if (c->sent_at == NULL) goto oom;
  }

  if (engine_create() != 0) return 1;
  if (connect_all(conns) != 0) {
    ATOMIC_STORE(&g_quitting, 1);
    iocpsrv_destroy(g_srv);
    return 1;
  }

  expected = g_cfg.duration > 0 ? 0 : g_cfg.count * (uint64_t)g_cfg.connections;
  g_t0 = now_ns();
  g_deadline = g_cfg.duration > 0 ? g_t0 + (uint64_t)(g_cfg.duration * 1e9) : UINT64_MAX;
  for (i = 0; i < g_cfg.connections; i++) conn_kick(&conns[i], g_t0);

  stalled = watch(expected);
  now = now_ns();
  if (g_cfg.progress) printf("\r%79s\r", "");
  iocpsrv_stop(g_srv, 1000); /* every connection has ended: nothing left to close */

  for (i = 0; i <= g_cfg.threads; i++) {
    worker_t *w = &g_workers[i];
    unsigned b;
    packets += w->packets;
    bytes += w->bytes;
    errors += w->errors;
    if (w->lat_max > lat_max) lat_max = w->lat_max;
    if (w->end_ns > end) end = w->end_ns;
    for (b = 0; b < HIST_BUCKETS; b++) hist[b] += w->hist[b];
  }
  /* Bytes the engine read but never handed over: read while a connection closed, i.e.
   * after its last echo. Which connection, the engine does not say; after another
   * error (a connection aborted mid-read) they prove nothing, so they count alone. */
  memset(&st, 0, sizeof st);
  st.struct_size = sizeof st;
  unseen = iocpsrv_stats(g_srv, &st) == 0 && st.bytes_in > bytes ? st.bytes_in - bytes : 0;
  if (unseen > 0 && errors == 0) {
    errors++;
    if (g_cfg.connections == 1)
      fprintf(stderr, "iocpsrv-flood: connection 0: %llu unexpected bytes after the last "
              "echo\n", (unsigned long long)unseen);
    else
      fprintf(stderr, "iocpsrv-flood: %llu unexpected bytes after the last echo of some "
              "connection (read while connections closed; the engine does not say which)\n",
              (unsigned long long)unseen);
  }
  iocpsrv_destroy(g_srv);

  if (end == 0) end = now; /* no connection finished: time until the run ended */
  elapsed = (double)(end - g_t0) / 1e9;
  if (elapsed <= 0) elapsed = 1e-9;
  p50 = percentile_us(hist, packets, 0.50, lat_max);
  p99 = percentile_us(hist, packets, 0.99, lat_max);
  p999 = percentile_us(hist, packets, 0.999, lat_max);

  if (g_cfg.json) {
    printf("{\"host\":");
    json_string(stdout, g_cfg.host);
    printf(",\"port\":%d,\"connections\":%ld,\"threads\":%ld,\"depth\":%ld,", g_cfg.port,
           g_cfg.connections, g_cfg.threads, g_cfg.depth);
    if (g_cfg.size >= 0) printf("\"size\":%ld,", g_cfg.size);
    else {
      printf("\"message\":");
      json_string(stdout, g_cfg.message);
      printf(",");
    }
    if (g_cfg.duration > 0) printf("\"duration_s\":%.3f,", g_cfg.duration);
    else printf("\"count\":%llu,", (unsigned long long)g_cfg.count);
    printf("\"packets\":%llu,\"bytes\":%llu,\"elapsed_s\":%.6f,\"msgs_per_s\":%.1f,"
           "\"mb_per_s\":%.3f,\"latency_us\":{\"p50\":%.1f,\"p99\":%.1f,\"p999\":%.1f,"
           "\"max\":%.1f},\"errors\":%llu,\"ok\":%s}\n",
           (unsigned long long)packets, (unsigned long long)bytes, elapsed,
           (double)packets / elapsed, (double)bytes / elapsed / 1e6, p50, p99, p999,
           (double)lat_max / 1000.0, (unsigned long long)errors, errors ? "false" : "true");
  } else {
    printf("iocpsrv-flood: %s:%d, %ld connection%s x ", g_cfg.host, g_cfg.port,
           g_cfg.connections, g_cfg.connections == 1 ? "" : "s");
    if (g_cfg.duration > 0) printf("%.1f s", g_cfg.duration);
    else printf("%s packets", fmt_u64(n1, g_cfg.count));
    printf(", depth %ld, %ld thread%s, ", g_cfg.depth, g_cfg.threads,
           g_cfg.threads == 1 ? "" : "s");
    if (g_cfg.size >= 0) printf("%ld-byte pattern\n", g_cfg.size);
    else printf("\"%s\" + sequence\n", g_cfg.message);
    printf("connections  %ld\n", g_cfg.connections);
    printf("packets      %s echoed and verified", fmt_u64(n1, packets));
    if (packets > 0)
      printf(" (%.1f payload bytes each on average)",
             (double)(bytes - 4 * packets) / (double)packets);
    printf("\n");
    printf("elapsed      %.3f s\n", elapsed);
    printf("throughput   %s msgs/s, %.2f MB/s\n", fmt_u64(n2, (uint64_t)((double)packets / elapsed + 0.5)),
           (double)bytes / elapsed / 1e6);
    printf("latency      p50 %.1f us, p99 %.1f us, p99.9 %.1f us, max %.1f us\n", p50, p99,
           p999, (double)lat_max / 1000.0);
    printf("errors       %s\n", fmt_u64(n3, errors));
  }
  fflush(stdout);

  for (i = 0; i < g_cfg.connections; i++) free(conns[i].sent_at);
  for (i = 0; i <= g_cfg.threads; i++) {
    free(g_workers[i].scratch);
    free(g_workers[i].hist);
  }
  free(conns);
  free(g_workers);
  free(hist);

  if (errors > 0) {
    fprintf(stderr, "iocpsrv-flood: FAILED: %llu connection%s had errors%s\n",
            (unsigned long long)errors, errors == 1 ? "" : "s",
            stalled ? " (stalled)" : "");
    return 1;
  }
  return 0;

oom:
  fprintf(stderr, "iocpsrv-flood: out of memory for %ld connections\n", g_cfg.connections);
  return 1;
}
