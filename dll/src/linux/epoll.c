/* The Linux backend: one shared epoll set served by every worker.
 *
 * Each socket is registered once, edge-triggered for reading and writing, in one epoll
 * set that all workers wait on, the readiness twin of a completion port: any idle
 * worker serves any ready connection, so a callback that blocks delays only its own
 * thread. An edge that arrives while another worker holds the connection's token only
 * leaves it a note (core/engine.h), so no per-event epoll_ctl is needed to keep
 * callbacks serialized: the engine reads until a short read, EAGAIN or the end of
 * stream, and makes up reads it skipped while receiving was paused.
 *
 * The poll gate. All workers waiting in one epoll set would each be woken by the
 * kernel for the next edge while another is busy, a context switch per event on a
 * machine whose cores the clients share. So one worker at a time waits in epoll_wait
 * (the poller) and takes whole batches; one spare watches (the watcher) and the rest
 * sleep. When the poller leaves epoll_wait and no batch starts for a tick, it is stuck
 * in a callback or a long batch: the watcher runs what it queued and takes over
 * polling, and a sleeper becomes the next watcher. So a callback that blocks delays
 * the others by about a tick, as IOCP's concurrency limit would, without a wake-up
 * per event. The watcher ticks only while the server is busy.
 *
 * Sends are plain non-blocking send() calls; one that would block says BK_AGAIN, and
 * the next EPOLLOUT edge (BK_WRITE) lets the core go on. */
#define _GNU_SOURCE /* accept4 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "core/backend.h"
#include "core/fault.h"
#include "core/platform.h"

#ifndef IP_BIND_ADDRESS_NO_PORT
#  define IP_BIND_ADDRESS_NO_PORT 24 /* linux/in.h; glibc's netinet/in.h lacks it */
#endif

/* epoll data values that are not connection ids (ids are >= 1 << 24). */
#define TAG_LISTEN 1u
#define TAG_TASK 2u
#define TAG_QUIT 3u

const bk_caps_t bk_caps = {
    .write_holds_bytes = 0,   /* send() copies */
    .io_dies_with_thread = 0, /* a worker thread owns no I/O: retired workers exit */
    .wait_takes_over = 1,     /* the poll gate's watcher */
};

static int os_error(int e) {
  switch (e) {
  case EADDRINUSE: return IOCPSRV_EADDRINUSE;
  case EACCES:
  case EPERM: return IOCPSRV_EACCES;
  case EADDRNOTAVAIL:
  case EAFNOSUPPORT:
  case EINVAL: return IOCPSRV_EADDRNOTAVAIL;
  case ENOMEM:
  case ENOBUFS: return IOCPSRV_ENOMEM;
  default: return IOCPSRV_ESYSTEM;
  }
}

/* ---------------------------------------------------------------- poll gate ---- */

#define GATE_TICK_MS 1       /* how long a poller may be away before help comes */
#define GATE_IDLE_TICKS 100  /* ticks with a quiet poller before the watcher sleeps */

enum { GATE_POLL, GATE_AROUND, GATE_QUIT };

static void gate_init(bk_gate_t *g) {
  srv_mutex_init(&g->lock);
  srv_cond_init(&g->watch);
  srv_cond_init(&g->sleep);
  g->poller = g->watcher = g->watcher_asleep = g->quit = 0;
  g->batches = 0;
}

static void gate_destroy(bk_gate_t *g) {
  srv_cond_destroy(&g->sleep);
  srv_cond_destroy(&g->watch);
  srv_mutex_destroy(&g->lock);
}

/* Watch the poller until it is away for a whole tick without a new batch: then go
 * around (run what it queued, then poll). Lock held. */
