#include "core/pullq.h"
#include "core/fault.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct pullq_node_s {
  pullq_node_t *next;
  size_t cap; /* payload room */
  iocpsrv_event_t ev;
  uint8_t data[]; /* payload copy, NUL-terminated so a peer address is a C string */
};

int pullq_init(pullq_t *q, pullq_room_fn on_room, void *ctx) {
  memset(q, 0, sizeof *q);
  if (srv_waitable_init(&q->waitable)) return -1;
  srv_mutex_init(&q->lock);
  srv_cond_init(&q->nonempty);
  q->on_room = on_room;
  q->room_ctx = ctx;
  q->limit = 8192;
  q->stopped = 1; /* until the first listen: a poll says IOCPSRV_ESTOPPED */
  return 0;
}

static void free_list(pullq_node_t *n) {
  while (n) {
    pullq_node_t *next = n->next;
    free(n);
    n = next;
  }
}

/* Large packets: a node freed by one thread and allocated by another goes back to the
 * system between packets (an arena trimmed with madvise), so every 64 KiB packet would
 * fault in fresh zeroed pages. Nodes with room for at least SPARE_MIN bytes are kept
 * for reuse instead, up to SPARE_MAX_BYTES in all. */
#define SPARE_MIN (16u * 1024)
#define SPARE_MAX_BYTES (8u << 20)
#define SPARE_ROUND (16u * 1024)

/* Small nodes come in two size classes, every node of a class the same size, so that
 * the consumer hands spent ones back to the workers' batches instead of to free(): a
 * block freed on one thread and allocated on another is the costliest path of malloc,
 * once per event. Up to FREE_MAX_BYTES per class are kept. */
static const size_t class_bytes[2] = {256, 2048};
#define FREE_MAX_BYTES (2u << 20)

static size_t class_cap(int k) { return class_bytes[k] - sizeof(pullq_node_t) - 1; }

/* The class a payload of `len` bytes needs, or -1 when it needs a node of its own. */
static int class_of_len(size_t len) {
  return len <= class_cap(0) ? 0 : len <= class_cap(1) ? 1 : -1;
}

static int class_of_node(const pullq_node_t *n) {
  return n->cap == class_cap(0) ? 0 : n->cap == class_cap(1) ? 1 : -1;
}

/* Keeps a spent node for reuse (a free list or the spares) if there is room; returns
 * 0 when the caller must free it. Lock held. */
static int keep_node(pullq_t *q, pullq_node_t *n) {
  SRV_ASSERT_HELD(&q->lock);
  int k = class_of_node(n);
  if (k >= 0 && q->nfree[k] * class_bytes[k] < FREE_MAX_BYTES) {
    n->next = q->free[k];
    q->free[k] = n;
    q->nfree[k]++;
    return 1;
  }
  if (n->cap >= SPARE_MIN && q->spare_bytes + n->cap <= SPARE_MAX_BYTES) {
    n->next = q->spare;
    q->spare = n;
    q->spare_bytes += n->cap;
    return 1;
  }
  return 0;
}

static void recycle_locked(pullq_t *q, pullq_node_t *n) {
  if (!keep_node(q, n)) free(n);
}

static void release_list(pullq_t *q, pullq_node_t *n) { /* lock held */
  SRV_ASSERT_HELD(&q->lock);
  while (n) {
    pullq_node_t *next = n->next;
    recycle_locked(q, n);
    n = next;
  }
}

/* Like release_list, but the nodes not kept are returned for the caller to free once
 * the lock is dropped: the workers queueing events wait for this lock, not for free(). */
static pullq_node_t *release_kept(pullq_t *q, pullq_node_t *n) { /* lock held */
  SRV_ASSERT_HELD(&q->lock);
  pullq_node_t *unkept = NULL;
  while (n) {
    pullq_node_t *next = n->next;
    if (!keep_node(q, n)) {
      n->next = unkept;
      unkept = n;
    }
    n = next;
  }
  return unkept;
}

