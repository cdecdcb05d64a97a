/* The fault build's counters and hook (see fault.h). Compiled into every build; empty
 * unless IOCPSRV_FAULT_INJECTION is defined. */
#include "core/fault.h"

#include <stdio.h>

#include "core/platform.h"



#ifdef IOCPSRV_FAULT_INJECTION

#include <stdatomic.h>

typedef struct fault_state_s {
  atomic_int_fast64_t calls, failures, nth;
  atomic_int persist;
} fault_state_t;

static fault_state_t states[FAULT_SITE_COUNT];
static _Atomic(iocpsrv_fault_hook_fn) hook;
static _Atomic(void *) hook_ctx;

void IOCPSRV_CALL iocpsrv_fault_arm(int site, int64_t nth, int persist) {
  if (site < 0 || site >= FAULT_SITE_COUNT) return;
  fault_state_t *s = &states[site];
  atomic_store(&s->nth, 0); /* disarmed while the counters reset */
  atomic_store(&s->calls, 0);
  atomic_store(&s->failures, 0);
  atomic_store(&s->persist, persist);
  atomic_store(&s->nth, nth);
}

int64_t IOCPSRV_CALL iocpsrv_fault_calls(int site) {
  return site >= 0 && site < FAULT_SITE_COUNT ? atomic_load(&states[site].calls) : -1;
}

int64_t IOCPSRV_CALL iocpsrv_fault_failures(int site) {
  return site >= 0 && site < FAULT_SITE_COUNT ? atomic_load(&states[site].failures) : -1;
}

void IOCPSRV_CALL iocpsrv_fault_set_hook(iocpsrv_fault_hook_fn fn, void *ctx) {
  atomic_store(&hook_ctx, ctx);
  atomic_store(&hook, fn);
}

int fault_os(fault_site_t site) {
  fault_state_t *s = &states[site];
  int64_t n = atomic_fetch_add(&s->calls, 1) + 1;
  int64_t nth = atomic_load(&s->nth);
  int fail = nth > 0 && (n == nth || (n > nth && atomic_load(&s->persist)));
  if (fail) atomic_fetch_add(&s->failures, 1);
  return fail;
}

void fault_point(fault_point_t point, uint64_t arg) {
  iocpsrv_fault_hook_fn fn = atomic_load(&hook);
  if (fn) fn((int)point, arg, atomic_load(&hook_ctx));
}

void *srv_malloc(size_t n) { return fault_os(FAULT_ALLOC) ? NULL : malloc(n); }
void *srv_calloc(size_t n, size_t size) {
  return fault_os(FAULT_ALLOC) ? NULL : calloc(n, size);
}
void *srv_realloc(void *p, size_t n) { return fault_os(FAULT_ALLOC) ? NULL : realloc(p, n); }

#else
typedef int fault_build_is_off; /* ISO C: a translation unit must declare something */
#endif
