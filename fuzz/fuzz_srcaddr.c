/* libFuzzer target for the trusted-sources list (dll/src/core/srcaddr.c): the text of
 * IOCPSRV_OPT_PROXY_TRUSTED, e.g. "10.0.0.0/8, 127.0.0.1, ::1, fd00::/8".
 *
 * The input, NUL-terminated, is the text. Checked besides crashes, UB and leaks:
 *  - the result is 0 or IOCPSRV_EINVAL, and on error *out is left untouched;
 *  - on success: one range per entry (the text's separator-delimited words), each of
 *    length 4 or 16 with a prefix in range and no host bit set;
 *  - round trip: srcaddr_list_format's text parses again to the same ranges and
 *    formats to the same text; the snprintf contract holds for short buffers;
 *  - matching: fixed addresses (and the first, last and neighbouring addresses of the
 *    first ranges) match both lists alike, as a bit-by-bit reference says; each range
 *    holds its first and last address and not the ones just outside;
 *  - in the fault build (IOCPSRV_FAULT_INJECTION, as test_srcaddr is built), a failed
 *    allocation gives IOCPSRV_ENOMEM with *out untouched (no allocation: no failure). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/fault.h"
#include "core/srcaddr.h"
#include "iocpsrv.h"

#define CHECKED_RANGES 32 /* ranges whose edges are tried against the whole list */

static void die(const char *what) {
  fprintf(stderr, "fuzz_srcaddr: %s\n", what);
  abort();
}

