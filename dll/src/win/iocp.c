/* The Windows backend: one I/O completion port per server, served by every worker.
 *
 * Accepts are pre-posted AcceptEx calls (IOCPSRV_OPT_ACCEPTS_POSTED of them). Each
 * connection has at most one outstanding receive and one outstanding send:
 *   - The receive is a zero-byte WSARecv: it completes when data (or FIN, or an error)
 *     is there, and the token holder then takes the bytes with a non-blocking recv()
 *     into its worker's read buffer. Idle connections hold no receive buffer, and the
 *     engine's receive path is the same as on epoll.
 *   - The send hands the whole contiguous send buffer to one WSASend (every packet
 *     queued since the last one, in one call) and swaps in an empty buffer for new
 *     sends while the kernel owns that one.
 * FILE_SKIP_COMPLETION_PORT_ON_SUCCESS is set where the system allows it, so an
 * operation that succeeds at once is finished inline and queues no packet.
 *
 * Lifetime. A connection counts its outstanding operations. Closing the socket makes
 * them complete (995, or 676 under Wine: any error on a closed connection means
 * "closed"); the engine's disconnect callback and the slot's release wait for the last
 * completion, so no completion ever touches a reused slot.
 *
 * Stop posts one quit packet per worker (closing the port does not wake waiters under
 * Wine), and cancels the listener's accepts with CancelIoEx.
 *
 * IOCPSRV_OPT_CONCURRENCY is the port's NumberOfConcurrentThreads; Wine ignores that
 * value, so there it caps neither the fixed nor the dynamic pool. */
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "core/engine.h"
#include "core/fault.h"

#define KEY_CONN 1
#define KEY_LISTEN 2
#define KEY_TASK 3
#define KEY_QUIT 4

enum { BK_IO_RECV = 1, BK_IO_SEND = 2 };

#define ENTRIES_PER_WAIT 64
#define ADDR_SLOT (sizeof(struct sockaddr_storage) + 16) /* AcceptEx's rule */

struct bk_accept_s {
  OVERLAPPED ov;
  SOCKET sock;   /* the socket AcceptEx fills, INVALID_SOCKET when idle */
  int posted;
  int fails;     /* failed completions in a row (on_accept's) */
  atomic_int retry; /* not posted: waiting for bk_periodic */
  char addrs[2 * ADDR_SLOT];
};

#define container_of(p, type, field) ((type *)((char *)(p) - offsetof(type, field)))

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

int bk_global_init(void) {
  WSADATA wsa;
  return WSAStartup(MAKEWORD(2, 2), &wsa) == 0 ? 0 : -1;
}

void bk_global_cleanup(void) { WSACleanup(); }

static SOCKET new_socket(int family) {
  return WSASocketW(family, SOCK_STREAM, IPPROTO_TCP, NULL, 0,
                    WSA_FLAG_OVERLAPPED | WSA_FLAG_NO_HANDLE_INHERIT);
}

/* ------------------------------------------------------------------ listener ---- */

static int load_extensions(iocpsrv_t *srv) {
  GUID accept_guid = WSAID_ACCEPTEX, addrs_guid = WSAID_GETACCEPTEXSOCKADDRS;
  DWORD bytes = 0;
  if (WSAIoctl(srv->listen_sock, SIO_GET_EXTENSION_FUNCTION_POINTER, &accept_guid,
               sizeof accept_guid, &srv->bk.accept_ex, sizeof srv->bk.accept_ex, &bytes, NULL,
               NULL) != 0 ||
      WSAIoctl(srv->listen_sock, SIO_GET_EXTENSION_FUNCTION_POINTER, &addrs_guid,
               sizeof addrs_guid, &srv->bk.get_sockaddrs, sizeof srv->bk.get_sockaddrs,
               &bytes, NULL, NULL) != 0)
    return os_error(WSAGetLastError());
  return 0;
}

