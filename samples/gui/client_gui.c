/*
 * iocpsrv-client-gui -- the 2001 article's client window, in plain Win32 C, on iocpsrv's
 * client role.
 *
 *   iocpsrv-client-gui.exe [--host H] [--port N] [--connect] [--send TEXT]
 *                          [--flood] [--count N] [--message TEXT] [--depth D]
 *                          [--autoclose] [--close-when-exists PATH] [--summary PATH]
 *                          [--window X,Y[,W,H]] [--quiet]
 *
 * Host and port fields with Connect; a message field with Send, and a list of what was
 * sent and what came back; and the article's Flood check box: with it ticked, Send
 * becomes Flood and sends Count packets of Message + sequence number ("Test Item 1" ...
 * "Test Item 99999", the defaults) on a connection of its own, with Depth packets in
 * flight, checking every echo's length, bytes and order as iocpsrv-flood does, then
 * half-closing and waiting for the server's close to prove nothing extra came. A
 * progress bar follows it; the elapsed time and the rate show when it is done. Escape
 * cancels a running flood.
 *
 * The network is the library's: this program has no socket code. iocpsrv_start runs an
 * engine without a listener and iocpsrv_connect opens each outbound connection without
 * blocking; the engine resolves, connects, frames every packet (the 4-byte
 * little-endian length of the article's protocol), sends, receives and splits the
 * stream into packets, and ends every attempt with one disconnect callback whose reason
 * (connect-refused, connect-timeout, name-not-resolved, peer-closed, ...) the window
 * shows. Two engines:
 *   - the session engine (started with the window) holds the Connect/Send connection;
 *   - each flood runs on an engine of its own, started for it and stopped when it
 *     ends, so its options fit it (an idle timeout as its "no echo for 10 s" watchdog,
 *     a packet size limit just above the longest echo, a 10 s limit for the server's
 *     close) and its counters (iocpsrv_stats) are its alone: after the stop, the bytes
 *     it received must be exactly the echoes verified, which is how "nothing came after
 *     the last echo" is checked (a graceful close discards what still arrives, but
 *     counts it).
 *
 * Threads. The engines call back on their worker threads; the callbacks never touch a
 * window. As in iocpsrv-server-gui, each builds a heap-allocated event, appends it to a
 * queue under a lock and, when the queue was idle, posts one WM_CLI_EVENTS; the
 * window's thread takes the whole queue, shows it and frees it (a timer drains it too,
 * in case a post failed). An event that must never be lost is allocated before the
 * connection exists: the session's "closed" event is its conn_user, the flood's "done"
 * event is in its state, and its disconnect callback (exactly one per attempt) queues
 * it. The flood is driven from its own callbacks: the connect callback sends the first
 * Depth packets, each verified echo sends the next (iocpsrv_sendv: the text and the
 * number without joining them), so no thread of ours waits; its progress is a number
 * in a posted message, at most 20 a second. The window's thread only calls
 * iocpsrv_connect, iocpsrv_send, iocpsrv_disconnect and, to end a flood or close,
 * iocpsrv_stop, which is safe there because the callbacks only queue and post.
 *
 * Scripts and tests: --connect connects at start, --send TEXT sends TEXT once
 * connected and waits for its echo, --flood runs the flood (after that echo when both
 * are given), --autoclose closes the window when all of that is done (after PATH exists,
 * with --close-when-exists, so a script can take a screenshot first). Report lines go to
 * stdout when there is one and to --summary PATH:
 *   iocpsrv-client-gui: engine 1.1.0 iocp
 *   iocpsrv-client-gui: connected 127.0.0.1:5150
 *   iocpsrv-client-gui: echo ok bytes=5
 *   iocpsrv-client-gui: flood ok=1 verified=99999 count=99999 elapsed_s=3.306 ...
 *   iocpsrv-client-gui: summary ok=1 connected=1 line_echoed=1 flood_verified=99999 ...
 *   iocpsrv-client-gui: connect failed: connection refused (connect-refused)
 * Exit status: 0 when everything asked for on the command line succeeded, 1 if not,
 * 2 for bad usage.
 */
#include "gui_common.h"

#include <iocpsrv.h>

#define APP_NAME L"iocpsrv client"
#define REPORT "iocpsrv-client-gui"
#define DEFAULT_MESSAGE "Test Item "
#define DEFAULT_COUNT 99999
#define DEFAULT_DEPTH 8
#define MAX_MESSAGE 4096
#define MAX_DEPTH 1024
#define MAX_PACKET (16 * 1024 * 1024) /* the longest packet the session accepts */
#define IO_TIMEOUT_MS 10000  /* connect; no echo while one is due; the server's close */
#define STOP_TIMEOUT_MS 2000 /* closing the window: a graceful close for this long */
#define RECV_LINES_MAX 2000
#define PREVIEW_CHARS 200
#define PROGRESS_MS 50       /* the flood's progress: at most 20 posts a second */

enum {
  IDC_HOST_LABEL = 100,
  IDC_HOST,
  IDC_PORT_LABEL,
  IDC_PORT,
  IDC_CONNECT,
  IDC_MSG_LABEL,
  IDC_MSG,
  IDC_SEND,
  IDC_RECV_LABEL,
  IDC_RECV,
  IDC_FLOOD,
  IDC_COUNT_LABEL,
  IDC_COUNT,
  IDC_TEXT_LABEL,
  IDC_TEXT,
  IDC_DEPTH_LABEL,
  IDC_DEPTH,
  IDC_PROGRESS,
  IDC_RESULT,
  IDC_STATUS
};

enum { TIMER_AUTOCLOSE = 1, TIMER_ECHO_WAIT = 2, TIMER_REFRESH = 3 };

/* Posted by the engines' callbacks (worker threads). */
#define WM_CLI_EVENTS (WM_GUI_FIRST + 0)     /* the event queue has events */
#define WM_FLOOD_PROGRESS (WM_GUI_FIRST + 1) /* wParam: the flood's generation; lParam:
                                                echoes verified so far */

/* ------------------------------------------------------------------------------------ */
/* Options and window state.                                                             */

static struct {
  wchar_t host[256];
  long port;
  int connect;
  wchar_t *send;
  int flood;
  long count;
  wchar_t message[MAX_MESSAGE + 1];
  long depth;
  int autoclose;
  wchar_t *close_file;
  int quiet;
  int x, y, w, h;
} g_opt = {L"127.0.0.1", 5150, 0, NULL, 0, DEFAULT_COUNT, L"" DEFAULT_MESSAGE, DEFAULT_DEPTH,
           0, NULL, 0, CW_USEDEFAULT, CW_USEDEFAULT, 0, 0};

static HWND g_wnd, g_host, g_port, g_connect, g_msg, g_send, g_recv, g_flood_box, g_count,
    g_text, g_depth, g_progress, g_result, g_status;
static HWND g_host_label, g_port_label, g_msg_label, g_recv_label, g_count_label, g_text_label,
    g_depth_label;
static HWND g_focus;
static gui_metrics_t g_m;

/* Script mode: what was asked and how it went. */
static int g_autorun;         /* --connect, --send or --flood given */
static int g_auto_done;
static int g_connected_once;
static int g_line_echoed;     /* the --send line came back */
static char *g_wait_echo;     /* --send's bytes while waiting for their echo */
static int g_wait_echo_len;
static int g_flood_ran, g_flood_ok;
static uint64_t g_flood_verified;
static double g_flood_elapsed;
static int g_exit_code;

/* ------------------------------------------------------------------------------------ */
/* Events: worker threads -> the window's thread (gui_common.h's queue).               */

enum { EV_CONNECTED = 1, EV_PACKET, EV_CLOSED, EV_LOG, EV_FLOOD_DONE };

typedef struct ev_s {
  gui_event_t link;      /* first: the queue's */
  int type;
  int reason;            /* EV_CLOSED: an iocpsrv_reason_t; EV_LOG: the level */
  unsigned gen;          /* the session's or the flood's generation */
  iocpsrv_conn_id_t conn;
  uint64_t len;          /* EV_PACKET: the payload's length */
  size_t copied;         /* bytes in data[] */
  char peer[64];         /* EV_CONNECTED: the address reached */
  uint8_t data[];        /* EV_PACKET: the payload's first bytes; EV_LOG: the message */
} ev_t;

