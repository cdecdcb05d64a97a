/* Source addresses: trusted-source lists and connections per source (see srcaddr.h). */
#include "core/srcaddr.h"

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "core/fault.h"
#include "iocpsrv.h"

static const uint8_t v4mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

int srcaddr_key_from(const struct sockaddr_storage *sa, srcaddr_key_t *key) {
  memset(key, 0, sizeof *key);
  if (sa->ss_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
    key->len = 4;
    memcpy(key->bytes, &in->sin_addr, 4);
    return 0;
  }
  if (sa->ss_family == AF_INET6) {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
    const uint8_t *a = (const uint8_t *)&in6->sin6_addr;
    if (memcmp(a, v4mapped_prefix, sizeof v4mapped_prefix) == 0) {
      key->len = 4;
      memcpy(key->bytes, a + 12, 4);
    } else {
      key->len = 16;
      memcpy(key->bytes, a, 16);
    }
    return 0;
  }
  return -1;
}

/* ------------------------------------------------------------------ lists ---- */

/* "a.b.c.d": four decimal parts 0..255, no sign, no leading zero (an octal reading
 * would differ). Our own parser, so every platform's inet_pton quirks agree. */
static int parse_v4(const char *s, size_t n, uint8_t out[4]) {
  size_t i = 0;
  for (int part = 0; part < 4; part++) {
    if (part && (i >= n || s[i++] != '.')) return -1;
    size_t start = i;
    unsigned v = 0;
    while (i < n && s[i] >= '0' && s[i] <= '9' && i - start < 3) v = v * 10 + (unsigned)(s[i++] - '0');
    if (i == start || v > 255 || (s[start] == '0' && i - start > 1)) return -1;
    out[part] = (uint8_t)v;
  }
  return i == n ? 0 : -1;
}

/* Clear the bits past `prefix`. */
static void mask_bytes(uint8_t *b, size_t len, unsigned prefix) {
  for (size_t i = 0; i < len; i++) {
    unsigned bit = (unsigned)i * 8;
    if (bit >= prefix) b[i] = 0;
    else if (prefix - bit < 8) b[i] &= (uint8_t)(0xFFu << (8 - (prefix - bit)));
  }
}

/* One entry, "addr" or "addr/prefix". */
static int parse_range(const char *s, size_t n, srcaddr_range_t *r) {
  char text[64];
  const char *slash = memchr(s, '/', n);
  size_t alen = slash ? (size_t)(slash - s) : n;
  if (alen == 0 || alen >= sizeof text) return -1;
  memcpy(text, s, alen);
  text[alen] = 0;
  memset(r, 0, sizeof *r);
  if (memchr(text, ':', alen)) {
    struct in6_addr a6;
    if (inet_pton(AF_INET6, text, &a6) != 1) return -1;
    r->len = 16;
    memcpy(r->bytes, &a6, 16);
  } else {
    if (parse_v4(text, alen, r->bytes)) return -1;
    r->len = 4;
  }
  unsigned bits = r->len * 8u, prefix = bits;
  if (slash) {
    const char *p = slash + 1, *end = s + n;
    size_t plen = (size_t)(end - p);
    if (plen == 0 || plen > 3 || (p[0] == '0' && plen > 1)) return -1;
    prefix = 0;
    for (; p < end; p++) {
      if (*p < '0' || *p > '9') return -1;
      prefix = prefix * 10 + (unsigned)(*p - '0');
    }
    if (prefix > bits) return -1;
  }
  r->prefix = (uint8_t)prefix;
  mask_bytes(r->bytes, r->len, prefix);
  return 0;
}

static int is_sep(char ch) {
  return ch == ',' || ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r';
}

