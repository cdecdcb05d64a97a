/* Server options: defaults, ranges and the typed setter shared by every backend. */
#ifndef IOCPSRV_CORE_OPTIONS_H
#define IOCPSRV_CORE_OPTIONS_H

#include <stddef.h>
#include <stdint.h>

#include "core/srcaddr.h"

typedef struct srv_options_s {
  int64_t worker_threads;
  int64_t concurrency;
  int64_t listen_backlog;
  int64_t accepts_posted;
  int64_t max_connections;
  int64_t max_packet_size;
  int64_t framing;
  int64_t send_queue_limit;
  int64_t idle_timeout_ms;
  int64_t keepalive_ms;
  int64_t nodelay;
  int64_t rcvbuf;
  int64_t sndbuf;
  int64_t read_buffer;
  int64_t pull_mode;
  int64_t pull_queue_limit;
  int64_t close_timeout_ms;
  int64_t ipv6_only;
  int64_t pool_min, pool_max, pool_busy_ms, pool_idle_ms, pool_cpu_high, pool_cpu_low;
  int64_t pull_batch_sends;
  int64_t proxy_protocol, reuseport;
  int64_t max_connections_per_source;
  int64_t connect_timeout_ms;
  /* String options (iocpsrv_set_option_str), kept parsed: */
  srcaddr_list_t proxy_trusted; /* IOCPSRV_OPT_PROXY_TRUSTED */
  struct sockaddr_storage connect_source; /* IOCPSRV_OPT_CONNECT_SOURCE, port 0; */
  int connect_source_len;                 /* 0 when unset */
} srv_options_t;

void srv_options_init(srv_options_t *o);
/* 0 or IOCPSRV_EUNKNOWNOPT / IOCPSRV_ERANGE. */
int srv_options_set(srv_options_t *o, int option, int64_t value);
int srv_options_get(const srv_options_t *o, int option, int64_t *value);
/* String options: 0, IOCPSRV_EINVAL (malformed; nothing changed, or an int option),
 * IOCPSRV_EUNKNOWNOPT or IOCPSRV_ENOMEM. */
int srv_options_set_str(srv_options_t *o, int option, const char *value);
/* snprintf-style: the text's full length (>= 0) or a negative code. */
int64_t srv_options_get_str(const srv_options_t *o, int option, char *buf, size_t size);
/* What the options own (the parsed lists). */
void srv_options_free(srv_options_t *o);

#endif
