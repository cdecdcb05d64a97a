/* thread.c -- see thread.h. */
#ifndef _WIN32
#  define _GNU_SOURCE
#endif
#include "thread.h"

#include <stdlib.h>

#ifdef _WIN32
#  include <process.h>
#else
#  include <errno.h>
#  include <sys/syscall.h>
#  include <time.h>
#  include <unistd.h>
#endif

struct tt_thread_s {
  void (*fn)(void *);
  void *arg;
#ifdef _WIN32
  HANDLE h;
#else
  pthread_t t;
#endif
};

#ifdef _WIN32
static unsigned __stdcall tt_trampoline(void *p) {
  tt_thread_t *t = (tt_thread_t *)p;
  t->fn(t->arg);
  return 0;
}
#else
static void *tt_trampoline(void *p) {
  tt_thread_t *t = (tt_thread_t *)p;
  t->fn(t->arg);
  return NULL;
}
#endif

tt_thread_t *tt_thread_start(void (*fn)(void *arg), void *arg) {
  tt_thread_t *t = (tt_thread_t *)calloc(1, sizeof *t);
  if (!t) return NULL;
  t->fn = fn;
  t->arg = arg;
#ifdef _WIN32
  t->h = (HANDLE)_beginthreadex(NULL, 256 * 1024, tt_trampoline, t, 0, NULL);
  if (!t->h) {
    free(t);
    return NULL;
  }
#else
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  /* Tests start hundreds of client threads: keep their stacks small. */
  pthread_attr_setstacksize(&attr, 256 * 1024);
  int rc = pthread_create(&t->t, &attr, tt_trampoline, t);
  pthread_attr_destroy(&attr);
  if (rc != 0) {
    free(t);
    return NULL;
  }
#endif
  return t;
}

void tt_thread_join(tt_thread_t *t) {
  if (!t) return;
#ifdef _WIN32
  WaitForSingleObject(t->h, INFINITE);
  CloseHandle(t->h);
#else
  pthread_join(t->t, NULL);
#endif
  free(t);
}

void tt_mutex_init(tt_mutex_t *m) {
#ifdef _WIN32
  InitializeSRWLock(&m->lock);
#else
  pthread_mutex_init(&m->lock, NULL);
#endif
}

void tt_mutex_destroy(tt_mutex_t *m) {
#ifdef _WIN32
  (void)m;
#else
  pthread_mutex_destroy(&m->lock);
#endif
}

void tt_mutex_lock(tt_mutex_t *m) {
#ifdef _WIN32
  AcquireSRWLockExclusive(&m->lock);
#else
  pthread_mutex_lock(&m->lock);
#endif
}

void tt_mutex_unlock(tt_mutex_t *m) {
#ifdef _WIN32
  ReleaseSRWLockExclusive(&m->lock);
#else
  pthread_mutex_unlock(&m->lock);
#endif
}

void tt_counter_init(tt_counter_t *c) {
  tt_mutex_init(&c->m);
#ifdef _WIN32
  InitializeConditionVariable(&c->cv);
#else
  pthread_condattr_t a;
  pthread_condattr_init(&a);
  pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
  pthread_cond_init(&c->cv, &a);
  pthread_condattr_destroy(&a);
#endif
  c->value = 0;
}

void tt_counter_destroy(tt_counter_t *c) {
#ifndef _WIN32
  pthread_cond_destroy(&c->cv);
#endif
  tt_mutex_destroy(&c->m);
}

static void tt_counter_broadcast(tt_counter_t *c) {
#ifdef _WIN32
  WakeAllConditionVariable(&c->cv);
#else
  pthread_cond_broadcast(&c->cv);
#endif
}

int64_t tt_counter_add(tt_counter_t *c, int64_t n) {
  tt_mutex_lock(&c->m);
  int64_t v = (c->value += n);
  tt_counter_broadcast(c);
  tt_mutex_unlock(&c->m);
  return v;
}

void tt_counter_set(tt_counter_t *c, int64_t v) {
  tt_mutex_lock(&c->m);
  c->value = v;
  tt_counter_broadcast(c);
  tt_mutex_unlock(&c->m);
}

int64_t tt_counter_get(tt_counter_t *c) {
  tt_mutex_lock(&c->m);
  int64_t v = c->value;
  tt_mutex_unlock(&c->m);
  return v;
}

/* Wait on the condition variable for at most ms (caller holds the mutex). */
static void tt_counter_sleep(tt_counter_t *c, int64_t ms) {
#ifdef _WIN32
  SleepConditionVariableSRW(&c->cv, &c->m.lock, (DWORD)ms, 0);
#else
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  ts.tv_sec += (time_t)(ms / 1000);
  ts.tv_nsec += (long)(ms % 1000) * 1000000L;
  if (ts.tv_nsec >= 1000000000L) {
    ts.tv_sec++;
    ts.tv_nsec -= 1000000000L;
  }
  pthread_cond_timedwait(&c->cv, &c->m.lock, &ts);
#endif
}

static int tt_counter_wait_impl(tt_counter_t *c, int64_t target, int timeout_ms, int up) {
  int64_t deadline = timeout_ms < 0 ? -1 : tt_now_ms() + timeout_ms;
  int rc = 0;
  tt_mutex_lock(&c->m);
  while (up ? c->value < target : c->value > target) {
    int64_t left = 1000;
    if (deadline >= 0) {
      left = deadline - tt_now_ms();
      if (left <= 0) {
        rc = -1;
        break;
      }
    }
    tt_counter_sleep(c, left);
  }
  tt_mutex_unlock(&c->m);
  return rc;
}

int tt_counter_wait(tt_counter_t *c, int64_t target, int timeout_ms) {
  return tt_counter_wait_impl(c, target, timeout_ms, 1);
}

int tt_counter_wait_le(tt_counter_t *c, int64_t target, int timeout_ms) {
  return tt_counter_wait_impl(c, target, timeout_ms, 0);
}

int64_t tt_now_ms(void) {
#ifdef _WIN32
  return (int64_t)GetTickCount64();
#else
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
#endif
}

int64_t tt_wall_ms(void) {
#ifdef _WIN32
  FILETIME ft;
  GetSystemTimeAsFileTime(&ft);
  uint64_t t = ((uint64_t)ft.dwHighDateTime << 32) | ft.dwLowDateTime;
  /* 100 ns ticks since 1601 -> ms since 1970. */
  return (int64_t)(t / 10000ULL) - 11644473600000LL;
#else
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
#endif
}

void tt_sleep_ms(int ms) {
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

uint64_t tt_thread_self(void) {
#ifdef _WIN32
  return (uint64_t)GetCurrentThreadId();
#else
  return (uint64_t)syscall(SYS_gettid);
#endif
}
