/* proc.c -- see proc.h. */
#ifndef _WIN32
#  define _GNU_SOURCE
#endif
#include "proc.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "test.h"
#include "thread.h"

#ifdef _WIN32
#  include <windows.h>
#else
#  include <fcntl.h>
#  include <signal.h>
#  include <sys/prctl.h>
#  include <sys/syscall.h>
#  include <sys/wait.h>
#  include <unistd.h>
#endif

struct tp_proc_s {
  char name[64];         /* argv[0]'s file name */
  tt_mutex_t lock;       /* guards out/out_len/eof */
  char *out;             /* the transcript, NUL-terminated */
  size_t out_len, out_cap;
  int eof;               /* the output pipe reached end of file */
  tt_counter_t changes;  /* bumped on every chunk, at EOF and at exit */
  tt_thread_t *reader;
  int exited;            /* guarded by changes.m via exit_code below */
  int exit_code;
#ifdef _WIN32
  HANDLE process;
  HANDLE in_w;           /* the child's stdin, our end */
  HANDLE out_r;          /* the child's stdout+stderr, our end */
#else
  pid_t pid;
  int in_w;
  int out_r;
  tt_thread_t *reaper;
  tt_mutex_t exit_lock;
#endif
};

char *tp_native_path(const char *path) {
  size_t n = strlen(path);
  char *s = (char *)malloc(n + 3);
  if (s == NULL) return NULL;
#ifdef _WIN32
  {
    size_t i, o = 0;
    if (path[0] == '/') { /* Wine maps the Linux root to drive Z: */
      s[o++] = 'Z';
      s[o++] = ':';
    }
    for (i = 0; i < n; i++) s[o++] = path[i] == '/' ? '\\' : path[i];
    s[o] = '\0';
  }
#else
  memcpy(s, path, n + 1);
#endif
  return s;
}

static void append_output(tp_proc_t *p, const char *data, size_t n) {
  tt_mutex_lock(&p->lock);
  if (p->out_len + n + 1 > p->out_cap) {
    size_t cap = p->out_cap ? p->out_cap : 4096;
    char *q;
    while (cap < p->out_len + n + 1) cap *= 2;
    q = (char *)realloc(p->out, cap);
    if (q == NULL) { /* keep what fits; the tests' transcripts are small */
      tt_mutex_unlock(&p->lock);
      return;
    }
    p->out = q;
    p->out_cap = cap;
  }
  memcpy(p->out + p->out_len, data, n);
  p->out_len += n;
  p->out[p->out_len] = '\0';
  tt_mutex_unlock(&p->lock);
  tt_counter_add(&p->changes, 1);
}

static void set_eof(tp_proc_t *p) {
  tt_mutex_lock(&p->lock);
  p->eof = 1;
  tt_mutex_unlock(&p->lock);
  tt_counter_add(&p->changes, 1);
}

static int has_exited(tp_proc_t *p, int *code);
static void set_name(tp_proc_t *p, const char *path);

/* ------------------------------------------------------------------------------------ */
#ifdef _WIN32

static HANDLE g_job; /* children are killed when the test's last handle to it closes */

static void reader_main(void *arg) {
  tp_proc_t *p = (tp_proc_t *)arg;
  char buf[4096];
  DWORD got;
  while (ReadFile(p->out_r, buf, sizeof buf, &got, NULL) && got > 0)
    append_output(p, buf, got);
  set_eof(p);
}

/* Append one argument quoted the way the C runtime's command-line parser undoes. */
static void append_arg(char *cmd, size_t *o, const char *arg) {
  size_t i, bs = 0;
  if (*o) cmd[(*o)++] = ' ';
  if (*arg != '\0' && strpbrk(arg, " \t\n\v\"") == NULL) {
    size_t n = strlen(arg);
    memcpy(cmd + *o, arg, n);
    *o += n;
    return;
  }
  cmd[(*o)++] = '"';
  for (i = 0; arg[i]; i++) {
    if (arg[i] == '\\') {
      bs++;
      continue;
    }
    if (arg[i] == '"') bs = bs * 2 + 1; /* escape the backslashes and the quote */
    while (bs) cmd[(*o)++] = '\\', bs--;
    cmd[(*o)++] = arg[i];
  }
  bs *= 2; /* before the closing quote */
  while (bs) cmd[(*o)++] = '\\', bs--;
  cmd[(*o)++] = '"';
}

