#!/usr/bin/env python3
"""Echo client: the client role of iocpsrv. An engine with no listener opens
--connections outbound connections to an echo server (examples/echo.py, or any server
of the same framing), keeps --depth packets in flight on each, checks that each of the
--count packets comes back unchanged and in order, and closes the connection.

    python3 examples/client.py --port 5150 [--host 127.0.0.1] [--connections 10]
                               [--count 1000] [--depth 8] [--size 64] [--aio]

Prints "N connections, M packets echoed and verified" and exits 0, or names what
failed (an attempt's Reason, a wrong echo) and exits 1.
"""

import argparse
import asyncio
import os
import sys
import threading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import iocpsrv  # noqa: E402
import iocpsrv.aio  # noqa: E402


_PATTERN = bytes(range(256))


def payload(seq, size):
    """Packet `seq` of a connection: its number, then bytes counting from seq, to
    `size` bytes in all."""
    global _PATTERN
    head = b"%d:" % seq
    start, rest = seq & 0xFF, max(size - len(head), 0)
    if len(_PATTERN) < 256 + rest:
        _PATTERN = bytes(range(256)) * (rest // 256 + 2)
    return head + _PATTERN[start:start + rest]


class Checker:
    """One connection's packets: what to send next, what must come back next."""

    def __init__(self, count, depth, size):
        self.count, self.depth, self.size = count, depth, size
        self.sent = self.echoed = 0
        self.error = None

    def first(self):
        """The packets to send once connected: the first window."""
        return [self._next() for _ in range(min(self.depth, self.count))]

    def received(self, data):
        """An echo came: the next packet to send (or None), and whether all came."""
        if data != payload(self.echoed, self.size) and self.error is None:
            self.error = f"echo {self.echoed} differs ({len(data)} bytes)"
        self.echoed += 1
        more = self._next() if self.sent < self.count else None
        return more, self.echoed == self.count

    def _next(self):
        self.sent += 1
        return payload(self.sent - 1, self.size)


def run_threaded(args):
    finished = threading.Event()
    checkers, failures, ended = {}, [], []

    def on_connect(conn, peer):
        checkers[conn] = c = Checker(args.count, args.depth, args.size)
        for data in c.first():
            cli.send(conn, data)

    def on_packet(conn, data):
        more, done = checkers[conn].received(data)
        if more is not None:
            cli.send(conn, more)
        return not done  # False: close gracefully once every echo came

    def on_disconnect(conn, reason):
        c = checkers.get(conn)
        if c is None:  # never established: the reason says why
            failures.append(f"connection {conn}: {reason.name}")
        elif c.echoed < args.count:
            failures.append(f"connection {conn} ended early: {reason.name}")
        ended.append(conn)
        if len(ended) == args.connections:
            finished.set()

    with iocpsrv.Server(listen=False, on_connect=on_connect, on_packet=on_packet,
                        on_disconnect=on_disconnect) as cli:
        for _ in range(args.connections):
            cli.connect(args.host, args.port)
        if not finished.wait(args.timeout):
            failures.append(f"timed out: {len(ended)} of {args.connections} connections ended")
    failures += [c.error for c in checkers.values() if c.error]
    return failures, sum(c.echoed for c in checkers.values())


class CheckProtocol(iocpsrv.aio.Protocol):
    def __init__(self, args):
        self.checker = Checker(args.count, args.depth, args.size)
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, connection):
        self.connection = connection
        for data in self.checker.first():
            connection.send(data)

    def packet_received(self, data):
        more, done = self.checker.received(data)
        if more is not None:
            self.connection.send(more)
        return not done

    def connection_lost(self, reason):
        self.lost.set_result(reason)


async def run_aio(args):
    failures = []
    async with iocpsrv.aio.Server(protocol_factory=lambda: CheckProtocol(args),
                                  listen=False) as cli:
        results = await asyncio.gather(
            *[cli.connect(args.host, args.port) for _ in range(args.connections)],
            return_exceptions=True)
        conns = []
        for r in results:
            if isinstance(r, iocpsrv.ConnectFailed):
                failures.append(f"connection {r.conn}: {r.reason.name}")
            elif isinstance(r, BaseException):
                raise r
            else:
                conns.append(r)
        try:
            await asyncio.wait_for(asyncio.gather(*[c.protocol.lost for c in conns]),
                                   args.timeout)
        except asyncio.TimeoutError:
            failures.append("timed out")
    checkers = [c.protocol.checker for c in conns]
    failures += [f"connection {c.id}: {c.protocol.checker.error}" for c in conns
                 if c.protocol.checker.error]
    failures += [f"connection {c.id} ended early: {c.protocol.lost.result().name}"
                 for c in conns if c.protocol.lost.done()
                 and c.protocol.checker.echoed < args.count]
    return failures, sum(c.echoed for c in checkers)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--connections", type=int, default=10)
    p.add_argument("--count", type=int, default=1000, help="packets per connection")
    p.add_argument("--depth", type=int, default=8, help="packets in flight per connection")
    p.add_argument("--size", type=int, default=64, help="payload bytes")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds for the whole run")
    p.add_argument("--aio", action="store_true", help="iocpsrv.aio instead of threads")
    args = p.parse_args()
    if args.aio:
        failures, echoed = asyncio.run(run_aio(args))
    else:
        failures, echoed = run_threaded(args)
    for f in failures:
        print("FAILED:", f)
    print(f"{args.connections} connections, {echoed:,} packets echoed and verified")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
