/* The connection table: slots that never move in memory, handed out by index, each
 * with a generation bumped on every reuse. A connection id is (generation << 24) |
 * index, so an id is never reused within a server's life and a stale id never
 * reaches another client: the slot's current id no longer matches.
 *
 * Slot memory lives until the table is destroyed. That is what lets an epoll event or
 * a completion that arrives after a connection closed look at its slot safely and
 * find out it is stale. */
#ifndef IOCPSRV_CORE_CONNTABLE_H
#define IOCPSRV_CORE_CONNTABLE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "core/platform.h"

#define CONN_INDEX_BITS 24
#define CONN_INDEX_MASK ((UINT64_C(1) << CONN_INDEX_BITS) - 1)
#define CONN_CHUNK 256
#define CONN_MAX_CHUNKS ((1u << CONN_INDEX_BITS) / CONN_CHUNK)

/* Every backend's connection struct starts with this. */
typedef struct conn_slot_s {
  uint64_t id;       /* current id, 0 while free; read and written under `lock` */
  uint32_t index;
  uint32_t next_free;
  uint64_t generation;
  srv_mutex_t lock;
} conn_slot_t;

typedef struct conntable_s {
  size_t elem_size;
  size_t max_slots;
  _Atomic(unsigned char *) *chunks; /* CONN_MAX_CHUNKS pointers, allocated once */
  size_t nchunks;                   /* CONN_MAX_CHUNKS: fixed for the table's life */
  atomic_size_t high_water;         /* slots [0, high_water) have been used */
  srv_mutex_t lock;                 /* free list and chunk allocation */
  uint32_t free_head;               /* UINT32_MAX when empty */
} conntable_t;

/* 0, or -1 when out of memory. */
int conntable_init(conntable_t *t, size_t elem_size);
/* Allow up to max_slots slots (grows only). Safe while readers look up slots: no
 * memory a reader can hold ever moves. */
int conntable_reserve(conntable_t *t, size_t max_slots);
void conntable_destroy(conntable_t *t);

/* A free slot with a fresh id (slot->id set, under its lock), or NULL when full or
 * (*nomem set) out of memory. The caller initialises the rest. */
conn_slot_t *conntable_alloc(conntable_t *t, int *nomem);
/* Return a slot; its lock must be held and its id already cleared to 0. */
void conntable_release(conntable_t *t, conn_slot_t *slot);

/* The slot an id points at, or NULL. The caller locks it and compares slot->id. */
conn_slot_t *conntable_lookup(conntable_t *t, uint64_t id);
/* The slot at an index, or NULL if never used (for sweeps and listings). */
conn_slot_t *conntable_at(conntable_t *t, size_t index);
static inline size_t conntable_used(conntable_t *t) {
  return atomic_load_explicit(&t->high_water, memory_order_acquire);
}

#endif
