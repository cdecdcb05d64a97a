/*
 * echo.h -- an in-process iocpsrv echo server that also checks the threading contract.
 *
 * echo_start() creates a server with the given options, listens on 127.0.0.1 port 0
 * (or cfg->host) and returns it with its port. Every packet is echoed with
 * iocpsrv_send unless a hook says otherwise. Per connection it records what the
 * engine did (connect, packets, drains, disconnect and its reason) and flags any
 * breach of the contract in iocpsrv.h: callbacks for one connection running at the
 * same time, a packet before connect or after disconnect, a second disconnect, a
 * disconnect for a refused client, a wrong conn_user, a reused id, sequence numbers
 * out of order. echo_check_clean() after stop fails the test on any of those and on
 * anything left behind.
 *
 * Pull mode (cfg.pull): the same handlers run on a pump thread that drains
 * iocpsrv_poll (optionally waiting on iocpsrv_wait_handle first), so both modes are
 * checked by the same code and can be compared event for event (cfg.log_events).
 */
#ifndef IOCPSRV_TEST_ECHO_H
#define IOCPSRV_TEST_ECHO_H

#include <stddef.h>
#include <stdint.h>

#include "iocpsrv.h"
#include "sock.h"
#include "thread.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct echo_server_s echo_server_t;
typedef struct echo_conn_s echo_conn_t;

/* What the packet hook tells the echo server to do with a packet. */
enum {
  ECHO_DEFAULT = 0,   /* echo it */
  ECHO_SKIP = 1,      /* do not echo */
  ECHO_CLOSE = 2,     /* echo it, then return non-zero (close after the queued reply) */
  ECHO_SKIP_CLOSE = 3 /* return non-zero without echoing */
};

/* Runs inside the packet callback (or the pull pump) after the contract checks. */
typedef int (*echo_packet_hook_t)(echo_server_t *es, echo_conn_t *c, const uint8_t *data,
                                  size_t len);
/* Runs inside the connect callback; non-zero refuses the client. */
typedef int (*echo_connect_hook_t)(echo_server_t *es, iocpsrv_conn_id_t id,
                                   const char *peer);
/* Runs inside the disconnect callback (or pump), after the record is updated. */
typedef void (*echo_disconnect_hook_t)(echo_server_t *es, echo_conn_t *c, int reason);

typedef struct echo_opt_s {
  int option; /* IOCPSRV_OPT_* */
  int64_t value;
} echo_opt_t;

typedef struct echo_config_s {
  const char *host;       /* NULL: "127.0.0.1" */
  const echo_opt_t *opts; /* set before listen, each must succeed */
  int nopts;
  int pull;               /* pull mode, served by a pump thread */
  int pull_wait_handle;   /* the pump waits on iocpsrv_wait_handle, then polls with 0 */
  int pull_batch;         /* events per iocpsrv_poll, default 64 */
  int pull_manual;        /* pull mode without the pump: the test polls itself */
  int pull_pace_every;    /* the pump sleeps 1 ms after this many events (a slow
                             consumer, to fill the pull queue); 0 = never */
  int check_seq;          /* payloads of >= 4 bytes start with a u32le sequence 0,1,2.. */
  int log_events;         /* keep a per-connection digest of events (echo_digests) */
  int keep_raw;           /* keep every payload byte per connection (raw mode checks) */
  int no_drain_cb;        /* do not register the drain callback */
  echo_packet_hook_t on_packet;
  echo_connect_hook_t on_connect;
  echo_disconnect_hook_t on_disconnect;
  void (*setup)(echo_server_t *es); /* after options and callbacks, before listen */
  void *ctx;                        /* for the hooks */
} echo_config_t;

struct echo_conn_s {
  iocpsrv_conn_id_t id;
  char peer[64];
  void *expected_user; /* what conn_user must be in callbacks (the record itself) */
  int state;           /* 1 open, 2 disconnected, 3 refused */
  int disconnects;
  int reason;
  uint64_t packets;
  uint64_t bytes;
  uint32_t next_seq;
  int drains;
  int busy;            /* a callback for this connection is running */
  int errors;          /* contract breaches on this connection */
  int pull_null_user;  /* pull packet events that carried conn_user NULL */
  int pull_null_user_disc; /* pull disconnect events that carried conn_user NULL */
  char *log;           /* "C;P<len>:<hash>;...;D<reason>;" when cfg.log_events */
  size_t log_len, log_cap;
  uint8_t *raw;        /* every payload byte when cfg.keep_raw */
  size_t raw_len, raw_cap;
  void *test;          /* free for the test's use */
  echo_conn_t *next_all, *next_hash;
};

