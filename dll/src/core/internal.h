/* What the core's files share beyond engine.h: the thread locals, small inline helpers
 * and the functions one room of the engine calls in another. See docs/architecture.md. */
#ifndef IOCPSRV_CORE_INTERNAL_H
#define IOCPSRV_CORE_INTERNAL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/engine.h"
#include "core/fault.h"
#include "core/proxy.h"
#include "core/srcaddr.h"

/* initial-exec: the library's few thread locals come from the static TLS reserve, so
 * reading them is one instruction instead of a __tls_get_addr call per packet. */
#if defined(__GNUC__) && !defined(_WIN32)
#  define ENGINE_TLS _Thread_local __attribute__((tls_model("initial-exec")))
#else
#  define ENGINE_TLS _Thread_local
#endif
extern ENGINE_TLS worker_t *tls_worker;
/* Pull mode: the server whose iocpsrv_poll returned this thread's current batch, and
 * which batch (see flush_soon_locked). */
extern ENGINE_TLS iocpsrv_t *tls_batch_srv;
extern ENGINE_TLS uint64_t tls_batch_seq;

static inline uint64_t stat_get(atomic_uint_fast64_t *s) {
  return atomic_load_explicit(s, memory_order_relaxed);
}

static inline void counter_add(atomic_uint_fast64_t *c, uint64_t n) {
  atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                        memory_order_relaxed);
}

static inline int srv_state(iocpsrv_t *srv) { return atomic_load(&srv->state); }

static inline int64_t clock_now(void) { return tls_worker ? tls_worker->now : srv_now_ms(); }

/* Preconditions (compiled in with the checks, see platform.h). The token is the
 * holder's own: `busy` is set by whoever takes it and cleared only by its holder. */
#define ASSERT_LOCKED(c) SRV_ASSERT_HELD(&(c)->slot.lock)
#define ASSERT_UNLOCKED(c) SRV_ASSERT_NOT_HELD(&(c)->slot.lock)
#define ASSERT_TOKEN(c) SRV_ASSERT((c)->busy)

typedef struct src_admit_s {
  srcaddr_key_t key;
  uint8_t trusted, counted;
} src_admit_t;

/* sched.c */
void conn_run(iocpsrv_t *srv, worker_t *w, conn_t *c);
/* send.c */
void flush_poll_batch(iocpsrv_t *srv);
void flush_deferred(worker_t *w);
conn_t *own_conn(iocpsrv_t *srv, iocpsrv_conn_id_t id);
int merge_own_locked(iocpsrv_t *srv, conn_t *c);
void log_merge_nomem(iocpsrv_t *srv, conn_t *c);
int send_packet(iocpsrv_t *srv, iocpsrv_conn_id_t id, const iocpsrv_buf_t *bufs,
                       int count, size_t total);
/* recv.c */
int conn_read_proxy(iocpsrv_t *srv, worker_t *w, conn_t *c, const uint8_t *p,
                           size_t n);
int conn_read(iocpsrv_t *srv, worker_t *w, conn_t *c);
int conn_resume(iocpsrv_t *srv, worker_t *w, conn_t *c, uint32_t notes);
/* conn.c */
void format_addr(const struct sockaddr_storage *sa, char *out, size_t size);
conn_t *conn_lock_id(iocpsrv_t *srv, iocpsrv_conn_id_t id);
void request_close_locked(iocpsrv_t *srv, conn_t *c, int abort, int reason);
int conn_abort_nomem(iocpsrv_t *srv, conn_t *c, const char *what);
int conn_finalize(iocpsrv_t *srv, conn_t *c, int reason, int abort);
int conn_drop_as(iocpsrv_t *srv, conn_t *c, const char *why, int nomem);
int conn_drop(iocpsrv_t *srv, conn_t *c, const char *why);
int conn_close_step(iocpsrv_t *srv, conn_t *c);
int conn_introduce(iocpsrv_t *srv, conn_t *c);
/* admit.c */
void refuse_socket(iocpsrv_t *srv, bk_socket_t sock);
int source_admit(iocpsrv_t *srv, bk_socket_t sock, const struct sockaddr_storage *sa,
                        src_admit_t *a);
int source_admit_proxied(iocpsrv_t *srv, conn_t *c, const struct sockaddr_storage *src);
/* sweep.c */
void sweep(iocpsrv_t *srv, worker_t *w);
void sweep_if_due(iocpsrv_t *srv, worker_t *w);

#endif