int bk_listen_on(iocpsrv_t *srv, const struct addrinfo *ai) {
  SOCKET s = new_socket(ai->ai_family);
  if (s == INVALID_SOCKET) return os_error(WSAGetLastError());
  /* Exclusive: no other process can bind the same port and steal connections. */
  BOOL yes = TRUE;
  setsockopt(s, SOL_SOCKET, SO_EXCLUSIVEADDRUSE, (const char *)&yes, sizeof yes);
  if (ai->ai_family == AF_INET6) {
    DWORD v6only = (DWORD)srv->opt.ipv6_only;
    setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, (const char *)&v6only, sizeof v6only);
  }
  int backlog = srv->opt.listen_backlog ? (int)srv->opt.listen_backlog : SOMAXCONN;
  if (bind(s, ai->ai_addr, (int)ai->ai_addrlen) != 0 || listen(s, backlog) != 0) {
    int err = os_error(WSAGetLastError());
    closesocket(s);
    return err;
  }
  struct sockaddr_storage sa;
  int len = sizeof sa;
  getsockname(s, (struct sockaddr *)&sa, &len);
  srv->port = ntohs(sa.ss_family == AF_INET ? ((struct sockaddr_in *)&sa)->sin_port
                                            : ((struct sockaddr_in6 *)&sa)->sin6_port);
  srv->listen_sock = s;
  srv->bk.family = ai->ai_family;
  return 0;
}


/* ------------------------------------------------------------ accept failures ----
 *
 * Posting an accept can fail (WSASocket or AcceptEx: WSAEMFILE, WSAENOBUFS when
 * sockets or memory run out), and so can a posted one's completion. A slot that fails
 * is not posted again at once, which would loop as long as the cause lasts: it waits
 * for bk_periodic, which posts the waiting slots again after a backoff that doubles
 * from ACCEPT_BACKOFF_MIN_MS to ACCEPT_BACKOFF_MAX_MS and starts over once they are
 * all posted. Clients meanwhile wait in the listen backlog and are served once posting
 * works again. A failed completion is posted again at once the first time (a client
 * that reset before its accept completed), and waits if it fails again in a row.
 * Every failure counts in accept_errors and is logged through srv->accept_log (a line
 * a second at most), never with a lock held: bk_start runs under life_lock, so its
 * failures are logged by the next bk_periodic. */
#define ACCEPT_BACKOFF_MIN_MS 50
#define ACCEPT_BACKOFF_MAX_MS 1000

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
 * (the slot is then idle). Logs nothing: bk_start holds life_lock. */
static int post_accept(iocpsrv_t *srv, bk_accept_t *a, int *step) {
  *step = POST_WSASOCKET;
  if (fault_os(FAULT_ACCEPT)) {
    a->sock = INVALID_SOCKET;
    return WSAEMFILE;
  }
  a->sock = new_socket(srv->bk.family);
  if (a->sock == INVALID_SOCKET) return WSAGetLastError();
  *step = POST_ACCEPTEX;
  memset(&a->ov, 0, sizeof a->ov);
  DWORD bytes = 0;
  int err = 0;
  a->posted = 1;
  if (fault_os(FAULT_ACCEPT))
    err = WSAENOBUFS;
  else if (!srv->bk.accept_ex(srv->listen_sock, a->sock, a->addrs, 0, ADDR_SLOT, ADDR_SLOT,
                              &bytes, &a->ov))
    err = WSAGetLastError() == ERROR_IO_PENDING ? 0 : WSAGetLastError();
  if (err) {
    a->posted = 0;
    closesocket(a->sock);
    a->sock = INVALID_SOCKET;
  }
  return err;
}

/* The slot waits for bk_periodic. */
static void defer_accept(iocpsrv_t *srv, bk_accept_t *a, int64_t now) {
  bk_server_t *b = &srv->bk;
  atomic_store(&a->retry, 1);
  if (atomic_fetch_add(&b->retries, 1) == 0) {
    int backoff = atomic_load(&b->backoff_ms);
    atomic_store(&b->retry_ms, now + (backoff > 0 ? backoff : ACCEPT_BACKOFF_MIN_MS));
  }
}

/* Post, or count the failure and leave the slot to bk_periodic. Returns the error. */
static int post_or_defer(iocpsrv_t *srv, bk_accept_t *a, int64_t now, int *step) {
  int err = post_accept(srv, a, step);
  if (err) {
    engine_stat_add(&srv->stats.accept_errors, 1);
    defer_accept(srv, a, now);
  }
  return err;
}

/* No lock may be held. */
static void log_post_failure(iocpsrv_t *srv, int step, int err) {
  char why[256];
  engine_log_throttled(srv, &srv->accept_log, 0, "%s failed: %s; accept posted again later",
                       post_step_name(step), wsa_reason(err, why, sizeof why));
}

