/* What the epoll backend keeps inside the core's structs (see core/backend.h). */
#ifndef IOCPSRV_LINUX_BACKEND_TYPES_H
#define IOCPSRV_LINUX_BACKEND_TYPES_H

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/socket.h>

typedef int bk_socket_t;
#define BK_INVALID_SOCKET (-1)

typedef struct iocpsrv_s iocpsrv_t;
typedef struct srv_options_s srv_options_t;

/* Nothing per connection: each socket is registered once, edge-triggered, with the
 * connection id as its epoll data. (C wants a member.) */
typedef struct bk_conn_s {
  uint8_t unused;
} bk_conn_t;

/* The poll gate (linux/epoll.c): one worker waits in epoll_wait, one watches. */
typedef struct bk_gate_s {
  pthread_mutex_t lock;
  pthread_cond_t watch, sleep; /* the watcher's tick; spare workers */
  int poller;                  /* a worker is in epoll_wait */
  int watcher, watcher_asleep; /* a worker watches for a stuck one; it sleeps when idle */
  int quit;
  uint64_t batches;            /* epoll_wait returns: progress the watcher sees */
} bk_gate_t;

typedef struct bk_server_s {
  iocpsrv_t *srv;            /* for the core's log and counters */
  const srv_options_t *opt;
  int ready;                 /* bk_open ran: there is something to release */
  int listen_fd, epfd, task_fd, quit_fd;
  atomic_int accepting;      /* cleared by bk_quit: the listener is not re-armed */
  bk_gate_t gate;
  /* Descriptor exhaustion (linux/epoll.c, accept_batch and bk_periodic): */
  atomic_int dropping;            /* the spare is given up right now (drop_waiting) */
  atomic_int reserve_fd;          /* the spare descriptor given up to drop waiting
                                     clients when accept4 says EMFILE; -1: none */
  atomic_int accept_paused;       /* the listener is disarmed until resume_ms */
  atomic_int_fast64_t resume_ms;
  atomic_int backoff_ms;          /* the last pause; 0 after an accept succeeded */
} bk_server_t;

#endif
