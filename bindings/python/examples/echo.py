#!/usr/bin/env python3
"""Echo server: every packet goes back to its sender (4-byte little-endian length framing
by default, the protocol of samples/flood).

    python3 examples/echo.py --port 5150
    build/linux/samples/iocpsrv-flood --port 5150 --connections 8 --depth 16

Flow control: when a client does not read its echoes and its send queue fills up
(SendQueueFull), the server stops reading from it (pause) until the queue drains
(on_drain), so no echo is lost and memory stays bounded.

By default the packets of each poll come as one list (on_batch) and are echoed with one
send_many() call: the cheapest way through the binding. --per-packet uses one
on_packet(conn, data) callback and one send() per packet instead.
"""

import argparse
import os
import signal
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import iocpsrv  # noqa: E402


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=5150, help="0 picks a free port")
    ap.add_argument("--workers", type=int, default=0, help="engine worker threads (0 = default)")
    ap.add_argument("--framing", default="len32_le",
                    help="len32_le, len32_be, len16_le, len16_be or raw")
    ap.add_argument("--max-packet-size", type=int, default=1 << 20)
    ap.add_argument("--send-queue-limit", type=int, default=4 << 20,
                    help="bytes queued per client before it is paused")
    ap.add_argument("--pull-batch-sends", type=int, choices=(0, 1), default=None,
                    help="1: one write per client per batch of events (the default when "
                         "the library has it), 0: one write per send")
    ap.add_argument("--per-packet", action="store_true",
                    help="on_packet + send() per packet instead of on_batch + send_many()")
    ap.add_argument("--verbose", action="store_true", help="print connects and disconnects")
    args = ap.parse_args()

    stalled = {}  # conn -> the packets that did not fit, while the connection is paused
    pauses = 0

    def stall(conn, data):
        nonlocal pauses
        waiting = stalled.get(conn)
        if waiting is None:
            pauses += 1
            stalled[conn] = [data]
            srv.pause(conn)  # no more packets from conn until resume
        else:
            waiting.append(data)

    def on_batch(packets):
        for conn, data, error in send_many(packets):
            if isinstance(error, iocpsrv.SendQueueFull):
                stall(conn, data)
            # else the connection is gone: nothing to echo to

    def on_packet(conn, data):
        try:
            send(conn, data)
        except iocpsrv.SendQueueFull:
            stall(conn, data)

    def on_drain(conn):
        waiting = stalled.pop(conn, None)
        if waiting is None:
            return
        refused = send_many([(conn, data) for data in waiting])
        if refused:  # still no room (another send came first): the next drain retries
            stalled[conn] = [data for _, data, _ in refused]
            return
        srv.resume(conn)

    def on_connect(conn, peer):
        if args.verbose:
            print(f"+ {conn} {peer}", flush=True)

    def on_disconnect(conn, reason):
        stalled.pop(conn, None)
        if args.verbose:
            print(f"- {conn} {reason.name.lower()}", flush=True)

    extra = {}
    if args.pull_batch_sends is not None:
        extra["pull_batch_sends"] = args.pull_batch_sends
    srv = iocpsrv.Server(
        args.host, args.port, **extra,
        on_drain=on_drain, on_disconnect=on_disconnect,
        **(dict(on_packet=on_packet) if args.per_packet else dict(on_batch=on_batch)),
        on_connect=on_connect if args.verbose else None,
        worker_threads=args.workers, framing=args.framing,
        max_packet_size=args.max_packet_size, send_queue_limit=args.send_queue_limit)
    send, send_many = srv.send, srv.send_many

    signal.signal(signal.SIGTERM, _interrupt)  # stop like Ctrl-C
    try:
        srv.start()
        print(f"listening on {args.host}:{srv.port}", flush=True)
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop()
        st = srv.stats()
        srv.close()
    print(f"stopped: {st.connections_total} connections, {st.packets_in} packets in, "
          f"{st.packets_out} out, {pauses} pauses", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
