/*
 * iocpsrv-server-gui -- the 2001 article's server window, in plain Win32 C.
 *
 *   iocpsrv-server-gui.exe [--port N] [--host H] [--threads N] [--no-echo] [--autostart]
 *                          [--exit-after-clients N] [--exit-when-idle-ms MS]
 *                          [--summary PATH] [--quiet]
 *
 * A port field with Start and Stop; a list of the connected clients (id, address, time
 * connected, packets and bytes in and out), refreshed four times a second from
 * iocpsrv_connections() and iocpsrv_conn_info(); a log of connects, disconnects and
 * incoming packets; a text box with "Send to selected", "Broadcast" and "Kick"; an
 * "Echo" check box (on by default) that sends every packet back, so iocpsrv-flood and
 * iocpsrv-client-gui can flood it; a status bar with iocpsrv_stats().
 *
 * Threads. The engine calls on_connect/on_packet/on_disconnect on its worker threads.
 * They never touch a window: each builds a heap-allocated event, appends it to a queue
 * under a lock and, if the queue was idle, posts one WM_SRV_EVENTS to the window. The
 * window's thread takes the whole queue, shows the events and frees them. Packets are
 * shown at most PACKET_LINES_PER_TICK per 100 ms (the rest are counted: "... 1,234
 * more packets"), so a flood of 100,000 packets a second cannot bury the UI. The echo
 * itself happens on the worker (iocpsrv_send copies the bytes) and is never throttled.
 * Everything the buttons do (send, broadcast, disconnect, stop) is a thread-safe call
 * from the window's thread (threading contract line 5); stop waits for the callbacks to
 * finish, which only ever post, so it cannot deadlock with the window.
 *
 * Scripts and tests: --autostart listens at once; --exit-after-clients N closes the
 * window once N clients have come and all of them have gone; --exit-when-idle-ms MS
 * closes it when clients have come and none has been connected for MS ms. Report lines
 * (stdout when there is one, and appended to --summary PATH):
 *   iocpsrv-server-gui: listening 127.0.0.1:5150
 *   iocpsrv-server-gui: summary ok=1 port=5150 clients=2 packets_in=100000 ...
 * The exit status is 0 when the server ran and had no error (1 if it could not listen,
 * 2 for bad usage).
 */
#include "gui_common.h"

#include <iocpsrv.h>

#define APP_NAME L"iocpsrv server"
#define REPORT "iocpsrv-server-gui"
#define DEFAULT_PORT 5150
#define STOP_TIMEOUT_MS 2000
#define LOG_MAX_LINES 2000
#define PACKET_PREVIEW 96        /* payload bytes copied for the log line */
#define PACKET_LINES_PER_TICK 20 /* packet lines shown per 100 ms */

enum {
  IDC_PORT_LABEL = 100,
  IDC_PORT,
  IDC_START,
  IDC_STOP,
  IDC_ECHO,
  IDC_CLIENTS_LABEL,
  IDC_LIST,
  IDC_LOG_LABEL,
  IDC_LOG,
  IDC_MSG_LABEL,
  IDC_MSG,
  IDC_SEND,
  IDC_BROADCAST,
  IDC_KICK,
  IDC_STATUS
};

enum { TIMER_REFRESH = 1, TIMER_TICK = 2 };
#define WM_SRV_EVENTS (WM_GUI_FIRST + 0)

/* ------------------------------------------------------------------------------------ */
/* Options and state (the window's thread unless marked otherwise).                      */

static struct {
  char host[256];
  long port;
  long threads;
  int echo;
  int autostart;
  long exit_after_clients;
  long exit_when_idle_ms;
  int quiet;
  int x, y, w, h; /* --window; x = CW_USEDEFAULT: the system places it */
} g_opt = {"127.0.0.1", DEFAULT_PORT, 0, 1, 0, 0, 0, 0, CW_USEDEFAULT, CW_USEDEFAULT, 0, 0};

static HWND g_wnd;
static HWND g_port, g_start, g_stop, g_echo_box, g_list, g_log, g_msg, g_send, g_bcast, g_kick,
    g_status, g_port_label, g_clients_label, g_log_label, g_msg_label;
static HWND g_focus; /* restored when the window is activated again */
static gui_metrics_t g_m;
static iocpsrv_t *g_srv;
static int g_listening;
static int g_port_bound;
static uint64_t g_disconnects;    /* disconnect events seen */
static DWORD g_idle_since;        /* tick when the last client left (0: not idle) */
static int g_exiting;             /* the window is closing by itself (script mode) */
static int g_exit_code = 0;
static int g_had_error;           /* listen failed, or an engine error was logged */

/* Shared with the workers. */
static volatile LONG g_echo_on = 1;
static volatile LONG g_packet_budget = PACKET_LINES_PER_TICK;
static volatile LONG64 g_not_shown;
static volatile LONG64 g_echo_errors;

/* ------------------------------------------------------------------------------------ */
/* Events: worker threads -> window thread.                                              */

enum { EV_CONNECT = 1, EV_PACKET, EV_DISCONNECT, EV_LOG };

typedef struct ev_s {
  gui_event_t link;      /* first: the queue's */
  int type;
  int reason;
  iocpsrv_conn_id_t conn;
  uint64_t packets_in;   /* EV_DISCONNECT: the client's packets */
  uint64_t len;          /* EV_PACKET: payload length; EV_LOG: message length */
  int64_t hidden_before; /* packets not shown between the previous event and this one */
  size_t copied;         /* bytes in data[] */
  char peer[64];
  uint8_t data[];        /* packet preview or log message */
} ev_t;

static gui_queue_t g_q = GUI_QUEUE_INIT(WM_SRV_EVENTS);

static void ev_push(ev_t *e) {
  e->hidden_before = InterlockedExchange64(&g_not_shown, 0);
  gui_queue_push(&g_q, g_wnd, &e->link);
}

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
/* Engine callbacks (worker threads): no window calls here, only ev_push.                */

typedef struct client_s {
  char peer[64];
  uint64_t packets_in; /* touched by this connection's callbacks only (serialized) */
} client_t;