/* A kept node of class k, or NULL. Lock held. */
static pullq_node_t *take_free_locked(pullq_t *q, int k) {
  SRV_ASSERT_HELD(&q->lock);
  pullq_node_t *n = q->free[k];
  if (n) {
    q->free[k] = n->next;
    q->nfree[k]--;
  }
  return n;
}

static pullq_node_t *node_new(pullq_t *q, size_t len) {
  int k = class_of_len(len);
  if (k >= 0) {
    len = class_cap(k);
  } else if (len >= SPARE_MIN) {
    srv_mutex_lock(&q->lock);
    pullq_node_t **p = &q->spare;
    while (*p && (*p)->cap < len) p = &(*p)->next;
    pullq_node_t *n = *p;
    if (n) {
      *p = n->next;
      q->spare_bytes -= n->cap;
    }
    srv_mutex_unlock(&q->lock);
    if (n) return n;
    if (len <= SIZE_MAX - SPARE_ROUND) len = (len + SPARE_ROUND - 1) / SPARE_ROUND * SPARE_ROUND;
  }
  pullq_node_t *n = srv_malloc(sizeof *n + len + 1);
  if (n) n->cap = len;
  return n;
}

void pullq_destroy(pullq_t *q) {
  free_list(q->spare);
  free_list(q->free[0]);
  free_list(q->free[1]);
  free_list(q->head);
  free_list(q->batch);
  free(q->waiters);
  srv_waitable_destroy(&q->waitable);
  srv_cond_destroy(&q->nonempty);
  srv_mutex_destroy(&q->lock);
}

void pullq_reset(pullq_t *q, size_t limit) {
  srv_mutex_lock(&q->lock);
  free_list(q->head);
  free_list(q->batch);
  q->head = q->tail = q->batch = NULL;
  q->events = q->packets = 0;
  q->nwaiters = 0;
  q->neof = 0;
  q->reserved = 0;
  q->stopped = 0;
  q->limit = limit;
  srv_waitable_reset(&q->waitable);
  srv_mutex_unlock(&q->lock);
}

void pullq_set_stopped(pullq_t *q) {
  srv_mutex_lock(&q->lock);
  q->stopped = 1;
  srv_waitable_set(&q->waitable);
  srv_cond_broadcast(&q->nonempty);
  srv_mutex_unlock(&q->lock);
}

static int add_id(iocpsrv_conn_id_t **ids, size_t *n, size_t *cap, iocpsrv_conn_id_t id) {
  if (*n == *cap) {
    size_t c = *cap ? *cap * 2 : 64;
    iocpsrv_conn_id_t *p = srv_realloc(*ids, c * sizeof *p);
    if (!p) return -1;
    *ids = p;
    *cap = c;
  }
  (*ids)[(*n)++] = id;
  return 0;
}

static int add_waiter(pullq_t *q, iocpsrv_conn_id_t conn) {
  return add_id(&q->waiters, &q->nwaiters, &q->capwaiters, conn);
}

static void node_fill(pullq_node_t *n, int type, iocpsrv_conn_id_t conn, void *conn_user,
                      int reason, const void *data, size_t len) {
  n->next = NULL;
  n->ev.type = type;
  n->ev.reason = reason;
  n->ev.conn = conn;
  n->ev.conn_user = conn_user;
  n->ev.data = n->data;
  n->ev.len = len;
  if (len) memcpy(n->data, data, len);
  n->data[len] = 0;
}

/* Appends a node to the queue proper; lock held. */
static void queue_append_locked(pullq_t *q, pullq_node_t *n) {
  SRV_ASSERT_HELD(&q->lock);
  n->next = NULL;
  if (q->tail) q->tail->next = n;
  else q->head = n;
  q->tail = n;
  if (q->events++ == 0) {
    srv_waitable_set(&q->waitable);
    srv_cond_signal(&q->nonempty);
  }
  if (n->ev.type == IOCPSRV_EVENT_PACKET) q->packets++;
}

