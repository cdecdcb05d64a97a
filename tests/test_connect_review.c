/*
 * test_connect_review.c -- adversarial review of the client role (iocpsrv_connect,
 * iocpsrv_start; issue 20): the races and limits test_connect.c does not reach.
 *
 * To hold a worker at an exact place without touching the library, this file (Linux
 * only) interposes two libc functions the library calls through its PLT: getpeername
 * (epoll's bk_connect_result asks it whether a connect finished: held there, the
 * worker sits between conn_connect_step's look at the connection's state and
 * conn_established) and getaddrinfo (the resolver thread's lookup: held there, a
 * lookup takes as long as the test likes, as a slow DNS server's does). Both forward
 * to the real function once released; both are armed only for the sub-test that
 * wants them.
 *
 * Sub-tests:
 *   - review_refuse_while_connect_completes: iocpsrv_disconnect(REFUSE) of an attempt
 *     whose connect has just completed: no callback may follow (contract of REFUSE);
 *   - review_refuse_while_connect_completes_pull: the same in pull mode;
 *   - review_abort_while_connect_completes: the same with ABORT of an attempt that
 *     conn_info shows CONNECTING: no connect callback should follow;
 *   - review_timeout_while_connect_completes: IOCPSRV_OPT_CONNECT_TIMEOUT_MS runs out
 *     while the connect completes: either it never got established (no connect
 *     callback, CONNECT_TIMEOUT) or it did (connect callback, then a reason that is not
 *     one of the "never got established" ones), never both;
 *   - review_reconnect_from_disconnect_at_limit: the classic reconnect loop (connect
 *     again from the disconnect callback) with IOCPSRV_OPT_MAX_CONNECTIONS 1;
 *   - review_disconnect_while_resolving, review_timeout_while_resolving: the attempt
 *     ends at once while its lookup is still running, and the late answer is ignored;
 *   - review_stop_while_resolving: iocpsrv_stop(0) while a lookup hangs;
 *   - review_slow_name_holds_up_others: one slow lookup and a second name;
 *   - review_restart_resolves_again: stop (with a lookup done) and start again: the
 *     resolver thread comes back; destroy with a name attempt in flight;
 *   - review_connect_from_connect_and_disconnect_cb, review_stop_from_callback_pending:
 *     calls from inside callbacks;
 *   - review_ipv6_source: IOCPSRV_OPT_CONNECT_SOURCE "::1" to an IPv6 server.
 */
#include <stdlib.h>
#include <string.h>

#include "echo.h"
#include "sock.h"
#include "test.h"
#include "thread.h"

#ifndef _WIN32
#  include <dlfcn.h>
#  include <netdb.h>
#endif

/* ------------------------------------------------------------ interposition ---- */

#ifndef _WIN32
/* getpeername: armed, the next call signals `peer_entered` and waits for
 * `peer_release` before it asks the kernel. */
static int peer_armed;
static tt_counter_t peer_entered, peer_release;

typedef int (*getpeername_fn)(int, void *, void *);
int review_getpeername(int fd, void *sa, void *len) __asm__("getpeername");
int review_getpeername(int fd, void *sa, void *len) {
  static getpeername_fn real;
  if (!real) real = (getpeername_fn)dlsym(RTLD_NEXT, "getpeername");
  if (__atomic_exchange_n(&peer_armed, 0, __ATOMIC_SEQ_CST)) {
    tt_counter_add(&peer_entered, 1);
    tt_counter_wait(&peer_release, 1, 30000);
  }
  return real(fd, sa, len);
}

/* getaddrinfo: a lookup of SLOW_NAME signals `dns_entered` and waits for
 * `dns_release`, then resolves "localhost" instead. Any other name, and iocpsrv_connect's
 * own numeric check (AI_NUMERICHOST), goes through. */
#  define SLOW_NAME "slow.review.test"
static tt_counter_t dns_entered, dns_release, dns_left;

typedef int (*getaddrinfo_fn)(const char *, const char *, const void *, void **);
int review_getaddrinfo(const char *node, const char *service, const void *hints,
                       void **res) __asm__("getaddrinfo");
