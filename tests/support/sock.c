/* sock.c -- see sock.h. */
#ifndef _WIN32
#  define _GNU_SOURCE
#endif
#include "sock.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "thread.h"

#ifdef _WIN32
#  define ts_poll WSAPoll
typedef WSAPOLLFD ts_pollfd_t;
#  define TS_SEND_FLAGS 0
#  define ts_errno() WSAGetLastError()
#  define TS_EINTR WSAEINTR
#  define TS_EAGAIN WSAEWOULDBLOCK
#  define TS_EINPROGRESS WSAEWOULDBLOCK
#  define TS_ECONNRESET WSAECONNRESET
#  define TS_ECONNABORTED WSAECONNABORTED
typedef int ts_len_t;
#else
#  include <arpa/inet.h>
#  include <errno.h>
#  include <fcntl.h>
#  include <netdb.h>
#  include <netinet/in.h>
#  include <netinet/tcp.h>
#  include <poll.h>
#  include <sys/socket.h>
#  include <unistd.h>
#  define ts_poll poll
typedef struct pollfd ts_pollfd_t;
#  define TS_SEND_FLAGS MSG_NOSIGNAL
#  define ts_errno() errno
#  define TS_EINTR EINTR
#  define TS_EAGAIN EAGAIN
#  define TS_EINPROGRESS EINPROGRESS
#  define TS_ECONNRESET ECONNRESET
#  define TS_ECONNABORTED ECONNABORTED
typedef socklen_t ts_len_t;
#endif

const char *ts_strerror(int rc) {
  switch (rc) {
    case TS_OK: return "ok";
    case TS_ERR: return "socket error";
    case TS_TIMEOUT: return "timeout";
    case TS_EOF: return "eof";
    case TS_RESET: return "reset";
    case TS_TOOBIG: return "packet too big for buffer";
    default: return rc > 0 ? "ok (count)" : "unknown";
  }
}

int ts_init(void) {
#ifdef _WIN32
  WSADATA wsa;
  return WSAStartup(MAKEWORD(2, 2), &wsa) == 0 ? 0 : TS_ERR;
#else
  return 0;
#endif
}

static int ts_set_nonblocking(ts_sock_t s, int on) {
#ifdef _WIN32
  u_long v = on ? 1 : 0;
  return ioctlsocket(s, FIONBIO, &v) == 0 ? 0 : TS_ERR;
#else
  int fl = fcntl(s, F_GETFL, 0);
  if (fl < 0) return TS_ERR;
  fl = on ? (fl | O_NONBLOCK) : (fl & ~O_NONBLOCK);
  return fcntl(s, F_SETFL, fl) == 0 ? 0 : TS_ERR;
#endif
}

/* Wait for `events` (POLLIN / POLLOUT) up to timeout_ms: 1 ready, 0 timeout, <0 error. */
static int ts_wait(ts_sock_t s, short events, int timeout_ms) {
  int64_t deadline = tt_now_ms() + (timeout_ms < 0 ? 0 : timeout_ms);
  for (;;) {
    ts_pollfd_t p;
    memset(&p, 0, sizeof p);
    p.fd = s;
    p.events = events;
    int left = timeout_ms < 0 ? -1 : (int)(deadline - tt_now_ms());
    if (timeout_ms >= 0 && left < 0) left = 0;
    int n = ts_poll(&p, 1, left);
    if (n > 0) return 1;
    if (n == 0) return 0;
    if (ts_errno() != TS_EINTR) return TS_ERR;
  }
}

static int ts_parse_addr(const char *host, int port, struct sockaddr_storage *ss,
                         ts_len_t *len) {
  struct addrinfo hints, *res = NULL;
  char portstr[16];
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
  snprintf(portstr, sizeof portstr, "%d", port);
  if (getaddrinfo(host, portstr, &hints, &res) != 0 || !res) return TS_ERR;
  memcpy(ss, res->ai_addr, res->ai_addrlen);
  *len = (ts_len_t)res->ai_addrlen;
  freeaddrinfo(res);
  return 0;
}

