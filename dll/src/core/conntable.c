#include "core/conntable.h"
#include "core/fault.h"

#include <stdlib.h>
#include <string.h>

int conntable_init(conntable_t *t, size_t elem_size) {
  memset(t, 0, sizeof *t);
  /* Every chunk pointer the id space can need, once: the array never moves, so a
   * reader indexing it needs no lock however the limit changes (untouched pages of
   * this zeroed block cost no memory). */
  t->chunks = srv_calloc(CONN_MAX_CHUNKS, sizeof *t->chunks);
  if (!t->chunks) return -1;
  t->nchunks = CONN_MAX_CHUNKS;
  t->elem_size = elem_size;
  t->free_head = UINT32_MAX;
  srv_mutex_init(&t->lock);
  return 0;
}

int conntable_reserve(conntable_t *t, size_t max_slots) {
  if (max_slots > (size_t)CONN_MAX_CHUNKS * CONN_CHUNK) return -1;
  srv_mutex_lock(&t->lock);
  if (max_slots > t->max_slots) t->max_slots = max_slots;
  srv_mutex_unlock(&t->lock);
  return 0;
}

void conntable_destroy(conntable_t *t) {
  if (!t->chunks) return;
  for (size_t c = 0; c < t->nchunks; c++) {
    unsigned char *chunk = atomic_load(&t->chunks[c]);
    if (!chunk) continue;
    for (size_t i = 0; i < CONN_CHUNK; i++)
      srv_mutex_destroy(&((conn_slot_t *)(chunk + i * t->elem_size))->lock);
    free(chunk);
  }
  free((void *)t->chunks);
  srv_mutex_destroy(&t->lock);
  memset(t, 0, sizeof *t);
}

static unsigned char *chunk_of(conntable_t *t, size_t index) {
  size_t c = index / CONN_CHUNK;
  if (c >= t->nchunks) return NULL;
  return atomic_load_explicit(&t->chunks[c], memory_order_acquire);
}

conn_slot_t *conntable_at(conntable_t *t, size_t index) {
  unsigned char *chunk = chunk_of(t, index);
  return chunk ? (conn_slot_t *)(chunk + (index % CONN_CHUNK) * t->elem_size) : NULL;
}

conn_slot_t *conntable_lookup(conntable_t *t, uint64_t id) {
  if (id == 0) return NULL;
  return conntable_at(t, (size_t)(id & CONN_INDEX_MASK));
}

/* Makes slot `index` usable (allocating its chunk); table lock held. */
static conn_slot_t *grow_to(conntable_t *t, size_t index) {
  SRV_ASSERT_HELD(&t->lock);
  size_t c = index / CONN_CHUNK;
  unsigned char *chunk = atomic_load_explicit(&t->chunks[c], memory_order_relaxed);
  if (!chunk) {
    chunk = srv_calloc(CONN_CHUNK, t->elem_size);
    if (!chunk) return NULL;
    for (size_t i = 0; i < CONN_CHUNK; i++) {
      conn_slot_t *s = (conn_slot_t *)(chunk + i * t->elem_size);
      s->index = (uint32_t)(c * CONN_CHUNK + i);
      srv_mutex_init(&s->lock);
    }
    atomic_store_explicit(&t->chunks[c], chunk, memory_order_release);
  }
  atomic_store_explicit(&t->high_water, index + 1, memory_order_release);
  return (conn_slot_t *)(chunk + (index % CONN_CHUNK) * t->elem_size);
}

conn_slot_t *conntable_alloc(conntable_t *t, int *nomem) {
  conn_slot_t *s = NULL;
  *nomem = 0;
  srv_mutex_lock(&t->lock);
  if (t->free_head != UINT32_MAX) {
    s = conntable_at(t, t->free_head);
    t->free_head = s->next_free;
  } else {
    size_t used = conntable_used(t);
    if (used < t->max_slots) {
      s = grow_to(t, used);
      *nomem = s == NULL;
    }
  }
  srv_mutex_unlock(&t->lock);
  if (!s) return NULL;
  srv_mutex_lock(&s->lock);
  s->generation++;
  s->id = (s->generation << CONN_INDEX_BITS) | s->index;
  srv_mutex_unlock(&s->lock);
  return s;
}

void conntable_release(conntable_t *t, conn_slot_t *slot) {
  SRV_ASSERT_HELD(&slot->lock);
  SRV_ASSERT(slot->id == 0);
  srv_mutex_lock(&t->lock);
  slot->next_free = t->free_head;
  t->free_head = slot->index;
  srv_mutex_unlock(&t->lock);
}

