/*
 * iocpsrv-flood -- load generator and verifier for any server that echoes length-prefixed
 * packets (4-byte little-endian length, then the payload), such as iocpsrv-echo.
 *
 * The 2001 article's client had a "flood" button; this is that button grown up: N
 * connections, each sending M packets (or for S seconds) with D packets in flight,
 * checking that every echoed byte comes back in order, then printing throughput and
 * round-trip latency. It uses plain sockets, not the library, so it tests the server
 * from the outside as any client would.
 *
 * Payloads are verifiable without keeping copies:
 *   --message TEXT   TEXT followed by the packet's sequence number, 1-based per connection
 *                    ("Test Item 1", "Test Item 2", ... as in the article);
 *   --size BYTES     BYTES of a pattern computed from (connection, sequence).
 * A wrong length, byte, order, a missing packet (no progress for --timeout seconds), an
 * early close or unexpected bytes after the last echo is an error: the connection is
 * reported and closed, the run goes on, and the exit status is 1.
 *
 * Engine: T threads, each with its own event loop (epoll on Linux, poll elsewhere,
 * WSAPoll on Windows) over its share of non-blocking sockets. A connection writes as
 * many packets as its window allows in one send(), and reads once per readiness event.
 */
#if !defined(_WIN32) && !defined(_GNU_SOURCE)
#  define _GNU_SOURCE
#endif

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef _WIN32
#  define WIN32_LEAN_AND_MEAN
#  include <winsock2.h>
#  include <ws2tcpip.h>
#  include <windows.h>
#  include <io.h>
typedef SOCKET sock_t;
#  define BAD_SOCK INVALID_SOCKET
#  define sock_close closesocket
#  define sock_errno() WSAGetLastError()
#  define SOCK_WOULDBLOCK(e) ((e) == WSAEWOULDBLOCK)
#  define SOCK_EINTR(e) ((e) == WSAEINTR)
#  define SHUT_WR SD_SEND
#  define STDOUT_IS_TTY() _isatty(_fileno(stdout))
typedef int sock_len_t;
#else
#  include <fcntl.h>
#  include <netdb.h>
#  include <netinet/in.h>
#  include <netinet/tcp.h>
#  include <poll.h>
#  include <pthread.h>
#  include <signal.h>
#  include <sys/resource.h>
#  include <sys/socket.h>
#  include <time.h>
#  include <unistd.h>
#  if defined(__linux__)
#    include <sys/epoll.h>
#    define FLOOD_EPOLL 1
#  endif
typedef int sock_t;
#  define BAD_SOCK (-1)
#  define sock_close close
#  define sock_errno() errno
#  define SOCK_WOULDBLOCK(e) ((e) == EAGAIN || (e) == EWOULDBLOCK)
#  define SOCK_EINTR(e) ((e) == EINTR)
#  define STDOUT_IS_TTY() isatty(STDOUT_FILENO)
typedef socklen_t sock_len_t;
#endif

#ifndef MSG_NOSIGNAL
#  define MSG_NOSIGNAL 0
#endif

/* ------------------------------------------------------------------------------------ */
/* Small portability layer: clock, sleep, threads, atomics, socket errors.               */

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

static void sleep_ms(int ms) {
#ifdef _WIN32
  Sleep((DWORD)ms);
#else
  struct timespec ts;
  ts.tv_sec = ms / 1000;
  ts.tv_nsec = (long)(ms % 1000) * 1000000L;
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
#endif
}

static const char *sock_strerror(int e) {
#ifdef _WIN32
#  ifdef _MSC_VER
  static __declspec(thread) char buf[64];
#  else
  static _Thread_local char buf[64];
#  endif
  snprintf(buf, sizeof buf, "winsock error %d", e);
  return buf;
#else
  return strerror(e);
#endif
}

#ifdef _WIN32
typedef HANDLE thread_t;
static DWORD WINAPI thread_tramp(LPVOID arg);
#else
typedef pthread_t thread_t;
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
  long threads;
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
    "round-trip latency.\n"
    "\n"
    "  --host H            server address (default 127.0.0.1)\n"
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
    "  --threads T         client threads; connections are spread over them (default 1)\n"
    "  --timeout S         fail when no byte arrives for S seconds (default 10)\n"
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

