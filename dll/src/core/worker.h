/* The worker module: worker threads, the one worker loop, and the pool that starts,
 * grows, shrinks and joins them (core/worker.c). */
#ifndef IOCPSRV_CORE_WORKER_H
#define IOCPSRV_CORE_WORKER_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "core/backend.h"
#include "core/platform.h"

typedef struct iocpsrv_s iocpsrv_t;
typedef struct conn_s conn_t;

enum { WORKER_FREE = 0, WORKER_RUNNING = 1, WORKER_EXITED = 2, WORKER_PARKED = 3 };

typedef struct worker_s {
  iocpsrv_t *srv;
  int index;
  srv_thread_t thread;
  atomic_int state;  /* WORKER_FREE, WORKER_RUNNING, WORKER_EXITED (not joined yet) */
  int retired;       /* left through the dynamic pool (already counted out) */
  uint8_t *rbuf;
  size_t rbuf_size;
  bk_event_t *events; /* what bk_wait fills: nevents of them */
  int nevents;
  int64_t now;
  conn_t *flush_head;
  conn_t *running;   /* the connection whose token this worker holds, if any */
  int defer_notify; /* queue connection work instead of running it (see run_batch) */
  uint64_t packets_in, bytes_in, packets_out, bytes_out; /* published once per batch */
  iocpsrv_buf_t batch[IOCPSRV_BATCH_MAX]; /* packets gathered for the packet-batch callback */
} worker_t;

/* The worker pool: a fixed set of workers, or, with IOCPSRV_OPT_POOL_MAX, a dynamic
 * one that a monitor thread grows while every worker is stuck in callbacks and shrinks
 * while workers sit idle. */
typedef struct pool_s {
  int dynamic;
  int min, max;
  srv_thread_t monitor;
  int monitor_running;
  srv_mutex_t lock;           /* with wake: the monitor's sleep, and quit */
  srv_cond_t wake;
  srv_cond_t unpark;          /* parked workers wait here (bk_caps.io_dies_with_thread) */
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

#endif
