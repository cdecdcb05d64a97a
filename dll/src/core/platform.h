/* The few OS primitives the core needs: mutex, condition variable, clocks and a
 * waitable object for pull mode. Header-only; pthreads + eventfd on Linux, SRWLOCK +
 * CONDITION_VARIABLE + an event on Windows. */
#ifndef IOCPSRV_CORE_PLATFORM_H
#define IOCPSRV_CORE_PLATFORM_H

#include <stdint.h>

/* A slow path kept out of line, so the hot path around it needs fewer registers. */
#if defined(__GNUC__)
#  define SRV_COLD __attribute__((noinline, cold))
#else
#  define SRV_COLD
#endif

#include "core/fault.h" /* srv_malloc, fault_os(FAULT_THREAD) */

#if defined(_WIN32)
#  ifndef WIN32_LEAN_AND_MEAN
#    define WIN32_LEAN_AND_MEAN
#  endif
#  include <winsock2.h>
#  include <ws2tcpip.h>
#  include <windows.h>

typedef SRWLOCK srv_mutex_t;
typedef CONDITION_VARIABLE srv_cond_t;
static inline void srv_mutex_init(srv_mutex_t *m) { InitializeSRWLock(m); }
static inline void srv_mutex_destroy(srv_mutex_t *m) { (void)m; }
static inline void srv_mutex_lock_os(srv_mutex_t *m) { AcquireSRWLockExclusive(m); }
static inline void srv_mutex_unlock_os(srv_mutex_t *m) { ReleaseSRWLockExclusive(m); }
static inline void srv_cond_init(srv_cond_t *c) { InitializeConditionVariable(c); }
static inline void srv_cond_destroy(srv_cond_t *c) { (void)c; }
static inline void srv_cond_signal(srv_cond_t *c) { WakeConditionVariable(c); }
static inline void srv_cond_broadcast(srv_cond_t *c) { WakeAllConditionVariable(c); }
/* Waits at most timeout_ms (negative = forever). */
static inline void srv_cond_wait_ms(srv_cond_t *c, srv_mutex_t *m, int64_t timeout_ms) {
  SleepConditionVariableSRW(c, m, timeout_ms < 0 ? INFINITE : (DWORD)timeout_ms, 0);
}
/* Threads: a plain function and argument on both systems. */
typedef HANDLE srv_thread_t;
typedef struct srv_thread_start_s { void (*fn)(void *); void *arg; } srv_thread_start_t;
static DWORD WINAPI srv_thread_trampoline_(LPVOID p) {
  srv_thread_start_t s = *(srv_thread_start_t *)p;
  free(p);
  s.fn(s.arg);
  return 0;
}
static inline int srv_thread_create(srv_thread_t *t, void (*fn)(void *), void *arg) {
  srv_thread_start_t *s = srv_malloc(sizeof *s);
  if (!s) return -1;
  s->fn = fn;
  s->arg = arg;
  *t = fault_os(FAULT_THREAD) ? NULL : CreateThread(NULL, 0, srv_thread_trampoline_, s, 0, NULL);
  if (!*t) {
    free(s);
    return -1;
  }
  return 0;
}
static inline void srv_thread_join(srv_thread_t t) {
  WaitForSingleObject(t, INFINITE);
  CloseHandle(t);
}
/* Nobody will join it: it cleans up after itself when it ends. */
static inline void srv_thread_detach(srv_thread_t t) { CloseHandle(t); }
static inline int srv_cpu_count(void) {
  SYSTEM_INFO si;
  GetSystemInfo(&si);
  return si.dwNumberOfProcessors > 0 ? (int)si.dwNumberOfProcessors : 1;
}

/* System-wide CPU time (all cores) so far, in arbitrary ticks: busy and total. */
static inline int srv_cpu_times(uint64_t *busy, uint64_t *total) {
  FILETIME idle, kernel, user;
  if (!GetSystemTimes(&idle, &kernel, &user)) return -1;
  uint64_t i = ((uint64_t)idle.dwHighDateTime << 32) | idle.dwLowDateTime;
  uint64_t k = ((uint64_t)kernel.dwHighDateTime << 32) | kernel.dwLowDateTime;
  uint64_t u = ((uint64_t)user.dwHighDateTime << 32) | user.dwLowDateTime;
  *total = k + u; /* kernel time includes idle time */
  *busy = *total - i;
  return 0;
}

