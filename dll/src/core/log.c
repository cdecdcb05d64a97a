/* The host's log callback, plain and throttled, and the shared counters; what a backend
 * may use of them, and the accept backoff both backends follow (core/backend.h). */
#include "core/internal.h"

#include <stdarg.h>
#include <stdio.h>

static void vlog(iocpsrv_t *srv, int level, const char *fmt, va_list ap) {
  SRV_ASSERT_NO_LOCKS();
  if (!srv->on_log) return;
  char msg[256];
  vsnprintf(msg, sizeof msg, fmt, ap);
  srv->on_log(srv, level, msg);
}

static void vlog_throttled(iocpsrv_t *srv, log_gate_t *g, int level, const char *fmt,
                           va_list ap) {
  SRV_ASSERT_NO_LOCKS();
  int64_t now = srv_now_ms();
  int64_t next = atomic_load(&g->next_ms);
  if (now < next || !atomic_compare_exchange_strong(&g->next_ms, &next, now + 1000)) {
    atomic_fetch_add(&g->suppressed, 1);
    return;
  }
  uint64_t more = atomic_exchange(&g->suppressed, 0);
  if (!srv->on_log) return;
  char msg[256];
  int n = vsnprintf(msg, sizeof msg, fmt, ap);
  if (more && n >= 0 && (size_t)n < sizeof msg)
    snprintf(msg + n, sizeof msg - (size_t)n, " (and %llu more in the last second)",
             (unsigned long long)more);
  srv->on_log(srv, level, msg);
}

void engine_log(iocpsrv_t *srv, int level, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vlog(srv, level, fmt, ap);
  va_end(ap);
}

void engine_log_throttled(iocpsrv_t *srv, log_gate_t *g, int level, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vlog_throttled(srv, g, level, fmt, ap);
  va_end(ap);
}

void engine_log_topic(iocpsrv_t *srv, int topic, int level, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  if (topic == BK_LOG_ACCEPT) vlog_throttled(srv, &srv->accept_log, level, fmt, ap);
  else if (topic == BK_LOG_SOCKOPT) vlog_throttled(srv, &srv->sockopt_log, level, fmt, ap);
  else vlog(srv, level, fmt, ap);
  va_end(ap);
}

void engine_stat_add(atomic_uint_fast64_t *s, uint64_t n) {
  atomic_fetch_add_explicit(s, n, memory_order_relaxed);
}

#define ACCEPT_BACKOFF_MIN_MS 50
#define ACCEPT_BACKOFF_MAX_MS 1000

int engine_accept_backoff(int last_ms) {
  return last_ms <= 0 ? ACCEPT_BACKOFF_MIN_MS
         : last_ms >= ACCEPT_BACKOFF_MAX_MS / 2 ? ACCEPT_BACKOFF_MAX_MS
                                                : last_ms * 2;
}

void engine_count(iocpsrv_t *srv, int counter, uint64_t n) {
  engine_stat_add(counter == BK_COUNT_REFUSED ? &srv->stats.connections_refused
                                              : &srv->stats.accept_errors,
                  n);
}