static int gate_watch(bk_gate_t *g, int wait_ms) {
  g->watcher = 1;
  uint64_t seen = g->batches;
  int quiet = 0, slept_ms = 0;
  for (;;) {
    /* gate_leave may clear watcher_asleep while we wait: count what we asked for. */
    int period = g->watcher_asleep ? wait_ms - slept_ms : GATE_TICK_MS;
    srv_cond_wait_ms(&g->watch, &g->lock, period);
    slept_ms += period;
    if (g->quit) break;
    int progress = g->batches != seen;
    seen = g->batches;
    if (!g->poller && !progress) break; /* stuck: take over */
    quiet = g->poller && !progress ? quiet + 1 : 0;
    g->watcher_asleep = quiet >= GATE_IDLE_TICKS;
    if (slept_ms >= wait_ms) break; /* the sweep and the pool's retiring need a turn */
  }
  g->watcher = g->watcher_asleep = 0;
  srv_cond_signal(&g->sleep); /* a sleeper becomes the next watcher */
  return g->quit ? GATE_QUIT : GATE_AROUND;
}

/* Before waiting for events: poll, watch or sleep. wait_ms bounds every wait so the
 * sweep and the dynamic pool's retiring still run. */
static int gate_enter(bk_server_t *b, int wait_ms) {
  bk_gate_t *g = &b->gate;
  int r;
  srv_mutex_lock(&g->lock);
  if (g->quit) {
    r = GATE_QUIT;
  } else if (!g->poller) {
    g->poller = 1;
    r = GATE_POLL;
  } else if (!g->watcher) {
    r = gate_watch(g, wait_ms);
  } else {
    srv_cond_wait_ms(&g->sleep, &g->lock, wait_ms);
    r = g->quit ? GATE_QUIT : GATE_AROUND;
  }
  srv_mutex_unlock(&g->lock);
  return r;
}

/* Back from epoll_wait: the next batch is anyone's; a sleeping watcher wakes, since
 * the poller is about to be busy. */
static void gate_leave(bk_server_t *b) {
  bk_gate_t *g = &b->gate;
  srv_mutex_lock(&g->lock);
  g->poller = 0;
  g->batches++;
  if (g->watcher_asleep) {
    g->watcher_asleep = 0;
    srv_cond_signal(&g->watch);
  }
  srv_mutex_unlock(&g->lock);
}

static void gate_quit(bk_server_t *b) {
  bk_gate_t *g = &b->gate;
  srv_mutex_lock(&g->lock);
  g->quit = 1;
  srv_cond_broadcast(&g->watch);
  srv_cond_broadcast(&g->sleep);
  srv_mutex_unlock(&g->lock);
}

/* ------------------------------------------------------------------ listener ---- */

static int add_watch(bk_server_t *b, int fd, uint32_t events, uint64_t tag) {
  struct epoll_event e = {.events = events, .data.u64 = tag};
  return epoll_ctl(b->epfd, EPOLL_CTL_ADD, fd, &e);
}

static int open_reserve(void);

int bk_open(bk_server_t *b, iocpsrv_t *srv, const srv_options_t *opt) {
  b->srv = srv;
  b->opt = opt;
  b->listen_fd = b->epfd = b->task_fd = b->quit_fd = -1;
  atomic_store(&b->reserve_fd, -1);
  atomic_store(&b->dropping, 0);
  atomic_store(&b->accept_paused, 0);
  atomic_store(&b->backoff_ms, 0);
  atomic_store(&b->accepting, 1);
  gate_init(&b->gate);
  b->ready = 1;
  b->epfd = epoll_create1(EPOLL_CLOEXEC);
  b->task_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  b->quit_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (b->epfd < 0 || b->task_fd < 0 || b->quit_fd < 0) return os_error(errno);
  /* The task eventfd is edge-triggered so one write wakes one worker; quit is
   * level-triggered so it wakes them all. */
  if (add_watch(b, b->task_fd, EPOLLIN | EPOLLET, TAG_TASK) ||
      add_watch(b, b->quit_fd, EPOLLIN, TAG_QUIT))
    return os_error(errno);
  return 0;
}

