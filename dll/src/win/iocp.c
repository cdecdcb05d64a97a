/* The Windows backend: one I/O completion port per server, served by every worker.
 *
 * Accepts are pre-posted AcceptEx calls (IOCPSRV_OPT_ACCEPTS_POSTED of them); bk_wait
 * finishes a completed one (SO_UPDATE_ACCEPT_CONTEXT, the addresses, the port), posts
 * its slot again and reports the client as BK_ACCEPT. Each connection has at most one
 * outstanding receive and one outstanding send:
 *   - The receive is a zero-byte WSARecv (bk_arm): it completes when data (or FIN, or
 *     an error) is there, and the core then takes the bytes with a non-blocking recv()
 *     into its worker's read buffer. Idle connections hold no receive buffer, and the
 *     core's receive path is the same as on epoll.
 *   - The send hands the core's buffer to one WSASend (bk_write says BK_AGAIN), which
 *     reads it until its completion: bk_caps.write_holds_bytes tells the core to leave
 *     those bytes in place and queue new sends in another buffer meanwhile.
 * FILE_SKIP_COMPLETION_PORT_ON_SUCCESS is set where the system allows it, so an
 * operation that succeeds at once is finished inline and queues no packet: bk_arm and
 * bk_write then report the result directly.
 *
 * Lifetime. A connection counts its outstanding operations (bk_conn_t.io). Closing the
 * socket makes them complete (995, or 676 under Wine: any error on a closed connection
 * means "closed"); bk_wait swallows those and reports BK_RELEASED with the last, so
 * the core's disconnect callback and the slot's reuse wait for it and no completion
 * ever touches a reused slot.
 *
 * Threads. Wine cancels the overlapped I/O of a thread that exits (Windows keeps I/O
 * of sockets bound to a port alive), so a retired worker parks instead of ending
 * (bk_caps.io_dies_with_thread), and an operation cancelled that way is posted again.
 * Stop posts one quit packet per worker (closing the port does not wake waiters under
 * Wine), and cancels the listener's accepts with CancelIoEx.
 *
 * IOCPSRV_OPT_CONCURRENCY is the port's NumberOfConcurrentThreads; Wine ignores that
 * value, so there it caps neither the fixed nor the dynamic pool. */
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "core/backend.h"
#include "core/fault.h"
#include "core/platform.h"

const bk_caps_t bk_caps = {
    .write_holds_bytes = 1,   /* WSASend reads the buffer until its completion */
    .io_dies_with_thread = 1, /* Wine cancels I/O of exited threads: retired workers park */
    .wait_takes_over = 0,     /* a worker blocked in a callback is seen by nobody else */
};

#define KEY_CONN 1
#define KEY_LISTEN 2
#define KEY_TASK 3
#define KEY_QUIT 4

enum { BK_IO_RECV = 1, BK_IO_SEND = 2, BK_IO_CONNECT = 3 /* in send_io */ };

/* bk_conn_t.io: outstanding operations, with this bit once bk_close closed the socket.
 * Whoever takes the count to zero with the bit set (bk_close, or the completion of the
 * last operation) releases the connection, exactly once. */
#define IO_CLOSED 0x80000000u

#define ADDR_SLOT (sizeof(struct sockaddr_storage) + 16) /* AcceptEx's rule */

struct bk_accept_s {
  OVERLAPPED ov;
  SOCKET sock;   /* the socket AcceptEx fills, INVALID_SOCKET when idle */
  int posted;
  int fails;     /* failed completions in a row (accept_done's) */
  atomic_int retry; /* not posted: waiting for bk_periodic */
  char addrs[2 * ADDR_SLOT];
};

#define container_of(p, type, field) ((type *)((char *)(p) - offsetof(type, field)))

/* An operation cancelled although we did not close the socket: the thread that issued
 * it exited (a worker the dynamic pool retired). Windows keeps I/O of sockets bound to
 * a completion port alive across thread exit; Wine cancels it. Either way the
 * connection is fine: post the operation again. */
#define STATUS_CANCELLED_ 0xC0000120L
#define CANCELLED_BY_THREAD_EXIT(status) ((status) == (ULONG_PTR)STATUS_CANCELLED_)

