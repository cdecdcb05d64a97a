/* Worker threads: the thread locals, per-batch stats, the sweep trigger, the thread body. */
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

int engine_after_batch(worker_t *w) {
  iocpsrv_t *srv = w->srv;
  flush_deferred(w);
  publish_stats(srv, w);
  w->now = srv_now_ms();
  sweep_if_due(srv, w);
  return srv->sweep_period_ms;
}

int engine_worker_should_retire(worker_t *w) { return pool_worker_should_retire(w); }

void engine_worker_main(void *arg) {
  worker_t *w = arg;
  iocpsrv_t *srv = w->srv;
  tls_worker = w;
  w->now = srv_now_ms();
  if (srv->on_worker_start) srv->on_worker_start(srv, w->index);
  do {
    bk_worker_loop(w);
  } while (w->retired && BK_PARK_RETIRED && pool_park(w));
  if (srv->on_worker_stop) srv->on_worker_stop(srv, w->index);
  flush_deferred(w);
  publish_stats(srv, w);
  if (!w->retired) atomic_fetch_sub(&srv->running_workers, 1);
  tls_worker = NULL;
  atomic_store(&w->state, WORKER_EXITED); /* last touch: the slot may be joined now */
}
