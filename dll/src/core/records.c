#include "core/records.h"

#include <string.h>

static iocpsrv_send_record_t header_at(const uint8_t *p) {
  iocpsrv_send_record_t h;
  memcpy(&h, p, sizeof h); /* any alignment */
  return h;
}

static int padding_is_zero(const uint8_t *p, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (p[i]) return 0;
  return 1;
}

int64_t send_records_check(const uint8_t *buf, size_t size) {
  if (size % 8 || (size && !buf)) return -1;
  int64_t count = 0;
  size_t off = 0;
  while (off < size) {
    if (size - off < sizeof(iocpsrv_send_record_t)) return -1;
    iocpsrv_send_record_t h = header_at(buf + off);
    size_t body = IOCPSRV_PACKED_ALIGN(h.len);
    off += sizeof h;
    if (h.flags != 0 || body > size - off) return -1;
    if (!padding_is_zero(buf + off + h.len, body - h.len)) return -1;
    off += body;
    count++;
  }
  return count;
}

void send_record_next(const uint8_t *buf, size_t *offset, send_record_t *out) {
  iocpsrv_send_record_t h = header_at(buf + *offset);
  out->conn = h.conn;
  out->len = h.len;
  out->payload = buf + *offset + sizeof h;
  *offset += sizeof h + IOCPSRV_PACKED_ALIGN(h.len);
}