int srcaddr_list_parse(const char *text, srcaddr_list_t *out) {
  srcaddr_list_t l = {NULL, 0};
  if (!text) text = "";
  /* Count first: one allocation, and nothing to undo on a bad entry but that. */
  size_t count = 0;
  for (const char *p = text; *p;) {
    while (*p && is_sep(*p)) p++;
    if (!*p) break;
    count++;
    while (*p && !is_sep(*p)) p++;
  }
  if (count) {
    l.v = srv_calloc(count, sizeof *l.v);
    if (!l.v) return IOCPSRV_ENOMEM;
  }
  for (const char *p = text; *p;) {
    while (*p && is_sep(*p)) p++;
    if (!*p) break;
    const char *start = p;
    while (*p && !is_sep(*p)) p++;
    if (parse_range(start, (size_t)(p - start), &l.v[l.n])) {
      srv_free(l.v);
      return IOCPSRV_EINVAL;
    }
    l.n++;
  }
  *out = l;
  return 0;
}

void srcaddr_list_free(srcaddr_list_t *list) {
  srv_free(list->v);
  list->v = NULL;
  list->n = 0;
}

/* Whether the first `prefix` bits of a and b agree. */
static int prefix_equal(const uint8_t *a, const uint8_t *b, unsigned prefix) {
  unsigned whole = prefix / 8, rest = prefix % 8;
  if (memcmp(a, b, whole) != 0) return 0;
  if (!rest) return 1;
  uint8_t m = (uint8_t)(0xFFu << (8 - rest));
  return (a[whole] & m) == (b[whole] & m);
}

int srcaddr_list_match(const srcaddr_list_t *list, const srcaddr_key_t *key) {
  if (!list || !key->len) return 0;
  uint8_t mapped[16];
  if (key->len == 4) {
    memcpy(mapped, v4mapped_prefix, 12);
    memcpy(mapped + 12, key->bytes, 4);
  }
  for (size_t i = 0; i < list->n; i++) {
    const srcaddr_range_t *r = &list->v[i];
    if (r->len == key->len) {
      if (prefix_equal(r->bytes, key->bytes, r->prefix)) return 1;
    } else if (key->len == 4 && r->len == 16) {
      if (prefix_equal(r->bytes, mapped, r->prefix)) return 1;
    }
  }
  return 0;
}

size_t srcaddr_list_format(const srcaddr_list_t *list, char *buf, size_t size) {
  size_t total = 0;
  for (size_t i = 0; list && i < list->n; i++) {
    const srcaddr_range_t *r = &list->v[i];
    char host[INET6_ADDRSTRLEN] = "?", item[INET6_ADDRSTRLEN + 8];
    if (r->len == 4)
      snprintf(host, sizeof host, "%u.%u.%u.%u", r->bytes[0], r->bytes[1], r->bytes[2],
               r->bytes[3]);
    else
      inet_ntop(AF_INET6, (void *)r->bytes, host, sizeof host);
    int n = snprintf(item, sizeof item, "%s%s/%u", i ? ", " : "", host, r->prefix);
    if (n < 0) continue;
    for (int k = 0; k < n; k++, total++)
      if (total + 1 < size) buf[total] = item[k];
  }
  if (size) buf[total < size ? total : size - 1] = 0;
  return total;
}

/* -------------------------------------------------------- per-source counts ---- */

static uint64_t mix64(uint64_t x) { /* splitmix64's finalizer */
  x ^= x >> 30;
  x *= UINT64_C(0xbf58476d1ce4e5b9);
  x ^= x >> 27;
  x *= UINT64_C(0x94d049bb133111eb);
  x ^= x >> 31;
  return x;
}

static uint64_t key_hash(const srclimit_t *l, const srcaddr_key_t *k) {
  uint64_t a, b;
  memcpy(&a, k->bytes, 8);
  memcpy(&b, k->bytes + 8, 8);
  return mix64(mix64(l->seed ^ a ^ k->len) ^ b);
}

static int key_equal(const srcaddr_key_t *a, const srcaddr_key_t *b) {
  return a->len == b->len && memcmp(a->bytes, b->bytes, a->len) == 0;
}

void srclimit_init(srclimit_t *l) {
  if (l->inited) return;
  srv_mutex_init(&l->lock);
  l->tab = NULL;
  l->cap = l->used = 0;
  /* Not secret-grade, but not known in advance to a client choosing addresses. */
  static atomic_uint_fast64_t counter;
  uint64_t n = (uint64_t)atomic_fetch_add(&counter, 1);
  l->seed = mix64((uint64_t)srv_unix_ms() ^ ((uint64_t)(uintptr_t)l << 16) ^
                  (uint64_t)srv_now_ms() * UINT64_C(0x9E3779B97F4A7C15) ^ n);
  l->inited = 1;
}

