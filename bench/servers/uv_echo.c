/* uv_echo.c -- a framed echo server on libuv, for bench/run. Same protocol as
 * ref_epoll.c and iocpsrv-echo: 4-byte little-endian length + payload, every packet
 * echoed to its sender.
 *
 * The usual libuv shape: uv_read_start with an alloc callback that hands out the free
 * tail of the connection's buffer; on each read, find the whole frames and echo them
 * with one write per read (uv_try_write, and uv_write of a copy of whatever the socket
 * did not take, with reading stopped until that write completes). TCP_NODELAY on.
 *
 *   uv_echo --port N [--host 127.0.0.1] [--max-packet BYTES]
 *
 * Prints "listening on HOST:PORT" (port 0 picks a free one); SIGINT/SIGTERM stop it.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <uv.h>

#define READ_BUF (64 * 1024)

typedef struct conn {
  uv_tcp_t tcp;
  uv_write_t wr;
  uint8_t *in;
  size_t in_len, in_cap;
  uint8_t *pending; /* copy of what uv_try_write left, owned by wr until its callback */
  int eof;
} conn_t;

static uv_loop_t *g_loop;
static uv_tcp_t g_server;
static uv_signal_t g_sigint, g_sigterm;
static uint32_t g_max_packet = 1u << 20;
static unsigned long long g_packets, g_conns;

static void on_closed(uv_handle_t *h) {
  conn_t *c = (conn_t *)h;
  free(c->in);
  free(c);
}

static void conn_close(conn_t *c) {
  if (!uv_is_closing((uv_handle_t *)&c->tcp)) uv_close((uv_handle_t *)&c->tcp, on_closed);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  conn_t *c = (conn_t *)h;
  (void)suggested;
  buf->base = (char *)c->in + c->in_len;
  buf->len = c->in_cap - c->in_len;
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);

static void on_written(uv_write_t *req, int status) {
  conn_t *c = (conn_t *)req->data;
  free(c->pending);
  c->pending = NULL;
  if (status < 0 || c->eof) {
    conn_close(c);
    return;
  }
  if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) conn_close(c);
}

/* Echo in[0..len) (whole frames) with one write. Returns <0 to close. */
static int echo_span(conn_t *c, size_t len) {
  uv_buf_t b = uv_buf_init((char *)c->in, (unsigned)len);
  int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
  if (n == UV_EAGAIN) n = 0;
  if (n < 0) return n;
  if ((size_t)n < len) { /* the rest goes through uv_write; pause reading until it is out */
    size_t rest = len - (size_t)n;
    c->pending = malloc(rest);
    if (c->pending == NULL) return -1;
    memcpy(c->pending, c->in + n, rest);
    b = uv_buf_init((char *)c->pending, (unsigned)rest);
    c->wr.data = c;
    uv_read_stop((uv_stream_t *)&c->tcp);
    return uv_write(&c->wr, (uv_stream_t *)&c->tcp, &b, 1, on_written);
  }
  return 0;
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  conn_t *c = (conn_t *)s;
  size_t pos = 0;
  (void)buf;
  if (n == 0) return; /* EAGAIN */
  if (n < 0) {          /* UV_EOF or an error */
    if (c->pending != NULL) {
      c->eof = 1;
      uv_read_stop(s);
    } else {
      conn_close(c);
    }
    return;
  }
  c->in_len += (size_t)n;
  while (c->in_len - pos >= 4) {
    uint32_t plen;
    memcpy(&plen, c->in + pos, 4);
    if (plen > g_max_packet) {
      conn_close(c);
      return;
    }
    if (c->in_len - pos - 4 < plen) {
      if ((size_t)plen + 4 > c->in_cap) {
        size_t cap = c->in_cap * 2;
        uint8_t *nb;
        while (cap < (size_t)plen + 4) cap *= 2;
        nb = malloc(cap);
        if (nb == NULL) {
          conn_close(c);
          return;
        }
        memcpy(nb, c->in + pos, c->in_len - pos);
        free(c->in);
        c->in = nb;
        c->in_cap = cap;
        c->in_len -= pos;
        pos = 0;
      }
      break;
    }
    pos += 4 + (size_t)plen;
    g_packets++;
  }
  if (pos > 0) {
    if (echo_span(c, pos) < 0) {
      conn_close(c);
      return;
    }
    c->in_len -= pos;
    if (c->in_len > 0) memmove(c->in, c->in + pos, c->in_len);
  }
}

static void on_connection(uv_stream_t *server, int status) {
  conn_t *c;
  if (status < 0) return;
  c = calloc(1, sizeof *c);
  if (c == NULL) return;
  c->in_cap = READ_BUF;
  c->in = malloc(c->in_cap);
  uv_tcp_init(g_loop, &c->tcp);
  if (c->in == NULL || uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
    conn_close(c);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  g_conns++;
  if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) conn_close(c);
}

static void close_any(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h)) uv_close(h, h->type == UV_TCP && h != (uv_handle_t *)&g_server ? on_closed : NULL);
}

static void on_signal(uv_signal_t *sig, int signum) {
  (void)sig;
  (void)signum;
  uv_walk(g_loop, close_any, NULL);
}

int main(int argc, char **argv) {
  const char *host = "127.0.0.1";
  int port = -1, i, rc, namelen;
  struct sockaddr_in sa;
  struct rlimit rl;

  for (i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--port") == 0 && i + 1 < argc) port = atoi(argv[++i]);
    else if (strcmp(argv[i], "--host") == 0 && i + 1 < argc) host = argv[++i];
    else if (strcmp(argv[i], "--max-packet") == 0 && i + 1 < argc) g_max_packet = (uint32_t)strtoul(argv[++i], NULL, 0);
    else port = -2;
  }
  if (port < 0) {
    fprintf(stderr, "usage: uv_echo --port N [--host H] [--max-packet BYTES]\n");
    return 2;
  }
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  g_loop = uv_default_loop();
  uv_tcp_init(g_loop, &g_server);
  if ((rc = uv_ip4_addr(host, port, &sa)) != 0 ||
      (rc = uv_tcp_bind(&g_server, (const struct sockaddr *)&sa, 0)) != 0 ||
      (rc = uv_listen((uv_stream_t *)&g_server, 4096, on_connection)) != 0) {
    fprintf(stderr, "uv_echo: cannot listen on %s:%d: %s\n", host, port, uv_strerror(rc));
    return 1;
  }
  namelen = sizeof sa;
  uv_tcp_getsockname(&g_server, (struct sockaddr *)&sa, &namelen);
  uv_signal_init(g_loop, &g_sigint);
  uv_signal_start(&g_sigint, on_signal, SIGINT);
  uv_signal_init(g_loop, &g_sigterm);
  uv_signal_start(&g_sigterm, on_signal, SIGTERM);
  printf("listening on %s:%d\n", host, ntohs(sa.sin_port));
  fflush(stdout);
  uv_run(g_loop, UV_RUN_DEFAULT);
  uv_loop_close(g_loop);
  printf("stopped: %llu connections, %llu packets echoed (libuv %s)\n", g_conns, g_packets,
         uv_version_string());
  return 0;
}
