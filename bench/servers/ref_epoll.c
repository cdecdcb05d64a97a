/* ref_epoll.c -- the reference for bench/run: the least a framed echo server can do on
 * Linux. One thread, one epoll (level-triggered), non-blocking sockets with TCP_NODELAY.
 *
 * Per readiness of a connection: one read() into its buffer, find the whole frames
 * (4-byte little-endian length + payload) and write them back with one write() straight
 * from the buffer (an echoed frame is byte for byte the frame received, so nothing is
 * copied or re-framed). A partial write keeps the unsent bytes in a per-connection output
 * buffer, stops reading that connection (EPOLLIN off) and waits for EPOLLOUT; reading
 * resumes once the output buffer is empty. A partial frame stays at the front of the
 * buffer for the next read; the buffer grows only to fit a frame larger than itself.
 *
 *   ref_epoll --port N [--host 127.0.0.1] [--max-packet BYTES]
 *
 * Prints "listening on HOST:PORT" (port 0 picks a free one); on SIGINT/SIGTERM prints
 * "stopped: N connections, P packets echoed" and exits 0. A header over --max-packet
 * (default 1 MiB) closes that connection.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#define READ_BUF (64 * 1024)
#define MAX_EVENTS 256

typedef struct conn {
  int fd;
  int eof;          /* the peer half-closed: close once the output is written */
  int want_out;     /* waiting for EPOLLOUT (EPOLLIN is off meanwhile) */
  uint8_t *in;      /* received bytes; a partial frame at the front */
  size_t in_len, in_cap;
  uint8_t *out;     /* bytes a short write left unsent */
  size_t out_off, out_len, out_cap;
} conn_t;

static int g_ep;
static uint32_t g_max_packet = 1u << 20;
static unsigned long long g_packets, g_conns;
static char g_listen_tag, g_signal_tag; /* epoll data.ptr markers */

static void die(const char *what) {
  perror(what);
  exit(1);
}

static void conn_close(conn_t *c) {
  close(c->fd); /* also removes it from the epoll set */
  free(c->in);
  free(c->out);
  free(c);
}

static int set_events(conn_t *c, uint32_t ev) {
  struct epoll_event e = {.events = ev, .data.ptr = c};
  return epoll_ctl(g_ep, EPOLL_CTL_MOD, c->fd, &e);
}

/* Write out[off..len); returns -1 on error, else 0 (possibly still pending). */
static int flush_out(conn_t *c) {
  while (c->out_off < c->out_len) {
    ssize_t n = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
    if (n > 0) {
      c->out_off += (size_t)n;
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && errno == EAGAIN) {
      return 0;
    } else {
      return -1;
    }
  }
  c->out_off = c->out_len = 0;
  return 0;
}

/* Send whole frames in[0..len) with one write; keep what did not go out. */
static int echo_span(conn_t *c, size_t len) {
  ssize_t n = write(c->fd, c->in, len);
  if (n < 0) {
    if (errno != EAGAIN && errno != EINTR) return -1;
    n = 0;
  }
  if ((size_t)n < len) {
    size_t rest = len - (size_t)n;
    if (c->out_cap < rest) {
      free(c->out);
      c->out_cap = rest < READ_BUF ? READ_BUF : rest;
      c->out = malloc(c->out_cap);
      if (c->out == NULL) return -1;
    }
    memcpy(c->out, c->in + n, rest);
    c->out_off = 0;
    c->out_len = rest;
    c->want_out = 1;
    if (set_events(c, EPOLLOUT) != 0) return -1;
  }
  return 0;
}

/* One read, then echo every whole frame. Returns -1 to close. */
static int on_readable(conn_t *c) {
  size_t pos = 0, whole;
  ssize_t n;
  if (c->in == NULL) {
    c->in_cap = READ_BUF;
    c->in = malloc(c->in_cap);
    if (c->in == NULL) return -1;
  }
  n = read(c->fd, c->in + c->in_len, c->in_cap - c->in_len);
  if (n == 0) {
    c->eof = 1;
    return c->out_len > c->out_off ? 0 : -1;
  }
  if (n < 0) return (errno == EAGAIN || errno == EINTR) ? 0 : -1;
  c->in_len += (size_t)n;
  while (c->in_len - pos >= 4) {
    uint32_t plen;
    memcpy(&plen, c->in + pos, 4); /* little-endian host */
    if (plen > g_max_packet) return -1;
    if (c->in_len - pos - 4 < plen) {
      if ((size_t)plen + 4 > c->in_cap) { /* grow to fit this frame */
        size_t cap = c->in_cap * 2;
        uint8_t *b;
        while (cap < (size_t)plen + 4) cap *= 2;
        b = malloc(cap);
        if (b == NULL) return -1;
        memcpy(b, c->in + pos, c->in_len - pos);
        free(c->in);
        c->in = b;
        c->in_cap = cap;
        c->in_len -= pos;
        pos = 0;
      }
      break;
    }
    pos += 4 + (size_t)plen;
    g_packets++;
  }
  whole = pos;
  if (whole > 0) {
    if (echo_span(c, whole) != 0) return -1;
    c->in_len -= whole;
    if (c->in_len > 0) memmove(c->in, c->in + whole, c->in_len);
  }
  return 0;
}

