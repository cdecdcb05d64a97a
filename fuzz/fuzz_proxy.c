/* libFuzzer target for the PROXY protocol parser (dll/src/core/proxy.c), which reads
 * bytes from any client before it is trusted.
 *
 * The input is the bytes a client sent. Checked besides crashes and UB:
 *  - never a read past len: each prefix is parsed with the rest of the buffer poisoned
 *    (under ASan; a no-op in the plain replay build);
 *  - a positive result is <= len and <= PROXY_MAX_HEADER;
 *  - prefixes are consistent: once a prefix gets a final verdict (a length, NOT_PROXY
 *    or MALFORMED), every longer prefix gets the same one (the same length and the
 *    same addresses): a complete header's result does not change when bytes follow,
 *    and a header's prefix is NEED_MORE, never a different complete length;
 *  - PROXY_MAX_HEADER bytes always decide (the input padded with zeros is never
 *    NEED_MORE);
 *  - the verdict on the whole input agrees with an independent reading of the spec:
 *    NOT_PROXY exactly when the bytes cannot start either signature; v2: the length is
 *    16 + the length field, the addresses are the wire's, has_addr exactly for PROXY
 *    over TCP4/TCP6; v1: the length ends at the first CRLF, the fields are exactly
 *    "PROXY TCP4|TCP6 src dst sport dport" (single spaces, addresses as inet_pton
 *    reads them, no byte of a field ignored, ports decimal without leading zeros) or
 *    "PROXY UNKNOWN[ anything]";
 *  - has_addr is 0 or 1, and with it both addresses are AF_INET or both AF_INET6. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/proxy.h"

#if defined(__has_feature)
#  if __has_feature(address_sanitizer)
#    define FUZZ_ASAN 1
#  endif
#endif
#if defined(__SANITIZE_ADDRESS__) && !defined(FUZZ_ASAN)
#  define FUZZ_ASAN 1
#endif
#ifdef FUZZ_ASAN
#  include <sanitizer/asan_interface.h>
#  define POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#  define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#  define POISON(p, n) ((void)(p), (void)(n))
#  define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

static const uint8_t v2_sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                   0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

static void die(const char *what) {
  fprintf(stderr, "fuzz_proxy: %s\n", what);
  abort();
}

static int same_header(const proxy_header_t *a, const proxy_header_t *b) {
  if (a->has_addr != b->has_addr) return 0;
  if (!a->has_addr) return 1;
  return memcmp(&a->src, &b->src, sizeof a->src) == 0 &&
         memcmp(&a->dst, &b->dst, sizeof a->dst) == 0;
}

/* proxy_parse on buf[0..k) with buf[k..len) unreadable (under ASan). */
static int parse_prefix(uint8_t *buf, size_t len, size_t k, proxy_header_t *out) {
  memset(out, 0xA5, sizeof *out);
  POISON(buf + k, len - k);
  int r = proxy_parse(buf, k, out);
  UNPOISON(buf + k, len - k);
  if (r > 0) {
    if ((size_t)r > k) die("a length past the bytes given");
    if (r > PROXY_MAX_HEADER) die("a length above PROXY_MAX_HEADER");
    if (out->has_addr != 0 && out->has_addr != 1) die("has_addr neither 0 nor 1");
    if (out->has_addr) {
      int f = out->src.ss_family;
      if (f != AF_INET && f != AF_INET6) die("source address of no IP family");
      if (out->dst.ss_family != f) die("destination family differs from the source's");
    }
  } else if (r != PROXY_NEED_MORE && r != PROXY_NOT_PROXY && r != PROXY_MALFORMED) {
    die("a result outside the contract");
  }
  return r;
}

/* ---- reference readings of the spec, on the whole input ---- */

static int could_start(const uint8_t *d, size_t n, const void *sig, size_t siglen) {
  return memcmp(d, sig, n < siglen ? n : siglen) == 0;
}

static int port_ok(const uint8_t *s, size_t n, unsigned *port) {
  if (n == 0 || n > 5 || (n > 1 && s[0] == '0')) return 0;
  unsigned v = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9') return 0;
    v = v * 10 + (unsigned)(s[i] - '0');
  }
  *port = v;
  return v <= 65535;
}

/* An address field: all of its bytes must make the address (no NUL cutting it short). */
static int addr_ok(const uint8_t *s, size_t n, int family, void *addr) {
  char text[64];
  if (n == 0 || n >= sizeof text || memchr(s, 0, n)) return 0;
  memcpy(text, s, n);
  text[n] = 0;
  return inet_pton(family, text, addr) == 1;
}

