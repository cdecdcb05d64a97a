/*
 * test.h -- tiny assertion macros and a sub-test runner for the iocpsrv C tests.
 *
 * A failed check prints "file:line: what failed (values)" and ends the process at once
 * with a non-zero status (_exit, so that engine worker threads still running cannot
 * hang or crash the exit path and hide the real failure).
 *
 * Each test file's main() calls test_init() and then TEST_RUN(fn) per sub-test; every
 * sub-test runs under a watchdog that names it and exits if it hangs (a deadlock in a
 * library call would otherwise only show up as a ctest timeout).
 */
#ifndef IOCPSRV_TEST_H
#define IOCPSRV_TEST_H

#include <inttypes.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "iocpsrv.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Print the message (printf-style) with file:line and exit(1) without cleanup. */
void test_fail(const char *file, int line, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4), noreturn))
#endif
    ;

/* Once per process: sockets (WSAStartup), unbuffered stdout, SIGPIPE diagnostics, fd
 * limit raised to the hard limit. */
void test_init(int argc, char **argv);

/* Run one named sub-test: prints "name ..." then "ok", under a watchdog of
 * test_watchdog_seconds (default 45). */
extern int test_watchdog_seconds;
void test_run(const char *name, void (*fn)(void));
#define TEST_RUN(fn) test_run(#fn, fn)