void srclimit_destroy(srclimit_t *l) {
  if (!l->inited) return;
  srv_free(l->tab);
  l->tab = NULL;
  l->cap = l->used = 0;
  srv_mutex_destroy(&l->lock);
  l->inited = 0;
}

/* The bucket holding `key`, or the empty one where it would go. Lock held, cap > 0. */
static size_t find_slot(const srclimit_t *l, const srcaddr_key_t *key) {
  size_t mask = l->cap - 1, i = (size_t)key_hash(l, key) & mask;
  while (l->tab[i].key.len && !key_equal(&l->tab[i].key, key)) i = (i + 1) & mask;
  return i;
}

/* Double the table (or make the first one). -1 when out of memory. Lock held. */
static int grow(srclimit_t *l) {
  size_t cap = l->cap ? l->cap * 2 : 16;
  srclimit_entry_t *tab = srv_calloc(cap, sizeof *tab);
  if (!tab) return -1;
  srclimit_entry_t *old = l->tab;
  size_t old_cap = l->cap;
  l->tab = tab;
  l->cap = cap;
  for (size_t i = 0; i < old_cap; i++)
    if (old[i].key.len) l->tab[find_slot(l, &old[i].key)] = old[i];
  srv_free(old);
  return 0;
}

int srclimit_acquire(srclimit_t *l, const srcaddr_key_t *key, uint32_t max) {
  if (!key->len) return SRCLIMIT_OK; /* no address to count (not IP): not limited */
  int rc = SRCLIMIT_OK;
  srv_mutex_lock(&l->lock);
  size_t i = l->cap ? find_slot(l, key) : 0;
  if (l->cap && l->tab[i].key.len) {
    if (l->tab[i].count >= max) rc = SRCLIMIT_FULL;
    else l->tab[i].count++;
  } else {
    /* A new address. Grow at half full; if that fails, use the room left as long as
     * one bucket stays empty (probing ends at an empty bucket). */
    if ((l->used + 1) * 2 > l->cap && grow(l) && l->used + 2 > l->cap) {
      rc = SRCLIMIT_NOMEM;
    } else {
      i = find_slot(l, key);
      l->tab[i].key = *key;
      l->tab[i].count = 1;
      l->used++;
    }
  }
  srv_mutex_unlock(&l->lock);
  return rc;
}

void srclimit_release(srclimit_t *l, const srcaddr_key_t *key) {
  if (!key->len) return;
  srv_mutex_lock(&l->lock);
  size_t i = l->cap ? find_slot(l, key) : 0;
  if (l->cap && l->tab[i].key.len && --l->tab[i].count == 0) {
    /* Backward-shift deletion: pull later entries of the run into the hole when the
     * hole lies between their home bucket and where they sit. */
    size_t mask = l->cap - 1, j = i;
    for (;;) {
      j = (j + 1) & mask;
      if (!l->tab[j].key.len) break;
      size_t home = (size_t)key_hash(l, &l->tab[j].key) & mask;
      if (((j - home) & mask) >= ((j - i) & mask)) {
        l->tab[i] = l->tab[j];
        i = j;
      }
    }
    memset(&l->tab[i], 0, sizeof l->tab[i]);
    l->used--;
    if (l->used == 0 && l->cap > 1024) { /* a burst of addresses is over: give it back */
      srv_free(l->tab);
      l->tab = NULL;
      l->cap = 0;
    }
  }
  srv_mutex_unlock(&l->lock);
}

uint32_t srclimit_count(srclimit_t *l, const srcaddr_key_t *key) {
  uint32_t n = 0;
  srv_mutex_lock(&l->lock);
  if (l->cap) {
    size_t i = find_slot(l, key);
    if (l->tab[i].key.len) n = l->tab[i].count;
  }
  srv_mutex_unlock(&l->lock);
  return n;
}
