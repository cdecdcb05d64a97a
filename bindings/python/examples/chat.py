#!/usr/bin/env python3
"""Chat server: every packet (or, with --lines, every text line) a client sends is
broadcast to all connected clients, prefixed with the sender's address. Joins and leaves
are announced the same way.

    python3 examples/chat.py --port 5152            # 4-byte length framing
    python3 examples/chat.py --port 5152 --lines    # raw bytes, one message per line:
    nc 127.0.0.1 5152                               # try it from two terminals
"""

import argparse
import os
import signal
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import iocpsrv  # noqa: E402

MAX_LINE = 64 * 1024


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=5152, help="0 picks a free port")
    ap.add_argument("--lines", action="store_true",
                    help="raw framing: messages are text lines (for nc/telnet)")
    args = ap.parse_args()

    peers = {}    # conn -> "ip:port" (per-connection state lives in Python dicts)
    partial = {}  # conn -> bytes of an unfinished line (--lines)
    end = b"\n" if args.lines else b""

    def say(text: bytes) -> None:
        srv.broadcast(text + end)  # connections whose send queue is full skip it

    def on_connect(conn, peer):
        peers[conn] = peer
        say(b"* %s joined" % peer.encode())

    def on_packet(conn, data):
        who = peers[conn].encode()
        if not args.lines:
            say(who + b": " + data)
            return
        buf = partial.pop(conn, b"") + data
        *lines, rest = buf.split(b"\n")
        for line in lines:
            say(who + b": " + line.rstrip(b"\r"))
        if len(rest) > MAX_LINE:
            return False  # a line that never ends: close the connection
        if rest:
            partial[conn] = rest

    def on_disconnect(conn, reason):
        peer = peers.pop(conn, "?")
        partial.pop(conn, None)
        try:
            say(b"* %s left (%s)" % (peer.encode(), reason.name.lower().encode()))
        except iocpsrv.ServerStopped:
            pass  # the server is stopping: nobody to tell

    srv = iocpsrv.Server(args.host, args.port, on_connect=on_connect,
                         on_packet=on_packet, on_disconnect=on_disconnect,
                         framing="raw" if args.lines else "len32_le")
    signal.signal(signal.SIGTERM, _interrupt)  # stop like Ctrl-C
    try:
        srv.start()
        print(f"listening on {args.host}:{srv.port}", flush=True)
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.close(timeout=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
