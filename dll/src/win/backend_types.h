/* What the IOCP backend keeps inside the core's structs (see core/engine.h). */
#ifndef IOCPSRV_WIN_BACKEND_TYPES_H
#define IOCPSRV_WIN_BACKEND_TYPES_H

#ifndef WIN32_LEAN_AND_MEAN
#  define WIN32_LEAN_AND_MEAN
#endif
#include <winsock2.h>
#include <ws2tcpip.h>
#include <mswsock.h>
#include <windows.h>
#include <stdatomic.h>
#include <stdint.h>

#include "core/sendbuf.h"

typedef SOCKET bk_socket_t;
#define BK_INVALID_SOCKET INVALID_SOCKET

/* One overlapped operation; the completion leads back to it with container_of. */
typedef struct bk_io_s {
  OVERLAPPED ov;
  int kind; /* BK_IO_RECV, BK_IO_SEND */
} bk_io_t;

typedef struct bk_conn_s {
  bk_io_t recv_io, send_io;
  sendbuf_t inflight;   /* the bytes the outstanding WSASend is writing */
  int io_pending;       /* overlapped operations not yet completed */
  uint8_t recv_posted, send_posted;
  uint8_t skip_inline;  /* FILE_SKIP_COMPLETION_PORT_ON_SUCCESS is on for this socket */
  uint8_t closed;       /* socket closed; the slot is released after the last completion */
} bk_conn_t;

typedef struct bk_accept_s bk_accept_t;

typedef struct bk_server_s {
  HANDLE port;
  int family;
  bk_accept_t *accepts;
  int naccepts;
  LPFN_ACCEPTEX accept_ex;
  LPFN_GETACCEPTEXSOCKADDRS get_sockaddrs;
  /* Accepts that could not be posted (win/iocp.c, bk_periodic posts them again): */
  atomic_int retries;             /* slots waiting */
  atomic_int_fast64_t retry_ms;   /* when bk_periodic tries next */
  atomic_int backoff_ms;          /* the last wait; 0 once every slot is posted */
  atomic_int unlogged;            /* a failure bk_start counted but could not log */
} bk_server_t;

/* What the dynamic pool does with a retired worker: overlapped I/O may die with its thread (Wine): retired workers park. */
#define BK_PARK_RETIRED 1

/* Work a worker queues for others (the rest of a batch) wakes an idle worker at once:
 * a worker blocked in a callback is seen by nobody else. */
#define BK_WAKE_FOR_WORKER_TASKS 1

typedef struct bk_worker_s {
  int unused;
} bk_worker_t;

#endif
