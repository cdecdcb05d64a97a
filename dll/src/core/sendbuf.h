/* A connection's outgoing bytes: framed packets appended back to back in one
 * contiguous buffer, so a flush is one write of everything queued and a send costs a
 * memcpy, not an allocation, once the buffer has grown to the connection's rhythm. */
#ifndef IOCPSRV_CORE_SENDBUF_H
#define IOCPSRV_CORE_SENDBUF_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "core/framing.h"
#include "iocpsrv.h"

typedef struct sendbuf_s {
  uint8_t *buf; /* bytes [off, len) wait to be written */
  size_t off, len, cap;
} sendbuf_t;

static inline size_t sendbuf_pending(const sendbuf_t *b) { return b->len - b->off; }
static inline const uint8_t *sendbuf_data(const sendbuf_t *b) { return b->buf + b->off; }

/* The most one write hands to the OS: a WSABUF's length is a 32-bit ULONG, so a queue
 * of 2^32 bytes or more (IOCPSRV_OPT_SEND_QUEUE_LIMIT allows up to 2^40) is written in
 * pieces; a truncated length would send the wrong amount, or nothing at all (exactly
 * 2^32 bytes truncate to a zero-length send, forever). */
#define SENDBUF_MAX_WRITE ((size_t)1 << 30)
static inline size_t sendbuf_write_len(const sendbuf_t *b) {
  size_t n = sendbuf_pending(b);
  return n > SENDBUF_MAX_WRITE ? SENDBUF_MAX_WRITE : n;
}

/* Appends one packet: the header for `total` payload bytes, then the buffers. Returns
 * 0 or -1 when out of memory (nothing appended then). */
int sendbuf_append_slow(sendbuf_t *b, const framing_cfg_t *cfg, const iocpsrv_buf_t *bufs,
                        int count, size_t total);
/* Copies n bytes; small payloads (the common chat or game message) without a call. */
FRAMING_HOT void sendbuf_copy(uint8_t *d, const void *src, size_t n) {
  const uint8_t *s = (const uint8_t *)src;
  if (n > 16) {
    memcpy(d, s, n);
  } else if (n >= 8) { /* two overlapping 8-byte moves */
    uint64_t head, tail;
    memcpy(&head, s, 8);
    memcpy(&tail, s + n - 8, 8);
    memcpy(d, &head, 8);
    memcpy(d + n - 8, &tail, 8);
  } else {
    for (size_t i = 0; i < n; i++) d[i] = s[i];
  }
}

FRAMING_HOT int sendbuf_append(sendbuf_t *b, const framing_cfg_t *cfg,
                                 const iocpsrv_buf_t *bufs, int count, size_t total) {
  /* The hot case, one buffer that fits in the room already there: inline. */
  size_t need = cfg->header_bytes + total;
  if (count != 1 || total > b->cap || b->cap - b->len < need)
    return sendbuf_append_slow(b, cfg, bufs, count, total);
  uint8_t *w = b->buf + b->len;
  w += framing_write_header(cfg, w, total);
  sendbuf_copy(w, bufs[0].base, total);
  b->len += need;
  return 0;
}

/* Moves everything pending in `from` to the end of `b` (swapping buffers when `b` is
 * empty). Returns 0, or -1 when out of memory (both unchanged then). */
int sendbuf_take(sendbuf_t *b, sendbuf_t *from);
/* `n` bytes were written. */
void sendbuf_consume(sendbuf_t *b, size_t n);

void sendbuf_free(sendbuf_t *b);

#endif
