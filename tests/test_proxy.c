/* test_proxy.c -- IOCPSRV_OPT_PROXY_PROTOCOL (HAProxy's PROXY header, v1 and v2), who
 * may send one (IOCPSRV_OPT_PROXY_TRUSTED), the per-source connection limit
 * (IOCPSRV_OPT_MAX_CONNECTIONS_PER_SOURCE) and IOCPSRV_OPT_REUSEPORT, on real sockets.
 * The addresses inside the headers are only text: no traffic goes to them.
 * (tests/haproxy/ runs a real haproxy in front.) */
#include <stdio.h>
#include <string.h>

#include "echo.h"
#include "test.h"

/* The log callback's lines (the setup hook registers it), for checking what was said
 * about a refused client. */
static tt_mutex_t g_log_lock;
static char g_log[8192];
static size_t g_log_len;

static void IOCPSRV_CALL record_log(iocpsrv_t *srv, int level, const char *message) {
  (void)srv;
  (void)level;
  tt_mutex_lock(&g_log_lock);
  int n = snprintf(g_log + g_log_len, sizeof g_log - g_log_len, "%s\n", message);
  if (n > 0 && g_log_len + (size_t)n < sizeof g_log) g_log_len += (size_t)n;
  tt_mutex_unlock(&g_log_lock);
}

static int log_has(const char *text) {
  tt_mutex_lock(&g_log_lock);
  int found = strstr(g_log, text) != NULL;
  tt_mutex_unlock(&g_log_lock);
  return found;
}

/* cfg.ctx: the IOCPSRV_OPT_PROXY_TRUSTED text (NULL: left at its default, nothing). */
static void setup_trust(echo_server_t *es) {
  tt_mutex_lock(&g_log_lock);
  g_log[0] = 0;
  g_log_len = 0;
  tt_mutex_unlock(&g_log_lock);
  CHECK_OK(iocpsrv_set_log_cb(es->srv, record_log));
  if (es->cfg.ctx)
    CHECK_OK(iocpsrv_set_option_str(es->srv, IOCPSRV_OPT_PROXY_TRUSTED, (const char *)es->cfg.ctx));
}

/* A PROXY server on `host` (NULL: 127.0.0.1) trusting `trusted`, with at most
 * `per_source` connections per client address (0: no limit). */
static echo_server_t *start_proxy_server_ex(int mode, const char *trusted, const char *host,
                                            int per_source) {
  echo_opt_t opts[2] = {{IOCPSRV_OPT_PROXY_PROTOCOL, mode},
                        {IOCPSRV_OPT_MAX_CONNECTIONS_PER_SOURCE, per_source}};
  echo_config_t cfg = {0};
  cfg.host = host;
  cfg.opts = opts;
  cfg.nopts = per_source ? 2 : 1;
  cfg.setup = setup_trust;
  cfg.ctx = (void *)trusted;
  return echo_start(&cfg);
}

/* The tests' clients connect from 127.0.0.1: they are the trusted "balancer". */
static echo_server_t *start_proxy_server(int mode) {
  return start_proxy_server_ex(mode, "127.0.0.1", NULL, 0);
}

static ts_sock_t connect_to(echo_server_t *es) {
  ts_sock_t s = ts_connect("127.0.0.1", es->port, TS_WAIT_MS);
  CHECK_MSG(s != TS_INVALID, "connect to port %d failed", es->port);
  return s;
}

static void expect_echo(ts_sock_t s, const char *text) {
  uint8_t buf[256];
  size_t got = 0;
  CHECK_EQ(ts_send_packet(s, text, strlen(text)), 0);
  CHECK_EQ(ts_recv_packet(s, buf, sizeof buf, &got, TS_WAIT_MS), 0);
  CHECK_EQ(got, strlen(text));
  CHECK(memcmp(buf, text, got) == 0);
}

/* The server's record of the only connection, once its connect callback ran. */
static echo_conn_t *only_conn(echo_server_t *es) {
  CHECK_EQ(tt_counter_wait(&es->connects, 1, TS_WAIT_MS), 0);
  tt_mutex_lock(&es->lock);
  echo_conn_t *c = es->all;
  tt_mutex_unlock(&es->lock);
  CHECK(c != NULL);
  return c;
}

static iocpsrv_conn_info_t info_of(echo_server_t *es, iocpsrv_conn_id_t id) {
  iocpsrv_conn_info_t info;
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  CHECK_OK(iocpsrv_conn_info(es->srv, id, &info));
  return info;
}

