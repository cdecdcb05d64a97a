#include "core/sendbuf.h"
#include "core/fault.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Capacity kept once the queue is empty; larger buffers are released so a burst does
 * not pin memory. Large enough for the rhythm of 64 KiB packets: freeing and
 * re-allocating a buffer that size on every drain costs an mmap, page faults and an
 * munmap per packet. An idle connection's empty buffer goes in the engine's sweep
 * (core/engine.c, trim after 1 s), so this costs idle connections nothing. */
#define SENDBUF_KEEP_CAP (128 * 1024)

/* Room for `need` more bytes at the end; NULL when out of memory. */
static uint8_t *sendbuf_reserve(sendbuf_t *b, size_t need) {
  size_t pending = b->len - b->off;
  if (need > SIZE_MAX / 4 || pending > SIZE_MAX / 4) return NULL; /* the doubling must not wrap */
  if (b->cap - b->len < need) {
    /* Slide the pending bytes to the front only when they are no more than the bytes
     * already written (so each byte is moved at most once per byte sent), else grow:
     * a long queue written a little at a time must not be moved on every append. */
    if (b->off && b->off >= pending && b->cap - pending >= need) {
      memmove(b->buf, b->buf + b->off, pending);
    } else {
      size_t cap = b->cap ? b->cap * 2 : 1024; /* doubling pays for the copy */
      while (cap < pending + need) cap *= 2;
      uint8_t *p = srv_malloc(cap);
      if (!p) return NULL;
      if (pending) memcpy(p, b->buf + b->off, pending);
      free(b->buf);
      b->buf = p;
      b->cap = cap;
    }
    b->off = 0;
    b->len = pending;
  }
  return b->buf + b->len;
}

int sendbuf_append_slow(sendbuf_t *b, const framing_cfg_t *cfg, const iocpsrv_buf_t *bufs,
                        int count, size_t total) {
  if (total > SIZE_MAX / 4) return -1;
  size_t need = cfg->header_bytes + total;
  uint8_t *w = sendbuf_reserve(b, need);
  if (!w) return -1;
  w += framing_write_header(cfg, w, total);
  for (int i = 0; i < count; i++) {
    if (bufs[i].len) memcpy(w, bufs[i].base, bufs[i].len);
    w += bufs[i].len;
  }
  b->len += need;
  return 0;
}

int sendbuf_take(sendbuf_t *b, sendbuf_t *from) {
  size_t n = sendbuf_pending(from);
  if (!n) return 0;
  if (!sendbuf_pending(b)) { /* the usual case: swap, nothing copied */
    sendbuf_t t = *b;
    *b = *from;
    *from = t;
    from->off = from->len = 0;
    return 0;
  }
  uint8_t *w = sendbuf_reserve(b, n);
  if (!w) return -1;
  memcpy(w, sendbuf_data(from), n);
  b->len += n;
  sendbuf_consume(from, n);
  return 0;
}

void sendbuf_consume(sendbuf_t *b, size_t n) {
  b->off += n;
  if (b->off < b->len) return;
  b->off = b->len = 0;
  if (b->cap > SENDBUF_KEEP_CAP) sendbuf_free(b);
}

void sendbuf_free(sendbuf_t *b) {
  free(b->buf);
  b->buf = NULL;
  b->off = b->len = b->cap = 0;
}