static int IOCPSRV_CALL on_connect(iocpsrv_t *srv, iocpsrv_conn_id_t conn, const char *peer,
                                   void **conn_user) {
  client_t *c = (client_t *)calloc(1, sizeof *c);
  ev_t *e = ev_new(EV_CONNECT, conn, NULL, 0);
  if (c == NULL || e == NULL) {
    free(c);
    free(e);
    return 1; /* refuse: out of memory */
  }
  snprintf(c->peer, sizeof c->peer, "%s", peer);
  snprintf(e->peer, sizeof e->peer, "%s", peer);
  *conn_user = c;
  ev_push(e);
  return 0;
}

static int IOCPSRV_CALL on_packet(iocpsrv_t *srv, iocpsrv_conn_id_t conn, void *conn_user,
                                  const uint8_t *data, size_t len) {
  client_t *c = (client_t *)conn_user;
  c->packets_in++;
  if (InterlockedCompareExchange(&g_echo_on, 0, 0)) {
    int rc = iocpsrv_send(srv, conn, data, len); /* copies: data dies with this call */
    if (rc < 0 && rc != IOCPSRV_ENOTCONN && rc != IOCPSRV_ESTOPPED)
      InterlockedIncrement64(&g_echo_errors);
  }
  if (InterlockedDecrement(&g_packet_budget) >= 0) {
    size_t copy = len < PACKET_PREVIEW ? len : PACKET_PREVIEW;
    ev_t *e = ev_new(EV_PACKET, conn, data, copy);
    if (e != NULL) {
      e->len = len;
      e->packets_in = c->packets_in;
      ev_push(e);
      return 0;
    }
  }
  InterlockedIncrement64(&g_not_shown);
  return 0;
}

static void IOCPSRV_CALL on_disconnect(iocpsrv_t *srv, iocpsrv_conn_id_t conn, void *conn_user,
                                       int reason) {
  client_t *c = (client_t *)conn_user;
  ev_t *e = ev_new(EV_DISCONNECT, conn, NULL, 0);
  if (e != NULL) {
    e->reason = reason;
    if (c != NULL) {
      snprintf(e->peer, sizeof e->peer, "%s", c->peer);
      e->packets_in = c->packets_in;
    }
    ev_push(e);
  }
  free(c);
}

static void IOCPSRV_CALL on_log(iocpsrv_t *srv, int level, const char *message) {
  ev_t *e;
  if (level > 1) return; /* errors and warnings only */
  e = ev_new(EV_LOG, 0, message, strlen(message));
  if (e != NULL) {
    e->reason = level;
    ev_push(e);
  }
}

/* ------------------------------------------------------------------------------------ */
/* The log pane.                                                                         */

static int g_log_widest;
static int64_t g_log_hidden; /* the last line says this many packets were not shown */

static void log_line(const wchar_t *fmt, ...) {
  wchar_t line[512];
  va_list ap;
  SYSTEMTIME t;
  int n;
  GetLocalTime(&t);
  n = _snwprintf(line, 512, L"%02u:%02u:%02u  ", t.wHour, t.wMinute, t.wSecond);
  va_start(ap, fmt);
  _vsnwprintf(line + n, 512 - (size_t)n, fmt, ap);
  va_end(ap);
  line[511] = 0;
  gui_log_add(g_log, line, LOG_MAX_LINES, &g_log_widest);
  g_log_hidden = 0;
}

/* ------------------------------------------------------------------------------------ */
/* The client list: rows carry the connection id in lParam.                              */

enum { COL_ID, COL_ADDR, COL_TIME, COL_PIN, COL_POUT, COL_BIN, COL_BOUT, COL_STATE, NCOLS };

static void list_columns(void) {
  static const struct {
    const wchar_t *name;
    int width96;
    int right;
  } cols[NCOLS] = {
      {L"Id", 80, 0},          {L"Address", 140, 0},    {L"Connected", 70, 1},
      {L"Packets in", 85, 1},  {L"Packets out", 85, 1}, {L"Bytes in", 75, 1},
      {L"Bytes out", 75, 1},   {L"State", 60, 0}};
  int i;
  for (i = 0; i < NCOLS; i++) {
    LVCOLUMNW c;
    memset(&c, 0, sizeof c);
    c.mask = LVCF_TEXT | LVCF_WIDTH | LVCF_FMT | LVCF_SUBITEM;
    c.fmt = cols[i].right ? LVCFMT_RIGHT : LVCFMT_LEFT;
    c.cx = gui_scale(&g_m, cols[i].width96);
    c.pszText = (wchar_t *)cols[i].name;
    c.iSubItem = i;
    SendMessageW(g_list, LVM_INSERTCOLUMNW, (WPARAM)i, (LPARAM)&c);
  }
}

static int list_find(iocpsrv_conn_id_t id) {
  LVFINDINFOW f;
  memset(&f, 0, sizeof f);
  f.flags = LVFI_PARAM;
  f.lParam = (LPARAM)id;
  return (int)SendMessageW(g_list, LVM_FINDITEMW, (WPARAM)-1, (LPARAM)&f);
}

static iocpsrv_conn_id_t list_id(int row) {
  LVITEMW it;
  memset(&it, 0, sizeof it);
  it.mask = LVIF_PARAM;
  it.iItem = row;
  if (!SendMessageW(g_list, LVM_GETITEMW, 0, (LPARAM)&it)) return 0;
  return (iocpsrv_conn_id_t)it.lParam;
}

/* Set a cell only when it changed: no flicker at four refreshes a second. */
static void list_set(int row, int col, const wchar_t *text) {
  wchar_t old[128];
  LVITEMW it;
  memset(&it, 0, sizeof it);
  it.iSubItem = col;
  it.pszText = old;
  it.cchTextMax = 128;
  old[0] = 0;
  SendMessageW(g_list, LVM_GETITEMTEXTW, (WPARAM)row, (LPARAM)&it);
  if (wcscmp(old, text) == 0) return;
  it.pszText = (wchar_t *)text;
  SendMessageW(g_list, LVM_SETITEMTEXTW, (WPARAM)row, (LPARAM)&it);
}

