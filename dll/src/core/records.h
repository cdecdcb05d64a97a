/* The packed send records of iocpsrv_send_packed: checked whole before anything is
 * queued, then walked. Pure code (no I/O, no locks, no allocation): fuzzed by
 * fuzz/fuzz_send_records.c. */
#ifndef IOCPSRV_CORE_RECORDS_H
#define IOCPSRV_CORE_RECORDS_H

#include <stddef.h>
#include <stdint.h>

#include "iocpsrv.h"

/* One record of a checked buffer. */
typedef struct send_record_s {
  iocpsrv_conn_id_t conn;
  const uint8_t *payload;
  uint32_t len;
} send_record_t;

/* The number of records in buf[0..size), or -1 when the buffer is malformed: size not
 * a multiple of 8, a record that runs past the end, non-zero flags or padding. */
int64_t send_records_check(const uint8_t *buf, size_t size);

/* The record at *offset of a checked buffer; advances *offset to the next one. */
void send_record_next(const uint8_t *buf, size_t *offset, send_record_t *out);

#endif
