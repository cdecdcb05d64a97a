/* The backend seam: everything the core asks of the OS, and nothing else.
 *
 * One backend is built per OS (linux/epoll.c, win/iocp.c); CMake puts its folder on
 * the include path, so "backend_types.h" is that backend's: bk_socket_t, and the
 * backend's own state kept inside the core's structs (bk_server_t in the server,
 * bk_conn_t in each connection). The core never reads inside them; a backend never
 * reads the core's structs: it sees the options and its own state.
 *
 * The core drives. Every worker runs one loop (core/worker.c): wait for a batch of
 * normalized events, act on them (the callback token, the run queue, reads, writes,
 * accepts are all the core's), run the queued work, wait again. A backend only
 * translates: the wait turns readiness (epoll) or completions (IOCP) into events; the
 * poller set and the socket set below are thin wrappers of OS calls. What a backend
 * must do its own way stays inside its functions: the epoll poll gate and the
 * exhaustion backoff inside bk_wait and bk_periodic; IOCP's outstanding-operation
 * counts, zero-byte receives, inline completions and the release of a closed
 * connection after its last completion inside bk_arm, bk_write, bk_close and bk_wait.
 * Where the core must act differently for a backend, the backend says so in bk_caps.
 *
 * Threads and locks. bk_register, bk_arm and bk_write are called under the
 * connection's lock and must neither block nor log; bk_read and bk_close by the
 * connection's token holder, no lock held. Everything else is called with no engine
 * lock held. */
#ifndef IOCPSRV_CORE_BACKEND_H
#define IOCPSRV_CORE_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "backend_types.h"
#include "core/options.h"

typedef struct iocpsrv_s iocpsrv_t;

/* ---- Events (bk_wait) ---- */

enum {
  BK_CONN = 1,   /* news for the connection `id` (notes below) */
  BK_ACCEPT = 2, /* a new client: `sock` (non-blocking, for bk_register) from `peer` */
  BK_WAKE = 3,   /* bk_wake was called: queued work waits */
  BK_QUIT = 4    /* bk_quit: this worker's loop ends */
};

/* Notes of a BK_CONN event. */
#define BK_READ 0x01u     /* data, the peer's FIN or an error waits: read (bk_read) */
#define BK_WRITE 0x02u    /* writing may go on: the socket is writable again, or (writes
                             that hold bytes) the write that said BK_AGAIN finished,
                             `bytes` of it */
#define BK_HUP 0x04u      /* the peer hung up or its FIN is coming: read on to the end */
#define BK_FAILED 0x08u   /* with BK_WRITE: that write failed; alone: the receive bk_arm
                             started failed. The connection is dead either way */
#define BK_RELEASED 0x10u /* the last I/O of a connection bk_close left running is over:
                             its slot may be given back */

typedef struct bk_event_s {
  uint8_t kind;
  uint8_t notes;                /* BK_CONN */
  uint64_t id;                  /* BK_CONN: the id given to bk_register */
  size_t bytes;                 /* BK_CONN with BK_WRITE: bytes the held write wrote */
  bk_socket_t sock;             /* BK_ACCEPT */
  struct sockaddr_storage peer; /* BK_ACCEPT */
} bk_event_t;

/* The most events bk_wait reports of its own per call. A wait may report up to
 * IOCPSRV_OPT_ACCEPTS_POSTED accepted clients besides, so the core's array holds
 * BK_WAIT_EVENTS + accepts_posted events. */
#define BK_WAIT_EVENTS 64

/* What a backend is, where the core must act on it. Data, constant per backend. */
typedef struct bk_caps_s {
  /* Writes are overlapped: a bk_write that says BK_AGAIN has started, goes on reading
   * its bytes, and ends with a BK_WRITE event that counts them. The core leaves those
   * bytes where they are until then and queues new sends in another buffer. */
  uint8_t write_holds_bytes;
  /* I/O may end with the thread that started it (Wine cancels overlapped I/O when its
   * thread exits): a worker the dynamic pool retires parks instead of ending. */
  uint8_t io_dies_with_thread;
  /* The wait itself notices a worker stuck in a callback with queued work behind it
   * and sends another worker there (epoll's poll gate): work a worker queues from its
   * own batch wakes no one. Without it, that work wakes an idle worker at once. */
  uint8_t wait_takes_over;
} bk_caps_t;

extern const bk_caps_t bk_caps;

/* bk_read, bk_write, bk_arm results besides a byte count. */
#define BK_EOF 0
#define BK_AGAIN (-1)
#define BK_ERROR (-2)

/* ---- The poller set ---- */

/* Create the wait objects for one run of the server (listen). `srv` is only handed
 * back to the core's services below; `opt` stays valid and unchanged until
 * bk_release. 0 or a negative IOCPSRV_E code; bk_release cleans up either way. */
int bk_open(bk_server_t *b, iocpsrv_t *srv, const srv_options_t *opt);
/* After the workers are joined: close the listener and the wait objects. Safe when
 * bk_open never ran or failed half way. */
void bk_release(bk_server_t *b);
/* Start watching a fresh client socket for connection `id` (lock held: no log). 0 or
 * a negative IOCPSRV_E code (the core then closes the connection, bk_close). */
int bk_register(bk_server_t *b, bk_conn_t *c, bk_socket_t s, uint64_t id);
/* The connection wants to read and has no BK_READ to come: arrange one. 0: an event
 * will come; 1: readable now (no event comes); BK_ERROR: the connection is dead. Lock
 * held. (epoll watches edges for a connection's whole life: nothing to do.) */