struct echo_server_s {
  iocpsrv_t *srv;
  int port;
  echo_config_t cfg;
  tt_mutex_t lock;
  echo_conn_t *all;
  echo_conn_t *hash[1024];
  tt_counter_t connects;    /* accepted (connect callback returned 0) */
  tt_counter_t rejects;     /* refused by the connect hook */
  tt_counter_t packets;     /* packet callbacks finished */
  tt_counter_t disconnects; /* disconnect callbacks */
  tt_counter_t drains;      /* drain callbacks */
  int reasons[16];          /* disconnects per reason */
  int contract_errors;
  char first_error[512];
  int send_errors; /* echo sends that failed */
  int last_send_error;
  tt_thread_t *pump;
  int pump_result; /* the pump's last iocpsrv_poll result (IOCPSRV_ESTOPPED at the end) */
  uint64_t pump_events;
};

/* Create, configure and listen. Fails the test on any error. */
echo_server_t *echo_start(const echo_config_t *cfg);
/* The same in two steps: create and configure (not listening), then listen. */
echo_server_t *echo_create(const echo_config_t *cfg);
int echo_listen(echo_server_t *es); /* iocpsrv_listen's result; sets es->port */

/* iocpsrv_stop(timeout_ms); in pull mode also joins the pump (which drains what is
 * left). Returns iocpsrv_stop's result. */
int echo_stop(echo_server_t *es, int timeout_ms);
/* After stop: no contract breach, stats connections_now == 0, every accepted
 * connection had exactly one disconnect. Fails the test otherwise. */
void echo_check_clean(echo_server_t *es);
/* iocpsrv_destroy (must succeed) and free the records. */
void echo_destroy(echo_server_t *es);
/* Free the records only, for a test that called iocpsrv_destroy itself. */
void echo_free(echo_server_t *es);
/* stop + check_clean + destroy. */
void echo_finish(echo_server_t *es);

/* Records. echo_find returns NULL for an unknown id. echo_wait_peer waits up to
 * timeout_ms for a connection whose peer text is `peer`. echo_conn_for finds the
 * record of a client socket (by its local address). */
echo_conn_t *echo_find(echo_server_t *es, iocpsrv_conn_id_t id);
echo_conn_t *echo_wait_peer(echo_server_t *es, const char *peer, int timeout_ms);
echo_conn_t *echo_conn_for(echo_server_t *es, ts_sock_t s);
/* Wait until the connection's disconnect callback ran. 0 or -1 on timeout. */
int echo_wait_disconnect(echo_server_t *es, echo_conn_t *c, int timeout_ms);
/* Wait until the connection has had at least n packet callbacks. 0 or -1. */
int echo_wait_packets(echo_server_t *es, echo_conn_t *c, uint64_t n, int timeout_ms);

/* Snapshot a record's fields under the lock. */
echo_conn_t echo_snapshot(echo_server_t *es, echo_conn_t *c);

/* Every connection's event digest, sorted, joined with '\n' (malloc'd; caller frees).
 * Needs cfg.log_events. */
char *echo_digests(echo_server_t *es);

/* Record a contract breach (thread-safe). */
void echo_contract_error(echo_server_t *es, echo_conn_t *c, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* Fetch stats (fails the test on error). */
iocpsrv_stats_t echo_stats(echo_server_t *es);

/* Poll a condition on engine state that has no event to wait on, for up to
 * TS_WAIT_MS (e.g. stats the engine updates just after a callback returns: the
 * callback is observable before the counter moves). The caller CHECKs it afterwards. */
#define ECHO_WAIT_FOR(cond)                                                           \
  do {                                                                                \
    int64_t echo_deadline_ = tt_now_ms() + TS_WAIT_MS;                                \
    while (!(cond) && tt_now_ms() < echo_deadline_) tt_sleep_ms(1);                   \
  } while (0)

/* Wait until stats.field == want, then check it. */
#define ECHO_CHECK_STAT(es, field, want)                                              \
  do {                                                                                \
    ECHO_WAIT_FOR(echo_stats(es).field == (uint64_t)(want));                          \
    CHECK_EQ(echo_stats(es).field, (want));                                           \
  } while (0)

#ifdef __cplusplus
}
#endif

#endif /* IOCPSRV_TEST_ECHO_H */