static int os_error(int e) {
  switch (e) {
  case WSAEADDRINUSE: return IOCPSRV_EADDRINUSE;
  case WSAEACCES: return IOCPSRV_EACCES;
  case WSAEADDRNOTAVAIL:
  case WSAEAFNOSUPPORT:
  case WSAEINVAL: return IOCPSRV_EADDRNOTAVAIL;
  case WSAENOBUFS:
  case ERROR_NOT_ENOUGH_MEMORY: return IOCPSRV_ENOMEM;
  default: return IOCPSRV_ESYSTEM;
  }
}

static SOCKET new_socket(int family) {
  return WSASocketW(family, SOCK_STREAM, IPPROTO_TCP, NULL, 0,
                    WSA_FLAG_OVERLAPPED | WSA_FLAG_NO_HANDLE_INHERIT);
}

/* ------------------------------------------------------------ accept failures ----
 *
 * Posting an accept can fail (WSASocket or AcceptEx: WSAEMFILE, WSAENOBUFS when
 * sockets or memory run out), and so can a posted one's completion. A slot that fails
 * is not posted again at once, which would loop as long as the cause lasts: it waits
 * for bk_periodic, which posts the waiting slots again after a backoff
 * (engine_accept_backoff: 50 ms, doubling up to 1 s) that starts over once they are
 * all posted. Clients meanwhile wait in the listen backlog and are served once posting
 * works again. A failed completion is posted again at once the first time (a client
 * that reset before its accept completed), and waits if it fails again in a row.
 * Every failure counts in accept_errors and is logged under BK_LOG_ACCEPT (a line a
 * second at most), never with a lock held: bk_listen runs under life_lock, so its
 * failures are logged by the next bk_periodic. */
enum { POST_WSASOCKET = 1, POST_ACCEPTEX = 2 };

static const char *post_step_name(int step) {
  return step == POST_ACCEPTEX ? "AcceptEx" : "WSASocket";
}

/* The system's text for a Winsock error, with its number. */
static const char *wsa_reason(int err, char *buf, size_t cap) {
  char text[160];
  DWORD n = FormatMessageA(FORMAT_MESSAGE_FROM_SYSTEM | FORMAT_MESSAGE_IGNORE_INSERTS, NULL,
                           (DWORD)err, 0, text, sizeof text, NULL);
  while (n > 0 && (text[n - 1] == '\n' || text[n - 1] == '\r' || text[n - 1] == ' ' ||
                   text[n - 1] == '.'))
    n--;
  text[n] = '\0';
  if (n > 0) snprintf(buf, cap, "%s (error %d)", text, err);
  else snprintf(buf, cap, "error %d", err);
  return buf;
}

/* Post one AcceptEx. 0, or the Winsock error, with *step naming the call that failed
 * (the slot is then idle). Logs nothing: bk_listen holds life_lock. */
static int post_accept(bk_server_t *b, bk_accept_t *a, int *step) {
  *step = POST_WSASOCKET;
  if (fault_os(FAULT_ACCEPT)) {
    a->sock = INVALID_SOCKET;
    return WSAEMFILE;
  }
  a->sock = new_socket(b->family);
  if (a->sock == INVALID_SOCKET) return WSAGetLastError();
  *step = POST_ACCEPTEX;
  memset(&a->ov, 0, sizeof a->ov);
  DWORD bytes = 0;
  int err = 0;
  a->posted = 1;
  if (fault_os(FAULT_ACCEPT))
    err = WSAENOBUFS;
  else if (!b->accept_ex(b->listen_sock, a->sock, a->addrs, 0, ADDR_SLOT, ADDR_SLOT, &bytes,
                         &a->ov))
    err = WSAGetLastError() == ERROR_IO_PENDING ? 0 : WSAGetLastError();
  if (err) {
    a->posted = 0;
    closesocket(a->sock);
    a->sock = INVALID_SOCKET;
  }
  return err;
}

/* The slot waits for bk_periodic. */
static void defer_accept(bk_server_t *b, bk_accept_t *a) {
  atomic_store(&a->retry, 1);
  if (atomic_fetch_add(&b->retries, 1) == 0) {
    int backoff = atomic_load(&b->backoff_ms);
    if (backoff <= 0) backoff = engine_accept_backoff(0);
    atomic_store(&b->retry_ms, srv_now_ms() + backoff);
  }
}

/* Post, or count the failure and leave the slot to bk_periodic. Returns the error. */
static int post_or_defer(bk_server_t *b, bk_accept_t *a, int *step) {
  int err = post_accept(b, a, step);
  if (err) {
    engine_count(b->srv, BK_COUNT_ACCEPT_ERRORS, 1);
    defer_accept(b, a);
  }
  return err;
}