static int list_add(iocpsrv_conn_id_t id, const char *peer) {
  LVITEMW it;
  wchar_t text[32];
  wchar_t *w;
  int row = list_find(id);
  if (row >= 0) return row;
  _snwprintf(text, 32, L"%llu", (unsigned long long)id);
  text[31] = 0;
  memset(&it, 0, sizeof it);
  it.mask = LVIF_TEXT | LVIF_PARAM;
  it.iItem = (int)SendMessageW(g_list, LVM_GETITEMCOUNT, 0, 0);
  it.pszText = text;
  it.lParam = (LPARAM)id;
  row = (int)SendMessageW(g_list, LVM_INSERTITEMW, 0, (LPARAM)&it);
  if (row >= 0 && peer != NULL && (w = gui_utf8_to_wide(peer, -1)) != NULL) {
    list_set(row, COL_ADDR, w);
    free(w);
  }
  return row;
}

static void list_remove(iocpsrv_conn_id_t id) {
  int row = list_find(id);
  if (row >= 0) SendMessageW(g_list, LVM_DELETEITEM, (WPARAM)row, 0);
}

static int cmp_id(const void *a, const void *b) {
  iocpsrv_conn_id_t x = *(const iocpsrv_conn_id_t *)a, y = *(const iocpsrv_conn_id_t *)b;
  return x < y ? -1 : x > y;
}

static int64_t wall_ms(void) {
  FILETIME ft;
  ULARGE_INTEGER u;
  GetSystemTimeAsFileTime(&ft);
  u.LowPart = ft.dwLowDateTime;
  u.HighPart = ft.dwHighDateTime;
  return (int64_t)(u.QuadPart / 10000u) - 11644473600000LL;
}

/* Bring the list in line with the engine: drop rows of connections that are gone, add
 * the ones not shown yet, refresh the counters. */
static void list_refresh(void) {
  iocpsrv_conn_id_t *ids;
  int n, cap, row, rows, i;
  int64_t now = wall_ms();
  if (g_srv == NULL) return;
  n = iocpsrv_connections(g_srv, NULL, 0);
  if (n < 0) n = 0;
  cap = n + 64;
  ids = (iocpsrv_conn_id_t *)malloc((size_t)cap * sizeof *ids);
  if (ids == NULL) return;
  n = iocpsrv_connections(g_srv, ids, cap);
  if (n < 0) n = 0;
  if (n > cap) n = cap;
  qsort(ids, (size_t)n, sizeof *ids, cmp_id);

  SendMessageW(g_list, WM_SETREDRAW, FALSE, 0);
  rows = (int)SendMessageW(g_list, LVM_GETITEMCOUNT, 0, 0);
  for (row = rows - 1; row >= 0; row--) {
    iocpsrv_conn_id_t id = list_id(row);
    if (bsearch(&id, ids, (size_t)n, sizeof *ids, cmp_id) == NULL)
      SendMessageW(g_list, LVM_DELETEITEM, (WPARAM)row, 0);
  }
  for (i = 0; i < n; i++) {
    iocpsrv_conn_info_t info;
    wchar_t t[64];
    int64_t age;
    memset(&info, 0, sizeof info);
    info.struct_size = (uint32_t)sizeof info;
    if (iocpsrv_conn_info(g_srv, ids[i], &info) < 0) {
      list_remove(ids[i]); /* gone meanwhile */
      continue;
    }
    row = list_add(ids[i], info.peer);
    if (row < 0) continue;
    age = (now - info.connect_time_ms) / 1000;
    if (age < 0) age = 0;
    _snwprintf(t, 64, L"%lld:%02lld", (long long)(age / 60), (long long)(age % 60));
    t[63] = 0;
    list_set(row, COL_TIME, t);
    list_set(row, COL_PIN, gui_fmt_u64(t, info.packets_in));
    list_set(row, COL_POUT, gui_fmt_u64(t, info.packets_out));
    list_set(row, COL_BIN, gui_fmt_bytes(t, 64, info.bytes_in));
    list_set(row, COL_BOUT, gui_fmt_bytes(t, 64, info.bytes_out));
    list_set(row, COL_STATE, (info.flags & IOCPSRV_CONN_CLOSING) ? L"closing"
                             : (info.flags & IOCPSRV_CONN_PAUSED) ? L"paused"
                                                                  : L"open");
  }
  SendMessageW(g_list, WM_SETREDRAW, TRUE, 0);
  free(ids);
}

/* ------------------------------------------------------------------------------------ */
/* Status bar and buttons.                                                               */

static void status_refresh(void) {
  iocpsrv_stats_t st;
  wchar_t t[256], a[32], b[32], c[32];
  memset(&st, 0, sizeof st);
  st.struct_size = (uint32_t)sizeof st;
  if (g_listening) {
    wchar_t *h = gui_utf8_to_wide(g_opt.host, -1);
    _snwprintf(t, 256, strchr(g_opt.host, ':') ? L"Listening on [%ls]:%d" : L"Listening on %ls:%d",
               h ? h : L"?", g_port_bound);
    free(h);
  } else {
    wcscpy(t, L"Stopped");
  }
  t[255] = 0;
  SendMessageW(g_status, SB_SETTEXTW, 0, (LPARAM)t);
  if (g_srv == NULL || iocpsrv_stats(g_srv, &st) < 0) return;
  _snwprintf(t, 256, L"Clients: %ls now, %ls in all", gui_fmt_u64(a, st.connections_now),
             gui_fmt_u64(b, st.connections_total));
  t[255] = 0;
  SendMessageW(g_status, SB_SETTEXTW, 1, (LPARAM)t);
  _snwprintf(t, 256, L"In: %ls packets, %ls", gui_fmt_u64(a, st.packets_in),
             gui_fmt_bytes(c, 32, st.bytes_in));
  t[255] = 0;
  SendMessageW(g_status, SB_SETTEXTW, 2, (LPARAM)t);
  _snwprintf(t, 256, L"Out: %ls packets, %ls", gui_fmt_u64(a, st.packets_out),
             gui_fmt_bytes(c, 32, st.bytes_out));
  t[255] = 0;
  SendMessageW(g_status, SB_SETTEXTW, 3, (LPARAM)t);
  _snwprintf(t, 256, L"Workers: %u", (unsigned)st.workers);
  t[255] = 0;
  SendMessageW(g_status, SB_SETTEXTW, 4, (LPARAM)t);
}

