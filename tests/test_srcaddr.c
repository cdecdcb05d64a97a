/* test_srcaddr.c -- the source-address structures behind IOCPSRV_OPT_PROXY_TRUSTED and
 * IOCPSRV_OPT_MAX_CONNECTIONS_PER_SOURCE (dll/src/core/srcaddr.c), compiled into this
 * test with the fault seam on: CIDR matching at every prefix boundary, IPv4-mapped
 * addresses, and the per-source hash map against a reference under thousands of random
 * acquires and releases (backward-shift deletion, growth, giving memory back), with
 * allocation failures injected. test_proxy covers the same through real sockets. */
#include <stdio.h>
#include <string.h>

#include "core/fault.h"
#include "core/srcaddr.h"
#include "test.h"

static srcaddr_key_t key4(unsigned a, unsigned b, unsigned c, unsigned d) {
  srcaddr_key_t k;
  memset(&k, 0, sizeof k);
  k.len = 4;
  k.bytes[0] = (uint8_t)a;
  k.bytes[1] = (uint8_t)b;
  k.bytes[2] = (uint8_t)c;
  k.bytes[3] = (uint8_t)d;
  return k;
}

static srcaddr_key_t key6(const char *text) {
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
  in6->sin6_family = AF_INET6;
  CHECK_EQ(inet_pton(AF_INET6, text, &in6->sin6_addr), 1);
  srcaddr_key_t k;
  CHECK_EQ(srcaddr_key_from(&ss, &k), 0);
  return k;
}

static int matches(const char *list, srcaddr_key_t k) {
  srcaddr_list_t l;
  CHECK_EQ(srcaddr_list_parse(list, &l), 0);
  int m = srcaddr_list_match(&l, &k);
  srcaddr_list_free(&l);
  return m;
}

static void cidr_boundaries(void) {
  CHECK(matches("10.0.0.0/8", key4(10, 255, 255, 255)));
  CHECK(!matches("10.0.0.0/8", key4(11, 0, 0, 0)));
  CHECK(!matches("10.0.0.0/8", key4(9, 255, 255, 255)));
  CHECK(matches("0.0.0.0/0", key4(255, 1, 2, 3)));
  CHECK(matches("128.0.0.0/1", key4(200, 0, 0, 1)));
  CHECK(!matches("128.0.0.0/1", key4(127, 255, 255, 255)));
  CHECK(matches("192.168.1.76/31", key4(192, 168, 1, 77)));
  CHECK(!matches("192.168.1.76/31", key4(192, 168, 1, 78)));
  CHECK(matches("192.168.1.77", key4(192, 168, 1, 77)));
  CHECK(!matches("192.168.1.77/32", key4(192, 168, 1, 76)));
  CHECK(matches("172.16.0.0/12", key4(172, 31, 255, 1)));
  CHECK(!matches("172.16.0.0/12", key4(172, 32, 0, 1)));
  CHECK(matches("::1", key6("::1")));
  CHECK(!matches("::1", key6("::2")));
  CHECK(matches("2001:db8::fe/127", key6("2001:db8::ff")));
  CHECK(!matches("2001:db8::fe/127", key6("2001:db8::100")));
  CHECK(matches("fd00::/8", key6("fdff:1::1")));
  CHECK(!matches("fd00::/8", key6("fe00::1")));
  CHECK(matches("::/0", key6("2001:db8::1")));
  /* An IPv4-mapped peer is its IPv4 address: IPv4 entries match it... */
  srcaddr_key_t mapped = key6("::ffff:10.1.2.3");
  CHECK_EQ(mapped.len, 4);
  CHECK(matches("10.0.0.0/8", mapped));
  /* ...and an IPv4 peer matches IPv6 ranges that hold its mapped form. */
  CHECK(matches("::ffff:10.0.0.0/104", key4(10, 9, 9, 9)));
  CHECK(!matches("::ffff:10.0.0.0/104", key4(11, 9, 9, 9)));
  CHECK(matches("::/0", key4(1, 2, 3, 4)));
  CHECK(matches("::/80", key4(1, 2, 3, 4)));
  CHECK(!matches("::/81", key4(1, 2, 3, 4))); /* bits 80..95 of a mapped address are 1 */
  CHECK(!matches("::1", key4(127, 0, 0, 1)));
  CHECK(!matches("0.0.0.0/0", key6("::1")));
  CHECK(!matches("", key4(127, 0, 0, 1)));
  /* Keys ignore the port. */
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  struct sockaddr_in *in = (struct sockaddr_in *)&ss;
  in->sin_family = AF_INET;
  in->sin_port = htons(4242);
  in->sin_addr.s_addr = htonl(0x7F000001);
  srcaddr_key_t k;
  CHECK_EQ(srcaddr_key_from(&ss, &k), 0);
  CHECK(k.len == 4 && memcmp(k.bytes, "\x7F\x00\x00\x01", 4) == 0);
  ss.ss_family = 0;
  CHECK_EQ(srcaddr_key_from(&ss, &k), -1);
  CHECK_EQ(k.len, 0);
}

/* A small deterministic generator. */
static uint64_t rng_state = 88172645463325252ull;
static uint32_t rng(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return (uint32_t)(rng_state >> 16);
}

#define NKEYS 3000
#define MAXC 3

static srcaddr_key_t keys[NKEYS];
static uint32_t ref[NKEYS];

