/* Worker threads: the thread locals, the one worker loop every backend shares (wait,
 * act on the batch, run the queued work), the thread body and the pool that runs them.
 *
 * The pool. Fixed (the default): IOCPSRV_OPT_WORKER_THREADS workers for the server's run.
 *
 * Dynamic (IOCPSRV_OPT_POOL_MAX > 0): the 2001 article's m_nThreadPoolMin/Max with its
 * CPU thresholds, built. A monitor thread samples the pool a few times per busy period:
 *   - grow: every worker has been away from its wait (inside callbacks) for
 *     POOL_BUSY_MS, fewer than POOL_MAX run, and the CPU is not saturated
 *     (POOL_CPU_HIGH, with POOL_CPU_LOW as the hysteresis to resume) -> one more worker;
 *   - shrink: at least one worker has been waiting at every sample for POOL_IDLE_MS
 *     and more than POOL_MIN run -> ask one worker to retire; the next worker to come
 *     back from a wait takes the request and returns from its loop.
 * "Away from its wait" is the engine's idle_workers count, so growth needs no hook in
 * the callback path. Slots of retired workers are joined and reused by the monitor.
 *
 * Where overlapped I/O may die with the thread that issued it (Wine cancels it; old
 * Windows did too: bk_caps.io_dies_with_thread), a retired worker parks instead of
 * exiting, and growth wakes a parked worker before it starts a new one. */
#include "core/internal.h"

ENGINE_TLS worker_t *tls_worker;
ENGINE_TLS iocpsrv_t *tls_batch_srv;
ENGINE_TLS uint64_t tls_batch_seq;

int engine_in_worker_of(iocpsrv_t *srv) { return tls_worker && tls_worker->srv == srv; }

static void publish_stats(iocpsrv_t *srv, worker_t *w) {
  if (w->packets_in) engine_stat_add(&srv->stats.packets_in, w->packets_in);
  if (w->bytes_in) engine_stat_add(&srv->stats.bytes_in, w->bytes_in);
  if (w->packets_out) engine_stat_add(&srv->stats.packets_out, w->packets_out);
  if (w->bytes_out) engine_stat_add(&srv->stats.bytes_out, w->bytes_out);
  w->packets_in = w->bytes_in = w->packets_out = w->bytes_out = 0;
}

/* After each batch of events: deferred flushes, stats, the periodic sweep. Returns
 * how long the worker may wait for the next event, in ms. */
static int after_batch(worker_t *w) {
  iocpsrv_t *srv = w->srv;
  flush_deferred(w);
  publish_stats(srv, w);
  w->now = srv_now_ms();
  sweep_if_due(srv, w);
  return srv->sweep_period_ms;
}

/* Called by a worker after each wait: non-zero means "retire now". */
static int should_retire(worker_t *w) {
  pool_t *p = &w->srv->pool;
  int want = atomic_load(&p->retire_requests);
  while (want > 0) {
    if (atomic_compare_exchange_weak(&p->retire_requests, &want, want - 1)) {
      /* Counted out now, not at thread exit, so the monitor never sees it twice. */
      atomic_fetch_sub(&w->srv->running_workers, 1);
      w->retired = 1;
      atomic_fetch_add(&p->shrinks, 1);
      return 1;
    }
  }
  return 0;
}

static int dispatch(worker_t *w, const bk_event_t *e) {
  if (e->kind == BK_CONN) conn_event(w, e);
  return e->kind == BK_QUIT; /* BK_WAKE: engine_run_tasks follows every batch */
}

/* One batch from the wait. Events 2..n only queue their connection's work, the first
 * runs here (see engine_run_tasks); with accepted clients in the batch, the first
 * client's connect callback runs here and every connection event is queued, like the
 * other clients, so none waits behind a connect callback. Queued work is this worker's
 * to run next, or another's if this one gets stuck. Returns 1 if the batch told this
 * worker to quit. */