static void held_free(pullq_t *q, pullq_conn_t *pc) { /* lock held */
  SRV_ASSERT_HELD(&q->lock);
  release_list(q, pc->held);
  pc->held = pc->held_tail = NULL;
}

/* Whether the gate keeps this event from the queue: held (appended behind the gate)
 * or dropped (freed). The connection's last event always passes. Lock held. */
static int gate_takes(pullq_t *q, pullq_conn_t *pc, pullq_node_t *n) {
  SRV_ASSERT_HELD(&q->lock);
  int type = n->ev.type;
  if (!pc || pc->gate == PULLQ_OPEN || type == IOCPSRV_EVENT_DISCONNECT) return 0;
  if (pc->gate == PULLQ_HOLD && (type == IOCPSRV_EVENT_PACKET || type == PULLQ_EOF_MARK)) {
    n->next = NULL;
    if (pc->held_tail) pc->held_tail->next = n;
    else pc->held = n;
    pc->held_tail = n;
    return 1;
  }
  if (pc->gate == PULLQ_DROP && type != IOCPSRV_EVENT_CONNECT) {
    recycle_locked(q, n);
    return 1;
  }
  return 0;
}

/* Whether the packets queued and those granted to workers' batches reach the limit
 * (none applies once stopped). Lock held. */
static int queue_full_locked(const pullq_t *q) {
  return q->packets + q->reserved >= q->limit && !q->stopped;
}

/* Whether the connections waiting for room may have it now, without the consumer
 * taking packets first: the same threshold as a poll's (half the limit), and not full
 * with the room reserved by workers' batches. Lock held. */
static int room_due_locked(const pullq_t *q) {
  SRV_ASSERT_HELD(&q->lock);
  return q->nwaiters && q->packets <= q->limit / 2 && !queue_full_locked(q);
}

/* Packets left the count without a poll: pullq_hold or pullq_drop took them out of the
 * queue, or a batch gave back the room it had reserved (its packets held or dropped
 * by the gate, or fewer than it reserved). The waiters were handed room only by a poll
 * that took packets; with nothing queued, a consumer in iocpsrv_poll would have slept
 * until its timeout (for ever with -1) and they with it. Wake it (and an event loop
 * watching the handle) to hand the room out. Lock held. */
static void room_wake_locked(pullq_t *q) {
  SRV_ASSERT_HELD(&q->lock);
  if (!room_due_locked(q)) return;
  srv_waitable_set(&q->waitable);
  srv_cond_signal(&q->nonempty);
}

/* Queue a filled node and tell whether the queue is now full for `conn`. */
static int node_queue(pullq_t *q, pullq_conn_t *pc, pullq_node_t *n) {
  int full = 0;
  srv_mutex_lock(&q->lock);
  if (!gate_takes(q, pc, n)) {
    queue_append_locked(q, n);
    /* If the waiter cannot be recorded, the connection just keeps reading. */
    if (n->ev.type == IOCPSRV_EVENT_PACKET && queue_full_locked(q))
      full = add_waiter(q, n->ev.conn) == 0;
  }
  srv_mutex_unlock(&q->lock);
  return full;
}

/* Takes the packets and end-of-stream marks of `conn` (and, unless `hold`, its drains)
 * out of the queue: behind its gate, in order (hold), or freed. Lock held. */
