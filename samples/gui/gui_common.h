/*
 * gui_common.h -- what iocpsrv-server-gui and iocpsrv-client-gui share: DPI scaling and
 * the message font, number formatting, UTF-8 <-> UTF-16, the command line, and the
 * machine-readable report lines (stdout when the program has one, and a --summary file),
 * and the queue that carries events from worker threads to the window.
 *
 * Plain Win32 and C, header-only (every function is static), no external library.
 */
#ifndef IOCPSRV_GUI_COMMON_H
#define IOCPSRV_GUI_COMMON_H

#ifndef UNICODE
#  define UNICODE
#endif
#ifndef _UNICODE
#  define _UNICODE
#endif
#ifndef WIN32_LEAN_AND_MEAN
#  define WIN32_LEAN_AND_MEAN
#endif
#include <winsock2.h>
#include <ws2tcpip.h>
#include <windows.h>
#include <commctrl.h>
#include <shellapi.h>

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wchar.h>

/* Every helper is static; each program uses only some of them. */
#if defined(__GNUC__)
#  define GUI_FN static __attribute__((unused))
#else
#  define GUI_FN static
#endif

/* ------------------------------------------------------------------------------------ */
/* DPI and fonts.                                                                        */

typedef struct gui_metrics_s {
  int dpi;       /* logical pixels per inch of the screen: 96 at 100 %, 144 at 150 % */
  HFONT font;    /* the system's message font (what dialogs use), scaled for dpi */
  HFONT mono;    /* a fixed-pitch font of the same height, for logs */
  int line;      /* height of one line of text in `font` */
  int ctl;       /* height of an edit box or a push button */
  int margin;    /* space around the window's content */
  int gap;       /* space between controls */
} gui_metrics_t;

GUI_FN int gui_scale(const gui_metrics_t *m, int px96) { return MulDiv(px96, m->dpi, 96); }

/* Declare the process DPI-aware (the manifest says so too; this covers a copy run
 * without its manifest), so Windows does not stretch a 96-DPI bitmap of the window. */
GUI_FN void gui_dpi_aware(void) {
  typedef BOOL(WINAPI * set_aware_fn)(void);
  HMODULE user32 = GetModuleHandleW(L"user32.dll");
  set_aware_fn set_aware =
      user32 ? (set_aware_fn)(void (*)(void))GetProcAddress(user32, "SetProcessDPIAware") : NULL;
  if (set_aware != NULL) set_aware();
}

GUI_FN void gui_metrics_init(gui_metrics_t *m) {
  NONCLIENTMETRICSW ncm;
  LOGFONTW mono;
  HDC dc = GetDC(NULL);
  TEXTMETRICW tm;
  HGDIOBJ old;

  memset(m, 0, sizeof *m);
  m->dpi = dc ? GetDeviceCaps(dc, LOGPIXELSY) : 96;
  if (m->dpi <= 0) m->dpi = 96;

  /* The message font is what the system uses for dialogs (Segoe UI on current Windows,
   * Tahoma under Wine); DEFAULT_GUI_FONT is the fallback. Both are already sized for
   * the system DPI once the process is DPI-aware. */
  memset(&ncm, 0, sizeof ncm);
  ncm.cbSize = sizeof ncm;
  if (SystemParametersInfoW(SPI_GETNONCLIENTMETRICS, sizeof ncm, &ncm, 0))
    m->font = CreateFontIndirectW(&ncm.lfMessageFont);
  if (m->font == NULL) m->font = (HFONT)GetStockObject(DEFAULT_GUI_FONT);

  memset(&mono, 0, sizeof mono);
  mono.lfHeight = ncm.lfMessageFont.lfHeight ? ncm.lfMessageFont.lfHeight : -MulDiv(9, m->dpi, 72);
  mono.lfCharSet = DEFAULT_CHARSET;
  mono.lfPitchAndFamily = FIXED_PITCH | FF_MODERN;
  wcscpy(mono.lfFaceName, L"Courier New");
  m->mono = CreateFontIndirectW(&mono);
  if (m->mono == NULL) m->mono = (HFONT)GetStockObject(ANSI_FIXED_FONT);

  m->line = MulDiv(16, m->dpi, 96);
  if (dc != NULL) {
    old = SelectObject(dc, m->font);
    if (GetTextMetricsW(dc, &tm)) m->line = tm.tmHeight;
    SelectObject(dc, old);
    ReleaseDC(NULL, dc);
  }
  /* An edit box or a button: the text plus a frame and some air, never smaller than
   * the 23 px a 96-DPI dialog uses. */
  m->ctl = m->line + gui_scale(m, 9);
  if (m->ctl < gui_scale(m, 23)) m->ctl = gui_scale(m, 23);
  m->margin = gui_scale(m, 10);
  m->gap = gui_scale(m, 6);
}