int bk_listen(bk_server_t *b, const struct addrinfo *ai, struct sockaddr_storage *bound) {
  int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return os_error(errno);
  int one = 1, v6only = (int)b->opt->ipv6_only;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (b->opt->reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) {
    int err = os_error(errno);
    close(fd);
    return err;
  }
  if (ai->ai_family == AF_INET6)
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof v6only);
  int backlog = b->opt->listen_backlog ? (int)b->opt->listen_backlog : SOMAXCONN;
  if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, backlog) != 0 ||
      add_watch(b, fd, EPOLLIN | EPOLLONESHOT, TAG_LISTEN) != 0) {
    int err = os_error(errno);
    close(fd);
    return err;
  }
  socklen_t len = sizeof *bound;
  getsockname(fd, (struct sockaddr *)bound, &len);
  b->listen_fd = fd;
  /* Last, and not required: without it, exhaustion pauses accepting (accept_batch);
   * bk_periodic tries again. No log here: life_lock is held. */
  atomic_store(&b->reserve_fd, open_reserve());
  return 0;
}

static void close_fd(int *fd) {
  if (*fd >= 0) close(*fd);
  *fd = -1;
}

void bk_release(bk_server_t *b) {
  if (!b->ready) return; /* bk_open never ran: nothing is open */
  b->ready = 0;
  close_fd(&b->listen_fd);
  gate_destroy(&b->gate);
  close_fd(&b->epfd);
  close_fd(&b->task_fd);
  close_fd(&b->quit_fd);
  int reserve = atomic_exchange(&b->reserve_fd, -1);
  if (reserve >= 0) close(reserve);
}

static void signal_fd(int fd) {
  uint64_t one = 1;
  ssize_t r = write(fd, &one, sizeof one);
  (void)r; /* EAGAIN only if the counter is saturated: it is readable either way */
}

void bk_quit(bk_server_t *b, int waiters) {
  if (waiters == 0) {
    atomic_store(&b->accepting, 0);
    /* shutdown, not close: a worker may be inside accept4 on this fd right now. */
    epoll_ctl(b->epfd, EPOLL_CTL_DEL, b->listen_fd, NULL);
    shutdown(b->listen_fd, SHUT_RDWR);
    return;
  }
  signal_fd(b->quit_fd); /* the poller: level-triggered, so every later one too */
  gate_quit(b);          /* the watcher and the sleepers */
}

void bk_wake(bk_server_t *b) { signal_fd(b->task_fd); }

/* ------------------------------------------------------ descriptor exhaustion ---- */

/* accept4 failing for want of descriptors (EMFILE, ENFILE) leaves the client in the
 * backlog and the level-triggered listener readable: trying again at once would spin.
 *
 * libuv's way first: a spare descriptor is kept open; on EMFILE it is given up, the
 * waiting clients are accepted and closed at once (they see the close promptly; each
 * counts in connections_refused, like a client past max connections), and the spare
 * is taken back. When that does not help (no spare, accepting still fails, or the
 * failure is not one the spare can cure) nginx's way: stop accepting. The listener is
 * disarmed and bk_periodic re-arms it after a backoff (engine_accept_backoff: 50 ms,
 * doubling up to 1 s) that starts over once an accept succeeds; meanwhile the clients
 * wait in the backlog and are served once descriptors free up. Every failed accept4
 * counts in accept_errors and is logged under BK_LOG_ACCEPT (at most a line a
 * second). Existing connections are not touched. */
#define ACCEPT_DROP_MAX 4096 /* clients dropped per use of the spare (then come back) */

static int open_reserve(void) { return open("/dev/null", O_RDONLY | O_CLOEXEC); }

/* Put a freshly opened spare in place unless another worker did. */
static void keep_reserve(bk_server_t *b, int fd) {
  int none = -1;
  if (fd >= 0 && !atomic_compare_exchange_strong(&b->reserve_fd, &none, fd)) close(fd);
}

/* accept4 through the fault seam: an injected failure is EMFILE, the client stays in
 * the backlog. */
