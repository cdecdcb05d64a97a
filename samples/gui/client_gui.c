/*
 * iocpsrv-client-gui -- the 2001 article's client window, in plain Win32 C.
 *
 *   iocpsrv-client-gui.exe [--host H] [--port N] [--connect] [--send TEXT]
 *                          [--flood] [--count N] [--message TEXT] [--depth D]
 *                          [--autoclose] [--close-when-exists PATH] [--summary PATH]
 *                          [--window X,Y[,W,H]] [--quiet]
 *
 * Host and port fields with Connect; a message field with Send, and a list of what was
 * sent and what came back (the server frames every packet with a 4-byte little-endian
 * length, as the article's protocol does); and the article's Flood check box: with it
 * ticked, Send becomes Flood and sends Count packets of Message + sequence number
 * ("Test Item 1" ... "Test Item 99999", the defaults) on a connection of its own, with
 * Depth packets in flight, checking every echo's length, bytes and order as
 * iocpsrv-flood does, then half-closing and waiting for the server's close to prove
 * nothing extra came. A progress bar follows it; the elapsed time and the rate show
 * when it is done. Escape cancels a running flood.
 *
 * Threads. The window's thread never blocks on the network. The connection's reader
 * and the flood each run on a thread of their own, with non-blocking sockets and
 * select() every 100 ms so they notice a stop request; they report to the window only
 * with PostMessage (heap-allocated payloads, freed by the window's thread; progress as
 * a number in lParam, at most 20 posts a second). Closing the window stops both and
 * waits for them.
 *
 * Scripts and tests: --connect connects at start, --send TEXT sends TEXT once
 * connected and waits for its echo, --flood runs the flood (after that echo when both
 * are given), --autoclose closes the window when all of that is done (after PATH exists,
 * with --close-when-exists, so a script can take a screenshot first). Report lines go to
 * stdout when there is one and to --summary PATH:
 *   iocpsrv-client-gui: connected 127.0.0.1:5150
 *   iocpsrv-client-gui: echo ok bytes=5
 *   iocpsrv-client-gui: flood ok=1 verified=99999 count=99999 elapsed_s=3.306 ...
 *   iocpsrv-client-gui: summary ok=1 connected=1 line_echoed=1 flood_verified=99999 ...
 * Exit status: 0 when everything asked for on the command line succeeded, 1 if not,
 * 2 for bad usage.
 */
#include "gui_common.h"

#define APP_NAME L"iocpsrv client"
#define REPORT "iocpsrv-client-gui"
#define DEFAULT_MESSAGE "Test Item "
#define DEFAULT_COUNT 99999
#define DEFAULT_DEPTH 8
#define MAX_MESSAGE 4096
#define MAX_DEPTH 1024
#define MAX_PACKET (16u * 1024 * 1024) /* the longest packet the reader accepts */
#define IO_TIMEOUT_MS 10000            /* connect, or no byte while one is due */
#define RECV_LINES_MAX 2000
#define PREVIEW_CHARS 200

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

enum { TIMER_AUTOCLOSE = 1, TIMER_ECHO_WAIT = 2 };

/* Posted by the threads; wParam is the session's or the flood's generation number, so
 * a late message from an earlier one is recognised (and its payload still freed). */
#define WM_CLI_CONNECTED (WM_GUI_FIRST + 0)  /* lParam: char* "host:port" */
#define WM_CLI_FAILED (WM_GUI_FIRST + 1)     /* lParam: char* reason */
#define WM_CLI_PACKET (WM_GUI_FIRST + 2)     /* lParam: packet_t* */
#define WM_CLI_CLOSED (WM_GUI_FIRST + 3)     /* lParam: char* reason */
#define WM_FLOOD_PROGRESS (WM_GUI_FIRST + 4) /* lParam: echoes verified so far */
#define WM_FLOOD_DONE (WM_GUI_FIRST + 5)     /* lParam: flood_result_t* */

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
/* Sockets.                                                                              */