static void update_buttons(void) {
  int selected = (int)SendMessageW(g_list, LVM_GETSELECTEDCOUNT, 0, 0);
  HWND focus = GetFocus();
  EnableWindow(g_port, !g_listening);
  EnableWindow(g_start, !g_listening);
  EnableWindow(g_stop, g_listening);
  EnableWindow(g_send, g_listening && selected > 0);
  EnableWindow(g_bcast, g_listening);
  EnableWindow(g_kick, g_listening && selected > 0);
  /* A disabled control cannot keep the focus: hand it to the next one. */
  if (focus != NULL && !IsWindowEnabled(focus))
    SetFocus(focus == g_start ? g_stop : focus == g_stop ? g_start : g_msg);
}

static void set_title(void) {
  wchar_t t[128];
  if (g_listening) _snwprintf(t, 128, APP_NAME L" - port %d", g_port_bound);
  else wcscpy(t, APP_NAME L" - stopped");
  t[127] = 0;
  SetWindowTextW(g_wnd, t);
}

/* ------------------------------------------------------------------------------------ */
/* Actions.                                                                              */

static void drain_events(void);

static int do_start(void) {
  wchar_t t[16];
  long port;
  int rc;
  if (g_listening) return 0;
  GetWindowTextW(g_port, t, 16);
  if (gui_parse_long(t, 0, 65535, &port) != 0) {
    log_line(L"Start: the port must be a number from 0 to 65535");
    SetFocus(g_port);
    SendMessageW(g_port, EM_SETSEL, 0, -1);
    return -1;
  }
  g_opt.port = port;
  if (g_opt.threads > 0) iocpsrv_set_option(g_srv, IOCPSRV_OPT_WORKER_THREADS, g_opt.threads);
  rc = iocpsrv_listen(g_srv, g_opt.host, (int)port);
  if (rc < 0) {
    wchar_t *h = gui_utf8_to_wide(g_opt.host, -1);
    wchar_t *e = gui_utf8_to_wide(iocpsrv_strerror(rc), -1);
    log_line(L"Start: cannot listen on %ls port %ld: %ls", h ? h : L"?", port, e ? e : L"?");
    gui_report(REPORT ": listen failed: %s (%s)", iocpsrv_strerror(rc), iocpsrv_err_name(rc));
    free(h);
    free(e);
    g_had_error = 1;
    return -1;
  }
  g_listening = 1;
  g_port_bound = iocpsrv_port(g_srv);
  _snwprintf(t, 16, L"%d", g_port_bound);
  t[15] = 0;
  SetWindowTextW(g_port, t);
  {
    wchar_t *h = gui_utf8_to_wide(g_opt.host, -1);
    log_line(L"Listening on %ls port %d (echo %ls)", h ? h : L"?", g_port_bound,
             g_echo_on ? L"on" : L"off");
    free(h);
  }
  gui_report(strchr(g_opt.host, ':') ? REPORT ": listening [%s]:%d" : REPORT ": listening %s:%d",
             g_opt.host, g_port_bound);
  set_title();
  update_buttons();
  status_refresh();
  return 0;
}

static void do_stop(void) {
  int rc;
  HCURSOR old;
  if (!g_listening) return;
  old = SetCursor(LoadCursor(NULL, IDC_WAIT));
  /* Graceful: queued sends are written, every client gets its disconnect callback,
   * and no callback runs after this returns. The callbacks only post, so waiting here
   * on the window's thread is safe. */
  rc = iocpsrv_stop(g_srv, STOP_TIMEOUT_MS);
  SetCursor(old);
  g_listening = 0;
  drain_events();
  list_refresh();
  if (rc < 0 && rc != IOCPSRV_ESTOPPED) {
    wchar_t *e = gui_utf8_to_wide(iocpsrv_strerror(rc), -1);
    log_line(L"Stop: %ls", e ? e : L"?");
    free(e);
  } else {
    log_line(L"Stopped");
  }
  set_title();
  update_buttons();
  status_refresh();
}

/* The text box as UTF-8 bytes (malloc'd), or NULL when empty. */
static char *message_bytes(int *len) {
  wchar_t *w = gui_get_text(g_msg);
  char *s = NULL;
  if (w != NULL && *w != 0) s = gui_wide_to_utf8(w, len);
  free(w);
  return s;
}

static void do_send_selected(void) {
  int len = 0, row = -1, sent = 0, failed = 0;
  char *s = message_bytes(&len);
  if (s == NULL) {
    log_line(L"Send: type a message first");
    SetFocus(g_msg);
    return;
  }
  while ((row = (int)SendMessageW(g_list, LVM_GETNEXTITEM, (WPARAM)row, LVNI_SELECTED)) >= 0) {
    iocpsrv_conn_id_t id = list_id(row);
    int rc = iocpsrv_send(g_srv, id, s, (size_t)len);
    if (rc == 0) {
      sent++;
    } else {
      wchar_t *e = gui_utf8_to_wide(iocpsrv_strerror(rc), -1);
      log_line(L"Send to client %llu: %ls", (unsigned long long)id, e ? e : L"?");
      free(e);
      failed++;
    }
  }
  if (sent + failed == 0) log_line(L"Send: select one or more clients in the list first");
  else if (sent) log_line(L"Sent %d bytes to %d client%ls", len, sent, sent == 1 ? L"" : L"s");
  free(s);
}

static void do_broadcast(void) {
  int len = 0, rc;
  char *s = message_bytes(&len);
  if (s == NULL) {
    log_line(L"Broadcast: type a message first");
    SetFocus(g_msg);
    return;
  }
  rc = iocpsrv_broadcast(g_srv, s, (size_t)len);
  if (rc < 0) {
    wchar_t *e = gui_utf8_to_wide(iocpsrv_strerror(rc), -1);
    log_line(L"Broadcast: %ls", e ? e : L"?");
    free(e);
  } else {
    log_line(L"Broadcast %d bytes to %d client%ls", len, rc, rc == 1 ? L"" : L"s");
  }
  free(s);
}

