#!/usr/bin/env python3
"""Echo server: every packet goes back to its sender (4-byte little-endian length framing
by default, the protocol of samples/flood).

    python3 examples/echo.py --port 5150
    build/linux/samples/iocpsrv-flood --port 5150 --connections 8 --depth 16

Flow control: when a client does not read its echoes and its send queue fills up
(SendQueueFull), the server stops reading from it (pause) until the queue drains
(on_drain), so no echo is lost and memory stays bounded.
"""

import argparse
import os
import signal
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import iocpsrv  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=5150)
    ap.add_argument("--workers", type=int, default=0, help="engine worker threads (0 = default)")
    ap.add_argument("--framing", default="len32_le",
                    help="len32_le, len32_be, len16_le, len16_be or raw")
    ap.add_argument("--max-packet-size", type=int, default=1 << 20)
    ap.add_argument("--verbose", action="store_true", help="print connects and disconnects")
    args = ap.parse_args()

    stalled = {}  # conn -> the packet that did not fit, while the connection is paused

    def on_packet(conn, data):
        try:
            send(conn, data)
        except iocpsrv.SendQueueFull:
            stalled[conn] = data
            srv.pause(conn)  # no packet callback for conn until resume

    def on_drain(conn):
        data = stalled.pop(conn, None)
        if data is not None:
            send(conn, data)
            srv.resume(conn)

    def on_connect(conn, peer):
        if args.verbose:
            print(f"+ {conn} {peer}", flush=True)

    def on_disconnect(conn, reason):
        stalled.pop(conn, None)
        if args.verbose:
            print(f"- {conn} {reason.name.lower()}", flush=True)

    srv = iocpsrv.Server(
        args.host, args.port,
        on_packet=on_packet, on_drain=on_drain, on_disconnect=on_disconnect,
        on_connect=on_connect if args.verbose else None,
        worker_threads=args.workers, framing=args.framing,
        max_packet_size=args.max_packet_size)
    send = srv.send

    signal.signal(signal.SIGTERM, lambda *_: srv.stop(0))
    srv.start()
    print(f"listening on {args.host}:{srv.port}", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        st = srv.stats()
        srv.close()
    print(f"stopped: {st.connections_total} connections, {st.packets_in} packets in, "
          f"{st.packets_out} out", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