int review_getaddrinfo(const char *node, const char *service, const void *hints,
                       void **res) {
  static getaddrinfo_fn real;
  if (!real) real = (getaddrinfo_fn)dlsym(RTLD_NEXT, "getaddrinfo");
  const struct addrinfo *h = (const struct addrinfo *)hints;
  if (node && strcmp(node, SLOW_NAME) == 0 && !(h && (h->ai_flags & AI_NUMERICHOST))) {
    tt_counter_add(&dns_entered, 1);
    tt_counter_wait(&dns_release, 1, 30000);
    int rc = real("localhost", service, hints, res);
    tt_counter_add(&dns_left, 1);
    return rc;
  }
  return real(node, service, hints, res);
}
#endif

static void hooks_reset(void) {
#ifndef _WIN32
  __atomic_store_n(&peer_armed, 0, __ATOMIC_SEQ_CST);
  tt_counter_set(&peer_entered, 0);
  tt_counter_set(&peer_release, 0);
  tt_counter_set(&dns_entered, 0);
  tt_counter_set(&dns_release, 0);
  tt_counter_set(&dns_left, 0);
#endif
}

static int hooks_available(void) {
#ifdef _WIN32
  test_skip("interposes libc functions (Linux only)");
  return 0;
#else
  return 1;
#endif
}

/* ---------------------------------------------------------------- the host ---- */

/* Counts each callback per attempt; one attempt per test here, or a few. */
typedef struct host_s {
  iocpsrv_t *srv;
  tt_mutex_t lock;
  tt_counter_t connects, disconnects;
  int last_reason;
  int reasons[32];
  iocpsrv_conn_id_t last_id;
  /* reconnect loop */
  int reconnects_left, reconnect_port;
  int reconnect_rc[8];
  int nreconnect;
  /* connect from callbacks */
  int connect_from_connect, connect_from_disconnect;
  int inner_rc[8];
  int ninner;
  int inner_port;
  /* stop from a callback */
  int stop_in_connect_cb;
  int stop_rc;
} host_t;

static host_t host;

static int IOCPSRV_CALL h_connect(iocpsrv_t *srv, iocpsrv_conn_id_t id, const char *peer,
                                  void **user) {
  (void)peer;
  (void)user;
  tt_mutex_lock(&host.lock);
  host.last_id = id;
  int inner = host.connect_from_connect > 0 ? host.connect_from_connect-- : 0;
  int stop = host.stop_in_connect_cb;
  host.stop_in_connect_cb = 0;
  tt_mutex_unlock(&host.lock);
  if (inner) {
    iocpsrv_conn_id_t nid = 0;
    int rc = iocpsrv_connect(srv, "127.0.0.1", host.inner_port, NULL, &nid);
    tt_mutex_lock(&host.lock);
    if (host.ninner < 8) host.inner_rc[host.ninner++] = rc;
    tt_mutex_unlock(&host.lock);
  }
  if (stop) host.stop_rc = iocpsrv_stop(srv, 0);
  tt_counter_add(&host.connects, 1);
  return 0;
}

static void IOCPSRV_CALL h_disconnect(iocpsrv_t *srv, iocpsrv_conn_id_t id, void *user,
                                      int reason) {
  (void)id;
  (void)user;
  tt_mutex_lock(&host.lock);
  host.last_reason = reason;
  if (reason > 0 && reason < 32) host.reasons[reason]++;
  int again = host.reconnects_left > 0 ? host.reconnects_left-- : 0;
  int inner = host.connect_from_disconnect > 0 ? host.connect_from_disconnect-- : 0;
  tt_mutex_unlock(&host.lock);
  if (again) {
    iocpsrv_conn_id_t nid = 0;
    int rc = iocpsrv_connect(srv, "127.0.0.1", host.reconnect_port, NULL, &nid);
    tt_mutex_lock(&host.lock);
    if (host.nreconnect < 8) host.reconnect_rc[host.nreconnect++] = rc;
    tt_mutex_unlock(&host.lock);
  }
  if (inner) {
    iocpsrv_conn_id_t nid = 0;
    int rc = iocpsrv_connect(srv, "127.0.0.1", host.inner_port, NULL, &nid);
    tt_mutex_lock(&host.lock);
    if (host.ninner < 8) host.inner_rc[host.ninner++] = rc;
    tt_mutex_unlock(&host.lock);
  }
  tt_counter_add(&host.disconnects, 1);
}