static int accept_one(bk_server_t *b, struct sockaddr_storage *sa) {
  if (fault_os(FAULT_ACCEPT)) {
    errno = EMFILE;
    return -1;
  }
  socklen_t len = sizeof *sa;
  return accept4(b->listen_fd, (struct sockaddr *)sa, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
}

/* Errors that belong to one client (accept(2): pending network errors of the new
 * socket, or a firewall's verdict): the next client may well be fine. */
static int client_error(int e) {
  switch (e) {
  case EPROTO:
  case EPERM:
  case ENETDOWN:
  case ENETUNREACH:
  case EHOSTDOWN:
  case EHOSTUNREACH:
  case ENONET:
  case ENOPROTOOPT:
  case EOPNOTSUPP:
  case ETIMEDOUT: return 1;
  default: return 0;
  }
}

/* Descriptors ran out: give up the spare, accept and close what waits, take the spare
 * back. 1 when the backlog was emptied (or ACCEPT_DROP_MAX clients went), else 0: no
 * spare, or accepting still failed (*err gets that error). *dropped counts the closed
 * clients. */
static int drop_waiting(bk_server_t *b, unsigned *dropped, int *err) {
  int spare = atomic_exchange(&b->reserve_fd, -1);
  if (spare < 0) return 0;
  /* Before the close: a worker accepting at the same moment must not keep the spare's
   * descriptor for a client, or the spare could not be taken back (accept_batch). */
  atomic_store(&b->dropping, 1);
  close(spare);
  int emptied = 1;
  for (unsigned i = 0; i < ACCEPT_DROP_MAX; i++) {
    struct sockaddr_storage sa;
    int fd = accept_one(b, &sa);
    if (fd >= 0) {
      engine_count(b->srv, BK_COUNT_REFUSED, 1); /* before the client sees it */
      close(fd);
      (*dropped)++;
      continue;
    }
    if (errno == EINTR || errno == ECONNABORTED || client_error(errno)) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINVAL) {
      emptied = 0;
      *err = errno;
      engine_count(b->srv, BK_COUNT_ACCEPT_ERRORS, 1);
    }
    break;
  }
  keep_reserve(b, open_reserve());
  atomic_store(&b->dropping, 0);
  return emptied;
}

/* Stop accepting for a while; bk_periodic re-arms the listener. Returns the pause. */
static int pause_accepting(bk_server_t *b, int64_t now) {
  int backoff = engine_accept_backoff(atomic_load(&b->backoff_ms));
  atomic_store(&b->backoff_ms, backoff);
  atomic_store(&b->resume_ms, now + backoff);
  struct epoll_event e = {.events = EPOLLONESHOT, .data.u64 = TAG_LISTEN}; /* no EPOLLIN */
  epoll_ctl(b->epfd, EPOLL_CTL_MOD, b->listen_fd, &e);
  /* Set after the disarm: a bk_periodic that clears it re-arms after this disarm, and
   * one that came before it leaves it set for the next pass. */
  atomic_store(&b->accept_paused, 1);
  return backoff;
}

void bk_periodic(bk_server_t *b, int64_t now) {
  if (atomic_load(&b->reserve_fd) < 0) keep_reserve(b, open_reserve());
  if (!atomic_load(&b->accept_paused) || now < atomic_load(&b->resume_ms)) return;
  if (!atomic_exchange(&b->accept_paused, 0)) return;
  /* After a stop, the listener is out of the set and this fails harmlessly. */
  if (atomic_load(&b->accepting)) {
    struct epoll_event e = {.events = EPOLLIN | EPOLLONESHOT, .data.u64 = TAG_LISTEN};
    epoll_ctl(b->epfd, EPOLL_CTL_MOD, b->listen_fd, &e);
  }
}

/* The listener is readable: accept up to IOCPSRV_OPT_ACCEPTS_POSTED clients into ev
 * (room for `room`) as BK_ACCEPT events. Returns how many. */
