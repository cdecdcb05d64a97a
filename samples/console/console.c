/*
 * iocpsrv-console -- the 2001 article's server window as a terminal program.
 *
 *   iocpsrv-console [--port N] [--host H] [--threads N] [--echo]
 *                   [--proxy-protocol off|required|optional] [--proxy-trusted LIST]
 *                   [--max-per-source N] [--reuseport]
 *
 * It prints "listening on HOST:PORT", then a line for every client that connects or
 * leaves (its id, address and, on leaving, the reason) and for every packet it sends
 * (text as text, binary as a hex preview, both cut short). With --echo (or the echo
 * command) it also sends every packet back, so iocpsrv-flood can be its client.
 * Commands are read from stdin, one per line:
 *
 *   list                 the clients: id, address, age, packets and bytes in/out
 *   send ID TEXT         send TEXT to client ID as one packet
 *   broadcast TEXT       send TEXT to every client
 *   kick ID [abort]      close client ID gracefully (or reset it)
 *   stats                the server's counters
 *   echo on|off          send every packet back to its sender, or stop doing so
 *   sleep SECONDS        pause the command reader (for scripts)
 *   help                 the commands
 *   quit                 stop the server and exit 0 (so does end of input)
 *
 * Piped input works the same as typing (commands run in order, lines starting with '#'
 * are comments); a "> " prompt appears only when stdin is a terminal. Every line of
 * output is printed whole under one mutex, so lines from worker threads (connects,
 * packets) never cut into a command's output. SIGINT/SIGTERM (Ctrl+C or Ctrl+Break on
 * Windows) stop the server gracefully like quit.
 *
 * Public API only. Points worth copying into a real host:
 *   - per-connection state hangs off conn_user (set in the connect callback, freed in
 *     the disconnect callback: exactly one per accepted client, contract 2);
 *   - the packet callback formats what it shows from the packet before returning, since
 *     the pointer dies with the callback (contract 3);
 *   - commands call send/broadcast/disconnect/info/stats from the main thread while the
 *     workers run callbacks (contract 5); ids come from the engine and are printed in
 *     decimal, the form the commands take back;
 *   - behind a load balancer that speaks the PROXY protocol (--proxy-protocol), the
 *     connect callback's peer is the real client; iocpsrv_conn_info's proxy field, read
 *     from inside the connect callback, is the balancer: "connected from CLIENT via
 *     BALANCER" (see samples/haproxy/). Only the balancers --proxy-trusted lists are
 *     believed (IOCPSRV_OPT_PROXY_TRUSTED; nobody by default); --max-per-source caps
 *     the connections one client address may hold
 *     (IOCPSRV_OPT_MAX_CONNECTIONS_PER_SOURCE).
 */
#if !defined(_WIN32) && !defined(_GNU_SOURCE)
#  define _GNU_SOURCE
#endif

#include <iocpsrv.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef _WIN32
#  define WIN32_LEAN_AND_MEAN
#  include <windows.h>
#  include <io.h>
#  define STDIN_IS_TTY() _isatty(_fileno(stdin))
#else
#  include <pthread.h>
#  include <signal.h>
#  include <time.h>
#  include <unistd.h>
#  define STDIN_IS_TTY() isatty(STDIN_FILENO)
#endif

#define DEFAULT_PORT 5150     /* the article's port, and iocpsrv-flood's default */
#define STOP_TIMEOUT_MS 2000  /* quit: how long clients get to finish a graceful close */
#define PREVIEW_TEXT 120      /* payload bytes of a text packet shown */
#define PREVIEW_HEX 24        /* payload bytes of a binary packet shown */
#define LINE_MAX_BYTES 65536  /* longest command line */
#define OUT_LINE 1024         /* longest line of output (one packet line fits) */

/* ------------------------------------------------------------------------------------ */
/* A lock, the wall clock, a sleep.                                                      */

#ifdef _WIN32
typedef SRWLOCK lock_t;
#  define LOCK_INIT SRWLOCK_INIT
static void lock(lock_t *l) { AcquireSRWLockExclusive(l); }
static void unlock(lock_t *l) { ReleaseSRWLockExclusive(l); }
static int64_t wall_ms(void) {
  FILETIME ft;
  ULARGE_INTEGER u;
  GetSystemTimeAsFileTime(&ft);
  u.LowPart = ft.dwLowDateTime;
  u.HighPart = ft.dwHighDateTime;
  return (int64_t)(u.QuadPart / 10000u) - 11644473600000LL; /* 1601 -> 1970 */
}
static void sleep_ms(long ms) { Sleep((DWORD)ms); }
#else
typedef pthread_mutex_t lock_t;
#  define LOCK_INIT PTHREAD_MUTEX_INITIALIZER
static void lock(lock_t *l) { pthread_mutex_lock(l); }
static void unlock(lock_t *l) { pthread_mutex_unlock(l); }
static int64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
static void sleep_ms(long ms) {
  struct timespec ts;
  ts.tv_sec = ms / 1000;
  ts.tv_nsec = (ms % 1000) * 1000000L;
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}
#endif