static void proxy_v1_split_over_writes(void) {
  echo_server_t *es = start_proxy_server(IOCPSRV_PROXY_REQUIRED);
  ts_sock_t s = connect_to(es);
  const char *hdr = "PROXY TCP4 192.0.2.1 127.0.0.1 56324 5000\r\n";
  CHECK_EQ(ts_send_all(s, hdr, 7), 0);
  tt_sleep_ms(20); /* pacing: make the pieces separate receives */
  CHECK_EQ(ts_send_all(s, hdr + 7, 20), 0);
  tt_sleep_ms(20);
  CHECK_EQ(ts_send_all(s, hdr + 27, strlen(hdr) - 27), 0);
  expect_echo(s, "after a v1 header");
  echo_conn_t *c = only_conn(es);
  CHECK_STREQ(c->peer, "192.0.2.1:56324");
  iocpsrv_conn_info_t info = info_of(es, c->id);
  CHECK_STREQ(info.peer, "192.0.2.1:56324");
  char local[80];
  CHECK_EQ(ts_local_addr(s, local, sizeof local), 0);
  CHECK_STREQ(info.proxy, local); /* the "balancer" is this client socket */
  ts_close(s);
  echo_finish(es);
}

/* A v2 header: signature, version/command, family, length, addresses, then TLVs. */
static size_t build_v2(uint8_t *out, int cmd, int fam, const uint8_t *addrs, size_t alen,
                       size_t tlv_bytes) {
  static const uint8_t sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                  0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
  memcpy(out, sig, 12);
  out[12] = (uint8_t)(0x20 | cmd);
  out[13] = (uint8_t)fam;
  size_t body = alen + tlv_bytes;
  out[14] = (uint8_t)(body >> 8);
  out[15] = (uint8_t)body;
  if (alen) memcpy(out + 16, addrs, alen);
  size_t i;
  for (i = 0; i < tlv_bytes; i++) out[16 + alen + i] = (uint8_t)(i == 0 ? 0x04 : 0xAB);
  return 16 + body;
}

static void proxy_v2_ipv6_with_tlvs_and_packets(void) {
  echo_server_t *es = start_proxy_server(IOCPSRV_PROXY_REQUIRED);
  ts_sock_t s = connect_to(es);
  uint8_t addrs[36] = {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
                       0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2,
                       0x01, 0xbb, 0x13, 0x88}; /* src port 443, dst port 5000 */
  uint8_t buf[512];
  size_t n = build_v2(buf, 1, 0x21, addrs, sizeof addrs, 40);
  /* The header and the first packet in one write. */
  buf[n] = 5;
  buf[n + 1] = buf[n + 2] = buf[n + 3] = 0;
  memcpy(buf + n + 4, "first", 5);
  CHECK_EQ(ts_send_all(s, buf, n + 9), 0);
  uint8_t in[16];
  size_t got = 0;
  CHECK_EQ(ts_recv_packet(s, in, sizeof in, &got, TS_WAIT_MS), 0);
  CHECK(got == 5 && memcmp(in, "first", 5) == 0);
  echo_conn_t *c = only_conn(es);
  CHECK_STREQ(c->peer, "[2001:db8::1]:443");
  ts_close(s);
  echo_finish(es);
}

static void proxy_v2_local_and_v1_unknown_keep_socket_address(void) {
  echo_server_t *es = start_proxy_server(IOCPSRV_PROXY_REQUIRED);
  ts_sock_t s = connect_to(es);
  uint8_t buf[64];
  size_t n = build_v2(buf, 0, 0x00, NULL, 0, 0); /* LOCAL: the balancer's own check */
  CHECK_EQ(ts_send_all(s, buf, n), 0);
  expect_echo(s, "health check");
  char local[80];
  CHECK_EQ(ts_local_addr(s, local, sizeof local), 0);
  echo_conn_t *c = only_conn(es);
  CHECK_STREQ(c->peer, local);
  ts_close(s);
  CHECK_EQ(echo_wait_disconnect(es, c, TS_WAIT_MS), 0);

  ts_sock_t u = connect_to(es);
  const char *unknown = "PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n";
  CHECK_EQ(ts_send_all(u, unknown, strlen(unknown)), 0);
  expect_echo(u, "unknown");
  ts_close(u);
  echo_finish(es);
}