/* No lock may be held. */
static void log_post_failure(bk_server_t *b, int step, int err) {
  char why[256];
  engine_log_topic(b->srv, BK_LOG_ACCEPT, 0, "%s failed: %s; accept posted again later",
                   post_step_name(step), wsa_reason(err, why, sizeof why));
}

void bk_periodic(bk_server_t *b, int64_t now) {
  int unlogged = atomic_exchange(&b->unlogged, 0);
  if (unlogged) log_post_failure(b, unlogged & 3, unlogged >> 2);
  if (atomic_load(&b->retries) == 0 || now < atomic_load(&b->retry_ms)) return;
  if (!atomic_load(&b->accepting)) return; /* stopping: they stay idle */
  int err = 0, step = 0;
  for (int i = 0; i < b->naccepts && !err; i++) {
    bk_accept_t *a = &b->accepts[i];
    if (!atomic_exchange(&a->retry, 0)) continue;
    err = post_accept(b, a, &step);
    if (!err) {
      atomic_fetch_sub(&b->retries, 1);
      continue;
    }
    engine_count(b->srv, BK_COUNT_ACCEPT_ERRORS, 1);
    atomic_store(&a->retry, 1); /* the rest wait too: one failure per pass */
  }
  if (!err) {
    atomic_store(&b->backoff_ms, 0);
    return;
  }
  int backoff = engine_accept_backoff(atomic_load(&b->backoff_ms));
  atomic_store(&b->backoff_ms, backoff);
  atomic_store(&b->retry_ms, now + backoff);
  char why[256];
  engine_log_topic(b->srv, BK_LOG_ACCEPT, 0,
                   "%s failed: %s; %d of %d accepts not posted, next try in %d ms",
                   post_step_name(step), wsa_reason(err, why, sizeof why),
                   atomic_load(&b->retries), b->naccepts, backoff);
}

/* ------------------------------------------------------------------ listener ---- */

/* ConnectEx, from a socket made for the purpose (any TCP socket gives the same one). */
static LPFN_CONNECTEX load_connect_ex(void) {
  LPFN_CONNECTEX fn = NULL;
  GUID guid = WSAID_CONNECTEX;
  DWORD bytes = 0;
  SOCKET s = new_socket(AF_INET);
  if (s == INVALID_SOCKET) s = new_socket(AF_INET6);
  if (s == INVALID_SOCKET) return NULL;
  if (WSAIoctl(s, SIO_GET_EXTENSION_FUNCTION_POINTER, &guid, sizeof guid, &fn, sizeof fn,
               &bytes, NULL, NULL) != 0)
    fn = NULL;
  closesocket(s);
  return fn;
}

int bk_open(bk_server_t *b, iocpsrv_t *srv, const srv_options_t *opt) {
  b->srv = srv;
  b->opt = opt;
  b->listen_sock = INVALID_SOCKET;
  b->port = NULL;
  b->accepts = NULL;
  b->naccepts = 0;
  atomic_store(&b->accepting, 1);
  atomic_store(&b->retries, 0);
  atomic_store(&b->backoff_ms, 0);
  atomic_store(&b->unlogged, 0);
  b->ready = 1;
  if (opt->reuseport) return IOCPSRV_ENOTSUP; /* no balancing SO_REUSEPORT on Windows */
  b->port = CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, (DWORD)opt->concurrency);
  if (!b->port) return os_error((int)GetLastError());
  b->accepts = srv_calloc((size_t)opt->accepts_posted, sizeof *b->accepts);
  if (!b->accepts) return IOCPSRV_ENOMEM;
  b->naccepts = (int)opt->accepts_posted;
  for (int i = 0; i < b->naccepts; i++) {
    b->accepts[i].sock = INVALID_SOCKET;
    atomic_init(&b->accepts[i].retry, 0);
  }
  b->connect_ex = load_connect_ex();
  return 0;
}