int bk_arm(bk_conn_t *c, bk_socket_t s);
/* Wait up to timeout_ms (negative: forever) and fill ev[0..max) with what happened.
 * Returns the count (0 on a timeout or a spurious wake), or -1 when waiting itself
 * failed (logged): the worker ends. */
int bk_wait(bk_server_t *b, bk_event_t *ev, int max, int timeout_ms);
/* Make one waiting worker return from bk_wait (BK_WAKE): queued work waits. */
void bk_wake(bk_server_t *b);
/* Quit in two steps. waiters == 0, as a stop begins: accept no more clients (the
 * listener stays open until bk_release: a worker may be inside accept right now).
 * waiters > 0, once the connections are gone: that many workers' waits return
 * BK_QUIT (every worker, parked ones included, gets one). */
void bk_quit(bk_server_t *b, int waiters);
/* The sweep's tick, one worker at a time, no lock held: retry what a shortage put off
 * (re-arm the listener after descriptor exhaustion, re-post failed accepts), log what
 * could not be logged then. */
void bk_periodic(bk_server_t *b, int64_t now);

/* ---- The socket set ---- */

/* Listen on one resolved address and attach the listener to the poller. 0 with *bound
 * the address it is bound to (the port the OS picked), or a negative IOCPSRV_E code
 * (then the core tries its next address). Called under the server's lifecycle lock:
 * no log. */
int bk_listen(bk_server_t *b, const struct addrinfo *ai, struct sockaddr_storage *bound);
/* The socket options (IOCPSRV_OPT_NODELAY, KEEPALIVE, RCVBUF, SNDBUF) of an accepted
 * socket. Each only tunes the connection: one the OS refuses is logged (a line a
 * second at most) and the client is served anyway. */
void bk_tune(bk_server_t *b, bk_socket_t s);
/* Receive into buf without blocking: a count, BK_EOF, BK_AGAIN or BK_ERROR. */
long bk_read(bk_socket_t s, void *buf, size_t len);
/* Write data[0..len) without blocking (lock held). Returns the bytes written now, or
 * BK_AGAIN: nothing now, a BK_WRITE event says when to go on (bk_caps.write_holds_bytes:
 * the write has started and holds the bytes until then), or BK_ERROR: the connection
 * is dead. Never called again before that BK_WRITE. */
long bk_write(bk_conn_t *c, bk_socket_t s, const void *data, size_t len);
/* Write head then body straight from the caller's memory, at once, without blocking
 * (lock held, no write outstanding, nothing queued): the core's path for a large send
 * to an idle connection, which then needs no copy. Returns the bytes written now, 0
 * when none (the socket is full, or the backend never writes from memory it does not
 * own: IOCP's WSASend reads its buffer until the completion), or BK_ERROR. */
long bk_write_now(bk_socket_t s, const void *head, size_t hlen, const void *body,
                  size_t blen);
/* Start an outbound connection for connection `id` (lock held: no log): a fresh
 * non-blocking socket, bound to `from` when given (NULL: the OS chooses), watched like
 * an accepted one (its events carry `id`), connecting to `to`. Returns 0 with *out
 * the socket: a BK_CONN event for `id` follows when the attempt ends, either way (ask
 * bk_connect_result); a positive IOCPSRV_REASON_CONNECT_* when the attempt failed at
 * once (nothing is left open); or a negative IOCPSRV_E code when no socket could be
 * set up for it (IOCPSRV_ELIMIT: no descriptor left). */
int bk_connect(bk_server_t *b, bk_conn_t *c, uint64_t id, const struct sockaddr *to,
               int tolen, const struct sockaddr *from, int fromlen, bk_socket_t *out);
/* After a BK_CONN event for a connecting socket (token held): 0 connected (from now on
 * an ordinary connection: bk_arm, bk_read, bk_write...), BK_AGAIN still connecting
 * (a late event of an earlier socket: another event comes), or a positive
 * IOCPSRV_REASON_CONNECT_* it failed with. (A pending ConnectEx outlives the thread
 * that issued it, under Wine too: test_connect's connect_from_a_thread_that_exits.) */
int bk_connect_result(bk_conn_t *c, bk_socket_t s);
/* Send our FIN (the write side only). */
void bk_shutdown(bk_socket_t s);
/* Close a socket, with a reset instead of a FIN when `abort`. `c` the registered
 * connection's state, or NULL for a socket never registered. Returns 1 when I/O is
 * still running on it: a BK_RELEASED event for the connection follows its end. */
int bk_close(bk_conn_t *c, bk_socket_t s, int abort);
/* The socket's local address. 0 or -1. */
int bk_sockname(bk_socket_t s, struct sockaddr_storage *sa);

/* ---- What the core offers a backend (core/log.c) ---- */

enum { BK_LOG_ALWAYS = 0, BK_LOG_ACCEPT = 1, BK_LOG_SOCKOPT = 2 };
/* The host's log callback, never with an engine lock held. BK_LOG_ACCEPT and
 * BK_LOG_SOCKOPT lines go out a line a second at most per topic, the lines skipped in
 * between counted in the next one. */
void engine_log_topic(iocpsrv_t *srv, int topic, int level, const char *fmt, ...);

enum { BK_COUNT_ACCEPT_ERRORS = 0, BK_COUNT_REFUSED = 1 };
/* Add to the server's accept_errors or connections_refused. */
void engine_count(iocpsrv_t *srv, int counter, uint64_t n);

/* How long to stop accepting after a failure that would repeat at once (descriptors
 * or memory ran out), given the last pause (0: none): 50 ms, doubling up to 1 s. */
int engine_accept_backoff(int last_ms);

#endif
