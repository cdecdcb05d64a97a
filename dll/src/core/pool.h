/* The worker pool: a fixed set of workers, or, with IOCPSRV_OPT_POOL_MAX, a dynamic
 * one that a monitor thread grows while every worker is stuck in callbacks and shrinks
 * while workers sit idle. */
#ifndef IOCPSRV_CORE_POOL_H
#define IOCPSRV_CORE_POOL_H

#include <stdatomic.h>
#include <stdint.h>

#include "core/platform.h"

typedef struct iocpsrv_s iocpsrv_t;
typedef struct worker_s worker_t;

enum { WORKER_FREE = 0, WORKER_RUNNING = 1, WORKER_EXITED = 2, WORKER_PARKED = 3 };

typedef struct pool_s {
  int dynamic;
  int min, max;
  srv_thread_t monitor;
  int monitor_running;
  srv_mutex_t lock;           /* with wake: the monitor's sleep, and quit */
  srv_cond_t wake;
  srv_cond_t unpark;          /* parked workers wait here (BK_PARK_RETIRED) */
  int quit;
  atomic_int retire_requests; /* workers asked to retire, not yet gone */
  atomic_uint peak;
  atomic_uint_fast64_t grows, shrinks;
  int cpu_vetoed;             /* growth stopped by POOL_CPU_HIGH until CPU_LOW */
  uint64_t cpu_busy, cpu_total;
} pool_t;

/* Start the initial workers (and the monitor). 0 or a negative IOCPSRV_E code. */
int pool_start(iocpsrv_t *srv);
/* Stop the monitor, make every worker return, join them all. */
void pool_stop(iocpsrv_t *srv);
/* Called by a worker after each wait: non-zero means "retire now". */
int pool_worker_should_retire(worker_t *w);
/* A retired worker on a backend whose I/O dies with its thread waits here instead of
 * exiting. Returns 1 when the pool takes it back, 0 when the server stops. */
int pool_park(worker_t *w);

/* The thread body (engine.c). */
void engine_worker_main(void *arg);

#endif
