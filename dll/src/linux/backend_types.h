/* What the epoll backend keeps inside the core's structs (see core/engine.h). */
#ifndef IOCPSRV_LINUX_BACKEND_TYPES_H
#define IOCPSRV_LINUX_BACKEND_TYPES_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <sys/socket.h>

typedef int bk_socket_t;
#define BK_INVALID_SOCKET (-1)

typedef struct bk_conn_s {
  uint8_t want_write; /* a send would block: the next EPOLLOUT edge flushes */
} bk_conn_t;

typedef struct bk_server_s {
  int epfd, task_fd, quit_fd;
} bk_server_t;

/* What the dynamic pool does with a retired worker: a worker thread owns no I/O: retired workers exit. */
#define BK_PARK_RETIRED 0

typedef struct bk_worker_s {
  int unused;
} bk_worker_t;

#endif
