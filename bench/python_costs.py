#!/usr/bin/python3
"""python_costs.py -- what one echoed packet costs in Python, step by step, for the
iocpsrv binding's dispatcher and for the asyncio baseline (bench/servers/asyncio_echo.py).

    IOCPSRV_LIBRARY=build/bench/cmake/dll/libiocpsrv.so /usr/bin/python3 bench/python_costs.py

Each step is timed with timeit on this interpreter (best of 5), in nanoseconds per packet,
the way the two servers do it: the binding reads an event struct through cffi, copies the
payload to bytes, calls the user's callback, whose send() is a cffi call into the library;
asyncio cuts the payload out of its buffer, builds the framed echo and joins the echoes of
one read. Prints a Markdown table for bench/RESULTS.md.
"""

import os
import struct
import sys
import timeit

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bindings",
                                "python"))
import iocpsrv  # noqa: E402
from iocpsrv._native import ffi  # noqa: E402

N = 200_000


def ns(stmt, setup="pass", g=None, per=1):
    t = min(timeit.repeat(stmt, setup, number=N, repeat=5, globals=g))
    return t / N / per * 1e9


def main():
    srv = iocpsrv.Server("127.0.0.1", 0)
    srv.start()
    try:
        lib = srv._lib
        h = srv._h
        evs = ffi.new("iocpsrv_event_t[64]")
        payload = ffi.new("char[]", b"0123456789")
        for e in evs:
            e.type = 2
            e.conn = 1 << 40
            e.data = ffi.cast("const uint8_t *", payload)
            e.len = 10
        g = {"evs": evs, "ev": evs[0], "buf": ffi.buffer, "lib": lib, "h": h,
             "cb": lambda conn, data: None, "data": b"0123456789", "send": lib.iocpsrv_send,
             "srv": srv, "iocpsrv": iocpsrv}
        rows = [
            ("binding: iterate the batch (`for ev in evs[0:k]`), per event",
             ns("for e in evs[0:64]: pass", g=g, per=64)),
            ("binding: read the event's 4 fields through cffi (type, conn, data, len)",
             ns("ev.type; ev.conn; ev.data; ev.len", g=g)),
            ("binding: copy the payload to bytes (`ffi.buffer(p, n)[:]`)",
             ns("buf(ev.data, 10)[:]", g=g)),
            ("binding: call the user's on_packet(conn, data)", ns("cb(1, data)", g=g)),
            ("binding: the bare cffi call `lib.iocpsrv_send` (to a stale id: the engine "
             "looks it up and refuses; queueing adds ~30 ns of C)", ns("send(h, 5, data, 10)", g=g)),
        ]
        # Server.send's own Python around that call: the call replaced by a no-op.
        real = srv._send
        srv._send = lambda h, conn, d, n: 0
        try:
            wrapper = ns("srv.send(5, data)", g=g) - ns("cb(1, data)", g=g)
        finally:
            srv._send = real
        rows.append(("binding: `Server.send`'s Python around the call (type check, "
                     "result check)", wrapper))
        hdr = struct.Struct("<I")
        buf = bytearray((hdr.pack(10) + b"0123456789") * 64)
        ga = {"buf": buf, "unpack": hdr.unpack_from, "pack": hdr.pack}
        arows = [
            ("asyncio: parse, cut, frame and collect 64 packets of one read, per packet",
             ns("out = []\npos = 0\nwhile pos < 896:\n (n,) = unpack(buf, pos)\n"
                " p = bytes(buf[pos + 4:pos + 4 + n])\n pos += 4 + n\n out.append(pack(n) + p)\n"
                "b''.join(out)", g=ga, per=64)),
        ]
    finally:
        srv.stop(1)
    print("| step (Python " + sys.version.split()[0] + ") | ns per packet |")
    print("| --- | ---: |")
    total = 0.0
    for label, v in rows:
        total += v
        print(f"| {label} | {v:,.0f} |")
    print(f"| **binding, sum of the steps** | **{total:,.0f}** |")
    for label, v in arows:
        print(f"| {label} | {v:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