/* Each bad opening is closed before the host hears of it, and counted. */
static void proxy_bad_headers_closed_and_counted(void) {
  static const char *bad[] = {
      "PROXY TCP4 300.1.1.1 127.0.0.1 1 2\r\n",        /* not an address */
      "PROXY TCP4 192.0.2.1 127.0.0.1 65536 2\r\n",    /* port out of range */
      "PROXY TCP5 192.0.2.1 127.0.0.1 1 2\r\n",        /* no such protocol */
      "PROXY TCP4 192.0.2.1 127.0.0.1 1\r\n",          /* a field missing */
      "\x04\x00\x00\x00ping",                          /* REQUIRED, but a plain packet */
  };
  echo_server_t *es = start_proxy_server(IOCPSRV_PROXY_REQUIRED);
  size_t i;
  for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    ts_sock_t s = connect_to(es);
    CHECK_EQ(ts_send_all(s, bad[i], strlen(bad[i]) + (i == 4 ? 4 : 0)), 0);
    int rc = ts_wait_close(s, TS_WAIT_MS, NULL);
    CHECK_MSG(rc == TS_EOF || rc == TS_RESET, "bad header %d: %s", (int)i, ts_strerror(rc));
    ts_close(s);
  }
  /* A v1 line with no end within 107 bytes. */
  ts_sock_t s = connect_to(es);
  char longline[200];
  memset(longline, 'A', sizeof longline);
  memcpy(longline, "PROXY TCP4 ", 11);
  CHECK_EQ(ts_send_all(s, longline, sizeof longline), 0);
  int rc = ts_wait_close(s, TS_WAIT_MS, NULL);
  CHECK(rc == TS_EOF || rc == TS_RESET);
  ts_close(s);
  /* Gone before the header was complete. */
  ts_sock_t early = connect_to(es);
  CHECK_EQ(ts_send_all(early, "PROXY TCP4 19", 13), 0);
  ts_close(early);

  ECHO_CHECK_STAT(es, protocol_errors, 6);
  ECHO_CHECK_STAT(es, connections_now, 0);
  CHECK_EQ(tt_counter_get(&es->connects), 0); /* the host never heard of any of them */
  CHECK_EQ(tt_counter_get(&es->disconnects), 0);
  /* A good client is unaffected. */
  ts_sock_t good = connect_to(es);
  const char *hdr = "PROXY TCP4 198.51.100.7 127.0.0.1 1234 5000\r\n";
  CHECK_EQ(ts_send_all(good, hdr, strlen(hdr)), 0);
  expect_echo(good, "still fine");
  ts_close(good);
  echo_finish(es);
}

static void proxy_optional_serves_plain_clients(void) {
  echo_server_t *es = start_proxy_server(IOCPSRV_PROXY_OPTIONAL);
  ts_sock_t plain = connect_to(es);
  expect_echo(plain, "no header here");
  char local[80];
  CHECK_EQ(ts_local_addr(plain, local, sizeof local), 0);
  echo_conn_t *c = only_conn(es);
  CHECK_STREQ(c->peer, local);
  CHECK_STREQ(info_of(es, c->id).proxy, "");
  ts_close(plain);
  CHECK_EQ(echo_wait_disconnect(es, c, TS_WAIT_MS), 0);
  ts_sock_t viahdr = connect_to(es);
  const char *hdr = "PROXY TCP6 2001:db8::7 2001:db8::8 40000 5000\r\n";
  CHECK_EQ(ts_send_all(viahdr, hdr, strlen(hdr)), 0);
  expect_echo(viahdr, "with a header");
  ts_close(viahdr);
  CHECK_EQ(tt_counter_wait(&es->disconnects, 2, TS_WAIT_MS), 0);
  int found = 0;
  tt_mutex_lock(&es->lock);
  for (c = es->all; c; c = c->next_all) found += strcmp(c->peer, "[2001:db8::7]:40000") == 0;
  tt_mutex_unlock(&es->lock);
  CHECK_EQ(found, 1);
  echo_finish(es);
}

static void proxy_header_that_never_comes_is_dropped(void) {
  static echo_opt_t opts[] = {{IOCPSRV_OPT_PROXY_PROTOCOL, IOCPSRV_PROXY_REQUIRED},
                              {IOCPSRV_OPT_CLOSE_TIMEOUT_MS, 200}};
  echo_config_t cfg = {0};
  cfg.opts = opts;
  cfg.nopts = 2;
  cfg.setup = setup_trust;
  cfg.ctx = (void *)"127.0.0.1";
  echo_server_t *es = echo_start(&cfg);
  ts_sock_t silent = connect_to(es);
  ts_sock_t partial = connect_to(es);
  CHECK_EQ(ts_send_all(partial, "PROXY TCP4 192.0.2.1", 20), 0);
  int rc = ts_wait_close(silent, TS_WAIT_MS, NULL);
  CHECK_MSG(rc == TS_EOF || rc == TS_RESET, "silent client: %s", ts_strerror(rc));
  rc = ts_wait_close(partial, TS_WAIT_MS, NULL);
  CHECK_MSG(rc == TS_EOF || rc == TS_RESET, "partial header: %s", ts_strerror(rc));
  ts_close(silent);
  ts_close(partial);
  ECHO_CHECK_STAT(es, protocol_errors, 2);
  ECHO_CHECK_STAT(es, connections_now, 0);
  CHECK_EQ(tt_counter_get(&es->connects), 0);
  echo_finish(es);
}

/* ---- Trust: PROXY headers only from IOCPSRV_OPT_PROXY_TRUSTED ---- */

/* Whether the host ever met a client under `peer`. */
static int host_saw_peer(echo_server_t *es, const char *peer) {
  int found = 0;
  tt_mutex_lock(&es->lock);
  echo_conn_t *c;
  for (c = es->all; c; c = c->next_all) found += strcmp(c->peer, peer) == 0;
  tt_mutex_unlock(&es->lock);
  return found;
}

/* A client that claims to be 6.6.6.6 in a header and then sends a packet: the server
 * must close it without echoing. */