static void do_kick(void) {
  int row = -1;
  while ((row = (int)SendMessageW(g_list, LVM_GETNEXTITEM, (WPARAM)row, LVNI_SELECTED)) >= 0) {
    iocpsrv_conn_id_t id = list_id(row);
    int rc = iocpsrv_disconnect(g_srv, id, IOCPSRV_CLOSE_GRACEFUL);
    if (rc < 0) {
      wchar_t *e = gui_utf8_to_wide(iocpsrv_strerror(rc), -1);
      log_line(L"Kick client %llu: %ls", (unsigned long long)id, e ? e : L"?");
      free(e);
    } else {
      log_line(L"Kicking client %llu", (unsigned long long)id);
    }
  }
}

/* Script mode: close the window once the clients we waited for have come and gone. */
static void check_exit(void) {
  iocpsrv_stats_t st;
  if (g_exiting || g_srv == NULL) return;
  memset(&st, 0, sizeof st);
  st.struct_size = (uint32_t)sizeof st;
  if (iocpsrv_stats(g_srv, &st) < 0) return;
  if (st.connections_now == 0 && g_disconnects > 0) {
    if (g_idle_since == 0) g_idle_since = GetTickCount();
  } else {
    g_idle_since = 0;
  }
  if ((g_opt.exit_after_clients > 0 && st.connections_now == 0 &&
       g_disconnects >= (uint64_t)g_opt.exit_after_clients) ||
      (g_opt.exit_when_idle_ms > 0 && g_idle_since != 0 &&
       GetTickCount() - g_idle_since >= (DWORD)g_opt.exit_when_idle_ms)) {
    g_exiting = 1;
    log_line(L"Done: %llu client%ls served, closing", (unsigned long long)g_disconnects,
             g_disconnects == 1 ? L"" : L"s");
    PostMessageW(g_wnd, WM_CLOSE, 0, 0);
  }
}

/* "... N more packets (not shown)": one line for consecutive counts. */
static void log_hidden(int64_t hidden) {
  wchar_t n[32];
  if (hidden <= 0) return;
  if (g_log_hidden > 0) { /* the last line is one of these: replace it */
    LRESULT count = SendMessageW(g_log, LB_GETCOUNT, 0, 0);
    if (count > 0) SendMessageW(g_log, LB_DELETESTRING, (WPARAM)(count - 1), 0);
    hidden += g_log_hidden;
  }
  log_line(L"... %ls more packet%ls (not shown)", gui_fmt_u64(n, (uint64_t)hidden),
           hidden == 1 ? L"" : L"s");
  g_log_hidden = hidden;
}

/* Show what the workers queued, then free it. */
static void drain_events(void) {
  ev_t *e = (ev_t *)gui_queue_take_all(&g_q), *next;
  LONG64 hidden;
  int any = e != NULL;
  if (any) SendMessageW(g_log, WM_SETREDRAW, FALSE, 0);
  for (; e != NULL; e = next) {
    wchar_t *peer = gui_utf8_to_wide(e->peer, -1);
    next = (ev_t *)e->link.next;
    log_hidden(e->hidden_before);
    switch (e->type) {
    case EV_CONNECT:
      log_line(L"Client %llu connected from %ls", (unsigned long long)e->conn, peer ? peer : L"?");
      list_add(e->conn, e->peer);
      g_idle_since = 0;
      break;
    case EV_PACKET: {
      wchar_t shown[PACKET_PREVIEW + 32];
      gui_preview(shown, PACKET_PREVIEW + 32, e->data, e->copied, PACKET_PREVIEW);
      log_line(L"Client %llu: %llu bytes %ls", (unsigned long long)e->conn,
               (unsigned long long)e->len, shown);
      break;
    }
    case EV_DISCONNECT: {
      wchar_t *why = gui_utf8_to_wide(iocpsrv_reason_name(e->reason), -1);
      wchar_t n[32];
      log_line(L"Client %llu disconnected: %ls (%ls, %ls packets in)", (unsigned long long)e->conn,
               why ? why : L"?", peer ? peer : L"?", gui_fmt_u64(n, e->packets_in));
      free(why);
      list_remove(e->conn);
      g_disconnects++;
      break;
    }
    case EV_LOG: {
      wchar_t *m = gui_utf8_to_wide((const char *)e->data, (int)e->copied);
      log_line(L"iocpsrv %ls: %ls", e->reason == 0 ? L"error" : L"warning", m ? m : L"?");
      if (e->reason == 0) g_had_error = 1;
      free(m);
      break;
    }
    }
    free(peer);
    free(e);
  }
  /* Packets not shown since the last event (a later event would carry them). */
  hidden = InterlockedExchange64(&g_not_shown, 0);
  if (hidden > 0) {
    if (!any) SendMessageW(g_log, WM_SETREDRAW, FALSE, 0);
    log_hidden(hidden);
    any = 1;
  }
  if (any) {
    SendMessageW(g_log, WM_SETREDRAW, TRUE, 0);
    InvalidateRect(g_log, NULL, TRUE);
    check_exit();
  }
}

/* ------------------------------------------------------------------------------------ */
/* Layout: everything in pixels scaled from 96 DPI and the font height.                  */

static int g_status_parts[5];