static iocpsrv_t *host_new(int pull) {
  memset(&host, 0, sizeof host);
  tt_mutex_init(&host.lock);
  tt_counter_init(&host.connects);
  tt_counter_init(&host.disconnects);
  hooks_reset();
  CHECK_OK(iocpsrv_create(&host.srv, &host));
  CHECK_OK(iocpsrv_set_option(host.srv, IOCPSRV_OPT_WORKER_THREADS, 3));
  /* A graceful close towards a listener that never accepts ends by this timeout. */
  CHECK_OK(iocpsrv_set_option(host.srv, IOCPSRV_OPT_CLOSE_TIMEOUT_MS, 200));
  if (pull) {
    CHECK_OK(iocpsrv_set_option(host.srv, IOCPSRV_OPT_PULL_MODE, 1));
  } else {
    CHECK_OK(iocpsrv_set_connect_cb(host.srv, h_connect));
    CHECK_OK(iocpsrv_set_disconnect_cb(host.srv, h_disconnect));
  }
  return host.srv;
}

static void host_destroy(void) {
  CHECK_OK(iocpsrv_destroy(host.srv));
  host.srv = NULL;
  tt_counter_destroy(&host.connects);
  tt_counter_destroy(&host.disconnects);
  tt_mutex_destroy(&host.lock);
}

/* ------------------------------------------- the connect completes meanwhile ---- */

/* An attempt to a listener the kernel completes handshakes for, held in getpeername:
 * its connect has completed, and the worker is about to introduce it to the host.
 * Returns its id. */
static iocpsrv_conn_id_t attempt_held_at_completion(iocpsrv_t *srv, int port) {
#ifndef _WIN32
  __atomic_store_n(&peer_armed, 1, __ATOMIC_SEQ_CST);
#endif
  iocpsrv_conn_id_t id = 0;
  CHECK_OK(iocpsrv_connect(srv, "127.0.0.1", port, NULL, &id));
#ifndef _WIN32
  CHECK_OK(tt_counter_wait(&peer_entered, 1, 5000));
#endif
  return id;
}

static void release_peer(void) {
#ifndef _WIN32
  tt_counter_add(&peer_release, 1);
#endif
}

/* REFUSE: "the host gets no further callback or event for it, not even its
 * disconnect". A REFUSE that lands while the worker is between its look at the state
 * and conn_established still gets a connect callback: conn_established does not look
 * at the state again. */
static void review_refuse_while_connect_completes(void) {
  if (!hooks_available()) return;
  int port = 0;
  ts_sock_t l = ts_listen("127.0.0.1", 0, &port);
  CHECK(l != TS_INVALID);
  iocpsrv_t *srv = host_new(0);
  CHECK_OK(iocpsrv_start(srv));
  iocpsrv_conn_id_t id = attempt_held_at_completion(srv, port);
  CHECK_OK(iocpsrv_disconnect(srv, id, IOCPSRV_CLOSE_REFUSE));
  release_peer();
  CHECK_OK(test_wait_connections_now(srv, 0, 5000)); /* its slot is free: nothing more comes */
  CHECK_MSG(tt_counter_get(&host.connects) == 0,
            "a connect callback after iocpsrv_disconnect(REFUSE) returned");
  CHECK_EQ(tt_counter_get(&host.disconnects), 0);
  CHECK_OK(iocpsrv_stop(srv, 0));
  host_destroy();
  ts_close(l);
}

