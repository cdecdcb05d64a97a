/* The packed batch entry points: iocpsrv_poll_packed and iocpsrv_send_packed, one
 * crossing of the host boundary per batch (formats in iocpsrv.h). */
#include "core/internal.h"

#include "core/records.h"

int64_t IOCPSRV_CALL iocpsrv_poll_packed(iocpsrv_t *srv, void *buf, size_t cap,
                                         int timeout_ms) {
  if (!srv || !buf || cap == 0) return IOCPSRV_EINVAL;
  if (!srv->opt.pull_mode) return IOCPSRV_ENOTSUP;
  if (engine_in_worker_of(srv)) return IOCPSRV_EINCALLBACK;
  uint64_t seq = poll_begin(srv);
  int64_t n = pullq_poll_packed(&srv->pull, buf, cap, timeout_ms);
  poll_end(srv, seq);
  return n;
}

/* The connections refused so far in one iocpsrv_send_packed call, with their error:
 * their later records are refused the same way, so no connection gets a packet
 * without the one before it. An open-addressed table, on the stack until it grows. */
#define REFUSED_INLINE 64
typedef struct refused_set_s {
  iocpsrv_conn_id_t *ids;
  int *errs; /* 0: free slot */
  size_t cap, n;
  int nomem; /* the table could not grow: every later record is refused */
  iocpsrv_conn_id_t inline_ids[REFUSED_INLINE];
  int inline_errs[REFUSED_INLINE];
} refused_set_t;

static size_t refused_slot(const refused_set_t *s, iocpsrv_conn_id_t id) {
  size_t i = (size_t)(id * 0x9E3779B97F4A7C15ull) & (s->cap - 1);
  while (s->errs[i] && s->ids[i] != id) i = (i + 1) & (s->cap - 1);
  return i;
}

static int refused_find(const refused_set_t *s, iocpsrv_conn_id_t id) {
  if (s->nomem) return IOCPSRV_ENOMEM;
  if (!s->n) return 0;
  return s->errs[refused_slot(s, id)];
}

static void refused_grow(refused_set_t *s) {
  size_t cap = s->cap * 2;
  iocpsrv_conn_id_t *ids = srv_malloc(cap * sizeof *ids);
  int *errs = srv_calloc(cap, sizeof *errs);
  if (!ids || !errs) {
    free(ids);
    free(errs);
    s->nomem = 1;
    return;
  }
  refused_set_t bigger = *s;
  bigger.ids = ids;
  bigger.errs = errs;
  bigger.cap = cap;
  for (size_t i = 0; i < s->cap; i++)
    if (s->errs[i]) {
      size_t j = refused_slot(&bigger, s->ids[i]);
      ids[j] = s->ids[i];
      errs[j] = s->errs[i];
    }
  if (s->ids != s->inline_ids) {
    free(s->ids);
    free(s->errs);
  }
  s->ids = ids;
  s->errs = errs;
  s->cap = cap;
}

static void refused_add(refused_set_t *s, iocpsrv_conn_id_t id, int err) {
  if (s->nomem) return;
  if ((s->n + 1) * 4 > s->cap * 3) refused_grow(s);
  if (s->nomem) return;
  size_t i = refused_slot(s, id);
  s->ids[i] = id;
  s->errs[i] = err;
  s->n++;
}

static void refused_free(refused_set_t *s) {
  if (s->ids != s->inline_ids) {
    free(s->ids);
    free(s->errs);
  }
}

/* Reports a refused record and counts it. */
static void refuse_record(iocpsrv_send_result_t *refused, int max, int *n, uint32_t index,
                          int err) {
  if (*n < max) {
    refused[*n].index = index;
    refused[*n].error = err;
  }
  (*n)++;
}

/* The record at *off and up to RUN_MAX - 1 consecutive ones for the same connection,
 * unless that connection is the calling worker's own (its records go one by one). */
#define RUN_MAX 64
static size_t take_run(iocpsrv_t *srv, const uint8_t *buf, size_t size, size_t *off,
                       send_record_t *run) {
  send_record_next(buf, off, &run[0]);
  if (own_conn(srv, run[0].conn)) return 1;
  size_t n = 1, next = *off;
  while (n < RUN_MAX && next < size) {
    send_record_t r;
    send_record_next(buf, &next, &r);
    if (r.conn != run[0].conn) break;
    run[n++] = r;
    *off = next;
  }
  return n;
}

/* Sends a run from take_run; returns how many went, *rc the first refusal. */
static size_t send_records(iocpsrv_t *srv, const send_record_t *run, size_t n, int *rc) {
  if (n == 1 && own_conn(srv, run[0].conn)) { /* a worker's callback: its own queue */
    iocpsrv_buf_t b = {run[0].payload, run[0].len};
    *rc = send_packet(srv, run[0].conn, &b, 1, run[0].len);
    return *rc == 0;
  }
  return send_run(srv, run[0].conn, run, n, rc);
}

int IOCPSRV_CALL iocpsrv_send_packed(iocpsrv_t *srv, const void *buf, size_t size,
                                     iocpsrv_send_result_t *refused, int max_refused) {
  if (!srv || max_refused < 0 || (max_refused && !refused)) return IOCPSRV_EINVAL;
  if (send_records_check(buf, size) < 0) return IOCPSRV_EINVAL;
  if (srv_state(srv) != SRV_RUNNING) return IOCPSRV_ESTOPPED;
  refused_set_t set;
  set.ids = set.inline_ids;
  set.errs = set.inline_errs;
  set.cap = REFUSED_INLINE;
  set.n = 0;
  set.nomem = 0;
  memset(set.inline_errs, 0, sizeof set.inline_errs);
  int nrefused = 0;
  size_t off = 0;
  send_record_t run[RUN_MAX];
  for (uint32_t index = 0; off < size;) {
    size_t n = take_run(srv, buf, size, &off, run);
    int rc = refused_find(&set, run[0].conn);
    size_t sent = 0;
    if (!rc) {
      sent = send_records(srv, run, n, &rc);
      if (rc) refused_add(&set, run[0].conn, rc);
    }
    index += (uint32_t)sent;
    for (size_t i = sent; i < n; i++) refuse_record(refused, max_refused, &nrefused, index++, rc);
  }
  refused_free(&set);
  return nrefused;
}