static void queue_extract_locked(pullq_t *q, iocpsrv_conn_id_t conn, int hold,
                                 pullq_conn_t *pc) {
  SRV_ASSERT_HELD(&q->lock);
  pullq_node_t **pp = &q->head, *last = NULL;
  while (*pp) {
    pullq_node_t *n = *pp;
    int type = n->ev.type;
    int take = n->ev.conn == conn &&
               (type == IOCPSRV_EVENT_PACKET || type == PULLQ_EOF_MARK ||
                (!hold && type == IOCPSRV_EVENT_DRAIN));
    if (!take) {
      last = n;
      pp = &n->next;
      continue;
    }
    *pp = n->next;
    q->events--;
    if (type == IOCPSRV_EVENT_PACKET) q->packets--;
    if (hold) {
      n->next = NULL;
      if (pc->held_tail) pc->held_tail->next = n;
      else pc->held = n;
      pc->held_tail = n;
    } else {
      recycle_locked(q, n);
    }
  }
  q->tail = last;
}

void pullq_hold(pullq_t *q, pullq_conn_t *pc, iocpsrv_conn_id_t conn) {
  srv_mutex_lock(&q->lock);
  if (pc->gate == PULLQ_OPEN) {
    pc->gate = PULLQ_HOLD;
    queue_extract_locked(q, conn, 1, pc);
    room_wake_locked(q);
  }
  srv_mutex_unlock(&q->lock);
}

void pullq_resume(pullq_t *q, pullq_conn_t *pc) {
  srv_mutex_lock(&q->lock);
  if (pc->gate == PULLQ_HOLD) {
    pc->gate = PULLQ_OPEN;
    pullq_node_t *n = pc->held;
    pc->held = pc->held_tail = NULL;
    while (n) {
      pullq_node_t *next = n->next;
      queue_append_locked(q, n);
      n = next;
    }
  }
  srv_mutex_unlock(&q->lock);
}

void pullq_drop(pullq_t *q, pullq_conn_t *pc, iocpsrv_conn_id_t conn) {
  srv_mutex_lock(&q->lock);
  pc->gate = PULLQ_DROP;
  held_free(q, pc);
  queue_extract_locked(q, conn, 0, pc);
  room_wake_locked(q);
  srv_mutex_unlock(&q->lock);
}

void pullq_forget(pullq_t *q, pullq_conn_t *pc) {
  srv_mutex_lock(&q->lock);
  held_free(q, pc);
  pc->gate = PULLQ_OPEN;
  srv_mutex_unlock(&q->lock);
}

int pullq_push(pullq_t *q, pullq_conn_t *pc, int type, iocpsrv_conn_id_t conn,
               void *conn_user, int reason, const void *data, size_t len) {
  pullq_node_t *n = node_new(q, len);
  if (!n) return -1;
  node_fill(n, type, conn, conn_user, reason, data, len);
  return node_queue(q, pc, n);
}

void pullq_batch_init(pullq_batch_t *b) { memset(b, 0, sizeof *b); }

/* The batch's filled nodes join the queue (or the gate), in order, and its grant is
 * given back: what it used is counted as queued packets now. Lock held. */
static void batch_append_locked(pullq_t *q, pullq_batch_t *b, pullq_conn_t *pc) {
  SRV_ASSERT_HELD(&q->lock);
  SRV_ASSERT(b->n <= b->grant && q->reserved >= b->grant);
  pullq_node_t *n = b->head;
  while (n) {
    pullq_node_t *next = n->next;
    if (!gate_takes(q, pc, n)) queue_append_locked(q, n);
    n = next;
  }
  b->head = b->tail = NULL;
  q->reserved -= b->grant;
  b->grant = b->n = 0;
  room_wake_locked(q);
}

/* Queues what the batch filled, then reserves room for up to PULLQ_BATCH more packets
 * and takes kept nodes of class k for them. Returns 1 when the queue is full. */
static int batch_exchange(pullq_t *q, pullq_batch_t *b, pullq_conn_t *pc, int k) {
  srv_mutex_lock(&q->lock);
  batch_append_locked(q, b, pc);
  int full = queue_full_locked(q);
  if (!full) {
    size_t room = q->stopped ? PULLQ_BATCH : q->limit - q->packets - q->reserved;
    b->grant = room < PULLQ_BATCH ? room : PULLQ_BATCH;
    q->reserved += b->grant;
    for (size_t i = 0; k >= 0 && i < b->grant; i++) {
      pullq_node_t *n = take_free_locked(q, k);
      if (!n) break;
      n->next = b->stock;
      b->stock = n;
    }
  }
  srv_mutex_unlock(&q->lock);
  return full;
}

