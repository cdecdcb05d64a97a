#include "core/options.h"

#include <stddef.h>

#include <stdio.h>
#include <string.h>

#include "iocpsrv.h"

void srv_options_init(srv_options_t *o) {
  o->worker_threads = 0;
  o->concurrency = 0;
  o->listen_backlog = 0;
  o->accepts_posted = 32;
  o->max_connections = 10000;
  o->max_packet_size = 1 << 20;
  o->framing = IOCPSRV_FRAMING_LEN32_LE;
  o->send_queue_limit = 4 << 20;
  o->idle_timeout_ms = 0;
  o->keepalive_ms = 0;
  o->nodelay = 1;
  o->rcvbuf = 0;
  o->sndbuf = 0;
  o->read_buffer = 65536;
  o->pull_mode = 0;
  o->pull_queue_limit = 8192;
  o->close_timeout_ms = 5000;
  o->ipv6_only = 0;
  o->pool_min = 0;
  o->pool_max = 0;
  o->pool_busy_ms = 200;
  o->pool_idle_ms = 5000;
  o->pool_cpu_high = 0;
  o->pool_cpu_low = 0;
  o->pull_batch_sends = 0;
  o->proxy_protocol = IOCPSRV_PROXY_OFF;
  o->reuseport = 0;
  o->max_connections_per_source = 0;
  o->proxy_trusted.v = NULL;
  o->proxy_trusted.n = 0;
  o->connect_timeout_ms = 10000;
  memset(&o->connect_source, 0, sizeof o->connect_source);
  o->connect_source_len = 0;
}

typedef struct option_desc_s {
  int option;
  size_t offset;
  int64_t min, max;
} option_desc_t;

#define OPT_(id, field, lo, hi) {id, offsetof(srv_options_t, field), lo, hi}
static const option_desc_t option_table[] = {
    OPT_(IOCPSRV_OPT_WORKER_THREADS, worker_threads, 0, 1024),
    OPT_(IOCPSRV_OPT_CONCURRENCY, concurrency, 0, 1024),
    OPT_(IOCPSRV_OPT_LISTEN_BACKLOG, listen_backlog, 0, 65535),
    OPT_(IOCPSRV_OPT_ACCEPTS_POSTED, accepts_posted, 1, 1024),
    OPT_(IOCPSRV_OPT_MAX_CONNECTIONS, max_connections, 1, 16777215),
    OPT_(IOCPSRV_OPT_MAX_PACKET_SIZE, max_packet_size, 1, 1 << 30),
    OPT_(IOCPSRV_OPT_FRAMING, framing, IOCPSRV_FRAMING_LEN32_LE, IOCPSRV_FRAMING_RAW),
    OPT_(IOCPSRV_OPT_SEND_QUEUE_LIMIT, send_queue_limit, 1, INT64_C(1) << 40),
    OPT_(IOCPSRV_OPT_IDLE_TIMEOUT_MS, idle_timeout_ms, 0, INT64_C(1) << 40),
    OPT_(IOCPSRV_OPT_KEEPALIVE_MS, keepalive_ms, 0, INT64_C(1) << 31),
    OPT_(IOCPSRV_OPT_NODELAY, nodelay, 0, 1),
    OPT_(IOCPSRV_OPT_RCVBUF, rcvbuf, 0, 1 << 30),
    OPT_(IOCPSRV_OPT_SNDBUF, sndbuf, 0, 1 << 30),
    OPT_(IOCPSRV_OPT_READ_BUFFER, read_buffer, 512, 16 << 20),
    OPT_(IOCPSRV_OPT_PULL_MODE, pull_mode, 0, 1),
    OPT_(IOCPSRV_OPT_PULL_QUEUE_LIMIT, pull_queue_limit, 1, 1 << 24),
    OPT_(IOCPSRV_OPT_CLOSE_TIMEOUT_MS, close_timeout_ms, 0, INT64_C(1) << 31),
    OPT_(IOCPSRV_OPT_IPV6_ONLY, ipv6_only, 0, 1),
    OPT_(IOCPSRV_OPT_POOL_MIN, pool_min, 0, 1024),
    OPT_(IOCPSRV_OPT_POOL_MAX, pool_max, 0, 1024),
    OPT_(IOCPSRV_OPT_POOL_BUSY_MS, pool_busy_ms, 1, 3600000),
    OPT_(IOCPSRV_OPT_POOL_IDLE_MS, pool_idle_ms, 1, 86400000),
    OPT_(IOCPSRV_OPT_POOL_CPU_HIGH, pool_cpu_high, 0, 100),
    OPT_(IOCPSRV_OPT_POOL_CPU_LOW, pool_cpu_low, 0, 100),
    OPT_(IOCPSRV_OPT_PULL_BATCH_SENDS, pull_batch_sends, 0, 1),
    OPT_(IOCPSRV_OPT_PROXY_PROTOCOL, proxy_protocol, IOCPSRV_PROXY_OFF, IOCPSRV_PROXY_OPTIONAL),
    OPT_(IOCPSRV_OPT_REUSEPORT, reuseport, 0, 1),
    OPT_(IOCPSRV_OPT_MAX_CONNECTIONS_PER_SOURCE, max_connections_per_source, 0, 16777215),
    OPT_(IOCPSRV_OPT_CONNECT_TIMEOUT_MS, connect_timeout_ms, 0, 86400000),
};
#undef OPT_

