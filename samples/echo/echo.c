/*
 * iocpsrv-echo -- the smallest useful iocpsrv host: every packet goes back to its sender.
 *
 *   iocpsrv-echo --port N [--host H] [--threads N] [--verbose]
 *                [--proxy-protocol off|required|optional] [--proxy-trusted LIST]
 *                [--max-per-source N] [--reuseport] [--batch]
 *
 * It prints "listening on HOST:PORT" once clients can connect (port 0 picks a free port and
 * the real one is printed), serves until SIGINT or SIGTERM (Ctrl+C or Ctrl+Break on
 * Windows), then stops gracefully, prints one "stats:" line and exits 0.
 *
 * Uses the public API only. Points worth copying into a real host:
 *   - the echo is an iocpsrv_send() straight from the packet callback: the engine copies
 *     the bytes, so the packet pointer may die when the callback returns (contract 3);
 *   - back-pressure: a client that pipelines faster than it reads fills its send queue;
 *     instead of dropping, the echo keeps the refused packet, pauses receiving from that
 *     client and finishes the echo from the drain callback, then resumes;
 *   - signals never call the library: POSIX blocks SIGINT/SIGTERM in every thread and
 *     waits for them with sigwait(); Windows' console handler only sets an event;
 *   - behind a load balancer (HAProxy, nginx stream, Envoy) that sends the PROXY
 *     protocol, --proxy-protocol makes the engine read the header, so the connect
 *     callback's peer is the real client; iocpsrv_conn_info's proxy field names the
 *     balancer (see samples/haproxy/). Headers are believed only from the balancers
 *     --proxy-trusted lists (IOCPSRV_OPT_PROXY_TRUSTED; nobody by default).
 *     --max-per-source caps the connections one client address may hold
 *     (IOCPSRV_OPT_MAX_CONNECTIONS_PER_SOURCE). --reuseport lets several processes
 *     share one port on Linux, the kernel spreading new connections over them.
 *   - --batch takes the packets through the packet-batch callback: every packet one
 *     read completed, in one call (iocpsrv_set_packet_batch_cb).
 */
#include <iocpsrv.h>

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef _WIN32
#  define WIN32_LEAN_AND_MEAN
#  include <windows.h>
#else
#  include <pthread.h>
#  include <signal.h>
#endif

#if defined(_MSC_VER)
#  include <intrin.h>
static volatile long g_errors;
#  define COUNT_ERROR() _InterlockedIncrement(&g_errors)
#  define ERRORS() ((unsigned long long)g_errors)
#else
static unsigned long g_errors;
#  define COUNT_ERROR() __atomic_add_fetch(&g_errors, 1, __ATOMIC_RELAXED)
#  define ERRORS() ((unsigned long long)__atomic_load_n(&g_errors, __ATOMIC_RELAXED))
#endif

static int g_verbose;

/* Per-connection state: the echoes the send queue refused, kept in order until the
 * drain callback, each as a 4-byte native length then the payload. */
typedef struct conn_state_s {
  uint8_t *held;
  size_t held_len, held_off; /* bytes kept; the first not yet resent */
  int holding;
} conn_state_t;

static void usage(FILE *out) {
  fprintf(out,
          "usage: iocpsrv-echo --port N [--host H] [--threads N] [--max-connections N]\n"
          "                    [--verbose] [--proxy-protocol off|required|optional]\n"
          "                    [--proxy-trusted LIST] [--max-per-source N] [--reuseport]\n"
          "                    [--batch]\n"
          "\n"
          "Echo every length-prefixed packet (4-byte little-endian length + payload)\n"
          "back to its sender.\n"
          "\n"
          "  --port N      TCP port to listen on; 0 picks a free one (required)\n"
          "  --host H      address to bind (default 127.0.0.1; \"::\" for every interface)\n"
          "  --threads N   worker threads (default 0 = the engine's default, 2 x CPUs)\n"
          "  --max-connections N\n"
          "                clients served at once; more are refused (default: the\n"
          "                engine's, 10000)\n"
          "  --verbose     print a line for every connect and disconnect\n"
          "  --proxy-protocol off|required|optional\n"
          "                expect a PROXY protocol v1/v2 header (HAProxy's send-proxy,\n"
          "                send-proxy-v2) before the first packet: required = on every\n"
          "                connection, optional = when a client starts with one (default off)\n"
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
          "  --batch       take packets through the packet-batch callback: all the\n"
          "                packets one read completed in one call\n"
          "  --help        this text\n"
          "\n"
          "Prints \"listening on HOST:PORT\" when ready. SIGINT or SIGTERM stops the server\n"
          "gracefully and prints one \"stats:\" line.\n");
}