void bk_periodic(iocpsrv_t *srv, int64_t now) {
  bk_server_t *b = &srv->bk;
  int unlogged = atomic_exchange(&b->unlogged, 0);
  if (unlogged) log_post_failure(srv, unlogged & 3, unlogged >> 2);
  if (atomic_load(&b->retries) == 0 || now < atomic_load(&b->retry_ms)) return;
  if (atomic_load(&srv->state) != SRV_RUNNING) return; /* stopping: they stay idle */
  int err = 0, step = 0;
  for (int i = 0; i < b->naccepts && !err; i++) {
    bk_accept_t *a = &b->accepts[i];
    if (!atomic_exchange(&a->retry, 0)) continue;
    err = post_accept(srv, a, &step);
    if (!err) {
      atomic_fetch_sub(&b->retries, 1);
      continue;
    }
    engine_stat_add(&srv->stats.accept_errors, 1);
    atomic_store(&a->retry, 1); /* the rest wait too: one failure per pass */
  }
  if (!err) {
    atomic_store(&b->backoff_ms, 0);
    return;
  }
  int backoff = atomic_load(&b->backoff_ms);
  backoff = backoff <= 0 ? ACCEPT_BACKOFF_MIN_MS
            : backoff >= ACCEPT_BACKOFF_MAX_MS / 2 ? ACCEPT_BACKOFF_MAX_MS
                                                   : backoff * 2;
  atomic_store(&b->backoff_ms, backoff);
  atomic_store(&b->retry_ms, now + backoff);
  char why[256];
  engine_log_throttled(srv, &srv->accept_log, 0,
                       "%s failed: %s; %d of %d accepts not posted, next try in %d ms",
                       post_step_name(step), wsa_reason(err, why, sizeof why),
                       atomic_load(&b->retries), b->naccepts, backoff);
}

int bk_start(iocpsrv_t *srv, const char *host, int port) {
  bk_server_t *b = &srv->bk;
  if (srv->opt.reuseport) return IOCPSRV_ENOTSUP; /* no balancing SO_REUSEPORT on Windows */
  int rc = engine_bind_listener(srv, host, port);
  if (rc) return rc;
  rc = load_extensions(srv);
  if (rc) return rc;
  b->port = CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, (DWORD)srv->opt.concurrency);
  if (!b->port) return os_error((int)GetLastError());
  if (!CreateIoCompletionPort((HANDLE)srv->listen_sock, b->port, KEY_LISTEN, 0))
    return os_error((int)GetLastError());
  b->naccepts = (int)srv->opt.accepts_posted;
  b->accepts = srv_calloc((size_t)b->naccepts, sizeof *b->accepts);
  if (!b->accepts) return IOCPSRV_ENOMEM;
  atomic_store(&b->retries, 0);
  atomic_store(&b->backoff_ms, 0);
  atomic_store(&b->unlogged, 0);
  int64_t now = srv_now_ms();
  for (int i = 0; i < b->naccepts; i++) {
    bk_accept_t *a = &b->accepts[i];
    a->sock = INVALID_SOCKET;
    atomic_init(&a->retry, 0);
    /* A slot that cannot be posted now is left to bk_periodic, which also logs this
     * (life_lock is held here): listening succeeds all the same. */
    int step, err = post_or_defer(srv, a, now, &step);
    if (err) atomic_store(&b->unlogged, err << 2 | step);
  }
  return 0;
}

void bk_stop_accepting(iocpsrv_t *srv) {
  /* Cancel, not close: a worker may be re-posting an accept on this socket right now. */
  CancelIoEx((HANDLE)srv->listen_sock, NULL);
}

/* After the workers are gone: close the listener and wait out the accepts it had
 * posted, so the kernel is done with their OVERLAPPEDs before they are freed. */
static void drain_accepts(iocpsrv_t *srv) {
  bk_server_t *b = &srv->bk;
  int posted = 0;
  for (int i = 0; i < b->naccepts; i++) posted += b->accepts[i].posted;
  for (int tries = 0; posted > 0 && tries < 100; tries++) {
    OVERLAPPED_ENTRY e[ENTRIES_PER_WAIT];
    ULONG n = 0;
    if (!GetQueuedCompletionStatusEx(b->port, e, ENTRIES_PER_WAIT, &n, 50, FALSE)) continue;
    for (ULONG i = 0; i < n; i++) {
      if (e[i].lpCompletionKey != KEY_LISTEN || !e[i].lpOverlapped) continue;
      bk_accept_t *a = container_of(e[i].lpOverlapped, bk_accept_t, ov);
      a->posted = 0;
      posted--;
    }
  }
}