static int run_batch(worker_t *w, const bk_event_t *ev, int n) {
  int quit = 0, first = -1, rest = n;
  for (int i = 0; i < n; i++)
    if (ev[i].kind == BK_ACCEPT && first < 0) first = i;
  w->defer_notify = 1;
  for (int i = 1; i < n; i++) quit |= dispatch(w, &ev[i]);
  w->defer_notify = first >= 0;
  if (n > 0) quit |= dispatch(w, &ev[0]);
  /* The other clients go to the run queue before the first one's connect callback
   * runs (while it is full, they are served here after all). */
  for (int i = first + 1; first >= 0 && i < n && rest == n; i++)
    if (ev[i].kind == BK_ACCEPT && accept_push(w->srv, &ev[i])) rest = i;
  w->defer_notify = 0;
  if (first >= 0) engine_accept(w, ev[first].sock, &ev[first].peer);
  for (int i = rest; i < n; i++)
    if (ev[i].kind == BK_ACCEPT) engine_accept(w, ev[i].sock, &ev[i].peer);
  return quit;
}

/* The worker loop, the same on every backend: wait, act on the batch, run the queued
 * work, publish, sweep, until the wait says quit or the pool retires this worker. */
static void worker_loop(worker_t *w) {
  iocpsrv_t *srv = w->srv;
  int wait_ms = after_batch(w);
  for (;;) {
    if (!worker_may_sleep(w)) {
      engine_run_tasks(w);
      wait_ms = after_batch(w);
      continue;
    }
    int n = bk_wait(&srv->bk, w->events, w->nevents, wait_ms);
    worker_woke(w);
    if (n < 0) return;
    w->now = srv_now_ms();
    int quit = run_batch(w, w->events, n);
    engine_run_tasks(w);
    wait_ms = after_batch(w);
    if (quit || should_retire(w)) return;
  }
}

#define ACCEPTED_MAX 4096 /* accepted clients queued at most (accept_push) */

static int fixed_count(iocpsrv_t *srv) {
  return srv->opt.worker_threads ? (int)srv->opt.worker_threads : 2 * srv_cpu_count();
}

/* Take back a parked worker; 0 or -1 when none is parked. */
static int unpark_one(iocpsrv_t *srv) {
  pool_t *p = &srv->pool;
  int rc = -1;
  srv_mutex_lock(&p->lock);
  for (int i = 0; i < srv->nslots && rc; i++) {
    worker_t *w = &srv->workers[i];
    if (atomic_load(&w->state) != WORKER_PARKED) continue;
    atomic_store(&w->state, WORKER_RUNNING);
    atomic_fetch_add(&srv->running_workers, 1);
    srv_cond_broadcast(&p->unpark);
    rc = 0;
  }
  srv_mutex_unlock(&p->lock);
  return rc;
}

/* A retired worker on a backend whose I/O dies with its thread waits here instead of
 * exiting. Returns 1 when the pool takes it back, 0 when the server stops. */
static int pool_park(worker_t *w) {
  pool_t *p = &w->srv->pool;
  srv_mutex_lock(&p->lock);
  atomic_store(&w->state, WORKER_PARKED);
  while (atomic_load(&w->state) == WORKER_PARKED && !p->quit)
    srv_cond_wait_ms(&p->unpark, &p->lock, -1);
  int back = atomic_load(&w->state) == WORKER_RUNNING;
  if (back) w->retired = 0;
  srv_mutex_unlock(&p->lock);
  return back;
}

static void worker_main(void *arg) {
  worker_t *w = arg;
  iocpsrv_t *srv = w->srv;
  tls_worker = w;
  w->now = srv_now_ms();
  if (srv->on_worker_start) srv->on_worker_start(srv, w->index);
  do {
    worker_loop(w);
  } while (w->retired && bk_caps.io_dies_with_thread && pool_park(w));
  if (srv->on_worker_stop) srv->on_worker_stop(srv, w->index);
  flush_deferred(w);
  publish_stats(srv, w);
  if (!w->retired) atomic_fetch_sub(&srv->running_workers, 1);
  tls_worker = NULL;
  atomic_store(&w->state, WORKER_EXITED); /* last touch: the slot may be joined now */
}

