/* pull_echo.c -- the reference for the binding's pull mode: a C host draining the library
 * exactly as the .NET batch reader does (iocpsrv_poll_packed into one buffer, the echoes
 * gathered as send records and handed over with iocpsrv_send_packed right before the next
 * poll, IOCPSRV_OPT_PULL_BATCH_SENDS on), with nothing else in the way (packets up to
 * 64 KiB: it is a benchmark). What it reaches is
 * the most any binding can get from pull mode on this engine. Built and run by
 * run_bench.sh (server key "cpull"); prints "listening on HOST:PORT", stops on SIGTERM or
 * SIGINT.
 *
 *   cc -O2 -I dll/include pull_echo.c -L build/linux/dll -liocpsrv -o pull_echo
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "iocpsrv.h"

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig) {
  (void)sig;
  stop_requested = 1;
}

/* Appends an echo of the packet record at `in` to the send records at out[*used]. */
static void gather_echo(const unsigned char *in, const iocpsrv_record_t *r, unsigned char *out,
                        size_t *used) {
  iocpsrv_send_record_t h = {r->conn, r->len, 0};
  memcpy(out + *used, &h, sizeof h);
  *used += sizeof h;
  memcpy(out + *used, in, IOCPSRV_PACKED_ALIGN(r->len)); /* the padding is zero in both */
  *used += IOCPSRV_PACKED_ALIGN(r->len);
}

int main(void) {
  enum { CAP = 64 << 10 };
  iocpsrv_t *srv;
  if (iocpsrv_create(&srv, NULL) != 0) return 1;
  iocpsrv_set_option(srv, IOCPSRV_OPT_PULL_MODE, 1);
  iocpsrv_set_option(srv, IOCPSRV_OPT_PULL_BATCH_SENDS, 1);
  int rc = iocpsrv_listen(srv, "127.0.0.1", 0);
  if (rc != 0) {
    fprintf(stderr, "pull_echo: listen: %s\n", iocpsrv_strerror(rc));
    return 1;
  }
  printf("listening on 127.0.0.1:%d\n", iocpsrv_port(srv));
  fflush(stdout);
  signal(SIGTERM, on_signal);
  signal(SIGINT, on_signal);

  /* Echo records are 8 bytes shorter than event records: CAP bytes of events always fit. */
  unsigned char *in = aligned_alloc(8, CAP), *out = aligned_alloc(8, CAP);
  size_t gathered = 0;
  while (!stop_requested) {
    if (gathered) iocpsrv_send_packed(srv, out, gathered, NULL, 0);
    gathered = 0;
    int64_t n = iocpsrv_poll_packed(srv, in, CAP, 100);
    if (n < 0) break;
    for (size_t off = 0; off < (size_t)n;) {
      iocpsrv_record_t r;
      memcpy(&r, in + off, sizeof r);
      off += sizeof r;
      if (r.type == IOCPSRV_EVENT_PACKET) gather_echo(in + off, &r, out, &gathered);
      off += IOCPSRV_PACKED_ALIGN(r.len);
    }
  }
  iocpsrv_stop(srv, 1000);
  iocpsrv_destroy(srv);
  free(in);
  free(out);
  return 0;
}