static int is_sep(char c) { return c == ',' || c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

static size_t count_entries(const char *t) {
  size_t n = 0;
  for (size_t i = 0; t[i]; i++)
    if (!is_sep(t[i]) && (i == 0 || is_sep(t[i - 1]))) n++;
  return n;
}

static int bit(const uint8_t *b, unsigned i) { return (b[i / 8] >> (7 - i % 8)) & 1; }

/* Bit by bit: an IPv4 key is also ::ffff:a.b.c.d for an IPv6 range. */
static int ref_match(const srcaddr_list_t *l, const srcaddr_key_t *k) {
  if (!k->len) return 0;
  uint8_t mapped[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  memcpy(mapped + 12, k->bytes, 4);
  for (size_t i = 0; i < l->n; i++) {
    const srcaddr_range_t *r = &l->v[i];
    const uint8_t *kb = r->len == k->len ? k->bytes : (r->len == 16 && k->len == 4) ? mapped : NULL;
    if (!kb) continue;
    unsigned b = 0;
    while (b < r->prefix && bit(r->bytes, b) == bit(kb, b)) b++;
    if (b == r->prefix) return 1;
  }
  return 0;
}

/* The key the server would see for an address of `len` bytes (IPv4-mapped IPv6
 * addresses become IPv4 ones, as srcaddr_key_from makes them). */
static srcaddr_key_t key_of(const uint8_t *bytes, unsigned len) {
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  if (len == 4) {
    struct sockaddr_in *in = (struct sockaddr_in *)&ss;
    in->sin_family = AF_INET;
    memcpy(&in->sin_addr, bytes, 4);
  } else {
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
    in6->sin6_family = AF_INET6;
    memcpy(&in6->sin6_addr, bytes, 16);
  }
  srcaddr_key_t k;
  if (srcaddr_key_from(&ss, &k) != 0 || (k.len != 4 && k.len != 16)) die("srcaddr_key_from failed");
  return k;
}

/* The same verdict from both lists and from the reference. */
static int match_both(const srcaddr_list_t *a, const srcaddr_list_t *b, const srcaddr_key_t *k) {
  int m = srcaddr_list_match(a, k);
  if (m != 0 && m != 1) die("match is neither 0 nor 1");
  if (srcaddr_list_match(b, k) != m) die("the formatted list matches differently");
  if (ref_match(a, k) != m) die("match differs from the bit-by-bit reference");
  return m;
}

/* a + delta (+1 or -1) as a big-endian number of len bytes; 0 when it wraps. */
static int step(uint8_t *a, unsigned len, int delta) {
  for (unsigned i = len; i-- > 0;) {
    uint8_t before = a[i];
    a[i] = (uint8_t)(a[i] + delta);
    if (delta > 0 ? before != 0xFF : before != 0x00) return 1;
  }
  return 0;
}

/* A range's first and last addresses are in it (alone and in the lists); the
 * addresses just outside are not in it. */
static void check_edges(const srcaddr_range_t *r, const srcaddr_list_t *a,
                        const srcaddr_list_t *b) {
  srcaddr_range_t copy = *r;
  srcaddr_list_t alone = {&copy, 1};
  uint8_t first[16], last[16], out[16];
  memcpy(first, r->bytes, 16);
  memcpy(last, r->bytes, 16);
  for (unsigned i = r->prefix; i < r->len * 8u; i++) last[i / 8] |= (uint8_t)(0x80 >> (i % 8));
  srcaddr_key_t k = key_of(first, r->len);
  if (!srcaddr_list_match(&alone, &k) || !match_both(a, b, &k)) die("first address not matched");
  k = key_of(last, r->len);
  if (!srcaddr_list_match(&alone, &k) || !match_both(a, b, &k)) die("last address not matched");
  /* Just outside. An IPv6 range's neighbour that is IPv4-mapped becomes an IPv4 key,
   * still outside the range. */
  memcpy(out, first, 16);
  if (step(out, r->len, -1)) {
    k = key_of(out, r->len);
    if (srcaddr_list_match(&alone, &k)) die("the address before a range matched it");
    match_both(a, b, &k);
  }
  memcpy(out, last, 16);
  if (step(out, r->len, +1)) {
    k = key_of(out, r->len);
    if (srcaddr_list_match(&alone, &k)) die("the address after a range matched it");
    match_both(a, b, &k);
  }
}

static void check_format(const srcaddr_list_t *l, char **text_out) {
  size_t need = srcaddr_list_format(l, NULL, 0);
  char *full = malloc(need + 1);
  if (!full) die("out of memory");
  if (srcaddr_list_format(l, full, need + 1) != need || strlen(full) != need)
    die("format's length differs from its measure");
  /* Short buffers: the same length back, the text's start written, NUL-terminated. */
  size_t sizes[3] = {1, need / 2 + 1, need};
  for (int i = 0; i < 3; i++) {
    size_t sz = sizes[i];
    if (sz == 0) continue; /* an empty list: (NULL, 0) was measured above */
    char *part = malloc(sz); /* exactly sz: a write past it traps under ASan */
    if (!part) die("out of memory");
    if (srcaddr_list_format(l, part, sz) != need) die("format into a short buffer: wrong length");
    if (part[sz - 1] != 0 || memcmp(part, full, sz - 1) != 0)
      die("format into a short buffer: wrong text");
    free(part);
  }
  *text_out = full;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *text = malloc(size + 1);
  if (!text) die("out of memory");
  memcpy(text, data, size);
  text[size] = 0;

  srcaddr_list_t l1, sentinel;
  memset(&sentinel, 0x5A, sizeof sentinel);
  l1 = sentinel;
  int rc = srcaddr_list_parse(text, &l1);
  if (rc != 0) {
    if (rc != IOCPSRV_EINVAL) die("parse failed with neither 0 nor EINVAL");
    if (memcmp(&l1, &sentinel, sizeof l1) != 0) die("*out changed by a failed parse");
    free(text);
    return 0;
  }
  if (l1.n != count_entries(text)) die("not one range per entry");
  if ((l1.n == 0) != (l1.v == NULL)) die("ranges and their count disagree");
  for (size_t i = 0; i < l1.n; i++) {
    const srcaddr_range_t *r = &l1.v[i];
    if (r->len != 4 && r->len != 16) die("a range neither IPv4 nor IPv6");
    if (r->prefix > r->len * 8) die("a prefix longer than the address");
    for (unsigned b = r->prefix; b < r->len * 8u; b++)
      if (bit(r->bytes, b)) die("a host bit set past the prefix");
  }

  /* Round trip through the canonical text. */
  char *canon, *canon2;
  check_format(&l1, &canon);
  srcaddr_list_t l2 = sentinel;
  if (srcaddr_list_parse(canon, &l2) != 0) {
    fprintf(stderr, "fuzz_srcaddr: formatted \"%s\"\n", canon);
    die("the formatted list does not parse");
  }
  if (l2.n != l1.n) die("the formatted list has another number of ranges");
  for (size_t i = 0; i < l1.n; i++) {
    const srcaddr_range_t *a = &l1.v[i], *b = &l2.v[i];
    if (a->len != b->len || a->prefix != b->prefix || memcmp(a->bytes, b->bytes, a->len) != 0)
      die("a range changed through its text");
  }
  check_format(&l2, &canon2);
  if (strcmp(canon, canon2) != 0) die("the formatted text is not a fixed point");

  /* Fixed addresses against both lists. */
  static const uint8_t v4[][4] = {{127, 0, 0, 1},     {10, 1, 2, 3},     {192, 168, 1, 77},
                                  {0, 0, 0, 0},       {255, 255, 255, 255}, {172, 16, 0, 1},
                                  {100, 64, 0, 1},    {8, 8, 8, 8},      {128, 0, 0, 0}};
  static const uint8_t v6[][16] = {
      {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1},                   /* ::1 */
      {0},                                                                /* :: */
      {0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1},                /* fd00::1 */
      {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff},    /* 2001:db8::ff */
      {0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1},             /* fe80::1 */
      {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 3},            /* ::ffff:10.1.2.3 */
      {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10, 1, 2, 3},                  /* ::10.1.2.3 */
      {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
       0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
      {0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}};
  for (size_t i = 0; i < sizeof v4 / sizeof v4[0]; i++) {
    srcaddr_key_t k = key_of(v4[i], 4);
    match_both(&l1, &l2, &k);
  }
  for (size_t i = 0; i < sizeof v6 / sizeof v6[0]; i++) {
    srcaddr_key_t k = key_of(v6[i], 16);
    match_both(&l1, &l2, &k);
  }
  srcaddr_key_t none;
  memset(&none, 0, sizeof none);
  if (srcaddr_list_match(&l1, &none)) die("an empty key matched");
  for (size_t i = 0; i < l1.n && i < CHECKED_RANGES; i++) check_edges(&l1.v[i], &l1, &l2);

#ifdef IOCPSRV_FAULT_INJECTION
  /* The one allocation fails: ENOMEM, *out untouched (nothing to allocate: 0). */
  srcaddr_list_t l3 = sentinel;
  iocpsrv_fault_arm(FAULT_ALLOC, 1, 0);
  rc = srcaddr_list_parse(text, &l3);
  iocpsrv_fault_arm(FAULT_ALLOC, 0, 0);
  if (l1.n) {
    if (rc != IOCPSRV_ENOMEM) die("a failed allocation not reported as ENOMEM");
    if (memcmp(&l3, &sentinel, sizeof l3) != 0) die("*out changed by a failed allocation");
  } else if (rc != 0 || l3.n != 0 || l3.v != NULL) {
    die("an empty list needed an allocation");
  }
#endif

  srcaddr_list_free(&l1);
  srcaddr_list_free(&l2);
  if (l1.v || l1.n) die("srcaddr_list_free left the list non-empty");
  free(canon);
  free(canon2);
  free(text);
  return 0;
}
