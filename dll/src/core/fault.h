/* Fault injection: every allocation and every OS call that can fail mid-run goes
 * through this seam, so a test build can make the Nth one fail (SQLite's way of
 * testing its out-of-memory and I/O-error paths).
 *
 * In the normal build (IOCPSRV_FAULT_INJECTION undefined) the wrappers are the plain
 * libc calls and fault_os() is a constant 0: nothing is left in the hot path.
 *
 * In the fault build (the iocpsrv_fault library, tests only) each site counts its
 * calls; iocpsrv_fault_arm(site, nth, persist) makes call number `nth` from now fail
 * (and every later one too when `persist`), and test points call a hook the test
 * registers, so a test can hold a worker at an exact place to widen a race window. */
#ifndef IOCPSRV_CORE_FAULT_H
#define IOCPSRV_CORE_FAULT_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "iocpsrv.h"

/* Where a fault can be injected. Appended only (the fault tests name them). */
typedef enum fault_site_e {
  FAULT_ALLOC = 0,      /* malloc, calloc, realloc (the library's own heap use) */
  FAULT_EPOLL_CTL = 1,  /* epoll_ctl on a client socket (Linux) */
  FAULT_ACCEPT = 2,     /* accept4 (Linux) / AcceptEx posting (Windows) */
  FAULT_SETSOCKOPT = 3, /* socket options on an accepted socket */
  FAULT_RECV_POST = 4,  /* WSARecv posting (Windows) */
  FAULT_SEND_POST = 5,  /* send (Linux) / WSASend posting (Windows) */
  FAULT_THREAD = 6,     /* thread creation (pthread_create / CreateThread) */
  FAULT_CONNECT = 7,    /* the socket of an outbound connect (fails as EMFILE) */
  FAULT_SITE_COUNT
} fault_site_t;

/* Places where a test may hold a worker (fault build only). */
typedef enum fault_point_e {
  FAULT_POINT_PROXY_PARSED = 1,     /* a PROXY header was parsed, before the host meets
                                       the connection; arg: the conn id */
  FAULT_POINT_PROXY_INTRODUCED = 2, /* after the connect callback/event for a PROXY
                                       client; arg: the conn id */
  FAULT_POINT_SEND_OWN = 3,         /* a send from a connection's own callback, before
                                       the queue limit is judged; arg: the conn id */
  FAULT_POINT_PULL_RESERVED = 4     /* a worker's pull batch has reserved room in the
                                       queue, before it fills it; arg: the conn id */
} fault_point_t;

typedef void (*iocpsrv_fault_hook_fn)(int point, uint64_t arg, void *ctx);

#ifdef IOCPSRV_FAULT_INJECTION

/* Test controls, exported by the fault build only (never in iocpsrv.def). */
/* Fail call number `nth` (1 = the next) at `site`; with `persist` every later one
 * too. nth 0 disarms. Resets the site's counters. */
IOCPSRV_API void IOCPSRV_CALL iocpsrv_fault_arm(int site, int64_t nth, int persist);
/* Calls at `site` since it was last armed. */
IOCPSRV_API int64_t IOCPSRV_CALL iocpsrv_fault_calls(int site);
/* Failures injected at `site` since it was last armed. */
IOCPSRV_API int64_t IOCPSRV_CALL iocpsrv_fault_failures(int site);
/* A function called at every test point (NULL: none). */
IOCPSRV_API void IOCPSRV_CALL iocpsrv_fault_set_hook(iocpsrv_fault_hook_fn fn, void *ctx);

/* Non-zero when this call at `site` must fail. */
int fault_os(fault_site_t site);
void fault_point(fault_point_t point, uint64_t arg);
void *srv_malloc(size_t n);
void *srv_calloc(size_t n, size_t size);
void *srv_realloc(void *p, size_t n);

#else

#  define fault_os(site) 0
#  define fault_point(point, arg) ((void)0)
#  define srv_malloc(n) malloc(n)
#  define srv_calloc(n, size) calloc(n, size)
#  define srv_realloc(p, n) realloc(p, n)

#endif

#define srv_free(p) free(p)

#endif