static int load_extensions(bk_server_t *b, SOCKET s) {
  GUID accept_guid = WSAID_ACCEPTEX, addrs_guid = WSAID_GETACCEPTEXSOCKADDRS;
  DWORD bytes = 0;
  if (WSAIoctl(s, SIO_GET_EXTENSION_FUNCTION_POINTER, &accept_guid, sizeof accept_guid,
               &b->accept_ex, sizeof b->accept_ex, &bytes, NULL, NULL) != 0 ||
      WSAIoctl(s, SIO_GET_EXTENSION_FUNCTION_POINTER, &addrs_guid, sizeof addrs_guid,
               &b->get_sockaddrs, sizeof b->get_sockaddrs, &bytes, NULL, NULL) != 0)
    return os_error(WSAGetLastError());
  return 0;
}

int bk_listen(bk_server_t *b, const struct addrinfo *ai, struct sockaddr_storage *bound) {
  SOCKET s = new_socket(ai->ai_family);
  if (s == INVALID_SOCKET) return os_error(WSAGetLastError());
  /* Exclusive: no other process can bind the same port and steal connections. */
  BOOL yes = TRUE;
  setsockopt(s, SOL_SOCKET, SO_EXCLUSIVEADDRUSE, (const char *)&yes, sizeof yes);
  if (ai->ai_family == AF_INET6) {
    DWORD v6only = (DWORD)b->opt->ipv6_only;
    setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, (const char *)&v6only, sizeof v6only);
  }
  int backlog = b->opt->listen_backlog ? (int)b->opt->listen_backlog : SOMAXCONN;
  int err = 0;
  if (bind(s, ai->ai_addr, (int)ai->ai_addrlen) != 0 || listen(s, backlog) != 0)
    err = os_error(WSAGetLastError());
  if (!err) err = load_extensions(b, s);
  if (!err && !CreateIoCompletionPort((HANDLE)s, b->port, KEY_LISTEN, 0))
    err = os_error((int)GetLastError());
  if (err) {
    closesocket(s);
    return err;
  }
  int len = sizeof *bound;
  getsockname(s, (struct sockaddr *)bound, &len);
  b->listen_sock = s;
  b->family = ai->ai_family;
  for (int i = 0; i < b->naccepts; i++) {
    /* A slot that cannot be posted now is left to bk_periodic, which also logs this
     * (life_lock is held here): listening succeeds all the same. */
    int step;
    err = post_or_defer(b, &b->accepts[i], &step);
    if (err) atomic_store(&b->unlogged, err << 2 | step);
  }
  return 0;
}

void bk_quit(bk_server_t *b, int waiters) {
  if (waiters == 0) {
    atomic_store(&b->accepting, 0);
    /* Cancel, not close: a worker may be re-posting an accept on this socket now. */
    CancelIoEx((HANDLE)b->listen_sock, NULL);
    return;
  }
  /* One packet per worker: closing the port does not wake waiters under Wine. */
  for (int i = 0; i < waiters; i++) PostQueuedCompletionStatus(b->port, 0, KEY_QUIT, NULL);
}

void bk_wake(bk_server_t *b) { PostQueuedCompletionStatus(b->port, 0, KEY_TASK, NULL); }

/* After the workers are gone: close the listener and wait out the accepts it had
 * posted, so the kernel is done with their OVERLAPPEDs before they are freed. */
static void drain_accepts(bk_server_t *b) {
  int posted = 0;
  for (int i = 0; i < b->naccepts; i++) posted += b->accepts[i].posted;
  for (int tries = 0; posted > 0 && tries < 100; tries++) {
    OVERLAPPED_ENTRY e[BK_WAIT_EVENTS];
    ULONG n = 0;
    if (!GetQueuedCompletionStatusEx(b->port, e, BK_WAIT_EVENTS, &n, 50, FALSE)) continue;
    for (ULONG i = 0; i < n; i++) {
      if (e[i].lpCompletionKey != KEY_LISTEN || !e[i].lpOverlapped) continue;
      bk_accept_t *a = container_of(e[i].lpOverlapped, bk_accept_t, ov);
      a->posted = 0;
      posted--;
    }
  }
}

void bk_release(bk_server_t *b) {
  if (!b->ready) return; /* bk_open never ran: nothing is open */
  b->ready = 0;
  if (b->listen_sock != INVALID_SOCKET) closesocket(b->listen_sock);
  b->listen_sock = INVALID_SOCKET;
  if (b->port && b->accepts) drain_accepts(b);
  for (int i = 0; b->accepts && i < b->naccepts; i++)
    if (b->accepts[i].sock != INVALID_SOCKET) closesocket(b->accepts[i].sock);
  free(b->accepts);
  b->accepts = NULL;
  b->naccepts = 0;
  if (b->port) CloseHandle(b->port);
  b->port = NULL;
}