void bk_release(iocpsrv_t *srv) {
  bk_server_t *b = &srv->bk;
  if (srv->listen_sock != INVALID_SOCKET) closesocket(srv->listen_sock);
  srv->listen_sock = INVALID_SOCKET;
  if (b->port && b->accepts) drain_accepts(srv);
  for (int i = 0; b->accepts && i < b->naccepts; i++)
    if (b->accepts[i].sock != INVALID_SOCKET) closesocket(b->accepts[i].sock);
  free(b->accepts);
  b->accepts = NULL;
  b->naccepts = 0;
  if (b->port) CloseHandle(b->port);
  b->port = NULL;
}

void bk_quit_workers(iocpsrv_t *srv) {
  /* One packet per worker: closing the port does not wake waiters under Wine. */
  for (int i = 0; i < srv->nslots; i++)
    PostQueuedCompletionStatus(srv->bk.port, 0, KEY_QUIT, NULL);
}

void bk_wake_tasks(iocpsrv_t *srv) { PostQueuedCompletionStatus(srv->bk.port, 0, KEY_TASK, NULL); }

/* An operation cancelled because the thread that issued it exited (see
 * CANCELLED_BY_THREAD_EXIT below). */
#define STATUS_CANCELLED_ 0xC0000120L

/* A posted accept completed (status: the OVERLAPPED's NTSTATUS). */
static void on_accept(worker_t *w, bk_accept_t *a, ULONG_PTR status) {
  iocpsrv_t *srv = w->srv;
  SOCKET s = a->sock;
  int step, err;
  a->sock = INVALID_SOCKET;
  a->posted = 0;
  if (atomic_load(&srv->state) != SRV_RUNNING) { /* cancelled by stop */
    closesocket(s);
    return;
  }
  if (status != 0) {
    closesocket(s);
    if (status == (ULONG_PTR)STATUS_CANCELLED_) { /* its thread exited: not a failure */
      if ((err = post_or_defer(srv, a, w->now, &step)) != 0) log_post_failure(srv, step, err);
      return;
    }
    engine_stat_add(&srv->stats.accept_errors, 1);
    /* Once: a client gone before its accept completed. Again in a row: wait. (Once
     * posted, the slot is another completion's: read nothing of it after that.) */
    int at_once = a->fails++ == 0;
    err = 0;
    if (at_once) err = post_or_defer(srv, a, w->now, &step);
    else defer_accept(srv, a, w->now);
    engine_log_throttled(srv, &srv->accept_log, 0,
                         "accept failed: AcceptEx completed with status 0x%08lx%s",
                         (unsigned long)status,
                         at_once && !err ? "" : "; accept posted again later");
    if (err) log_post_failure(srv, step, err);
    return;
  }
  a->fails = 0;
  SOCKET ls = srv->listen_sock;
  setsockopt(s, SOL_SOCKET, SO_UPDATE_ACCEPT_CONTEXT, (const char *)&ls, sizeof ls);
  struct sockaddr *local = NULL, *remote = NULL;
  int llen = 0, rlen = 0;
  srv->bk.get_sockaddrs(a->addrs, 0, ADDR_SLOT, ADDR_SLOT, &local, &llen, &remote, &rlen);
  struct sockaddr_storage peer;
  memset(&peer, 0, sizeof peer);
  if (remote && rlen > 0 && (size_t)rlen <= sizeof peer) memcpy(&peer, remote, (size_t)rlen);
  /* Keep the accept pool full before serving this one. No lock is held: log here. */
  if ((err = post_or_defer(srv, a, w->now, &step)) != 0) log_post_failure(srv, step, err);
  u_long nonblocking = 1;
  if (ioctlsocket(s, FIONBIO, &nonblocking) != 0 ||
      !CreateIoCompletionPort((HANDLE)s, srv->bk.port, KEY_CONN, 0)) {
    engine_stat_add(&srv->stats.accept_errors, 1);
    closesocket(s);
    return;
  }
  engine_accept(w, s, &peer);
}

/* ------------------------------------------------------------------- workers ---- */

static void on_recv_done(worker_t *w, conn_t *c, ULONG_PTR status);
static void on_send_done(worker_t *w, conn_t *c, DWORD bytes, ULONG_PTR status);

typedef struct batch_flags_s {
  int quit;
  int naccepts;
  const OVERLAPPED_ENTRY *accepts[ENTRIES_PER_WAIT];
} batch_flags_t;

