/* libFuzzer target for the framing parser (dll/src/core/framing.c).
 *
 * Differential: the input picks a framing option, a max packet size, how the stream is
 * chopped into receives, when the receiver asks to stop (and later resumes), and
 * whether large packets are received in place (framer_direct_space). Whatever the
 * chopping, the framer must deliver exactly the packets a one-shot reference parser
 * finds in the whole stream, in order, and report a protocol error exactly when the
 * reference meets a header above the maximum (after the same packets). Raw mode must
 * deliver the stream's bytes unchanged.
 *
 * Input layout: byte 0 framing (mod 5), bytes 1-2 max packet (LE, 0 means 1), byte 3
 * seed for chunk sizes, stops and in-place receives; the rest is the stream. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/framing.h"
#include "iocpsrv.h"

typedef struct expect_s {
  const uint8_t *stream;
  size_t stream_len;
  /* Reference results. */
  size_t npackets;
  size_t *offsets, *lengths; /* room for stream_len / header_bytes + 1 packets */
  int protocol_error; /* the reference stops at an oversize header */
  /* Framer results. */
  size_t delivered;
  size_t raw_pos; /* raw mode: bytes delivered so far */
  uint32_t rng;
  int raw;
} expect_t;

static uint32_t next_rand(expect_t *e) {
  e->rng = e->rng * 1103515245u + 12345u;
  return e->rng >> 16;
}

static void die(const char *what) {
  fprintf(stderr, "fuzz_framing: %s\n", what);
  abort();
}

/* One pass over the whole stream, no chunking: the ground truth. */
static void reference(expect_t *e, const framing_cfg_t *cfg) {
  size_t pos = 0, hb = cfg->header_bytes;
  while (e->stream_len - pos >= hb) {
    uint32_t len = 0;
    for (size_t i = 0; i < hb; i++) {
      size_t shift = 8 * (cfg->big_endian ? hb - 1 - i : i);
      len |= (uint32_t)e->stream[pos + i] << shift;
    }
    if (len > cfg->max_packet) {
      e->protocol_error = 1;
      return;
    }
    if (e->stream_len - pos - hb < len) return;
    e->offsets[e->npackets] = pos + hb;
    e->lengths[e->npackets] = len;
    e->npackets++;
    pos += hb + len;
  }
}

static int on_packet(void *ctx, const uint8_t *data, size_t len) {
  expect_t *e = ctx;
  if (e->raw) {
    if (len == 0 || e->raw_pos + len > e->stream_len ||
        memcmp(data, e->stream + e->raw_pos, len) != 0)
      die("raw bytes differ from the stream");
    e->raw_pos += len;
  } else {
    if (e->delivered >= e->npackets) die("a packet the reference does not have");
    if (len != e->lengths[e->delivered] ||
        memcmp(data, e->stream + e->offsets[e->delivered], len) != 0)
      die("packet differs from the reference");
    if (!data) die("NULL packet pointer");
    e->delivered++;
  }
  return (next_rand(e) & 7) == 0; /* sometimes ask to stop */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 4) return 0;
  static const int64_t framings[5] = {IOCPSRV_FRAMING_LEN32_LE, IOCPSRV_FRAMING_LEN32_BE,
                                      IOCPSRV_FRAMING_LEN16_LE, IOCPSRV_FRAMING_LEN16_BE,
                                      IOCPSRV_FRAMING_RAW};
  int64_t max = data[1] | (data[2] << 8);
  framing_cfg_t cfg;
  framing_cfg_from_option(&cfg, framings[data[0] % 5], max ? max : 1);
  expect_t e;
  memset(&e, 0, sizeof e);
  e.stream = data + 4;
  e.stream_len = size - 4;
  e.rng = data[3] * 2654435761u + 1;
  e.raw = cfg.header_bytes == 0;
  if (!e.raw) {
    size_t most = e.stream_len / cfg.header_bytes + 1;
    e.offsets = malloc(most * sizeof *e.offsets);
    e.lengths = malloc(most * sizeof *e.lengths);
    if (!e.offsets || !e.lengths) die("out of memory");
    reference(&e, &cfg);
  }

  framer_t f;
  memset(&f, 0, sizeof f);
  size_t pos = 0;
  int rc = FRAMER_OK;
  while (pos < e.stream_len && rc >= 0) {
    if (rc == FRAMER_STOPPED) { /* the receiver resumes before more arrives */
      rc = framer_resume(&f, &cfg, on_packet, &e);
      continue;
    }
    uint8_t *room = NULL;
    size_t space = (next_rand(&e) & 1) ? framer_direct_space(&f, &cfg, &room) : 0;
    size_t chunk = 1 + next_rand(&e) % 97;
    if (next_rand(&e) % 5 == 0) chunk = 1 + next_rand(&e) % 70000;
    if (chunk > e.stream_len - pos) chunk = e.stream_len - pos;
    if (space) {
      if (chunk > space) chunk = space;
      memcpy(room, e.stream + pos, chunk);
      rc = framer_direct_commit(&f, &cfg, chunk, on_packet, &e);
    } else {
      rc = framer_feed(&f, &cfg, e.stream + pos, chunk, on_packet, &e);
    }
    pos += chunk;
  }
  while (rc == FRAMER_STOPPED) rc = framer_resume(&f, &cfg, on_packet, &e);

  if (e.raw) {
    if (rc != FRAMER_OK || e.raw_pos != e.stream_len) die("raw mode lost bytes");
  } else if (e.protocol_error) {
    if (rc != FRAMER_PROTOCOL_ERROR) die("oversize header not reported");
    if (e.delivered != e.npackets) die("packets before the bad header not all delivered");
  } else {
    if (rc != FRAMER_OK) die("unexpected error");
    if (e.delivered != e.npackets) die("packets missing");
    if (framer_buffered(&f) != e.stream_len - (e.npackets ? e.offsets[e.npackets - 1] +
                                                              e.lengths[e.npackets - 1]
                                                        : 0))
      die("buffered tail has the wrong size");
  }
  framer_free(&f);
  free(e.offsets);
  free(e.lengths);
  return 0;
}
