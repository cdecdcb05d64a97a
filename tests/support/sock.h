/*
 * sock.h -- portable blocking client sockets with timeouts for the iocpsrv tests.
 *
 * Sockets stay in blocking mode; every wait goes through poll (WSAPoll on Windows)
 * with a deadline, so a test never hangs on a silent server. Sends never raise
 * SIGPIPE (MSG_NOSIGNAL). Results: 0 (or a byte count) on success, else one of the
 * negative TS_* codes below.
 */
#ifndef IOCPSRV_TEST_SOCK_H
#define IOCPSRV_TEST_SOCK_H

#include <stddef.h>
#include <stdint.h>

#ifdef _WIN32
#  if !defined(_WIN32_WINNT) || _WIN32_WINNT < 0x0600
#    undef _WIN32_WINNT
#    define _WIN32_WINNT 0x0600 /* WSAPoll, inet_ntop */
#  endif
#  ifndef WIN32_LEAN_AND_MEAN
#    define WIN32_LEAN_AND_MEAN
#  endif
#  include <winsock2.h>
#  include <ws2tcpip.h>
typedef SOCKET ts_sock_t;
#  define TS_INVALID INVALID_SOCKET
#else
typedef int ts_sock_t;
#  define TS_INVALID (-1)
#endif

#ifdef __cplusplus
extern "C" {
#endif

enum {
  TS_OK = 0,
  TS_ERR = -1,     /* socket error other than the ones below */
  TS_TIMEOUT = -2, /* nothing (or not enough) within the timeout */
  TS_EOF = -3,     /* the peer closed cleanly (FIN) */
  TS_RESET = -4,   /* the peer reset the connection (RST) */
  TS_TOOBIG = -5   /* a framed packet larger than the caller's buffer */
};

/* Default timeout the tests use for "this must happen" waits. */
#define TS_WAIT_MS 10000

/* Name of a TS_* code. */
const char *ts_strerror(int rc);

/* Once per process (WSAStartup on Windows). */
int ts_init(void);

/* Connect to host:port (a numeric IPv4 or IPv6 address) within timeout_ms. Returns the
 * socket or TS_INVALID. */
ts_sock_t ts_connect(const char *host, int port, int timeout_ms);
/* Like ts_connect, with SO_RCVBUF set before connecting when rcvbuf > 0. */
ts_sock_t ts_connect_ex(const char *host, int port, int timeout_ms, int rcvbuf);

void ts_close(ts_sock_t s);
/* SO_LINGER {1, 0} then close: the peer sees a reset. */
void ts_reset_close(ts_sock_t s);
/* shutdown(SHUT_WR): send FIN, keep reading. */
int ts_shutdown_write(ts_sock_t s);

int ts_set_nodelay(ts_sock_t s, int on);
int ts_set_rcvbuf(ts_sock_t s, int bytes);
int ts_set_sndbuf(ts_sock_t s, int bytes);

/* The socket's local / remote address as "127.0.0.1:5000" or "[::1]:5000" (the format
 * iocpsrv uses for peer text). */
int ts_local_addr(ts_sock_t s, char *buf, size_t cap);
int ts_peer_addr(ts_sock_t s, char *buf, size_t cap);

/* Send every byte (blocking, but gives up after timeout_ms without progress). */
int ts_send_all(ts_sock_t s, const void *buf, size_t len);
int ts_send_all_timeout(ts_sock_t s, const void *buf, size_t len, int timeout_ms);

/* Receive exactly len bytes within timeout_ms in total. */
int ts_recv_exact(ts_sock_t s, void *buf, size_t len, int timeout_ms);
/* Receive what is there (at least 1 byte) within timeout_ms: returns the count. */
int ts_recv_some(ts_sock_t s, void *buf, size_t cap, int timeout_ms);
/* 1 if data or EOF is ready to read within timeout_ms, 0 if not, negative on error. */
int ts_readable(ts_sock_t s, int timeout_ms);

/* 1 if the socket can take more bytes within timeout_ms, 0 if not, negative on error. */
int ts_writable(ts_sock_t s, int timeout_ms);

/* Framing helpers: hdr_size 2 or 4, big_endian 0/1. */
void ts_encode_header(uint8_t *hdr, size_t len, int hdr_size, int big_endian);
size_t ts_decode_header(const uint8_t *hdr, int hdr_size, int big_endian);

/* Send one packet: 4-byte little-endian length, then the payload (one write). */
int ts_send_packet(ts_sock_t s, const void *payload, size_t len);
int ts_send_packet_ex(ts_sock_t s, const void *payload, size_t len, int hdr_size,
                      int big_endian);
/* Receive one packet into buf (capacity cap); *len gets the payload length. */
int ts_recv_packet(ts_sock_t s, void *buf, size_t cap, size_t *len, int timeout_ms);
int ts_recv_packet_ex(ts_sock_t s, void *buf, size_t cap, size_t *len, int hdr_size,
                      int big_endian, int timeout_ms);
/* Append one framed packet to out (which must have room for hdr_size + len). Returns
 * the bytes written. */
size_t ts_frame(uint8_t *out, const void *payload, size_t len, int hdr_size,
                int big_endian);

/* Read and discard until the server closes: returns TS_EOF (FIN) or TS_RESET, or
 * TS_TIMEOUT / TS_ERR. *discarded (may be NULL) gets the number of bytes read. */
int ts_wait_close(ts_sock_t s, int timeout_ms, size_t *discarded);

/* Open a listening TCP socket on host:port (0 = any free port); *port_out gets the
 * bound port. For "address in use" tests. Returns TS_INVALID on failure. */
ts_sock_t ts_listen(const char *host, int port, int *port_out);

/* A port on 127.0.0.1 where nothing listens (bound once, then closed): connecting
 * there is refused. */
int ts_dead_port(void);

/* 1 if an IPv6 socket can bind ::1 on this machine. */
int ts_ipv6_available(void);

#ifdef __cplusplus
}
#endif

#endif /* IOCPSRV_TEST_SOCK_H */