/* A node with room for `len` bytes: from the batch's stock, else a new one. */
static pullq_node_t *batch_node(pullq_t *q, pullq_batch_t *b, size_t len) {
  pullq_node_t **p = &b->stock;
  int k = class_of_len(len);
  while (*p && k >= 0 && class_of_node(*p) != k) p = &(*p)->next;
  pullq_node_t *n = k >= 0 ? *p : NULL;
  if (!n) return node_new(q, len);
  if (fault_os(FAULT_ALLOC)) return NULL; /* a reused node counts as an allocation */
  *p = n->next;
  return n;
}

int pullq_batch_add(pullq_t *q, pullq_batch_t *b, pullq_conn_t *pc, iocpsrv_conn_id_t conn,
                    void *conn_user, const void *data, size_t len) {
  if (b->n == b->grant) {
    if (batch_exchange(q, b, pc, class_of_len(len)))
      /* Full: this packet (already cut by the framer) is queued alone, one over. */
      return pullq_push(q, pc, IOCPSRV_EVENT_PACKET, conn, conn_user, 0, data, len);
    fault_point(FAULT_POINT_PULL_RESERVED, conn);
  }
  pullq_node_t *n = batch_node(q, b, len);
  if (!n) return -1;
  node_fill(n, IOCPSRV_EVENT_PACKET, conn, conn_user, 0, data, len);
  if (b->tail) b->tail->next = n;
  else b->head = n;
  b->tail = n;
  b->n++;
  return 0;
}

void pullq_batch_end(pullq_t *q, pullq_batch_t *b, pullq_conn_t *pc) {
  if (!b->head && !b->grant && !b->stock) return;
  srv_mutex_lock(&q->lock);
  batch_append_locked(q, b, pc);
  release_list(q, b->stock);
  b->stock = NULL;
  srv_mutex_unlock(&q->lock);
}

pullq_node_t *pullq_reserve(pullq_t *q) {
  (void)q; /* held for the connection's lifetime: no size class, the smallest node */
  pullq_node_t *n = srv_malloc(sizeof *n + 1);
  if (n) n->cap = 0;
  return n;
}

void pullq_push_last(pullq_t *q, pullq_conn_t *pc, pullq_node_t *n, int type,
                     iocpsrv_conn_id_t conn, void *conn_user, int reason) {
  node_fill(n, type, conn, conn_user, reason, NULL, 0);
  srv_mutex_lock(&q->lock);
  held_free(q, pc); /* a connection that ends paused: what it held is never handed out */
  pc->gate = PULLQ_OPEN;
  queue_append_locked(q, n);
  srv_mutex_unlock(&q->lock);
}

void pullq_unreserve(pullq_t *q, pullq_node_t *n) {
  (void)q;
  free(n);
}

int pullq_wait_if_full(pullq_t *q, iocpsrv_conn_id_t conn) {
  int full = 0;
  srv_mutex_lock(&q->lock);
  /* If the waiter cannot be recorded the connection reads on: one packet over. */
  if (queue_full_locked(q)) full = add_waiter(q, conn) == 0;
  srv_mutex_unlock(&q->lock);
  return full;
}

/* Where a poll puts what it takes: iocpsrv_event_t structs pointing into the batch,
 * or records packed into the host's buffer (iocpsrv_poll_packed). */
typedef struct pullq_sink_s {
  iocpsrv_event_t *events; /* struct mode when non-NULL */
  int max;
  uint8_t *buf;            /* packed mode */
  size_t cap, used;
  pullq_node_t *first;     /* packed: the first node taken by this poll */
  int nospace;             /* packed: the next event did not fit an empty buffer */
} pullq_sink_t;

