/* What the epoll backend keeps inside the core's structs (see core/engine.h). */
#ifndef IOCPSRV_LINUX_BACKEND_TYPES_H
#define IOCPSRV_LINUX_BACKEND_TYPES_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/socket.h>

typedef int bk_socket_t;
#define BK_INVALID_SOCKET (-1)

typedef struct bk_conn_s {
  uint8_t want_write; /* a send would block: the next EPOLLOUT edge flushes */
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
  int ready; /* bk_start ran: there is something to release */
  int epfd, task_fd, quit_fd;
  bk_gate_t gate;
  /* Descriptor exhaustion (linux/epoll.c, accept_batch and bk_periodic): */
  atomic_int reserve_fd;          /* the spare descriptor given up to drop waiting
                                     clients when accept4 says EMFILE; -1: none */
  atomic_int accept_paused;       /* the listener is disarmed until resume_ms */
  atomic_int_fast64_t resume_ms;
  atomic_int backoff_ms;          /* the last pause; 0 after an accept succeeded */
} bk_server_t;

/* What the dynamic pool does with a retired worker: a worker thread owns no I/O: retired workers exit. */
#define BK_PARK_RETIRED 0

/* Work a worker queues for others (the rest of a batch) wakes nobody: the gate's
 * watcher brings in a spare worker when the one holding it is stuck. */
#define BK_WAKE_FOR_WORKER_TASKS 0

typedef struct bk_worker_s {
  int unused;
} bk_worker_t;

#endif
