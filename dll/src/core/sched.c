/* Scheduling: the run queue, the callback token and the notes its holder runs (see
 * engine.h); the connection events of a batch, and arming a connection for the next. */
#include "core/internal.h"

#include "core/deliver.h"

/* The run queue: connections with notes that no worker is running yet, and accepted
 * clients a worker's batch held beyond the one it serves itself. Workers take them one
 * at a time, so a callback that blocks holds up only its own connection. */
static int queue_empty(const iocpsrv_t *srv) {
  return srv->task_head == NULL && srv->accepted_count == 0;
}

static void task_push(iocpsrv_t *srv, conn_t *c) {
  srv_mutex_lock(&srv->task_lock);
  int was_empty = queue_empty(srv);
  c->next_task = NULL;
  if (srv->task_tail) srv->task_tail->next_task = c;
  else srv->task_head = c;
  srv->task_tail = c;
  srv_mutex_unlock(&srv->task_lock);
  /* Busy workers look at the queue after their current work; wake an idle one only.
   * The rest of a batch a worker is dispatching wakes no one where the backend's wait
   * finds work a stuck worker left behind by itself (bk_caps.wait_takes_over);
   * work queued from a callback (a disconnect, a resume for another connection) does:
   * that callback may block next, and the poller may sleep for a whole sweep period. */
  worker_t *w = tls_worker;
  int mine = w && w->srv == srv;
  int dispatching = mine && w->defer_notify;
  int in_callback = mine && w->running; /* rest of the queue included: it may block */
  if (atomic_load(&srv->idle_workers) > 0 &&
      (in_callback || (was_empty && (!bk_caps.wait_takes_over || !dispatching))))
    bk_wake(&srv->bk);
}

int accept_push(iocpsrv_t *srv, const bk_event_t *e) {
  srv_mutex_lock(&srv->task_lock);
  int was_empty = queue_empty(srv);
  int full = srv->accepted_count == srv->accepted_cap;
  if (!full) {
    srv->accepted[(srv->accepted_head + srv->accepted_count) % srv->accepted_cap] = *e;
    srv->accepted_count++;
  }
  srv_mutex_unlock(&srv->task_lock);
  /* A client waits: wake a worker on every backend, as a listener left readable would.
   * (The epoll watcher takes over only from a stuck poller; the poller may well be
   * another worker, asleep in its wait.) */
  if (!full && was_empty && atomic_load(&srv->idle_workers) > 0) bk_wake(&srv->bk);
  return full ? -1 : 0;
}

/* The next queued work: a connection, or (NULL with a->kind BK_ACCEPT) a client. */
static conn_t *task_pop(iocpsrv_t *srv, bk_event_t *a, int *more) {
  srv_mutex_lock(&srv->task_lock);
  conn_t *c = NULL;
  a->kind = 0;
  if (srv->accepted_count) { /* new clients first, as a batch serves them first */
    *a = srv->accepted[srv->accepted_head];
    srv->accepted_head = (srv->accepted_head + 1) % srv->accepted_cap;
    srv->accepted_count--;
  } else if ((c = srv->task_head) != NULL) {
    srv->task_head = c->next_task;
    if (!srv->task_head) srv->task_tail = NULL;
  }
  *more = !queue_empty(srv);
  srv_mutex_unlock(&srv->task_lock);
  return c;
}

int worker_may_sleep(worker_t *w) {
  iocpsrv_t *srv = w->srv;
  atomic_fetch_add(&srv->idle_workers, 1);
  /* Counted idle first, then looked: a push either sees us idle and wakes us, or we
   * see its task here. */
  srv_mutex_lock(&srv->task_lock);
  int empty = queue_empty(srv);
  srv_mutex_unlock(&srv->task_lock);
  if (!empty) atomic_fetch_sub(&srv->idle_workers, 1);
  return empty;
}

void worker_woke(worker_t *w) { atomic_fetch_sub(&w->srv->idle_workers, 1); }

void engine_schedule_locked(iocpsrv_t *srv, conn_t *c, uint32_t note) {
  ASSERT_LOCKED(c);
  c->notes |= note;
  if (c->busy || c->queued) return;
  c->queued = 1;
  task_push(srv, c);
}

/* Whether the connection wants to receive now (lock held). */
static int reading_wanted(const conn_t *c) {
  ASSERT_LOCKED(c);
  if (c->rd_eof || c->connecting) return 0;
  return c->state == CONN_CLOSING || (!c->paused && !c->pull_blocked);
}

int conn_watch_locked(iocpsrv_t *srv, conn_t *c) {
  c->read_armed = c->write_wait = 0;
  return bk_register(&srv->bk, &c->bk, c->sock, c->slot.id);
}

void conn_arm_locked(iocpsrv_t *srv, conn_t *c) {
  ASSERT_LOCKED(c);
  if (c->busy || c->read_armed || !reading_wanted(c)) return;
  if (c->state != CONN_OPEN && c->state != CONN_CLOSING) return;
  int r = bk_arm(&c->bk, c->sock);
  if (r == 0) c->read_armed = 1;
  else engine_schedule_locked(srv, c, r > 0 ? NOTE_READ : NOTE_ERROR); /* no event comes */
}