/* Whether the sink has room for one more event like `ev`; reserves it. */
static int sink_take(pullq_sink_t *k, const iocpsrv_event_t *ev, int n) {
  if (k->events) {
    if (n >= k->max) return 0;
    k->events[n] = *ev;
    return 1;
  }
  size_t need = IOCPSRV_RECORD_SIZE(ev->len);
  if (ev->len > UINT32_MAX || need > k->cap - k->used) {
    k->nospace = n == 0;
    return 0;
  }
  k->used += need;
  return 1;
}

/* Takes queued events into the batch while the sink has room; lock held. */
static int take_batch(pullq_t *q, pullq_sink_t *k) {
  SRV_ASSERT_HELD(&q->lock);
  /* Appended: a poll that took only end-of-stream marks waits and takes again, and
   * the marks' nodes stay on the batch until the next poll releases it. */
  pullq_node_t **tail = &q->batch;
  while (*tail) tail = &(*tail)->next;
  int n = 0;
  k->nospace = 0;
  while (q->head) {
    pullq_node_t *node = q->head;
    int eof = node->ev.type == PULLQ_EOF_MARK;
    if (!eof && !sink_take(k, &node->ev, n)) break;
    q->head = node->next;
    node->next = NULL;
    *tail = node;
    if (!k->first) k->first = node;
    tail = &node->next;
    q->events--;
    if (eof) {
      q->neof++; /* acted on from the batch itself (run_eof_marks): no allocation */
      continue;
    }
    n++;
    if (node->ev.type == IOCPSRV_EVENT_PACKET) q->packets--;
  }
  if (!q->head) q->tail = NULL;
  return n;
}

/* Packed mode, lock not held: the records of the events taken. The batch is the
 * consumer's alone, so it is read without the lock. */
static void sink_pack(pullq_sink_t *k) {
  uint8_t *p = k->buf;
  for (pullq_node_t *n = k->first; n; n = n->next) {
    if (n->ev.type == PULLQ_EOF_MARK || n->ev.type == 0) continue;
    iocpsrv_record_t r = {(uint32_t)n->ev.len, (uint16_t)n->ev.type, (uint16_t)n->ev.reason,
                          n->ev.conn, (uint64_t)(uintptr_t)n->ev.conn_user};
    memcpy(p, &r, sizeof r);
    p += sizeof r;
    if (n->ev.len) memcpy(p, n->data, n->ev.len);
    size_t pad = IOCPSRV_PACKED_ALIGN(n->ev.len) - n->ev.len;
    memset(p + n->ev.len, 0, pad);
    p += n->ev.len + pad;
  }
  SRV_ASSERT((size_t)(p - k->buf) == k->used);
}

/* Hand the end-of-stream marks taken so far to on_eof; lock held, dropped meanwhile. */
static void run_eof_marks(pullq_t *q) {
  SRV_ASSERT_HELD(&q->lock);
  if (!q->neof) return;
  q->neof = 0;
  /* The batch is the consumer's alone (one poll at a time): walking it unlocked while
   * on_eof runs is safe; each mark is spent so that it is acted on once. */
  for (pullq_node_t *n = q->batch; n; n = n->next) {
    if (n->ev.type != PULLQ_EOF_MARK) continue;
    n->ev.type = 0;
    iocpsrv_conn_id_t id = n->ev.conn;
    srv_mutex_unlock(&q->lock);
    q->on_eof(q->room_ctx, &id, 1);
    srv_mutex_lock(&q->lock);
  }
}

/* Hands the room to the connections waiting for it (on_room); lock held, dropped
 * meanwhile. The consumer's thread only (on_room's contract). */
static void hand_room_locked(pullq_t *q) {
  SRV_ASSERT_HELD(&q->lock);
  iocpsrv_conn_id_t *waiters = q->waiters;
  size_t nwaiters = q->nwaiters;
  q->waiters = NULL;
  q->nwaiters = q->capwaiters = 0;
  srv_mutex_unlock(&q->lock);
  q->on_room(q->room_ctx, waiters, nwaiters);
  free(waiters);
  srv_mutex_lock(&q->lock);
}