static void spoof_is_refused(echo_server_t *es, const char *host, const char *what) {
  ts_sock_t s = ts_connect(host, es->port, TS_WAIT_MS);
  CHECK_MSG(s != TS_INVALID, "connect to [%s]:%d failed", host, es->port);
  const char *hdr = "PROXY TCP4 6.6.6.6 127.0.0.1 6666 5000\r\n";
  /* Either may fail: REQUIRED closes the connection as soon as it is accepted. */
  if (ts_send_all(s, hdr, strlen(hdr)) == 0) (void)ts_send_packet(s, "spoof", 5);
  uint8_t buf[64];
  size_t got = 0;
  int rc = ts_recv_packet(s, buf, sizeof buf, &got, TS_WAIT_MS);
  CHECK_MSG(rc == TS_EOF || rc == TS_RESET,
            "%s: a spoofed PROXY header from an untrusted peer was %s (%s)", what,
            rc == 0 ? "accepted: its packet was echoed" : "not closed", ts_strerror(rc));
  ts_close(s);
}

/* The default trusts nobody: REQUIRED closes every client, OPTIONAL every header. */
static void proxy_spoof_required_untrusted_is_closed(void) {
  echo_server_t *es = start_proxy_server_ex(IOCPSRV_PROXY_REQUIRED, NULL, NULL, 0);
  spoof_is_refused(es, "127.0.0.1", "REQUIRED, default trust");
  ECHO_CHECK_STAT(es, protocol_errors, 1);
  ECHO_CHECK_STAT(es, proxy_untrusted, 1);
  ECHO_CHECK_STAT(es, connections_now, 0);
  CHECK_EQ(tt_counter_get(&es->connects), 0);
  CHECK(!host_saw_peer(es, "6.6.6.6:6666"));
  ECHO_WAIT_FOR(log_has("not in IOCPSRV_OPT_PROXY_TRUSTED"));
  CHECK_MSG(log_has("not in IOCPSRV_OPT_PROXY_TRUSTED"), "log: %.300s", g_log);
  CHECK(log_has("IOCPSRV_OPT_PROXY_TRUSTED is empty")); /* listen's warning */
  CHECK(!log_has("6.6.6.6"));
  echo_finish(es);

  /* Trusting others (an IPv4 range, an IPv6 address) does not trust 127.0.0.1. */
  es = start_proxy_server_ex(IOCPSRV_PROXY_REQUIRED, "10.0.0.0/8, ::1 192.168.0.0/16", NULL, 0);
  spoof_is_refused(es, "127.0.0.1", "REQUIRED, 127.0.0.1 not trusted");
  /* Even a plain client: REQUIRED means through a trusted balancer only. */
  ts_sock_t plain = connect_to(es);
  int rc = ts_wait_close(plain, TS_WAIT_MS, NULL);
  CHECK_MSG(rc == TS_EOF || rc == TS_RESET, "plain client: %s", ts_strerror(rc));
  ts_close(plain);
  ECHO_CHECK_STAT(es, protocol_errors, 2);
  ECHO_CHECK_STAT(es, proxy_untrusted, 2);
  ECHO_CHECK_STAT(es, connections_now, 0);
  CHECK_EQ(tt_counter_get(&es->connects), 0);
  CHECK_EQ(tt_counter_get(&es->disconnects), 0);
  CHECK(!log_has("IOCPSRV_OPT_PROXY_TRUSTED is empty"));
  echo_finish(es);
}

static void proxy_spoof_optional_untrusted_is_closed(void) {
  echo_server_t *es = start_proxy_server_ex(IOCPSRV_PROXY_OPTIONAL, NULL, NULL, 0);
  spoof_is_refused(es, "127.0.0.1", "OPTIONAL, default trust");
  ECHO_CHECK_STAT(es, proxy_untrusted, 1);
  CHECK_EQ(tt_counter_get(&es->connects), 0);
  echo_finish(es);

  es = start_proxy_server_ex(IOCPSRV_PROXY_OPTIONAL, "10.0.0.0/8", NULL, 0);
  spoof_is_refused(es, "127.0.0.1", "OPTIONAL, 127.0.0.1 not trusted");
  /* Split over two writes: refused once the header is whole, never before the host. */
  ts_sock_t split = connect_to(es);
  const char *hdr = "PROXY TCP4 6.6.6.7 127.0.0.1 6666 5000\r\n";
  CHECK_EQ(ts_send_all(split, hdr, 9), 0);
  tt_sleep_ms(20); /* pacing: two receives */
  CHECK_EQ(ts_send_all(split, hdr + 9, strlen(hdr) - 9), 0);
  int rc = ts_wait_close(split, TS_WAIT_MS, NULL);
  CHECK_MSG(rc == TS_EOF || rc == TS_RESET, "split header: %s", ts_strerror(rc));
  ts_close(split);
  ECHO_CHECK_STAT(es, protocol_errors, 2);
  ECHO_CHECK_STAT(es, proxy_untrusted, 2);
  CHECK_EQ(tt_counter_get(&es->connects), 0);
  CHECK(log_has("PROXY header from a peer not in IOCPSRV_OPT_PROXY_TRUSTED"));
  CHECK(!log_has("6.6.6."));
  /* A plain client from the same untrusted peer is served as itself. */
  ts_sock_t plain = connect_to(es);
  expect_echo(plain, "plain, untrusted, optional");
  char local[80];
  CHECK_EQ(ts_local_addr(plain, local, sizeof local), 0);
  echo_conn_t *c = only_conn(es);
  CHECK_STREQ(c->peer, local);
  CHECK_STREQ(info_of(es, c->id).proxy, "");
  ts_close(plain);
  CHECK_EQ(echo_wait_disconnect(es, c, TS_WAIT_MS), 0);
  CHECK(!host_saw_peer(es, "6.6.6.6:6666") && !host_saw_peer(es, "6.6.6.7:6666"));
  ECHO_CHECK_STAT(es, protocol_errors, 2);
  echo_finish(es);
}

