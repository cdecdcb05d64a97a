/* HAProxy's PROXY protocol (v1 text, v2 binary): the header a load balancer sends
 * before the client's bytes, naming the real client. Pure parsing, no I/O. */
#ifndef IOCPSRV_CORE_PROXY_H
#define IOCPSRV_CORE_PROXY_H

#include <stddef.h>
#include <stdint.h>

#include "core/platform.h"

#define PROXY_NEED_MORE 0    /* the header may still be arriving */
#define PROXY_NOT_PROXY (-1) /* these bytes do not start a PROXY header */
#define PROXY_MALFORMED (-2) /* a PROXY header, but broken */

/* The most bytes a header can take (v2 with the largest TLV block). */
#define PROXY_MAX_HEADER (16 + 65535)

typedef struct proxy_header_s {
  int has_addr;                /* 0: LOCAL / UNKNOWN (the balancer's own check) */
  struct sockaddr_storage src; /* the real client */
  struct sockaddr_storage dst; /* where it connected (the balancer's frontend) */
} proxy_header_t;

/* Parse a header at the start of buf[0..len): its length (> 0) with *out filled,
 * PROXY_NEED_MORE, PROXY_NOT_PROXY or PROXY_MALFORMED. */
int proxy_parse(const uint8_t *buf, size_t len, proxy_header_t *out);

#endif