/* Start a worker in a free slot; 0 or -1. Single caller at a time (listen, monitor). */
static int spawn(iocpsrv_t *srv) {
  if (srv->pool.dynamic && unpark_one(srv) == 0) return 0;
  for (int i = 0; i < srv->nslots; i++) {
    worker_t *w = &srv->workers[i];
    if (atomic_load(&w->state) == WORKER_EXITED) {
      srv_thread_join(w->thread);
      atomic_store(&w->state, WORKER_FREE);
    }
    if (atomic_load(&w->state) != WORKER_FREE) continue;
    w->srv = srv;
    w->index = i;
    w->retired = 0;
    w->rbuf_size = (size_t)srv->opt.read_buffer;
    w->nevents = BK_WAIT_EVENTS + (int)srv->opt.accepts_posted;
    if (!w->rbuf) w->rbuf = srv_malloc(w->rbuf_size);
    if (!w->events) w->events = srv_malloc((size_t)w->nevents * sizeof *w->events);
    if (!w->rbuf || !w->events) return -1;
    atomic_store(&w->state, WORKER_RUNNING);
    unsigned n = (unsigned)atomic_fetch_add(&srv->running_workers, 1) + 1;
    /* The peak before the thread can serve anyone: a client it serves sees it counted. */
    unsigned peak = atomic_load(&srv->pool.peak);
    while (n > peak && !atomic_compare_exchange_weak(&srv->pool.peak, &peak, n)) {
    }
    if (srv_thread_create(&w->thread, worker_main, w) != 0) {
      atomic_store(&w->state, WORKER_FREE);
      atomic_fetch_sub(&srv->running_workers, 1);
      return -1;
    }
    return 0;
  }
  return -1;
}

/* Percent of system CPU busy since the last call, or -1 when unknown. */
static int cpu_percent(pool_t *p) {
  uint64_t busy, total;
  if (srv_cpu_times(&busy, &total)) return -1;
  int pct = -1;
  if (p->cpu_total && total > p->cpu_total)
    pct = (int)(100 * (busy - p->cpu_busy) / (total - p->cpu_total));
  p->cpu_busy = busy;
  p->cpu_total = total;
  return pct;
}

/* Whether the CPU lets the pool grow now (POOL_CPU_HIGH / POOL_CPU_LOW). */
static int cpu_allows_growth(iocpsrv_t *srv) {
  pool_t *p = &srv->pool;
  int high = (int)srv->opt.pool_cpu_high;
  if (!high) return 1;
  int low = srv->opt.pool_cpu_low ? (int)srv->opt.pool_cpu_low : high;
  int pct = cpu_percent(p);
  if (pct < 0) return !p->cpu_vetoed;
  if (pct >= high) p->cpu_vetoed = 1;
  else if (pct <= low) p->cpu_vetoed = 0;
  return !p->cpu_vetoed;
}

static void monitor_main(void *arg) {
  iocpsrv_t *srv = arg;
  pool_t *p = &srv->pool;
  int64_t busy_ms = srv->opt.pool_busy_ms, idle_ms = srv->opt.pool_idle_ms;
  int64_t tick = busy_ms / 4 < 5 ? 5 : busy_ms / 4 > 50 ? 50 : busy_ms / 4;
  int64_t busy_since = 0, spare_since = 0;
  cpu_percent(p); /* first sample */
  for (;;) {
    srv_mutex_lock(&p->lock);
    if (!p->quit) srv_cond_wait_ms(&p->wake, &p->lock, tick);
    int quit = p->quit;
    srv_mutex_unlock(&p->lock); /* spawn and unpark take it */
    if (quit) break;
    int64_t now = srv_now_ms();
    int running = atomic_load(&srv->running_workers) - atomic_load(&p->retire_requests);
    int idle = atomic_load(&srv->idle_workers);
    busy_since = idle > 0 ? 0 : busy_since ? busy_since : now;
    spare_since = idle == 0 ? 0 : spare_since ? spare_since : now;
    if (busy_since && now - busy_since >= busy_ms && running < p->max &&
        cpu_allows_growth(srv)) {
      /* Counted first: the new worker may serve a client before spawn returns. */
      atomic_fetch_add(&p->grows, 1);
      if (spawn(srv) != 0) atomic_fetch_sub(&p->grows, 1);
      busy_since = now; /* the next worker needs another full busy period */
    }
    if (spare_since && now - spare_since >= idle_ms && running > p->min) {
      atomic_fetch_add(&p->retire_requests, 1);
      spare_since = now;
    }
  }
}