static void layout(int w, int h) {
  const gui_metrics_t *m = &g_m;
  RECT sr;
  int x, y, sh, bw, lw, avail, list_h, log_h, i;
  int label_h = m->line + gui_scale(m, 2);
  SendMessageW(g_status, WM_SIZE, 0, 0);
  GetWindowRect(g_status, &sr);
  sh = sr.bottom - sr.top;

  /* Status bar parts: address, clients, in, out, workers. */
  {
    static const int share[5] = {22, 20, 24, 24, 10};
    int acc = 0;
    for (i = 0; i < 5; i++) {
      acc += share[i];
      g_status_parts[i] = i == 4 ? -1 : MulDiv(w, acc, 100);
    }
    SendMessageW(g_status, SB_SETPARTS, 5, (LPARAM)g_status_parts);
  }

  /* Row 1: Port [    ] [Start] [Stop]   [x] Echo */
  x = m->margin;
  y = m->margin;
  bw = gui_scale(m, 88);
  lw = gui_text_width(m, g_wnd, L"Port:") + gui_scale(m, 4);
  gui_move(g_port_label, x, y + (m->ctl - m->line) / 2, lw, m->line);
  x += lw + m->gap;
  gui_move(g_port, x, y, gui_scale(m, 72), m->ctl);
  x += gui_scale(m, 72) + m->gap;
  gui_move(g_start, x, y, bw, m->ctl);
  x += bw + m->gap;
  gui_move(g_stop, x, y, bw, m->ctl);
  x += bw + m->gap * 3;
  gui_move(g_echo_box, x, y, gui_text_width(m, g_wnd, L"Echo packets back to their sender") +
                                 gui_scale(m, 24), m->ctl);
  y += m->ctl + m->gap;

  /* The bottom row: [message ...] [Send to selected] [Broadcast] [Kick] */
  {
    int row_y = h - sh - m->margin - m->ctl;
    int bws = gui_text_width(m, g_wnd, L"Send to selected") + gui_scale(m, 24);
    int bwb = gui_text_width(m, g_wnd, L"Broadcast") + gui_scale(m, 24);
    int bwk = gui_text_width(m, g_wnd, L"Kick") + gui_scale(m, 40);
    int mlw = gui_text_width(m, g_wnd, L"Message:") + gui_scale(m, 4);
    int right = w - m->margin;
    if (bws < bw) bws = bw;
    if (bwb < bw) bwb = bw;
    if (bwk < bw) bwk = bw;
    gui_move(g_kick, right - bwk, row_y, bwk, m->ctl);
    right -= bwk + m->gap;
    gui_move(g_bcast, right - bwb, row_y, bwb, m->ctl);
    right -= bwb + m->gap;
    gui_move(g_send, right - bws, row_y, bws, m->ctl);
    right -= bws + m->gap;
    gui_move(g_msg_label, m->margin, row_y + (m->ctl - m->line) / 2, mlw, m->line);
    gui_move(g_msg, m->margin + mlw + m->gap, row_y, right - (m->margin + mlw + m->gap), m->ctl);
    avail = row_y - m->gap - y;
  }

  /* The middle: "Clients" + list (45 %), "Incoming packets" + log (the rest). */
  avail -= 2 * label_h + m->gap;
  list_h = avail * 45 / 100;
  log_h = avail - list_h;
  gui_move(g_clients_label, m->margin, y, w - 2 * m->margin, label_h);
  y += label_h;
  gui_move(g_list, m->margin, y, w - 2 * m->margin, list_h);
  y += list_h + m->gap;
  gui_move(g_log_label, m->margin, y, w - 2 * m->margin, label_h);
  y += label_h;
  gui_move(g_log, m->margin, y, w - 2 * m->margin, log_h);
}

/* ------------------------------------------------------------------------------------ */
/* The window.                                                                           */

static void create_controls(HWND wnd) {
  const gui_metrics_t *m = &g_m;
  wchar_t t[16];
  g_port_label = gui_child(wnd, m, 0, L"STATIC", L"&Port:", SS_LEFT, IDC_PORT_LABEL);
  _snwprintf(t, 16, L"%ld", g_opt.port);
  t[15] = 0;
  g_port = gui_child(wnd, m, WS_EX_CLIENTEDGE, L"EDIT", t,
                     WS_TABSTOP | ES_NUMBER | ES_AUTOHSCROLL, IDC_PORT);
  SendMessageW(g_port, EM_SETLIMITTEXT, 5, 0);
  g_start = gui_child(wnd, m, 0, L"BUTTON", L"&Start", WS_TABSTOP | BS_PUSHBUTTON, IDC_START);
  g_stop = gui_child(wnd, m, 0, L"BUTTON", L"S&top", WS_TABSTOP | BS_PUSHBUTTON, IDC_STOP);
  g_echo_box = gui_child(wnd, m, 0, L"BUTTON", L"&Echo packets back to their sender",
                         WS_TABSTOP | BS_AUTOCHECKBOX, IDC_ECHO);
  SendMessageW(g_echo_box, BM_SETCHECK, g_opt.echo ? BST_CHECKED : BST_UNCHECKED, 0);
  g_clients_label = gui_child(wnd, m, 0, L"STATIC", L"&Clients", SS_LEFT, IDC_CLIENTS_LABEL);
  g_list = gui_child(wnd, m, WS_EX_CLIENTEDGE, WC_LISTVIEWW, L"",
                     WS_TABSTOP | LVS_REPORT | LVS_SHOWSELALWAYS, IDC_LIST);
  SendMessageW(g_list, LVM_SETEXTENDEDLISTVIEWSTYLE, 0,
               LVS_EX_FULLROWSELECT | LVS_EX_GRIDLINES | LVS_EX_DOUBLEBUFFER);
  list_columns();
  g_log_label = gui_child(wnd, m, 0, L"STATIC", L"&Log (connects, disconnects, incoming packets)",
                          SS_LEFT, IDC_LOG_LABEL);
  g_log = gui_child(wnd, m, WS_EX_CLIENTEDGE, L"LISTBOX", L"",
                    WS_TABSTOP | WS_VSCROLL | WS_HSCROLL | LBS_NOINTEGRALHEIGHT | LBS_NOTIFY,
                    IDC_LOG);
  g_msg_label = gui_child(wnd, m, 0, L"STATIC", L"&Message:", SS_LEFT, IDC_MSG_LABEL);
  g_msg = gui_child(wnd, m, WS_EX_CLIENTEDGE, L"EDIT", L"Hello from the server",
                    WS_TABSTOP | ES_AUTOHSCROLL, IDC_MSG);
  g_send = gui_child(wnd, m, 0, L"BUTTON", L"Send to se&lected", WS_TABSTOP | BS_PUSHBUTTON,
                     IDC_SEND);
  g_bcast = gui_child(wnd, m, 0, L"BUTTON", L"&Broadcast", WS_TABSTOP | BS_PUSHBUTTON,
                      IDC_BROADCAST);
  g_kick = gui_child(wnd, m, 0, L"BUTTON", L"&Kick", WS_TABSTOP | BS_PUSHBUTTON, IDC_KICK);
  g_status = CreateWindowExW(0, STATUSCLASSNAMEW, L"", WS_CHILD | WS_VISIBLE | SBARS_SIZEGRIP, 0,
                             0, 0, 0, wnd, (HMENU)(INT_PTR)IDC_STATUS, GetModuleHandleW(NULL), NULL);
  SendMessageW(g_status, WM_SETFONT, (WPARAM)m->font, FALSE);
}