/* The same header from a trusted peer names the client; ranges, /32 and the IPv4
 * form of a dual-stack listener's mapped peers all match. */
static void proxy_trusted_peer_header_accepted(void) {
  static const char *lists[] = {"127.0.0.1", "127.0.0.0/8", "10.0.0.0/8,127.0.0.1/32",
                                "::ffff:127.0.0.0/104", "0.0.0.0/0", "::/0"};
  size_t i;
  for (i = 0; i < sizeof lists / sizeof lists[0]; i++) {
    echo_server_t *es = start_proxy_server_ex(IOCPSRV_PROXY_REQUIRED, lists[i], NULL, 0);
    ts_sock_t s = connect_to(es);
    const char *hdr = "PROXY TCP4 6.6.6.6 127.0.0.1 6666 5000\r\n";
    CHECK_EQ(ts_send_all(s, hdr, strlen(hdr)), 0);
    expect_echo(s, lists[i]);
    CHECK_STREQ(only_conn(es)->peer, "6.6.6.6:6666");
    ts_close(s);
    ECHO_CHECK_STAT(es, protocol_errors, 0);
    echo_finish(es);
  }
  if (!ts_ipv6_available()) {
    test_skip("::1 is not available: IPv6 trust not checked");
    return;
  }
  /* A dual-stack listener sees 127.0.0.1 as ::ffff:127.0.0.1: "127.0.0.1" matches it,
   * "::1" does not. */
  echo_server_t *es = start_proxy_server_ex(IOCPSRV_PROXY_REQUIRED, "127.0.0.1", "::", 0);
  ts_sock_t s = connect_to(es);
  const char *hdr = "PROXY TCP4 6.6.6.6 127.0.0.1 6666 5000\r\n";
  CHECK_EQ(ts_send_all(s, hdr, strlen(hdr)), 0);
  expect_echo(s, "v4-mapped peer, IPv4 entry");
  ts_close(s);
  echo_finish(es);
  es = start_proxy_server_ex(IOCPSRV_PROXY_REQUIRED, "::1", "::", 0);
  spoof_is_refused(es, "127.0.0.1", "v4-mapped peer, only ::1 trusted");
  ECHO_CHECK_STAT(es, proxy_untrusted, 1);
  echo_finish(es);
  /* IPv6 peers: ::1 trusted by "::1" and by "::/0", not by IPv4 entries. */
  static const char *v6ok[] = {"::1", "::1/128", "::/0", "10.0.0.0/8 ::1"};
  for (i = 0; i < sizeof v6ok / sizeof v6ok[0]; i++) {
    es = start_proxy_server_ex(IOCPSRV_PROXY_OPTIONAL, v6ok[i], "::1", 0);
    s = ts_connect("::1", es->port, TS_WAIT_MS);
    CHECK(s != TS_INVALID);
    const char *h6 = "PROXY TCP6 2001:db8::66 ::1 6666 5000\r\n";
    CHECK_EQ(ts_send_all(s, h6, strlen(h6)), 0);
    expect_echo(s, v6ok[i]);
    CHECK_STREQ(only_conn(es)->peer, "[2001:db8::66]:6666");
    ts_close(s);
    echo_finish(es);
  }
  static const char *v6no[] = {"127.0.0.1", "0.0.0.0/0", "::2", "fd00::/8"};
  for (i = 0; i < sizeof v6no / sizeof v6no[0]; i++) {
    es = start_proxy_server_ex(IOCPSRV_PROXY_OPTIONAL, v6no[i], "::1", 0);
    spoof_is_refused(es, "::1", v6no[i]);
    ECHO_CHECK_STAT(es, proxy_untrusted, 1);
    CHECK_EQ(tt_counter_get(&es->connects), 0);
    echo_finish(es);
  }
}

/* The list's syntax: what is accepted, how it reads back, what is refused (and leaves
 * the option as it was). */