/* ---------------------------------------------------------------------- wait ---- */

/* A posted accept completed (status: the OVERLAPPED's NTSTATUS). Returns 1 with a
 * BK_ACCEPT event in *e for a client to serve, else 0. */
static int accept_done(bk_server_t *b, bk_accept_t *a, ULONG_PTR status, bk_event_t *e) {
  SOCKET s = a->sock;
  int step, err;
  a->sock = INVALID_SOCKET;
  a->posted = 0;
  if (!atomic_load(&b->accepting)) { /* cancelled by stop */
    closesocket(s);
    return 0;
  }
  if (status != 0) {
    closesocket(s);
    if (CANCELLED_BY_THREAD_EXIT(status)) { /* not a failure */
      if ((err = post_or_defer(b, a, &step)) != 0) log_post_failure(b, step, err);
      return 0;
    }
    engine_count(b->srv, BK_COUNT_ACCEPT_ERRORS, 1);
    /* Once: a client gone before its accept completed. Again in a row: wait. (Once
     * posted, the slot is another completion's: read nothing of it after that.) */
    int at_once = a->fails++ == 0;
    err = 0;
    if (at_once) err = post_or_defer(b, a, &step);
    else defer_accept(b, a);
    engine_log_topic(b->srv, BK_LOG_ACCEPT, 0,
                     "accept failed: AcceptEx completed with status 0x%08lx%s",
                     (unsigned long)status,
                     at_once && !err ? "" : "; accept posted again later");
    if (err) log_post_failure(b, step, err);
    return 0;
  }
  a->fails = 0;
  SOCKET ls = b->listen_sock;
  setsockopt(s, SOL_SOCKET, SO_UPDATE_ACCEPT_CONTEXT, (const char *)&ls, sizeof ls);
  struct sockaddr *local = NULL, *remote = NULL;
  int llen = 0, rlen = 0;
  b->get_sockaddrs(a->addrs, 0, ADDR_SLOT, ADDR_SLOT, &local, &llen, &remote, &rlen);
  memset(&e->peer, 0, sizeof e->peer);
  if (remote && rlen > 0 && (size_t)rlen <= sizeof e->peer) memcpy(&e->peer, remote, (size_t)rlen);
  /* Keep the accept pool full before serving this one. No lock is held: log here. */
  if ((err = post_or_defer(b, a, &step)) != 0) log_post_failure(b, step, err);
  u_long nonblocking = 1;
  if (ioctlsocket(s, FIONBIO, &nonblocking) != 0 ||
      !CreateIoCompletionPort((HANDLE)s, b->port, KEY_CONN, 0)) {
    engine_count(b->srv, BK_COUNT_ACCEPT_ERRORS, 1);
    closesocket(s);
    return 0;
  }
  e->kind = BK_ACCEPT;
  e->sock = s;
  return 1;
}

/* A connection's receive or send completed. Returns 1 with its event in *e, or 0 when
 * there is nothing to report (an operation of a closed connection, not the last). */
static int conn_done(const OVERLAPPED_ENTRY *oe, bk_event_t *e) {
  bk_io_t *io = container_of(oe->lpOverlapped, bk_io_t, ov);
  int recv = io->kind == BK_IO_RECV;
  bk_conn_t *c = recv ? container_of(io, bk_conn_t, recv_io) : container_of(io, bk_conn_t, send_io);
  /* Read all of it before the count drops: then the slot may be released and reused. */
  ULONG_PTR status = oe->lpOverlapped->Internal;
  e->kind = BK_CONN;
  e->id = c->id;
  e->bytes = 0;
  if (io->kind == BK_IO_CONNECT) { /* bk_connect_result reads it */
    c->connect_status = status;
    atomic_store(&c->connect_done, 1);
  }
  unsigned old = atomic_fetch_sub(&c->io, 1);
  if (old & IO_CLOSED) {
    if (old != (IO_CLOSED | 1)) return 0;
    e->notes = BK_RELEASED; /* the last one */
    return 1;
  }
  int ok = status == 0 || CANCELLED_BY_THREAD_EXIT(status); /* re-posted by the core */
  if (recv) {
    e->notes = ok ? BK_READ : BK_FAILED;
  } else {
    e->notes = ok ? BK_WRITE : BK_WRITE | BK_FAILED;
    e->bytes = oe->dwNumberOfBytesTransferred;
  }
  return 1;
}