/* Enter and Escape, which IsDialogMessage turns into IDOK and IDCANCEL. */
static void on_enter(void) {
  HWND f = GetFocus();
  if (f == g_port) {
    do_start();
  } else if (f == g_msg) {
    /* Enter in the message box: to the selected clients, or to all when none is. */
    if (SendMessageW(g_list, LVM_GETSELECTEDCOUNT, 0, 0) > 0) do_send_selected();
    else if (g_listening) do_broadcast();
  } else if (f == g_list) {
    SetFocus(g_msg);
  }
}

static void on_escape(void) {
  HWND f = GetFocus();
  if (f == g_msg) {
    SetWindowTextW(g_msg, L"");
  } else if (f == g_list) {
    ListView_SetItemState(g_list, -1, 0, LVIS_SELECTED);
  }
}

static LRESULT CALLBACK wnd_proc(HWND wnd, UINT msg, WPARAM wp, LPARAM lp) {
  switch (msg) {
  case WM_CREATE: {
    int rc;
    g_wnd = wnd;
    create_controls(wnd);
    rc = iocpsrv_create(&g_srv, NULL);
    if (rc < 0) {
      gui_report(REPORT ": create failed: %s", iocpsrv_strerror(rc));
      return -1;
    }
    iocpsrv_set_connect_cb(g_srv, on_connect);
    iocpsrv_set_packet_cb(g_srv, on_packet);
    iocpsrv_set_disconnect_cb(g_srv, on_disconnect);
    iocpsrv_set_log_cb(g_srv, on_log);
    g_echo_on = g_opt.echo;
    SetTimer(wnd, TIMER_REFRESH, 250, NULL);
    SetTimer(wnd, TIMER_TICK, 100, NULL);
    {
      wchar_t *v = gui_utf8_to_wide(iocpsrv_version_string(), -1);
      log_line(L"iocpsrv %ls. Press Start (or Enter in the port field) to listen.", v ? v : L"?");
      free(v);
    }
    set_title();
    update_buttons();
    status_refresh();
    return 0;
  }
  case WM_SIZE:
    layout(LOWORD(lp), HIWORD(lp));
    return 0;
  case WM_GETMINMAXINFO: {
    MINMAXINFO *mm = (MINMAXINFO *)lp;
    mm->ptMinTrackSize.x = gui_scale(&g_m, 560);
    mm->ptMinTrackSize.y = gui_scale(&g_m, 380);
    return 0;
  }
  case WM_ACTIVATE:
    if (LOWORD(wp) == WA_INACTIVE) g_focus = GetFocus();
    else if (g_focus != NULL && IsWindow(g_focus)) SetFocus(g_focus);
    else SetFocus(g_listening ? g_msg : g_port);
    return 0;
  case WM_SRV_EVENTS:
    drain_events();
    return 0;
  case WM_TIMER:
    if (wp == TIMER_TICK) {
      InterlockedExchange(&g_packet_budget, PACKET_LINES_PER_TICK);
      drain_events(); /* also catches a post that failed */
    } else if (wp == TIMER_REFRESH) {
      list_refresh();
      status_refresh();
      update_buttons();
      check_exit();
    }
    return 0;
  case WM_NOTIFY: {
    NMHDR *h = (NMHDR *)lp;
    if (h->hwndFrom == g_list && h->code == LVN_ITEMCHANGED) update_buttons();
    return 0;
  }
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
    case IDC_START:
      do_start();
      if (g_listening) SetFocus(g_msg);
      break;
    case IDC_STOP:
      do_stop();
      SetFocus(g_start);
      break;
    case IDC_ECHO:
      InterlockedExchange(&g_echo_on,
                          SendMessageW(g_echo_box, BM_GETCHECK, 0, 0) == BST_CHECKED ? 1 : 0);
      log_line(L"Echo %ls", g_echo_on ? L"on" : L"off");
      break;
    case IDC_SEND:
      do_send_selected();
      break;
    case IDC_BROADCAST:
      do_broadcast();
      break;
    case IDC_KICK:
      do_kick();
      break;
    case IDC_MSG:
      if (HIWORD(wp) == EN_CHANGE) update_buttons();
      break;
    }
    return 0;
  case WM_CLOSE:
    DestroyWindow(wnd);
    return 0;
  case WM_DESTROY: {
    iocpsrv_stats_t st;
    KillTimer(wnd, TIMER_REFRESH);
    KillTimer(wnd, TIMER_TICK);
    memset(&st, 0, sizeof st);
    st.struct_size = (uint32_t)sizeof st;
    if (g_srv != NULL) {
      /* Clean shutdown: stop (clients get their disconnects, no callback runs after
       * this), free what the workers queued, then destroy. */
      if (g_listening) iocpsrv_stop(g_srv, STOP_TIMEOUT_MS);
      g_listening = 0;
      gui_event_free_all(gui_queue_take_all(&g_q));
      iocpsrv_stats(g_srv, &st);
      if (st.protocol_errors || st.accept_errors || g_echo_errors) g_had_error = 1;
      if (g_had_error) g_exit_code = 1;
      gui_report(REPORT ": summary ok=%d port=%d clients=%llu packets_in=%llu packets_out=%llu "
                        "bytes_in=%llu bytes_out=%llu protocol_errors=%llu echo_errors=%lld",
                 g_exit_code == 0, g_port_bound, (unsigned long long)st.connections_total,
                 (unsigned long long)st.packets_in, (unsigned long long)st.packets_out,
                 (unsigned long long)st.bytes_in, (unsigned long long)st.bytes_out,
                 (unsigned long long)st.protocol_errors, (long long)g_echo_errors);
      iocpsrv_destroy(g_srv);
      g_srv = NULL;
    }
    PostQuitMessage(g_exit_code);
    return 0;
  }
  }
  return DefWindowProcW(wnd, msg, wp, lp);
}

