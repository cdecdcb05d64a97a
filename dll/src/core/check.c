/* The checks' run-time half (see platform.h): the engine locks each thread holds, and
 * the failure report. Empty when checks are compiled out. */
#include "core/platform.h"

#ifdef IOCPSRV_CHECKS

#include <stdio.h>
#include <stdlib.h>

/* Deepest nesting the engine uses is three (life, connection, queue); room to spare. */
#define HELD_MAX 16
static _Thread_local const void *held[HELD_MAX];
static _Thread_local int nheld;

void srv_check_failed(const char *what, const char *file, int line) {
  fprintf(stderr, "iocpsrv: internal check failed: %s (%s:%d)\n", what, file, line);
  fflush(stderr);
  abort();
}

void srv_lock_noted(const void *m) {
  SRV_ASSERT(!srv_lock_is_held(m)); /* engine locks are not recursive */
  SRV_ASSERT(nheld < HELD_MAX);
  held[nheld++] = m;
}

void srv_unlock_noted(const void *m) {
  for (int i = nheld - 1; i >= 0; i--) {
    if (held[i] != m) continue;
    held[i] = held[--nheld];
    return;
  }
  srv_check_failed("unlocking a lock this thread does not hold", __FILE__, __LINE__);
}

int srv_lock_is_held(const void *m) {
  for (int i = 0; i < nheld; i++)
    if (held[i] == m) return 1;
  return 0;
}

int srv_locks_count(void) { return nheld; }

#else
typedef int checks_are_off; /* ISO C: a translation unit must declare something */
#endif