/* The same in pull mode: no CONNECT event for the refused attempt. */
static void review_refuse_while_connect_completes_pull(void) {
  if (!hooks_available()) return;
  int port = 0;
  ts_sock_t l = ts_listen("127.0.0.1", 0, &port);
  CHECK(l != TS_INVALID);
  iocpsrv_t *srv = host_new(1);
  CHECK_OK(iocpsrv_start(srv));
  iocpsrv_conn_id_t id = attempt_held_at_completion(srv, port);
  CHECK_OK(iocpsrv_disconnect(srv, id, IOCPSRV_CLOSE_REFUSE));
  release_peer();
  CHECK_OK(test_wait_connections_now(srv, 0, 5000));
  iocpsrv_event_t ev[4];
  int n = iocpsrv_poll(srv, ev, 4, 0);
  CHECK_OK(n);
  for (int i = 0; i < n; i++)
    CHECK_MSG(ev[i].conn != id, "event %d for a refused attempt", (int)ev[i].type);
  CHECK_OK(iocpsrv_stop(srv, 0));
  host_destroy();
  ts_close(l);
}

/* iocpsrv_disconnect(ABORT) of an attempt that conn_info still shows CONNECTING: the
 * host dropped the attempt before it got established, yet a connect callback follows
 * (then LOCAL_ABORT). The same root cause as the REFUSE case; the header lists
 * LOCAL_CLOSE / LOCAL_ABORT among the ends of an attempt "that never got
 * established", which "gets no connect callback". */
static void review_abort_while_connect_completes(void) {
  if (!hooks_available()) return;
  int port = 0;
  ts_sock_t l = ts_listen("127.0.0.1", 0, &port);
  CHECK(l != TS_INVALID);
  iocpsrv_t *srv = host_new(0);
  CHECK_OK(iocpsrv_start(srv));
  iocpsrv_conn_id_t id = attempt_held_at_completion(srv, port);
  iocpsrv_conn_info_t info = test_conn_info(srv, id);
  CHECK(info.flags & IOCPSRV_CONN_CONNECTING); /* not established, as far as we know */
  CHECK_OK(iocpsrv_disconnect(srv, id, IOCPSRV_CLOSE_ABORT));
  release_peer();
  CHECK_OK(tt_counter_wait(&host.disconnects, 1, 5000));
  CHECK_EQ(host.last_reason, IOCPSRV_REASON_LOCAL_ABORT);
  CHECK_MSG(tt_counter_get(&host.connects) == 0,
            "a connect callback for an attempt aborted while CONNECTING");
  CHECK_OK(iocpsrv_stop(srv, 0));
  host_destroy();
  ts_close(l);
}

/* IOCPSRV_OPT_CONNECT_TIMEOUT_MS runs out (the sweep marks the attempt closing with
 * CONNECT_TIMEOUT) while its connect completes: the host must not get a connect
 * callback and then a disconnect that says the connection never got established. */
static void review_timeout_while_connect_completes(void) {
  if (!hooks_available()) return;
  int port = 0;
  ts_sock_t l = ts_listen("127.0.0.1", 0, &port);
  CHECK(l != TS_INVALID);
  iocpsrv_t *srv = host_new(0);
  CHECK_OK(iocpsrv_set_option(srv, IOCPSRV_OPT_CONNECT_TIMEOUT_MS, 100));
  CHECK_OK(iocpsrv_start(srv));
  iocpsrv_conn_id_t id = attempt_held_at_completion(srv, port);
  /* Wait for the sweep's verdict while the worker is held. */
  int64_t end = tt_now_ms() + 5000;
  for (;;) {
    iocpsrv_conn_info_t info = test_conn_info(srv, id);
    if (info.flags & IOCPSRV_CONN_CLOSING) break;
    CHECK_MSG(tt_now_ms() < end, "the connect timeout never fired");
    tt_sleep_ms(5);
  }
  release_peer();
  CHECK_OK(tt_counter_wait(&host.disconnects, 1, 5000));
  int connected = (int)tt_counter_get(&host.connects);
  int reason = host.last_reason;
  int never_established = reason >= IOCPSRV_REASON_CONNECT_REFUSED &&
                          reason <= IOCPSRV_REASON_CONNECT_FAILED;
  CHECK_MSG(!(connected && never_established),
            "connect callback, then disconnect reason %s (\"never got established\")",
            iocpsrv_reason_name(reason));
  CHECK_OK(iocpsrv_stop(srv, 0));
  host_destroy();
  ts_close(l);
}

/* ------------------------------------------------------------- the limit ---- */

