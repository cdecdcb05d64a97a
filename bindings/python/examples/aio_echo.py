#!/usr/bin/env python3
"""Echo server on asyncio (iocpsrv.aio): a Protocol per connection, or --events for the
``async for event in server`` style. Same framing and flags as echo.py.

    python3 examples/aio_echo.py --port 5150 [--events | --batch]

--batch: the protocol takes each poll's packets as one list (packets_received) and
echoes them with one send_many(); a client that does not read is waited for with
``await connection.drain()`` (send_async's back-pressure) instead of pause/resume.
"""

import argparse
import asyncio
import os
import signal
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import iocpsrv  # noqa: E402
import iocpsrv.aio  # noqa: E402
from iocpsrv import EventType  # noqa: E402


class Echo(iocpsrv.aio.Protocol):
    def connection_made(self, connection):
        self.connection = connection
        self.send = connection.send
        self.stalled = None

    def packet_received(self, data):
        try:
            self.send(data)
        except iocpsrv.SendQueueFull:  # the client does not read: stop reading it
            self.stalled = data
            self.connection.pause_reading()

    def drained(self):
        if self.stalled is not None:
            self.send(self.stalled)
            self.stalled = None
            self.connection.resume_reading()


class BatchEcho(iocpsrv.aio.Protocol):
    def connection_made(self, connection):
        self.connection = connection
        self.send_many = connection.server.send_many
        self.waiting = None  # the task that resends refused echoes after a drain

    def packets_received(self, packets):
        cid = self.connection.id
        refused = self.send_many([(cid, data) for data in packets])
        if refused:  # the client does not read: stop reading it until there is room
            self.connection.pause_reading()
            self.waiting = asyncio.ensure_future(self.resend([d for _, d, _ in refused]))

    async def resend(self, packets):
        try:
            for data in packets:
                await self.connection.send_async(data)
            self.connection.resume_reading()
        except (iocpsrv.ConnectionNotFound, iocpsrv.ServerStopped):
            pass  # the client is gone


async def serve_events(srv):
    send = srv.send
    async for ev in srv:
        if ev.type is EventType.PACKET:
            send(ev.conn, ev.data)  # (no flow control in this short form)


async def main(args):
    factory = None if args.events else BatchEcho if args.batch else Echo
    srv = iocpsrv.aio.Server(args.host, args.port, protocol_factory=factory,
                             worker_threads=args.workers,
                             send_queue_limit=args.send_queue_limit)
    await srv.start()
    print(f"listening on {args.host}:{srv.port}", flush=True)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, srv.stop)
    loop.add_signal_handler(signal.SIGINT, srv.stop)
    if args.events:
        await serve_events(srv)
    await srv.wait_closed()
    st = srv.stats()
    await srv.close()
    print(f"stopped: {st.connections_total} connections, {st.packets_in} packets in, "
          f"{st.packets_out} out", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=5150, help="0 picks a free port")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--send-queue-limit", type=int, default=4 << 20)
    ap.add_argument("--events", action="store_true", help="async for instead of a Protocol")
    ap.add_argument("--batch", action="store_true",
                    help="packets_received + send_many instead of packet_received + send")
    asyncio.run(main(ap.parse_args()))