static void check_all(srclimit_t *l) {
  for (int i = 0; i < NKEYS; i++)
    CHECK_MSG(srclimit_count(l, &keys[i]) == ref[i], "key %d: %u counted, %u expected", i,
              (unsigned)srclimit_count(l, &keys[i]), (unsigned)ref[i]);
}

static void per_source_map_against_a_reference(void) {
  for (int i = 0; i < NKEYS; i++) {
    if (i % 3 == 0) {
      char text[64];
      snprintf(text, sizeof text, "2001:db8:%x::%x", (unsigned)i, (unsigned)(i * 7));
      keys[i] = key6(text);
    } else {
      keys[i] = key4(10, (unsigned)(i >> 8), (unsigned)(i & 0xFF), (unsigned)(i % 7));
    }
  }
  srclimit_t l;
  memset(&l, 0, sizeof l);
  srclimit_init(&l);
  srclimit_init(&l); /* idempotent: a server listens again */
  for (int round = 0; round < 4; round++) {
    for (int op = 0; op < 40000; op++) {
      int i = (int)(rng() % NKEYS);
      if (rng() % 2) {
        int r = srclimit_acquire(&l, &keys[i], MAXC);
        CHECK_EQ(r, ref[i] < MAXC ? SRCLIMIT_OK : SRCLIMIT_FULL);
        if (r == SRCLIMIT_OK) ref[i]++;
      } else if (ref[i]) {
        srclimit_release(&l, &keys[i]);
        ref[i]--;
      }
    }
    check_all(&l);
    /* Empty it in a random order: every removal shifts a run back. */
    for (int left = 1; left;) {
      left = 0;
      for (int i = (int)(rng() % NKEYS), n = 0; n < NKEYS; n++, i = (i + 1) % NKEYS)
        if (ref[i] && rng() % 4 == 0) {
          srclimit_release(&l, &keys[i]);
          ref[i]--;
        }
      for (int i = 0; i < NKEYS; i++) left |= ref[i] != 0;
      if (rng() % 8 == 0) check_all(&l);
    }
    check_all(&l);
    CHECK_EQ(l.used, 0);
    CHECK_EQ(l.cap, 0); /* a large table is given back once empty */
  }
  /* Releasing what is not counted changes nothing; an address-less key is not limited. */
  srclimit_release(&l, &keys[0]);
  srcaddr_key_t none;
  memset(&none, 0, sizeof none);
  CHECK_EQ(srclimit_acquire(&l, &none, 1), SRCLIMIT_OK);
  CHECK_EQ(srclimit_acquire(&l, &none, 1), SRCLIMIT_OK);
  srclimit_release(&l, &none);
  srclimit_destroy(&l);
}

static void per_source_map_out_of_memory(void) {
  srclimit_t l;
  memset(&l, 0, sizeof l);
  srclimit_init(&l);
  /* No table yet and none to be had: refused (the engine then refuses the client). */
  iocpsrv_fault_arm(FAULT_ALLOC, 1, 1);
  CHECK_EQ(srclimit_acquire(&l, &keys[1], 2), SRCLIMIT_NOMEM);
  CHECK_EQ(srclimit_count(&l, &keys[1]), 0);
  iocpsrv_fault_arm(FAULT_ALLOC, 0, 0);
  /* Fill the first table (16 buckets) to half; growing then fails, but the room left
   * is used as long as one bucket stays empty. */
  int i;
  for (i = 0; i < 8; i++) CHECK_EQ(srclimit_acquire(&l, &keys[i], 2), SRCLIMIT_OK);
  CHECK_EQ(l.cap, 16);
  iocpsrv_fault_arm(FAULT_ALLOC, 1, 1);
  for (; i < 15; i++) CHECK_EQ(srclimit_acquire(&l, &keys[i], 2), SRCLIMIT_OK);
  CHECK_EQ(srclimit_acquire(&l, &keys[15], 2), SRCLIMIT_NOMEM);
  CHECK_EQ(srclimit_acquire(&l, &keys[3], 2), SRCLIMIT_OK); /* a known address needs nothing */
  CHECK_EQ(srclimit_acquire(&l, &keys[3], 2), SRCLIMIT_FULL);
  iocpsrv_fault_arm(FAULT_ALLOC, 0, 0);
  CHECK_EQ(srclimit_acquire(&l, &keys[15], 2), SRCLIMIT_OK); /* memory is back: it grows */
  CHECK_EQ(l.cap, 32);
  for (i = 0; i < 16; i++) CHECK_EQ(srclimit_count(&l, &keys[i]), i == 3 ? 2u : 1u);
  for (i = 0; i < 16; i++) {
    srclimit_release(&l, &keys[i]);
    if (i == 3) srclimit_release(&l, &keys[i]);
  }
  CHECK_EQ(l.used, 0);
  srclimit_destroy(&l);
  /* A list that cannot be allocated is an error with nothing changed. */
  srcaddr_list_t list = {NULL, 0};
  iocpsrv_fault_arm(FAULT_ALLOC, 1, 0);
  CHECK_EQ(srcaddr_list_parse("127.0.0.1", &list), IOCPSRV_ENOMEM);
  CHECK(list.v == NULL && list.n == 0);
  iocpsrv_fault_arm(FAULT_ALLOC, 0, 0);
}

int main(int argc, char **argv) {
  test_init(argc, argv);
  TEST_RUN(cidr_boundaries);
  TEST_RUN(per_source_map_against_a_reference);
  TEST_RUN(per_source_map_out_of_memory);
  return test_done();
}
