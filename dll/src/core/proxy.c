#include "core/proxy.h"

#include <string.h>

static const uint8_t v2_sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                   0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
static const char v1_sig[] = "PROXY ";
#define V1_MAX 107 /* the longest v1 line, CRLF included */

/* Whether buf[0..len) could still become `sig` (a prefix of it, or all of it). */
static int starts_like(const uint8_t *buf, size_t len, const void *sig, size_t siglen) {
  return memcmp(buf, sig, len < siglen ? len : siglen) == 0;
}

/* Next space-separated field of a v1 line; NULL past the end. */
static const char *next_field(const char **p, const char *end, size_t *flen) {
  const char *s = *p;
  if (s >= end) return NULL;
  const char *e = s;
  while (e < end && *e != ' ') e++;
  *flen = (size_t)(e - s);
  *p = e < end ? e + 1 : e;
  return *flen ? s : NULL;
}

static int parse_port(const char *s, size_t n, uint16_t *port) {
  if (n == 0 || n > 5 || (n > 1 && s[0] == '0')) return -1;
  unsigned v = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9') return -1;
    v = v * 10 + (unsigned)(s[i] - '0');
  }
  if (v > 65535) return -1;
  *port = (uint16_t)v;
  return 0;
}

/* An address and port in text into sa (family AF_INET or AF_INET6). */
static int fill_addr(struct sockaddr_storage *sa, int family, const char *addr, size_t alen,
                     const char *port, size_t plen) {
  char text[64];
  uint16_t p;
  /* A NUL would end the text early: inet_pton would read a prefix of the field. */
  if (alen == 0 || alen >= sizeof text || memchr(addr, 0, alen) || parse_port(port, plen, &p))
    return -1;
  memcpy(text, addr, alen);
  text[alen] = 0;
  memset(sa, 0, sizeof *sa);
  if (family == AF_INET) {
    struct sockaddr_in *in = (struct sockaddr_in *)sa;
    in->sin_family = AF_INET;
    in->sin_port = htons(p);
    return inet_pton(AF_INET, text, &in->sin_addr) == 1 ? 0 : -1;
  }
  struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)sa;
  in6->sin6_family = AF_INET6;
  in6->sin6_port = htons(p);
  return inet_pton(AF_INET6, text, &in6->sin6_addr) == 1 ? 0 : -1;
}

/* "PROXY TCP4 src dst sport dport\r\n", "PROXY TCP6 ...", "PROXY UNKNOWN ...\r\n". */
static int parse_v1(const uint8_t *buf, size_t len, proxy_header_t *out) {
  const uint8_t *crlf = NULL;
  for (size_t i = 1; i < len && i < V1_MAX; i++)
    if (buf[i - 1] == '\r' && buf[i] == '\n') {
      crlf = buf + i - 1;
      break;
    }
  if (!crlf) return len >= V1_MAX ? PROXY_MALFORMED : PROXY_NEED_MORE;
  const char *p = (const char *)buf + sizeof v1_sig - 1, *end = (const char *)crlf;
  size_t n, sn, dn, spn, dpn;
  const char *proto = next_field(&p, end, &n);
  memset(out, 0, sizeof *out);
  if (proto && n == 7 && memcmp(proto, "UNKNOWN", 7) == 0) {
    out->has_addr = 0; /* the rest of the line is ignored */
    return (int)(crlf + 2 - buf);
  }
  int family = proto && n == 4 && memcmp(proto, "TCP4", 4) == 0   ? AF_INET
               : proto && n == 4 && memcmp(proto, "TCP6", 4) == 0 ? AF_INET6
                                                                  : 0;
  const char *src = next_field(&p, end, &sn), *dst = next_field(&p, end, &dn);
  const char *sport = next_field(&p, end, &spn), *dport = next_field(&p, end, &dpn);
  if (!family || !src || !dst || !sport || !dport || p != end ||
      fill_addr(&out->src, family, src, sn, sport, spn) ||
      fill_addr(&out->dst, family, dst, dn, dport, dpn))
    return PROXY_MALFORMED;
  out->has_addr = 1;
  return (int)(crlf + 2 - buf);
}

static void v2_addr4(struct sockaddr_storage *sa, const uint8_t *a, const uint8_t *port) {
  struct sockaddr_in *in = (struct sockaddr_in *)sa;
  memset(sa, 0, sizeof *sa);
  in->sin_family = AF_INET;
  memcpy(&in->sin_addr, a, 4);
  memcpy(&in->sin_port, port, 2); /* network order on the wire and in sockaddr */
}

static void v2_addr6(struct sockaddr_storage *sa, const uint8_t *a, const uint8_t *port) {
  struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)sa;
  memset(sa, 0, sizeof *sa);
  in6->sin6_family = AF_INET6;
  memcpy(&in6->sin6_addr, a, 16);
  memcpy(&in6->sin6_port, port, 2);
}

/* 12-byte signature, version/command, family/protocol, 16-bit length, addresses, TLVs. */
static int parse_v2(const uint8_t *buf, size_t len, proxy_header_t *out) {
  if (len < 16) return PROXY_NEED_MORE;
  unsigned ver = buf[12] >> 4, cmd = buf[12] & 0x0F, fam = buf[13];
  size_t body = ((size_t)buf[14] << 8) | buf[15];
  if (ver != 2 || cmd > 1) return PROXY_MALFORMED;
  if (len < 16 + body) return PROXY_NEED_MORE;
  const uint8_t *a = buf + 16;
  memset(out, 0, sizeof *out);
  if (cmd == 1 && fam == 0x11) { /* PROXY, TCP over IPv4 */
    if (body < 12) return PROXY_MALFORMED;
    v2_addr4(&out->src, a, a + 8);
    v2_addr4(&out->dst, a + 4, a + 10);
    out->has_addr = 1;
  } else if (cmd == 1 && fam == 0x21) { /* PROXY, TCP over IPv6 */
    if (body < 36) return PROXY_MALFORMED;
    v2_addr6(&out->src, a, a + 32);
    v2_addr6(&out->dst, a + 16, a + 34);
    out->has_addr = 1;
  } /* LOCAL, or a family we do not speak (UDP, unix): the socket's own addresses */
  return (int)(16 + body); /* TLVs, if any, are skipped with the body */
}

int proxy_parse(const uint8_t *buf, size_t len, proxy_header_t *out) {
  if (len == 0) return PROXY_NEED_MORE;
  if (starts_like(buf, len, v2_sig, sizeof v2_sig))
    return len < sizeof v2_sig ? PROXY_NEED_MORE : parse_v2(buf, len, out);
  if (starts_like(buf, len, v1_sig, sizeof v1_sig - 1))
    return len < sizeof v1_sig - 1 ? PROXY_NEED_MORE : parse_v1(buf, len, out);
  return PROXY_NOT_PROXY;
}