static void proxy_trusted_option_parsing(void) {
  static const struct { const char *in, *out; } good[] = {
      {NULL, ""},
      {"", ""},
      {" , ,\t\n", ""},
      {"127.0.0.1", "127.0.0.1/32"},
      {"10.1.2.3/8", "10.0.0.0/8"},
      {"0.0.0.0/0", "0.0.0.0/0"},
      {"255.255.255.255/32", "255.255.255.255/32"},
      {"192.168.1.77/31", "192.168.1.76/31"},
      {"::1", "::1/128"},
      {"::/0", "::/0"},
      {"fd00::/8", "fd00::/8"},
      {"2001:db8::ff/127", "2001:db8::fe/127"},
      {"::ffff:10.0.0.0/104", "::ffff:10.0.0.0/104"},
      {"10.0.0.0/8, 127.0.0.1 ::1,fd00::/8", "10.0.0.0/8, 127.0.0.1/32, ::1/128, fd00::/8"},
  };
  static const char *bad[] = {
      "10.0.0.0/33", "::1/129", "10.0.0.0/", "/8", "10.0.0", "10.0.0.256", "010.0.0.1",
      "10.0.0.1/08", "10.0.0.1/-1", "10.0.0.1/+8", "1.2.3.4/8/8", "1.2.3.4.5", "abc",
      "fe80::1%eth0", "::1::2", "[::1]", "127.0.0.1:80", "10.0.0.0 /8", "127.0.0.1, x",
      "1.2.3.4/1000",
  };
  iocpsrv_t *srv = NULL;
  CHECK_OK(iocpsrv_create(&srv, NULL));
  char buf[256];
  /* Default: nothing trusted, no per-source limit. */
  CHECK_EQ(iocpsrv_get_option_str(srv, IOCPSRV_OPT_PROXY_TRUSTED, buf, sizeof buf), 0);
  CHECK_STREQ(buf, "");
  int64_t v = -1;
  CHECK_OK(iocpsrv_get_option(srv, IOCPSRV_OPT_MAX_CONNECTIONS_PER_SOURCE, &v));
  CHECK_EQ(v, 0);
  size_t i;
  for (i = 0; i < sizeof good / sizeof good[0]; i++) {
    CHECK_MSG(iocpsrv_set_option_str(srv, IOCPSRV_OPT_PROXY_TRUSTED, good[i].in) == 0,
              "\"%s\" refused", good[i].in ? good[i].in : "(null)");
    int64_t n = iocpsrv_get_option_str(srv, IOCPSRV_OPT_PROXY_TRUSTED, buf, sizeof buf);
    CHECK_EQ(n, (int64_t)strlen(good[i].out));
    CHECK_STREQ(buf, good[i].out);
  }
  CHECK_OK(iocpsrv_set_option_str(srv, IOCPSRV_OPT_PROXY_TRUSTED, "127.0.0.1, ::1"));
  for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    CHECK_MSG(iocpsrv_set_option_str(srv, IOCPSRV_OPT_PROXY_TRUSTED, bad[i]) == IOCPSRV_EINVAL,
              "\"%s\" accepted", bad[i]);
    CHECK_EQ(iocpsrv_get_option_str(srv, IOCPSRV_OPT_PROXY_TRUSTED, buf, sizeof buf), 21);
    CHECK_STREQ(buf, "127.0.0.1/32, ::1/128"); /* unchanged */
  }
  /* snprintf-style reading: the length with no buffer, a truncated copy. */
  CHECK_EQ(iocpsrv_get_option_str(srv, IOCPSRV_OPT_PROXY_TRUSTED, NULL, 0), 21);
  CHECK_EQ(iocpsrv_get_option_str(srv, IOCPSRV_OPT_PROXY_TRUSTED, buf, 6), 21);
  CHECK_STREQ(buf, "127.0");
  CHECK_EQ(iocpsrv_get_option_str(srv, IOCPSRV_OPT_PROXY_TRUSTED, NULL, 5), IOCPSRV_EINVAL);
  /* String and int options do not mix; unknown ones are unknown. */
  CHECK_ERR(iocpsrv_set_option(srv, IOCPSRV_OPT_PROXY_TRUSTED, 1), IOCPSRV_EINVAL);
  CHECK_ERR(iocpsrv_get_option(srv, IOCPSRV_OPT_PROXY_TRUSTED, &v), IOCPSRV_EINVAL);
  CHECK_ERR(iocpsrv_set_option_str(srv, IOCPSRV_OPT_MAX_CONNECTIONS_PER_SOURCE, "3"),
            IOCPSRV_EINVAL);
  CHECK_ERR(iocpsrv_get_option_str(srv, IOCPSRV_OPT_MAX_CONNECTIONS_PER_SOURCE, buf, sizeof buf),
            IOCPSRV_EINVAL);
  CHECK_ERR(iocpsrv_set_option_str(srv, 9999, "x"), IOCPSRV_EUNKNOWNOPT);
  CHECK_ERR(iocpsrv_get_option_str(srv, 9999, buf, sizeof buf), IOCPSRV_EUNKNOWNOPT);
  CHECK_ERR(iocpsrv_set_option_str(NULL, IOCPSRV_OPT_PROXY_TRUSTED, ""), IOCPSRV_EINVAL);
  CHECK_ERR(iocpsrv_set_option(srv, IOCPSRV_OPT_MAX_CONNECTIONS_PER_SOURCE, -1), IOCPSRV_ERANGE);
  CHECK_ERR(iocpsrv_set_option(srv, IOCPSRV_OPT_MAX_CONNECTIONS_PER_SOURCE, 16777216),
            IOCPSRV_ERANGE);
  CHECK_OK(iocpsrv_set_option(srv, IOCPSRV_OPT_MAX_CONNECTIONS_PER_SOURCE, 16777215));
  /* Only while stopped, like every option; readable while running. */
  CHECK_OK(iocpsrv_listen(srv, "127.0.0.1", 0));
  CHECK_ERR(iocpsrv_set_option_str(srv, IOCPSRV_OPT_PROXY_TRUSTED, "10.0.0.1"), IOCPSRV_ESTATE);
  CHECK_EQ(iocpsrv_get_option_str(srv, IOCPSRV_OPT_PROXY_TRUSTED, buf, sizeof buf), 21);
  CHECK_OK(iocpsrv_stop(srv, 0));
  CHECK_OK(iocpsrv_set_option_str(srv, IOCPSRV_OPT_PROXY_TRUSTED, "10.0.0.1"));
  CHECK_OK(iocpsrv_destroy(srv));
}