static void put_le32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
  p[2] = (uint8_t)(v >> 16);
  p[3] = (uint8_t)(v >> 24);
}

static uint32_t get_le32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static char *dup_printf(const char *fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  return _strdup(buf);
}

/* Wait until `s` is readable (or writable) for up to ms; 1 ready, 0 not yet, -1 error. */
static int wait_sock(SOCKET s, int write, int ms) {
  fd_set fds, efds;
  struct timeval tv;
  int n;
  FD_ZERO(&fds);
  FD_ZERO(&efds);
  FD_SET(s, &fds);
  FD_SET(s, &efds);
  tv.tv_sec = ms / 1000;
  tv.tv_usec = (ms % 1000) * 1000;
  n = select(0, write ? NULL : &fds, write ? &fds : NULL, &efds, &tv);
  if (n < 0) return -1;
  if (n > 0 && FD_ISSET(s, &efds)) return -1;
  return n > 0;
}

/* Connect without blocking the caller for longer than IO_TIMEOUT_MS, giving up early
 * when *stop is set. Returns a non-blocking socket with TCP_NODELAY, or INVALID_SOCKET
 * with a reason in err. */
static SOCKET connect_to(const char *host, const char *port, volatile LONG *stop, char *err,
                         size_t cap) {
  struct addrinfo hints, *ai = NULL, *a;
  SOCKET s = INVALID_SOCKET;
  int rc;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  rc = getaddrinfo(host, port, &hints, &ai);
  if (rc != 0) {
    snprintf(err, cap, "cannot resolve %s (error %d)", host, rc);
    return INVALID_SOCKET;
  }
  snprintf(err, cap, "no address for %s", host);
  for (a = ai; a != NULL; a = a->ai_next) {
    u_long on = 1;
    int one = 1, waited = 0, r = 0;
    s = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
    if (s == INVALID_SOCKET) {
      snprintf(err, cap, "socket: error %d", WSAGetLastError());
      continue;
    }
    ioctlsocket(s, FIONBIO, &on);
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, (const char *)&one, sizeof one);
    if (connect(s, a->ai_addr, (int)a->ai_addrlen) != 0) {
      int e = WSAGetLastError();
      if (e != WSAEWOULDBLOCK && e != WSAEINPROGRESS) {
        snprintf(err, cap, "connect: error %d", e);
        closesocket(s);
        s = INVALID_SOCKET;
        continue;
      }
      while (!*stop && waited < IO_TIMEOUT_MS && (r = wait_sock(s, 1, 100)) == 0) waited += 100;
      if (r != 1) {
        int soerr = 0, len = sizeof soerr;
        getsockopt(s, SOL_SOCKET, SO_ERROR, (char *)&soerr, &len);
        if (*stop) snprintf(err, cap, "canceled");
        else if (r == 0) snprintf(err, cap, "no answer within %d s", IO_TIMEOUT_MS / 1000);
        else if (soerr == WSAECONNREFUSED) snprintf(err, cap, "connection refused");
        else snprintf(err, cap, "connect: error %d", soerr);
        closesocket(s);
        s = INVALID_SOCKET;
        if (*stop) break;
        continue;
      }
    }
    break;
  }
  freeaddrinfo(ai);
  return s;
}

/* Send all of buf on a non-blocking socket; 0, or -1 with a reason. */
static int send_all(SOCKET s, const uint8_t *buf, size_t len, volatile LONG *stop, char *err,
                    size_t cap) {
  size_t off = 0;
  int waited = 0;
  while (off < len) {
    int n = send(s, (const char *)buf + off, (int)(len - off), 0);
    if (n > 0) {
      off += (size_t)n;
      waited = 0;
      continue;
    }
    if (n < 0 && WSAGetLastError() == WSAEWOULDBLOCK) {
      if (stop != NULL && *stop) {
        snprintf(err, cap, "canceled");
        return -1;
      }
      if (waited >= IO_TIMEOUT_MS) {
        snprintf(err, cap, "the server takes no data (%d s)", IO_TIMEOUT_MS / 1000);
        return -1;
      }
      wait_sock(s, 1, 100);
      waited += 100;
      continue;
    }
    snprintf(err, cap, "send: error %d", WSAGetLastError());
    return -1;
  }
  return 0;
}