static int parse_int(const char *text, long min, long max, long *out) {
  char *end;
  long v;
  if (text == NULL || *text == '\0') return -1;
  v = strtol(text, &end, 10);
  if (*end != '\0' || v < min || v > max) return -1;
  *out = v;
  return 0;
}

static int IOCPSRV_CALL on_connect(iocpsrv_t *server, iocpsrv_conn_id_t conn,
                                   const char *peer, void **conn_user) {
  conn_state_t *st = (conn_state_t *)calloc(1, sizeof *st);
  if (st == NULL) return 1; /* refuse: no memory for its state */
  *conn_user = st;
  if (g_verbose) {
    /* Behind a balancer with the PROXY protocol, `peer` is the real client and the
     * connection info's proxy field the balancer (info may be read in any callback). */
    iocpsrv_conn_info_t info;
    memset(&info, 0, sizeof info);
    info.struct_size = (uint32_t)sizeof info;
    if (iocpsrv_conn_info(server, conn, &info) == 0 && info.proxy[0] != '\0')
      printf("connect    %llu %s via %s\n", (unsigned long long)conn, peer, info.proxy);
    else
      printf("connect    %llu %s\n", (unsigned long long)conn, peer);
  }
  return 0;
}

/* Keep refused echoes (and the ones after them) until the drain callback. Called on
 * the connection's own callback thread, so pausing here guarantees no packet callback
 * runs before resume. */
static int hold_packets(iocpsrv_t *server, iocpsrv_conn_id_t conn, conn_state_t *st,
                        const iocpsrv_buf_t *packets, int count) {
  size_t need = 0;
  uint8_t *grown;
  int i;
  for (i = 0; i < count; i++) need += 4 + packets[i].len;
  grown = (uint8_t *)realloc(st->held, st->held_len + need);
  if (grown == NULL) return 1; /* cannot keep them: close rather than lose an echo */
  st->held = grown;
  for (i = 0; i < count; i++) {
    uint32_t len = (uint32_t)packets[i].len;
    memcpy(st->held + st->held_len, &len, 4);
    if (len) memcpy(st->held + st->held_len + 4, packets[i].base, len);
    st->held_len += 4 + len;
  }
  st->holding = 1;
  /* An error here means the connection is closing: nothing more arrives for it. */
  (void)iocpsrv_pause_receive(server, conn);
  return 0;
}

/* A send failed for a reason other than a full queue: 1 (close the connection). */
static int send_failed(iocpsrv_conn_id_t conn, int rc) {
  if (rc != IOCPSRV_ENOTCONN && rc != IOCPSRV_ESTOPPED) {
    COUNT_ERROR();
    fprintf(stderr, "iocpsrv-echo: send to %llu: %s\n", (unsigned long long)conn,
            iocpsrv_strerror(rc));
  }
  return 1; /* the echo is lost: close instead of silently skipping a packet */
}

/* packets[0] was refused with `rc`: hold it and the rest if the queue was full. */
static int echo_refused(iocpsrv_t *server, iocpsrv_conn_id_t conn, conn_state_t *st,
                        const iocpsrv_buf_t *packets, int count, int rc) {
  if (rc == IOCPSRV_EQUEUEFULL && st != NULL && !st->holding)
    return hold_packets(server, conn, st, packets, count);
  return send_failed(conn, rc);
}