/* ---- IOCPSRV_OPT_MAX_CONNECTIONS_PER_SOURCE ---- */

/* The server must close `s` at once, without a word to the host. */
static void expect_refused(ts_sock_t s, const char *what) {
  uint8_t buf[16];
  size_t got = 0;
  int rc = ts_recv_packet(s, buf, sizeof buf, &got, TS_WAIT_MS);
  CHECK_MSG(rc == TS_EOF || rc == TS_RESET, "%s: not closed (%s)", what, ts_strerror(rc));
}

static void per_source_limit_plain(void) {
  echo_opt_t opts[] = {{IOCPSRV_OPT_MAX_CONNECTIONS_PER_SOURCE, 3}};
  echo_config_t cfg = {0};
  cfg.opts = opts;
  cfg.nopts = 1;
  cfg.setup = setup_trust;
  echo_server_t *es = echo_start(&cfg);
  ts_sock_t s[4];
  int i;
  for (i = 0; i < 3; i++) {
    s[i] = connect_to(es);
    expect_echo(s[i], "within the limit");
  }
  ts_sock_t extra = connect_to(es);
  (void)ts_send_packet(extra, "one too many", 12);
  expect_refused(extra, "the 4th client from 127.0.0.1");
  ts_close(extra);
  ECHO_CHECK_STAT(es, connections_refused, 1);
  ECHO_CHECK_STAT(es, source_refusals, 1);
  ECHO_CHECK_STAT(es, connections_now, 3);
  CHECK_EQ(tt_counter_get(&es->connects), 3);
  CHECK(log_has("IOCPSRV_OPT_MAX_CONNECTIONS_PER_SOURCE"));
  /* One leaves: its address may connect again as soon as the host hears it left. */
  echo_conn_t *first = echo_conn_for(es, s[0]);
  CHECK(first != NULL);
  ts_close(s[0]);
  CHECK_EQ(echo_wait_disconnect(es, first, TS_WAIT_MS), 0);
  s[0] = connect_to(es);
  expect_echo(s[0], "a slot freed");
  s[3] = connect_to(es);
  expect_refused(s[3], "the 4th client again");
  ts_close(s[3]);
  ECHO_CHECK_STAT(es, source_refusals, 2);
  ECHO_CHECK_STAT(es, connections_refused, 2);
  for (i = 0; i < 3; i++) ts_close(s[i]);
  CHECK_EQ(tt_counter_wait(&es->disconnects, 4, TS_WAIT_MS), 0);
  CHECK_EQ(tt_counter_get(&es->connects), 4); /* the refused ones never reached the host */
  echo_finish(es);
}

/* One PROXY connection from 127.0.0.1 (the trusted balancer) naming `src`. */
static ts_sock_t via_balancer(echo_server_t *es, const char *family, const char *src, int sport) {
  ts_sock_t s = connect_to(es);
  char hdr[128];
  snprintf(hdr, sizeof hdr, "PROXY %s %s %s %d 5000\r\n", family, src,
           strcmp(family, "TCP6") == 0 ? "::1" : "127.0.0.1", sport);
  CHECK_EQ(ts_send_all(s, hdr, strlen(hdr)), 0);
  return s;
}