/* ------------------------------------------------------------------------------------ */
/* The connection: a reader thread per session.                                          */

typedef struct packet_s {
  size_t len;
  uint8_t data[]; /* up to PREVIEW_CHARS * 4 bytes of it */
} packet_t;

typedef struct session_s {
  HANDLE thread;
  SOCKET sock;            /* set by the thread once connected; read under g_sess_lock */
  volatile LONG stop;
  WPARAM gen;
  char host[256];
  char port[16];
} session_t;

static session_t *g_sess;   /* the window's thread only */
static SRWLOCK g_sess_lock = SRWLOCK_INIT;
static WPARAM g_sess_gen;
static int g_connected;

static DWORD WINAPI session_thread(LPVOID arg) {
  session_t *ss = (session_t *)arg;
  char err[256];
  uint8_t *in = NULL;
  size_t in_len = 0, in_cap = 65536;
  const char *why = "closed by the server";
  SOCKET s = connect_to(ss->host, ss->port, &ss->stop, err, sizeof err);
  if (s == INVALID_SOCKET) {
    char *m = _strdup(err);
    if (!PostMessageW(g_wnd, WM_CLI_FAILED, ss->gen, (LPARAM)m)) free(m);
    return 0;
  }
  AcquireSRWLockExclusive(&g_sess_lock);
  ss->sock = s;
  ReleaseSRWLockExclusive(&g_sess_lock);
  {
    char *m = dup_printf(strchr(ss->host, ':') ? "[%s]:%s" : "%s:%s", ss->host, ss->port);
    if (!PostMessageW(g_wnd, WM_CLI_CONNECTED, ss->gen, (LPARAM)m)) free(m);
  }
  in = (uint8_t *)malloc(in_cap);
  if (in == NULL) why = "out of memory";
  while (in != NULL && !ss->stop) {
    int r = wait_sock(s, 0, 100), n;
    size_t off = 0;
    if (r == 0) continue;
    if (in_len == in_cap) { /* a packet longer than the buffer: grow it */
      uint8_t *bigger = in_cap < MAX_PACKET + 4 ? (uint8_t *)realloc(in, in_cap * 2) : NULL;
      if (bigger == NULL) {
        why = "packet too large";
        break;
      }
      in = bigger;
      in_cap *= 2;
    }
    n = recv(s, (char *)in + in_len, (int)(in_cap - in_len), 0);
    if (n == 0) break;
    if (n < 0) {
      int e = WSAGetLastError();
      if (e == WSAEWOULDBLOCK) continue;
      snprintf(err, sizeof err, "receive: error %d", e);
      why = err;
      break;
    }
    in_len += (size_t)n;
    while (in_len - off >= 4) {
      uint32_t len = get_le32(in + off);
      packet_t *p;
      size_t copy;
      if (len > MAX_PACKET) {
        why = "the server sent a length above 16 MiB";
        goto out;
      }
      if (in_len - off - 4 < len) break;
      copy = len < PREVIEW_CHARS * 4 ? len : PREVIEW_CHARS * 4;
      p = (packet_t *)malloc(sizeof *p + copy + 1);
      if (p != NULL) {
        p->len = len;
        memcpy(p->data, in + off + 4, copy);
        if (!PostMessageW(g_wnd, WM_CLI_PACKET, ss->gen, (LPARAM)p)) free(p);
      }
      off += 4 + (size_t)len;
    }
    if (off > 0) {
      memmove(in, in + off, in_len - off);
      in_len -= off;
    }
  }
out:
  if (ss->stop) why = "disconnected";
  free(in);
  AcquireSRWLockExclusive(&g_sess_lock);
  ss->sock = INVALID_SOCKET;
  ReleaseSRWLockExclusive(&g_sess_lock);
  shutdown(s, SD_SEND);
  closesocket(s);
  {
    char *m = _strdup(why);
    if (!PostMessageW(g_wnd, WM_CLI_CLOSED, ss->gen, (LPARAM)m)) free(m);
  }
  return 0;
}