tp_proc_t *tp_start(const char *const *argv, char *err, size_t errcap) {
  SECURITY_ATTRIBUTES sa;
  STARTUPINFOA si;
  PROCESS_INFORMATION pi;
  HANDLE in_r = NULL, in_w = NULL, out_r = NULL, out_w = NULL;
  tp_proc_t *p;
  char *app, *cmd;
  size_t cap = 16, o = 0;
  int i;

  for (i = 0; argv[i]; i++) cap += strlen(argv[i]) * 2 + 8;
  app = tp_native_path(argv[0]);
  cmd = (char *)malloc(cap + strlen(app) * 2);
  p = (tp_proc_t *)calloc(1, sizeof *p);
  if (app == NULL || cmd == NULL || p == NULL) {
    snprintf(err, errcap, "out of memory");
    free(app), free(cmd), free(p);
    return NULL;
  }
  set_name(p, argv[0]);
  append_arg(cmd, &o, app);
  for (i = 1; argv[i]; i++) append_arg(cmd, &o, argv[i]);
  cmd[o] = '\0';

  memset(&sa, 0, sizeof sa);
  sa.nLength = sizeof sa;
  sa.bInheritHandle = TRUE;
  if (!CreatePipe(&in_r, &in_w, &sa, 0) || !CreatePipe(&out_r, &out_w, &sa, 0)) {
    snprintf(err, errcap, "CreatePipe failed: error %lu", GetLastError());
    goto fail;
  }
  /* Only the child's ends are inherited. */
  SetHandleInformation(in_w, HANDLE_FLAG_INHERIT, 0);
  SetHandleInformation(out_r, HANDLE_FLAG_INHERIT, 0);

  if (g_job == NULL) {
    JOBOBJECT_EXTENDED_LIMIT_INFORMATION li;
    g_job = CreateJobObjectA(NULL, NULL);
    memset(&li, 0, sizeof li);
    li.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
    if (g_job) SetInformationJobObject(g_job, JobObjectExtendedLimitInformation, &li, sizeof li);
  }

  memset(&si, 0, sizeof si);
  si.cb = sizeof si;
  si.dwFlags = STARTF_USESTDHANDLES;
  si.hStdInput = in_r;
  si.hStdOutput = out_w;
  si.hStdError = out_w;
  memset(&pi, 0, sizeof pi);
  if (!CreateProcessA(app, cmd, NULL, NULL, TRUE, CREATE_SUSPENDED | CREATE_NO_WINDOW, NULL,
                      NULL, &si, &pi)) {
    snprintf(err, errcap, "cannot start %s: CreateProcess error %lu", app, GetLastError());
    goto fail;
  }
  if (g_job) AssignProcessToJobObject(g_job, pi.hProcess); /* best effort */
  ResumeThread(pi.hThread);
  CloseHandle(pi.hThread);
  CloseHandle(in_r);
  CloseHandle(out_w);
  free(app);
  free(cmd);

  tt_mutex_init(&p->lock);
  tt_counter_init(&p->changes);
  p->process = pi.hProcess;
  p->in_w = in_w;
  p->out_r = out_r;
  p->reader = tt_thread_start(reader_main, p);
  if (p->reader == NULL) {
    snprintf(err, errcap, "cannot start the reader thread");
    tp_free(p);
    return NULL;
  }
  return p;

fail:
  if (in_r) CloseHandle(in_r);
  if (in_w) CloseHandle(in_w);
  if (out_r) CloseHandle(out_r);
  if (out_w) CloseHandle(out_w);
  free(app);
  free(cmd);
  free(p);
  return NULL;
}

int tp_write(tp_proc_t *p, const char *text) {
  size_t n = strlen(text);
  while (n > 0) {
    DWORD put = 0;
    if (p->in_w == NULL || !WriteFile(p->in_w, text, (DWORD)n, &put, NULL)) return -1;
    text += put;
    n -= put;
  }
  return 0;
}

void tp_close_stdin(tp_proc_t *p) {
  if (p->in_w != NULL) CloseHandle(p->in_w);
  p->in_w = NULL;
}

static int has_exited(tp_proc_t *p, int *code) {
  DWORD c;
  if (WaitForSingleObject(p->process, 0) != WAIT_OBJECT_0) return 0;
  if (!GetExitCodeProcess(p->process, &c)) c = 255;
  *code = (int)c;
  return 1;
}

static int wait_exited(tp_proc_t *p, int timeout_ms) {
  return WaitForSingleObject(p->process, timeout_ms < 0 ? INFINITE : (DWORD)timeout_ms) ==
                 WAIT_OBJECT_0 ? 0 : -1;
}