int bk_wait(bk_server_t *b, bk_event_t *ev, int max, int timeout_ms) {
  OVERLAPPED_ENTRY entries[BK_WAIT_EVENTS];
  ULONG n = 0;
  ULONG cap = max < BK_WAIT_EVENTS ? (ULONG)max : BK_WAIT_EVENTS;
  if (!GetQueuedCompletionStatusEx(b->port, entries, cap, &n,
                                   timeout_ms < 0 ? INFINITE : (DWORD)timeout_ms, FALSE))
    return 0; /* timeout: time for the sweep */
  int k = 0, quit = 0;
  for (ULONG i = 0; i < n; i++) {
    const OVERLAPPED_ENTRY *oe = &entries[i];
    bk_event_t *e = &ev[k];
    switch (oe->lpCompletionKey) {
    case KEY_QUIT:
      /* One quit packet per worker: a second one in the same batch belongs to another. */
      if (quit) {
        PostQueuedCompletionStatus(b->port, 0, KEY_QUIT, NULL);
        break;
      }
      quit = 1;
      e->kind = BK_QUIT;
      k++;
      break;
    case KEY_TASK:
      e->kind = BK_WAKE;
      k++;
      break;
    case KEY_LISTEN:
      k += accept_done(b, container_of(oe->lpOverlapped, bk_accept_t, ov),
                       oe->lpOverlapped->Internal, e);
      break;
    case KEY_CONN:
      if (oe->lpOverlapped) k += conn_done(oe, e);
      break;
    }
  }
  return k;
}

/* --------------------------------------------------------------- connections ---- */

/* One option of an accepted socket: a refusal is logged (at most a line a second) and
 * otherwise ignored, since every option here only tunes the connection. */
static void tune_failed(bk_server_t *b, const char *what, int err) {
  engine_log_topic(b->srv, BK_LOG_SOCKOPT, 1, "cannot set %s on a client socket: %d", what,
                   err);
}

static void tune(bk_server_t *b, SOCKET s, int level, int name, int value, const char *what) {
  int rc = fault_os(FAULT_SETSOCKOPT)
               ? (WSASetLastError(WSAENOBUFS), SOCKET_ERROR)
               : setsockopt(s, level, name, (const char *)&value, sizeof value);
  if (rc != 0) tune_failed(b, what, WSAGetLastError());
}

void bk_tune(bk_server_t *b, bk_socket_t s) {
  const srv_options_t *o = b->opt;
  if (o->nodelay) tune(b, s, IPPROTO_TCP, TCP_NODELAY, 1, "TCP_NODELAY");
  if (o->keepalive_ms) {
    struct tcp_keepalive ka = {1, (ULONG)o->keepalive_ms, (ULONG)o->keepalive_ms};
    DWORD bytes = 0;
    int rc = fault_os(FAULT_SETSOCKOPT)
                 ? (WSASetLastError(WSAENOBUFS), SOCKET_ERROR)
                 : WSAIoctl(s, SIO_KEEPALIVE_VALS, &ka, sizeof ka, NULL, 0, &bytes, NULL, NULL);
    if (rc != 0) tune_failed(b, "SIO_KEEPALIVE_VALS", WSAGetLastError());
  }
  if (o->rcvbuf) tune(b, s, SOL_SOCKET, SO_RCVBUF, (int)o->rcvbuf, "SO_RCVBUF");
  if (o->sndbuf) tune(b, s, SOL_SOCKET, SO_SNDBUF, (int)o->sndbuf, "SO_SNDBUF");
}

int bk_register(bk_server_t *b, bk_conn_t *c, bk_socket_t s, uint64_t id) {
  (void)b; /* the socket joined the port at accept */
  memset(&c->recv_io, 0, sizeof c->recv_io);
  memset(&c->send_io, 0, sizeof c->send_io);
  c->recv_io.kind = BK_IO_RECV;
  c->send_io.kind = BK_IO_SEND;
  c->id = id;
  atomic_store(&c->io, 0);
  c->skip_inline = SetFileCompletionNotificationModes(
                       (HANDLE)s, FILE_SKIP_COMPLETION_PORT_ON_SUCCESS) != 0;
  return 0; /* the first receive is posted when the token is released */
}