/* ------------------------------------------------------------------------------------ */
/* The flood: a thread with a connection of its own.                                     */

typedef struct flood_result_s {
  int ok;
  int canceled;
  uint64_t verified;
  uint64_t count;
  double elapsed_s;      /* first send to last verified echo */
  char error[256];
} flood_result_t;

typedef struct flood_s {
  HANDLE thread;
  volatile LONG stop;
  WPARAM gen;
  char host[256];
  char port[16];
  char *message;         /* UTF-8 */
  size_t message_len;
  uint64_t count;
  uint64_t depth;
} flood_t;

static flood_t *g_flood;  /* the window's thread only */
static WPARAM g_flood_gen;

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

static void flood_run(flood_t *fl, flood_result_t *res) {
  char err[256];
  size_t max_packet = 4 + fl->message_len + 20;
  size_t out_cap = (size_t)fl->depth * max_packet, in_cap = 65536 + max_packet, in_len = 0;
  uint8_t *out = (uint8_t *)malloc(out_cap), *in = (uint8_t *)malloc(in_cap);
  uint64_t next_send = 1, next_recv = 1;
  LARGE_INTEGER t0;
  DWORD last_post = 0, last_byte;
  SOCKET s;

  res->count = fl->count;
  if (out == NULL || in == NULL) {
    snprintf(res->error, sizeof res->error, "out of memory");
    goto done;
  }
  s = connect_to(fl->host, fl->port, &fl->stop, err, sizeof err);
  if (s == INVALID_SOCKET) {
    snprintf(res->error, sizeof res->error, "%s", err);
    goto done;
  }
  QueryPerformanceCounter(&t0);
  last_byte = GetTickCount();
  while (next_recv <= fl->count) {
    size_t out_len = 0, off = 0;
    int r, n;
    if (fl->stop) {
      res->canceled = 1;
      snprintf(res->error, sizeof res->error, "canceled");
      goto close;
    }
    /* Fill the window: packets next_send.. while fewer than depth are in flight. */
    while (next_send <= fl->count && next_send - next_recv < fl->depth) {
      size_t len = fl->message_len;
      memcpy(out + out_len + 4, fl->message, fl->message_len);
      len += digits(next_send, (char *)out + out_len + 4 + fl->message_len);
      put_le32(out + out_len, (uint32_t)len);
      out_len += 4 + len;
      next_send++;
    }
    if (out_len > 0 && send_all(s, out, out_len, &fl->stop, err, sizeof err) != 0) {
      snprintf(res->error, sizeof res->error, "%s after %llu echoes", err,
               (unsigned long long)(next_recv - 1));
      res->canceled = fl->stop != 0;
      goto close;
    }
    /* Read what came back and check every echo in order. */
    r = wait_sock(s, 0, 100);
    if (r == 0) {
      if (GetTickCount() - last_byte >= IO_TIMEOUT_MS) {
        snprintf(res->error, sizeof res->error,
                 "no echo for %d s: %llu of %llu sent came back", IO_TIMEOUT_MS / 1000,
                 (unsigned long long)(next_recv - 1), (unsigned long long)(next_send - 1));
        goto close;
      }
      continue;
    }
    n = recv(s, (char *)in + in_len, (int)(in_cap - in_len), 0);
    if (n == 0) {
      snprintf(res->error, sizeof res->error, "the server closed the connection after %llu of "
               "%llu echoes", (unsigned long long)(next_recv - 1), (unsigned long long)(next_send - 1));
      goto close;
    }
    if (n < 0) {
      int e = WSAGetLastError();
      if (e == WSAEWOULDBLOCK) continue;
      snprintf(res->error, sizeof res->error, "receive: error %d after %llu echoes", e,
               (unsigned long long)(next_recv - 1));
      goto close;
    }
    last_byte = GetTickCount();
    in_len += (size_t)n;
    while (in_len - off >= 4) {
      uint32_t len = get_le32(in + off);
      char d[20];
      size_t nd = digits(next_recv, d);
      if (next_recv >= next_send) {
        snprintf(res->error, sizeof res->error, "a packet came that was never sent (%llu sent)",
                 (unsigned long long)(next_send - 1));
        goto close;
      }
      if (len != fl->message_len + nd) {
        snprintf(res->error, sizeof res->error, "echo %llu has length %lu, expected %lu",
                 (unsigned long long)next_recv, (unsigned long)len,
                 (unsigned long)(fl->message_len + nd));
        goto close;
      }
      if (in_len - off - 4 < len) break;
      if (memcmp(in + off + 4, fl->message, fl->message_len) != 0 ||
          memcmp(in + off + 4 + fl->message_len, d, nd) != 0) {
        snprintf(res->error, sizeof res->error, "echo %llu differs from what was sent",
                 (unsigned long long)next_recv);
        goto close;
      }
      next_recv++;
      off += 4 + (size_t)len;
    }
    if (off > 0) {
      memmove(in, in + off, in_len - off);
      in_len -= off;
    }
    res->verified = next_recv - 1;
    if (GetTickCount() - last_post >= 50 || next_recv > fl->count) {
      last_post = GetTickCount();
      PostMessageW(g_wnd, WM_FLOOD_PROGRESS, fl->gen, (LPARAM)res->verified);
    }
  }
  res->elapsed_s = seconds_since(t0);

  /* All echoes are in: half-close and wait for the server's close, which proves it sent
   * nothing beyond the echoes. */
  shutdown(s, SD_SEND);
  for (;;) {
    int r = wait_sock(s, 0, 100), n;
    if (fl->stop) {
      res->ok = 1; /* every echo was verified; only the close check was cut short */
      break;
    }
    if (r == 0) {
      if (GetTickCount() - last_byte >= IO_TIMEOUT_MS) {
        snprintf(res->error, sizeof res->error, "the server did not close the connection "
                 "within %d s of ours", IO_TIMEOUT_MS / 1000);
        break;
      }
      continue;
    }
    n = recv(s, (char *)in, (int)in_cap, 0);
    if (n == 0) {
      res->ok = 1;
      break;
    }
    if (n > 0) {
      snprintf(res->error, sizeof res->error, "%d unexpected bytes after the last echo", n);
      break;
    }
    if (WSAGetLastError() != WSAEWOULDBLOCK) {
      snprintf(res->error, sizeof res->error, "error %d instead of the server's close",
               WSAGetLastError());
      break;
    }
  }
close:
  closesocket(s);
done:
  if (res->elapsed_s == 0 && res->verified > 0) res->elapsed_s = seconds_since(t0);
  free(out);
  free(in);
}

