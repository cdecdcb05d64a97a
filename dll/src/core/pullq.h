/* Pull mode's event queue: workers push, one consumer drains batches with
 * iocpsrv_poll. Packets are counted against a limit; a connection whose packet fills
 * the queue is remembered and handed back through on_room once the consumer has made
 * room, so the engine stops reading it meanwhile and never drops an event. */
#ifndef IOCPSRV_CORE_PULLQ_H
#define IOCPSRV_CORE_PULLQ_H

#include <stddef.h>
#include <stdint.h>

#include "core/platform.h"
#include "iocpsrv.h"

typedef struct pullq_node_s pullq_node_t;

/* Called on the consumer's thread, outside the queue lock, with connection ids: those
 * that waited for room, or those whose end-of-stream mark the host has now passed. */
typedef void (*pullq_room_fn)(void *ctx, const iocpsrv_conn_id_t *ids, size_t n);

/* An internal event (never handed to the host): the peer's FIN came after the packets
 * queued before it. pullq_poll reports it through on_eof at the consumer's next poll,
 * once the host has had the whole batch with those packets to reply to. */
#define PULLQ_EOF_MARK 0x100

/* A connection's gate into the queue, kept in the connection (its memory never moves)
 * and guarded by the queue lock. The host's pause and disconnect act on the events
 * already queued for it, so pull mode keeps the callback contract in C: after
 * iocpsrv_pause_receive, its packets (and its end-of-stream mark) wait here, in order,
 * until iocpsrv_resume_receive; after iocpsrv_disconnect, no packet or drain for it is
 * handed out again. */
enum { PULLQ_OPEN = 0, PULLQ_HOLD = 1, PULLQ_DROP = 2 };
typedef struct pullq_conn_s {
  int gate;                        /* PULLQ_OPEN, PULLQ_HOLD or PULLQ_DROP */
  pullq_node_t *held, *held_tail;  /* PULLQ_HOLD: its packets, in order */
} pullq_conn_t;

typedef struct pullq_s {
  srv_mutex_t lock;
  srv_cond_t nonempty;
  srv_waitable_t waitable;
  pullq_node_t *head, *tail; /* queued */
  pullq_node_t *batch;       /* handed out by the last poll, freed by the next */
  size_t events, packets, limit;
  int stopped;               /* no more events will come */
  int polling;               /* a consumer is inside pullq_poll */
  iocpsrv_conn_id_t *waiters;
  size_t nwaiters, capwaiters;
  pullq_room_fn on_room;
  pullq_room_fn on_eof;
  void *room_ctx;
  size_t neof;                /* end-of-stream marks on `batch` not acted on yet */
  pullq_node_t *spare;        /* large nodes kept for reuse (see pullq.c) */
  size_t spare_bytes;
  size_t reserved;            /* packets granted to workers' batches, not queued yet */
  pullq_node_t *free[2];      /* small nodes kept for reuse, by size class (see pullq.c) */
  size_t nfree[2];
} pullq_t;

/* A worker's packets of one receive for one connection, queued together: one lock round
 * per PULLQ_BATCH packets instead of one each, and nodes reused instead of allocated.
 * The batch first reserves room in the queue, so the limit holds exactly as for single
 * pushes. Lives on the worker's stack; pullq_batch_end must follow its last add. */
#define PULLQ_BATCH 64
typedef struct pullq_batch_s {
  pullq_node_t *head, *tail; /* filled, not queued yet */
  pullq_node_t *stock;       /* empty small nodes taken from the queue's free list */
  size_t n, grant;           /* packets filled, of the room reserved */
} pullq_batch_t;

int pullq_init(pullq_t *q, pullq_room_fn on_room, void *ctx);
void pullq_destroy(pullq_t *q);
/* Forget queued events and start a new run with this packet limit. */
void pullq_reset(pullq_t *q, size_t limit);
void pullq_set_stopped(pullq_t *q);

/* Queue an event of connection `pc` (data copied). For a packet, returns 1 when the
 * queue is now full: the caller stops reading `conn` until on_room names it. 0
 * otherwise (also when the gate dropped or held it), -1 on OOM. */
int pullq_push(pullq_t *q, pullq_conn_t *pc, int type, iocpsrv_conn_id_t conn,
               void *conn_user, int reason, const void *data, size_t len);

void pullq_batch_init(pullq_batch_t *b);
/* Queues a packet of `conn` through the batch (data copied). Returns 1 when the queue
 * is now full (as pullq_push), 0, or -1 on OOM. */
int pullq_batch_add(pullq_t *q, pullq_batch_t *b, pullq_conn_t *pc, iocpsrv_conn_id_t conn,
                    void *conn_user, const void *data, size_t len);
/* Queues what the batch holds and gives back the room and nodes it did not use. */
void pullq_batch_end(pullq_t *q, pullq_batch_t *b, pullq_conn_t *pc);

/* A node kept aside so that an event can be queued later without allocating: every
 * pull-mode connection holds one for its DISCONNECT, which therefore can never be
 * lost to an allocation failure. NULL when out of memory. */
pullq_node_t *pullq_reserve(pullq_t *q);
/* Queue a reserved node as the connection's last event (its DISCONNECT; the queue owns
 * the node then): whatever its gate held is dropped and the gate opens for the next
 * connection in the slot. */
void pullq_push_last(pullq_t *q, pullq_conn_t *pc, pullq_node_t *n, int type,
                     iocpsrv_conn_id_t conn, void *conn_user, int reason);
/* The connection ends without a last event (the host never met it, or refused it). */
void pullq_forget(pullq_t *q, pullq_conn_t *pc);

/* iocpsrv_pause_receive: the packets queued for `conn` move behind its gate, and so do
 * those it pushes until pullq_resume. */
void pullq_hold(pullq_t *q, pullq_conn_t *pc, iocpsrv_conn_id_t conn);
/* iocpsrv_resume_receive: what the gate held goes back to the end of the queue, in
 * order. */
void pullq_resume(pullq_t *q, pullq_conn_t *pc);
/* iocpsrv_disconnect: the packets, drains and end-of-stream marks queued for `conn`
 * are dropped, and so is anything it pushes later except its last event. */
void pullq_drop(pullq_t *q, pullq_conn_t *pc, iocpsrv_conn_id_t conn);
void pullq_unreserve(pullq_t *q, pullq_node_t *n);

/* Before reading `conn`: 1 when the queue is at its limit (conn is then remembered
 * and handed to on_room later, as for a push that filled it), else 0. Checked before
 * every read, so the queue overshoots its limit by at most one packet per worker. */
int pullq_wait_if_full(pullq_t *q, iocpsrv_conn_id_t conn);

/* iocpsrv_poll. */
int pullq_poll(pullq_t *q, iocpsrv_event_t *events, int max, int timeout_ms);
/* iocpsrv_poll_packed: bytes written, 0 on timeout, or a negative code. */
int64_t pullq_poll_packed(pullq_t *q, void *buf, size_t cap, int timeout_ms);

size_t pullq_depth(pullq_t *q);

#endif
