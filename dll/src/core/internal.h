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
#include "core/records.h"
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

/* Bytes queued or handed to the backend and not yet written (lock held). */
static inline size_t conn_pending_locked(const conn_t *c) {
  return sendbuf_pending(&c->out) + sendbuf_pending(&c->held);
}

typedef struct src_admit_s {
  srcaddr_key_t key;
  uint8_t trusted, counted;
} src_admit_t;

/* log.c */
/* The host's log callback. Never with an engine lock held: the callback may call any
 * thread-safe API function. */
void engine_log(iocpsrv_t *srv, int level, const char *fmt, ...);
/* Like engine_log, at most once a second per gate; the lines skipped in between are
 * counted in the next one. For failures that can repeat at line rate (accept). */
void engine_log_throttled(iocpsrv_t *srv, log_gate_t *g, int level, const char *fmt, ...);
void engine_stat_add(atomic_uint_fast64_t *s, uint64_t n);
/* worker.c */
int engine_in_worker_of(iocpsrv_t *srv);
/* sched.c */
void conn_run(iocpsrv_t *srv, worker_t *w, conn_t *c);
/* Work for the token holder; lock held. */
void engine_schedule_locked(iocpsrv_t *srv, conn_t *c, uint32_t note);
/* Before waiting for events: returns 0 if work is queued (run it instead of waiting).
 * Otherwise the worker counts as idle until worker_woke. */
int worker_may_sleep(worker_t *w);
void worker_woke(worker_t *w);
/* Queue an accepted client (BK_ACCEPT) for any worker; -1 when the queue is full. */
int accept_push(iocpsrv_t *srv, const bk_event_t *e);
/* A BK_CONN event from the wait. */
void conn_event(worker_t *w, const bk_event_t *e);
/* Run queued connection work, one connection at a time, until none is left.
 *
 * A worker that took a batch of k events must not sit on k-1 of them while a callback
 * for the first one blocks (contract point 7). So the worker loop dispatches events
 * 2..k with w->defer_notify set, which queues their work here, then the first inline,
 * then runs this. Only the first event's connection is tied to this thread. */
void engine_run_tasks(worker_t *w);
/* Start watching a fresh connection's socket; lock held. 0 or a negative IOCPSRV_E. */
int conn_watch_locked(iocpsrv_t *srv, conn_t *c);
/* Arm the connection for reading if it wants to read; lock held, token not held. */
void conn_arm_locked(iocpsrv_t *srv, conn_t *c);
/* send.c */
/* Hand queued bytes to the backend without blocking; lock held. */
void conn_flush_locked(iocpsrv_t *srv, conn_t *c);
/* BK_WRITE: the socket is writable again, or the held write ended (`bytes` of it
 * written, or `failed`); lock held. */
void conn_write_done_locked(iocpsrv_t *srv, conn_t *c, size_t bytes, int failed);
/* Close the connection's socket (the token holder, the connection dead). Returns 1 if
 * I/O is still running: a BK_RELEASED event follows its end. */
int conn_close_socket(iocpsrv_t *srv, conn_t *c, int abort);
/* Release the memory a quiet connection keeps for sending; lock held, token free. */
void conn_trim_send_locked(conn_t *c);
void flush_poll_batch(iocpsrv_t *srv);
/* api.c: around every poll (iocpsrv_poll, iocpsrv_poll_packed) on the consumer's
 * thread: the last batch's sends go out, and the sends made next join the new batch
 * (IOCPSRV_OPT_PULL_BATCH_SENDS). */
uint64_t poll_begin(iocpsrv_t *srv);
void poll_end(iocpsrv_t *srv, uint64_t seq);
void flush_deferred(worker_t *w);
conn_t *own_conn(iocpsrv_t *srv, iocpsrv_conn_id_t id);
int merge_own_locked(iocpsrv_t *srv, conn_t *c);
/* After merge_own_locked failed; no lock held. _of: the peer name copied under the
 * lock, for a caller whose connection may be gone by then. */
