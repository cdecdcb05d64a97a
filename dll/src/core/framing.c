#include "core/framing.h"
#include "core/fault.h"

#include <stdlib.h>
#include <string.h>

#include "iocpsrv.h"

/* Stash capacity kept across packets; a larger one is freed once empty so an idle
 * connection does not pin the memory of its biggest packet. */
#define FRAMER_KEEP_CAP 4096
/* A packet with at least this much payload still missing is received in place. */
#define FRAMER_DIRECT_MIN 16384
/* After a large packet, a receive at a frame boundary asks for this much at once. */
#define FRAMER_LARGE_READ 65536

int framing_cfg_from_option(framing_cfg_t *cfg, int64_t framing, int64_t max_packet) {
  cfg->big_endian = framing == IOCPSRV_FRAMING_LEN32_BE || framing == IOCPSRV_FRAMING_LEN16_BE;
  switch (framing) {
  case IOCPSRV_FRAMING_LEN32_LE:
  case IOCPSRV_FRAMING_LEN32_BE: cfg->header_bytes = 4; break;
  case IOCPSRV_FRAMING_LEN16_LE:
  case IOCPSRV_FRAMING_LEN16_BE: cfg->header_bytes = 2; break;
  case IOCPSRV_FRAMING_RAW: cfg->header_bytes = 0; break;
  default: return -1;
  }
  cfg->max_packet = (uint32_t)max_packet;
  if (cfg->header_bytes == 2 && cfg->max_packet > 65535) cfg->max_packet = 65535;
  return 0;
}

/* Total size of the frame starting at p: 0 while the header is incomplete, -1 above
 * the maximum. */
FRAMING_HOT int64_t frame_total(const framing_cfg_t *cfg, const uint8_t *p, size_t have) {
  if (have < cfg->header_bytes) return 0;
  uint32_t len = framing_read_length(cfg, p);
  if (len > cfg->max_packet) return -1;
  return (int64_t)cfg->header_bytes + len;
}

static int stash_reserve(framer_t *f, size_t need) {
  if (f->off > 0 && f->len + need > f->cap) {
    memmove(f->buf, f->buf + f->off, f->len - f->off);
    f->len -= f->off;
    f->off = 0;
  }
  if (f->len + need <= f->cap) return 0;
  size_t cap = f->cap ? f->cap : 256;
  while (cap < f->len + need) cap *= 2;
  uint8_t *p = srv_realloc(f->buf, cap);
  if (!p) return -1;
  f->buf = p;
  f->cap = cap;
  return 0;
}

static int stash_append(framer_t *f, const uint8_t *data, size_t len) {
  if (len == 0) return 0;
  if (stash_reserve(f, len)) return -1;
  memcpy(f->buf + f->len, data, len);
  f->len += len;
  return 0;
}

static void stash_clear(framer_t *f) {
  f->off = f->len = 0;
  f->held = 0;
  /* Large packets keep their stash for the next one (the sweep frees an idle
   * connection's); a burst of small ones does not pin it. */
  if (f->cap > FRAMER_KEEP_CAP && !f->large) {
    free(f->buf);
    f->buf = NULL;
    f->cap = 0;
  }
}

/* Delivers the whole frames of p[0..n) in place; *used = bytes consumed. An
 * incomplete trailing frame is left unconsumed, but its header is checked. */
static int deliver_frames(framer_t *f, const framing_cfg_t *cfg, const uint8_t *p, size_t n,
                          size_t *used, framer_deliver_fn deliver, void *ctx) {
  size_t pos = 0;
  int rc = FRAMER_OK;
  for (;;) {
    int64_t total = frame_total(cfg, p + pos, n - pos);
    if (total < 0) { rc = FRAMER_PROTOCOL_ERROR; break; }
    if (total == 0 || (size_t)total > n - pos) break;
    const uint8_t *payload = p + pos + cfg->header_bytes;
    size_t len = (size_t)total - cfg->header_bytes;
    pos += (size_t)total;
    f->large = len >= FRAMER_DIRECT_MIN;
    if (deliver(ctx, payload, len)) { rc = FRAMER_STOPPED; break; }
  }
  *used = pos;
  return rc;
}

/* Raw mode hands each receive over in one piece, so nothing is ever held back. */
static int feed_raw(const uint8_t *data, size_t len, framer_deliver_fn deliver, void *ctx) {
  if (len == 0) return FRAMER_OK;
  return deliver(ctx, data, len) ? FRAMER_STOPPED : FRAMER_OK;
}

/* Completes the partial frame in the stash from data; advances data/len. Returns
 * FRAMER_OK with the frame delivered (or the data exhausted), or an error. */