/* Post the zero-byte receive. */
int bk_arm(bk_conn_t *c, bk_socket_t s) {
  WSABUF none = {0, NULL};
  DWORD bytes = 0, flags = 0;
  memset(&c->recv_io.ov, 0, sizeof c->recv_io.ov);
  atomic_fetch_add(&c->io, 1);
  int rc = fault_os(FAULT_RECV_POST)
               ? (WSASetLastError(WSAENOBUFS), SOCKET_ERROR)
               : WSARecv(s, &none, 1, &bytes, &flags, &c->recv_io.ov, NULL);
  if (rc == 0 && !c->skip_inline) return 0; /* a completion packet is on its way */
  if (rc != 0 && WSAGetLastError() == WSA_IO_PENDING) return 0;
  /* Finished inline (data is there) or failed (the connection is dead): no packet
   * comes, so the core hears it from here. */
  atomic_fetch_sub(&c->io, 1);
  return rc == 0 ? 1 : BK_ERROR;
}

/* One WSASend; the core never calls again before its completion (BK_WRITE). */
long bk_write_now(bk_socket_t s, const void *head, size_t hlen, const void *body,
                  size_t blen) {
  /* WSASend reads its buffer until the completion, after the host's send returned:
   * nothing is written from the host's memory, the core copies it into the queue. */
  (void)s, (void)head, (void)hlen, (void)body, (void)blen;
  return 0;
}

long bk_write(bk_conn_t *c, bk_socket_t s, const void *data, size_t len) {
  WSABUF buf = {(ULONG)len, (char *)data}; /* len <= SENDBUF_MAX_WRITE fits a ULONG */
  DWORD bytes = 0;
  memset(&c->send_io.ov, 0, sizeof c->send_io.ov);
  atomic_fetch_add(&c->io, 1);
  int rc = fault_os(FAULT_SEND_POST)
               ? (WSASetLastError(WSAENOBUFS), SOCKET_ERROR)
               : WSASend(s, &buf, 1, &bytes, 0, &c->send_io.ov, NULL);
  if (rc == 0 && !c->skip_inline) return BK_AGAIN; /* the completion counts the bytes */
  if (rc != 0 && WSAGetLastError() == WSA_IO_PENDING) return BK_AGAIN;
  atomic_fetch_sub(&c->io, 1);
  return rc == 0 ? (long)bytes : BK_ERROR; /* done inline, or failed */
}

long bk_read(bk_socket_t s, void *buf, size_t len) {
  int n = recv(s, (char *)buf, len > INT_MAX ? INT_MAX : (int)len, 0);
  if (n >= 0) return n;
  return WSAGetLastError() == WSAEWOULDBLOCK ? BK_AGAIN : BK_ERROR;
}

/* ---------------------------------------------------------- outbound connects ---- */

/* What a failed connect means for the host (an IOCPSRV_REASON_CONNECT_*), from its
 * Winsock error or, where none is to be had, its NTSTATUS. */
static int connect_reason(int err, ULONG_PTR status) {
  switch (err) {
  case WSAECONNREFUSED:
  case ERROR_CONNECTION_REFUSED: return IOCPSRV_REASON_CONNECT_REFUSED;
  case WSAENETUNREACH:
  case WSAEHOSTUNREACH:
  case WSAENETDOWN:
  case WSAEHOSTDOWN:
  case ERROR_NETWORK_UNREACHABLE:
  case ERROR_HOST_UNREACHABLE: return IOCPSRV_REASON_CONNECT_UNREACHABLE;
  case WSAETIMEDOUT:
  case ERROR_SEM_TIMEOUT: return IOCPSRV_REASON_CONNECT_TIMEOUT;
  }
  switch ((unsigned long)status) {
  case 0xC0000236UL: return IOCPSRV_REASON_CONNECT_REFUSED;     /* CONNECTION_REFUSED */
  case 0xC000023CUL:                                              /* NETWORK_UNREACHABLE */
  case 0xC000023DUL: return IOCPSRV_REASON_CONNECT_UNREACHABLE; /* HOST_UNREACHABLE */
  case 0xC00000B5UL: return IOCPSRV_REASON_CONNECT_TIMEOUT;     /* IO_TIMEOUT */
  }
  return IOCPSRV_REASON_CONNECT_FAILED;
}