void log_merge_nomem(iocpsrv_t *srv, conn_t *c);
void log_merge_nomem_of(iocpsrv_t *srv, const char *peer);
int send_packet(iocpsrv_t *srv, iocpsrv_conn_id_t id, const iocpsrv_buf_t *bufs,
                       int count, size_t total);
/* iocpsrv_send_packed's consecutive records for one connection that is not the calling
 * worker's own: one lookup and one lock round for them all. Returns how many were
 * queued, in order; at the first refusal *err says why and the rest are not sent. */
size_t send_run(iocpsrv_t *srv, iocpsrv_conn_id_t id, const send_record_t *recs, size_t n,
                int *err);
/* recv.c */
int conn_read_proxy(iocpsrv_t *srv, worker_t *w, conn_t *c, const uint8_t *p,
                           size_t n);
int conn_read(iocpsrv_t *srv, worker_t *w, conn_t *c);
int conn_resume(iocpsrv_t *srv, worker_t *w, conn_t *c, uint32_t notes);
/* conn.c */
/* A new client socket (BK_ACCEPT). */
void engine_accept(worker_t *w, bk_socket_t sock, const struct sockaddr_storage *peer);
/* Its last I/O done (bk_close said none runs, or BK_RELEASED): the one disconnect
 * callback, then the slot is freed. */
void engine_conn_released(iocpsrv_t *srv, conn_t *c);
void format_addr(const struct sockaddr_storage *sa, char *out, size_t size);
/* The connection `id` names, locked, when the host may act on it (open or closing,
 * introduced, established), else NULL. _known: an outbound one still connecting too
 * (iocpsrv_disconnect, iocpsrv_conn_info, iocpsrv_set_conn_user). */
conn_t *conn_lock_id(iocpsrv_t *srv, iocpsrv_conn_id_t id);
conn_t *conn_lock_known(iocpsrv_t *srv, iocpsrv_conn_id_t id);
conn_t *conn_new(iocpsrv_t *srv, int *nomem);
void open_count_release(iocpsrv_t *srv);
/* Count a new connection (open_count, and against IOCPSRV_OPT_MAX_CONNECTIONS): 0, or
 * IOCPSRV_ESTOPPED / IOCPSRV_ELIMIT with nothing counted. Undone by conn_admit_undo
 * before a slot is taken, else by the slot's release (engine_conn_released). */
int conn_admit(iocpsrv_t *srv);
void conn_admit_undo(iocpsrv_t *srv);
void request_close_locked(iocpsrv_t *srv, conn_t *c, int abort, int reason);
int conn_abort_nomem(iocpsrv_t *srv, conn_t *c, const char *what);
int conn_finalize(iocpsrv_t *srv, conn_t *c, int reason, int abort);
int conn_drop_as(iocpsrv_t *srv, conn_t *c, const char *why, int nomem);
int conn_drop(iocpsrv_t *srv, conn_t *c, const char *why);
int conn_close_step(iocpsrv_t *srv, conn_t *c);
int conn_introduce(iocpsrv_t *srv, conn_t *c);
/* connect.c */
/* The token holder's turn for a connecting outbound connection: returns 1 when it is
 * gone, else 0 with *notes what is left to run (a NOTE_READ once it is established). */
int conn_connect_step(iocpsrv_t *srv, conn_t *c, uint32_t *notes);
/* The resolver's answer for connection `id` (NULL: the name has no address). */
void connect_resolved(iocpsrv_t *srv, uint64_t id, const struct addrinfo *res);
/* admit.c */
void refuse_socket(iocpsrv_t *srv, bk_socket_t sock);
int source_admit(iocpsrv_t *srv, bk_socket_t sock, const struct sockaddr_storage *sa,
                        src_admit_t *a);
int source_admit_proxied(iocpsrv_t *srv, conn_t *c, const struct sockaddr_storage *src);
/* sweep.c */
void sweep(iocpsrv_t *srv, worker_t *w);
void sweep_if_due(iocpsrv_t *srv, worker_t *w);

#endif