GUI_FN void gui_metrics_free(gui_metrics_t *m) {
  if (m->font != NULL && m->font != (HFONT)GetStockObject(DEFAULT_GUI_FONT)) DeleteObject(m->font);
  if (m->mono != NULL && m->mono != (HFONT)GetStockObject(ANSI_FIXED_FONT)) DeleteObject(m->mono);
  m->font = m->mono = NULL;
}

/* Width in pixels of `text` in the message font. */
GUI_FN int gui_text_width(const gui_metrics_t *m, HWND any, const wchar_t *text) {
  HDC dc = GetDC(any);
  SIZE sz = {0, 0};
  HGDIOBJ old;
  if (dc == NULL) return (int)wcslen(text) * m->line / 2;
  old = SelectObject(dc, m->font);
  GetTextExtentPoint32W(dc, text, (int)wcslen(text), &sz);
  SelectObject(dc, old);
  ReleaseDC(any, dc);
  return sz.cx;
}

/* A child control with the message font. Creation order is the tab order. */
GUI_FN HWND gui_child(HWND parent, const gui_metrics_t *m, DWORD ex_style, const wchar_t *cls,
                      const wchar_t *text, DWORD style, int id) {
  HWND h = CreateWindowExW(ex_style, cls, text, WS_CHILD | WS_VISIBLE | style, 0, 0, 10, 10,
                           parent, (HMENU)(INT_PTR)id, GetModuleHandleW(NULL), NULL);
  if (h != NULL) SendMessageW(h, WM_SETFONT, (WPARAM)m->font, FALSE);
  return h;
}

GUI_FN void gui_move(HWND h, int x, int y, int w, int hgt) {
  if (w < 0) w = 0;
  if (hgt < 0) hgt = 0;
  SetWindowPos(h, NULL, x, y, w, hgt, SWP_NOZORDER | SWP_NOACTIVATE);
}

/* IsDialogMessage asks the window to move the focus with WM_NEXTDLGCTL (for the
 * Alt+letter of a label: to the control after the label). Dialogs get that from
 * DefDlgProc; a plain window must do it itself. */
GUI_FN void gui_next_dlg_ctl(HWND wnd, WPARAM wp, LPARAM lp) {
  HWND target = LOWORD(lp) ? (HWND)wp : GetNextDlgTabItem(wnd, GetFocus(), wp != 0);
  wchar_t cls[16];
  if (target == NULL) return;
  SetFocus(target);
  /* As in a dialog: an edit box reached from the keyboard has its text selected. */
  if (GetClassNameW(target, cls, 16) && _wcsicmp(cls, L"Edit") == 0)
    SendMessageW(target, EM_SETSEL, 0, -1);
}

/* ------------------------------------------------------------------------------------ */
/* Text.                                                                                 */

/* 1234567 -> "1,234,567" (out holds at least 32 characters). */
GUI_FN const wchar_t *gui_fmt_u64(wchar_t *out, uint64_t v) {
  wchar_t d[24];
  int n = 0, i, o = 0;
  do {
    d[n++] = (wchar_t)(L'0' + v % 10);
    v /= 10;
  } while (v != 0);
  for (i = n - 1; i >= 0; i--) {
    out[o++] = d[i];
    if (i > 0 && i % 3 == 0) out[o++] = L',';
  }
  out[o] = 0;
  return out;
}

/* Bytes as "512 B", "12.3 KB", "4.56 MB" (10^3 units). */
GUI_FN const wchar_t *gui_fmt_bytes(wchar_t *out, size_t cap, uint64_t v) {
  if (v < 1000) _snwprintf(out, cap, L"%u B", (unsigned)v);
  else if (v < 1000000) _snwprintf(out, cap, L"%.1f KB", (double)v / 1e3);
  else if (v < 1000000000) _snwprintf(out, cap, L"%.2f MB", (double)v / 1e6);
  else _snwprintf(out, cap, L"%.2f GB", (double)v / 1e9);
  out[cap - 1] = 0;
  return out;
}

/* UTF-8 (len bytes, not NUL-terminated) -> UTF-16 in a malloc'd string, or NULL. */
GUI_FN wchar_t *gui_utf8_to_wide(const char *s, int len) {
  int n;
  wchar_t *w;
  if (len < 0) len = (int)strlen(s);
  n = len ? MultiByteToWideChar(CP_UTF8, 0, s, len, NULL, 0) : 0;
  w = (wchar_t *)malloc(((size_t)n + 1) * sizeof(wchar_t));
  if (w == NULL) return NULL;
  if (n > 0) MultiByteToWideChar(CP_UTF8, 0, s, len, w, n);
  w[n] = 0;
  return w;
}

