/* The resolver thread (see resolver.h). */
#include "core/resolver.h"

#include <string.h>

#include "core/internal.h"

void resolver_init(resolver_t *r) {
  srv_mutex_init(&r->lock);
  srv_cond_init(&r->wake);
  r->head = r->tail = NULL;
  r->running = r->quit = 0;
}

void resolver_destroy(resolver_t *r) {
  srv_cond_destroy(&r->wake);
  srv_mutex_destroy(&r->lock);
}

static resolve_job_t *next_job(resolver_t *r) {
  srv_mutex_lock(&r->lock);
  while (!r->head && !r->quit) srv_cond_wait_ms(&r->wake, &r->lock, -1);
  resolve_job_t *j = r->quit ? NULL : r->head;
  if (j) {
    r->head = j->next;
    if (!r->head) r->tail = NULL;
  }
  srv_mutex_unlock(&r->lock);
  return j;
}

static void resolver_main(void *arg) {
  iocpsrv_t *srv = arg;
  resolve_job_t *j;
  while ((j = next_job(&srv->resolver)) != NULL) {
    char service[16];
    snprintf(service, sizeof service, "%d", j->port);
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV; /* no AI_ADDRCONFIG: it hides localhost offline */
    if (getaddrinfo(j->host, service, &hints, &res) != 0) res = NULL;
    connect_resolved(srv, j->id, res);
    if (res) freeaddrinfo(res);
    free(j);
  }
}

int resolver_submit(iocpsrv_t *srv, uint64_t id, const char *host, int port) {
  resolver_t *r = &srv->resolver;
  size_t len = strlen(host);
  resolve_job_t *j = srv_malloc(sizeof *j + len + 1);
  if (!j) return IOCPSRV_ENOMEM;
  j->next = NULL;
  j->id = id;
  j->port = port;
  memcpy(j->host, host, len + 1);
  srv_mutex_lock(&r->lock);
  int rc = 0;
  if (!r->running) {
    r->quit = 0;
    if (srv_thread_create(&r->thread, resolver_main, srv) == 0) r->running = 1;
    else rc = IOCPSRV_ESYSTEM;
  }
  if (!rc) {
    if (r->tail) r->tail->next = j;
    else r->head = j;
    r->tail = j;
    srv_cond_signal(&r->wake);
  }
  srv_mutex_unlock(&r->lock);
  if (rc) free(j);
  return rc;
}

void resolver_stop(resolver_t *r) {
  srv_mutex_lock(&r->lock);
  int running = r->running;
  r->quit = 1;
  srv_cond_broadcast(&r->wake);
  srv_mutex_unlock(&r->lock);
  if (running) srv_thread_join(r->thread);
  srv_mutex_lock(&r->lock);
  while (r->head) {
    resolve_job_t *j = r->head;
    r->head = j->next;
    free(j);
  }
  r->tail = NULL;
  r->running = 0;
  srv_mutex_unlock(&r->lock);
}
