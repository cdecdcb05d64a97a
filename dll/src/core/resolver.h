/* The resolver thread: host names given to iocpsrv_connect are looked up here, one at a
 * time, so that no worker (and no host thread calling connect) waits for DNS. Started
 * on the first name, joined by the stop once the connections are gone. */
#ifndef IOCPSRV_CORE_RESOLVER_H
#define IOCPSRV_CORE_RESOLVER_H

#include <stdint.h>

#include "core/platform.h"

typedef struct iocpsrv_s iocpsrv_t;

typedef struct resolve_job_s {
  struct resolve_job_s *next;
  uint64_t id;   /* the connection waiting for the answer */
  int port;
  char host[];
} resolve_job_t;

typedef struct resolver_s {
  srv_mutex_t lock; /* with wake: the job list and the thread's life */
  srv_cond_t wake;
  resolve_job_t *head, *tail;
  int running, quit;
  srv_thread_t thread;
} resolver_t;

void resolver_init(resolver_t *r);
void resolver_destroy(resolver_t *r);
/* Look `host` up for connection `id`; the answer goes to connect_resolved (connect.c)
 * on the resolver thread. 0, IOCPSRV_ENOMEM or IOCPSRV_ESYSTEM (no thread). */
int resolver_submit(iocpsrv_t *srv, uint64_t id, const char *host, int port);
/* The stop, once no connection is left: the thread ends after the lookup it is doing,
 * and jobs still queued (for connections gone since) are dropped. */
void resolver_stop(resolver_t *r);

#endif