static int IOCPSRV_CALL on_packet(iocpsrv_t *server, iocpsrv_conn_id_t conn,
                                  void *conn_user, const uint8_t *data, size_t len) {
  iocpsrv_buf_t packet;
  int rc = iocpsrv_send(server, conn, data, len);
  if (rc == 0) return 0;
  packet.base = data;
  packet.len = len;
  return echo_refused(server, conn, (conn_state_t *)conn_user, &packet, 1, rc);
}

/* --batch: every packet one read completed, in one call; what the queue refuses is
 * held, in order, with the rest. */
static int IOCPSRV_CALL on_packet_batch(iocpsrv_t *server, iocpsrv_conn_id_t conn,
                                        void *conn_user, const iocpsrv_buf_t *packets,
                                        int count) {
  int i, rc;
  for (i = 0; i < count; i++) {
    rc = iocpsrv_send(server, conn, packets[i].base, packets[i].len);
    if (rc != 0)
      return echo_refused(server, conn, (conn_state_t *)conn_user, packets + i, count - i, rc);
  }
  return 0;
}

static void IOCPSRV_CALL on_drain(iocpsrv_t *server, iocpsrv_conn_id_t conn,
                                  void *conn_user) {
  conn_state_t *st = (conn_state_t *)conn_user;
  int rc = 0;
  if (st == NULL || !st->holding) return;
  while (st->held_off < st->held_len) {
    uint32_t len;
    memcpy(&len, st->held + st->held_off, 4);
    rc = iocpsrv_send(server, conn, st->held + st->held_off + 4, len);
    if (rc == IOCPSRV_EQUEUEFULL) return; /* another drain follows this refusal */
    if (rc != 0) break;
    st->held_off += 4 + len;
  }
  free(st->held);
  st->held = NULL;
  st->held_len = st->held_off = 0;
  st->holding = 0;
  if (rc == 0) {
    iocpsrv_resume_receive(server, conn);
  } else {
    send_failed(conn, rc);
    iocpsrv_disconnect(server, conn, IOCPSRV_CLOSE_GRACEFUL);
  }
}

static void IOCPSRV_CALL on_disconnect(iocpsrv_t *server, iocpsrv_conn_id_t conn,
                                       void *conn_user, int reason) {
  conn_state_t *st = (conn_state_t *)conn_user;
  if (g_verbose)
    printf("disconnect %llu %s\n", (unsigned long long)conn, iocpsrv_reason_name(reason));
  if (st != NULL) {
    free(st->held);
    free(st);
  }
}

static void IOCPSRV_CALL on_log(iocpsrv_t *server, int level, const char *message) {
  if (level <= 1 || g_verbose) fprintf(stderr, "iocpsrv: %s\n", message);
}

/* ---- Waiting for Ctrl+C / SIGTERM without calling the library from a handler ---- */
#ifdef _WIN32
static HANDLE g_stop_event;

static BOOL WINAPI console_handler(DWORD type) {
  switch (type) {
  case CTRL_C_EVENT:
  case CTRL_BREAK_EVENT:
  case CTRL_CLOSE_EVENT:
  case CTRL_SHUTDOWN_EVENT:
    SetEvent(g_stop_event);
    return TRUE;
  default:
    return FALSE;
  }
}

static int signals_block(void) {
  g_stop_event = CreateEventW(NULL, TRUE, FALSE, NULL);
  if (g_stop_event == NULL) return -1;
  return SetConsoleCtrlHandler(console_handler, TRUE) ? 0 : -1;
}

static const char *signals_wait(void) {
  WaitForSingleObject(g_stop_event, INFINITE);
  return "console control event";
}
#else
static sigset_t g_stop_signals;

/* Block before the engine starts its workers: they inherit the mask, so the signals
 * stay pending until sigwait() takes them on the main thread. A shell without job
 * control starts background programs with SIGINT ignored, and an ignored signal is
 * discarded instead of pending: restore the default action (harmless while blocked) so
 * SIGINT stops the server however it was started. */
