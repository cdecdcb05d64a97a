/* The resolver: host names given to iocpsrv_connect are looked up on threads of its
 * own, up to RESOLVER_THREADS at once, so that no worker (and no host thread calling
 * connect) waits for DNS, and one slow name does not hold up the others.
 *
 * A stop never waits for a lookup: the resolver is detached from its server
 * (resolver_detach), the lookups still running in the OS finish in the background and
 * their answers are dropped, and the last of its threads frees it. So the resolver is
 * shared by the server and its threads and counted (refs), never part of the server. */
#ifndef IOCPSRV_CORE_RESOLVER_H
#define IOCPSRV_CORE_RESOLVER_H

#include <stdint.h>

#include "core/platform.h"

typedef struct iocpsrv_s iocpsrv_t;

#define RESOLVER_THREADS 4

typedef struct resolve_job_s {
  struct resolve_job_s *next;
  uint64_t id;   /* the connection waiting for the answer */
  int port;
  char host[];
} resolve_job_t;

typedef struct resolver_s {
  srv_mutex_t lock;        /* everything below */
  srv_cond_t wake;         /* a job was queued, or the resolver was detached */
  srv_cond_t delivered;    /* no thread is handing an answer to the server any more */
  resolve_job_t *head, *tail;
  iocpsrv_t *srv;          /* NULL once detached: answers are dropped */
  int refs;                /* the server's (until detached) and one per thread */
  int threads, idle;       /* threads alive, and those waiting for a job */
  int delivering;          /* threads inside connect_resolved right now */
} resolver_t;

/* Look `host` up for connection `id`, on the resolver of the server's current run
 * (made on the first name). The answer goes to connect_resolved (connect.c) from a
 * resolver thread. 0, IOCPSRV_ENOMEM or IOCPSRV_ESYSTEM (no thread to be had). */
int resolver_submit(iocpsrv_t *srv, uint64_t id, const char *host, int port);
/* The stop, once no connection is left: the run's resolver lets go of the server.
 * Waits only for answers being handed over right now (no lookup); queued jobs are
 * dropped. */
void resolver_detach(iocpsrv_t *srv);

#endif