/* The reconnect loop: the disconnect callback of a failed attempt connects again. With
 * IOCPSRV_OPT_MAX_CONNECTIONS 1 the failed attempt is gone ("its id is dead from now
 * on"), but it still holds the one slot while its disconnect callback runs: ELIMIT. */
static void review_reconnect_from_disconnect_at_limit(void) {
  iocpsrv_t *srv = host_new(0);
  CHECK_OK(iocpsrv_set_option(srv, IOCPSRV_OPT_MAX_CONNECTIONS, 1));
  CHECK_OK(iocpsrv_start(srv));
  host.reconnect_port = ts_dead_port();
  host.reconnects_left = 3;
  iocpsrv_conn_id_t id = 0;
  CHECK_OK(iocpsrv_connect(srv, "127.0.0.1", host.reconnect_port, NULL, &id));
  CHECK_OK(tt_counter_wait(&host.disconnects, 1, 5000));
  CHECK_OK(test_wait_connections_now(srv, 0, 5000));
  tt_mutex_lock(&host.lock);
  int n = host.nreconnect, first = n ? host.reconnect_rc[0] : 0;
  tt_mutex_unlock(&host.lock);
  CHECK_GE(n, 1);
  CHECK_MSG(first == 0, "iocpsrv_connect from the disconnect callback at the limit: %s",
            iocpsrv_err_name(first));
  CHECK_OK(tt_counter_wait(&host.disconnects, 4, 5000)); /* all three reconnects ended */
  CHECK_OK(iocpsrv_stop(srv, 0));
  host_destroy();
}

/* ------------------------------------------------------------ the resolver ---- */

/* A name attempt disconnected while its lookup hangs ends at once (LOCAL_ABORT); the
 * late answer changes nothing. Passes. */
static void review_disconnect_while_resolving(void) {
  if (!hooks_available()) return;
#ifndef _WIN32
  echo_config_t cfg;
  memset(&cfg, 0, sizeof cfg);
  echo_server_t *es = echo_start(&cfg);
  iocpsrv_t *srv = host_new(0);
  CHECK_OK(iocpsrv_start(srv));
  iocpsrv_conn_id_t id = 0;
  CHECK_OK(iocpsrv_connect(srv, SLOW_NAME, es->port, NULL, &id));
  CHECK_OK(tt_counter_wait(&dns_entered, 1, 5000));
  CHECK_OK(iocpsrv_disconnect(srv, id, IOCPSRV_CLOSE_ABORT));
  CHECK_OK(tt_counter_wait(&host.disconnects, 1, 5000)); /* without the answer */
  CHECK_EQ(host.last_reason, IOCPSRV_REASON_LOCAL_ABORT);
  CHECK_OK(test_wait_connections_now(srv, 0, 5000));
  tt_counter_add(&dns_release, 1);
  CHECK_OK(tt_counter_wait(&dns_left, 1, 5000));
  /* The next name attempt is served (the thread survived the stale answer). */
  CHECK_OK(iocpsrv_connect(srv, "localhost", es->port, NULL, &id));
  CHECK_OK(tt_counter_wait(&host.connects, 1, 5000));
  CHECK_OK(iocpsrv_stop(srv, 0));
  CHECK_EQ(tt_counter_get(&host.disconnects), 2);
  host_destroy();
  echo_finish(es);
#endif
}

/* The connect timeout covers the lookup. Passes. */
static void review_timeout_while_resolving(void) {
  if (!hooks_available()) return;
#ifndef _WIN32
  iocpsrv_t *srv = host_new(0);
  CHECK_OK(iocpsrv_set_option(srv, IOCPSRV_OPT_CONNECT_TIMEOUT_MS, 100));
  CHECK_OK(iocpsrv_start(srv));
  iocpsrv_conn_id_t id = 0;
  CHECK_OK(iocpsrv_connect(srv, SLOW_NAME, 80, NULL, &id));
  CHECK_OK(tt_counter_wait(&host.disconnects, 1, 5000));
  CHECK_EQ(host.last_reason, IOCPSRV_REASON_CONNECT_TIMEOUT);
  CHECK_EQ(tt_counter_get(&host.connects), 0);
  tt_counter_add(&dns_release, 1);
  CHECK_OK(tt_counter_wait(&dns_left, 1, 5000));
  CHECK_OK(iocpsrv_stop(srv, 0));
  host_destroy();
#endif
}