static int signals_block(void) {
  signal(SIGINT, SIG_DFL);
  signal(SIGTERM, SIG_DFL);
  sigemptyset(&g_stop_signals);
  sigaddset(&g_stop_signals, SIGINT);
  sigaddset(&g_stop_signals, SIGTERM);
  return pthread_sigmask(SIG_BLOCK, &g_stop_signals, NULL) == 0 ? 0 : -1;
}

static const char *signals_wait(void) {
  int sig = 0;
  while (sigwait(&g_stop_signals, &sig) != 0) {
  }
  return sig == SIGINT ? "SIGINT" : "SIGTERM";
}
#endif

static int fail(const char *what, int rc) {
  fprintf(stderr, "iocpsrv-echo: %s: %s (%s)\n", what, iocpsrv_strerror(rc),
          iocpsrv_err_name(rc));
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
  long port = -1, threads = 0, max_conns = 0;
  int proxy_mode = IOCPSRV_PROXY_OFF, reuseport = 0, batch = 0;
  const char *proxy_trusted = NULL;
  long max_per_source = 0;
  iocpsrv_t *server = NULL;
  iocpsrv_stats_t st;
  const char *why;
  int i, rc;

  for (i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      usage(stdout);
      return 0;
    } else if (strcmp(a, "--verbose") == 0 || strcmp(a, "-v") == 0) {
      g_verbose = 1;
    } else if (strcmp(a, "--port") == 0 || strcmp(a, "-p") == 0) {
      if (parse_int(v, 0, 65535, &port) != 0) {
        fprintf(stderr, "iocpsrv-echo: --port needs a number 0..65535\n");
        return 2;
      }
      i++;
    } else if (strcmp(a, "--host") == 0) {
      if (v == NULL) {
        fprintf(stderr, "iocpsrv-echo: --host needs an address\n");
        return 2;
      }
      host = v;
      i++;
    } else if (strcmp(a, "--threads") == 0 || strcmp(a, "-t") == 0) {
      if (parse_int(v, 0, 1024, &threads) != 0) {
        fprintf(stderr, "iocpsrv-echo: --threads needs a number 0..1024\n");
        return 2;
      }
      i++;
    } else if (strcmp(a, "--max-connections") == 0) {
      if (parse_int(v, 1, 16777215, &max_conns) != 0) {
        fprintf(stderr, "iocpsrv-echo: --max-connections needs a number 1..16777215\n");
        return 2;
      }
      i++;
    } else if (strcmp(a, "--proxy-protocol") == 0) {
      proxy_mode = parse_proxy_mode(v);
      if (proxy_mode < 0) {
        fprintf(stderr, "iocpsrv-echo: --proxy-protocol needs off, required or optional\n");
        return 2;
      }
      i++;
    } else if (strcmp(a, "--proxy-trusted") == 0) {
      if (v == NULL) {
        fprintf(stderr, "iocpsrv-echo: --proxy-trusted needs a list of addresses\n");
        return 2;
      }
      proxy_trusted = v;
      i++;
    } else if (strcmp(a, "--max-per-source") == 0) {
      if (parse_int(v, 0, 16777215, &max_per_source) != 0) {
        fprintf(stderr, "iocpsrv-echo: --max-per-source needs a number 0..16777215\n");
        return 2;
      }
      i++;
    } else if (strcmp(a, "--reuseport") == 0) {
      reuseport = 1;
    } else if (strcmp(a, "--batch") == 0) {
      batch = 1;
    } else {
      fprintf(stderr, "iocpsrv-echo: unknown argument '%s'\n\n", a);
      usage(stderr);
      return 2;
    }
  }
  if (port < 0) {
    fprintf(stderr, "iocpsrv-echo: --port is required (0 picks a free port)\n\n");
    usage(stderr);
    return 2;
  }

  setvbuf(stdout, NULL, _IOLBF, BUFSIZ); /* each line out at once, even into a pipe */
  if (signals_block() != 0) {
    fprintf(stderr, "iocpsrv-echo: cannot set up signal handling\n");
    return 1;
  }

  rc = iocpsrv_create(&server, NULL);
  if (rc < 0) return fail("create", rc);
  if (threads > 0 && (rc = iocpsrv_set_option(server, IOCPSRV_OPT_WORKER_THREADS, threads)) < 0) {
    iocpsrv_destroy(server);
    return fail("--threads", rc);
  }
  if (max_conns > 0 &&
      (rc = iocpsrv_set_option(server, IOCPSRV_OPT_MAX_CONNECTIONS, max_conns)) < 0) {
    iocpsrv_destroy(server);
    return fail("--max-connections", rc);
  }
  /* Set only when asked, so the defaults work with a library that predates them. */
  if (proxy_mode != IOCPSRV_PROXY_OFF &&
      (rc = iocpsrv_set_option(server, IOCPSRV_OPT_PROXY_PROTOCOL, proxy_mode)) < 0) {
    iocpsrv_destroy(server);
    return fail("--proxy-protocol", rc);
  }
  if (proxy_trusted != NULL &&
      (rc = iocpsrv_set_option_str(server, IOCPSRV_OPT_PROXY_TRUSTED, proxy_trusted)) < 0) {
    iocpsrv_destroy(server);
    return fail("--proxy-trusted", rc);
  }
  if (max_per_source > 0 &&
      (rc = iocpsrv_set_option(server, IOCPSRV_OPT_MAX_CONNECTIONS_PER_SOURCE,
                               max_per_source)) < 0) {
    iocpsrv_destroy(server);
    return fail("--max-per-source", rc);
  }
  if (reuseport && (rc = iocpsrv_set_option(server, IOCPSRV_OPT_REUSEPORT, 1)) < 0) {
    iocpsrv_destroy(server);
    return fail("--reuseport", rc);
  }
  iocpsrv_set_connect_cb(server, on_connect);
  iocpsrv_set_packet_cb(server, on_packet);
  if (batch) iocpsrv_set_packet_batch_cb(server, on_packet_batch);
  iocpsrv_set_drain_cb(server, on_drain);
  iocpsrv_set_disconnect_cb(server, on_disconnect);
  iocpsrv_set_log_cb(server, on_log);

  rc = iocpsrv_listen(server, host, (int)port);
  if (rc < 0) {
    iocpsrv_destroy(server);
    fail("listen", rc);
    if (reuseport && rc == IOCPSRV_ENOTSUP)
      fprintf(stderr, "iocpsrv-echo: --reuseport needs SO_REUSEPORT (Linux); Windows has "
                      "no way to balance one port over several processes\n");
    return 1;
  }
  rc = iocpsrv_port(server);
  if (rc < 0) {
    iocpsrv_destroy(server);
    return fail("port", rc);
  }
  printf(strchr(host, ':') ? "listening on [%s]:%d\n" : "listening on %s:%d\n", host, rc);
  fflush(stdout);

  why = signals_wait();
  fprintf(stderr, "iocpsrv-echo: %s, stopping\n", why);

  rc = iocpsrv_stop(server, 5000);
  if (rc < 0 && rc != IOCPSRV_ESTOPPED) fail("stop", rc);

  memset(&st, 0, sizeof st);
  st.struct_size = (uint32_t)sizeof st;
  rc = iocpsrv_stats(server, &st);
  if (rc < 0) {
    iocpsrv_destroy(server);
    return fail("stats", rc);
  }
  printf("stats: connections %llu, packets in %llu, packets out %llu, bytes in %llu, "
         "bytes out %llu, errors %llu\n",
         (unsigned long long)st.connections_total, (unsigned long long)st.packets_in,
         (unsigned long long)st.packets_out, (unsigned long long)st.bytes_in,
         (unsigned long long)st.bytes_out,
         (unsigned long long)(st.accept_errors + st.protocol_errors + ERRORS()));
  fflush(stdout);

  rc = iocpsrv_destroy(server);
  if (rc < 0) return fail("destroy", rc);
  return 0;
}