int tp_interrupt(tp_proc_t *p) {
  (void)p;
  return -1;
}

static void kill_and_reap(tp_proc_t *p) {
  if (WaitForSingleObject(p->process, 0) != WAIT_OBJECT_0) {
    TerminateProcess(p->process, 137);
    WaitForSingleObject(p->process, 30000);
  }
}

static void close_handles(tp_proc_t *p) {
  tp_close_stdin(p);
  if (p->out_r) CloseHandle(p->out_r);
  if (p->process) CloseHandle(p->process);
}

/* ------------------------------------------------------------------------------------ */
#else /* POSIX */

static void reader_main(void *arg) {
  tp_proc_t *p = (tp_proc_t *)arg;
  char buf[4096];
  for (;;) {
    ssize_t n = read(p->out_r, buf, sizeof buf);
    if (n > 0) {
      append_output(p, buf, (size_t)n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else {
      break;
    }
  }
  set_eof(p);
}

static void reaper_main(void *arg) {
  tp_proc_t *p = (tp_proc_t *)arg;
  int status = 0, code;
  while (waitpid(p->pid, &status, 0) < 0 && errno == EINTR) {
  }
  code = WIFEXITED(status) ? WEXITSTATUS(status)
         : WIFSIGNALED(status) ? 128 + WTERMSIG(status)
                               : 255;
  tt_mutex_lock(&p->exit_lock);
  p->exit_code = code;
  p->exited = 1;
  tt_mutex_unlock(&p->exit_lock);
  tt_counter_add(&p->changes, 1);
}

/* In the forked child: only async-signal-safe calls until exec. */
static void child_exec(const char *path, char *const *argv, int in_r, int out_w, int status_w,
                       pid_t parent) {
  sigset_t none;
  prctl(PR_SET_PDEATHSIG, SIGKILL); /* dies with the thread that started it */
  if (getppid() != parent) _exit(127);
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL); /* exec keeps the mask: start clean */
  if (dup2(in_r, 0) < 0 || dup2(out_w, 1) < 0 || dup2(out_w, 2) < 0) _exit(127);
  if (status_w != 3 && dup2(status_w, 3) < 0) _exit(127);
  fcntl(3, F_SETFD, FD_CLOEXEC);
#  ifdef SYS_close_range
  syscall(SYS_close_range, 4u, ~0u, 0u); /* nothing else of the test's leaks in */
#  endif
  execv(path, argv);
  {
    int e = errno;
    ssize_t rc = write(3, &e, sizeof e);
    (void)rc;
  }
  _exit(127);
}

tp_proc_t *tp_start(const char *const *argv, char *err, size_t errcap) {
  int in[2] = {-1, -1}, out[2] = {-1, -1}, status[2] = {-1, -1};
  tp_proc_t *p = (tp_proc_t *)calloc(1, sizeof *p);
  pid_t pid, parent = getpid();
  int e = 0;
  ssize_t n;

  if (p == NULL) {
    snprintf(err, errcap, "out of memory");
    return NULL;
  }
  set_name(p, argv[0]);
  if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0 ||
      pipe2(status, O_CLOEXEC) != 0) {
    snprintf(err, errcap, "pipe: %s", strerror(errno));
    goto fail;
  }
  pid = fork();
  if (pid < 0) {
    snprintf(err, errcap, "fork: %s", strerror(errno));
    goto fail;
  }
  if (pid == 0) child_exec(argv[0], (char *const *)argv, in[0], out[1], status[1], parent);

  close(in[0]);
  close(out[1]);
  close(status[1]);
  in[0] = out[1] = status[1] = -1;
  /* The status pipe closes at exec (CLOEXEC) or carries errno when exec failed. */
  do {
    n = read(status[0], &e, sizeof e);
  } while (n < 0 && errno == EINTR);
  close(status[0]);
  if (n == (ssize_t)sizeof e) {
    snprintf(err, errcap, "cannot start %s: %s", argv[0], strerror(e));
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
    }
    close(in[1]);
    close(out[0]);
    free(p);
    return NULL;
  }

  tt_mutex_init(&p->lock);
  tt_mutex_init(&p->exit_lock);
  tt_counter_init(&p->changes);
  p->pid = pid;
  p->in_w = in[1];
  p->out_r = out[0];
  p->reader = tt_thread_start(reader_main, p);
  p->reaper = tt_thread_start(reaper_main, p);
  if (p->reader == NULL || p->reaper == NULL) {
    snprintf(err, errcap, "cannot start the reader threads");
    tp_free(p);
    return NULL;
  }
  return p;