/* iocpsrv_stop(0) with a lookup hanging (a DNS server that does not answer: glibc
 * waits 5 s per try and server, Windows longer): the attempt itself ends at once, but
 * finish_stop joins the resolver thread, which is inside getaddrinfo. stop(0) and
 * iocpsrv_destroy hang for as long as the lookup does. */
#ifndef _WIN32
typedef struct stopper_s {
  iocpsrv_t *srv;
  tt_counter_t done;
  int rc;
} stopper_t;

static void stop_thread(void *arg) {
  stopper_t *s = (stopper_t *)arg;
  s->rc = iocpsrv_stop(s->srv, 0);
  tt_counter_add(&s->done, 1);
}
#endif

static void review_stop_while_resolving(void) {
  if (!hooks_available()) return;
#ifndef _WIN32
  iocpsrv_t *srv = host_new(0);
  CHECK_OK(iocpsrv_start(srv));
  iocpsrv_conn_id_t id = 0;
  CHECK_OK(iocpsrv_connect(srv, SLOW_NAME, 80, NULL, &id));
  CHECK_OK(tt_counter_wait(&dns_entered, 1, 5000));
  stopper_t s;
  memset(&s, 0, sizeof s);
  s.srv = srv;
  tt_counter_init(&s.done);
  tt_thread_t *t = tt_thread_start(stop_thread, &s);
  CHECK_OK(tt_counter_wait(&host.disconnects, 1, 5000)); /* the attempt ended at once */
  CHECK_EQ(host.last_reason, IOCPSRV_REASON_SERVER_STOPPED);
  int returned = tt_counter_wait(&s.done, 1, 2000) == 0;
  tt_counter_add(&dns_release, 1); /* let it go either way */
  tt_thread_join(t);
  tt_counter_destroy(&s.done);
  CHECK_OK(s.rc);
  CHECK_MSG(returned, "iocpsrv_stop(0) still waits for a lookup 2 s after its last "
                      "connection ended");
  host_destroy();
#endif
}

/* One name that takes long to resolve holds up every other name behind it on the one
 * resolver thread: "localhost" cannot be connected while SLOW_NAME hangs, and with a
 * connect timeout the innocent attempt times out. */
static void review_slow_name_holds_up_others(void) {
  if (!hooks_available()) return;
#ifndef _WIN32
  echo_config_t cfg;
  memset(&cfg, 0, sizeof cfg);
  echo_server_t *es = echo_start(&cfg);
  iocpsrv_t *srv = host_new(0);
  CHECK_OK(iocpsrv_set_option(srv, IOCPSRV_OPT_CONNECT_TIMEOUT_MS, 2000));
  CHECK_OK(iocpsrv_start(srv));
  iocpsrv_conn_id_t slow = 0, fast = 0;
  CHECK_OK(iocpsrv_connect(srv, SLOW_NAME, es->port, NULL, &slow));
  CHECK_OK(tt_counter_wait(&dns_entered, 1, 5000));
  CHECK_OK(iocpsrv_connect(srv, "localhost", es->port, NULL, &fast));
  int connected = tt_counter_wait(&host.connects, 1, 1500) == 0;
  tt_counter_add(&dns_release, 1);
  CHECK_OK(tt_counter_wait(&dns_left, 1, 5000));
  CHECK_MSG(connected, "a connect to \"localhost\" waited 1.5 s for another name's lookup");
  CHECK_OK(iocpsrv_stop(srv, 0));
  host_destroy();
  echo_finish(es);
#endif
}

/* Stop after name lookups, start again: the resolver thread is started again and
 * serves the next name; destroy with a name attempt in flight. Passes. */
