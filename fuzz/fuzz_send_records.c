/* libFuzzer target for the send-record parser of iocpsrv_send_packed
 * (dll/src/core/records.c).
 *
 * The input is the host's buffer. Checked besides crashes, UB and out-of-bounds reads
 * (ASan sees a read past the input, which is copied to a heap block of exactly its
 * size):
 *  - send_records_check accepts exactly what a byte-by-byte reference accepts: size a
 *    multiple of 8, 16-byte headers with flags 0, payloads inside the buffer, zero
 *    padding to 8;
 *  - when accepted, walking with send_record_next visits that many records, each
 *    payload inside the buffer, and ends exactly at its end. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/records.h"

static void die(const char *what) {
  fprintf(stderr, "fuzz_send_records: %s\n", what);
  abort();
}

static uint32_t le32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* The format read the slow way: a count, or -1. */
static int64_t reference_count(const uint8_t *b, size_t size) {
  if (size % 8) return -1;
  int64_t n = 0;
  size_t off = 0;
  while (off != size) {
    if (size - off < 16) return -1;
    uint64_t len = le32(b + off + 8);
    if (le32(b + off + 12) != 0) return -1;
    uint64_t padded = (len + 7) / 8 * 8;
    if ((uint64_t)(size - off - 16) < padded) return -1;
    for (uint64_t i = len; i < padded; i++)
      if (b[off + 16 + i]) return -1;
    off += 16 + (size_t)padded;
    n++;
  }
  return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  uint8_t *b = calloc(1, size ? size : 1);
  if (!b) return 0;
  if (size) memcpy(b, data, size);
  int64_t n = send_records_check(b, size);
  if (n != reference_count(b, size)) die("check disagrees with the reference");
  if (n >= 0) {
    size_t off = 0;
    int64_t seen = 0;
    while (off < size) {
      send_record_t r;
      size_t before = off;
      send_record_next(b, &off, &r);
      if (off <= before || off > size) die("walk does not advance within the buffer");
      if (r.payload < b + before + 16 || r.payload + r.len > b + size) die("payload outside");
      seen++;
    }
    if (off != size || seen != n) die("walk and check disagree");
  }
  free(b);
  return 0;
}