/* ------------------------------------------------------------------------------------ */
/* Output: one mutex around every line, so worker threads never cut into a command's    */
/* output. On a terminal the "> " prompt is redrawn after lines that arrive while it is  */
/* shown; in a pipe there is no prompt at all.                                           */

static lock_t g_out_lock = LOCK_INIT;
static int g_interactive;    /* stdin is a terminal: show a prompt */
static int g_prompt_visible; /* under g_out_lock */

/* Write text (one or more whole lines) at once. */
static void out_block(const char *text) {
  lock(&g_out_lock);
  if (g_prompt_visible) fputs("\r", stdout); /* over the prompt, not after it */
  fputs(text, stdout);
  if (g_prompt_visible) fputs("> ", stdout);
  fflush(stdout); /* Windows' C runtime has no line buffering: flush every line */
  unlock(&g_out_lock);
}

#if defined(__GNUC__)
__attribute__((format(printf, 1, 2)))
#endif
static void say(const char *fmt, ...) {
  char line[OUT_LINE + 2];
  va_list ap;
  int n;
  va_start(ap, fmt);
  n = vsnprintf(line, OUT_LINE, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if (n >= OUT_LINE) n = OUT_LINE - 1; /* cut, but still one whole line */
  line[n] = '\n';
  line[n + 1] = '\0';
  out_block(line);
}

static void prompt(void) {
  if (!g_interactive) return;
  lock(&g_out_lock);
  fputs("> ", stdout);
  fflush(stdout);
  g_prompt_visible = 1;
  unlock(&g_out_lock);
}

static void prompt_gone(void) { /* Enter was pressed: the cursor is on a new line */
  lock(&g_out_lock);
  g_prompt_visible = 0;
  unlock(&g_out_lock);
}

/* A growing text buffer for multi-line output (the list table). */
typedef struct text_s {
  char *p;
  size_t len, cap;
} text_t;

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static void text_add(text_t *t, const char *fmt, ...) {
  va_list ap;
  int n;
  va_start(ap, fmt);
  n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if (t->len + (size_t)n + 1 > t->cap) {
    size_t cap = t->cap ? t->cap * 2 : 1024;
    char *p;
    while (cap < t->len + (size_t)n + 1) cap *= 2;
    p = (char *)realloc(t->p, cap);
    if (p == NULL) return; /* out of memory: the table is shorter */
    t->p = p;
    t->cap = cap;
  }
  va_start(ap, fmt);
  vsnprintf(t->p + t->len, t->cap - t->len, fmt, ap);
  va_end(ap);
  t->len += (size_t)n;
}

/* ------------------------------------------------------------------------------------ */
/* Packet previews.                                                                      */

/* Length of a well-formed UTF-8 sequence of two or more bytes at p, or 0. */
static size_t utf8_seq(const uint8_t *p, size_t avail) {
  size_t n, i;
  uint8_t c = p[0];
  if (c >= 0xC2 && c <= 0xDF) n = 2;
  else if (c >= 0xE0 && c <= 0xEF) n = 3;
  else if (c >= 0xF0 && c <= 0xF4) n = 4;
  else return 0;
  if (avail < n) return 0;
  for (i = 1; i < n; i++)
    if ((p[i] & 0xC0) != 0x80) return 0;
  if (c == 0xE0 && p[1] < 0xA0) return 0; /* overlong */
  if (c == 0xED && p[1] > 0x9F) return 0; /* surrogates */
  if (c == 0xF0 && p[1] < 0x90) return 0; /* overlong */
  if (c == 0xF4 && p[1] > 0x8F) return 0; /* above U+10FFFF */
  return n;
}

/* Text: printable ASCII, tab, CR, LF and well-formed UTF-8. Anything else is binary. */
static int is_text(const uint8_t *p, size_t len) {
  size_t i = 0;
  while (i < len) {
    uint8_t c = p[i];
    if ((c >= 0x20 && c < 0x7F) || c == '\t' || c == '\r' || c == '\n') {
      i++;
    } else {
      size_t n = utf8_seq(p + i, len - i);
      if (n == 0) return 0;
      i += n;
    }
  }
  return 1;
}

/* "text" with C escapes for quotes, backslashes and control characters, at most
 * PREVIEW_TEXT payload bytes (never half a UTF-8 character), then how much was left. */
static void preview_text(char *out, size_t cap, const uint8_t *p, size_t len) {
  size_t i = 0, o = 0;
  out[o++] = '"';
  while (i < len && i < PREVIEW_TEXT && o + 8 < cap) {
    uint8_t c = p[i];
    const char *esc = NULL;
    if (c == '"') esc = "\\\"";
    else if (c == '\\') esc = "\\\\";
    else if (c == '\n') esc = "\\n";
    else if (c == '\r') esc = "\\r";
    else if (c == '\t') esc = "\\t";
    if (esc != NULL) {
      size_t k = strlen(esc);
      memcpy(out + o, esc, k);
      o += k;
      i++;
    } else if (c < 0x80) {
      out[o++] = (char)c;
      i++;
    } else {
      size_t n = utf8_seq(p + i, len - i); /* well-formed: is_text said so */
      if (n == 0 || i + n > PREVIEW_TEXT || o + n + 8 >= cap) break;
      memcpy(out + o, p + i, n);
      o += n;
      i += n;
    }
  }
  out[o++] = '"';
  out[o] = '\0';
  if (i < len) snprintf(out + o, cap - o, " ... (%llu more bytes)", (unsigned long long)(len - i));
}

/* "00 01 02 ..." for the first PREVIEW_HEX bytes, then how much was left. */
static void preview_hex(char *out, size_t cap, const uint8_t *p, size_t len) {
  size_t i, o = 0;
  out[0] = '\0';
  for (i = 0; i < len && i < PREVIEW_HEX && o + 4 < cap; i++)
    o += (size_t)snprintf(out + o, cap - o, i ? " %02x" : "%02x", p[i]);
  if (i < len) snprintf(out + o, cap - o, " ... (%llu more bytes)", (unsigned long long)(len - i));
}

/* ------------------------------------------------------------------------------------ */
/* Callbacks (worker threads).                                                           */

/* Echo mode: set by the main thread, read by the workers. */
#if defined(_MSC_VER)
static volatile long g_echo;
#  define ECHO_GET() InterlockedCompareExchange(&g_echo, 0, 0)
#  define ECHO_SET(v) InterlockedExchange(&g_echo, (v))
#else
static int g_echo;
#  define ECHO_GET() __atomic_load_n(&g_echo, __ATOMIC_RELAXED)
#  define ECHO_SET(v) __atomic_store_n(&g_echo, (v), __ATOMIC_RELAXED)
#endif

typedef struct client_s {
  char peer[64];
  char via[64];         /* the balancer that sent a PROXY header, else "" */
  int64_t connected_ms; /* wall clock */
  uint64_t packets_in;  /* only its own callbacks touch these: serialized (contract 2) */
  uint64_t bytes_in;
} client_t;

static int IOCPSRV_CALL on_connect(iocpsrv_t *server, iocpsrv_conn_id_t conn,
                                   const char *peer, void **conn_user) {
  client_t *c = (client_t *)calloc(1, sizeof *c);
  if (c == NULL) {
    say("client %llu from %s refused: out of memory", (unsigned long long)conn, peer);
    return 1;
  }
  snprintf(c->peer, sizeof c->peer, "%s", peer);
  c->connected_ms = wall_ms();
  *conn_user = c;
  {
    iocpsrv_conn_info_t info; /* info works from any callback (contract 5) */
    memset(&info, 0, sizeof info);
    info.struct_size = (uint32_t)sizeof info;
    if (iocpsrv_conn_info(server, conn, &info) == 0 && info.proxy[0] != '\0')
      snprintf(c->via, sizeof c->via, "%s", info.proxy);
  }
  if (c->via[0] != '\0')
    say("client %llu connected from %s via %s", (unsigned long long)conn, peer, c->via);
  else
    say("client %llu connected from %s", (unsigned long long)conn, peer);
  return 0;
}

static int IOCPSRV_CALL on_packet(iocpsrv_t *server, iocpsrv_conn_id_t conn,
                                  void *conn_user, const uint8_t *data, size_t len) {
  client_t *c = (client_t *)conn_user;
  char shown[OUT_LINE - 96];
  int echo = (int)ECHO_GET(); /* decided before the line shows: scripts can rely on it */
  c->packets_in++;
  c->bytes_in += len;
  if (len == 0) {
    say("client %llu packet, 0 bytes", (unsigned long long)conn);
  } else if (is_text(data, len)) {
    preview_text(shown, sizeof shown, data, len);
    say("client %llu packet, %llu bytes: %s", (unsigned long long)conn,
        (unsigned long long)len, shown);
  } else {
    preview_hex(shown, sizeof shown, data, len);
    say("client %llu packet, %llu bytes, binary: %s", (unsigned long long)conn,
        (unsigned long long)len, shown);
  }
  if (echo) {
    int rc = iocpsrv_send(server, conn, data, len); /* copies: data may die after return */
    if (rc < 0 && rc != IOCPSRV_ENOTCONN && rc != IOCPSRV_ESTOPPED)
      say("error: echo to client %llu: %s", (unsigned long long)conn, iocpsrv_strerror(rc));
  }
  return 0;
}

static void IOCPSRV_CALL on_disconnect(iocpsrv_t *server, iocpsrv_conn_id_t conn,
                                       void *conn_user, int reason) {
  client_t *c = (client_t *)conn_user;
  if (c == NULL) return;
  say("client %llu disconnected: %s (%s%s%s, %llu packets in, %.1f s)",
      (unsigned long long)conn, iocpsrv_reason_name(reason), c->peer,
      c->via[0] ? " via " : "", c->via, (unsigned long long)c->packets_in,
      (double)(wall_ms() - c->connected_ms) / 1000.0);
  free(c);
}

static void IOCPSRV_CALL on_log(iocpsrv_t *server, int level, const char *message) {
  if (level <= 1) say("iocpsrv %s: %s", level == 0 ? "error" : "warning", message);
}

/* ------------------------------------------------------------------------------------ */
/* Commands (main thread).                                                               */

static iocpsrv_t *g_srv;
static lock_t g_cmd_lock = LOCK_INIT; /* a command, or the stop on a signal, at a time */
static int g_stopped;                 /* under g_cmd_lock */

static const char *skip_space(const char *s) {
  while (*s == ' ' || *s == '\t') s++;
  return s;
}

/* The next word of *s (copied into word) and advance past it. */
static int next_word(const char **s, char *word, size_t cap) {
  const char *p = skip_space(*s), *start = p;
  size_t n;
  while (*p && *p != ' ' && *p != '\t') p++;
  n = (size_t)(p - start);
  if (n == 0 || n >= cap) return -1;
  memcpy(word, start, n);
  word[n] = '\0';
  *s = p;
  return 0;
}

static int parse_id(const char *word, iocpsrv_conn_id_t *id) {
  char *end;
  unsigned long long v;
  if (*word < '0' || *word > '9') return -1;
  errno = 0;
  v = strtoull(word, &end, 10);
  if (errno != 0 || *end != '\0' || v == 0) return -1;
  *id = (iocpsrv_conn_id_t)v;
  return 0;
}

static void cmd_help(void) {
  out_block("commands:\n"
            "  list               clients: id, address, age, packets and bytes in/out\n"
            "  send ID TEXT       send TEXT to client ID as one packet\n"
            "  broadcast TEXT     send TEXT to every client\n"
            "  kick ID [abort]    close client ID gracefully (abort: reset it at once)\n"
            "  stats              the server's counters\n"
            "  echo on|off        send every packet back to its sender, or stop\n"
            "  sleep SECONDS      wait before reading the next command (for scripts)\n"
            "  help               this text\n"
            "  quit               stop the server and exit (so does end of input)\n");
}

static void cmd_list(void) {
  iocpsrv_conn_id_t *ids = NULL;
  iocpsrv_conn_info_t *infos = NULL;
  text_t t = {NULL, 0, 0};
  int n, cap, i, shown = 0, proxied = 0;
  int64_t now = wall_ms();

  n = iocpsrv_connections(g_srv, NULL, 0);
  if (n < 0) {
    say("error: list: %s", iocpsrv_strerror(n));
    return;
  }
  cap = n + 16; /* room for a few that connect meanwhile */
  ids = (iocpsrv_conn_id_t *)malloc((size_t)cap * sizeof *ids);
  infos = (iocpsrv_conn_info_t *)malloc((size_t)cap * sizeof *infos);
  if (ids == NULL || infos == NULL) {
    say("error: list: out of memory");
    free(ids);
    free(infos);
    return;
  }
  n = iocpsrv_connections(g_srv, ids, cap);
  if (n > cap) n = cap;
  if (n < 0) n = 0;
  /* Read every row first: the "via" column appears only when a client came through a
   * balancer (PROXY protocol), so a plain server's table stays as it was. */
  for (i = 0; i < n; i++) {
    iocpsrv_conn_info_t *info = &infos[shown];
    memset(info, 0, sizeof *info);
    info->struct_size = (uint32_t)sizeof *info;
    if (iocpsrv_conn_info(g_srv, ids[i], info) < 0) continue; /* gone meanwhile */
    if (info->proxy[0] != '\0') proxied = 1;
    shown++;
  }
  text_add(&t, proxied ? "%-10s %-24s %8s %10s %11s %12s %12s %-7s via\n"
                       : "%-10s %-24s %8s %10s %11s %12s %12s %s\n",
           "id", "address", "age", "packets in", "packets out", "bytes in", "bytes out",
           "state");
  for (i = 0; i < shown; i++) {
    const iocpsrv_conn_info_t *info = &infos[i];
    const char *state = (info->flags & IOCPSRV_CONN_CLOSING) ? "closing"
                        : (info->flags & IOCPSRV_CONN_PAUSED) ? "paused"
                                                              : "open";
    if (proxied)
      text_add(&t, "%-10llu %-24s %7.0fs %10llu %11llu %12llu %12llu %-7s %s\n",
               (unsigned long long)info->id, info->peer,
               (double)(now - info->connect_time_ms) / 1000.0,
               (unsigned long long)info->packets_in, (unsigned long long)info->packets_out,
               (unsigned long long)info->bytes_in, (unsigned long long)info->bytes_out, state,
               info->proxy[0] ? info->proxy : "-");
    else
      text_add(&t, "%-10llu %-24s %7.0fs %10llu %11llu %12llu %12llu %s\n",
               (unsigned long long)info->id, info->peer,
               (double)(now - info->connect_time_ms) / 1000.0,
               (unsigned long long)info->packets_in, (unsigned long long)info->packets_out,
               (unsigned long long)info->bytes_in, (unsigned long long)info->bytes_out,
               state);
  }
  text_add(&t, "%d client%s\n", shown, shown == 1 ? "" : "s");
  if (t.p != NULL) out_block(t.p);
  free(t.p);
  free(infos);
  free(ids);
}

static void cmd_send(const char *args) {
  char word[32];
  iocpsrv_conn_id_t id;
  const char *text;
  int rc;
  if (next_word(&args, word, sizeof word) != 0 || parse_id(word, &id) != 0) {
    say("usage: send ID TEXT (ID as list shows it)");
    return;
  }
  text = skip_space(args);
  rc = iocpsrv_send(g_srv, id, text, strlen(text));
  if (rc < 0)
    say("error: send to client %llu: %s", (unsigned long long)id, iocpsrv_strerror(rc));
  else
    say("sent %llu bytes to client %llu", (unsigned long long)strlen(text),
        (unsigned long long)id);
}

static void cmd_broadcast(const char *args) {
  const char *text = skip_space(args);
  int rc = iocpsrv_broadcast(g_srv, text, strlen(text));
  if (rc < 0)
    say("error: broadcast: %s", iocpsrv_strerror(rc));
  else
    say("broadcast %llu bytes to %d client%s", (unsigned long long)strlen(text), rc,
        rc == 1 ? "" : "s");
}

static void cmd_kick(const char *args) {
  char word[32];
  iocpsrv_conn_id_t id;
  int mode = IOCPSRV_CLOSE_GRACEFUL, rc;
  if (next_word(&args, word, sizeof word) != 0 || parse_id(word, &id) != 0) {
    say("usage: kick ID [abort]");
    return;
  }
  if (next_word(&args, word, sizeof word) == 0) {
    if (strcmp(word, "abort") != 0 || *skip_space(args) != '\0') {
      say("usage: kick ID [abort]");
      return;
    }
    mode = IOCPSRV_CLOSE_ABORT;
  }
  rc = iocpsrv_disconnect(g_srv, id, mode);
  if (rc < 0)
    say("error: kick client %llu: %s", (unsigned long long)id, iocpsrv_strerror(rc));
  else
    say("kicking client %llu (%s)", (unsigned long long)id,
        mode == IOCPSRV_CLOSE_ABORT ? "abort" : "graceful");
}

static void cmd_stats(void) {
  iocpsrv_stats_t st;
  char buf[1024];
  int rc;
  memset(&st, 0, sizeof st);
  st.struct_size = (uint32_t)sizeof st;
  rc = iocpsrv_stats(g_srv, &st);
  if (rc < 0) {
    say("error: stats: %s", iocpsrv_strerror(rc));
    return;
  }
  snprintf(buf, sizeof buf,
           "stats: connections now %llu, total %llu, refused %llu, rejected %llu; "
           "workers %u\n"
           "stats: packets in %llu, packets out %llu, bytes in %llu, bytes out %llu\n"
           "stats: accept errors %llu, protocol errors %llu, send-queue rejections %llu, "
           "idle timeouts %llu\n"
           "stats: refused per source %llu, untrusted PROXY peers %llu\n",
           (unsigned long long)st.connections_now, (unsigned long long)st.connections_total,
           (unsigned long long)st.connections_refused,
           (unsigned long long)st.connections_rejected, (unsigned)st.workers,
           (unsigned long long)st.packets_in, (unsigned long long)st.packets_out,
           (unsigned long long)st.bytes_in, (unsigned long long)st.bytes_out,
           (unsigned long long)st.accept_errors, (unsigned long long)st.protocol_errors,
           (unsigned long long)st.send_queue_rejections,
           (unsigned long long)st.idle_timeouts, (unsigned long long)st.source_refusals,
           (unsigned long long)st.proxy_untrusted);
  out_block(buf);
}

static void cmd_echo(const char *args) {
  char word[8];
  if (next_word(&args, word, sizeof word) == 0 && *skip_space(args) == '\0') {
    if (strcmp(word, "on") == 0) {
      ECHO_SET(1);
    } else if (strcmp(word, "off") == 0) {
      ECHO_SET(0);
    } else {
      say("usage: echo on|off");
      return;
    }
  } else if (*skip_space(args) != '\0') {
    say("usage: echo on|off");
    return;
  }
  say("echo is %s", ECHO_GET() ? "on" : "off");
}

static void cmd_sleep(const char *args) {
  char *end;
  const char *a = skip_space(args);
  double s = strtod(a, &end);
  if (end == a || *skip_space(end) != '\0' || !(s >= 0) || s > 86400) {
    say("usage: sleep SECONDS");
    return;
  }
  sleep_ms((long)(s * 1000.0 + 0.5));
}

/* Stop the server (once): every client gets its disconnect line, then a summary. */
static void stop_server(const char *why) {
  iocpsrv_stats_t st;
  int rc;
  lock(&g_cmd_lock);
  if (g_stopped) {
    unlock(&g_cmd_lock);
    return;
  }
  g_stopped = 1;
  say("%s: stopping", why);
  rc = iocpsrv_stop(g_srv, STOP_TIMEOUT_MS);
  if (rc < 0 && rc != IOCPSRV_ESTOPPED) say("error: stop: %s", iocpsrv_strerror(rc));
  memset(&st, 0, sizeof st);
  st.struct_size = (uint32_t)sizeof st;
  if (iocpsrv_stats(g_srv, &st) == 0)
    say("stopped: %llu connections served, %llu packets in, %llu packets out",
        (unsigned long long)st.connections_total, (unsigned long long)st.packets_in,
        (unsigned long long)st.packets_out);
  iocpsrv_destroy(g_srv);
  g_srv = NULL;
  unlock(&g_cmd_lock);
}

/* Run one command line; returns 1 for quit. */
static int run_command(const char *line) {
  char cmd[32];
  const char *args = line;
  int quit = 0;
  if (*skip_space(line) == '\0' || *skip_space(line) == '#') return 0;
  if (next_word(&args, cmd, sizeof cmd) != 0) {
    say("error: unknown command (try help)");
    return 0;
  }
  if (strcmp(cmd, "sleep") == 0) { /* outside the lock: a signal may stop meanwhile */
    cmd_sleep(args);
    return 0;
  }
  lock(&g_cmd_lock);
  if (g_stopped) {
    quit = 1;
  } else if (strcmp(cmd, "list") == 0 || strcmp(cmd, "ls") == 0) {
    cmd_list();
  } else if (strcmp(cmd, "send") == 0) {
    cmd_send(args);
  } else if (strcmp(cmd, "broadcast") == 0) {
    cmd_broadcast(args);
  } else if (strcmp(cmd, "kick") == 0) {
    cmd_kick(args);
  } else if (strcmp(cmd, "stats") == 0) {
    cmd_stats();
  } else if (strcmp(cmd, "echo") == 0) {
    cmd_echo(args);
  } else if (strcmp(cmd, "help") == 0 || strcmp(cmd, "?") == 0) {
    cmd_help();
  } else if (strcmp(cmd, "quit") == 0 || strcmp(cmd, "exit") == 0) {
    quit = 1;
  } else {
    say("error: unknown command '%s' (try help)", cmd);
  }
  unlock(&g_cmd_lock);
  return quit;
}

/* ------------------------------------------------------------------------------------ */
/* Ctrl+C / SIGTERM: stop like quit, from a thread of its own (never a signal handler),  */
/* then exit while the main thread may still be blocked reading stdin.                   */

static void stop_and_exit(const char *why) {
  stop_server(why);
  fflush(stdout);
  _exit(0);
}

#ifdef _WIN32
static BOOL WINAPI console_handler(DWORD type) {
  switch (type) {
  case CTRL_C_EVENT:
  case CTRL_BREAK_EVENT:
  case CTRL_CLOSE_EVENT:
    stop_and_exit(type == CTRL_CLOSE_EVENT ? "console closed" : "interrupted");
    return TRUE;
  default:
    return FALSE;
  }
}

static int signals_setup(void) {
  SetConsoleCtrlHandler(console_handler, TRUE); /* fails harmlessly without a console */
  return 0;
}
static int signals_start(void) { return 0; }
#else
static sigset_t g_stop_signals;

static void *signal_thread(void *arg) {
  int sig = 0;
  (void)arg;
  while (sigwait(&g_stop_signals, &sig) != 0) {
  }
  stop_and_exit(sig == SIGINT ? "SIGINT" : "SIGTERM");
  return NULL;
}

/* Block SIGINT/SIGTERM before the engine starts its workers (they inherit the mask);
 * a thread of ours takes them with sigwait. Defaults restored first: a shell without
 * job control starts background programs with SIGINT ignored. */
static int signals_setup(void) {
  signal(SIGINT, SIG_DFL);
  signal(SIGTERM, SIG_DFL);
  sigemptyset(&g_stop_signals);
  sigaddset(&g_stop_signals, SIGINT);
  sigaddset(&g_stop_signals, SIGTERM);
  return pthread_sigmask(SIG_BLOCK, &g_stop_signals, NULL) == 0 ? 0 : -1;
}

static int signals_start(void) {
  pthread_t t;
  if (pthread_create(&t, NULL, signal_thread, NULL) != 0) return -1;
  pthread_detach(t);
  return 0;
}
#endif

/* ------------------------------------------------------------------------------------ */

static void usage(FILE *out) {
  fprintf(out,
          "usage: iocpsrv-console [--port N] [--host H] [--threads N] [--echo]\n"
          "                       [--proxy-protocol off|required|optional]\n"
          "                       [--proxy-trusted LIST] [--max-per-source N] [--reuseport]\n"
          "\n"
          "A server you can watch and drive: shows clients connecting and leaving and the\n"
          "packets they send (4-byte little-endian length + payload), and takes commands\n"
          "on stdin, typed or piped.\n"
          "\n"
          "  --port N      TCP port (default %d); 0 picks a free one\n"
          "  --host H      address to bind (default 127.0.0.1; \"::\" for every interface)\n"
          "  --threads N   worker threads (default 0 = the engine's default, 2 x CPUs)\n"
          "  --echo        start with echo on: every packet goes back to its sender\n"
          "  --proxy-protocol off|required|optional\n"
          "                expect a PROXY protocol v1/v2 header (HAProxy's send-proxy,\n"
          "                send-proxy-v2) before the first packet: required = on every\n"
          "                connection, optional = when a client starts with one (default\n"
          "                off); clients then show as \"ADDRESS via BALANCER\"\n"
          "  --proxy-trusted LIST\n"
          "                the balancers whose PROXY headers are believed: addresses and\n"
          "                CIDR ranges, e.g. \"127.0.0.1, 10.0.0.0/8, ::1\" (default: none,\n"
          "                so with --proxy-protocol required every client is refused)\n"
          "  --max-per-source N\n"
          "                connections one client address may hold at once; more are\n"
          "                refused (behind a trusted balancer: the address its header\n"
          "                names). Default 0 = no limit\n"
          "  --reuseport   SO_REUSEPORT: several processes may listen on the same port and\n"
          "                the kernel spreads new connections over them (Linux; not on\n"
          "                Windows)\n"
          "  --help        this text\n"
          "\n",
          DEFAULT_PORT);
  fflush(out);
  if (out == stdout) cmd_help();
}

static int parse_long(const char *text, long min, long max, long *out) {
  char *end;
  long v;
  if (text == NULL || *text == '\0') return -1;
  errno = 0;
  v = strtol(text, &end, 10);
  if (errno != 0 || *end != '\0' || v < min || v > max) return -1;
  *out = v;
  return 0;
}

static int fail(const char *what, int rc) {
  fprintf(stderr, "iocpsrv-console: %s: %s (%s)\n", what, iocpsrv_strerror(rc),
          iocpsrv_err_name(rc));
  if (g_srv != NULL) iocpsrv_destroy(g_srv);
  g_srv = NULL;
  return 1;
}

/* "off" | "required" | "optional" -> an iocpsrv_proxy_mode_t, or -1. */
static int parse_proxy_mode(const char *text) {
  if (text == NULL) return -1;
  if (strcmp(text, "off") == 0) return IOCPSRV_PROXY_OFF;
  if (strcmp(text, "required") == 0) return IOCPSRV_PROXY_REQUIRED;
  if (strcmp(text, "optional") == 0) return IOCPSRV_PROXY_OPTIONAL;
  return -1;
}

int main(int argc, char **argv) {
  const char *host = "127.0.0.1";
  long port = DEFAULT_PORT, threads = 0;
  char *line;
  int i, rc, quit = 0, proxy_mode = IOCPSRV_PROXY_OFF, reuseport = 0;
  const char *proxy_trusted = NULL;
  long max_per_source = 0;

  for (i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      usage(stdout);
      return 0;
    } else if (strcmp(a, "--echo") == 0) {
      ECHO_SET(1);
    } else if (strcmp(a, "--port") == 0 || strcmp(a, "-p") == 0) {
      if (parse_long(v, 0, 65535, &port) != 0) {
        fprintf(stderr, "iocpsrv-console: --port needs a number 0..65535\n");
        return 2;
      }
      i++;
    } else if (strcmp(a, "--host") == 0) {
      if (v == NULL) {
        fprintf(stderr, "iocpsrv-console: --host needs an address\n");
        return 2;
      }
      host = v;
      i++;
    } else if (strcmp(a, "--threads") == 0 || strcmp(a, "-t") == 0) {
      if (parse_long(v, 0, 1024, &threads) != 0) {
        fprintf(stderr, "iocpsrv-console: --threads needs a number 0..1024\n");
        return 2;
      }
      i++;
    } else if (strcmp(a, "--proxy-protocol") == 0) {
      proxy_mode = parse_proxy_mode(v);
      if (proxy_mode < 0) {
        fprintf(stderr, "iocpsrv-console: --proxy-protocol needs off, required or optional\n");
        return 2;
      }
      i++;
    } else if (strcmp(a, "--proxy-trusted") == 0) {
      if (v == NULL) {
        fprintf(stderr, "iocpsrv-console: --proxy-trusted needs a list of addresses\n");
        return 2;
      }
      proxy_trusted = v;
      i++;
    } else if (strcmp(a, "--max-per-source") == 0) {
      if (parse_long(v, 0, 16777215, &max_per_source) != 0) {
        fprintf(stderr, "iocpsrv-console: --max-per-source needs a number 0..16777215\n");
        return 2;
      }
      i++;
    } else if (strcmp(a, "--reuseport") == 0) {
      reuseport = 1;
    } else {
      fprintf(stderr, "iocpsrv-console: unknown argument '%s'\n\n", a);
      usage(stderr);
      return 2;
    }
  }

  setvbuf(stdout, NULL, _IOLBF, BUFSIZ); /* each line out at once, even into a pipe */
  g_interactive = STDIN_IS_TTY() ? 1 : 0;
  if (signals_setup() != 0) {
    fprintf(stderr, "iocpsrv-console: cannot set up signal handling\n");
    return 1;
  }

  rc = iocpsrv_create(&g_srv, NULL);
  if (rc < 0) return fail("create", rc);
  if (threads > 0 && (rc = iocpsrv_set_option(g_srv, IOCPSRV_OPT_WORKER_THREADS, threads)) < 0)
    return fail("--threads", rc);
  /* Set only when asked, so the defaults work with a library that predates them. */
  if (proxy_mode != IOCPSRV_PROXY_OFF &&
      (rc = iocpsrv_set_option(g_srv, IOCPSRV_OPT_PROXY_PROTOCOL, proxy_mode)) < 0)
    return fail("--proxy-protocol", rc);
  if (proxy_trusted != NULL &&
      (rc = iocpsrv_set_option_str(g_srv, IOCPSRV_OPT_PROXY_TRUSTED, proxy_trusted)) < 0)
    return fail("--proxy-trusted", rc);
  if (max_per_source > 0 &&
      (rc = iocpsrv_set_option(g_srv, IOCPSRV_OPT_MAX_CONNECTIONS_PER_SOURCE,
                               max_per_source)) < 0)
    return fail("--max-per-source", rc);
  if (reuseport && (rc = iocpsrv_set_option(g_srv, IOCPSRV_OPT_REUSEPORT, 1)) < 0)
    return fail("--reuseport", rc);
  iocpsrv_set_connect_cb(g_srv, on_connect);
  iocpsrv_set_packet_cb(g_srv, on_packet);
  iocpsrv_set_disconnect_cb(g_srv, on_disconnect);
  iocpsrv_set_log_cb(g_srv, on_log);

  rc = iocpsrv_listen(g_srv, host, (int)port);
  if (rc < 0) {
    fail("listen", rc);
    if (reuseport && rc == IOCPSRV_ENOTSUP)
      fprintf(stderr, "iocpsrv-console: --reuseport needs SO_REUSEPORT (Linux); Windows has "
                      "no way to balance one port over several processes\n");
    return 1;
  }
  rc = iocpsrv_port(g_srv);
  if (rc < 0) return fail("port", rc);
  line = (char *)malloc(LINE_MAX_BYTES);
  if (line == NULL) return fail("command buffer", IOCPSRV_ENOMEM);
  if (signals_start() != 0) {
    free(line);
    return fail("signal thread", IOCPSRV_ESYSTEM);
  }
  say(strchr(host, ':') ? "listening on [%s]:%d" : "listening on %s:%d", host, rc);
  if (g_interactive) say("type help for the commands");

  while (!quit) {
    size_t n;
    prompt();
    if (fgets(line, LINE_MAX_BYTES, stdin) == NULL) break; /* end of input: quit */
    prompt_gone();
    n = strlen(line);
    if (n > 0 && line[n - 1] != '\n' && !feof(stdin)) { /* longer than the buffer */
      int ch;
      while ((ch = getchar()) != EOF && ch != '\n') {
      }
      say("error: line longer than %d bytes ignored", LINE_MAX_BYTES - 2);
      continue;
    }
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = '\0';
    quit = run_command(line);
  }
  if (!quit && g_interactive) { /* Ctrl+D (Ctrl+Z on Windows) at the prompt */
    prompt_gone();
    say("%s", "");
  }
  stop_server(quit ? "quit" : "end of input");
  free(line);
  return 0;
}