static int conn_handle(iocpsrv_t *srv, worker_t *w, conn_t *c, uint32_t n) {
  ASSERT_TOKEN(c);
  ASSERT_UNLOCKED(c);
  if (c->connecting) { /* outbound: only the connect path until it is established */
    if (conn_connect_step(srv, c, &n)) return 1;
    if (c->connecting) return 0;
  }
  if (n & NOTE_ERROR) return conn_finalize(srv, c, IOCPSRV_REASON_PEER_RESET, 1);
  if ((n & NOTE_CLOSE) && conn_close_step(srv, c)) return 1;
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
  ASSERT_LOCKED(c);
  ASSERT_TOKEN(c);
  conn_t *outer = w->running;
  w->running = c;
  int nomem = 0;
  /* Logged once the lock is gone, when the slot may already serve another client: the
   * name is copied under the lock. */
  char peer[sizeof c->peer];
  do { /* the merge may leave notes (a close, a drain): run them too */
    while (c->notes) {
      uint32_t n = c->notes;
      c->notes = 0;
      c->out_seen = conn_pending_locked(c);
      srv_mutex_unlock(&c->slot.lock);
      if (conn_handle(srv, w, c, n)) {
        w->running = outer;
        if (nomem) log_merge_nomem_of(srv, peer);
        return;
      }
      srv_mutex_lock(&c->slot.lock);
    }
    if (merge_own_locked(srv, c) && !nomem) {
      nomem = 1;
      memcpy(peer, c->peer, sizeof peer);
    }
  } while (c->notes);
  w->running = outer;
  c->busy = 0;
  if (c->read_more) { /* its turn is used up: behind the others, still readable */
    c->read_more = 0;
    engine_schedule_locked(srv, c, NOTE_READ);
  } else {
    conn_arm_locked(srv, c);
  }
  srv_mutex_unlock(&c->slot.lock);
  if (nomem) log_merge_nomem_of(srv, peer);
}

void conn_run(iocpsrv_t *srv, worker_t *w, conn_t *c) {
  conn_run_notes(srv, w, c);
  /* What this connection's callbacks sent goes out now: one write per connection for
   * the whole batch of packets, and not held back if a later callback on this worker
   * blocks. */
  flush_deferred(w);
}

/* The connection an event's id names, locked, or NULL when it has closed since. */
static conn_t *lock_id_event(iocpsrv_t *srv, uint64_t id) {
  conn_t *c = (conn_t *)conntable_lookup(&srv->table, id);
  if (!c) return NULL;
  srv_mutex_lock(&c->slot.lock);
  if (c->slot.id == id) return c;
  srv_mutex_unlock(&c->slot.lock); /* an event for a connection that closed since */
  return NULL;
}

/* Add notes and run them if no one holds the token. Called with the lock held; returns
 * with it released. */
static void conn_notify_locked(worker_t *w, conn_t *c, uint32_t notes) {
  ASSERT_LOCKED(c);
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
  bk_event_t a;
  w->defer_notify = 0;
  for (;;) {
    conn_t *c = task_pop(srv, &a, &more);
    if (!c && a.kind != BK_ACCEPT) break;
    /* This one may block: let an idle worker take the rest. */
    if (!bk_caps.wait_takes_over && more && atomic_load(&srv->idle_workers) > 0)
      bk_wake(&srv->bk);
    if (!c) {
      engine_accept(w, a.sock, &a.peer);
      continue;
    }
    srv_mutex_lock(&c->slot.lock);
    /* `queued` is cleared here, not at free: the slot may be on this list while it is
     * reused, and the notes found now are the new connection's own. */
    c->queued = 0;
    if (c->slot.id) conn_notify_locked(w, c, 0);
    else srv_mutex_unlock(&c->slot.lock);
  }
}

void conn_event(worker_t *w, const bk_event_t *e) {
  iocpsrv_t *srv = w->srv;
  if (e->notes & BK_RELEASED) {
    conn_t *c = (conn_t *)conntable_lookup(&srv->table, e->id);
    if (!c) return;
    sendbuf_free(&c->held); /* the OS is done with it; nobody else touches a dead one */
    engine_conn_released(srv, c);
    return;
  }
  conn_t *c = lock_id_event(srv, e->id);
  if (!c) return;
  if (c->connecting) { /* any news of its socket: has the connect ended? */
    if (e->notes & BK_HUP) c->hup = 1;
    conn_notify_locked(w, c, NOTE_CONNECT);
    return;
  }
  uint32_t notes = 0;
  if (e->notes & BK_HUP) c->hup = 1; /* read on to the end */
  if (e->notes & BK_READ) notes |= NOTE_READ;
  /* Most epoll edges say writable; that matters only after a write said BK_AGAIN. */
  if ((e->notes & BK_WRITE) && c->write_wait)
    conn_write_done_locked(srv, c, e->bytes, (e->notes & BK_FAILED) != 0);
  else if (e->notes & BK_FAILED)
    notes |= NOTE_ERROR;
  if (notes) c->read_armed = 0;
  conn_notify_locked(w, c, notes);
}
