/* test_proxy.c -- IOCPSRV_OPT_PROXY_PROTOCOL (HAProxy's PROXY header, v1 and v2) and
 * IOCPSRV_OPT_REUSEPORT, on real sockets. The addresses inside the headers are only
 * text: no traffic goes to them. (tests/haproxy/ runs a real haproxy in front.) */
#include <stdio.h>
#include <string.h>

#include "echo.h"
#include "test.h"

static echo_server_t *start_proxy_server(int mode) {
  static echo_opt_t opts[1];
  opts[0].option = IOCPSRV_OPT_PROXY_PROTOCOL;
  opts[0].value = mode;
  echo_config_t cfg = {0};
  cfg.opts = opts;
  cfg.nopts = 1;
  return echo_start(&cfg);
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
  TEST_RUN(proxy_v1_split_over_writes);
  TEST_RUN(proxy_v2_ipv6_with_tlvs_and_packets);
  TEST_RUN(proxy_v2_local_and_v1_unknown_keep_socket_address);
  TEST_RUN(proxy_bad_headers_closed_and_counted);
  TEST_RUN(proxy_optional_serves_plain_clients);
  TEST_RUN(proxy_header_that_never_comes_is_dropped);
  TEST_RUN(reuseport_option);
  return test_done();
}