static void dispatch(worker_t *w, const OVERLAPPED_ENTRY *e, batch_flags_t *f) {
  ULONG_PTR key = e->lpCompletionKey;
  if (key == KEY_QUIT) {
    /* One quit packet per worker: a second one in the same batch belongs to another. */
    if (f->quit) PostQueuedCompletionStatus(w->srv->bk.port, 0, KEY_QUIT, NULL);
    f->quit = 1;
  } else if (key == KEY_LISTEN) {
    f->accepts[f->naccepts++] = e; /* after the batch: connect callbacks may block */
  } else if (key == KEY_CONN && e->lpOverlapped) {
    bk_io_t *io = container_of(e->lpOverlapped, bk_io_t, ov);
    ULONG_PTR status = e->lpOverlapped->Internal;
    if (io->kind == BK_IO_RECV)
      on_recv_done(w, container_of(io, conn_t, bk.recv_io), status);
    else
      on_send_done(w, container_of(io, conn_t, bk.send_io), e->dwNumberOfBytesTransferred,
                   status);
  } /* KEY_TASK: engine_run_tasks follows every batch */
}

void bk_worker_loop(worker_t *w) {
  iocpsrv_t *srv = w->srv;
  OVERLAPPED_ENTRY entries[ENTRIES_PER_WAIT];
  int wait_ms = engine_after_batch(w);
  for (;;) {
    if (!engine_worker_may_sleep(w)) {
      engine_run_tasks(w);
      wait_ms = engine_after_batch(w);
      continue;
    }
    ULONG n = 0;
    if (!GetQueuedCompletionStatusEx(srv->bk.port, entries, ENTRIES_PER_WAIT, &n,
                                     (DWORD)wait_ms, FALSE))
      n = 0; /* timeout: time for the sweep */
    engine_worker_woke(w);
    w->now = srv_now_ms();
    batch_flags_t f;
    f.quit = f.naccepts = 0;
    /* Completions 2..n go to the run queue, the first is run here (engine_run_tasks). */
    /* When accepts completed in the batch, their connect callbacks run here and every
     * connection completion is queued, so none waits behind a connect callback. */
    w->defer_notify = 1;
    for (ULONG i = 1; i < n; i++) dispatch(w, &entries[i], &f);
    w->defer_notify = f.naccepts > 0 ||
                      (n > 0 && entries[0].lpCompletionKey == KEY_LISTEN);
    if (n > 0) dispatch(w, &entries[0], &f);
    w->defer_notify = 0;
    for (int i = 0; i < f.naccepts; i++) {
      bk_accept_t *a = container_of(f.accepts[i]->lpOverlapped, bk_accept_t, ov);
      on_accept(w, a, f.accepts[i]->lpOverlapped->Internal);
    }
    engine_run_tasks(w);
    wait_ms = engine_after_batch(w);
    if (f.quit || engine_worker_should_retire(w)) return;
  }
}

/* --------------------------------------------------------------- connections ---- */

/* One option of an accepted socket: a refusal is logged (at most a line a second) and
 * otherwise ignored, since every option here only tunes the connection. */
static void tune_failed(iocpsrv_t *srv, const char *what, int err) {
  engine_log_throttled(srv, &srv->sockopt_log, 1, "cannot set %s on a client socket: %d",
                       what, err);
}

static void tune(iocpsrv_t *srv, SOCKET s, int level, int name, int value, const char *what) {
  int rc = fault_os(FAULT_SETSOCKOPT)
               ? (WSASetLastError(WSAENOBUFS), SOCKET_ERROR)
               : setsockopt(s, level, name, (const char *)&value, sizeof value);
  if (rc != 0) tune_failed(srv, what, WSAGetLastError());
}

void bk_tune_socket(iocpsrv_t *srv, bk_socket_t s) {
  const srv_options_t *o = &srv->opt;
  if (o->nodelay) tune(srv, s, IPPROTO_TCP, TCP_NODELAY, 1, "TCP_NODELAY");
  if (o->keepalive_ms) {
    struct tcp_keepalive ka = {1, (ULONG)o->keepalive_ms, (ULONG)o->keepalive_ms};
    DWORD bytes = 0;
    int rc = fault_os(FAULT_SETSOCKOPT)
                 ? (WSASetLastError(WSAENOBUFS), SOCKET_ERROR)
                 : WSAIoctl(s, SIO_KEEPALIVE_VALS, &ka, sizeof ka, NULL, 0, &bytes, NULL, NULL);
    if (rc != 0) tune_failed(srv, "SIO_KEEPALIVE_VALS", WSAGetLastError());
  }
  if (o->rcvbuf) tune(srv, s, SOL_SOCKET, SO_RCVBUF, (int)o->rcvbuf, "SO_RCVBUF");
  if (o->sndbuf) tune(srv, s, SOL_SOCKET, SO_SNDBUF, (int)o->sndbuf, "SO_SNDBUF");
}