static gui_queue_t g_q = GUI_QUEUE_INIT(WM_CLI_EVENTS);

static void ev_push(ev_t *e) { gui_queue_push(&g_q, g_wnd, &e->link); }

/* The next event after e (the link is an ev_t's first member). */
static ev_t *ev_next(ev_t *e) { return (ev_t *)e->link.next; }


static ev_t *ev_new(int type, iocpsrv_conn_id_t conn, const void *data, size_t copy) {
  ev_t *e = (ev_t *)calloc(1, sizeof *e + copy + 1);
  if (e == NULL) return NULL;
  e->type = type;
  e->conn = conn;
  e->copied = copy;
  if (copy) memcpy(e->data, data, copy);
  return e;
}

/* ------------------------------------------------------------------------------------ */
/* Reasons: why a connection ended, or why it never got established, in words; the      */
/* engine's own name (iocpsrv_reason_name) follows in parentheses.                       */

static const char *reason_words(int reason) {
  switch (reason) {
  case IOCPSRV_REASON_PEER_CLOSED: return "closed by the server";
  case IOCPSRV_REASON_PEER_RESET: return "reset by the server or the network";
  case IOCPSRV_REASON_LOCAL_CLOSE: return "closed by this client";
  case IOCPSRV_REASON_LOCAL_ABORT: return "aborted by this client";
  case IOCPSRV_REASON_PROTOCOL_ERROR: return "the server sent a packet longer than allowed";
  case IOCPSRV_REASON_IDLE_TIMEOUT: return "nothing came for too long";
  case IOCPSRV_REASON_SERVER_STOPPED: return "the client's engine stopped";
  case IOCPSRV_REASON_OUT_OF_MEMORY: return "out of memory";
  case IOCPSRV_REASON_CONNECT_REFUSED: return "nothing listens on that port";
  case IOCPSRV_REASON_CONNECT_UNREACHABLE: return "network or host unreachable";
  case IOCPSRV_REASON_CONNECT_TIMEOUT: return "no answer in time";
  case IOCPSRV_REASON_NAME_NOT_RESOLVED: return "the host name has no address";
  case IOCPSRV_REASON_CONNECT_FAILED: return "the connection could not be made";
  default: return "unknown reason";
  }
}

/* "connection refused (nothing listens there) (connect-refused)" */
static void describe_reason(char *out, size_t cap, int reason) {
  snprintf(out, cap, "%s (%s)", reason_words(reason), iocpsrv_reason_name(reason));
}

/* ------------------------------------------------------------------------------------ */
/* The session: the Connect / Send connection, on the session engine.                    */
/*                                                                                       */
/* Its conn_user is its EV_CLOSED event, allocated before iocpsrv_connect: every         */
/* callback reads the generation from it, and the disconnect callback queues it.         */

static iocpsrv_t *g_engine;

static struct {
  int active;             /* connecting or connected: its EV_CLOSED is still to come */
  unsigned gen;
  iocpsrv_conn_id_t id;
  char target[300];       /* "host:port" as typed */
} g_sess;
static unsigned g_sess_gen;
static int g_connected;

static int IOCPSRV_CALL sess_on_connect(iocpsrv_t *srv, iocpsrv_conn_id_t conn, const char *peer,
                                        void **conn_user) {
  const ev_t *closed = (const ev_t *)*conn_user; /* starts as iocpsrv_connect's conn_user */
  ev_t *e = ev_new(EV_CONNECTED, conn, NULL, 0);
  if (e == NULL) {
    /* The window could not hear of it: close it; its disconnect says why. Never
     * refuse here: a refused connection gets no disconnect callback. */
    iocpsrv_disconnect(srv, conn, IOCPSRV_CLOSE_ABORT);
    return 0;
  }
  e->gen = closed->gen;
  snprintf(e->peer, sizeof e->peer, "%s", peer);
  ev_push(e);
  return 0;
}

static int IOCPSRV_CALL sess_on_packet(iocpsrv_t *srv, iocpsrv_conn_id_t conn, void *conn_user,
                                       const uint8_t *data, size_t len) {
  const ev_t *closed = (const ev_t *)conn_user;
  size_t copy = len < PREVIEW_CHARS * 4 ? len : PREVIEW_CHARS * 4;
  ev_t *e = ev_new(EV_PACKET, conn, data, copy); /* copies: data dies with this call */
  if (e != NULL) {
    e->gen = closed->gen;
    e->len = len;
    ev_push(e);
  }
  return 0;
}

static void IOCPSRV_CALL sess_on_disconnect(iocpsrv_t *srv, iocpsrv_conn_id_t conn,
                                            void *conn_user, int reason) {
  ev_t *closed = (ev_t *)conn_user;
  closed->conn = conn;
  closed->reason = reason;
  ev_push(closed); /* the window's thread frees it */
}

/* Both engines: errors and warnings go to the list. */
static void IOCPSRV_CALL on_log(iocpsrv_t *srv, int level, const char *message) {
  ev_t *e;
  if (level > 1) return;
  e = ev_new(EV_LOG, 0, message, strlen(message));
  if (e != NULL) {
    e->reason = level;
    ev_push(e);
  }
}

/* ------------------------------------------------------------------------------------ */
/* The flood: a connection on an engine of its own, driven by its callbacks.             */

typedef struct flood_result_s {
  int ok;
  int canceled;
  uint64_t verified;
  uint64_t count;
  double elapsed_s;      /* first send to last verified echo */
  uint64_t bytes_in;     /* the flood engine's counters, headers included */
  uint64_t bytes_out;
  char error[256];
} flood_result_t;

typedef struct flood_s {
  /* Set by the window's thread before iocpsrv_connect, read-only afterwards. */
  iocpsrv_t *srv;        /* the flood's own engine */
  unsigned gen;
  char host[256];
  int port;
  char *message;         /* UTF-8 */
  size_t message_len;
  uint64_t count;
  uint64_t depth;
  /* The window's thread. */
  iocpsrv_conn_id_t conn;
  volatile LONG cancel;  /* set before iocpsrv_disconnect / iocpsrv_stop */
  /* The connection's callbacks only (the engine serializes them) until the done event;
   * the window's thread reads them once iocpsrv_stop has returned. */
  ev_t *done;            /* EV_FLOOD_DONE, queued by the disconnect callback */
  uint64_t next_send;    /* the next sequence number to send (from 1) */
  uint64_t next_recv;    /* the next echo expected (from 1) */
  uint64_t bytes_verified; /* the echoes verified, with their 4-byte headers */
  int connected;
  int all_echoed;
  LARGE_INTEGER t0;
  DWORD last_post;
  ULONGLONG close_tick;  /* when the last echo came and our close began */
  flood_result_t res;
} flood_t;

static flood_t *g_flood;  /* the window's thread only */
static unsigned g_flood_gen;
static uint64_t g_done_packets_in, g_done_packets_out; /* of floods that ended */