static void check_addr(const struct sockaddr_storage *sa, int family, const void *addr,
                       unsigned port) {
  if (sa->ss_family != family) die("v1: wrong address family");
  if (family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
    if (memcmp(&in->sin_addr, addr, 4) != 0 || ntohs(in->sin_port) != port)
      die("v1: IPv4 address or port differs from the text");
  } else {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
    if (memcmp(&in6->sin6_addr, addr, 16) != 0 || ntohs(in6->sin6_port) != port)
      die("v1: IPv6 address or port differs from the text");
  }
}

/* v1 with its CRLF at line[n..n+2): the verdict the spec gives, and the addresses. */
static void reference_v1(const uint8_t *line, size_t n, int r, const proxy_header_t *h) {
  const uint8_t *f[8];
  size_t fl[8], nf = 0, start = 0;
  for (size_t i = 0; i <= n; i++) {
    if (i == n || line[i] == ' ') {
      if (nf < 8) {
        f[nf] = line + start;
        fl[nf] = i - start;
      }
      nf++;
      start = i + 1;
    }
  }
  /* f[0] is "PROXY" (the signature). */
  if (nf >= 2 && fl[1] == 7 && memcmp(f[1], "UNKNOWN", 7) == 0) {
    if (r != (int)(n + 2)) die("v1: UNKNOWN header not accepted at its CRLF");
    if (h->has_addr) die("v1: UNKNOWN with addresses");
    return;
  }
  int family = nf >= 2 && fl[1] == 4 && memcmp(f[1], "TCP4", 4) == 0   ? AF_INET
               : nf >= 2 && fl[1] == 4 && memcmp(f[1], "TCP6", 4) == 0 ? AF_INET6
                                                                        : 0;
  /* Tolerated, though the spec has none: one space before the CRLF (proxy.c accepts
   * it; no byte of the header is ignored). */
  if (nf == 7 && fl[6] == 0) nf = 6;
  uint8_t src[16], dst[16];
  unsigned sport = 0, dport = 0;
  int ok = family && nf == 6 && addr_ok(f[2], fl[2], family, src) &&
           addr_ok(f[3], fl[3], family, dst) && port_ok(f[4], fl[4], &sport) &&
           port_ok(f[5], fl[5], &dport);
  if (!ok) {
    if (r != PROXY_MALFORMED) die("v1: a malformed line accepted");
    return;
  }
  if (r != (int)(n + 2)) die("v1: a well-formed line not accepted at its CRLF");
  if (!h->has_addr) die("v1: TCP4/TCP6 without addresses");
  check_addr(&h->src, family, src, sport);
  check_addr(&h->dst, family, dst, dport);
}

static void check_v2_addr(const struct sockaddr_storage *sa, int family, const uint8_t *a,
                          const uint8_t *port) {
  if (sa->ss_family != family) die("v2: wrong address family");
  const void *got = family == AF_INET ? (const void *)&((const struct sockaddr_in *)sa)->sin_addr
                                      : (const void *)&((const struct sockaddr_in6 *)sa)->sin6_addr;
  uint16_t p = family == AF_INET ? ((const struct sockaddr_in *)sa)->sin_port
                                 : ((const struct sockaddr_in6 *)sa)->sin6_port;
  if (memcmp(got, a, family == AF_INET ? 4 : 16) != 0 || memcmp(&p, port, 2) != 0)
    die("v2: address or port differs from the wire");
}

static void reference(const uint8_t *d, size_t n, int r, const proxy_header_t *h) {
  int maybe_v2 = could_start(d, n, v2_sig, 12);
  int maybe_v1 = could_start(d, n, "PROXY ", 6);
  if (n == 0 || (n < 12 && maybe_v2) || (n < 6 && maybe_v1)) {
    if (r != PROXY_NEED_MORE) die("a signature's prefix not NEED_MORE");
    return;
  }
  if (!maybe_v2 && !maybe_v1) {
    if (r != PROXY_NOT_PROXY) die("bytes of no signature not NOT_PROXY");
    return;
  }
  if (r == PROXY_NOT_PROXY) die("NOT_PROXY after a whole signature");
  if (maybe_v2) {
    if (n < 16) {
      if (r != PROXY_NEED_MORE) die("v2: a partial fixed header not NEED_MORE");
      return;
    }
    unsigned ver = d[12] >> 4, cmd = d[12] & 0x0F, fam = d[13];
    size_t body = ((size_t)d[14] << 8) | d[15];
    if (ver != 2 || cmd > 1) {
      if (r != PROXY_MALFORMED) die("v2: a bad version or command accepted");
      return;
    }
    if (n < 16 + body) {
      if (r != PROXY_NEED_MORE) die("v2: a partial body not NEED_MORE");
      return;
    }
    int tcp4 = cmd == 1 && fam == 0x11, tcp6 = cmd == 1 && fam == 0x21;
    if ((tcp4 && body < 12) || (tcp6 && body < 36)) {
      if (r != PROXY_MALFORMED) die("v2: addresses longer than the body accepted");
      return;
    }
    if (r != (int)(16 + body)) die("v2: the length is not 16 + the length field");
    if (h->has_addr != (tcp4 || tcp6)) die("v2: has_addr wrong for the command/family");
    const uint8_t *a = d + 16;
    if (tcp4) {
      check_v2_addr(&h->src, AF_INET, a, a + 8);
      check_v2_addr(&h->dst, AF_INET, a + 4, a + 10);
    } else if (tcp6) {
      check_v2_addr(&h->src, AF_INET6, a, a + 32);
      check_v2_addr(&h->dst, AF_INET6, a + 16, a + 34);
    }
    return;
  }
  /* v1: the line ends at the first CRLF; 107 bytes at most, CRLF included. */
  for (size_t i = 1; i < n && i < 107; i++)
    if (d[i - 1] == '\r' && d[i] == '\n') {
      reference_v1(d, i - 1, r, h);
      return;
    }
  if (r != (n >= 107 ? PROXY_MALFORMED : PROXY_NEED_MORE)) die("v1: wrong verdict without CRLF");
}

