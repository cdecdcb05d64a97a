/* The framing parser: splits a byte stream into length-prefixed packets.
 *
 * Pure code, no I/O and no locks: a backend feeds it whatever a receive returned and
 * gets one deliver() call per whole packet. Packets that lie whole in the fed buffer
 * are delivered in place (no copy); only an incomplete tail, or what is left when
 * deliver() asks to stop, is copied into the framer's own stash. */
#ifndef IOCPSRV_CORE_FRAMING_H
#define IOCPSRV_CORE_FRAMING_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct framing_cfg_s {
  unsigned header_bytes; /* 0 = raw, 2 or 4 */
  int big_endian;
  uint32_t max_packet;   /* largest payload accepted */
} framing_cfg_t;

typedef struct framer_s {
  uint8_t *buf;  /* stash: bytes [off, len) not yet delivered */
  size_t off, len, cap;
  int held;      /* the stash holds bytes left over by a stop, maybe whole packets */
  int large;     /* the last packet was large: reads go straight into the stash */
} framer_t;

/* Returns 0 to go on, non-zero to stop delivering (receive paused, connection closing). */
typedef int (*framer_deliver_fn)(void *ctx, const uint8_t *data, size_t len);

enum {
  FRAMER_OK = 0,
  FRAMER_STOPPED = 1,          /* deliver() asked to stop; the rest is stashed */
  FRAMER_PROTOCOL_ERROR = -1,  /* a header above max_packet: close the connection */
  FRAMER_NOMEM = -2
};

/* Translate an iocpsrv framing option value; 0 or -1 for an unknown value. */
int framing_cfg_from_option(framing_cfg_t *cfg, int64_t framing, int64_t max_packet);

/* The 4-byte little-endian header, the common case, is read and written with one
 * unaligned 32-bit access where the machine is little-endian (every supported target);
 * the others go byte by byte. Per packet both ways, so inline. */
#if defined(__GNUC__)
#  define FRAMING_HOT static inline __attribute__((always_inline)) /* -O2 too */
#else
#  define FRAMING_HOT static inline
#endif
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ || defined(_WIN32)
#  define FRAMING_LE_HOST 1
#else
#  define FRAMING_LE_HOST 0
#endif

/* The header for a payload of `len` bytes into out[]; returns the header's size. */
FRAMING_HOT size_t framing_write_header(const framing_cfg_t *cfg, uint8_t out[4], size_t len) {
  unsigned n = cfg->header_bytes;
  if (FRAMING_LE_HOST && n == 4 && !cfg->big_endian) {
    uint32_t v = (uint32_t)len;
    memcpy(out, &v, 4);
    return 4;
  }
  for (unsigned i = 0; i < n; i++) {
    unsigned shift = 8 * (cfg->big_endian ? n - 1 - i : i);
    out[i] = (uint8_t)(len >> shift);
  }
  return n;
}

/* The payload length a header announces. */
FRAMING_HOT uint32_t framing_read_length(const framing_cfg_t *cfg, const uint8_t *p) {
  unsigned n = cfg->header_bytes;
  if (FRAMING_LE_HOST && n == 4 && !cfg->big_endian) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
  }
  uint32_t v = 0;
  for (unsigned i = 0; i < n; i++) {
    unsigned shift = 8 * (cfg->big_endian ? n - 1 - i : i);
    v |= (uint32_t)p[i] << shift;
  }
  return v;
}

/* The stream continues with data[0..len). Delivers every whole packet. */
int framer_feed(framer_t *f, const framing_cfg_t *cfg, const uint8_t *data, size_t len,
                framer_deliver_fn deliver, void *ctx);

/* Delivers packets held in the stash after a stop (call when the stop condition ends). */
int framer_resume(framer_t *f, const framing_cfg_t *cfg, framer_deliver_fn deliver,
                  void *ctx);

/* For a large packet still arriving, or after one (the next is likely large too):
 * where the next receive may write directly, so a large payload is copied once, by the
 * kernel, and delivered in place. Returns the room (0 = read into the backend's own
 * buffer and use framer_feed). */
size_t framer_direct_space(framer_t *f, const framing_cfg_t *cfg, uint8_t **where);

/* `n` bytes were received at the pointer framer_direct_space returned: every whole
 * packet in the stash is delivered in place. */
int framer_direct_commit(framer_t *f, const framing_cfg_t *cfg, size_t n,
                         framer_deliver_fn deliver, void *ctx);

/* Bytes received and not yet delivered. */
static inline size_t framer_buffered(const framer_t *f) { return f->len - f->off; }

void framer_free(framer_t *f);

#endif