int pool_start(iocpsrv_t *srv) {
  pool_t *p = &srv->pool;
  p->dynamic = srv->opt.pool_max > 0;
  p->min = srv->opt.pool_min ? (int)srv->opt.pool_min : fixed_count(srv);
  p->max = p->dynamic ? (int)srv->opt.pool_max : p->min;
  if (p->max < p->min) return IOCPSRV_ERANGE;
  p->quit = 0;
  p->cpu_vetoed = 0;
  p->cpu_total = p->cpu_busy = 0;
  atomic_store(&p->retire_requests, 0);
  atomic_store(&p->peak, 0);
  srv->nslots = p->max;
  /* Room for what every worker's batch may leave queued (accept_push); a full queue
   * only means a worker serves its clients itself. */
  int cap = p->max * (int)srv->opt.accepts_posted;
  cap = cap < BK_WAIT_EVENTS ? BK_WAIT_EVENTS : cap > ACCEPTED_MAX ? ACCEPTED_MAX : cap;
  srv->workers = srv_calloc((size_t)srv->nslots, sizeof *srv->workers);
  srv->accepted = srv_calloc((size_t)cap, sizeof *srv->accepted);
  if (!srv->workers || !srv->accepted) {
    free(srv->workers);
    free(srv->accepted);
    srv->workers = NULL;
    srv->accepted = NULL;
    return IOCPSRV_ENOMEM;
  }
  srv->accepted_cap = cap;
  srv->accepted_head = srv->accepted_count = 0;
  atomic_store(&srv->running_workers, 0);
  srv_mutex_init(&p->lock);
  srv_cond_init(&p->wake);
  srv_cond_init(&p->unpark);
  int rc = 0;
  for (int i = 0; i < p->min && rc == 0; i++)
    if (spawn(srv)) rc = IOCPSRV_ENOMEM;
  p->monitor_running = 0;
  if (rc == 0 && p->dynamic) {
    if (srv_thread_create(&p->monitor, monitor_main, srv)) rc = IOCPSRV_ENOMEM;
    else p->monitor_running = 1;
  }
  if (rc) pool_stop(srv);
  return rc;
}

void pool_stop(iocpsrv_t *srv) {
  pool_t *p = &srv->pool;
  srv_mutex_lock(&p->lock);
  p->quit = 1; /* the monitor ends, parked workers leave */
  srv_cond_signal(&p->wake);
  srv_cond_broadcast(&p->unpark);
  srv_mutex_unlock(&p->lock);
  if (p->monitor_running) srv_thread_join(p->monitor); /* no worker starts after this */
  p->monitor_running = 0;
  p->dynamic = 0;
  bk_quit(&srv->bk, srv->nslots); /* every worker's wait says BK_QUIT */
  for (int i = 0; i < srv->nslots; i++) {
    worker_t *w = &srv->workers[i];
    if (atomic_load(&w->state) != WORKER_FREE) srv_thread_join(w->thread);
    free(w->rbuf);
    free(w->events);
  }
  free(srv->workers);
  srv->workers = NULL;
  srv->nslots = 0;
  /* Clients queued for a worker that quit first: refused, as a stopping server does. */
  for (; srv->accepted_count > 0; srv->accepted_count--) {
    refuse_socket(srv, srv->accepted[srv->accepted_head].sock);
    srv->accepted_head = (srv->accepted_head + 1) % srv->accepted_cap;
  }
  free(srv->accepted);
  srv->accepted = NULL;
  srv->accepted_cap = 0;
  srv_cond_destroy(&p->unpark);
  srv_cond_destroy(&p->wake);
  srv_mutex_destroy(&p->lock);
}
