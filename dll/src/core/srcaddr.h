/* Source addresses: who may send a PROXY header (a list of addresses and CIDR ranges,
 * IOCPSRV_OPT_PROXY_TRUSTED) and how many connections each client address holds
 * (IOCPSRV_OPT_MAX_CONNECTIONS_PER_SOURCE). Pure data structures, no I/O, no logging.
 *
 * Addresses are compared without their port. An IPv4-mapped IPv6 address
 * (::ffff:a.b.c.d, what a dual-stack listener reports for an IPv4 client) is the IPv4
 * address a.b.c.d: it is counted as that address and matches IPv4 ranges. */
#ifndef IOCPSRV_CORE_SRCADDR_H
#define IOCPSRV_CORE_SRCADDR_H

#include <stddef.h>
#include <stdint.h>

#include "core/platform.h"

/* An address without its port: 4 bytes (IPv4, mapped ones included) or 16 (IPv6).
 * len 0: no address (an unknown family). */
typedef struct srcaddr_key_s {
  uint8_t len;
  uint8_t bytes[16];
} srcaddr_key_t;

/* The key of a socket address. 0, or -1 for a family other than AF_INET/AF_INET6
 * (*key then has len 0). */
int srcaddr_key_from(const struct sockaddr_storage *sa, srcaddr_key_t *key);

/* ---- Address lists ("10.0.0.0/8, 127.0.0.1, ::1, fd00::/8") ---- */

typedef struct srcaddr_range_s {
  uint8_t len;       /* 4 or 16 */
  uint8_t prefix;    /* 0..32 or 0..128 */
  uint8_t bytes[16]; /* the network, host bits cleared */
} srcaddr_range_t;

typedef struct srcaddr_list_s {
  srcaddr_range_t *v;
  size_t n;
} srcaddr_list_t;

/* Parse `text` (NULL or "" = empty list): entries separated by commas and/or
 * whitespace, each an IPv4 or IPv6 address with an optional "/prefix" (decimal, at
 * most 32 or 128; without one, the single address). Host bits past the prefix are
 * cleared ("10.1.2.3/8" is 10.0.0.0/8). Returns 0 with *out filled (free it with
 * srcaddr_list_free), IOCPSRV_EINVAL for a malformed entry or IOCPSRV_ENOMEM; on error
 * *out is left untouched. */
int srcaddr_list_parse(const char *text, srcaddr_list_t *out);
void srcaddr_list_free(srcaddr_list_t *list);
/* Whether `key` lies in one of the ranges. An IPv4 key also matches an IPv6 range
 * that holds its mapped form (::ffff:0:0/96, ::/0). An empty list or key matches
 * nothing. */
int srcaddr_list_match(const srcaddr_list_t *list, const srcaddr_key_t *key);
/* The list as text ("10.0.0.0/8, 127.0.0.1/32, ::1/128"), snprintf-style: writes at
 * most `size` bytes (NUL included; buf may be NULL when size is 0) and returns the
 * length of the whole text. */
size_t srcaddr_list_format(const srcaddr_list_t *list, char *buf, size_t size);

/* ---- Connections per source address ----
 * A hash map from key to count, one mutex around it (taken once per counted accept
 * and once per counted close; no host callback runs under it). Open addressing with
 * linear probing and backward-shift deletion, a per-table random seed against chosen
 * collisions, grown at half full. Entries whose count drops to 0 are removed. */
typedef struct srclimit_entry_s {
  srcaddr_key_t key; /* key.len 0: an empty bucket */
  uint32_t count;
} srclimit_entry_t;

typedef struct srclimit_s {
  srv_mutex_t lock;
  int inited;
  srclimit_entry_t *tab;
  size_t cap;  /* a power of two, or 0 before the first acquire */
  size_t used; /* buckets in use */
  uint64_t seed;
} srclimit_t;

/* The lock; the table is allocated at the first acquire. Idempotent (a server listens
 * again after a stop with the same map). */
void srclimit_init(srclimit_t *l);
/* Free everything (after the last release; the server is being destroyed). */
void srclimit_destroy(srclimit_t *l);

#define SRCLIMIT_OK 1      /* counted: release it once the connection is gone */
#define SRCLIMIT_FULL 0    /* the address already holds `max` connections */
#define SRCLIMIT_NOMEM (-1) /* no memory to count it (the caller refuses it) */
/* Count one connection from `key` unless it already holds `max`. */
int srclimit_acquire(srclimit_t *l, const srcaddr_key_t *key, uint32_t max);
/* One counted connection from `key` is gone. */
void srclimit_release(srclimit_t *l, const srcaddr_key_t *key);
/* Connections counted for `key` now (tests, diagnostics). */
uint32_t srclimit_count(srclimit_t *l, const srcaddr_key_t *key);

#endif