/* Skip the current sub-test with a visible message (the caller then returns). */
void test_skip(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;

/* End of main(): prints a summary and returns 0. */
int test_done(void);

/* Name of the sub-test running now (for diagnostics). */
const char *test_current(void);

/* A deterministic byte pattern, so receivers can verify content without a copy. */
uint8_t test_pattern_byte(uint64_t seed, size_t i);
void test_fill_pattern(void *buf, size_t len, uint64_t seed);
/* Index of the first mismatch with the pattern, or (size_t)-1 when all match. */
size_t test_check_pattern(const void *buf, size_t len, uint64_t seed);

/* Little-endian helpers for sequence numbers in payloads. */
void test_put_u32le(uint8_t *p, uint32_t v);
uint32_t test_get_u32le(const uint8_t *p);

/* Whether this Windows test runs under Wine (for the differences DESIGN.md and the
 * README's Wine notes list); 0 on Linux. */
int test_under_wine(void);

/* iocpsrv_stats / iocpsrv_conn_info with struct_size set (fail the test on error). */
iocpsrv_stats_t test_stats(iocpsrv_t *srv);
iocpsrv_conn_info_t test_conn_info(iocpsrv_t *srv, iocpsrv_conn_id_t id);
/* Wait up to timeout_ms for stats.connections_now == n (it drops just after a
 * disconnect is delivered: no event marks it). 0, or -1 on timeout. */
int test_wait_connections_now(iocpsrv_t *srv, uint64_t n, int timeout_ms);

/* Cheap 32-bit FNV-1a hash for digests of payloads. */
uint32_t test_hash(const void *data, size_t len);

#define CHECK(cond)                                                                   \
  do {                                                                                \
    if (!(cond))                                                                      \
      test_fail(__FILE__, __LINE__, "CHECK failed: %s", #cond);                       \
  } while (0)

#define CHECK_MSG(cond, ...)                                                          \
  do {                                                                                \
    if (!(cond)) {                                                                    \
      char test_msg_[512];                                                            \
      snprintf(test_msg_, sizeof test_msg_, __VA_ARGS__);                             \
      test_fail(__FILE__, __LINE__, "CHECK failed: %s: %s", #cond, test_msg_);        \
    }                                                                                 \
  } while (0)

/* Integer comparisons print both values. */
#define CHECK_CMP_(a, op, b)                                                          \
  do {                                                                                \
    long long test_a_ = (long long)(a), test_b_ = (long long)(b);                     \
    if (!(test_a_ op test_b_))                                                        \
      test_fail(__FILE__, __LINE__, "CHECK failed: %s %s %s (%lld vs %lld)", #a, #op, \
                #b, test_a_, test_b_);                                                \
  } while (0)
#define CHECK_EQ(a, b) CHECK_CMP_(a, ==, b)
#define CHECK_NE(a, b) CHECK_CMP_(a, !=, b)
#define CHECK_LT(a, b) CHECK_CMP_(a, <, b)
#define CHECK_LE(a, b) CHECK_CMP_(a, <=, b)
#define CHECK_GT(a, b) CHECK_CMP_(a, >, b)
#define CHECK_GE(a, b) CHECK_CMP_(a, >=, b)

#define CHECK_STREQ(a, b)                                                             \
  do {                                                                                \
    const char *test_sa_ = (a), *test_sb_ = (b);                                      \
    if (test_sa_ == NULL || test_sb_ == NULL || strcmp(test_sa_, test_sb_) != 0)      \
      test_fail(__FILE__, __LINE__, "CHECK failed: %s == %s (\"%s\" vs \"%s\")", #a,  \
                #b, test_sa_ ? test_sa_ : "(null)", test_sb_ ? test_sb_ : "(null)");  \
  } while (0)

#define CHECK_MEMEQ(a, b, n)                                                          \
  do {                                                                                \
    const unsigned char *test_ma_ = (const unsigned char *)(a);                       \
    const unsigned char *test_mb_ = (const unsigned char *)(b);                       \
    size_t test_n_ = (size_t)(n), test_i_;                                            \
    for (test_i_ = 0; test_i_ < test_n_; test_i_++)                                   \
      if (test_ma_[test_i_] != test_mb_[test_i_])                                     \
        test_fail(__FILE__, __LINE__,                                                 \
                  "CHECK failed: %s and %s differ at byte %llu of %llu (0x%02x vs 0x%02x)", \
                  #a, #b, (unsigned long long)test_i_, (unsigned long long)test_n_, test_ma_[test_i_], test_mb_[test_i_]);      \
  } while (0)

/* An iocpsrv call that must succeed (return >= 0). */
#define CHECK_OK(expr)                                                                \
  do {                                                                                \
    long long test_rc_ = (long long)(expr);                                           \
    if (test_rc_ < 0)                                                                 \
      test_fail(__FILE__, __LINE__, "%s failed: %lld %s (%s)", #expr, test_rc_,       \
                iocpsrv_err_name((int)test_rc_), iocpsrv_strerror((int)test_rc_));    \
  } while (0)

/* An iocpsrv call that must fail with one specific code. */
#define CHECK_ERR(expr, code)                                                         \
  do {                                                                                \
    long long test_rc_ = (long long)(expr);                                           \
    if (test_rc_ != (long long)(code))                                                \
      test_fail(__FILE__, __LINE__, "%s returned %lld %s, expected %s (%d)", #expr,   \
                test_rc_, test_rc_ < 0 ? iocpsrv_err_name((int)test_rc_) : "(success)", \
                #code, (int)(code));                                                  \
  } while (0)

/* An iocpsrv call that must fail with either of two codes. */
#define CHECK_ERR2(expr, code1, code2)                                                \
  do {                                                                                \
    long long test_rc_ = (long long)(expr);                                           \
    if (test_rc_ != (long long)(code1) && test_rc_ != (long long)(code2))             \
      test_fail(__FILE__, __LINE__, "%s returned %lld %s, expected %s or %s", #expr,  \
                test_rc_, test_rc_ < 0 ? iocpsrv_err_name((int)test_rc_) : "(success)", \
                #code1, #code2);                                                      \
  } while (0)

/* An iocpsrv call that must fail with some negative code. */
#define CHECK_FAILS(expr)                                                             \
  do {                                                                                \
    long long test_rc_ = (long long)(expr);                                           \
    if (test_rc_ >= 0)                                                                \
      test_fail(__FILE__, __LINE__, "%s returned %lld, expected a negative error code", \
                #expr, test_rc_);                                                     \
  } while (0)

#ifdef __cplusplus
}
#endif

#endif /* IOCPSRV_TEST_H */