static size_t digits(uint64_t v, char *out) {
  char tmp[20];
  size_t n = 0, i;
  do {
    tmp[n++] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  for (i = 0; i < n; i++) out[i] = tmp[n - 1 - i];
  return n;
}

static double seconds_since(LARGE_INTEGER t0) {
  LARGE_INTEGER f, t;
  QueryPerformanceFrequency(&f);
  QueryPerformanceCounter(&t);
  return (double)(t.QuadPart - t0.QuadPart) / (double)f.QuadPart;
}

/* The first failure is the one reported. */
static void flood_fail(flood_t *fl, const char *fmt, ...) {
  va_list ap;
  if (fl->res.error[0]) return;
  va_start(ap, fmt);
  vsnprintf(fl->res.error, sizeof fl->res.error, fmt, ap);
  va_end(ap);
}

/* Queue packet next_send: the text and the number as one packet, which the engine
 * frames (iocpsrv_sendv gathers the two buffers; it copies them). 0, or -1 with the
 * flood failed (not when a cancel closed the connection first). */
static int flood_send_next(iocpsrv_t *srv, iocpsrv_conn_id_t conn, flood_t *fl) {
  char d[20];
  iocpsrv_buf_t b[2];
  int rc;
  b[0].base = fl->message;
  b[0].len = fl->message_len;
  b[1].base = d;
  b[1].len = digits(fl->next_send, d);
  rc = iocpsrv_sendv(srv, conn, b, 2);
  if (rc < 0) {
    if (!(fl->cancel && (rc == IOCPSRV_ENOTCONN || rc == IOCPSRV_ESTOPPED)))
      flood_fail(fl, "cannot send packet %llu: %s (%s)", (unsigned long long)fl->next_send,
                 iocpsrv_strerror(rc), iocpsrv_err_name(rc));
    return -1;
  }
  fl->next_send++;
  return 0;
}

static int IOCPSRV_CALL flood_on_connect(iocpsrv_t *srv, iocpsrv_conn_id_t conn, const char *peer,
                                         void **conn_user) {
  flood_t *fl = (flood_t *)*conn_user;
  fl->connected = 1;
  QueryPerformanceCounter(&fl->t0);
  fl->last_post = GetTickCount();
  /* The window: Depth packets in flight; each echo verified sends the next. Sends from
   * a connection's own callbacks are written together after them. */
  while (fl->next_send <= fl->count && fl->next_send - fl->next_recv < fl->depth) {
    if (flood_send_next(srv, conn, fl) != 0) {
      iocpsrv_disconnect(srv, conn, IOCPSRV_CLOSE_GRACEFUL);
      break;
    }
  }
  return 0; /* never refuse: a refused connection gets no disconnect, and the flood ends
               with that disconnect */
}

static int IOCPSRV_CALL flood_on_packet(iocpsrv_t *srv, iocpsrv_conn_id_t conn, void *conn_user,
                                        const uint8_t *data, size_t len) {
  flood_t *fl = (flood_t *)conn_user;
  char d[20];
  size_t nd;
  DWORD now;
  if (fl->next_recv >= fl->next_send) {
    flood_fail(fl, "a packet came that was never sent (%llu sent)",
               (unsigned long long)(fl->next_send - 1));
    return 1; /* close */
  }
  nd = digits(fl->next_recv, d);
  if (len != fl->message_len + nd) {
    flood_fail(fl, "echo %llu has length %lu, expected %lu", (unsigned long long)fl->next_recv,
               (unsigned long)len, (unsigned long)(fl->message_len + nd));
    return 1;
  }
  if (memcmp(data, fl->message, fl->message_len) != 0 ||
      memcmp(data + fl->message_len, d, nd) != 0) {
    flood_fail(fl, "echo %llu differs from what was sent", (unsigned long long)fl->next_recv);
    return 1;
  }
  fl->bytes_verified += 4 + (uint64_t)len;
  fl->next_recv++;
  if (fl->next_recv > fl->count) {
    /* All echoes are in. Returning non-zero closes gracefully: our FIN once the queue
     * (empty) is written, then the engine waits for the server's close; the
     * disconnect callback says how that went. */
    fl->res.elapsed_s = seconds_since(fl->t0);
    fl->all_echoed = 1;
    fl->close_tick = GetTickCount64();
    PostMessageW(g_wnd, WM_FLOOD_PROGRESS, fl->gen, (LPARAM)fl->count);
    return 1;
  }
  if (fl->next_send <= fl->count && flood_send_next(srv, conn, fl) != 0) return 1;
  now = GetTickCount();
  if (now - fl->last_post >= PROGRESS_MS) {
    fl->last_post = now;
    PostMessageW(g_wnd, WM_FLOOD_PROGRESS, fl->gen, (LPARAM)(fl->next_recv - 1));
  }
  return 0;
}

/* Exactly one per flood, established or not: the result, then the done event. */
static void IOCPSRV_CALL flood_on_disconnect(iocpsrv_t *srv, iocpsrv_conn_id_t conn,
                                             void *conn_user, int reason) {
  flood_t *fl = (flood_t *)conn_user;
  flood_result_t *r = &fl->res;
  uint64_t verified = fl->next_recv - 1, sent = fl->next_send - 1;
  char why[160];
  ev_t *done = fl->done;
  describe_reason(why, sizeof why, reason);
  r->verified = verified;
  r->count = fl->count;
  if (r->elapsed_s == 0 && verified > 0) r->elapsed_s = seconds_since(fl->t0);
  if (fl->all_echoed && !r->error[0]) {
    if (reason == IOCPSRV_REASON_LOCAL_CLOSE) {
      /* Our close began at the last echo; IOCPSRV_OPT_CLOSE_TIMEOUT_MS turns it into an
       * abort if the server's close has not come by then (the reason stays). */
      if (GetTickCount64() - fl->close_tick >= IO_TIMEOUT_MS)
        flood_fail(fl, "the server did not close the connection within %d s of ours",
                   IO_TIMEOUT_MS / 1000);
      else
        r->ok = 1; /* the bytes received are checked once the engine has stopped */
    } else if (fl->cancel || reason == IOCPSRV_REASON_SERVER_STOPPED) {
      r->ok = 1; /* every echo was verified; only the close check was cut short */
    } else {
      flood_fail(fl, "%s instead of the server's close", why);
    }
  } else if (r->error[0]) {
    /* a verification failure closed it: that is the error */
  } else if (fl->cancel) {
    r->canceled = 1;
    flood_fail(fl, "canceled");
  } else if (!fl->connected) {
    flood_fail(fl, "cannot connect to %s:%d: %s", fl->host, fl->port, why);
  } else if (reason == IOCPSRV_REASON_IDLE_TIMEOUT) {
    flood_fail(fl, "no echo for %d s: %llu of %llu sent came back", IO_TIMEOUT_MS / 1000,
               (unsigned long long)verified, (unsigned long long)sent);
  } else if (reason == IOCPSRV_REASON_PEER_CLOSED) {
    flood_fail(fl, "the server closed the connection after %llu of %llu echoes",
               (unsigned long long)verified, (unsigned long long)sent);
  } else if (reason == IOCPSRV_REASON_PROTOCOL_ERROR) {
    flood_fail(fl, "echo %llu is longer than any packet sent (%s)",
               (unsigned long long)fl->next_recv, iocpsrv_reason_name(reason));
  } else {
    flood_fail(fl, "%s after %llu of %llu echoes", why, (unsigned long long)verified,
               (unsigned long long)sent);
  }
  fl->done = NULL;
  done->gen = fl->gen;
  done->conn = conn;
  done->reason = reason;
  ev_push(done); /* the window's thread stops this engine, then reads fl */
}

/* ------------------------------------------------------------------------------------ */
/* The received list.                                                                    */

static int g_recv_widest;

static void recv_line(const wchar_t *fmt, ...) {
  wchar_t line[PREVIEW_CHARS + 256];
  va_list ap;
  va_start(ap, fmt);
  _vsnwprintf(line, PREVIEW_CHARS + 256, fmt, ap);
  va_end(ap);
  line[PREVIEW_CHARS + 255] = 0;
  gui_log_add(g_recv, line, RECV_LINES_MAX, &g_recv_widest);
}

static void set_status(const wchar_t *fmt, ...) {
  wchar_t t[256];
  va_list ap;
  va_start(ap, fmt);
  _vsnwprintf(t, 256, fmt, ap);
  va_end(ap);
  t[255] = 0;
  SendMessageW(g_status, SB_SETTEXTW, 0, (LPARAM)t);
}

static void add_stats(iocpsrv_t *srv, uint64_t *in, uint64_t *out) {
  iocpsrv_stats_t st;
  memset(&st, 0, sizeof st);
  st.struct_size = (uint32_t)sizeof st;
  if (srv == NULL || iocpsrv_stats(srv, &st) < 0) return;
  *in += st.packets_in;
  *out += st.packets_out;
}

/* The status bar's last part: packets through the engines (iocpsrv_stats). */
static void stats_refresh(void) {
  uint64_t in = g_done_packets_in, out = g_done_packets_out;
  wchar_t a[32], b[32], t[128];
  add_stats(g_engine, &in, &out);
  if (g_flood != NULL) add_stats(g_flood->srv, &in, &out);
  _snwprintf(t, 128, L"Packets in %ls, out %ls", gui_fmt_u64(a, in), gui_fmt_u64(b, out));
  t[127] = 0;
  SendMessageW(g_status, SB_SETTEXTW, 2, (LPARAM)t);
}

/* ------------------------------------------------------------------------------------ */
/* Buttons.                                                                              */

static int flood_checked(void) { return SendMessageW(g_flood_box, BM_GETCHECK, 0, 0) == BST_CHECKED; }

static void update_controls(void) {
  int flood = flood_checked(), running = g_flood != NULL;
  HWND focus = GetFocus();
  SetWindowTextW(g_connect, g_sess.active ? L"&Disconnect" : L"&Connect");
  EnableWindow(g_host, !g_sess.active && !running);
  EnableWindow(g_port, !g_sess.active && !running);
  SetWindowTextW(g_send, running ? L"&Cancel" : flood ? L"&Flood" : L"&Send");
  EnableWindow(g_send, running || flood || g_connected);
  EnableWindow(g_msg, !flood);
  EnableWindow(g_flood_box, !running);
  EnableWindow(g_count, flood && !running);
  EnableWindow(g_text, flood && !running);
  EnableWindow(g_depth, flood && !running);
  if (focus != NULL && !IsWindowEnabled(focus)) SetFocus(g_send);
  SendMessageW(g_status, SB_SETTEXTW, 1,
               (LPARAM)(running        ? L"Flooding"
                        : g_connected  ? L"Connected"
                        : g_sess.active ? L"Connecting"
                                        : L"Not connected"));
}

/* The host (UTF-8) and port fields; "host:port" (IPv6 in brackets) for messages. */
static int read_endpoint(char *host, size_t host_cap, int *port, char *target, size_t target_cap) {
  wchar_t h[256], p[16];
  long port_num;
  GetWindowTextW(g_host, h, 256);
  GetWindowTextW(g_port, p, 16);
  if (h[0] == 0) {
    recv_line(L"Type the server's host name or address");
    SetFocus(g_host);
    return -1;
  }
  if (gui_parse_long(p, 1, 65535, &port_num) != 0) {
    recv_line(L"The port must be a number from 1 to 65535");
    SetFocus(g_port);
    SendMessageW(g_port, EM_SETSEL, 0, -1);
    return -1;
  }
  if (WideCharToMultiByte(CP_UTF8, 0, h, -1, host, (int)host_cap, NULL, NULL) == 0) {
    recv_line(L"The host name is too long");
    SetFocus(g_host);
    return -1;
  }
  *port = (int)port_num;
  snprintf(target, target_cap, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, *port);
  return 0;
}

static void autorun_next(void);
static void autorun_finish(void);

static void do_connect(void) {
  char host[256];
  int port, rc;
  ev_t *closed;
  iocpsrv_conn_id_t id = 0;
  if (g_sess.active) return;
  if (read_endpoint(host, sizeof host, &port, g_sess.target, sizeof g_sess.target) != 0) {
    if (g_autorun) autorun_finish();
    return;
  }
  closed = ev_new(EV_CLOSED, 0, NULL, 0);
  if (closed == NULL) {
    recv_line(L"Cannot connect: out of memory");
    if (g_autorun) autorun_finish();
    return;
  }
  closed->gen = ++g_sess_gen;
  /* Returns at once; the attempt goes on in the engine. Its callbacks may run before
   * this returns: they only queue events, which this thread handles afterwards. */
  rc = iocpsrv_connect(g_engine, host, port, closed, &id);
  if (rc < 0) {
    free(closed); /* no callback comes for a call that failed */
    recv_line(L"Cannot connect to %hs: %hs (%hs)", g_sess.target, iocpsrv_strerror(rc),
              iocpsrv_err_name(rc));
    set_status(L"Cannot connect: %hs", iocpsrv_strerror(rc));
    gui_report(REPORT ": connect failed: %s (%s)", iocpsrv_strerror(rc), iocpsrv_err_name(rc));
    if (g_autorun) autorun_finish();
    return;
  }
  g_sess.active = 1;
  g_sess.gen = closed->gen;
  g_sess.id = id;
  g_connected = 0;
  set_status(L"Connecting to %hs ...", g_sess.target);
  update_controls();
}

/* Close the session gracefully (queued sends are written first). The window forgets
 * it at once; its late events are recognised by their generation and dropped. */
static void do_disconnect(void) {
  if (!g_sess.active) return;
  iocpsrv_disconnect(g_engine, g_sess.id, IOCPSRV_CLOSE_GRACEFUL);
  g_sess.active = 0;
  g_connected = 0;
  set_status(L"Not connected");
  update_controls();
}

/* Send `len` bytes as one packet on the session (the engine frames and copies it). */
static int send_packet(const char *data, int len) {
  int rc;
  if (!g_sess.active || !g_connected) {
    recv_line(L"Not connected: press Connect first");
    return -1;
  }
  rc = iocpsrv_send(g_engine, g_sess.id, data, (size_t)len);
  if (rc < 0) {
    recv_line(L"Send failed: %hs (%hs)", iocpsrv_strerror(rc), iocpsrv_err_name(rc));
    return -1;
  }
  return 0;
}

static void do_send_line(void) {
  wchar_t *w = gui_get_text(g_msg);
  char *s;
  int len = 0;
  if (w == NULL) return;
  s = gui_wide_to_utf8(w, &len);
  if (s != NULL && send_packet(s, len) == 0) {
    wchar_t shown[PREVIEW_CHARS + 32];
    gui_preview(shown, PREVIEW_CHARS + 32, (const uint8_t *)s, (size_t)len, PREVIEW_CHARS);
    recv_line(L"\x2192 sent %d bytes: %ls", len, shown);
  }
  free(s);
  free(w);
}

static void flood_free(flood_t *fl) {
  if (fl == NULL) return;
  if (fl->srv != NULL) iocpsrv_destroy(fl->srv);
  free(fl->done);
  free(fl->message);
  free(fl);
}

/* The flood's engine: options for this one connection. 0, or a negative code. */
static int flood_engine(flood_t *fl) {
  int rc = iocpsrv_create(&fl->srv, fl);
  int64_t longest = (int64_t)fl->message_len + 20; /* text + the longest number */
  if (rc < 0) return rc;
  if ((rc = iocpsrv_set_option(fl->srv, IOCPSRV_OPT_WORKER_THREADS, 1)) < 0 ||
      /* An echo longer than any packet sent closes it at its header (protocol-error). */
      (rc = iocpsrv_set_option(fl->srv, IOCPSRV_OPT_MAX_PACKET_SIZE, longest)) < 0 ||
      /* Depth packets in flight always fit: a send is never refused. */
      (rc = iocpsrv_set_option(fl->srv, IOCPSRV_OPT_SEND_QUEUE_LIMIT,
                               (int64_t)fl->depth * (longest + 4) + 65536)) < 0 ||
      (rc = iocpsrv_set_option(fl->srv, IOCPSRV_OPT_CONNECT_TIMEOUT_MS, IO_TIMEOUT_MS)) < 0 ||
      /* No echo for this long while one is due: the engine aborts (idle-timeout). */
      (rc = iocpsrv_set_option(fl->srv, IOCPSRV_OPT_IDLE_TIMEOUT_MS, IO_TIMEOUT_MS)) < 0 ||
      /* Our close waits this long for the server's. */
      (rc = iocpsrv_set_option(fl->srv, IOCPSRV_OPT_CLOSE_TIMEOUT_MS, IO_TIMEOUT_MS)) < 0 ||
      (rc = iocpsrv_set_connect_cb(fl->srv, flood_on_connect)) < 0 ||
      (rc = iocpsrv_set_packet_cb(fl->srv, flood_on_packet)) < 0 ||
      (rc = iocpsrv_set_disconnect_cb(fl->srv, flood_on_disconnect)) < 0 ||
      (rc = iocpsrv_set_log_cb(fl->srv, on_log)) < 0)
    return rc;
  return iocpsrv_start(fl->srv);
}

static void start_flood(void) {
  flood_t *fl;
  wchar_t t[32], *msg;
  long count, depth;
  int rc;
  if (g_flood != NULL) return;
  GetWindowTextW(g_count, t, 32);
  if (gui_parse_long(t, 1, 100000000, &count) != 0) {
    recv_line(L"Flood: the count must be a number from 1 to 100,000,000");
    SetFocus(g_count);
    return;
  }
  GetWindowTextW(g_depth, t, 32);
  if (gui_parse_long(t, 1, MAX_DEPTH, &depth) != 0) {
    recv_line(L"Flood: the depth (packets in flight) must be from 1 to %d", MAX_DEPTH);
    SetFocus(g_depth);
    return;
  }
  fl = (flood_t *)calloc(1, sizeof *fl);
  if (fl == NULL) return;
  {
    char target[300];
    if (read_endpoint(fl->host, sizeof fl->host, &fl->port, target, sizeof target) != 0) {
      free(fl);
      return;
    }
  }
  msg = gui_get_text(g_text);
  fl->message = msg ? gui_wide_to_utf8(msg, NULL) : NULL;
  free(msg);
  if (fl->message == NULL || strlen(fl->message) > MAX_MESSAGE) {
    recv_line(L"Flood: the message must be at most %d bytes", MAX_MESSAGE);
    flood_free(fl);
    return;
  }
  fl->message_len = strlen(fl->message);
  fl->count = (uint64_t)count;
  fl->depth = (uint64_t)depth;
  fl->next_send = fl->next_recv = 1;
  fl->gen = ++g_flood_gen;
  fl->done = ev_new(EV_FLOOD_DONE, 0, NULL, 0);
  if (fl->done == NULL) {
    recv_line(L"Flood: out of memory");
    flood_free(fl);
    return;
  }
  rc = flood_engine(fl);
  if (rc == 0) rc = iocpsrv_connect(fl->srv, fl->host, fl->port, fl, &fl->conn);
  if (rc < 0) {
    recv_line(L"Flood: cannot start: %hs (%hs)", iocpsrv_strerror(rc), iocpsrv_err_name(rc));
    gui_report(REPORT ": flood failed to start: %s (%s)", iocpsrv_strerror(rc),
               iocpsrv_err_name(rc));
    flood_free(fl); /* iocpsrv_destroy stops the engine first */
    return;
  }
  g_flood = fl;
  SendMessageW(g_progress, PBM_SETRANGE32, 0, (LPARAM)count);
  SendMessageW(g_progress, PBM_SETPOS, 0, 0);
  SetWindowTextW(g_result, L"Flooding...");
  {
    wchar_t n[32];
    wchar_t *m = gui_utf8_to_wide(fl->message, -1);
    recv_line(L"Flood: %ls packets of \"%ls\" + sequence to %hs:%d, %ld in flight",
              gui_fmt_u64(n, fl->count), m ? m : L"", fl->host, fl->port, depth);
    free(m);
  }
  gui_report(REPORT ": flood started count=%llu depth=%ld", (unsigned long long)fl->count, depth);
  g_flood_ran = 1;
  update_controls();
}

/* Stop the flood's engine (joins its worker: no callback runs after this) and take its
 * counters; the flood is then only memory. */
static void flood_end(flood_t *fl) {
  iocpsrv_stats_t st;
  memset(&st, 0, sizeof st);
  st.struct_size = (uint32_t)sizeof st;
  iocpsrv_stop(fl->srv, 0);
  if (iocpsrv_stats(fl->srv, &st) == 0) {
    fl->res.bytes_in = st.bytes_in;
    fl->res.bytes_out = st.bytes_out;
    g_done_packets_in += st.packets_in;
    g_done_packets_out += st.packets_out;
  }
}

/* Cancel the flood: abort its connection, and its done event follows (wait = 0); or,
 * when the window closes, stop its engine at once and free it (wait = 1). */
static void stop_flood(int wait) {
  flood_t *fl = g_flood;
  if (fl == NULL) return;
  InterlockedExchange(&fl->cancel, 1);
  if (!wait) {
    iocpsrv_disconnect(fl->srv, fl->conn, IOCPSRV_CLOSE_ABORT);
    return;
  }
  flood_end(fl); /* its done event stays queued and is freed with the queue */
  g_flood = NULL;
  flood_free(fl);
}

/* ------------------------------------------------------------------------------------ */
/* Script mode.                                                                          */

static void autorun_finish(void) {
  if (g_auto_done) return;
  g_auto_done = 1;
  KillTimer(g_wnd, TIMER_ECHO_WAIT);
  if (g_opt.autoclose) {
    if (g_opt.close_file != NULL) SetTimer(g_wnd, TIMER_AUTOCLOSE, 100, NULL);
    else PostMessageW(g_wnd, WM_CLOSE, 0, 0);
  }
}

/* Called when a step ends: connect, the line's echo, the flood. */
static void autorun_next(void) {
  if (!g_autorun || g_auto_done) return;
  if ((g_opt.connect || g_opt.send) && !g_connected_once) return; /* still connecting */
  if (g_opt.send && !g_line_echoed && g_wait_echo != NULL) return; /* waiting for the echo */
  if (g_opt.flood && !g_flood_ran) {
    SendMessageW(g_flood_box, BM_SETCHECK, BST_CHECKED, 0);
    update_controls();
    start_flood();
    if (g_flood == NULL) autorun_finish(); /* could not start */
    return;
  }
  if (g_flood != NULL) return; /* flooding */
  autorun_finish();
}

static void autorun_start(void) {
  if (!g_autorun) return;
  if (g_opt.connect || g_opt.send) do_connect();
  else autorun_next();
}

static int summary_ok(void) {
  int ok = 1;
  if ((g_opt.connect || g_opt.send) && !g_connected_once) ok = 0;
  if (g_opt.send && !g_line_echoed) ok = 0;
  if (g_opt.flood && !g_flood_ok) ok = 0;
  return ok;
}

/* ------------------------------------------------------------------------------------ */
/* Events from the engines, on the window's thread.                                      */

static void on_connected(const ev_t *e) {
  if (!g_sess.active || e->gen != g_sess.gen) return;
  g_connected = 1;
  g_connected_once = 1;
  set_status(L"Connected to %hs", e->peer);
  recv_line(L"Connected to %hs (connection %llu)", e->peer, (unsigned long long)e->conn);
  gui_report(REPORT ": connected %s", e->peer);
  update_controls();
  SetFocus(g_msg);
  if (g_autorun && g_opt.send && !g_auto_done) {
    int len = 0;
    char *s = gui_wide_to_utf8(g_opt.send, &len);
    if (s != NULL) {
      SetWindowTextW(g_msg, g_opt.send);
      g_wait_echo = s;
      g_wait_echo_len = len;
      if (send_packet(s, len) == 0) {
        wchar_t shown[PREVIEW_CHARS + 32];
        gui_preview(shown, PREVIEW_CHARS + 32, (const uint8_t *)s, (size_t)len, PREVIEW_CHARS);
        recv_line(L"\x2192 sent %d bytes: %ls", len, shown);
        SetTimer(g_wnd, TIMER_ECHO_WAIT, IO_TIMEOUT_MS, NULL);
      } else {
        gui_report(REPORT ": echo failed: cannot send");
        free(g_wait_echo);
        g_wait_echo = NULL;
      }
    }
  }
  autorun_next();
}

static void on_packet(const ev_t *e) {
  wchar_t shown[PREVIEW_CHARS + 32];
  if (!g_sess.active || e->gen != g_sess.gen) return;
  gui_preview(shown, PREVIEW_CHARS + 32, e->data, e->copied, PREVIEW_CHARS);
  recv_line(L"\x2190 received %llu bytes: %ls", (unsigned long long)e->len, shown);
  if (g_wait_echo != NULL && e->len == (uint64_t)g_wait_echo_len &&
      memcmp(e->data, g_wait_echo, e->copied) == 0) {
    g_line_echoed = 1;
    gui_report(REPORT ": echo ok bytes=%d", g_wait_echo_len);
    free(g_wait_echo);
    g_wait_echo = NULL;
    KillTimer(g_wnd, TIMER_ECHO_WAIT);
    autorun_next();
  }
}

/* The session's one disconnect: a failed attempt, or the end of the connection. */
static void on_closed(const ev_t *e) {
  char why[160];
  if (!g_sess.active || e->gen != g_sess.gen) return; /* the user disconnected it */
  describe_reason(why, sizeof why, e->reason);
  g_sess.active = 0;
  if (!g_connected) {
    recv_line(L"Cannot connect to %hs: %hs", g_sess.target, why);
    set_status(L"Cannot connect: %hs", reason_words(e->reason));
    gui_report(REPORT ": connect failed: %s", why);
    update_controls();
    if (g_autorun) autorun_finish();
    return;
  }
  g_connected = 0;
  recv_line(L"Connection closed: %hs", why);
  set_status(L"Connection closed: %hs", reason_words(e->reason));
  update_controls();
  if (g_wait_echo != NULL && g_autorun) { /* the echo will not come */
    gui_report(REPORT ": echo failed: %s", why);
    free(g_wait_echo);
    g_wait_echo = NULL;
    autorun_next();
  }
}

static void on_flood_done(const ev_t *e) {
  wchar_t a[32], b[32], c[32], t[512];
  flood_t *fl = g_flood;
  flood_result_t *r;
  if (fl == NULL || e->gen != fl->gen) return;
  flood_end(fl);
  r = &fl->res;
  /* Everything the engine read from the socket, its FIN wait included, must be the
   * echoes verified: bytes that came after the last echo were discarded by the close,
   * but counted. */
  if (r->ok && r->bytes_in > fl->bytes_verified) {
    r->ok = 0;
    snprintf(r->error, sizeof r->error, "%llu unexpected bytes after the last echo",
             (unsigned long long)(r->bytes_in - fl->bytes_verified));
  }
  g_flood_verified = r->verified;
  g_flood_elapsed = r->elapsed_s;
  g_flood_ok = r->ok;
  SendMessageW(g_progress, PBM_SETPOS, (WPARAM)r->verified, 0);
  if (r->ok) {
    double rate = r->elapsed_s > 0 ? (double)r->verified / r->elapsed_s : 0;
    _snwprintf(t, 512, L"Done: %ls echoes verified in %.3f s (%ls msgs/s)",
               gui_fmt_u64(a, r->verified), r->elapsed_s, gui_fmt_u64(c, (uint64_t)(rate + 0.5)));
  } else {
    _snwprintf(t, 512, L"%ls after %ls of %ls echoes: %hs", r->canceled ? L"Canceled" : L"FAILED",
               gui_fmt_u64(a, r->verified), gui_fmt_u64(b, r->count), r->error);
  }
  t[511] = 0;
  SetWindowTextW(g_result, t);
  recv_line(L"Flood: %ls", t);
  gui_report(REPORT ": flood ok=%d verified=%llu count=%llu elapsed_s=%.3f msgs_per_s=%.0f "
                    "bytes_out=%llu bytes_in=%llu error=\"%s\"",
             r->ok, (unsigned long long)r->verified, (unsigned long long)r->count, r->elapsed_s,
             r->elapsed_s > 0 ? (double)r->verified / r->elapsed_s : 0.0,
             (unsigned long long)r->bytes_out, (unsigned long long)r->bytes_in,
             r->ok ? "" : r->error);
  g_flood = NULL;
  flood_free(fl);
  update_controls();
  stats_refresh();
  SetFocus(g_send);
  autorun_next();
}

/* Show what the callbacks queued, in order, then free it. */
static void drain_events(void) {
  ev_t *e = (ev_t *)gui_queue_take_all(&g_q), *next;
  for (; e != NULL; e = next) {
    next = ev_next(e);
    switch (e->type) {
    case EV_CONNECTED:
      on_connected(e);
      break;
    case EV_PACKET:
      on_packet(e);
      break;
    case EV_CLOSED:
      on_closed(e);
      break;
    case EV_LOG: {
      wchar_t *m = gui_utf8_to_wide((const char *)e->data, (int)e->copied);
      recv_line(L"iocpsrv %ls: %ls", e->reason == 0 ? L"error" : L"warning", m ? m : L"?");
      free(m);
      break;
    }
    case EV_FLOOD_DONE:
      on_flood_done(e);
      break;
    }
    free(e);
  }
}


/* ------------------------------------------------------------------------------------ */
/* Layout.                                                                               */

static void layout(int w, int h) {
  const gui_metrics_t *m = &g_m;
  RECT sr;
  int x, y, sh, bw, lw, right, parts[3];
  int label_h = m->line + gui_scale(m, 2);
  SendMessageW(g_status, WM_SIZE, 0, 0);
  GetWindowRect(g_status, &sr);
  sh = sr.bottom - sr.top;
  parts[0] = MulDiv(w, 52, 100); /* what happened */
  parts[1] = MulDiv(w, 70, 100); /* connected, flooding, ... */
  parts[2] = -1;                 /* the engines' packet counters */
  SendMessageW(g_status, SB_SETPARTS, 3, (LPARAM)parts);
  bw = gui_scale(m, 92);
  lw = gui_text_width(m, g_wnd, L"Message:") + gui_scale(m, 6); /* the widest left label */

  /* Host [.......] Port [....] [Connect] */
  x = m->margin;
  y = m->margin;
  right = w - m->margin;
  gui_move(g_host_label, x, y + (m->ctl - m->line) / 2, lw, m->line);
  gui_move(g_connect, right - bw, y, bw, m->ctl);
  {
    int pw = gui_scale(m, 64), plw = gui_text_width(m, g_wnd, L"Port:") + gui_scale(m, 4);
    int px = right - bw - m->gap - pw;
    gui_move(g_port, px, y, pw, m->ctl);
    gui_move(g_port_label, px - m->gap - plw, y + (m->ctl - m->line) / 2, plw, m->line);
    gui_move(g_host, x + lw, y, px - m->gap - plw - m->gap * 2 - (x + lw), m->ctl);
  }
  y += m->ctl + m->gap;

  /* Message [..................] [Send] */
  gui_move(g_msg_label, x, y + (m->ctl - m->line) / 2, lw, m->line);
  gui_move(g_send, right - bw, y, bw, m->ctl);
  gui_move(g_msg, x + lw, y, right - bw - m->gap - (x + lw), m->ctl);
  y += m->ctl + m->gap;

  /* [x] Flood  Count [....]  Message [.......]  Depth [..] */
  {
    int fw = gui_text_width(m, g_wnd, L"Flood") + gui_scale(m, 28);
    int clw = gui_text_width(m, g_wnd, L"Count:") + gui_scale(m, 4);
    int tlw = gui_text_width(m, g_wnd, L"Text:") + gui_scale(m, 4);
    int dlw = gui_text_width(m, g_wnd, L"Depth:") + gui_scale(m, 4);
    int cw = gui_scale(m, 80), dw = gui_scale(m, 48);
    int yy = y + (m->ctl - m->line) / 2, xx = x + lw;
    gui_move(g_flood_box, x, y, lw + fw > lw ? fw : lw, m->ctl);
    xx = x + (fw > lw ? fw : lw) + m->gap;
    gui_move(g_count_label, xx, yy, clw, m->line);
    xx += clw + m->gap;
    gui_move(g_count, xx, y, cw, m->ctl);
    xx += cw + m->gap * 2;
    gui_move(g_depth, right - dw, y, dw, m->ctl);
    gui_move(g_depth_label, right - dw - m->gap - dlw, yy, dlw, m->line);
    gui_move(g_text_label, xx, yy, tlw, m->line);
    gui_move(g_text, xx + tlw + m->gap, y, right - dw - m->gap - dlw - m->gap * 2 - (xx + tlw + m->gap),
             m->ctl);
  }
  y += m->ctl + m->gap;

  /* Progress bar, result line. */
  gui_move(g_progress, x, y, right - x, gui_scale(m, 18));
  y += gui_scale(m, 18) + m->gap;
  gui_move(g_result, x, y, right - x, label_h);
  y += label_h + m->gap;

  /* What was sent and received: the rest. */
  gui_move(g_recv_label, x, y, right - x, label_h);
  y += label_h;
  gui_move(g_recv, x, y, right - x, h - sh - m->margin - y);
}

/* ------------------------------------------------------------------------------------ */
/* The window.                                                                           */

static void create_controls(HWND wnd) {
  const gui_metrics_t *m = &g_m;
  wchar_t t[32];
  g_host_label = gui_child(wnd, m, 0, L"STATIC", L"&Host:", SS_LEFT, IDC_HOST_LABEL);
  g_host = gui_child(wnd, m, WS_EX_CLIENTEDGE, L"EDIT", g_opt.host, WS_TABSTOP | ES_AUTOHSCROLL,
                     IDC_HOST);
  g_port_label = gui_child(wnd, m, 0, L"STATIC", L"&Port:", SS_LEFT, IDC_PORT_LABEL);
  _snwprintf(t, 32, L"%ld", g_opt.port);
  t[31] = 0;
  g_port = gui_child(wnd, m, WS_EX_CLIENTEDGE, L"EDIT", t, WS_TABSTOP | ES_NUMBER | ES_AUTOHSCROLL,
                     IDC_PORT);
  SendMessageW(g_port, EM_SETLIMITTEXT, 5, 0);
  g_connect = gui_child(wnd, m, 0, L"BUTTON", L"&Connect", WS_TABSTOP | BS_PUSHBUTTON, IDC_CONNECT);
  g_msg_label = gui_child(wnd, m, 0, L"STATIC", L"&Message:", SS_LEFT, IDC_MSG_LABEL);
  g_msg = gui_child(wnd, m, WS_EX_CLIENTEDGE, L"EDIT", L"Hello, server", WS_TABSTOP | ES_AUTOHSCROLL,
                    IDC_MSG);
  g_send = gui_child(wnd, m, 0, L"BUTTON", L"&Send", WS_TABSTOP | BS_DEFPUSHBUTTON, IDC_SEND);
  g_flood_box = gui_child(wnd, m, 0, L"BUTTON", L"&Flood", WS_TABSTOP | BS_AUTOCHECKBOX, IDC_FLOOD);
  g_count_label = gui_child(wnd, m, 0, L"STATIC", L"C&ount:", SS_LEFT, IDC_COUNT_LABEL);
  _snwprintf(t, 32, L"%ld", g_opt.count);
  t[31] = 0;
  g_count = gui_child(wnd, m, WS_EX_CLIENTEDGE, L"EDIT", t, WS_TABSTOP | ES_NUMBER | ES_AUTOHSCROLL,
                      IDC_COUNT);
  g_text_label = gui_child(wnd, m, 0, L"STATIC", L"&Text:", SS_LEFT, IDC_TEXT_LABEL);
  g_text = gui_child(wnd, m, WS_EX_CLIENTEDGE, L"EDIT", g_opt.message, WS_TABSTOP | ES_AUTOHSCROLL,
                     IDC_TEXT);
  g_depth_label = gui_child(wnd, m, 0, L"STATIC", L"D&epth:", SS_LEFT, IDC_DEPTH_LABEL);
  _snwprintf(t, 32, L"%ld", g_opt.depth);
  t[31] = 0;
  g_depth = gui_child(wnd, m, WS_EX_CLIENTEDGE, L"EDIT", t, WS_TABSTOP | ES_NUMBER | ES_AUTOHSCROLL,
                      IDC_DEPTH);
  g_progress = gui_child(wnd, m, 0, PROGRESS_CLASSW, L"", PBS_SMOOTH, IDC_PROGRESS);
  g_result = gui_child(wnd, m, 0, L"STATIC", L"Tick Flood and press Flood to send the packets; "
                                             L"every echo is checked.",
                       SS_LEFT | SS_ENDELLIPSIS, IDC_RESULT);
  g_recv_label = gui_child(wnd, m, 0, L"STATIC", L"&Received (and sent)", SS_LEFT, IDC_RECV_LABEL);
  g_recv = gui_child(wnd, m, WS_EX_CLIENTEDGE, L"LISTBOX", L"",
                     WS_TABSTOP | WS_VSCROLL | WS_HSCROLL | LBS_NOINTEGRALHEIGHT | LBS_NOTIFY,
                     IDC_RECV);
  g_status = CreateWindowExW(0, STATUSCLASSNAMEW, L"", WS_CHILD | WS_VISIBLE | SBARS_SIZEGRIP, 0,
                             0, 0, 0, wnd, (HMENU)(INT_PTR)IDC_STATUS, GetModuleHandleW(NULL), NULL);
  SendMessageW(g_status, WM_SETFONT, (WPARAM)m->font, FALSE);
}

static void on_enter(void) {
  HWND f = GetFocus();
  if (f == g_host || f == g_port) {
    if (!g_sess.active) do_connect();
  } else if (f == g_msg) {
    if (g_connected) do_send_line();
  } else if (f == g_count || f == g_text || f == g_depth) {
    if (g_flood == NULL) start_flood();
  }
}

static void on_escape(void) {
  if (g_flood != NULL) stop_flood(0); /* its done message follows */
  else if (GetFocus() == g_msg) SetWindowTextW(g_msg, L"");
}

static LRESULT CALLBACK wnd_proc(HWND wnd, UINT msg, WPARAM wp, LPARAM lp) {
  switch (msg) {
  case WM_CREATE: {
    int rc;
    g_wnd = wnd;
    create_controls(wnd);
    /* The session engine: no listener, one worker (its callbacks only queue events). */
    rc = iocpsrv_create(&g_engine, NULL);
    if (rc == 0) rc = iocpsrv_set_option(g_engine, IOCPSRV_OPT_WORKER_THREADS, 1);
    if (rc == 0) rc = iocpsrv_set_option(g_engine, IOCPSRV_OPT_MAX_PACKET_SIZE, MAX_PACKET);
    if (rc == 0) rc = iocpsrv_set_option(g_engine, IOCPSRV_OPT_CONNECT_TIMEOUT_MS, IO_TIMEOUT_MS);
    if (rc == 0) rc = iocpsrv_set_connect_cb(g_engine, sess_on_connect);
    if (rc == 0) rc = iocpsrv_set_packet_cb(g_engine, sess_on_packet);
    if (rc == 0) rc = iocpsrv_set_disconnect_cb(g_engine, sess_on_disconnect);
    if (rc == 0) rc = iocpsrv_set_log_cb(g_engine, on_log);
    if (rc == 0) rc = iocpsrv_start(g_engine);
    if (rc < 0) {
      gui_report(REPORT ": engine failed: %s (%s)", iocpsrv_strerror(rc), iocpsrv_err_name(rc));
      if (g_engine != NULL) iocpsrv_destroy(g_engine);
      g_engine = NULL;
      return -1;
    }
    gui_report(REPORT ": engine %s", iocpsrv_version_string());
    {
      wchar_t *v = gui_utf8_to_wide(iocpsrv_version_string(), -1);
      recv_line(L"iocpsrv %ls, client role. Press Connect (or Enter in the host field).",
                v ? v : L"?");
      free(v);
    }
    SetTimer(wnd, TIMER_REFRESH, 250, NULL);
    set_status(L"Not connected");
    update_controls();
    stats_refresh();
    return 0;
  }
  case WM_SIZE:
    layout(LOWORD(lp), HIWORD(lp));
    return 0;
  case WM_GETMINMAXINFO: {
    MINMAXINFO *mm = (MINMAXINFO *)lp;
    mm->ptMinTrackSize.x = gui_scale(&g_m, 520);
    mm->ptMinTrackSize.y = gui_scale(&g_m, 320);
    return 0;
  }
  case WM_ACTIVATE:
    if (LOWORD(wp) == WA_INACTIVE) g_focus = GetFocus();
    else if (g_focus != NULL && IsWindow(g_focus) && IsWindowEnabled(g_focus)) SetFocus(g_focus);
    else SetFocus(g_connected ? g_msg : g_host);
    return 0;
  case WM_CLI_EVENTS:
    drain_events();
    return 0;
  case WM_FLOOD_PROGRESS:
    if (g_flood != NULL && wp == g_flood->gen) {
      wchar_t a[32], b[32], t[128];
      SendMessageW(g_progress, PBM_SETPOS, (WPARAM)lp, 0);
      _snwprintf(t, 128, L"Flooding: %ls of %ls echoes verified", gui_fmt_u64(a, (uint64_t)lp),
                 gui_fmt_u64(b, g_flood->count));
      t[127] = 0;
      SetWindowTextW(g_result, t);
    }
    return 0;
  case WM_TIMER:
    if (wp == TIMER_AUTOCLOSE) {
      if (gui_file_exists(g_opt.close_file)) {
        KillTimer(wnd, TIMER_AUTOCLOSE);
        PostMessageW(wnd, WM_CLOSE, 0, 0);
      }
    } else if (wp == TIMER_REFRESH) {
      drain_events(); /* also catches a post that failed */
      stats_refresh();
    } else if (wp == TIMER_ECHO_WAIT) {
      KillTimer(wnd, TIMER_ECHO_WAIT);
      if (g_wait_echo != NULL) {
        recv_line(L"No echo within %d s", IO_TIMEOUT_MS / 1000);
        gui_report(REPORT ": echo failed: no echo within %d s", IO_TIMEOUT_MS / 1000);
        free(g_wait_echo);
        g_wait_echo = NULL;
        autorun_next();
      }
    }
    return 0;
  case WM_NEXTDLGCTL:
    gui_next_dlg_ctl(wnd, wp, lp);
    return 0;
  case WM_COMMAND:
    switch (LOWORD(wp)) {
    case IDOK:
      on_enter();
      break;
    case IDCANCEL:
      on_escape();
      break;
    case IDC_CONNECT:
      if (g_sess.active) {
        do_disconnect();
        recv_line(L"Disconnected");
        SetFocus(g_host);
      } else {
        do_connect();
      }
      break;
    case IDC_SEND:
      if (g_flood != NULL) stop_flood(0);
      else if (flood_checked()) start_flood();
      else do_send_line();
      break;
    case IDC_FLOOD:
      update_controls();
      break;
    }
    return 0;
  case WM_CLOSE:
    DestroyWindow(wnd);
    return 0;
  case WM_DESTROY:
    /* Clean shutdown: end the flood (its engine stopped and destroyed), then stop the
     * session engine: the session closes gracefully for up to STOP_TIMEOUT_MS and no
     * callback runs after iocpsrv_stop returns; then free what the callbacks queued. */
    KillTimer(wnd, TIMER_AUTOCLOSE);
    KillTimer(wnd, TIMER_ECHO_WAIT);
    KillTimer(wnd, TIMER_REFRESH);
    stop_flood(1);
    if (g_engine != NULL) {
      iocpsrv_stop(g_engine, STOP_TIMEOUT_MS);
      g_sess.active = 0;
      g_connected = 0;
    }
    gui_event_free_all(gui_queue_take_all(&g_q));
    if (g_engine != NULL) iocpsrv_destroy(g_engine);
    g_engine = NULL;
    if (g_autorun) g_exit_code = summary_ok() ? 0 : 1;
    gui_report(REPORT ": summary ok=%d connected=%d line_echoed=%d flood_ok=%d flood_verified=%llu "
                      "flood_count=%ld elapsed_s=%.3f",
               summary_ok(), g_connected_once, g_line_echoed, g_flood_ok,
               (unsigned long long)g_flood_verified, g_opt.count, g_flood_elapsed);
    free(g_wait_echo);
    g_wait_echo = NULL;
    PostQuitMessage(g_exit_code);
    return 0;
  }
  return DefWindowProcW(wnd, msg, wp, lp);
}

/* ------------------------------------------------------------------------------------ */


/* ------------------------------------------------------------------------------------ */

static const wchar_t USAGE[] =
    L"iocpsrv-client-gui [options]\n\n"
    L"  --host H                  server address (default 127.0.0.1)\n"
    L"  --port N                  server port (default 5150)\n"
    L"  --connect                 connect at start\n"
    L"  --send TEXT               connect, send TEXT, wait for its echo\n"
    L"  --flood                   run the flood at start (after --send's echo)\n"
    L"  --count N                 flood packets (default 99999)\n"
    L"  --message TEXT            flood text, + sequence number (default \"Test Item \")\n"
    L"  --depth D                 flood packets in flight (default 8)\n"
    L"  --autoclose               close the window when that is done\n"
    L"  --close-when-exists PATH  ... but only once PATH exists\n"
    L"  --summary PATH            append the report lines to PATH\n"
    L"  --window X,Y[,W,H]        place (and size) the window, in pixels\n"
    L"  --quiet                   no message box for errors (scripts)\n";

static int parse_args(void) {
  int argc = 0, i;
  wchar_t **argv = CommandLineToArgvW(GetCommandLineW(), &argc);
  if (argv == NULL) return 0;
  for (i = 1; i < argc; i++) {
    const wchar_t *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (wcscmp(a, L"--connect") == 0) {
      g_opt.connect = 1;
    } else if (wcscmp(a, L"--flood") == 0) {
      g_opt.flood = 1;
    } else if (wcscmp(a, L"--autoclose") == 0) {
      g_opt.autoclose = 1;
    } else if (wcscmp(a, L"--quiet") == 0) {
      g_opt.quiet = 1;
    } else if (wcscmp(a, L"--help") == 0 || wcscmp(a, L"-h") == 0 || wcscmp(a, L"/?") == 0) {
      MessageBoxW(NULL, USAGE, APP_NAME, MB_OK | MB_ICONINFORMATION);
      LocalFree(argv);
      return 1;
    } else if (v == NULL) {
      goto bad;
    } else if (wcscmp(a, L"--host") == 0) {
      if (wcslen(v) >= 256 || *v == 0) goto bad;
      wcscpy(g_opt.host, v);
      i++;
    } else if (wcscmp(a, L"--port") == 0) {
      if (gui_parse_long(v, 1, 65535, &g_opt.port) != 0) goto bad;
      i++;
    } else if (wcscmp(a, L"--count") == 0) {
      if (gui_parse_long(v, 1, 100000000, &g_opt.count) != 0) goto bad;
      i++;
    } else if (wcscmp(a, L"--depth") == 0) {
      if (gui_parse_long(v, 1, MAX_DEPTH, &g_opt.depth) != 0) goto bad;
      i++;
    } else if (wcscmp(a, L"--message") == 0) {
      if (wcslen(v) > MAX_MESSAGE) goto bad;
      wcscpy(g_opt.message, v);
      i++;
    } else if (wcscmp(a, L"--send") == 0) {
      g_opt.send = _wcsdup(v);
      i++;
    } else if (wcscmp(a, L"--close-when-exists") == 0) {
      g_opt.close_file = _wcsdup(v);
      i++;
    } else if (wcscmp(a, L"--summary") == 0) {
      g_gui_summary_path = _wcsdup(v);
      i++;
    } else if (wcscmp(a, L"--window") == 0) {
      if (gui_parse_window(v, &g_opt.x, &g_opt.y, &g_opt.w, &g_opt.h) != 0) goto bad;
      i++;
    } else {
      goto bad;
    }
    continue;
  bad : {
    wchar_t text[1400];
    _snwprintf(text, 1400, L"bad argument: %ls\n\n%ls", a, USAGE);
    text[1399] = 0;
    gui_error_box(NULL, APP_NAME, text, g_opt.quiet);
    LocalFree(argv);
    return 2;
  }
  }
  LocalFree(argv);
  g_autorun = g_opt.connect || g_opt.send != NULL || g_opt.flood;
  return 0;
}

int WINAPI WinMain(HINSTANCE inst, HINSTANCE prev, LPSTR cmd, int show) {
  WNDCLASSEXW wc;
  INITCOMMONCONTROLSEX icc;
  HWND wnd;
  MSG msg;
  int rc;

  gui_dpi_aware();
  rc = parse_args();
  if (rc == 1) return 0;
  if (rc != 0) return rc;
  icc.dwSize = sizeof icc;
  icc.dwICC = ICC_BAR_CLASSES | ICC_PROGRESS_CLASS | ICC_STANDARD_CLASSES;
  InitCommonControlsEx(&icc);
  gui_metrics_init(&g_m);

  memset(&wc, 0, sizeof wc);
  wc.cbSize = sizeof wc;
  wc.lpfnWndProc = wnd_proc;
  wc.hInstance = inst;
  wc.hIcon = LoadIcon(NULL, IDI_APPLICATION);
  wc.hCursor = LoadCursor(NULL, IDC_ARROW);
  wc.hbrBackground = (HBRUSH)(COLOR_BTNFACE + 1);
  wc.lpszClassName = L"iocpsrv_client_gui";
  RegisterClassExW(&wc);

  wnd = CreateWindowExW(WS_EX_CONTROLPARENT, wc.lpszClassName, APP_NAME, WS_OVERLAPPEDWINDOW,
                        g_opt.x, g_opt.y, g_opt.w > 0 ? g_opt.w : gui_scale(&g_m, 640),
                        g_opt.h > 0 ? g_opt.h : gui_scale(&g_m, 460), NULL, NULL, inst, NULL);
  if (wnd == NULL) {
    gui_report(REPORT ": cannot create the window");
    return 1;
  }
  ShowWindow(wnd, show);
  UpdateWindow(wnd);
  gui_report_window(REPORT, wnd);
  autorun_start();

  while (GetMessageW(&msg, NULL, 0, 0) > 0) {
    if (IsDialogMessageW(wnd, &msg)) continue;
    TranslateMessage(&msg);
    DispatchMessageW(&msg);
  }
  gui_metrics_free(&g_m);
  free(g_gui_summary_path);
  free(g_opt.send);
  free(g_opt.close_file);
  return g_exit_code;
}