static DWORD WINAPI flood_thread(LPVOID arg) {
  flood_t *fl = (flood_t *)arg;
  flood_result_t *res = (flood_result_t *)calloc(1, sizeof *res);
  if (res == NULL) return 0;
  flood_run(fl, res);
  if (!PostMessageW(g_wnd, WM_FLOOD_DONE, fl->gen, (LPARAM)res)) free(res);
  return 0;
}

/* ------------------------------------------------------------------------------------ */
/* The received list.                                                                    */

static int g_recv_widest;

static void recv_line(const wchar_t *fmt, ...) {
  wchar_t line[PREVIEW_CHARS + 128];
  va_list ap;
  va_start(ap, fmt);
  _vsnwprintf(line, PREVIEW_CHARS + 128, fmt, ap);
  va_end(ap);
  line[PREVIEW_CHARS + 127] = 0;
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

/* ------------------------------------------------------------------------------------ */
/* Buttons.                                                                              */

static int flood_checked(void) { return SendMessageW(g_flood_box, BM_GETCHECK, 0, 0) == BST_CHECKED; }

static void update_controls(void) {
  int flood = flood_checked(), running = g_flood != NULL;
  HWND focus = GetFocus();
  SetWindowTextW(g_connect, g_sess != NULL ? L"&Disconnect" : L"&Connect");
  EnableWindow(g_host, g_sess == NULL && !running);
  EnableWindow(g_port, g_sess == NULL && !running);
  SetWindowTextW(g_send, running ? L"&Cancel" : flood ? L"&Flood" : L"&Send");
  EnableWindow(g_send, running || flood || g_connected);
  EnableWindow(g_msg, !flood);
  EnableWindow(g_flood_box, !running);
  EnableWindow(g_count, flood && !running);
  EnableWindow(g_text, flood && !running);
  EnableWindow(g_depth, flood && !running);
  if (focus != NULL && !IsWindowEnabled(focus)) SetFocus(g_send);
  SendMessageW(g_status, SB_SETTEXTW, 1,
               (LPARAM)(running ? L"Flooding" : g_connected ? L"Connected" : g_sess ? L"Connecting"
                                                                             : L"Not connected"));
}

static int read_endpoint(char *host, size_t host_cap, char *port, size_t port_cap) {
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
  WideCharToMultiByte(CP_UTF8, 0, h, -1, host, (int)host_cap, NULL, NULL);
  snprintf(port, port_cap, "%ld", port_num);
  return 0;
}

static void do_connect(void) {
  session_t *ss;
  if (g_sess != NULL) return;
  ss = (session_t *)calloc(1, sizeof *ss);
  if (ss == NULL) return;
  if (read_endpoint(ss->host, sizeof ss->host, ss->port, sizeof ss->port) != 0) {
    free(ss);
    return;
  }
  ss->sock = INVALID_SOCKET;
  ss->gen = ++g_sess_gen;
  ss->thread = CreateThread(NULL, 0, session_thread, ss, 0, NULL);
  if (ss->thread == NULL) {
    free(ss);
    recv_line(L"Cannot start a thread");
    return;
  }
  g_sess = ss;
  set_status(L"Connecting to %hs:%hs ...", ss->host, ss->port);
  update_controls();
}

/* Stop the reader and wait for it (it notices within 100 ms). */
static void do_disconnect(void) {
  session_t *ss = g_sess;
  if (ss == NULL) return;
  InterlockedExchange(&ss->stop, 1);
  WaitForSingleObject(ss->thread, INFINITE);
  CloseHandle(ss->thread);
  free(ss);
  g_sess = NULL;
  g_connected = 0;
  set_status(L"Not connected");
  update_controls();
}

/* Send `len` bytes as one framed packet on the connection. */
static int send_packet(const char *data, int len) {
  uint8_t *buf;
  char err[128];
  int rc = -1;
  SOCKET s;
  if (g_sess == NULL || !g_connected) {
    recv_line(L"Not connected: press Connect first");
    return -1;
  }
  buf = (uint8_t *)malloc((size_t)len + 4);
  if (buf == NULL) return -1;
  put_le32(buf, (uint32_t)len);
  memcpy(buf + 4, data, (size_t)len);
  AcquireSRWLockShared(&g_sess_lock);
  s = g_sess->sock;
  if (s != INVALID_SOCKET) rc = send_all(s, buf, (size_t)len + 4, NULL, err, sizeof err);
  else snprintf(err, sizeof err, "connection closed");
  ReleaseSRWLockShared(&g_sess_lock);
  if (rc != 0) recv_line(L"Send failed: %hs", err);
  free(buf);
  return rc;
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

static void start_flood(void) {
  flood_t *fl;
  wchar_t t[32], *msg;
  long count, depth;
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
  if (read_endpoint(fl->host, sizeof fl->host, fl->port, sizeof fl->port) != 0) {
    free(fl);
    return;
  }
  msg = gui_get_text(g_text);
  fl->message = msg ? gui_wide_to_utf8(msg, NULL) : NULL;
  free(msg);
  if (fl->message == NULL || strlen(fl->message) > MAX_MESSAGE) {
    recv_line(L"Flood: the message must be at most %d bytes", MAX_MESSAGE);
    free(fl->message);
    free(fl);
    return;
  }
  fl->message_len = strlen(fl->message);
  fl->count = (uint64_t)count;
  fl->depth = (uint64_t)depth;
  fl->gen = ++g_flood_gen;
  SendMessageW(g_progress, PBM_SETRANGE32, 0, (LPARAM)count);
  SendMessageW(g_progress, PBM_SETPOS, 0, 0);
  SetWindowTextW(g_result, L"Flooding...");
  fl->thread = CreateThread(NULL, 0, flood_thread, fl, 0, NULL);
  if (fl->thread == NULL) {
    free(fl->message);
    free(fl);
    recv_line(L"Cannot start a thread");
    return;
  }
  g_flood = fl;
  {
    wchar_t n[32];
    wchar_t *m = gui_utf8_to_wide(fl->message, -1);
    recv_line(L"Flood: %ls packets of \"%ls\" + sequence to %hs:%hs, %ld in flight",
              gui_fmt_u64(n, fl->count), m ? m : L"", fl->host, fl->port, depth);
    free(m);
  }
  gui_report(REPORT ": flood started count=%llu depth=%ld", (unsigned long long)fl->count, depth);
  g_flood_ran = 1;
  update_controls();
}

/* Cancel the flood (if running) and wait for its thread. */
static void stop_flood(int wait) {
  flood_t *fl = g_flood;
  if (fl == NULL) return;
  InterlockedExchange(&fl->stop, 1);
  if (!wait) return;
  WaitForSingleObject(fl->thread, INFINITE);
  CloseHandle(fl->thread);
  free(fl->message);
  free(fl);
  g_flood = NULL;
}

/* ------------------------------------------------------------------------------------ */
/* Script mode.                                                                          */

static void autorun_next(void);

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
/* Messages from the threads.                                                            */

static void on_connected(WPARAM gen, char *where) {
  if (g_sess != NULL && gen == g_sess->gen) {
    g_connected = 1;
    g_connected_once = 1;
    set_status(L"Connected to %hs", where);
    recv_line(L"Connected to %hs", where);
    gui_report(REPORT ": connected %s", where);
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
  free(where);
}

static void on_failed(WPARAM gen, char *why) {
  if (g_sess != NULL && gen == g_sess->gen) {
    recv_line(L"Cannot connect: %hs", why);
    gui_report(REPORT ": connect failed: %s", why);
    do_disconnect();
    set_status(L"Cannot connect: %hs", why);
    if (g_autorun) autorun_finish();
  }
  free(why);
}

static void on_packet(WPARAM gen, packet_t *p) {
  wchar_t shown[PREVIEW_CHARS + 32];
  size_t copied = p->len < PREVIEW_CHARS * 4 ? p->len : PREVIEW_CHARS * 4;
  gui_preview(shown, PREVIEW_CHARS + 32, p->data, copied, PREVIEW_CHARS);
  recv_line(L"\x2190 received %llu bytes: %ls", (unsigned long long)p->len, shown);
  if (g_wait_echo != NULL && p->len == (size_t)g_wait_echo_len &&
      memcmp(p->data, g_wait_echo, copied) == 0) {
    g_line_echoed = 1;
    gui_report(REPORT ": echo ok bytes=%d", g_wait_echo_len);
    free(g_wait_echo);
    g_wait_echo = NULL;
    KillTimer(g_wnd, TIMER_ECHO_WAIT);
    autorun_next();
  }
  free(p);
}

static void on_closed(WPARAM gen, char *why) {
  if (g_sess != NULL && gen == g_sess->gen) {
    recv_line(L"Connection closed: %hs", why);
    do_disconnect();
    set_status(L"Connection closed: %hs", why);
    if (g_wait_echo != NULL && g_autorun) { /* the echo will not come */
      gui_report(REPORT ": echo failed: %s", why);
      free(g_wait_echo);
      g_wait_echo = NULL;
      autorun_next();
    }
  }
  free(why);
}

static void on_flood_done(WPARAM gen, flood_result_t *r) {
  wchar_t a[32], b[32], c[32], t[512];
  if (g_flood == NULL || gen != g_flood->gen) {
    free(r);
    return;
  }
  stop_flood(1); /* joins the thread, which has finished */
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
                    "error=\"%s\"",
             r->ok, (unsigned long long)r->verified, (unsigned long long)r->count, r->elapsed_s,
             r->elapsed_s > 0 ? (double)r->verified / r->elapsed_s : 0.0, r->ok ? "" : r->error);
  free(r);
  update_controls();
  SetFocus(g_send);
  autorun_next();
}

/* ------------------------------------------------------------------------------------ */
/* Layout.                                                                               */

static void layout(int w, int h) {
  const gui_metrics_t *m = &g_m;
  RECT sr;
  int x, y, sh, bw, lw, right, parts[2];
  int label_h = m->line + gui_scale(m, 2);
  SendMessageW(g_status, WM_SIZE, 0, 0);
  GetWindowRect(g_status, &sr);
  sh = sr.bottom - sr.top;
  parts[0] = MulDiv(w, 70, 100);
  parts[1] = -1;
  SendMessageW(g_status, SB_SETPARTS, 2, (LPARAM)parts);
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
    if (g_sess == NULL) do_connect();
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
  case WM_CREATE:
    g_wnd = wnd;
    create_controls(wnd);
    set_status(L"Not connected");
    update_controls();
    return 0;
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
  case WM_CLI_CONNECTED:
    on_connected(wp, (char *)lp);
    return 0;
  case WM_CLI_FAILED:
    on_failed(wp, (char *)lp);
    return 0;
  case WM_CLI_PACKET:
    on_packet(wp, (packet_t *)lp);
    return 0;
  case WM_CLI_CLOSED:
    on_closed(wp, (char *)lp);
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
  case WM_FLOOD_DONE:
    on_flood_done(wp, (flood_result_t *)lp);
    return 0;
  case WM_TIMER:
    if (wp == TIMER_AUTOCLOSE) {
      if (gui_file_exists(g_opt.close_file)) {
        KillTimer(wnd, TIMER_AUTOCLOSE);
        PostMessageW(wnd, WM_CLOSE, 0, 0);
      }
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
      if (g_sess != NULL) {
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
  case WM_DESTROY: {
    MSG m;
    /* Clean shutdown: stop the flood and the reader and wait for both, then free what
     * they posted that was never handled. */
    KillTimer(wnd, TIMER_AUTOCLOSE);
    KillTimer(wnd, TIMER_ECHO_WAIT);
    stop_flood(1);
    do_disconnect();
    while (PeekMessageW(&m, wnd, WM_CLI_CONNECTED, WM_FLOOD_DONE, PM_REMOVE)) {
      if (m.message != WM_FLOOD_PROGRESS) free((void *)m.lParam);
    }
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
  }
  return DefWindowProcW(wnd, msg, wp, lp);
}

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
  WSADATA wsa;
  HWND wnd;
  MSG msg;
  int rc;

  gui_dpi_aware();
  rc = parse_args();
  if (rc == 1) return 0;
  if (rc != 0) return rc;
  if (WSAStartup(MAKEWORD(2, 2), &wsa) != 0) {
    gui_error_box(NULL, APP_NAME, L"WSAStartup failed", g_opt.quiet);
    return 1;
  }
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
  WSACleanup();
  return g_exit_code;
}
