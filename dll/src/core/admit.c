/* Who may connect: PROXY trust and the per-source connection limit (core/srcaddr.h). */
#include "core/internal.h"

void refuse_socket(iocpsrv_t *srv, bk_socket_t sock) {
  engine_stat_add(&srv->stats.connections_refused, 1); /* before the client sees it */
  bk_close(NULL, sock, 0);
}

/* A fresh client, before it takes a slot: is its peer a trusted PROXY sender, and
 * may its address hold one more connection? Returns 0 to go on (a->counted: a count
 * taken), or -1 when the socket was closed here, counted and logged. No lock held. */
int source_admit(iocpsrv_t *srv, bk_socket_t sock, const struct sockaddr_storage *sa,
                        src_admit_t *a) {
  memset(a, 0, sizeof *a);
  int64_t max = srv->opt.max_connections_per_source;
  int64_t proxy = srv->opt.proxy_protocol;
  if (!max && !proxy) return 0;
  srcaddr_key_from(sa, &a->key);
  if (proxy) a->trusted = (uint8_t)srcaddr_list_match(&srv->opt.proxy_trusted, &a->key);
  char who[64];
  if (proxy == IOCPSRV_PROXY_REQUIRED && !a->trusted) {
    /* Whatever it would send, its header would not be believed: closed at once. */
    engine_stat_add(&srv->stats.protocol_errors, 1); /* before the client sees it */
    engine_stat_add(&srv->stats.proxy_untrusted, 1);
    bk_close(NULL, sock, 0);
    format_addr(sa, who, sizeof who);
    engine_log_throttled(srv, &srv->trust_log, 1,
                         "connection %s: closed: PROXY protocol required and the peer is "
                         "not in IOCPSRV_OPT_PROXY_TRUSTED", who);
    return -1;
  }
  /* A trusted balancer is not counted: the clients its headers name are. */
  if (!max || a->trusted) return 0;
  int r = srclimit_acquire(&srv->per_source, &a->key, (uint32_t)max);
  if (r == SRCLIMIT_OK) {
    a->counted = 1;
    return 0;
  }
  /* Counted before the close: a client that sees it finds the stats moved. */
  engine_stat_add(r == SRCLIMIT_FULL ? &srv->stats.source_refusals : &srv->stats.alloc_failures, 1);
  refuse_socket(srv, sock);
  format_addr(sa, who, sizeof who);
  engine_log_throttled(srv, &srv->trust_log, 1, "connection %s: refused: %s", who,
                       r == SRCLIMIT_FULL ? "its address holds IOCPSRV_OPT_MAX_CONNECTIONS_PER_SOURCE"
                                          : "out of memory counting connections per source");
  return -1;
}

/* A trusted PROXY header named the client `src`: count it under that address. Returns
 * 1 if the connection is gone (over the limit: closed unseen by the host). Token held,
 * no lock. */
int source_admit_proxied(iocpsrv_t *srv, conn_t *c, const struct sockaddr_storage *src) {
  ASSERT_TOKEN(c);
  int64_t max = srv->opt.max_connections_per_source;
  srcaddr_key_t key;
  if (!max || srcaddr_key_from(src, &key)) return 0;
  int r = srclimit_acquire(&srv->per_source, &key, (uint32_t)max);
  if (r == SRCLIMIT_OK) {
    c->src_key = key;
    c->src_counted = 1;
    return 0;
  }
  engine_stat_add(&srv->stats.connections_refused, 1);
  engine_stat_add(r == SRCLIMIT_FULL ? &srv->stats.source_refusals : &srv->stats.alloc_failures, 1);
  char who[64];
  format_addr(src, who, sizeof who);
  engine_log_throttled(srv, &srv->trust_log, 1, "connection %s via %s: refused: %s", who,
                       c->peer,
                       r == SRCLIMIT_FULL ? "its address holds IOCPSRV_OPT_MAX_CONNECTIONS_PER_SOURCE"
                                          : "out of memory counting connections per source");
  srv_mutex_lock(&c->slot.lock);
  c->refused = 1; /* the host never heard of it: no disconnect */
  srv_mutex_unlock(&c->slot.lock);
  return conn_finalize(srv, c, IOCPSRV_REASON_LOCAL_CLOSE, 0);
}