/* ---- the target ---- */

#define DENSE 300   /* every prefix up to this length */
#define SPARSE 256  /* and this many more of a longer input */

static uint8_t padded[PROXY_MAX_HEADER];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size > PROXY_MAX_HEADER + 64) return 0; /* nothing longer can matter */
  uint8_t *buf = malloc(size ? size : 1);     /* exactly the input: reads past it trap */
  if (!buf) die("out of memory");
  if (size) memcpy(buf, data, size);

  proxy_header_t whole, h, first;
  int rwhole = parse_prefix(buf, size, size, &whole);
  reference(buf, size, rwhole, &whole);

  /* Prefixes in increasing length: every one up to DENSE, then a spread, then the
   * lengths around the whole result and the v2 length field. */
  size_t ks[DENSE + 1 + SPARSE + 8], nk = 0;
  for (size_t k = 0; k <= size && k <= DENSE; k++) ks[nk++] = k;
  if (size > DENSE) {
    for (size_t i = 1; i <= SPARSE; i++) ks[nk++] = DENSE + (size - DENSE) * i / SPARSE;
    size_t extra[6] = {rwhole > 0 ? (size_t)rwhole - 1 : 0, rwhole > 0 ? (size_t)rwhole : 0,
                       rwhole > 0 ? (size_t)rwhole + 1 : 0, 0, 0, 0};
    if (size >= 16) {
      size_t end = 16 + (((size_t)buf[14] << 8) | buf[15]);
      extra[3] = end - 1, extra[4] = end, extra[5] = end + 1;
    }
    for (int i = 0; i < 6; i++)
      if (extra[i] > DENSE && extra[i] <= size) ks[nk++] = extra[i];
    /* Sort the few extras into place (insertion sort). */
    for (size_t i = DENSE + 1; i < nk; i++)
      for (size_t j = i; j > 0 && ks[j - 1] > ks[j]; j--) {
        size_t t = ks[j];
        ks[j] = ks[j - 1];
        ks[j - 1] = t;
      }
  }
  int final = PROXY_NEED_MORE;
  size_t final_at = 0;
  for (size_t i = 0; i < nk; i++) {
    int r = parse_prefix(buf, size, ks[i], &h);
    if (final == PROXY_NEED_MORE) {
      if (r != PROXY_NEED_MORE) {
        final = r;
        final_at = ks[i];
        first = h;
      }
    } else if (r != final) {
      fprintf(stderr, "fuzz_proxy: %zu bytes gave %d, %zu bytes gave %d\n", final_at, final,
              ks[i], r);
      die("a final verdict changed when more bytes came");
    } else if (r > 0 && !same_header(&h, &first)) {
      die("a complete header's addresses changed when more bytes came");
    }
  }
  if (final != PROXY_NEED_MORE && rwhole != final) die("the whole input disagrees with a prefix");
  if (final > 0 && !same_header(&whole, &first)) die("the whole input's addresses differ");

  /* Followed by zeros up to PROXY_MAX_HEADER bytes: decided, and as before if it was. */
  size_t n = size < sizeof padded ? size : sizeof padded;
  memcpy(padded, buf, n);
  memset(padded + n, 0, sizeof padded - n);
  int rp = parse_prefix(padded, sizeof padded, sizeof padded, &h);
  if (rp == PROXY_NEED_MORE) die("still NEED_MORE after PROXY_MAX_HEADER bytes");
  if (n == size && rwhole != PROXY_NEED_MORE && rp != rwhole) die("padding changed a verdict");
  if (n == size && rwhole > 0 && !same_header(&h, &whole)) die("padding changed the addresses");

  free(buf);
  return 0;
}