fail:
  if (in[0] >= 0) close(in[0]), close(in[1]);
  if (out[0] >= 0) close(out[0]), close(out[1]);
  if (status[0] >= 0) close(status[0]), close(status[1]);
  free(p);
  return NULL;
}

/* A write to a child that exited raises SIGPIPE; the tests treat SIGPIPE as a library
 * bug, so keep it blocked here and consume it. */
int tp_write(tp_proc_t *p, const char *text) {
  sigset_t pipe_set, old;
  size_t n = strlen(text);
  int rc = 0;
  if (p->in_w < 0) return -1;
  sigemptyset(&pipe_set);
  sigaddset(&pipe_set, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
  while (n > 0) {
    ssize_t put = write(p->in_w, text, n);
    if (put < 0 && errno == EINTR) continue;
    if (put < 0) {
      if (errno == EPIPE) {
        struct timespec zero = {0, 0};
        while (sigtimedwait(&pipe_set, NULL, &zero) == SIGPIPE) {
        }
      }
      rc = -1;
      break;
    }
    text += put;
    n -= (size_t)put;
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  return rc;
}

void tp_close_stdin(tp_proc_t *p) {
  if (p->in_w >= 0) close(p->in_w);
  p->in_w = -1;
}

static int has_exited(tp_proc_t *p, int *code) {
  int done;
  tt_mutex_lock(&p->exit_lock);
  done = p->exited;
  if (done) *code = p->exit_code;
  tt_mutex_unlock(&p->exit_lock);
  return done;
}

static int wait_exited(tp_proc_t *p, int timeout_ms) {
  int64_t deadline = tt_now_ms() + timeout_ms;
  int code;
  for (;;) {
    int64_t gen = tt_counter_get(&p->changes), left;
    if (has_exited(p, &code)) return 0;
    left = deadline - tt_now_ms();
    if (timeout_ms >= 0 && left <= 0) return -1;
    tt_counter_wait(&p->changes, gen + 1, timeout_ms < 0 ? -1 : (int)left);
  }
}

int tp_interrupt(tp_proc_t *p) {
  int code;
  if (has_exited(p, &code)) return -1;
  return kill(p->pid, SIGINT) == 0 ? 0 : -1;
}

static void kill_and_reap(tp_proc_t *p) {
  int code;
  if (p->reaper == NULL) {
    kill(p->pid, SIGKILL);
    while (waitpid(p->pid, NULL, 0) < 0 && errno == EINTR) {
    }
    return;
  }
  if (!has_exited(p, &code)) kill(p->pid, SIGKILL); /* not reaped yet: the pid is ours */
  tt_thread_join(p->reaper);
  p->reaper = NULL;
}

static void close_handles(tp_proc_t *p) {
  tp_close_stdin(p);
  if (p->out_r >= 0) close(p->out_r);
  tt_mutex_destroy(&p->exit_lock);
}

#endif

/* ------------------------------------------------------------------------------------ */
/* Common.                                                                               */

static int mem_contains(const char *s, size_t n, const char *needle) {
  size_t k = strlen(needle), i;
  if (k == 0) return 1;
  for (i = 0; i + k <= n; i++)
    if (s[i] == needle[0] && memcmp(s + i, needle, k) == 0) return 1;
  return 0;
}

size_t tp_mark(tp_proc_t *p) {
  size_t n;
  tt_mutex_lock(&p->lock);
  n = p->out_len;
  tt_mutex_unlock(&p->lock);
  return n;
}

long tp_wait_line(tp_proc_t *p, size_t from, const char *needle, char *line, size_t cap,
                  int timeout_ms) {
  int64_t deadline = tt_now_ms() + timeout_ms;
  size_t pos = from;
  int first = 1;
  for (;;) {
    int64_t gen = tt_counter_get(&p->changes), left;
    int eof;
    tt_mutex_lock(&p->lock);
    if (first && pos > 0 && pos <= p->out_len && p->out[pos - 1] != '\n') {
      /* The mark fell inside a line written before it: start after that line. */
      char *nl = (char *)memchr(p->out + pos, '\n', p->out_len - pos);
      if (nl == NULL) {
        tt_mutex_unlock(&p->lock);
        goto wait;
      }
      pos = (size_t)(nl - p->out) + 1;
    }
    first = 0;
    while (pos < p->out_len) {
      const char *start = p->out + pos;
      const char *nl = (const char *)memchr(start, '\n', p->out_len - pos);
      size_t n;
      if (nl == NULL) break; /* an incomplete line: wait for the rest */
      n = (size_t)(nl - start);
      if (n > 0 && start[n - 1] == '\r') n--;
      pos = (size_t)(nl - p->out) + 1;
      if (mem_contains(start, n, needle)) {
        if (line != NULL && cap > 0) {
          size_t k = n < cap - 1 ? n : cap - 1;
          memcpy(line, start, k);
          line[k] = '\0';
        }
        tt_mutex_unlock(&p->lock);
        return (long)pos;
      }
    }
    eof = p->eof;
    tt_mutex_unlock(&p->lock);
    if (eof) return TP_EOF;
  wait:
    left = deadline - tt_now_ms();
    if (left <= 0) return TP_TIMEOUT;
    tt_counter_wait(&p->changes, gen + 1, (int)left);
  }
}

int tp_wait_exit(tp_proc_t *p, int timeout_ms, int *code) {
  int64_t deadline = tt_now_ms() + timeout_ms;
  int c = 0;
  if (wait_exited(p, timeout_ms) != 0) return TP_TIMEOUT;
  /* The output ends once the child (and anything it started) closed the pipe. */
  for (;;) {
    int64_t gen = tt_counter_get(&p->changes), left;
    int eof;
    tt_mutex_lock(&p->lock);
    eof = p->eof;
    tt_mutex_unlock(&p->lock);
    if (eof) break;
    left = deadline - tt_now_ms();
    if (left <= 0) return TP_TIMEOUT;
    tt_counter_wait(&p->changes, gen + 1, (int)left);
  }
  has_exited(p, &c);
  if (code) *code = c;
  return 0;
}

char *tp_output(tp_proc_t *p) {
  char *s;
  tt_mutex_lock(&p->lock);
  s = (char *)malloc(p->out_len + 1);
  if (s != NULL) {
    if (p->out_len) memcpy(s, p->out, p->out_len);
    s[p->out_len] = '\0';
  }
  tt_mutex_unlock(&p->lock);
  return s;
}

void tp_dump(tp_proc_t *p, FILE *out, const char *prefix) {
  char *s = tp_output(p), *line, *next;
  if (s == NULL) return;
  for (line = s; *line; line = next) {
    size_t n;
    next = strchr(line, '\n');
    n = next ? (size_t)(next - line) : strlen(line);
    if (n > 0 && line[n - 1] == '\r') n--;
    fprintf(out, "%s%.*s\n", prefix, (int)n, line);
    next = next ? next + 1 : line + strlen(line);
  }
  fflush(out);
  free(s);
}

void tp_free(tp_proc_t *p) {
  if (p == NULL) return;
  tp_close_stdin(p);
  kill_and_reap(p);
  if (p->reader) tt_thread_join(p->reader); /* EOF: the child is gone */
  close_handles(p);
  tt_counter_destroy(&p->changes);
  tt_mutex_destroy(&p->lock);
  free(p->out);
  free(p);
}

const char *tp_name(tp_proc_t *p) { return p->name; }

static void set_name(tp_proc_t *p, const char *path) {
  const char *base = path, *s;
  for (s = path; *s; s++)
    if (*s == '/' || *s == '\\') base = s + 1;
  snprintf(p->name, sizeof p->name, "%s", base);
}

void tp_fail_(tp_proc_t *p, const char *file, int srcline, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  fprintf(stderr, "\n--- %s output so far ---\n", p->name);
  tp_dump(p, stderr, "  | ");
  fprintf(stderr, "--- end of %s output ---\n", p->name);
  test_fail(file, srcline, "%s: %s", p->name, msg);
}

long tp_expect_line_(tp_proc_t *p, size_t from, const char *needle, char *line, size_t cap,
                     int timeout_ms, const char *file, int srcline) {
  long rc = tp_wait_line(p, from, needle, line, cap, timeout_ms);
  if (rc == TP_TIMEOUT)
    tp_fail_(p, file, srcline, "no output line containing \"%s\" within %d ms", needle,
             timeout_ms);
  if (rc == TP_EOF)
    tp_fail_(p, file, srcline, "output ended without a line containing \"%s\"", needle);
  return rc;
}

int tp_expect_exit_(tp_proc_t *p, int timeout_ms, const char *file, int srcline) {
  int code = -1;
  if (tp_wait_exit(p, timeout_ms, &code) != 0)
    tp_fail_(p, file, srcline, "still running %d ms after it should have exited", timeout_ms);
  return code;
}