static int complete_stashed_frame(framer_t *f, const framing_cfg_t *cfg,
                                  const uint8_t **data, size_t *len,
                                  framer_deliver_fn deliver, void *ctx) {
  for (;;) {
    size_t have = f->len - f->off;
    int64_t total = frame_total(cfg, f->buf + f->off, have);
    if (total < 0) return FRAMER_PROTOCOL_ERROR;
    size_t want = total ? (size_t)total : cfg->header_bytes;
    if (have == want && total) break;
    size_t take = want - have < *len ? want - have : *len;
    if (take == 0) return FRAMER_OK;  /* data exhausted */
    if (stash_append(f, *data, take)) return FRAMER_NOMEM;
    *data += take;
    *len -= take;
  }
  size_t have = f->len - f->off;
  f->large = have - cfg->header_bytes >= FRAMER_DIRECT_MIN;
  int r = deliver(ctx, f->buf + f->off + cfg->header_bytes, have - cfg->header_bytes);
  stash_clear(f);
  return r ? FRAMER_STOPPED : FRAMER_OK;
}

int framer_feed(framer_t *f, const framing_cfg_t *cfg, const uint8_t *data, size_t len,
                framer_deliver_fn deliver, void *ctx) {
  if (cfg->header_bytes == 0) return feed_raw(data, len, deliver, ctx);
  if (f->held) {
    if (stash_append(f, data, len)) return FRAMER_NOMEM;
    return framer_resume(f, cfg, deliver, ctx);
  }
  if (framer_buffered(f)) {
    int rc = complete_stashed_frame(f, cfg, &data, &len, deliver, ctx);
    if (rc < 0) return rc;
    if (rc == FRAMER_STOPPED) {
      if (len && stash_append(f, data, len)) return FRAMER_NOMEM;
      f->held = len > 0;
      return FRAMER_STOPPED;
    }
    if (len == 0) return FRAMER_OK;
  }
  size_t used;
  int rc = deliver_frames(f, cfg, data, len, &used, deliver, ctx);
  if (rc == FRAMER_PROTOCOL_ERROR) return rc;
  if (used < len) {
    if (stash_append(f, data + used, len - used)) return FRAMER_NOMEM;
    f->held = rc == FRAMER_STOPPED;
  }
  return rc;
}

int framer_resume(framer_t *f, const framing_cfg_t *cfg, framer_deliver_fn deliver,
                  void *ctx) {
  if (!f->held) return FRAMER_OK;
  size_t used;
  int rc = deliver_frames(f, cfg, f->buf + f->off, f->len - f->off, &used, deliver, ctx);
  if (rc == FRAMER_PROTOCOL_ERROR) return rc;
  f->off += used;
  if (rc == FRAMER_STOPPED && framer_buffered(f)) return rc;
  /* Whatever is left is one incomplete frame: keep it at the start of the stash. */
  f->held = 0;
  size_t rest = framer_buffered(f);
  if (rest == 0) {
    stash_clear(f);
  } else if (f->off) {
    memmove(f->buf, f->buf + f->off, rest);
    f->off = 0;
    f->len = rest;
  }
  return rc;
}

/* How much the next direct receive asks for. A first large packet: the rest of it.
 * After a large packet (the next is likely large too), a read buffer's worth past
 * what the frame in progress misses: a read that stopped exactly at a frame boundary
 * would look full and cost another receive to learn that nothing more waits; the
 * frames it completes are delivered in place, a partial one stays where it is. 0: no
 * direct receive. */
static size_t direct_want(const framer_t *f, const framing_cfg_t *cfg) {
  size_t have = framer_buffered(f);
  int64_t total = frame_total(cfg, f->buf + f->off, have);
  if (total < 0) return 0; /* a bad header: framer_feed reports it */
  if (!total) return f->large ? 2 * FRAMER_LARGE_READ - have : 0; /* a boundary */
  size_t missing = (size_t)total - have;
  if (f->large) return missing + FRAMER_LARGE_READ;
  return missing >= FRAMER_DIRECT_MIN ? missing : 0;
}

size_t framer_direct_space(framer_t *f, const framing_cfg_t *cfg, uint8_t **where) {
  if (cfg->header_bytes == 0 || f->held) return 0;
  size_t want = direct_want(f, cfg);
  if (!want) return 0;
  /* Grow with what actually arrives, never straight to the claimed size: a client that
   * announces a large packet and trickles costs memory in proportion to what it sent. */
  size_t room = f->cap - f->len;
  if (room < want && room < FRAMER_LARGE_READ) { /* a read buffer's worth at least */
    size_t grow = f->cap > 2 * FRAMER_LARGE_READ ? f->cap : 2 * FRAMER_LARGE_READ;
    if (stash_reserve(f, grow < want ? grow : want)) return 0;
    room = f->cap - f->len;
  }
  *where = f->buf + f->len;
  return room < want ? room : want;
}

int framer_direct_commit(framer_t *f, const framing_cfg_t *cfg, size_t n,
                         framer_deliver_fn deliver, void *ctx) {
  f->len += n;
  size_t used;
  int rc = deliver_frames(f, cfg, f->buf + f->off, framer_buffered(f), &used, deliver, ctx);
  if (rc == FRAMER_PROTOCOL_ERROR) return rc;
  f->off += used;
  if (!framer_buffered(f)) stash_clear(f);
  else if (rc == FRAMER_STOPPED) f->held = 1; /* whole packets may wait: framer_resume */
  return rc;
}

void framer_free(framer_t *f) {
  free(f->buf);
  memset(f, 0, sizeof *f);
}