/* UTF-16 -> UTF-8 in a malloc'd string (NUL-terminated; *len_out without the NUL). */
GUI_FN char *gui_wide_to_utf8(const wchar_t *w, int *len_out) {
  int n = WideCharToMultiByte(CP_UTF8, 0, w, -1, NULL, 0, NULL, NULL);
  char *s;
  if (n <= 0) n = 1;
  s = (char *)malloc((size_t)n);
  if (s == NULL) return NULL;
  s[0] = 0;
  WideCharToMultiByte(CP_UTF8, 0, w, -1, s, n, NULL, NULL);
  if (len_out != NULL) *len_out = (int)strlen(s);
  return s;
}

/* The text of a window (control) in a malloc'd string; never NULL unless out of memory. */
GUI_FN wchar_t *gui_get_text(HWND h) {
  int n = GetWindowTextLengthW(h);
  wchar_t *w = (wchar_t *)malloc(((size_t)n + 2) * sizeof(wchar_t));
  if (w == NULL) return NULL;
  w[0] = 0;
  GetWindowTextW(h, w, n + 1);
  return w;
}

/* A packet shown in one line: printable UTF-8 text as "text", anything else as hex;
 * at most `max_chars` characters of payload. */
GUI_FN void gui_preview(wchar_t *out, size_t cap, const uint8_t *p, size_t len, size_t max_chars) {
  size_t i, o = 0, shown = len < max_chars ? len : max_chars;
  int text = 1;
  for (i = 0; i < shown; i++)
    if (p[i] < 0x20 && p[i] != '\t') text = 0; /* control bytes: binary */
  if (text && MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, (const char *)p, (int)shown,
                                  NULL, 0) == 0 && shown > 0 && shown == len)
    text = 0; /* not UTF-8 (a cut multi-byte character at max_chars is fine) */
  if (cap < 16) {
    if (cap) out[0] = 0;
    return;
  }
  if (text) {
    int n;
    out[o++] = L'"';
    n = MultiByteToWideChar(CP_UTF8, 0, (const char *)p, (int)shown, out + o, (int)(cap - o - 12));
    if (n < 0) n = 0;
    o += (size_t)n;
    out[o++] = L'"';
  } else {
    for (i = 0; i < shown && i < 16 && o + 4 < cap - 8; i++)
      o += (size_t)_snwprintf(out + o, cap - o, i ? L" %02x" : L"%02x", p[i]);
    shown = i;
  }
  if (shown < len && o + 4 < cap) {
    out[o++] = L' ';
    out[o++] = 0x2026; /* ... */
  }
  out[o] = 0;
}

/* Append a line to a list box used as a log: at most max_lines (the oldest go), the
 * horizontal scroll range follows the widest line, and the newest line is shown. */
GUI_FN void gui_log_add(HWND lb, const wchar_t *line, int max_lines, int *widest) {
  LRESULT count = SendMessageW(lb, LB_ADDSTRING, 0, (LPARAM)line);
  HDC dc = GetDC(lb);
  if (dc != NULL) {
    SIZE sz = {0, 0};
    HGDIOBJ old = SelectObject(dc, (HFONT)SendMessageW(lb, WM_GETFONT, 0, 0));
    GetTextExtentPoint32W(dc, line, (int)wcslen(line), &sz);
    SelectObject(dc, old);
    ReleaseDC(lb, dc);
    if (sz.cx + 8 > *widest) {
      *widest = sz.cx + 8;
      SendMessageW(lb, LB_SETHORIZONTALEXTENT, (WPARAM)*widest, 0);
    }
  }
  while (count >= max_lines) {
    SendMessageW(lb, LB_DELETESTRING, 0, 0);
    count--;
  }
  SendMessageW(lb, LB_SETTOPINDEX, (WPARAM)(count > 0 ? count : 0), 0);
}

/* ------------------------------------------------------------------------------------ */
/* Reports for scripts: one line each, to stdout when the process has one (a GUI program */
/* started from a console or with redirected handles) and appended to --summary PATH.    */

static wchar_t *g_gui_summary_path;