static int accept_batch(bk_server_t *b, bk_event_t *ev, int room) {
  /* Paused: an event from before the pause; bk_periodic re-arms. */
  if (atomic_load(&b->accept_paused)) return 0;
  /* Re-arm first: another worker may accept while connect callbacks run here. */
  if (atomic_load(&b->accepting)) {
    struct epoll_event e = {.events = EPOLLIN | EPOLLONESHOT, .data.u64 = TAG_LISTEN};
    epoll_ctl(b->epfd, EPOLL_CTL_MOD, b->listen_fd, &e);
  }
  int err = 0, paused_ms = 0, k = 0;
  unsigned dropped = 0;
  for (int i = 0; i < b->opt->accepts_posted && k < room; i++) {
    int fd = accept_one(b, &ev[k].peer);
    if (fd >= 0 && atomic_load(&b->dropping)) {
      /* The descriptor another worker freed to drop waiting clients: this client is
       * one of them (served, it would take the spare's place for good). */
      engine_count(b->srv, BK_COUNT_REFUSED, 1);
      close(fd);
      continue;
    }
    if (fd >= 0) {
      if (atomic_load_explicit(&b->backoff_ms, memory_order_relaxed))
        atomic_store(&b->backoff_ms, 0);
      ev[k].kind = BK_ACCEPT;
      ev[k++].sock = fd;
      continue;
    }
    if (errno == EINTR || errno == ECONNABORTED) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINVAL) break;
    err = errno;
    engine_count(b->srv, BK_COUNT_ACCEPT_ERRORS, 1);
    if (client_error(err)) continue;
    if ((err == EMFILE || err == ENFILE) && drop_waiting(b, &dropped, &err)) break;
    /* No spare, the spare did not help, or another shortage (ENOBUFS, ENOMEM) or an
     * error we do not know: stop for a while rather than retry at once. */
    paused_ms = pause_accepting(b, srv_now_ms());
    break;
  }
  if (!err) return k;
  /* No lock is held here: the log callback may call into the API. */
  if (paused_ms)
    engine_log_topic(b->srv, BK_LOG_ACCEPT, 0, "accept failed: %s; not accepting for %d ms",
                     strerror(err), paused_ms);
  else if (dropped)
    engine_log_topic(b->srv, BK_LOG_ACCEPT, 0,
                     "accept failed: %s; closed %u waiting client%s at once", strerror(err),
                     dropped, dropped == 1 ? "" : "s");
  else
    engine_log_topic(b->srv, BK_LOG_ACCEPT, 0, "accept failed: %s", strerror(err));
  return k;
}

/* ---------------------------------------------------------------------- wait ---- */

static uint8_t conn_notes(uint32_t ev) {
  uint8_t notes = 0;
  if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) notes |= BK_READ;
  if (ev & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) notes |= BK_HUP; /* read on to the end */
  /* Most edges report EPOLLOUT; the core acts on it only after a write said BK_AGAIN. */
  if (ev & (EPOLLOUT | EPOLLHUP | EPOLLERR)) notes |= BK_WRITE;
  return notes;
}

static void drain_fd(int fd) {
  uint64_t v;
  ssize_t r = read(fd, &v, sizeof v);
  (void)r; /* EAGAIN: another worker read it */
}

int bk_wait(bk_server_t *b, bk_event_t *ev, int max, int timeout_ms) {
  int gate = gate_enter(b, timeout_ms);
  if (gate == GATE_QUIT) {
    ev[0].kind = BK_QUIT;
    return 1;
  }
  if (gate != GATE_POLL) return 0; /* around: run what the stuck poller queued */
  struct epoll_event evs[BK_WAIT_EVENTS];
  int n = epoll_wait(b->epfd, evs, BK_WAIT_EVENTS, timeout_ms);
  gate_leave(b);
  if (n < 0) {
    if (errno == EINTR) return 0;
    engine_log_topic(b->srv, BK_LOG_ALWAYS, 0, "epoll_wait failed: %s", strerror(errno));
    return -1;
  }
  int k = 0, listener = 0;
  for (int i = 0; i < n; i++) {
    uint64_t tag = evs[i].data.u64;
    bk_event_t *e = &ev[k];
    if (tag == TAG_LISTEN) {
      listener = 1; /* accepted after the rest: its clients go last */
      continue;
    }
    if (tag == TAG_QUIT) {
      e->kind = BK_QUIT;
    } else if (tag == TAG_TASK) {
      drain_fd(b->task_fd);
      e->kind = BK_WAKE;
    } else {
      e->kind = BK_CONN;
      e->id = tag;
      e->notes = conn_notes(evs[i].events);
      e->bytes = 0;
    }
    k++;
  }
  if (listener) k += accept_batch(b, ev + k, max - k);
  return k;
}