static const option_desc_t *find_option(int option) {
  for (size_t i = 0; i < sizeof option_table / sizeof option_table[0]; i++)
    if (option_table[i].option == option) return &option_table[i];
  return NULL;
}

/* Whether `option` is a string option (iocpsrv_set_option_str). */
static int is_str_option(int option) {
  return option == IOCPSRV_OPT_PROXY_TRUSTED || option == IOCPSRV_OPT_CONNECT_SOURCE;
}

/* IOCPSRV_OPT_CONNECT_SOURCE: one numeric address, kept with port 0. */
static int set_connect_source(srv_options_t *o, const char *value) {
  if (!value || !value[0]) {
    o->connect_source_len = 0;
    return 0;
  }
  struct addrinfo hints, *res = NULL;
  memset(&hints, 0, sizeof hints);
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
  if (getaddrinfo(value, "0", &hints, &res) != 0) return IOCPSRV_EINVAL;
  int ok = res->ai_addrlen <= sizeof o->connect_source;
  if (ok) {
    memset(&o->connect_source, 0, sizeof o->connect_source);
    memcpy(&o->connect_source, res->ai_addr, res->ai_addrlen);
    o->connect_source_len = (int)res->ai_addrlen;
  }
  freeaddrinfo(res);
  return ok ? 0 : IOCPSRV_EINVAL;
}

static int64_t get_connect_source(const srv_options_t *o, char *buf, size_t size) {
  char text[INET6_ADDRSTRLEN] = "";
  const struct sockaddr_storage *sa = &o->connect_source;
  if (o->connect_source_len && sa->ss_family == AF_INET)
    inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, text, sizeof text);
  else if (o->connect_source_len)
    inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, text, sizeof text);
  if (size) snprintf(buf, size, "%s", text);
  return (int64_t)strlen(text);
}

int srv_options_set(srv_options_t *o, int option, int64_t value) {
  const option_desc_t *d = find_option(option);
  if (!d) return is_str_option(option) ? IOCPSRV_EINVAL : IOCPSRV_EUNKNOWNOPT;
  if (value < d->min || value > d->max) return IOCPSRV_ERANGE;
  *(int64_t *)((char *)o + d->offset) = value;
  return 0;
}

int srv_options_get(const srv_options_t *o, int option, int64_t *value) {
  const option_desc_t *d = find_option(option);
  if (!d) return is_str_option(option) ? IOCPSRV_EINVAL : IOCPSRV_EUNKNOWNOPT;
  *value = *(const int64_t *)((const char *)o + d->offset);
  return 0;
}

int srv_options_set_str(srv_options_t *o, int option, const char *value) {
  if (option == IOCPSRV_OPT_CONNECT_SOURCE) return set_connect_source(o, value);
  if (option != IOCPSRV_OPT_PROXY_TRUSTED)
    return find_option(option) ? IOCPSRV_EINVAL : IOCPSRV_EUNKNOWNOPT;
  srcaddr_list_t l;
  int rc = srcaddr_list_parse(value, &l); /* all or nothing: the old list stays on error */
  if (rc) return rc;
  srcaddr_list_free(&o->proxy_trusted);
  o->proxy_trusted = l;
  return 0;
}

int64_t srv_options_get_str(const srv_options_t *o, int option, char *buf, size_t size) {
  if (option == IOCPSRV_OPT_CONNECT_SOURCE) return get_connect_source(o, buf, size);
  if (option != IOCPSRV_OPT_PROXY_TRUSTED)
    return find_option(option) ? IOCPSRV_EINVAL : IOCPSRV_EUNKNOWNOPT;
  return (int64_t)srcaddr_list_format(&o->proxy_trusted, buf, size);
}

void srv_options_free(srv_options_t *o) { srcaddr_list_free(&o->proxy_trusted); }
