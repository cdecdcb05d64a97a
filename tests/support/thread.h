/*
 * thread.h -- portable threads, a mutex and a waitable counter for the iocpsrv tests.
 *
 * POSIX threads on Linux; Win32 threads, SRWLOCK and CONDITION_VARIABLE on Windows
 * (MinGW). Tests synchronise on tt_counter_t ("wait until the counter reaches N, with
 * a timeout") instead of sleeping; tt_sleep_ms is only for pacing a slow sender.
 */
#ifndef IOCPSRV_TEST_THREAD_H
#define IOCPSRV_TEST_THREAD_H

#include <stdint.h>

#ifdef _WIN32
#  ifndef WIN32_LEAN_AND_MEAN
#    define WIN32_LEAN_AND_MEAN
#  endif
#  include <winsock2.h>
#  include <windows.h>
#else
#  include <pthread.h>
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tt_thread_s tt_thread_t;

/* Start fn(arg) on a new thread. Returns NULL on failure. */
tt_thread_t *tt_thread_start(void (*fn)(void *arg), void *arg);
/* Wait for the thread to end and free it. */
void tt_thread_join(tt_thread_t *t);

typedef struct tt_mutex_s {
#ifdef _WIN32
  SRWLOCK lock;
#else
  pthread_mutex_t lock;
#endif
} tt_mutex_t;

void tt_mutex_init(tt_mutex_t *m);
void tt_mutex_destroy(tt_mutex_t *m);
void tt_mutex_lock(tt_mutex_t *m);
void tt_mutex_unlock(tt_mutex_t *m);

/* A counter that threads can wait on until it reaches a value. */
typedef struct tt_counter_s {
  tt_mutex_t m;
#ifdef _WIN32
  CONDITION_VARIABLE cv;
#else
  pthread_cond_t cv;
#endif
  int64_t value;
} tt_counter_t;

void tt_counter_init(tt_counter_t *c);
void tt_counter_destroy(tt_counter_t *c);
/* Add n (may be negative) and wake every waiter. Returns the new value. */
int64_t tt_counter_add(tt_counter_t *c, int64_t n);
void tt_counter_set(tt_counter_t *c, int64_t v);
int64_t tt_counter_get(tt_counter_t *c);
/* Wait until value >= target. Returns 0 when reached, -1 on timeout (timeout_ms < 0:
 * no limit). */
int tt_counter_wait(tt_counter_t *c, int64_t target, int timeout_ms);
/* Wait until value <= target (counting down). Same return values. */
int tt_counter_wait_le(tt_counter_t *c, int64_t target, int timeout_ms);

/* Milliseconds on a monotonic clock. */
int64_t tt_now_ms(void);
/* Unix time in milliseconds (wall clock). */
int64_t tt_wall_ms(void);
void tt_sleep_ms(int ms);

/* An id for the calling thread, comparable between threads. */
uint64_t tt_thread_self(void);

#ifdef __cplusplus
}
#endif

#endif /* IOCPSRV_TEST_THREAD_H */