static void per_source_limit_keyed_on_proxy_address(void) {
  echo_server_t *es = start_proxy_server_ex(IOCPSRV_PROXY_REQUIRED, "127.0.0.1", NULL, 2);
  ts_sock_t a[3], b[2], v6[3], local[3];
  int i;
  for (i = 0; i < 2; i++) {
    a[i] = via_balancer(es, "TCP4", "192.0.2.1", 1000 + i);
    expect_echo(a[i], "client 192.0.2.1");
  }
  a[2] = via_balancer(es, "TCP4", "192.0.2.1", 1002);
  expect_refused(a[2], "a 3rd connection named 192.0.2.1");
  ts_close(a[2]);
  ECHO_CHECK_STAT(es, source_refusals, 1);
  ECHO_CHECK_STAT(es, connections_refused, 1);
  /* Another client through the same balancer has its own quota: the balancer's
   * address (already 3 connections) is not what is counted. */
  for (i = 0; i < 2; i++) {
    b[i] = via_balancer(es, "TCP4", "192.0.2.2", 2000 + i);
    expect_echo(b[i], "client 192.0.2.2");
  }
  for (i = 0; i < 2; i++) {
    v6[i] = via_balancer(es, "TCP6", "2001:db8::1", 3000 + i);
    expect_echo(v6[i], "client 2001:db8::1");
  }
  v6[2] = via_balancer(es, "TCP6", "2001:db8::1", 3002);
  expect_refused(v6[2], "a 3rd connection named 2001:db8::1");
  ts_close(v6[2]);
  ECHO_CHECK_STAT(es, source_refusals, 2);
  /* Headers that name nobody (the balancer's health checks) are not counted. */
  for (i = 0; i < 3; i++) {
    uint8_t buf[64];
    size_t n = build_v2(buf, 0, 0x00, NULL, 0, 0);
    local[i] = connect_to(es);
    CHECK_EQ(ts_send_all(local[i], buf, n), 0);
    expect_echo(local[i], "health check");
  }
  CHECK_EQ(tt_counter_get(&es->connects), 9);
  CHECK(!host_saw_peer(es, "192.0.2.1:1002") && !host_saw_peer(es, "[2001:db8::1]:3002"));
  /* 192.0.2.1 leaves once: it may come back once. */
  echo_conn_t *gone = echo_wait_peer(es, "192.0.2.1:1000", TS_WAIT_MS);
  CHECK(gone != NULL);
  ts_close(a[0]);
  CHECK_EQ(echo_wait_disconnect(es, gone, TS_WAIT_MS), 0);
  a[0] = via_balancer(es, "TCP4", "192.0.2.1", 1003);
  expect_echo(a[0], "192.0.2.1 again");
  ECHO_CHECK_STAT(es, source_refusals, 2);
  ECHO_CHECK_STAT(es, protocol_errors, 0);
  for (i = 0; i < 2; i++) {
    ts_close(a[i]);
    ts_close(b[i]);
    ts_close(v6[i]);
  }
  for (i = 0; i < 3; i++) ts_close(local[i]);
  CHECK_EQ(tt_counter_wait(&es->disconnects, 10, TS_WAIT_MS), 0);
  CHECK_EQ(tt_counter_get(&es->connects), 10);
  echo_finish(es);
}

static void reuseport_option(void) {
  iocpsrv_t *a = NULL, *b = NULL;
  CHECK_OK(iocpsrv_create(&a, NULL));
  CHECK_OK(iocpsrv_create(&b, NULL));
  CHECK_OK(iocpsrv_set_option(a, IOCPSRV_OPT_REUSEPORT, 1));
  CHECK_OK(iocpsrv_set_option(b, IOCPSRV_OPT_REUSEPORT, 1));
#ifdef _WIN32
  CHECK_ERR(iocpsrv_listen(a, "127.0.0.1", 0), IOCPSRV_ENOTSUP);
#else
  CHECK_OK(iocpsrv_listen(a, "127.0.0.1", 0));
  /* A second process (here: server) on the same port; the kernel spreads clients. */
  CHECK_OK(iocpsrv_listen(b, "127.0.0.1", iocpsrv_port(a)));
  CHECK_EQ(iocpsrv_port(b), iocpsrv_port(a));
  CHECK_OK(iocpsrv_stop(b, 0));
  CHECK_OK(iocpsrv_stop(a, 0));
#endif
  CHECK_OK(iocpsrv_destroy(a));
  CHECK_OK(iocpsrv_destroy(b));
}

int main(int argc, char **argv) {
  test_init(argc, argv);
  tt_mutex_init(&g_log_lock);
  TEST_RUN(proxy_v1_split_over_writes);
  TEST_RUN(proxy_v2_ipv6_with_tlvs_and_packets);
  TEST_RUN(proxy_v2_local_and_v1_unknown_keep_socket_address);
  TEST_RUN(proxy_bad_headers_closed_and_counted);
  TEST_RUN(proxy_optional_serves_plain_clients);
  TEST_RUN(proxy_header_that_never_comes_is_dropped);
  TEST_RUN(proxy_spoof_required_untrusted_is_closed);
  TEST_RUN(proxy_spoof_optional_untrusted_is_closed);
  TEST_RUN(proxy_trusted_peer_header_accepted);
  TEST_RUN(proxy_trusted_option_parsing);
  TEST_RUN(per_source_limit_plain);
  TEST_RUN(per_source_limit_keyed_on_proxy_address);
  TEST_RUN(reuseport_option);
  return test_done();
}