int bk_conn_register(iocpsrv_t *srv, conn_t *c) {
  (void)srv;
  memset(&c->bk.recv_io, 0, sizeof c->bk.recv_io);
  memset(&c->bk.send_io, 0, sizeof c->bk.send_io);
  c->bk.recv_io.kind = BK_IO_RECV;
  c->bk.send_io.kind = BK_IO_SEND;
  c->bk.io_pending = 0;
  c->bk.recv_posted = c->bk.send_posted = 0;
  c->bk.closed = 0;
  c->bk.skip_inline = SetFileCompletionNotificationModes(
                          (HANDLE)c->sock, FILE_SKIP_COMPLETION_PORT_ON_SUCCESS) != 0;
  return 0; /* the first receive is posted when the token is released */
}

/* Post the zero-byte receive. Lock held. */
void bk_conn_arm_locked(iocpsrv_t *srv, conn_t *c) {
  if (c->busy || c->bk.recv_posted || c->bk.closed || !engine_reading_wanted(c)) return;
  if (c->state != CONN_OPEN && c->state != CONN_CLOSING) return;
  WSABUF none = {0, NULL};
  DWORD bytes = 0, flags = 0;
  memset(&c->bk.recv_io.ov, 0, sizeof c->bk.recv_io.ov);
  c->bk.recv_posted = 1;
  c->bk.io_pending++;
  int rc = fault_os(FAULT_RECV_POST)
               ? (WSASetLastError(WSAENOBUFS), SOCKET_ERROR)
               : WSARecv(c->sock, &none, 1, &bytes, &flags, &c->bk.recv_io.ov, NULL);
  if (rc == 0 && !c->bk.skip_inline) return; /* a completion packet is on its way */
  if (rc != 0 && WSAGetLastError() == WSA_IO_PENDING) return;
  /* Finished inline (data is there) or failed (the connection is dead): no packet
   * comes, so the news goes to the token holder as a task. */
  c->bk.recv_posted = 0;
  c->bk.io_pending--;
  engine_schedule_locked(srv, c, rc == 0 ? NOTE_READ : NOTE_ERROR);
}

/* The last completion on a closed connection: give the slot back. Lock held; returns
 * with it released. */
static void release_if_done_locked(iocpsrv_t *srv, conn_t *c) {
  int done = c->bk.closed && c->bk.io_pending == 0;
  if (done) sendbuf_free(&c->bk.inflight);
  srv_mutex_unlock(&c->slot.lock);
  if (done) engine_conn_released(srv, c);
}

/* An operation cancelled although we did not close the socket: the thread that issued
 * it exited (a worker the dynamic pool retired). Windows keeps I/O of sockets bound to
 * a completion port alive across thread exit; Wine cancels it. Either way the
 * connection is fine: post the operation again. */
#define CANCELLED_BY_THREAD_EXIT(status) ((status) == (ULONG_PTR)0xC0000120L /* STATUS_CANCELLED */)

/* The zero-byte receive completed: data, FIN, or (failed) a reset. */
static void on_recv_done(worker_t *w, conn_t *c, ULONG_PTR status) {
  int ok = status == 0 || CANCELLED_BY_THREAD_EXIT(status);
  srv_mutex_lock(&c->slot.lock);
  c->bk.recv_posted = 0;
  c->bk.io_pending--;
  if (c->bk.closed) {
    release_if_done_locked(w->srv, c);
    return;
  }
  engine_conn_notify_locked(w, c, ok ? NOTE_READ : NOTE_ERROR);
}

/* Hand the queued bytes to one WSASend, unless one is outstanding. Lock held. A
 * queue longer than a WSABUF can describe (ULONG) goes out in several sends. */