ts_sock_t ts_connect_ex(const char *host, int port, int timeout_ms, int rcvbuf) {
  struct sockaddr_storage ss;
  ts_len_t len;
  if (ts_parse_addr(host, port, &ss, &len) != 0) return TS_INVALID;
  ts_sock_t s = socket(ss.ss_family, SOCK_STREAM, IPPROTO_TCP);
  if (s == TS_INVALID) return TS_INVALID;
  if (rcvbuf > 0) ts_set_rcvbuf(s, rcvbuf);
  if (ts_set_nonblocking(s, 1) != 0) goto fail;
  if (connect(s, (struct sockaddr *)&ss, len) != 0) {
    int e = ts_errno();
    if (e != TS_EINPROGRESS && e != TS_EAGAIN) goto fail;
    if (ts_wait(s, POLLOUT, timeout_ms) != 1) goto fail;
    int err = 0;
    ts_len_t elen = sizeof err;
    if (getsockopt(s, SOL_SOCKET, SO_ERROR, (char *)&err, &elen) != 0 || err != 0)
      goto fail;
  }
  if (ts_set_nonblocking(s, 0) != 0) goto fail;
  return s;
fail:
  ts_close(s);
  return TS_INVALID;
}

ts_sock_t ts_connect(const char *host, int port, int timeout_ms) {
  return ts_connect_ex(host, port, timeout_ms, 0);
}

void ts_close(ts_sock_t s) {
  if (s == TS_INVALID) return;
#ifdef _WIN32
  closesocket(s);
#else
  close(s);
#endif
}

void ts_reset_close(ts_sock_t s) {
  struct linger l;
  l.l_onoff = 1;
  l.l_linger = 0;
  setsockopt(s, SOL_SOCKET, SO_LINGER, (const char *)&l, sizeof l);
  ts_close(s);
}

int ts_shutdown_write(ts_sock_t s) {
#ifdef _WIN32
  return shutdown(s, SD_SEND) == 0 ? 0 : TS_ERR;
#else
  return shutdown(s, SHUT_WR) == 0 ? 0 : TS_ERR;
#endif
}

int ts_set_nodelay(ts_sock_t s, int on) {
  int v = on ? 1 : 0;
  return setsockopt(s, IPPROTO_TCP, TCP_NODELAY, (const char *)&v, sizeof v) == 0 ? 0
                                                                                  : TS_ERR;
}

int ts_set_rcvbuf(ts_sock_t s, int bytes) {
  return setsockopt(s, SOL_SOCKET, SO_RCVBUF, (const char *)&bytes, sizeof bytes) == 0
             ? 0
             : TS_ERR;
}

int ts_set_sndbuf(ts_sock_t s, int bytes) {
  return setsockopt(s, SOL_SOCKET, SO_SNDBUF, (const char *)&bytes, sizeof bytes) == 0
             ? 0
             : TS_ERR;
}

static int ts_format_addr(const struct sockaddr_storage *ss, char *buf, size_t cap) {
  char ip[INET6_ADDRSTRLEN];
  if (ss->ss_family == AF_INET) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
    if (!inet_ntop(AF_INET, (void *)&a->sin_addr, ip, sizeof ip)) return TS_ERR;
    snprintf(buf, cap, "%s:%u", ip, (unsigned)ntohs(a->sin_port));
    return 0;
  }
  if (ss->ss_family == AF_INET6) {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
    if (!inet_ntop(AF_INET6, (void *)&a->sin6_addr, ip, sizeof ip)) return TS_ERR;
    snprintf(buf, cap, "[%s]:%u", ip, (unsigned)ntohs(a->sin6_port));
    return 0;
  }
  return TS_ERR;
}

int ts_local_addr(ts_sock_t s, char *buf, size_t cap) {
  struct sockaddr_storage ss;
  ts_len_t len = sizeof ss;
  if (getsockname(s, (struct sockaddr *)&ss, &len) != 0) return TS_ERR;
  return ts_format_addr(&ss, buf, cap);
}

int ts_peer_addr(ts_sock_t s, char *buf, size_t cap) {
  struct sockaddr_storage ss;
  ts_len_t len = sizeof ss;
  if (getpeername(s, (struct sockaddr *)&ss, &len) != 0) return TS_ERR;
  return ts_format_addr(&ss, buf, cap);
}

