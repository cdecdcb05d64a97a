/* The periodic sweep: idle timeouts, overdue closes, PROXY header timeouts, trimming. */
#include "core/internal.h"

#define TRIM_AFTER_MS 1000

/* Free the empty send buffer and packet stash of a quiet connection, so an idle
 * connection costs its slot and nothing else. The hot path keeps them between packets
 * (no allocation per packet); this runs only from the sweep. Lock held, token free:
 * nobody else is touching the framer. */
static void trim_locked(conn_t *c) {
  ASSERT_LOCKED(c);
  SRV_ASSERT(!c->busy); /* nobody is touching the framer */
  conn_trim_send_locked(c);
  if (framer_buffered(&c->in) == 0 && c->in.buf) framer_free(&c->in);
}

void sweep(iocpsrv_t *srv, worker_t *w) {
  int64_t now = w->now;
  int64_t idle = srv->opt.idle_timeout_ms;
  int stopping = srv_state(srv) == SRV_STOPPING;
  int64_t stop_deadline = atomic_load(&srv->stop_deadline);
  size_t used = conntable_used(&srv->table);
  for (size_t i = 0; i < used; i++) {
    conn_t *c = (conn_t *)conntable_at(&srv->table, i);
    srv_mutex_lock(&c->slot.lock);
    if (c->state == CONN_OPEN && c->connecting) {
      if (now >= c->connect_deadline)
        request_close_locked(srv, c, 1, IOCPSRV_REASON_CONNECT_TIMEOUT);
    } else if (c->state == CONN_OPEN && c->proxy_awaiting &&
        now - atomic_load_explicit(&c->last_packet_ms, memory_order_relaxed) >
            srv->opt.close_timeout_ms) {
      /* A PROXY header that never comes must not hold a slot the host cannot see. */
      engine_stat_add(&srv->stats.protocol_errors, 1);
      c->refused = 1;
      request_close_locked(srv, c, 1, IOCPSRV_REASON_PROTOCOL_ERROR);
    } else if (c->state == CONN_OPEN && idle &&
        now - atomic_load_explicit(&c->last_packet_ms, memory_order_relaxed) > idle) {
      engine_stat_add(&srv->stats.idle_timeouts, 1);
      request_close_locked(srv, c, 1, IOCPSRV_REASON_IDLE_TIMEOUT);
    } else if (c->state == CONN_CLOSING && c->close_mode != CLOSE_ABORT) {
      /* During a stop its timeout governs every close (negative: none at all), not
       * IOCPSRV_OPT_CLOSE_TIMEOUT_MS. */
      int64_t deadline = stopping ? stop_deadline : c->close_deadline;
      if (now >= deadline) request_close_locked(srv, c, 1, c->close_reason);
    } else if (c->state == CONN_OPEN && !c->busy &&
               now - atomic_load_explicit(&c->last_packet_ms, memory_order_relaxed) >
                   TRIM_AFTER_MS) {
      trim_locked(c);
    }
    srv_mutex_unlock(&c->slot.lock);
  }
}

void sweep_if_due(iocpsrv_t *srv, worker_t *w) {
  int64_t due = atomic_load(&srv->next_sweep_ms);
  if (w->now < due) return;
  if (atomic_compare_exchange_strong(&srv->next_sweep_ms, &due, w->now + srv->sweep_period_ms)) {
    sweep(srv, w);
    bk_periodic(&srv->bk, w->now);
  }
}
