/* Scheduling: the run queue, the callback token and the notes its holder runs (see engine.h). */
#include "core/internal.h"

#include "core/deliver.h"

/* The run queue: connections with notes that no worker is running yet. Workers take
 * them one at a time, so a callback that blocks holds up only its own connection. */
static void task_push(iocpsrv_t *srv, conn_t *c) {
  srv_mutex_lock(&srv->task_lock);
  int was_empty = srv->task_head == NULL;
  c->next_task = NULL;
  if (srv->task_tail) srv->task_tail->next_task = c;
  else srv->task_head = c;
  srv->task_tail = c;
  srv_mutex_unlock(&srv->task_lock);
  /* Busy workers look at the queue after their current work; wake an idle one only.
   * The rest of a batch a worker is dispatching wakes no one where the backend has a
   * cheaper way to find work a stuck worker left behind (BK_WAKE_FOR_WORKER_TASKS);
   * work queued from a callback (a disconnect, a resume for another connection) does:
   * that callback may block next, and the poller may sleep for a whole sweep period. */
  worker_t *w = tls_worker;
  int mine = w && w->srv == srv;
  int dispatching = mine && w->defer_notify;
  int in_callback = mine && w->running; /* rest of the queue included: it may block */
  if (atomic_load(&srv->idle_workers) > 0 &&
      (in_callback || (was_empty && (BK_WAKE_FOR_WORKER_TASKS || !dispatching))))
    bk_wake_tasks(srv);
}

static conn_t *task_pop(iocpsrv_t *srv, int *more) {
  srv_mutex_lock(&srv->task_lock);
  conn_t *c = srv->task_head;
  if (c) {
    srv->task_head = c->next_task;
    if (!srv->task_head) srv->task_tail = NULL;
  }
  *more = srv->task_head != NULL;
  srv_mutex_unlock(&srv->task_lock);
  return c;
}

int engine_worker_may_sleep(worker_t *w) {
  iocpsrv_t *srv = w->srv;
  atomic_fetch_add(&srv->idle_workers, 1);
  /* Counted idle first, then looked: a push either sees us idle and wakes us, or we
   * see its task here. */
  srv_mutex_lock(&srv->task_lock);
  int empty = srv->task_head == NULL;
  srv_mutex_unlock(&srv->task_lock);
  if (!empty) atomic_fetch_sub(&srv->idle_workers, 1);
  return empty;
}

void engine_worker_woke(worker_t *w) { atomic_fetch_sub(&w->srv->idle_workers, 1); }

void engine_schedule_locked(iocpsrv_t *srv, conn_t *c, uint32_t note) {
  c->notes |= note;
  if (c->busy || c->queued) return;
  c->queued = 1;
  task_push(srv, c);
}

int engine_reading_wanted(const conn_t *c) {
  if (c->rd_eof) return 0;
  return c->state == CONN_CLOSING || (!c->paused && !c->pull_blocked);
}

static int conn_handle(iocpsrv_t *srv, worker_t *w, conn_t *c, uint32_t n) {
  if (n & NOTE_ERROR) return conn_finalize(srv, c, IOCPSRV_REASON_PEER_RESET, 1);
  if ((n & NOTE_CLOSE) && conn_close_step(srv, c)) return 1;
  if (n & NOTE_WRITE) {
    srv_mutex_lock(&c->slot.lock);
    bk_conn_on_writable_locked(srv, c);
    srv_mutex_unlock(&c->slot.lock);
  }
  if (n & (NOTE_RESUME | NOTE_ROOM)) {
    if (conn_resume(srv, w, c, n)) return 1;
    if (c->read_skipped) n |= NOTE_READ; /* what arrived while paused */
  }
  if ((n & NOTE_READ) && conn_read(srv, w, c)) return 1;
  if (n & NOTE_DRAIN) return deliver_drain(srv, c);
  return 0;
}

/* Run notes while holding the token; called with the lock held and busy set, returns
 * with the lock released. */
static void conn_run_notes(iocpsrv_t *srv, worker_t *w, conn_t *c) {
  conn_t *outer = w->running;
  w->running = c;
  int nomem = 0;
  do { /* the merge may leave notes (a close, a drain): run them too */
    while (c->notes) {
      uint32_t n = c->notes;
      c->notes = 0;
      c->out_seen = bk_conn_pending_locked(c);
      srv_mutex_unlock(&c->slot.lock);
      if (conn_handle(srv, w, c, n)) {
        w->running = outer;
        if (nomem) log_merge_nomem(srv, c);
        return;
      }
      srv_mutex_lock(&c->slot.lock);
    }
    if (merge_own_locked(srv, c)) nomem = 1;
  } while (c->notes);
  w->running = outer;
  c->busy = 0;
  if (c->read_more) { /* its turn is used up: behind the others, still readable */
    c->read_more = 0;
    engine_schedule_locked(srv, c, NOTE_READ);
  } else {
    bk_conn_arm_locked(srv, c);
  }
  srv_mutex_unlock(&c->slot.lock);
  if (nomem) log_merge_nomem(srv, c); /* c's slot stays valid: its close is only queued */
}

void conn_run(iocpsrv_t *srv, worker_t *w, conn_t *c) {
  conn_run_notes(srv, w, c);
  /* What this connection's callbacks sent goes out now: one write per connection for
   * the whole batch of packets, and not held back if a later callback on this worker
   * blocks. */
  flush_deferred(w);
}

conn_t *engine_conn_lock_id_event(iocpsrv_t *srv, uint64_t id) {
  conn_t *c = (conn_t *)conntable_lookup(&srv->table, id);
  if (!c) return NULL;
  srv_mutex_lock(&c->slot.lock);
  if (c->slot.id == id) return c;
  srv_mutex_unlock(&c->slot.lock); /* an event for a connection that closed since */
  return NULL;
}

void engine_conn_notify_locked(worker_t *w, conn_t *c, uint32_t notes) {
  c->notes |= notes;
  if (c->busy || !c->notes || c->state == CONN_DEAD || c->state == CONN_FREE) {
    srv_mutex_unlock(&c->slot.lock);
    return;
  }
  if (w->defer_notify) {
    engine_schedule_locked(w->srv, c, 0);
    srv_mutex_unlock(&c->slot.lock);
    return;
  }
  c->busy = 1;
  conn_run(w->srv, w, c);
}

void engine_run_tasks(worker_t *w) {
  iocpsrv_t *srv = w->srv;
  int more;
  conn_t *c;
  w->defer_notify = 0;
  while ((c = task_pop(srv, &more)) != NULL) {
    /* This one may block: let an idle worker take the rest. */
    if (BK_WAKE_FOR_WORKER_TASKS && more && atomic_load(&srv->idle_workers) > 0)
      bk_wake_tasks(srv);
    srv_mutex_lock(&c->slot.lock);
    /* `queued` is cleared here, not at free: the slot may be on this list while it is
     * reused, and the notes found now are the new connection's own. */
    c->queued = 0;
    if (c->slot.id) engine_conn_notify_locked(w, c, 0);
    else srv_mutex_unlock(&c->slot.lock);
  }
}