/* --------------------------------------------------------------- connections ---- */

/* One option of an accepted socket: a refusal is logged (at most a line a second) and
 * otherwise ignored, since every option here only tunes the connection. */
static void tune(bk_server_t *b, int fd, int level, int name, int value, const char *what) {
  int rc;
  if (fault_os(FAULT_SETSOCKOPT)) {
    errno = ENOBUFS;
    rc = -1;
  } else {
    rc = setsockopt(fd, level, name, &value, sizeof value);
  }
  if (rc != 0)
    engine_log_topic(b->srv, BK_LOG_SOCKOPT, 1, "cannot set %s on a client socket: %s", what,
                     strerror(errno));
}

void bk_tune(bk_server_t *b, bk_socket_t fd) {
  const srv_options_t *o = b->opt;
  if (o->nodelay) tune(b, fd, IPPROTO_TCP, TCP_NODELAY, 1, "TCP_NODELAY");
  if (o->keepalive_ms) {
    int secs = (int)((o->keepalive_ms + 999) / 1000);
    tune(b, fd, SOL_SOCKET, SO_KEEPALIVE, 1, "SO_KEEPALIVE");
    tune(b, fd, IPPROTO_TCP, TCP_KEEPIDLE, secs, "TCP_KEEPIDLE");
    tune(b, fd, IPPROTO_TCP, TCP_KEEPINTVL, secs, "TCP_KEEPINTVL");
  }
  if (o->rcvbuf) tune(b, fd, SOL_SOCKET, SO_RCVBUF, (int)o->rcvbuf, "SO_RCVBUF");
  if (o->sndbuf) tune(b, fd, SOL_SOCKET, SO_SNDBUF, (int)o->sndbuf, "SO_SNDBUF");
}

int bk_register(bk_server_t *b, bk_conn_t *c, bk_socket_t fd, uint64_t id) {
  (void)c;
  struct epoll_event e = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.u64 = id};
  if (fault_os(FAULT_EPOLL_CTL)) return os_error(ENOMEM);
  /* No log here: the connection's lock is held (the core logs the code). */
  return epoll_ctl(b->epfd, EPOLL_CTL_ADD, fd, &e) == 0 ? 0 : os_error(errno);
}

/* Edge-triggered: the registration stays as it is for the connection's life. */
int bk_arm(bk_conn_t *c, bk_socket_t fd) {
  (void)c, (void)fd;
  return 0;
}

long bk_read(bk_socket_t fd, void *buf, size_t len) {
  for (;;) {
    ssize_t n = recv(fd, buf, len, 0);
    if (n >= 0) return (long)n;
    if (errno == EINTR) continue;
    return errno == EAGAIN || errno == EWOULDBLOCK ? BK_AGAIN : BK_ERROR;
  }
}

long bk_write(bk_conn_t *c, bk_socket_t fd, const void *data, size_t len) {
  (void)c;
  for (;;) {
    ssize_t n;
    if (fault_os(FAULT_SEND_POST)) { /* as the kernel fails a send it has no buffer for */
      errno = ENOBUFS;
      n = -1;
    } else {
      n = send(fd, data, len, MSG_NOSIGNAL);
    }
    if (n > 0) return (long)n;
    if (n < 0 && errno == EINTR) continue;
    /* Would block: the EPOLLOUT edge brings BK_WRITE. */
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) ? BK_AGAIN : BK_ERROR;
  }
}