static void review_restart_resolves_again(void) {
  echo_config_t cfg;
  memset(&cfg, 0, sizeof cfg);
  echo_server_t *es = echo_start(&cfg);
  iocpsrv_t *srv = host_new(0);
  for (int round = 0; round < 3; round++) {
    CHECK_OK(iocpsrv_start(srv));
    iocpsrv_conn_id_t id = 0;
    CHECK_OK(iocpsrv_connect(srv, "localhost", es->port, NULL, &id));
    CHECK_OK(tt_counter_wait(&host.connects, round + 1, 5000));
    CHECK_OK(iocpsrv_stop(srv, 0));
    CHECK_EQ(tt_counter_get(&host.disconnects), round + 1);
  }
  /* In flight at destroy: a name and a number. */
  CHECK_OK(iocpsrv_listen(srv, "127.0.0.1", 0));
  iocpsrv_conn_id_t id = 0;
  CHECK_OK(iocpsrv_connect(srv, "localhost", es->port, NULL, &id));
  CHECK_OK(iocpsrv_connect(srv, "127.0.0.1", iocpsrv_port(srv), NULL, &id));
  int64_t before = tt_counter_get(&host.disconnects);
  CHECK_OK(iocpsrv_destroy(srv));
  /* Each attempt made its one disconnect (the inbound side may have met one too). */
  CHECK_GE(tt_counter_get(&host.disconnects) - before, 2);
  host.srv = NULL;
  tt_counter_destroy(&host.connects);
  tt_counter_destroy(&host.disconnects);
  tt_mutex_destroy(&host.lock);
  echo_finish(es);
}

/* ---------------------------------------------------------- from callbacks ---- */

/* iocpsrv_connect from a connect callback and from a disconnect callback (of a failed
 * attempt and of an established one). Passes. */
static void review_connect_from_connect_and_disconnect_cb(void) {
  echo_config_t cfg;
  memset(&cfg, 0, sizeof cfg);
  echo_server_t *es = echo_start(&cfg);
  iocpsrv_t *srv = host_new(0);
  CHECK_OK(iocpsrv_start(srv));
  host.inner_port = es->port;
  host.connect_from_connect = 1;    /* the first connect callback opens one more */
  host.connect_from_disconnect = 1; /* the refused one's disconnect opens one more */
  iocpsrv_conn_id_t id = 0;
  CHECK_OK(iocpsrv_connect(srv, "127.0.0.1", ts_dead_port(), NULL, &id));
  CHECK_OK(tt_counter_wait(&host.connects, 1, 5000)); /* the one from the disconnect */
  CHECK_OK(tt_counter_wait(&host.connects, 2, 5000)); /* the one from the connect cb */
  tt_mutex_lock(&host.lock);
  int n = host.ninner;
  int r0 = host.inner_rc[0], r1 = host.inner_rc[1];
  tt_mutex_unlock(&host.lock);
  CHECK_EQ(n, 2);
  CHECK_OK(r0);
  CHECK_OK(r1);
  CHECK_EQ(host.reasons[IOCPSRV_REASON_CONNECT_REFUSED], 1);
  CHECK_OK(iocpsrv_stop(srv, 1000));
  CHECK_EQ(tt_counter_get(&host.disconnects), 3); /* refused, and two stopped */
  host_destroy();
  echo_finish(es);
}

/* iocpsrv_stop from a connect callback while other attempts hang (a full backlog) and
 * resolve: each ends with SERVER_STOPPED; a later stop from this thread joins. Passes. */