/* Waits for events and takes a batch into the sink; lock held. Returns the count or a
 * negative code. */
static int wait_and_take(pullq_t *q, pullq_sink_t *k, int timeout_ms) {
  SRV_ASSERT_HELD(&q->lock);
  int64_t deadline = timeout_ms < 0 ? -1 : srv_now_ms() + timeout_ms;
  for (;;) {
    while (!q->head && !q->stopped) {
      /* Room made while nothing is queued (room_wake_locked): hand it out and wait on,
       * since a poll never returns 0 before its timeout. */
      if (room_due_locked(q)) {
        hand_room_locked(q);
        continue;
      }
      int64_t left = deadline < 0 ? -1 : deadline - srv_now_ms();
      if (deadline >= 0 && left <= 0) break;
      srv_cond_wait_ms(&q->nonempty, &q->lock, left);
    }
    int n = q->head ? take_batch(q, k) : (q->stopped ? IOCPSRV_ESTOPPED : 0);
    if (n == 0 && k->nospace) return IOCPSRV_ENOSPACE;
    if (n != 0 || q->neof == 0) return n;
    /* Only end-of-stream marks: the host has handled everything queued before them,
     * so they are acted on now, and the wait goes on (they are not events). */
    run_eof_marks(q);
  }
}

static int poll_sink(pullq_t *q, pullq_sink_t *k, int timeout_ms) {
  srv_mutex_lock(&q->lock);
  if (q->polling) {
    srv_mutex_unlock(&q->lock);
    return IOCPSRV_EBUSY;
  }
  q->polling = 1;
  SRV_ASSERT(q->polling); /* the batch is this consumer's alone */
  run_eof_marks(q); /* the host has handled the batch that held them */
  pullq_node_t *spent = release_kept(q, q->batch);
  q->batch = NULL;
  int n = wait_and_take(q, k, timeout_ms);
  /* Signalled while events wait, or while end-of-stream marks taken now wait for the
   * next poll to act on them (an event loop that polls only when the handle fires must
   * come back), or once stopped. */
  if (q->events == 0 && !q->stopped && q->neof == 0) srv_waitable_reset(&q->waitable);

  iocpsrv_conn_id_t *waiters = NULL;
  size_t nwaiters = 0;
  if (q->nwaiters && q->packets <= q->limit / 2) {
    waiters = q->waiters;
    nwaiters = q->nwaiters;
    q->waiters = NULL;
    q->nwaiters = q->capwaiters = 0;
  }
  if (n > 0 && !k->events) {
    srv_mutex_unlock(&q->lock);
    sink_pack(k); /* unlocked: workers go on queueing meanwhile */
    srv_mutex_lock(&q->lock);
  }
  q->polling = 0; /* after the copy: the next poll frees the batch */
  srv_mutex_unlock(&q->lock);
  free_list(spent);
  if (nwaiters) q->on_room(q->room_ctx, waiters, nwaiters);
  free(waiters);
  return n;
}

int pullq_poll(pullq_t *q, iocpsrv_event_t *events, int max, int timeout_ms) {
  pullq_sink_t k = {0};
  k.events = events;
  k.max = max;
  return poll_sink(q, &k, timeout_ms);
}

int64_t pullq_poll_packed(pullq_t *q, void *buf, size_t cap, int timeout_ms) {
  pullq_sink_t k = {0};
  k.buf = buf;
  k.cap = cap;
  int n = poll_sink(q, &k, timeout_ms);
  return n > 0 ? (int64_t)k.used : n;
}

size_t pullq_depth(pullq_t *q) {
  srv_mutex_lock(&q->lock);
  size_t n = q->events;
  srv_mutex_unlock(&q->lock);
  return n;
}
