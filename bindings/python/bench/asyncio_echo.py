#!/usr/bin/env python3
"""Baseline for the throughput comparison: a plain asyncio Protocol echo server with the
same framing as examples/echo.py (4-byte little-endian length + payload). Each complete
packet is parsed and echoed with its own transport.write(), as an application that
answers packet by packet would (--batch joins the echoes of one read into one write).

    python3 bench/asyncio_echo.py --port 5151
"""

import argparse
import asyncio
import struct
import sys

_hdr = struct.Struct("<I")


class Echo(asyncio.Protocol):
    batch = False

    def connection_made(self, transport):
        self.transport = transport
        self.buf = bytearray()

    def data_received(self, data):
        buf = self.buf
        buf += data
        pos = 0
        end = len(buf)
        write = self.transport.write
        out = [] if self.batch else None
        while end - pos >= 4:
            (n,) = _hdr.unpack_from(buf, pos)
            if end - pos - 4 < n:
                break
            payload = bytes(buf[pos + 4:pos + 4 + n])
            pos += 4 + n
            packet = _hdr.pack(len(payload)) + payload
            if out is None:
                write(packet)
            else:
                out.append(packet)
        if out:
            write(b"".join(out))
        del buf[:pos]


async def main(args):
    Echo.batch = args.batch
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, args.host, args.port)
    port = server.sockets[0].getsockname()[1]
    print(f"listening on {args.host}:{port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=5151)
    ap.add_argument("--batch", action="store_true")
    try:
        asyncio.run(main(ap.parse_args()))
    except KeyboardInterrupt:
        pass
    sys.exit(0)