static size_t payload_len(uint64_t seq) {
  char d[20];
  if (g_cfg.size >= 0) return (size_t)g_cfg.size;
  return g_cfg.message_len + digits_u64(seq, d);
}

static uint64_t mix64(uint64_t x) { /* splitmix64's finalizer */
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

#define PATTERN_STEP 0x9E3779B97F4A7C15ull

static uint64_t pattern_seed(uint32_t conn, uint64_t seq) {
  return mix64(((uint64_t)conn << 40) ^ seq ^ 0x1F0CD5E7A3B2C461ull);
}

static void store_le64(uint8_t *p, uint64_t v) {
  int i;
  for (i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
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

/* Check a received payload; returns -1 when it is right, else the first wrong offset and
 * the expected byte in *want. The length has been checked already. */
static long payload_check(const uint8_t *p, size_t len, uint32_t conn, uint64_t seq,
                          uint8_t *want) {
  size_t j;
  if (g_cfg.size < 0) {
    char d[20];
    size_t nd = digits_u64(seq, d), k;
    for (k = 0; k < g_cfg.message_len; k++)
      if (p[k] != (uint8_t)g_cfg.message[k]) {
        *want = (uint8_t)g_cfg.message[k];
        return (long)k;
      }
    for (k = 0; k < nd; k++)
      if (p[g_cfg.message_len + k] != (uint8_t)d[k]) {
        *want = (uint8_t)d[k];
        return (long)(g_cfg.message_len + k);
      }
    return -1;
  } else {
    uint64_t w = pattern_seed(conn, seq);
    uint8_t tmp[8];
    for (j = 0; j + 8 <= len; j += 8, w += PATTERN_STEP) {
      if (load_le64(p + j) != w) break;
    }
    if (j >= len) return -1;
    store_le64(tmp, w);
    for (; j < len; j++) {
      if (p[j] != tmp[j & 7]) {
        *want = tmp[j & 7];
        return (long)j;
      }
      if ((j & 7) == 7) store_le64(tmp, w += PATTERN_STEP);
    }
    return -1;
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

enum { C_RUNNING, C_CLOSING, C_DONE, C_FAILED };

typedef struct conn_s {
  sock_t fd;
  uint32_t index;      /* 0-based connection number (part of the --size pattern) */
  int state;
  int want_out;        /* waiting for writability */
  int slot;            /* position in the poll backend's array */
  uint64_t next_send;  /* sequence number of the next packet to queue (from 1) */
  uint64_t next_recv;  /* sequence number of the next echo expected */
  uint64_t target;     /* last sequence number to send; UINT64_MAX while --duration runs */
  uint64_t *sent_at;   /* queue time of each packet in flight, by seq % depth */
  uint8_t *out;
  size_t out_off, out_len, out_cap;
  uint8_t *in;
  size_t in_len, in_cap;
} conn_t;

typedef struct worker_s {
  int id;
  conn_t **conns;
  int nconns;
  int active;          /* connections neither done nor failed */
#ifdef FLOOD_EPOLL
  int epfd;
#else
  struct pollfd *pfd;
  conn_t **polled;
  int npolled;
#endif
  uint64_t *hist;
  uint64_t lat_max;
  uint64_t end_ns;     /* when this worker's last echo arrived */
  uint64_t packets;    /* verified echoes; read by the progress thread */
  uint64_t bytes;      /* bytes received; read by the progress thread */
  uint64_t errors;
  int finished;        /* read by the main thread */
  thread_t thread;
} worker_t;

static int g_abort;           /* set by main on a stall */
static uint64_t g_deadline;   /* --duration: stop queueing at this time */
static uint64_t g_t0;
static size_t g_max_packet;   /* header + the largest payload this run sends */
static unsigned g_reported;   /* error lines printed so far */
#define MAX_REPORTED 20u

static void conn_error(worker_t *w, conn_t *c, const char *fmt, ...);

/* ---- Event loop backend ---- */
#define EV_READ 1
#define EV_WRITE 2

#ifdef FLOOD_EPOLL
static int loop_init(worker_t *w) {
  w->epfd = epoll_create1(EPOLL_CLOEXEC);
  return w->epfd < 0 ? -1 : 0;
}
static int loop_add(worker_t *w, conn_t *c) {
  struct epoll_event ev;
  ev.events = EPOLLIN;
  ev.data.ptr = c;
  return epoll_ctl(w->epfd, EPOLL_CTL_ADD, c->fd, &ev);
}
static void loop_want_write(worker_t *w, conn_t *c, int on) {
  struct epoll_event ev;
  ev.events = EPOLLIN | (on ? EPOLLOUT : 0);
  ev.data.ptr = c;
  epoll_ctl(w->epfd, EPOLL_CTL_MOD, c->fd, &ev);
  c->want_out = on;
}
static void loop_del(worker_t *w, conn_t *c) {
  struct epoll_event ev;
  epoll_ctl(w->epfd, EPOLL_CTL_DEL, c->fd, &ev);
}
static void loop_free(worker_t *w) { close(w->epfd); }

typedef struct ready_s {
  conn_t *c;
  int flags;
} ready_t;

static int loop_wait(worker_t *w, ready_t *out, int max, int timeout_ms) {
  struct epoll_event ev[256];
  int n, i;
  if (max > 256) max = 256;
  n = epoll_wait(w->epfd, ev, max, timeout_ms);
  for (i = 0; i < n; i++) {
    out[i].c = (conn_t *)ev[i].data.ptr;
    out[i].flags = ((ev[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) ? EV_READ : 0) |
                   ((ev[i].events & EPOLLOUT) ? EV_WRITE : 0);
  }
  return n < 0 ? 0 : n;
}
#else
/* poll() / WSAPoll(): an array of this worker's open sockets, swap-removed on close. */
static int loop_init(worker_t *w) {
  w->pfd = (struct pollfd *)calloc((size_t)w->nconns + 1, sizeof *w->pfd);
  w->polled = (conn_t **)calloc((size_t)w->nconns + 1, sizeof *w->polled);
  w->npolled = 0;
  return w->pfd && w->polled ? 0 : -1;
}
static int loop_add(worker_t *w, conn_t *c) {
  c->slot = w->npolled++;
  w->pfd[c->slot].fd = c->fd;
  w->pfd[c->slot].events = POLLIN;
  w->pfd[c->slot].revents = 0;
  w->polled[c->slot] = c;
  return 0;
}
static void loop_want_write(worker_t *w, conn_t *c, int on) {
  w->pfd[c->slot].events = (short)(POLLIN | (on ? POLLOUT : 0));
  c->want_out = on;
}
static void loop_del(worker_t *w, conn_t *c) {
  int last = --w->npolled;
  if (c->slot != last) {
    w->pfd[c->slot] = w->pfd[last];
    w->polled[c->slot] = w->polled[last];
    w->polled[c->slot]->slot = c->slot;
  }
  c->slot = -1;
}
static void loop_free(worker_t *w) {
  free(w->pfd);
  free(w->polled);
}

typedef struct ready_s {
  conn_t *c;
  int flags;
} ready_t;

static int loop_wait(worker_t *w, ready_t *out, int max, int timeout_ms) {
  int n, i, k = 0;
#  ifdef _WIN32
  n = WSAPoll(w->pfd, (ULONG)w->npolled, timeout_ms);
#  else
  n = poll(w->pfd, (nfds_t)w->npolled, timeout_ms);
#  endif
  if (n <= 0) return 0;
  /* Collect first, act later: acting may swap-remove entries. */
  for (i = 0; i < w->npolled && k < max; i++) {
    short r = w->pfd[i].revents;
    if (r == 0) continue;
    out[k].c = w->polled[i];
    out[k].flags = ((r & (POLLIN | POLLERR | POLLHUP)) ? EV_READ : 0) |
                   ((r & POLLOUT) ? EV_WRITE : 0);
    k++;
  }
  return k;
}
#endif

/* ---- Per-connection work ---- */

static void conn_finish(worker_t *w, conn_t *c, int state) {
  if (c->state == C_DONE || c->state == C_FAILED) return;
  loop_del(w, c);
  sock_close(c->fd);
  c->fd = BAD_SOCK;
  c->state = state;
  w->active--;
}

static void conn_error(worker_t *w, conn_t *c, const char *fmt, ...) {
  va_list ap;
  if (c->state == C_DONE || c->state == C_FAILED) return;
  w->errors++;
  if (ATOMIC_ADD(&g_reported, 1u) <= MAX_REPORTED) {
    char line[512];
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%siocpsrv-flood: connection %u: %s\n", g_cfg.progress ? "\n" : "",
            (unsigned)c->index, line);
    if (g_reported == MAX_REPORTED)
      fprintf(stderr, "iocpsrv-flood: further errors are counted, not printed\n");
  }
  conn_finish(w, c, C_FAILED);
}

/* Write what is queued; returns -1 if the connection failed. */
static int conn_flush(worker_t *w, conn_t *c) {
  while (c->out_off < c->out_len) {
    long n = (long)send(c->fd, (const char *)c->out + c->out_off,
                        (int)(c->out_len - c->out_off), MSG_NOSIGNAL);
    if (n < 0) {
      int e = sock_errno();
      if (SOCK_EINTR(e)) continue;
      if (SOCK_WOULDBLOCK(e)) {
        if (!c->want_out) loop_want_write(w, c, 1);
        return 0;
      }
      conn_error(w, c, "send failed after %llu of %llu echoes: %s",
                 (unsigned long long)(c->next_recv - 1),
                 (unsigned long long)(c->next_send - 1), sock_strerror(e));
      return -1;
    }
    c->out_off += (size_t)n;
  }
  c->out_off = c->out_len = 0;
  if (c->want_out) loop_want_write(w, c, 0);
  return 0;
}

/* Queue as many packets as the window allows, then write them in one go. */
static int conn_pump(worker_t *w, conn_t *c, uint64_t now) {
  uint64_t depth = (uint64_t)g_cfg.depth;
  if (c->state != C_RUNNING) return 0;
  if (c->target == UINT64_MAX && now >= g_deadline) c->target = c->next_send - 1;
  while (c->next_send <= c->target && c->next_send - c->next_recv < depth) {
    size_t len;
    if (c->out_len + g_max_packet > c->out_cap) { /* room for the largest packet */
      if (c->out_off == 0) break;
      memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
      c->out_len -= c->out_off;
      c->out_off = 0;
      if (c->out_len + g_max_packet > c->out_cap) break;
    }
    len = payload_write(c->out + c->out_len + 4, c->index, c->next_send);
    put_le32(c->out + c->out_len, (uint32_t)len);
    c->out_len += 4 + len;
    c->sent_at[c->next_send % depth] = now;
    c->next_send++;
  }
  return conn_flush(w, c);
}

/* All echoes are in: half-close and wait for the server's FIN, which proves it sent
 * nothing extra. */
static void conn_all_echoed(worker_t *w, conn_t *c, uint64_t now) {
  w->end_ns = now;
  c->state = C_CLOSING;
  if (shutdown(c->fd, SHUT_WR) != 0) {
    int e = sock_errno();
    conn_error(w, c, "shutdown: %s", sock_strerror(e));
  }
}

static void conn_read(worker_t *w, conn_t *c) {
  uint64_t now, depth = (uint64_t)g_cfg.depth, first = c->next_recv;
  size_t off = 0;
  long n;
  for (;;) {
    n = (long)recv(c->fd, (char *)c->in + c->in_len, (int)(c->in_cap - c->in_len), 0);
    if (n >= 0) break;
    {
      int e = sock_errno();
      if (SOCK_EINTR(e)) continue;
      if (SOCK_WOULDBLOCK(e)) return;
      if (c->state == C_CLOSING)
        conn_error(w, c, "error instead of the server's close after the last echo: %s",
                   sock_strerror(e));
      else
        conn_error(w, c, "receive failed after %llu of %llu echoes: %s",
                   (unsigned long long)(c->next_recv - 1),
                   (unsigned long long)(c->next_send - 1), sock_strerror(e));
      return;
    }
  }
  if (n == 0) {
    if (c->state == C_CLOSING) {
      conn_finish(w, c, C_DONE);
    } else if (c->in_len > 0) {
      conn_error(w, c, "server closed the connection in the middle of echo %llu "
                 "(%llu of %llu echoed)", (unsigned long long)c->next_recv,
                 (unsigned long long)(c->next_recv - 1), (unsigned long long)(c->next_send - 1));
    } else {
      conn_error(w, c, "server closed the connection early: %llu of %llu echoed",
                 (unsigned long long)(c->next_recv - 1), (unsigned long long)(c->next_send - 1));
    }
    return;
  }
  ATOMIC_STORE(&w->bytes, w->bytes + (uint64_t)n);
  if (c->state == C_CLOSING) {
    conn_error(w, c, "%ld unexpected bytes after the last echo", n);
    return;
  }
  c->in_len += (size_t)n;
  now = now_ns();

  while (c->in_len - off >= 4) {
    const uint8_t *p = c->in + off;
    uint32_t len = get_le32(p);
    uint64_t seq = c->next_recv, lat;
    size_t want_len;
    uint8_t want = 0;
    long bad;
    if (seq >= c->next_send) {
      conn_error(w, c, "received a packet (length %lu) when none was in flight "
                 "(%llu sent, all echoed)", (unsigned long)len, (unsigned long long)(seq - 1));
      return;
    }
    want_len = payload_len(seq);
    if (len != want_len) {
      conn_error(w, c, "echo %llu has length %lu, expected %lu",
                 (unsigned long long)seq, (unsigned long)len, (unsigned long)want_len);
      return;
    }
    if (c->in_len - off - 4 < len) break;
    bad = payload_check(p + 4, len, c->index, seq, &want);
    if (bad >= 0) {
      conn_error(w, c, "echo %llu differs at payload byte %ld: got 0x%02x, expected 0x%02x",
                 (unsigned long long)seq, bad, p[4 + bad], want);
      return;
    }
    lat = now - c->sent_at[seq % depth];
    w->hist[hist_index(lat)]++;
    if (lat > w->lat_max) w->lat_max = lat;
    c->next_recv++;
    off += 4 + (size_t)len;
  }
  if (off > 0) {
    /* This thread is the only writer; the store is atomic for the progress reader. */
    ATOMIC_STORE(&w->packets, w->packets + (c->next_recv - first));
    memmove(c->in, c->in + off, c->in_len - off);
    c->in_len -= off;
  }
  if (conn_pump(w, c, now) != 0) return;
  if (c->next_recv > c->target && c->next_send > c->target) conn_all_echoed(w, c, now);
}

/* ---- Worker thread ---- */

static void worker_run(worker_t *w) {
  ready_t ready[256];
  uint64_t now = now_ns();
  int i, k, n;
  for (i = 0; i < w->nconns; i++) conn_pump(w, w->conns[i], now);
  while (w->active > 0 && !ATOMIC_LOAD(&g_abort)) {
    n = loop_wait(w, ready, 256, 100);
    for (k = 0; k < n; k++) {
      conn_t *c = ready[k].c;
      if (c->state == C_DONE || c->state == C_FAILED) continue; /* closed in this batch */
      if (ready[k].flags & EV_READ) conn_read(w, c);
      if ((ready[k].flags & EV_WRITE) && c->state == C_RUNNING) conn_pump(w, c, now_ns());
    }
  }
  if (ATOMIC_LOAD(&g_abort)) {
    for (i = 0; i < w->nconns; i++) {
      conn_t *c = w->conns[i];
      if (c->state == C_RUNNING)
        conn_error(w, c, "no data for %.0f s: %llu of %llu sent echoed, %llu in flight "
                   "(lost, or never echoed)", g_cfg.timeout,
                   (unsigned long long)(c->next_recv - 1),
                   (unsigned long long)(c->next_send - 1),
                   (unsigned long long)(c->next_send - c->next_recv));
      else if (c->state == C_CLOSING)
        conn_error(w, c, "all %llu echoes arrived, but the server did not close the "
                   "connection within %.0f s of the client's FIN",
                   (unsigned long long)(c->next_recv - 1), g_cfg.timeout);
    }
  }
  __atomic_store_n(&w->finished, 1, __ATOMIC_RELEASE);
}

#ifdef _WIN32
static DWORD WINAPI thread_tramp(LPVOID arg) {
  worker_run((worker_t *)arg);
  return 0;
}
static int thread_start(worker_t *w) {
  w->thread = CreateThread(NULL, 0, thread_tramp, w, 0, NULL);
  return w->thread ? 0 : -1;
}
static void thread_join(worker_t *w) {
  WaitForSingleObject(w->thread, INFINITE);
  CloseHandle(w->thread);
}
#else
static void *thread_tramp(void *arg) {
  worker_run((worker_t *)arg);
  return NULL;
}
static int thread_start(worker_t *w) { return pthread_create(&w->thread, NULL, thread_tramp, w); }
static void thread_join(worker_t *w) { pthread_join(w->thread, NULL); }
#endif

/* ------------------------------------------------------------------------------------ */
/* Setup.                                                                                */

static int set_nonblocking(sock_t fd) {
#ifdef _WIN32
  u_long on = 1;
  return ioctlsocket(fd, FIONBIO, &on) == 0 ? 0 : -1;
#else
  int fl = fcntl(fd, F_GETFL, 0);
  return fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 ? -1 : 0;
#endif
}

/* A blocking connect to the first address that answers; then TCP_NODELAY (packets are
 * written whole, and Nagle would hold back a partial window) and non-blocking mode. */
static sock_t connect_one(const struct addrinfo *ai, int *err) {
  const struct addrinfo *a;
  *err = 0;
  for (a = ai; a != NULL; a = a->ai_next) {
    int one = 1;
    sock_t fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
    if (fd == BAD_SOCK) {
      *err = sock_errno();
      continue;
    }
    if (connect(fd, a->ai_addr, (sock_len_t)a->ai_addrlen) != 0) {
      *err = sock_errno();
      sock_close(fd);
      continue;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, (const char *)&one, sizeof one);
    if (set_nonblocking(fd) != 0) {
      *err = sock_errno();
      sock_close(fd);
      continue;
    }
    return fd;
  }
  return BAD_SOCK;
}

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

int main(int argc, char **argv) {
  struct addrinfo hints, *ai = NULL;
  char port_text[16], n1[32], n2[32], n3[32];
  /* Static: early error exits leave them to the OS, and leak checkers see them as
   * still reachable rather than lost. */
  static worker_t *workers;
  static conn_t *conns;
  size_t cap, base;
  uint64_t *hist, packets = 0, bytes = 0, errors = 0, lat_max = 0, end = 0, now;
  uint64_t expected, last_seen = 0, last_change, last_print, last_packets = 0, last_bytes = 0;
  double elapsed, p50, p99, p999;
  int rc, stalled = 0, all;
  long i, per_worker;

  rc = parse_args(argc, argv);
  if (rc != 0) return rc;

#ifdef _WIN32
  {
    WSADATA wsa;
    if (WSAStartup(MAKEWORD(2, 2), &wsa) != 0) {
      fprintf(stderr, "iocpsrv-flood: WSAStartup failed\n");
      return 1;
    }
  }
#else
  signal(SIGPIPE, SIG_IGN); /* belt and braces: sends use MSG_NOSIGNAL where it exists */
#endif
  raise_fd_limit(g_cfg.connections);

  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  snprintf(port_text, sizeof port_text, "%d", g_cfg.port);
  rc = getaddrinfo(g_cfg.host, port_text, &hints, &ai);
  if (rc != 0) {
    fprintf(stderr, "iocpsrv-flood: cannot resolve %s: %s\n", g_cfg.host, gai_strerror(rc));
    return 1;
  }

  /* Buffers: a whole packet always fits, plus room for batching; smaller per connection
   * when there are many connections. */
  g_max_packet = 4 + (g_cfg.size >= 0 ? (size_t)g_cfg.size : g_cfg.message_len + 20);
  base = g_cfg.connections <= 256 ? 65536 : g_cfg.connections <= 4096 ? 16384 : 4096;
  cap = g_max_packet + base;

  workers = (worker_t *)calloc((size_t)g_cfg.threads, sizeof *workers);
  conns = (conn_t *)calloc((size_t)g_cfg.connections, sizeof *conns);
  if (workers == NULL || conns == NULL) goto oom;
  per_worker = (g_cfg.connections + g_cfg.threads - 1) / g_cfg.threads;
  for (i = 0; i < g_cfg.threads; i++) {
    workers[i].id = (int)i;
    workers[i].conns = (conn_t **)calloc((size_t)per_worker, sizeof(conn_t *));
    workers[i].hist = (uint64_t *)calloc(HIST_BUCKETS, sizeof(uint64_t));
    if (workers[i].conns == NULL || workers[i].hist == NULL) goto oom;
  }

  for (i = 0; i < g_cfg.connections; i++) {
    conn_t *c = &conns[i];
    worker_t *w = &workers[i % g_cfg.threads];
    int err;
    c->index = (uint32_t)i;
    c->state = C_RUNNING;
    c->slot = -1;
    c->next_send = c->next_recv = 1;
    c->target = g_cfg.duration > 0 ? UINT64_MAX : g_cfg.count;
    c->out_cap = c->in_cap = cap;
    c->out = (uint8_t *)malloc(cap);
    c->in = (uint8_t *)malloc(cap);
    c->sent_at = (uint64_t *)calloc((size_t)g_cfg.depth, sizeof(uint64_t));
    if (c->out == NULL || c->in == NULL || c->sent_at == NULL) goto oom;
    c->fd = connect_one(ai, &err);
    if (c->fd == BAD_SOCK) {
      fprintf(stderr, "iocpsrv-flood: cannot connect to %s:%d: %s", g_cfg.host, g_cfg.port,
              sock_strerror(err));
      if (i > 0) fprintf(stderr, " (after %ld connections)", i);
      fputc('\n', stderr);
      freeaddrinfo(ai);
      return 1;
    }
    w->conns[w->nconns++] = c;
  }
  freeaddrinfo(ai);

  for (i = 0; i < g_cfg.threads; i++) {
    worker_t *w = &workers[i];
    int k;
    if (loop_init(w) != 0) {
      fprintf(stderr, "iocpsrv-flood: cannot create an event loop\n");
      return 1;
    }
    for (k = 0; k < w->nconns; k++) {
      if (loop_add(w, w->conns[k]) != 0) {
        fprintf(stderr, "iocpsrv-flood: cannot watch a socket: %s\n",
                sock_strerror(sock_errno()));
        return 1;
      }
    }
    w->active = w->nconns;
  }

  expected = g_cfg.duration > 0 ? 0 : g_cfg.count * (uint64_t)g_cfg.connections;
  g_t0 = now_ns();
  g_deadline = g_cfg.duration > 0 ? g_t0 + (uint64_t)(g_cfg.duration * 1e9) : UINT64_MAX;
  for (i = 0; i < g_cfg.threads; i++) {
    if (thread_start(&workers[i]) != 0) {
      fprintf(stderr, "iocpsrv-flood: cannot start a thread\n");
      return 1;
    }
  }

  /* Watch: progress line, stall detection. */
  last_change = last_print = g_t0;
  for (;;) {
    uint64_t seen_packets = 0, seen_bytes = 0;
    sleep_ms(20);
    now = now_ns();
    all = 1;
    for (i = 0; i < g_cfg.threads; i++) {
      if (!__atomic_load_n(&workers[i].finished, __ATOMIC_ACQUIRE)) all = 0;
      seen_packets += ATOMIC_LOAD(&workers[i].packets);
      seen_bytes += ATOMIC_LOAD(&workers[i].bytes);
    }
    if (all) break;
    if (seen_packets + seen_bytes != last_seen) {
      last_seen = seen_packets + seen_bytes;
      last_change = now;
    } else if (!stalled && (double)(now - last_change) / 1e9 >= g_cfg.timeout) {
      stalled = 1;
      ATOMIC_STORE(&g_abort, 1);
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
  now = now_ns();
  if (g_cfg.progress) printf("\r%79s\r", "");

  hist = workers[0].hist;
  for (i = 0; i < g_cfg.threads; i++) {
    worker_t *w = &workers[i];
    unsigned b;
    thread_join(w);
    loop_free(w);
    packets += w->packets;
    bytes += w->bytes;
    errors += w->errors;
    if (w->lat_max > lat_max) lat_max = w->lat_max;
    if (w->end_ns > end) end = w->end_ns;
    if (i > 0)
      for (b = 0; b < HIST_BUCKETS; b++) hist[b] += w->hist[b];
  }
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

  for (i = 0; i < g_cfg.connections; i++) {
    free(conns[i].out);
    free(conns[i].in);
    free(conns[i].sent_at);
  }
  for (i = 0; i < g_cfg.threads; i++) {
    free(workers[i].conns);
    free(workers[i].hist);
  }
  free(conns);
  free(workers);
#ifdef _WIN32
  WSACleanup();
#endif

  if (errors > 0) {
    fprintf(stderr, "iocpsrv-flood: FAILED: %llu connection%s had errors%s\n",
            (unsigned long long)errors, errors == 1 ? "" : "s",
            stalled ? " (stalled)" : "");
    return 1;
  }
  return 0;

oom:
  fprintf(stderr, "iocpsrv-flood: out of memory for %ld connections of %lu-byte buffers\n",
          g_cfg.connections, (unsigned long)cap);
  return 1;
}