long bk_write_now(bk_socket_t fd, const void *head, size_t hlen, const void *body,
                  size_t blen) {
  struct iovec iov[2] = {{(void *)head, hlen}, {(void *)body, blen}};
  struct msghdr m;
  memset(&m, 0, sizeof m);
  m.msg_iov = iov;
  m.msg_iovlen = 2;
  for (;;) {
    ssize_t n;
    if (fault_os(FAULT_SEND_POST)) {
      errno = ENOBUFS;
      n = -1;
    } else {
      n = sendmsg(fd, &m, MSG_NOSIGNAL);
    }
    if (n >= 0) return (long)n;
    if (errno == EINTR) continue;
    return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : BK_ERROR;
  }
}

/* ---------------------------------------------------------- outbound connects ---- */

/* What a failed connect's errno means for the host (an IOCPSRV_REASON_CONNECT_*). */
static int connect_reason(int e) {
  switch (e) {
  case ECONNREFUSED: return IOCPSRV_REASON_CONNECT_REFUSED;
  case ENETUNREACH:
  case EHOSTUNREACH:
  case ENETDOWN:
  case EHOSTDOWN: return IOCPSRV_REASON_CONNECT_UNREACHABLE;
  case ETIMEDOUT: return IOCPSRV_REASON_CONNECT_TIMEOUT;
  default: return IOCPSRV_REASON_CONNECT_FAILED;
  }
}

int bk_connect(bk_server_t *b, bk_conn_t *c, uint64_t id, const struct sockaddr *to,
               int tolen, const struct sockaddr *from, int fromlen, bk_socket_t *out) {
  (void)c;
  *out = -1;
  int fd = fault_os(FAULT_CONNECT) ? (errno = EMFILE, -1)
                                   : socket(to->sa_family, SOCK_STREAM | SOCK_NONBLOCK |
                                                               SOCK_CLOEXEC, 0);
  if (fd < 0) return errno == EMFILE || errno == ENFILE ? IOCPSRV_ELIMIT : os_error(errno);
  /* The port is picked at connect, knowing the destination: a bound source address is
   * not limited to one ephemeral range for every destination together. (Linux 4.2;
   * older kernels refuse the option, and bind picks the port as before.) */
  int one = 1;
  if (from) setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
  if (from && bind(fd, from, (socklen_t)fromlen) != 0) {
    int err = os_error(errno);
    close(fd);
    return err;
  }
  int rc;
  do rc = connect(fd, to, (socklen_t)tolen);
  while (rc != 0 && errno == EINTR);
  if (rc != 0 && errno != EINPROGRESS) {
    int reason = connect_reason(errno);
    close(fd);
    return reason;
  }
  /* Watched once connecting, not before: a socket not yet connecting reports a hang-up
   * (it is closed), which would stay on the connection as the peer's. Adding it polls
   * it at once, so an attempt that already ended raises its edge all the same. */
  struct epoll_event e = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.u64 = id};
  if (epoll_ctl(b->epfd, EPOLL_CTL_ADD, fd, &e) != 0) {
    int err = os_error(errno);
    close(fd);
    return err;
  }
  *out = fd;
  return 0;
}

int bk_connect_result(bk_conn_t *c, bk_socket_t fd) {
  (void)c;
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
  if (err) return connect_reason(err);
  struct sockaddr_storage peer;
  len = sizeof peer;
  if (getpeername(fd, (struct sockaddr *)&peer, &len) == 0) return 0;
  return errno == ENOTCONN ? BK_AGAIN : connect_reason(errno);
}

void bk_shutdown(bk_socket_t fd) { shutdown(fd, SHUT_WR); }

int bk_close(bk_conn_t *c, bk_socket_t fd, int abort) {
  (void)c;
  if (abort) {
    struct linger lg = {1, 0}; /* RST instead of FIN */
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  }
  close(fd); /* also drops the epoll registration: the fd is never duplicated */
  return 0;
}

int bk_sockname(bk_socket_t fd, struct sockaddr_storage *sa) {
  socklen_t len = sizeof *sa;
  return getsockname(fd, (struct sockaddr *)sa, &len);
}
