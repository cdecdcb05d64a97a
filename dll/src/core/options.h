/* Server options: defaults, ranges and the typed setter shared by every backend. */
#ifndef IOCPSRV_CORE_OPTIONS_H
#define IOCPSRV_CORE_OPTIONS_H

#include <stdint.h>

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
} srv_options_t;

void srv_options_init(srv_options_t *o);
/* 0 or IOCPSRV_EUNKNOWNOPT / IOCPSRV_ERANGE. */
int srv_options_set(srv_options_t *o, int option, int64_t value);
int srv_options_get(const srv_options_t *o, int option, int64_t *value);

#endif
