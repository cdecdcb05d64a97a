/* The resolver (see resolver.h). */
#include "core/resolver.h"

#include <string.h>

#include "core/internal.h"

static resolver_t *resolver_new(iocpsrv_t *srv) {
  resolver_t *r = srv_calloc(1, sizeof *r);
  if (!r) return NULL;
  srv_mutex_init(&r->lock);
  srv_cond_init(&r->wake);
  srv_cond_init(&r->delivered);
  r->srv = srv;
  r->refs = 1; /* the server's */
  return r;
}

static void drop_jobs_locked(resolver_t *r) {
  while (r->head) {
    resolve_job_t *j = r->head;
    r->head = j->next;
    free(j);
  }
  r->tail = NULL;
}

/* Let go of one reference; the last frees it. Lock held, released here. */
static void release_locked(resolver_t *r) {
  int last = --r->refs == 0;
  srv_mutex_unlock(&r->lock);
  if (!last) return;
  srv_cond_destroy(&r->delivered);
  srv_cond_destroy(&r->wake);
  srv_mutex_destroy(&r->lock);
  free(r);
}

/* The next job, or NULL once the resolver is detached. Lock held. */
static resolve_job_t *next_job_locked(resolver_t *r) {
  while (!r->head && r->srv) {
    r->idle++;
    srv_cond_wait_ms(&r->wake, &r->lock, -1);
    r->idle--;
  }
  resolve_job_t *j = r->srv ? r->head : NULL;
  if (j) {
    r->head = j->next;
    if (!r->head) r->tail = NULL;
  }
  return j;
}

static struct addrinfo *lookup(const resolve_job_t *j) {
  char service[16];
  snprintf(service, sizeof service, "%d", j->port);
  struct addrinfo hints, *res = NULL;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV; /* no AI_ADDRCONFIG: it hides localhost offline */
  return getaddrinfo(j->host, service, &hints, &res) == 0 ? res : NULL;
}

static void resolver_main(void *arg) {
  resolver_t *r = arg;
  srv_mutex_lock(&r->lock);
  resolve_job_t *j;
  while ((j = next_job_locked(r)) != NULL) {
    srv_mutex_unlock(&r->lock);
    struct addrinfo *res = lookup(j); /* may take seconds: no lock held */
    srv_mutex_lock(&r->lock);
    iocpsrv_t *srv = r->srv;
    if (srv) { /* still attached: the detach waits until this is handed over */
      r->delivering++;
      srv_mutex_unlock(&r->lock);
      connect_resolved(srv, j->id, res);
      srv_mutex_lock(&r->lock);
      if (--r->delivering == 0) srv_cond_broadcast(&r->delivered);
    }
    srv_mutex_unlock(&r->lock);
    if (res) freeaddrinfo(res);
    free(j);
    srv_mutex_lock(&r->lock);
  }
  r->threads--;
  release_locked(r);
}

/* A thread for a job just queued when none is idle, up to RESOLVER_THREADS. 0, or -1
 * when none could be made and none exists to take the job. Lock held. */
static int add_thread_locked(resolver_t *r) {
  if (r->idle > 0 || r->threads >= RESOLVER_THREADS) return 0;
  srv_thread_t t;
  if (srv_thread_create(&t, resolver_main, r) != 0) return r->threads > 0 ? 0 : -1;
  srv_thread_detach(t);
  r->threads++;
  r->refs++;
  return 0;
}

int resolver_submit(iocpsrv_t *srv, uint64_t id, const char *host, int port) {
  size_t len = strlen(host);
  resolve_job_t *j = srv_malloc(sizeof *j + len + 1);
  if (!j) return IOCPSRV_ENOMEM;
  j->next = NULL;
  j->id = id;
  j->port = port;
  memcpy(j->host, host, len + 1);
  srv_mutex_lock(&srv->resolver_lock);
  resolver_t *r = srv->resolver;
  if (!r) r = srv->resolver = resolver_new(srv);
  int rc = r ? 0 : IOCPSRV_ENOMEM;
  if (r) {
    srv_mutex_lock(&r->lock);
    if (r->tail) r->tail->next = j;
    else r->head = j;
    r->tail = j;
    if (add_thread_locked(r) == 0) {
      srv_cond_signal(&r->wake);
      j = NULL; /* the resolver's now */
    } else {
      r->head = r->tail = NULL; /* no thread: it was the only job */
      rc = IOCPSRV_ESYSTEM;
    }
    srv_mutex_unlock(&r->lock);
  }
  srv_mutex_unlock(&srv->resolver_lock);
  free(j);
  return rc;
}

void resolver_detach(iocpsrv_t *srv) {
  srv_mutex_lock(&srv->resolver_lock);
  resolver_t *r = srv->resolver;
  srv->resolver = NULL;
  srv_mutex_unlock(&srv->resolver_lock);
  if (!r) return;
  srv_mutex_lock(&r->lock);
  r->srv = NULL;
  srv_cond_broadcast(&r->wake); /* idle threads end */
  while (r->delivering) srv_cond_wait_ms(&r->delivered, &r->lock, -1);
  drop_jobs_locked(r);
  release_locked(r);
}