/* ConnectEx wants a bound socket: `from`, or the wildcard address of the family. */
static int bind_for_connect(SOCKET s, int family, const struct sockaddr *from, int fromlen) {
  struct sockaddr_storage any;
  if (!from) {
    memset(&any, 0, sizeof any);
    any.ss_family = (ADDRESS_FAMILY)family;
    from = (const struct sockaddr *)&any;
    fromlen = family == AF_INET6 ? (int)sizeof(struct sockaddr_in6)
                                 : (int)sizeof(struct sockaddr_in);
  }
  return bind(s, from, fromlen) == 0 ? 0 : os_error(WSAGetLastError());
}

int bk_connect(bk_server_t *b, bk_conn_t *c, uint64_t id, const struct sockaddr *to,
               int tolen, const struct sockaddr *from, int fromlen, bk_socket_t *out) {
  *out = INVALID_SOCKET;
  if (!b->connect_ex) return IOCPSRV_ENOTSUP;
  SOCKET s = fault_os(FAULT_CONNECT) ? (WSASetLastError(WSAEMFILE), INVALID_SOCKET)
                                     : new_socket(to->sa_family);
  if (s == INVALID_SOCKET) {
    int e = WSAGetLastError();
    return e == WSAEMFILE ? IOCPSRV_ELIMIT : os_error(e);
  }
  u_long nonblocking = 1;
  int err = bind_for_connect(s, to->sa_family, from, fromlen);
  if (!err && (ioctlsocket(s, FIONBIO, &nonblocking) != 0 ||
               !CreateIoCompletionPort((HANDLE)s, b->port, KEY_CONN, 0)))
    err = IOCPSRV_ESYSTEM;
  if (err) {
    closesocket(s);
    return err;
  }
  memset(&c->recv_io, 0, sizeof c->recv_io);
  memset(&c->send_io, 0, sizeof c->send_io);
  c->recv_io.kind = BK_IO_RECV;
  c->send_io.kind = BK_IO_CONNECT;
  c->id = id;
  c->skip_inline = 0; /* set once connected: the connect's completion always queues */
  atomic_store(&c->connect_done, 0);
  atomic_store(&c->io, 1);
  DWORD sent = 0;
  if (!b->connect_ex(s, to, tolen, NULL, 0, &sent, &c->send_io.ov) &&
      WSAGetLastError() != ERROR_IO_PENDING) {
    int reason = connect_reason(WSAGetLastError(), 0);
    atomic_store(&c->io, 0);
    closesocket(s);
    return reason;
  }
  *out = s;
  return 0;
}

int bk_connect_result(bk_conn_t *c, bk_socket_t s) {
  if (!atomic_load(&c->connect_done)) return BK_AGAIN;
  ULONG_PTR status = c->connect_status;
  if (status != 0) {
    DWORD bytes = 0, flags = 0;
    int err = 0;
    if (!WSAGetOverlappedResult(s, &c->send_io.ov, &bytes, FALSE, &flags))
      err = WSAGetLastError();
    return connect_reason(err, status);
  }
  /* Now an ordinary connection: getpeername, shutdown and the rest work on it. */
  setsockopt(s, SOL_SOCKET, SO_UPDATE_CONNECT_CONTEXT, NULL, 0);
  c->send_io.kind = BK_IO_SEND;
  c->skip_inline = SetFileCompletionNotificationModes(
                       (HANDLE)s, FILE_SKIP_COMPLETION_PORT_ON_SUCCESS) != 0;
  return 0;
}

void bk_shutdown(bk_socket_t s) { shutdown(s, SD_SEND); }

int bk_close(bk_conn_t *c, bk_socket_t s, int abort) {
  if (abort) {
    /* RST instead of FIN. Wine sends a FIN when the socket is closed with a receive
     * still pending, so cancel that first (the completion still arrives). */
    CancelIoEx((HANDLE)s, NULL);
    struct linger lg = {1, 0};
    setsockopt(s, SOL_SOCKET, SO_LINGER, (const char *)&lg, sizeof lg);
  }
  closesocket(s); /* outstanding operations now complete with an error */
  if (!c) return 0;
  return (atomic_fetch_or(&c->io, IO_CLOSED) & ~IO_CLOSED) != 0;
}

int bk_sockname(bk_socket_t s, struct sockaddr_storage *sa) {
  int len = sizeof *sa;
  return getsockname(s, (struct sockaddr *)sa, &len) == 0 ? 0 : -1;
}
