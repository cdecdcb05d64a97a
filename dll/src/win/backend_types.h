/* What the IOCP backend keeps inside the core's structs (see core/backend.h). */
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

typedef SOCKET bk_socket_t;
#define BK_INVALID_SOCKET INVALID_SOCKET

typedef struct iocpsrv_s iocpsrv_t;
typedef struct srv_options_s srv_options_t;

/* One overlapped operation; the completion leads back to it with container_of. */
typedef struct bk_io_s {
  OVERLAPPED ov;
  int kind; /* BK_IO_RECV, BK_IO_SEND */
} bk_io_t;

typedef struct bk_conn_s {
  bk_io_t recv_io, send_io;
  uint64_t id;         /* the connection's, for its events */
  atomic_uint io;      /* operations not yet completed, | BK_IO_CLOSED once closed */
  uint8_t skip_inline; /* FILE_SKIP_COMPLETION_PORT_ON_SUCCESS is on for this socket */
  /* An outbound connect (send_io carries its ConnectEx): */
  atomic_int connect_done;   /* its completion came */
  ULONG_PTR connect_status;  /* that completion's NTSTATUS (read after connect_done) */
} bk_conn_t;

typedef struct bk_accept_s bk_accept_t;

typedef struct bk_server_s {
  iocpsrv_t *srv;            /* for the core's log and counters */
  const srv_options_t *opt;
  int ready;                 /* bk_open ran: there is something to release */
  HANDLE port;
  SOCKET listen_sock;
  int family;
  atomic_int accepting;      /* cleared by bk_quit: completed accepts are closed */
  bk_accept_t *accepts;
  int naccepts;
  LPFN_ACCEPTEX accept_ex;
  LPFN_GETACCEPTEXSOCKADDRS get_sockaddrs;
  LPFN_CONNECTEX connect_ex; /* loaded at bk_open; NULL: outbound connects unsupported */
  /* Accepts that could not be posted (win/iocp.c, bk_periodic posts them again): */
  atomic_int retries;             /* slots waiting */
  atomic_int_fast64_t retry_ms;   /* when bk_periodic tries next */
  atomic_int backoff_ms;          /* the last wait; 0 once every slot is posted */
  atomic_int unlogged;            /* a failure bk_listen counted but could not log */
} bk_server_t;

#endif