static void review_stop_from_callback_pending(void) {
  echo_config_t cfg;
  memset(&cfg, 0, sizeof cfg);
  echo_server_t *es = echo_start(&cfg);
  int port = 0;
  ts_sock_t l = ts_listen("127.0.0.1", 0, &port); /* never accepted: attempts complete */
  CHECK(l != TS_INVALID);
  iocpsrv_t *srv = host_new(0);
  CHECK_OK(iocpsrv_set_option(srv, IOCPSRV_OPT_CONNECT_TIMEOUT_MS, 0));
  CHECK_OK(iocpsrv_start(srv));
  /* Attempts that hang: a name whose lookup never finishes by itself is not
   * portable here; unroutable TEST-NET-1 hangs in SYN_SENT (or fails at once when
   * there is no route: either way each attempt gets its one disconnect). */
  iocpsrv_conn_id_t id = 0;
  for (int i = 0; i < 5; i++) CHECK_OK(iocpsrv_connect(srv, "192.0.2.1", 9, NULL, &id));
  for (int i = 0; i < 5; i++) CHECK_OK(iocpsrv_connect(srv, "localhost", es->port, NULL, &id));
  tt_mutex_lock(&host.lock);
  host.stop_in_connect_cb = 1;
  tt_mutex_unlock(&host.lock);
  CHECK_OK(iocpsrv_connect(srv, "127.0.0.1", port, NULL, &id));
  CHECK_OK(tt_counter_wait(&host.disconnects, 11, 10000));
  CHECK_OK(host.stop_rc);
  CHECK_OK(iocpsrv_stop(srv, 0)); /* finishes the stop the callback began */
  CHECK_EQ(tt_counter_get(&host.disconnects), 11);
  CHECK_EQ(test_stats(srv).connections_now, 0);
  CHECK_ERR(iocpsrv_connect(srv, "127.0.0.1", port, NULL, &id), IOCPSRV_ESTOPPED);
  host_destroy();
  ts_close(l);
  echo_finish(es);
}

/* --------------------------------------------------------------------- IPv6 ---- */

/* IOCPSRV_OPT_CONNECT_SOURCE "::1" to an IPv6 echo server (bracketed target); an
 * IPv4 numeric target is EADDRNOTAVAIL at the call. Passes. */
static void review_ipv6_source(void) {
  if (!ts_ipv6_available()) {
    test_skip("no IPv6 on this machine");
    return;
  }
  echo_config_t cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.host = "::1";
  echo_server_t *es = echo_start(&cfg);
  iocpsrv_t *srv = host_new(0);
  CHECK_OK(iocpsrv_set_option_str(srv, IOCPSRV_OPT_CONNECT_SOURCE, "::1"));
  char text[64];
  CHECK_EQ(iocpsrv_get_option_str(srv, IOCPSRV_OPT_CONNECT_SOURCE, text, sizeof text), 3);
  CHECK_STREQ(text, "::1");
  CHECK_OK(iocpsrv_start(srv));
  iocpsrv_conn_id_t id = 0;
  CHECK_ERR(iocpsrv_connect(srv, "127.0.0.1", es->port, NULL, &id), IOCPSRV_EADDRNOTAVAIL);
  CHECK_OK(iocpsrv_connect(srv, "[::1]", es->port, NULL, &id));
  CHECK_OK(tt_counter_wait(&host.connects, 1, 5000));
  iocpsrv_conn_info_t info = test_conn_info(srv, id);
  CHECK_EQ(strncmp(info.local, "[::1]:", 6), 0);
  CHECK_EQ(info.flags & (IOCPSRV_CONN_OUTBOUND | IOCPSRV_CONN_CONNECTING),
           IOCPSRV_CONN_OUTBOUND);
  CHECK_OK(iocpsrv_stop(srv, 0));
  host_destroy();
  echo_finish(es);
}

int main(int argc, char **argv) {
  test_init(argc, argv);
#ifndef _WIN32
  tt_counter_init(&peer_entered);
  tt_counter_init(&peer_release);
  tt_counter_init(&dns_entered);
  tt_counter_init(&dns_release);
  tt_counter_init(&dns_left);
#endif
  TEST_RUN(review_refuse_while_connect_completes);
  TEST_RUN(review_refuse_while_connect_completes_pull);
  TEST_RUN(review_abort_while_connect_completes);
  TEST_RUN(review_timeout_while_connect_completes);
  TEST_RUN(review_reconnect_from_disconnect_at_limit);
  TEST_RUN(review_disconnect_while_resolving);
  TEST_RUN(review_timeout_while_resolving);
  TEST_RUN(review_stop_while_resolving);
  TEST_RUN(review_slow_name_holds_up_others);
  TEST_RUN(review_restart_resolves_again);
  TEST_RUN(review_connect_from_connect_and_disconnect_cb);
  TEST_RUN(review_stop_from_callback_pending);
  TEST_RUN(review_ipv6_source);
  return test_done();
}
