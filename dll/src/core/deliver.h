/* Delivery to the host: one interface, two implementations chosen by
 * IOCPSRV_OPT_PULL_MODE: callbacks on the worker, or events in the pull queue for
 * iocpsrv_poll. Both keep the same contract in C: connect first, packets in order,
 * exactly one disconnect last (none for a client the host refused or never met);
 * after iocpsrv_disconnect returns no packet is handed over; after
 * iocpsrv_pause_receive none until resume, the ones already queued held in order.
 *
 * The token holder calls the deliver_* functions without any lock (a host callback
 * may run inside), the *_locked ones with the connection's lock held. */
#ifndef IOCPSRV_CORE_DELIVER_H
#define IOCPSRV_CORE_DELIVER_H

#include "core/engine.h"

/* What deliver_packet_to_host tells the framer loop. */
enum {
  DELIVER_ON = 0,    /* go on */
  DELIVER_STOP = 1,  /* stop delivering (paused, closing, or the callback asked to close) */
  DELIVER_FULL = 2,  /* pull queue at its limit: stop reading until it has room */
  DELIVER_NOMEM = 3  /* the packet could not be queued: abort the connection */
};

/* The host meets the connection: its connect callback, or a CONNECT event (with its
 * DISCONNECT set aside, so that it can never be lost to an allocation failure).
 * DELIVER_MET, DELIVER_REFUSED (the connect callback said no: the caller closes it) or
 * DELIVER_GONE (it could not be reported and is gone: do not touch it again). */
enum { DELIVER_MET = 0, DELIVER_REFUSED = 1, DELIVER_GONE = 2 };
int deliver_connect(iocpsrv_t *srv, conn_t *c);
/* One whole packet. In pull mode it goes through `pull`, the packets of one receive
 * queued together (pullq_batch_t); deliver_packets_end queues what `pull` holds and
 * must follow the last packet of the receive. */
int deliver_packet_to_host(iocpsrv_t *srv, conn_t *c, pullq_batch_t *pull,
                           const uint8_t *data, size_t len);
void deliver_packets_end(iocpsrv_t *srv, conn_t *c, pullq_batch_t *pull);
/* Whether packets go to the host in batches (the packet-batch callback is set in
 * callback mode); then the caller gathers them and uses deliver_batch_to_host. */
int deliver_batches(const iocpsrv_t *srv);
/* Up to IOCPSRV_BATCH_MAX whole packets of one connection, in order: DELIVER_ON or
 * DELIVER_STOP. */
int deliver_batch_to_host(iocpsrv_t *srv, conn_t *c, const iocpsrv_buf_t *views, int n);
/* The peer's FIN arrived while open: 1 when the close starts now (callbacks: the host
 * has had every packet before it), 0 when it waits for the host to poll past it, -1
 * when that wait cannot be recorded (close now as well). */
int deliver_peer_eof(iocpsrv_t *srv, conn_t *c);
/* The drain; 1 if the connection is gone (a drain that cannot be queued aborts it: a
 * lost drain would stall the host for good). */
int deliver_drain(iocpsrv_t *srv, conn_t *c);
/* The last word: the disconnect callback or DISCONNECT event, or, for a connection the
 * host refused or never met, nothing (what was set aside for it is released). */
void deliver_disconnect(iocpsrv_t *srv, conn_t *c, int reason);

/* The host paused (1) or resumed (0) receiving. Lock held. */
void deliver_pause_locked(iocpsrv_t *srv, conn_t *c, int paused);
/* The host closed or refused the connection: nothing queued for it is handed over any
 * more but its last event. Lock held. */
void deliver_close_locked(iocpsrv_t *srv, conn_t *c);

#endif
