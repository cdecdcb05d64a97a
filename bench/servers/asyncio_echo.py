#!/usr/bin/python3
"""asyncio_echo.py -- the plain-Python baseline for bench/run: an asyncio Protocol echo
server with the same framing as every other bench server (4-byte little-endian length +
payload, each packet echoed to its sender). Standard library only, the default event loop;
--loop uvloop runs the very same Protocol on uvloop (Debian: python3-uvloop) instead.

    /usr/bin/python3 bench/servers/asyncio_echo.py --port 0 [--per-packet] [--loop uvloop]

Each data_received() appends to the connection's buffer and handles every whole packet
as an application would: the payload is cut out as a bytes object and its framed echo
built. By default the echoes of one read are joined and sent with ONE transport.write()
(one write per read batch, the batching iocpsrv does for Python and ref_epoll.c/uv_echo.c
do in C); --per-packet writes each echo with its own transport.write() (with an empty
transport buffer, that is one send() per packet).
Flow control: pause_writing() stops reading until resume_writing().
Prints "listening on HOST:PORT" (port 0 picks a free one); SIGINT/SIGTERM stop it.
Exit status 3 when --loop uvloop is asked for and uvloop cannot be imported.
"""

import argparse
import asyncio
import signal
import struct
import sys

_hdr = struct.Struct("<I")
MAX_PACKET = 1 << 20
packets = 0


class Echo(asyncio.Protocol):
    per_packet = False

    def connection_made(self, transport):
        self.transport = transport
        self.buf = bytearray()

    def data_received(self, data):
        global packets
        buf = self.buf
        buf += data
        pos = 0
        end = len(buf)
        unpack = _hdr.unpack_from
        out = None if self.per_packet else []
        emit = self.transport.write if out is None else out.append
        pack = _hdr.pack
        count = 0
        while end - pos >= 4:
            (n,) = unpack(buf, pos)
            if n > MAX_PACKET:
                self.transport.abort()
                return
            if end - pos - 4 < n:
                break
            payload = bytes(buf[pos + 4:pos + 4 + n])
            pos += 4 + n
            emit(pack(n) + payload)
            count += 1
        if out:
            self.transport.write(b"".join(out))
        if pos:
            del buf[:pos]
            packets += count

    def pause_writing(self):
        self.transport.pause_reading()

    def resume_writing(self):
        self.transport.resume_reading()


async def main(args):
    Echo.per_packet = args.per_packet
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    server = await loop.create_server(Echo, args.host, args.port, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    print(f"listening on {args.host}:{port} ({type(loop).__module__}.{type(loop).__name__})",
          flush=True)
    await stop
    server.close()
    print(f"stopped: {packets} packets echoed", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=5151)
    ap.add_argument("--per-packet", action="store_true",
                    help="one transport.write() per packet instead of one per read")
    ap.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio",
                    help="event loop: the standard library's (default) or uvloop's")
    args = ap.parse_args()
    if args.loop == "uvloop":
        try:
            import uvloop
        except ImportError as e:
            print(f"asyncio_echo.py: --loop uvloop: {e} (Debian: python3-uvloop)",
                  file=sys.stderr, flush=True)
            sys.exit(3)
        # asyncio.Runner (3.11+) takes the loop factory; older Pythons use the policy.
        if hasattr(asyncio, "Runner"):
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(main(args))
        else:
            uvloop.install()
            asyncio.run(main(args))
    else:
        asyncio.run(main(args))
    sys.exit(0)