static int ts_classify_error(int e) {
  if (e == TS_ECONNRESET || e == TS_ECONNABORTED) return TS_RESET;
#ifndef _WIN32
  if (e == EPIPE) return TS_RESET;
#endif
  return TS_ERR;
}

int ts_send_all_timeout(ts_sock_t s, const void *buf, size_t len, int timeout_ms) {
  const char *p = (const char *)buf;
  while (len > 0) {
    int w = ts_wait(s, POLLOUT, timeout_ms);
    if (w == 0) return TS_TIMEOUT;
    if (w < 0) return TS_ERR;
    size_t chunk = len;
#ifdef _WIN32
    /* No MSG_DONTWAIT on Windows: keep each blocking send small. */
    if (chunk > 65536) chunk = 65536;
    int n = send(s, p, (int)chunk, 0);
#else
    ssize_t n = send(s, p, chunk, TS_SEND_FLAGS | MSG_DONTWAIT);
#endif
    if (n < 0) {
      int e = ts_errno();
      if (e == TS_EINTR || e == TS_EAGAIN) continue;
      return ts_classify_error(e);
    }
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

int ts_send_all(ts_sock_t s, const void *buf, size_t len) {
  return ts_send_all_timeout(s, buf, len, TS_WAIT_MS);
}

/* One recv after the socket was reported readable: >0 bytes, or a TS_* code. */
static int ts_recv_once(ts_sock_t s, void *buf, size_t cap) {
  for (;;) {
    if (cap > (1u << 30)) cap = 1u << 30;
#ifdef _WIN32
    int n = recv(s, (char *)buf, (int)cap, 0);
#else
    ssize_t n = recv(s, buf, cap, 0);
#endif
    if (n > 0) return (int)n;
    if (n == 0) return TS_EOF;
    int e = ts_errno();
    if (e == TS_EINTR) continue;
    if (e == TS_EAGAIN) return 0; /* spurious wake-up: caller polls again */
    return ts_classify_error(e);
  }
}

int ts_recv_exact(ts_sock_t s, void *buf, size_t len, int timeout_ms) {
  char *p = (char *)buf;
  int64_t deadline = tt_now_ms() + timeout_ms;
  while (len > 0) {
    int left = (int)(deadline - tt_now_ms());
    if (left < 0) left = 0;
    int w = ts_wait(s, POLLIN, left);
    if (w == 0) return TS_TIMEOUT;
    if (w < 0) return TS_ERR;
    int n = ts_recv_once(s, p, len);
    if (n < 0) return n;
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

int ts_recv_some(ts_sock_t s, void *buf, size_t cap, int timeout_ms) {
  int64_t deadline = tt_now_ms() + timeout_ms;
  for (;;) {
    int left = (int)(deadline - tt_now_ms());
    if (left < 0) left = 0;
    int w = ts_wait(s, POLLIN, left);
    if (w == 0) return TS_TIMEOUT;
    if (w < 0) return TS_ERR;
    int n = ts_recv_once(s, buf, cap);
    if (n != 0) return n;
  }
}

int ts_readable(ts_sock_t s, int timeout_ms) { return ts_wait(s, POLLIN, timeout_ms); }

int ts_writable(ts_sock_t s, int timeout_ms) { return ts_wait(s, POLLOUT, timeout_ms); }

void ts_encode_header(uint8_t *hdr, size_t len, int hdr_size, int big_endian) {
  int i;
  for (i = 0; i < hdr_size; i++) {
    int shift = big_endian ? 8 * (hdr_size - 1 - i) : 8 * i;
    hdr[i] = (uint8_t)((uint64_t)len >> shift);
  }
}

size_t ts_decode_header(const uint8_t *hdr, int hdr_size, int big_endian) {
  size_t v = 0;
  int i;
  for (i = 0; i < hdr_size; i++) {
    int shift = big_endian ? 8 * (hdr_size - 1 - i) : 8 * i;
    v |= (size_t)hdr[i] << shift;
  }
  return v;
}

size_t ts_frame(uint8_t *out, const void *payload, size_t len, int hdr_size,
                int big_endian) {
  ts_encode_header(out, len, hdr_size, big_endian);
  if (len) memcpy(out + hdr_size, payload, len);
  return (size_t)hdr_size + len;
}

int ts_send_packet_ex(ts_sock_t s, const void *payload, size_t len, int hdr_size,
                      int big_endian) {
  uint8_t small[4096];
  uint8_t *buf = small;
  if (len + (size_t)hdr_size > sizeof small) {
    buf = (uint8_t *)malloc(len + (size_t)hdr_size);
    if (!buf) return TS_ERR;
  }
  size_t n = ts_frame(buf, payload, len, hdr_size, big_endian);
  int rc = ts_send_all(s, buf, n);
  if (buf != small) free(buf);
  return rc;
}

int ts_send_packet(ts_sock_t s, const void *payload, size_t len) {
  return ts_send_packet_ex(s, payload, len, 4, 0);
}

int ts_recv_packet_ex(ts_sock_t s, void *buf, size_t cap, size_t *len, int hdr_size,
                      int big_endian, int timeout_ms) {
  uint8_t hdr[4];
  int64_t deadline = tt_now_ms() + timeout_ms;
  int rc = ts_recv_exact(s, hdr, (size_t)hdr_size, timeout_ms);
  if (rc != 0) return rc;
  size_t n = ts_decode_header(hdr, hdr_size, big_endian);
  if (len) *len = n;
  if (n > cap) return TS_TOOBIG;
  int left = (int)(deadline - tt_now_ms());
  if (left < 0) left = 0;
  return n ? ts_recv_exact(s, buf, n, left) : 0;
}

int ts_recv_packet(ts_sock_t s, void *buf, size_t cap, size_t *len, int timeout_ms) {
  return ts_recv_packet_ex(s, buf, cap, len, 4, 0, timeout_ms);
}

int ts_wait_close(ts_sock_t s, int timeout_ms, size_t *discarded) {
  char scratch[16384];
  size_t total = 0;
  int64_t deadline = tt_now_ms() + timeout_ms;
  int rc;
  for (;;) {
    int left = (int)(deadline - tt_now_ms());
    if (left < 0) left = 0;
    int w = ts_wait(s, POLLIN, left);
    if (w == 0) {
      rc = TS_TIMEOUT;
      break;
    }
    if (w < 0) {
      rc = TS_ERR;
      break;
    }
    int n = ts_recv_once(s, scratch, sizeof scratch);
    if (n < 0) {
      rc = n;
      break;
    }
    total += (size_t)n;
  }
  if (discarded) *discarded = total;
  return rc;
}

ts_sock_t ts_listen(const char *host, int port, int *port_out) {
  struct sockaddr_storage ss;
  ts_len_t len;
  if (ts_parse_addr(host, port, &ss, &len) != 0) return TS_INVALID;
  ts_sock_t s = socket(ss.ss_family, SOCK_STREAM, IPPROTO_TCP);
  if (s == TS_INVALID) return TS_INVALID;
  if (bind(s, (struct sockaddr *)&ss, len) != 0 || listen(s, 16) != 0) {
    ts_close(s);
    return TS_INVALID;
  }
  if (port_out) {
    len = sizeof ss;
    getsockname(s, (struct sockaddr *)&ss, &len);
    *port_out = ss.ss_family == AF_INET
                    ? ntohs(((struct sockaddr_in *)&ss)->sin_port)
                    : ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
  }
  return s;
}

int ts_ipv6_available(void) {
  ts_sock_t s = socket(AF_INET6, SOCK_STREAM, IPPROTO_TCP);
  if (s == TS_INVALID) return 0;
  struct sockaddr_in6 a;
  memset(&a, 0, sizeof a);
  a.sin6_family = AF_INET6;
  a.sin6_addr = in6addr_loopback;
  int ok = bind(s, (struct sockaddr *)&a, sizeof a) == 0;
  ts_close(s);
  return ok;
}

int ts_dead_port(void) {
  int port = 0;
  ts_sock_t s = ts_listen("127.0.0.1", 0, &port);
  if (s == TS_INVALID) return -1;
  ts_close(s);
  return port;
}