/* ------------------------------------------------------------------------------------ */

static const wchar_t USAGE[] =
    L"iocpsrv-server-gui [options]\n\n"
    L"  --port N                  port to listen on (default 5150; 0 picks a free one)\n"
    L"  --host H                  address to bind (default 127.0.0.1; :: for all)\n"
    L"  --threads N               worker threads (default: the engine's, 2 x CPUs)\n"
    L"  --no-echo                 start with echo off\n"
    L"  --autostart               listen at once\n"
    L"  --exit-after-clients N    close once N clients came and all left\n"
    L"  --exit-when-idle-ms MS    close when clients came and none was left for MS ms\n"
    L"  --window X,Y[,W,H]        place (and size) the window, in pixels\n"
    L"  --summary PATH            append the report lines to PATH\n"
    L"  --quiet                   no message box for errors (scripts)\n";

static int parse_args(void) {
  int argc = 0, i;
  wchar_t **argv = CommandLineToArgvW(GetCommandLineW(), &argc);
  if (argv == NULL) return 0;
  for (i = 1; i < argc; i++) {
    const wchar_t *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (wcscmp(a, L"--autostart") == 0) {
      g_opt.autostart = 1;
    } else if (wcscmp(a, L"--no-echo") == 0) {
      g_opt.echo = 0;
    } else if (wcscmp(a, L"--echo") == 0) {
      g_opt.echo = 1;
    } else if (wcscmp(a, L"--quiet") == 0) {
      g_opt.quiet = 1;
    } else if (wcscmp(a, L"--help") == 0 || wcscmp(a, L"-h") == 0 || wcscmp(a, L"/?") == 0) {
      MessageBoxW(NULL, USAGE, APP_NAME, MB_OK | MB_ICONINFORMATION);
      LocalFree(argv);
      return 1;
    } else if (v == NULL) {
      goto bad;
    } else if (wcscmp(a, L"--port") == 0) {
      if (gui_parse_long(v, 0, 65535, &g_opt.port) != 0) goto bad;
      i++;
    } else if (wcscmp(a, L"--threads") == 0) {
      if (gui_parse_long(v, 0, 1024, &g_opt.threads) != 0) goto bad;
      i++;
    } else if (wcscmp(a, L"--exit-after-clients") == 0) {
      if (gui_parse_long(v, 1, 1000000, &g_opt.exit_after_clients) != 0) goto bad;
      i++;
    } else if (wcscmp(a, L"--exit-when-idle-ms") == 0) {
      if (gui_parse_long(v, 1, 86400000, &g_opt.exit_when_idle_ms) != 0) goto bad;
      i++;
    } else if (wcscmp(a, L"--host") == 0) {
      if (WideCharToMultiByte(CP_UTF8, 0, v, -1, g_opt.host, sizeof g_opt.host, NULL, NULL) == 0)
        goto bad;
      i++;
    } else if (wcscmp(a, L"--window") == 0) {
      if (gui_parse_window(v, &g_opt.x, &g_opt.y, &g_opt.w, &g_opt.h) != 0) goto bad;
      i++;
    } else if (wcscmp(a, L"--summary") == 0) {
      g_gui_summary_path = _wcsdup(v);
      i++;
    } else {
      goto bad;
    }
    continue;
  bad : {
    wchar_t text[1200];
    _snwprintf(text, 1200, L"bad argument: %ls\n\n%ls", a, USAGE);
    text[1199] = 0;
    gui_error_box(NULL, APP_NAME, text, g_opt.quiet);
    LocalFree(argv);
    return 2;
  }
  }
  LocalFree(argv);
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
  icc.dwICC = ICC_LISTVIEW_CLASSES | ICC_BAR_CLASSES | ICC_STANDARD_CLASSES;
  InitCommonControlsEx(&icc);
  gui_metrics_init(&g_m);

  memset(&wc, 0, sizeof wc);
  wc.cbSize = sizeof wc;
  wc.lpfnWndProc = wnd_proc;
  wc.hInstance = inst;
  wc.hIcon = LoadIcon(NULL, IDI_APPLICATION);
  wc.hCursor = LoadCursor(NULL, IDC_ARROW);
  wc.hbrBackground = (HBRUSH)(COLOR_BTNFACE + 1);
  wc.lpszClassName = L"iocpsrv_server_gui";
  RegisterClassExW(&wc);

  wnd = CreateWindowExW(WS_EX_CONTROLPARENT, wc.lpszClassName, APP_NAME, WS_OVERLAPPEDWINDOW,
                        g_opt.x, g_opt.y, g_opt.w > 0 ? g_opt.w : gui_scale(&g_m, 760),
                        g_opt.h > 0 ? g_opt.h : gui_scale(&g_m, 540), NULL, NULL, inst, NULL);
  if (wnd == NULL) {
    gui_report(REPORT ": cannot create the window");
    return 1;
  }
  ShowWindow(wnd, show);
  UpdateWindow(wnd);
  gui_report_window(REPORT, wnd);
  if (g_opt.autostart && do_start() != 0) {
    g_exit_code = 1;
    if (g_opt.quiet) DestroyWindow(wnd);
  }

  while (GetMessageW(&msg, NULL, 0, 0) > 0) {
    /* Tab, Shift+Tab, arrows, Alt+mnemonics, Enter (IDOK) and Escape (IDCANCEL). */
    if (IsDialogMessageW(wnd, &msg)) continue;
    TranslateMessage(&msg);
    DispatchMessageW(&msg);
  }
  gui_metrics_free(&g_m);
  free(g_gui_summary_path);
  return g_exit_code;
}