static inline int64_t srv_now_ms(void) { return (int64_t)GetTickCount64(); }
static inline int64_t srv_unix_ms(void) {
  FILETIME ft;
  GetSystemTimeAsFileTime(&ft);
  uint64_t t = ((uint64_t)ft.dwHighDateTime << 32) | ft.dwLowDateTime;
  return (int64_t)(t / 10000 - UINT64_C(11644473600000));
}

/* Winsock, for the core's own name and address calls as much as for the backend's
 * sockets: once per server (create, destroy). */
static inline int srv_net_init(void) {
  WSADATA wsa;
  return WSAStartup(MAKEWORD(2, 2), &wsa) == 0 ? 0 : -1;
}
static inline void srv_net_cleanup(void) { WSACleanup(); }

/* Pull mode's waitable: a manual-reset event. */
typedef struct srv_waitable_s { HANDLE event; } srv_waitable_t;
static inline int srv_waitable_init(srv_waitable_t *w) {
  w->event = CreateEventW(NULL, TRUE, FALSE, NULL);
  return w->event ? 0 : -1;
}
static inline void srv_waitable_set(srv_waitable_t *w) { SetEvent(w->event); }
static inline void srv_waitable_reset(srv_waitable_t *w) { ResetEvent(w->event); }
static inline int64_t srv_waitable_handle(srv_waitable_t *w) { return (int64_t)(intptr_t)w->event; }
static inline void srv_waitable_destroy(srv_waitable_t *w) {
  if (w->event) CloseHandle(w->event);
  w->event = NULL;
}

#else
#  include <arpa/inet.h>
#  include <errno.h>
#  include <netdb.h>
#  include <netinet/in.h>
#  include <pthread.h>
#  include <sys/socket.h>
#  include <stdio.h>
#  include <stdlib.h>
#  include <sys/eventfd.h>
#  include <time.h>
#  include <unistd.h>

typedef pthread_mutex_t srv_mutex_t;
typedef pthread_cond_t srv_cond_t;
static inline void srv_mutex_init(srv_mutex_t *m) { pthread_mutex_init(m, NULL); }
static inline void srv_mutex_destroy(srv_mutex_t *m) { pthread_mutex_destroy(m); }
static inline void srv_mutex_lock_os(srv_mutex_t *m) { pthread_mutex_lock(m); }
static inline void srv_mutex_unlock_os(srv_mutex_t *m) { pthread_mutex_unlock(m); }
static inline void srv_cond_init(srv_cond_t *c) {
  pthread_condattr_t a;
  pthread_condattr_init(&a);
  pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
  pthread_cond_init(c, &a);
  pthread_condattr_destroy(&a);
}
static inline void srv_cond_destroy(srv_cond_t *c) { pthread_cond_destroy(c); }
static inline void srv_cond_signal(srv_cond_t *c) { pthread_cond_signal(c); }
static inline void srv_cond_broadcast(srv_cond_t *c) { pthread_cond_broadcast(c); }
/* Threads: a plain function and argument on both systems. */
typedef pthread_t srv_thread_t;
typedef struct srv_thread_start_s { void (*fn)(void *); void *arg; } srv_thread_start_t;
static void *srv_thread_trampoline_(void *p) {
  srv_thread_start_t s = *(srv_thread_start_t *)p;
  free(p);
  s.fn(s.arg);
  return NULL;
}
static inline int srv_thread_create(srv_thread_t *t, void (*fn)(void *), void *arg) {
  srv_thread_start_t *s = srv_malloc(sizeof *s);
  if (!s) return -1;
  s->fn = fn;
  s->arg = arg;
  if (fault_os(FAULT_THREAD) || pthread_create(t, NULL, srv_thread_trampoline_, s) != 0) {
    free(s);
    return -1;
  }
  return 0;
}
static inline void srv_thread_join(srv_thread_t t) { pthread_join(t, NULL); }
static inline void srv_thread_detach(srv_thread_t t) { pthread_detach(t); }

/* System-wide CPU time (all cores) so far, in clock ticks: busy and total (the first
 * line of /proc/stat). */