void bk_conn_flush_locked(iocpsrv_t *srv, conn_t *c) {
  while (!c->bk.send_posted && !c->bk.closed) {
    if (sendbuf_pending(&c->bk.inflight) == 0) {
      if (sendbuf_pending(&c->out) == 0) {
        engine_sent_locked(srv, c, 0); /* lets a graceful close half-close now */
        return;
      }
      sendbuf_t t = c->bk.inflight; /* swap: new sends go to an empty buffer */
      c->bk.inflight = c->out;
      c->out = t;
    }
    WSABUF buf = {(ULONG)sendbuf_write_len(&c->bk.inflight),
                  (char *)sendbuf_data(&c->bk.inflight)};
    DWORD bytes = 0;
    memset(&c->bk.send_io.ov, 0, sizeof c->bk.send_io.ov);
    c->bk.send_posted = 1;
    c->bk.io_pending++;
    int rc = fault_os(FAULT_SEND_POST)
                 ? (WSASetLastError(WSAENOBUFS), SOCKET_ERROR)
                 : WSASend(c->sock, &buf, 1, &bytes, 0, &c->bk.send_io.ov, NULL);
    if (rc == 0 && !c->bk.skip_inline) return;
    if (rc != 0 && WSAGetLastError() == WSA_IO_PENDING) return;
    c->bk.send_posted = 0;
    c->bk.io_pending--;
    if (rc != 0) {
      sendbuf_free(&c->bk.inflight);
      engine_write_failed_locked(srv, c);
      return;
    }
    sendbuf_consume(&c->bk.inflight, bytes); /* done inline: go round for more */
    engine_sent_locked(srv, c, bytes);
  }
}

static void on_send_done(worker_t *w, conn_t *c, DWORD bytes, ULONG_PTR status) {
  iocpsrv_t *srv = w->srv;
  int ok = status == 0 || CANCELLED_BY_THREAD_EXIT(status); /* re-posts the rest */
  srv_mutex_lock(&c->slot.lock);
  c->bk.send_posted = 0;
  c->bk.io_pending--;
  if (c->bk.closed) {
    release_if_done_locked(srv, c);
    return;
  }
  if (!ok) {
    sendbuf_free(&c->bk.inflight);
    engine_write_failed_locked(srv, c);
  } else {
    sendbuf_consume(&c->bk.inflight, bytes);
    engine_sent_locked(srv, c, bytes);
    bk_conn_flush_locked(srv, c);
  }
  srv_mutex_unlock(&c->slot.lock);
}

void bk_conn_on_writable_locked(iocpsrv_t *srv, conn_t *c) { bk_conn_flush_locked(srv, c); }

void bk_conn_trim_locked(conn_t *c) {
  if (!c->bk.send_posted && c->bk.inflight.buf) sendbuf_free(&c->bk.inflight);
}

size_t bk_conn_pending_locked(const conn_t *c) {
  return sendbuf_pending(&c->out) + sendbuf_pending(&c->bk.inflight);
}

long bk_conn_recv(conn_t *c, void *buf, size_t len) {
  int n = recv(c->sock, (char *)buf, len > INT_MAX ? INT_MAX : (int)len, 0);
  if (n >= 0) return n;
  return WSAGetLastError() == WSAEWOULDBLOCK ? BK_AGAIN : BK_ERROR;
}

void bk_conn_shutdown_write(conn_t *c) { shutdown(c->sock, SD_SEND); }

int bk_conn_close(iocpsrv_t *srv, conn_t *c, int abort) {
  (void)srv;
  srv_mutex_lock(&c->slot.lock);
  if (abort) {
    /* RST instead of FIN. Wine sends a FIN when the socket is closed with a receive
     * still pending, so cancel that first (the completion still arrives). */
    CancelIoEx((HANDLE)c->sock, NULL);
    struct linger lg = {1, 0};
    setsockopt(c->sock, SOL_SOCKET, SO_LINGER, (const char *)&lg, sizeof lg);
  }
  closesocket(c->sock); /* outstanding operations now complete with an error */
  c->sock = INVALID_SOCKET;
  c->bk.closed = 1;
  int outstanding = c->bk.io_pending > 0;
  if (!outstanding) sendbuf_free(&c->bk.inflight);
  srv_mutex_unlock(&c->slot.lock);
  return outstanding;
}

void bk_close_socket(bk_socket_t s) { closesocket(s); }

int bk_local_addr(conn_t *c, struct sockaddr_storage *sa) {
  int len = sizeof *sa;
  return getsockname(c->sock, (struct sockaddr *)sa, &len) == 0 ? 0 : -1;
}