static void on_writable(conn_t *c) {
  if (flush_out(c) != 0) {
    conn_close(c);
    return;
  }
  if (c->out_len == 0) {
    if (c->eof) {
      conn_close(c);
      return;
    }
    c->want_out = 0;
    if (set_events(c, EPOLLIN) != 0) conn_close(c);
  }
}

static void accept_all(int lfd) {
  for (;;) {
    int one = 1, fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    conn_t *c;
    struct epoll_event e;
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      return; /* EAGAIN, or EMFILE & co.: try again at the next readiness */
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c = calloc(1, sizeof *c);
    if (c == NULL) {
      close(fd);
      continue;
    }
    c->fd = fd;
    e.events = EPOLLIN;
    e.data.ptr = c;
    if (epoll_ctl(g_ep, EPOLL_CTL_ADD, fd, &e) != 0) {
      conn_close(c);
      continue;
    }
    g_conns++;
  }
}

int main(int argc, char **argv) {
  const char *host = "127.0.0.1";
  int port = -1, lfd, sfd, one = 1, i;
  struct sockaddr_in sa;
  socklen_t sl = sizeof sa;
  struct epoll_event e, evs[MAX_EVENTS];
  struct rlimit rl;
  sigset_t sigs;

  for (i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--port") == 0 && i + 1 < argc) port = atoi(argv[++i]);
    else if (strcmp(argv[i], "--host") == 0 && i + 1 < argc) host = argv[++i];
    else if (strcmp(argv[i], "--max-packet") == 0 && i + 1 < argc) g_max_packet = (uint32_t)strtoul(argv[++i], NULL, 0);
    else {
      fprintf(stderr, "usage: ref_epoll --port N [--host H] [--max-packet BYTES]\n");
      return 2;
    }
  }
  if (port < 0) {
    fprintf(stderr, "usage: ref_epoll --port N [--host H] [--max-packet BYTES]\n");
    return 2;
  }
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  signal(SIGPIPE, SIG_IGN);
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  sigprocmask(SIG_BLOCK, &sigs, NULL);
  sfd = signalfd(-1, &sigs, SFD_NONBLOCK | SFD_CLOEXEC);
  if (sfd < 0) die("signalfd");

  lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (lfd < 0) die("socket");
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)port);
  if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
    fprintf(stderr, "ref_epoll: bad IPv4 address %s\n", host);
    return 2;
  }
  if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) != 0) die("bind");
  if (listen(lfd, SOMAXCONN) != 0) die("listen");
  if (getsockname(lfd, (struct sockaddr *)&sa, &sl) != 0) die("getsockname");

  g_ep = epoll_create1(EPOLL_CLOEXEC);
  if (g_ep < 0) die("epoll_create1");
  e.events = EPOLLIN;
  e.data.ptr = &g_listen_tag;
  if (epoll_ctl(g_ep, EPOLL_CTL_ADD, lfd, &e) != 0) die("epoll_ctl");
  e.data.ptr = &g_signal_tag;
  if (epoll_ctl(g_ep, EPOLL_CTL_ADD, sfd, &e) != 0) die("epoll_ctl");

  printf("listening on %s:%d\n", host, ntohs(sa.sin_port));
  fflush(stdout);

  for (;;) {
    int n = epoll_wait(g_ep, evs, MAX_EVENTS, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("epoll_wait");
    }
    for (i = 0; i < n; i++) {
      void *p = evs[i].data.ptr;
      conn_t *c = p;
      if (p == &g_listen_tag) {
        accept_all(lfd);
      } else if (p == &g_signal_tag) {
        printf("stopped: %llu connections, %llu packets echoed\n", g_conns, g_packets);
        return 0;
      } else if (c->want_out) {
        on_writable(c);
      } else if (on_readable(c) != 0) {
        conn_close(c);
      }
    }
  }
}