static inline int srv_cpu_times(uint64_t *busy, uint64_t *total) {
  FILE *f = fopen("/proc/stat", "r");
  if (!f) return -1;
  unsigned long long v[8] = {0};
  int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2],
                 &v[3], &v[4], &v[5], &v[6], &v[7]);
  fclose(f);
  if (n < 4) return -1;
  uint64_t all = 0;
  for (int i = 0; i < 8; i++) all += v[i];
  *total = all;
  *busy = all - v[3] - v[4]; /* minus idle and iowait */
  return 0;
}
static inline int srv_cpu_count(void) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? (int)n : 1;
}

static inline int64_t srv_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
static inline int64_t srv_unix_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
static inline void srv_cond_wait_ms(srv_cond_t *c, srv_mutex_t *m, int64_t timeout_ms) {
  if (timeout_ms < 0) {
    pthread_cond_wait(c, m);
    return;
  }
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  ts.tv_sec += timeout_ms / 1000;
  ts.tv_nsec += (timeout_ms % 1000) * 1000000;
  if (ts.tv_nsec >= 1000000000) {
    ts.tv_sec++;
    ts.tv_nsec -= 1000000000;
  }
  pthread_cond_timedwait(c, m, &ts);
}

static inline int srv_net_init(void) { return 0; }
static inline void srv_net_cleanup(void) {}

/* Pull mode's waitable: an eventfd, readable while events wait. */
typedef struct srv_waitable_s { int fd; } srv_waitable_t;
static inline int srv_waitable_init(srv_waitable_t *w) {
  w->fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  return w->fd >= 0 ? 0 : -1;
}
static inline void srv_waitable_set(srv_waitable_t *w) {
  uint64_t one = 1;
  ssize_t r = write(w->fd, &one, sizeof one);
  (void)r; /* EAGAIN only if the counter is saturated: it is readable either way */
}
static inline void srv_waitable_reset(srv_waitable_t *w) {
  uint64_t v;
  ssize_t r = read(w->fd, &v, sizeof v);
  (void)r; /* EAGAIN: already reset */
}
static inline int64_t srv_waitable_handle(srv_waitable_t *w) { return w->fd; }
static inline void srv_waitable_destroy(srv_waitable_t *w) {
  if (w->fd >= 0) close(w->fd);
  w->fd = -1;
}
#endif

/* Checks (core/check.c): compiled in for Debug builds, the asan and tsan presets
 * (IOCPSRV_DEBUG_CHECKS) and the fault-injection test build; out of Release. They
 * assert the preconditions the code's comments state: "lock held" (each thread notes
 * the engine locks it holds), "token held", the connection state machine, and "no
 * host callback runs with an engine lock held" at every call into the host. */
#if defined(IOCPSRV_FAULT_INJECTION) || defined(IOCPSRV_DEBUG_CHECKS) || !defined(NDEBUG)
#  define IOCPSRV_CHECKS 1
void srv_check_failed(const char *what, const char *file, int line);
void srv_lock_noted(const void *m);
void srv_unlock_noted(const void *m);
int srv_lock_is_held(const void *m);
int srv_locks_count(void);
#  define SRV_ASSERT(cond) \
    ((cond) ? (void)0 : srv_check_failed(#cond, __FILE__, __LINE__))
static inline void srv_mutex_lock(srv_mutex_t *m) {
  srv_mutex_lock_os(m);
  srv_lock_noted(m);
}
static inline void srv_mutex_unlock(srv_mutex_t *m) {
  srv_unlock_noted(m);
  srv_mutex_unlock_os(m);
}
#  define SRV_ASSERT_HELD(m) SRV_ASSERT(srv_lock_is_held(m))
#  define SRV_ASSERT_NOT_HELD(m) SRV_ASSERT(!srv_lock_is_held(m))
#  define SRV_ASSERT_NO_LOCKS() SRV_ASSERT(srv_locks_count() == 0)
#else
#  define SRV_ASSERT(cond) ((void)0)
#  define SRV_ASSERT_HELD(m) ((void)0)
#  define SRV_ASSERT_NOT_HELD(m) ((void)0)
#  define SRV_ASSERT_NO_LOCKS() ((void)0)
#  define srv_mutex_lock srv_mutex_lock_os
#  define srv_mutex_unlock srv_mutex_unlock_os
#endif

#endif