GUI_FN void gui_report(const char *fmt, ...) {
  char line[1024];
  va_list ap;
  int n;
  HANDLE out;
  DWORD done;
  va_start(ap, fmt);
  n = vsnprintf(line, sizeof line - 2, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if (n > (int)sizeof line - 3) n = (int)sizeof line - 3;
  line[n++] = '\n';
  line[n] = 0;
  out = GetStdHandle(STD_OUTPUT_HANDLE);
  if (out != NULL && out != INVALID_HANDLE_VALUE) WriteFile(out, line, (DWORD)n, &done, NULL);
  if (g_gui_summary_path != NULL) {
    /* Opened and closed per line, so a script reading the file sees each line at once. */
    HANDLE f = CreateFileW(g_gui_summary_path, FILE_APPEND_DATA, FILE_SHARE_READ | FILE_SHARE_WRITE,
                           NULL, OPEN_ALWAYS, FILE_ATTRIBUTE_NORMAL, NULL);
    if (f != INVALID_HANDLE_VALUE) {
      WriteFile(f, line, (DWORD)n, &done, NULL);
      CloseHandle(f);
    }
  }
}

/* A usage or start-up error: a message box for a person, a report line for a script. */
GUI_FN void gui_error_box(HWND owner, const wchar_t *title, const wchar_t *text, int quiet) {
  char *u = gui_wide_to_utf8(text, NULL);
  gui_report("%s", u ? u : "error");
  free(u);
  if (!quiet) MessageBoxW(owner, text, title, MB_OK | MB_ICONERROR);
}

/* ------------------------------------------------------------------------------------ */
/* Command line.                                                                         */

GUI_FN int gui_parse_long(const wchar_t *text, long min, long max, long *out) {
  wchar_t *end;
  long v;
  if (text == NULL || *text == 0) return -1;
  v = wcstol(text, &end, 10);
  if (*end != 0 || v < min || v > max) return -1;
  *out = v;
  return 0;
}

/* "X,Y" or "X,Y,W,H" (pixels) for --window; W and H stay as they were when absent. */
GUI_FN int gui_parse_window(const wchar_t *text, int *x, int *y, int *w, int *h) {
  int v[4], n = 0;
  const wchar_t *p = text;
  if (text == NULL) return -1;
  while (n < 4) {
    wchar_t *end;
    long k = wcstol(p, &end, 10);
    if (end == p || k < -32768 || k > 32767) return -1;
    v[n++] = (int)k;
    if (*end == 0) break;
    if (*end != L',') return -1;
    p = end + 1;
  }
  if (n != 2 && n != 4) return -1;
  *x = v[0];
  *y = v[1];
  if (n == 4) {
    if (v[2] <= 0 || v[3] <= 0) return -1;
    *w = v[2];
    *h = v[3];
  }
  return 0;
}

GUI_FN int gui_file_exists(const wchar_t *path) {
  return GetFileAttributesW(path) != INVALID_FILE_ATTRIBUTES;
}

/* Where the window is, for scripts that take screenshots: "NAME: window x= y= w= h=". */
GUI_FN void gui_report_window(const char *name, HWND wnd) {
  RECT r;
  if (GetWindowRect(wnd, &r))
    gui_report("%s: window x=%ld y=%ld w=%ld h=%ld", name, (long)r.left, (long)r.top,
               (long)(r.right - r.left), (long)(r.bottom - r.top));
}

/* Posted messages: worker threads -> the window's thread. */
#define WM_GUI_FIRST (WM_APP + 1)
#define WM_GUI_LAST (WM_APP + 32)

/* Events from worker threads to the window's thread, which owns every window. A worker
 * appends an event under a lock and, when the queue was idle, posts one `msg`; the
 * window's thread takes them all at once. Each program's event struct starts with a
 * gui_event_t and is malloc'd whole (gui_event_free_all frees it through the link). */
typedef struct gui_event_s {
  struct gui_event_s *next;
} gui_event_t;

typedef struct gui_queue_s {
  SRWLOCK lock;
  gui_event_t *head, *tail;
  int posted; /* a `msg` is on its way */
  UINT msg;
} gui_queue_t;

#define GUI_QUEUE_INIT(msg) {SRWLOCK_INIT, NULL, NULL, 0, (msg)}

GUI_FN void gui_queue_push(gui_queue_t *q, HWND wnd, gui_event_t *e) {
  int post;
  e->next = NULL;
  AcquireSRWLockExclusive(&q->lock);
  if (q->tail) q->tail->next = e;
  else q->head = e;
  q->tail = e;
  post = !q->posted;
  q->posted = 1;
  ReleaseSRWLockExclusive(&q->lock);
  /* PostMessage, never SendMessage: a worker must not wait for the window's thread,
   * which may itself be waiting in iocpsrv_stop for this worker. If the post fails
   * (queue full, window gone), the program's refresh timer drains the queue instead. */
  if (post && !PostMessageW(wnd, q->msg, 0, 0)) {
    AcquireSRWLockExclusive(&q->lock);
    q->posted = 0;
    ReleaseSRWLockExclusive(&q->lock);
  }
}

/* Every queued event, oldest first (NULL when none). */
GUI_FN gui_event_t *gui_queue_take_all(gui_queue_t *q) {
  gui_event_t *all;
  AcquireSRWLockExclusive(&q->lock);
  all = q->head;
  q->head = q->tail = NULL;
  q->posted = 0;
  ReleaseSRWLockExclusive(&q->lock);
  return all;
}

GUI_FN void gui_event_free_all(gui_event_t *e) {
  while (e != NULL) {
    gui_event_t *next = e->next;
    free(e);
    e = next;
  }
}

#endif /* IOCPSRV_GUI_COMMON_H */
