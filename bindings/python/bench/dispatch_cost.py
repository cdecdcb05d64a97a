#!/usr/bin/env python3
"""What the threaded Server's dispatcher costs per echoed packet on its own thread, with
the network taken out: CPU nanoseconds per packet (thread_time, so time the thread was
not running is not counted), for the echo of examples/echo.py.

    python3 bench/dispatch_cost.py [--size 10] [--batch 512] [--batches 400]
                                   [--package DIR] [--mode packet|batch]

A real server is started with one real client, whose connection every packet comes
from; then the dispatcher's own loop (Server._run) is driven with its poll replaced by a
stand-in that hands the same prepared batch over and over (packed records, or, for a
binding older than the packed API, event structs). Everything else is real: the echo
callback, Server.send, and the engine's send path (iocpsrv_send, or one
iocpsrv_send_packed per batch), and a real poll (timeout 0, nothing to take) before
each stand-in batch, which writes the last batch's echoes to the client (a thread of
this script reads them). So the figure is the Python of the dispatcher and of the
callback, the cffi crossings, the engine's queueing of each send and the write system
calls: the polling thread's whole share of an echo but the taking of the events.

--package DIR measures another copy of the binding (the directory holding iocpsrv/),
e.g. one exported from an older commit: git archive REV bindings/python | tar -x -C /tmp.
--mode batch measures the on_batch + send_many echo (echo.py --batch) instead.
"""

import argparse
import os
import socket
import struct
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=10)
    ap.add_argument("--batch", type=int, default=512, help="packets per poll")
    ap.add_argument("--batches", type=int, default=400)
    ap.add_argument("--package", default=os.path.dirname(HERE))
    ap.add_argument("--mode", choices=("packet", "batch"), default="packet")
    ap.add_argument("--rounds", type=int, default=5, help="best of")
    args = ap.parse_args()
    sys.path.insert(0, os.path.abspath(args.package))
    if "IOCPSRV_LIBRARY" not in os.environ:  # a copy elsewhere still uses this tree's
        lib = os.path.join(HERE, "..", "..", "..", "build", "linux", "dll", "libiocpsrv.so")
        if os.path.exists(lib):
            os.environ["IOCPSRV_LIBRARY"] = os.path.abspath(lib)
    import iocpsrv
    from iocpsrv import _native as n

    best = min(run_once(iocpsrv, n, args) for _ in range(args.rounds))
    print(f"{best:,.0f} ns CPU per packet ({args.mode} mode, {args.size}-byte payloads, "
          f"{args.batch} per poll; binding at {args.package})")


def make_echo(iocpsrv, srv, mode):
    """The callbacks of examples/echo.py (flow control included)."""
    stalled = {}
    send = srv.send

    def on_packet(conn, data):
        try:
            send(conn, data)
        except iocpsrv.SendQueueFull:
            stalled[conn] = data
            srv.pause(conn)

    def on_batch(packets):
        for conn, data, _error in srv.send_many(packets):
            stalled[conn] = data
            srv.pause(conn)

    return dict(on_batch=on_batch) if mode == "batch" else dict(on_packet=on_packet)


def run_once(iocpsrv, n, args):
    ffi = n.ffi
    srv = iocpsrv.Server("127.0.0.1", 0, send_queue_limit=1 << 40, worker_threads=1,
                         batch_size=args.batch)
    lib = srv._lib
    h = srv._h
    srv.__dict__.update(make_echo(iocpsrv, srv, args.mode))
    if lib.iocpsrv_listen(h, b"127.0.0.1", 0) < 0:
        raise SystemExit("listen failed")
    client = socket.create_connection(("127.0.0.1", lib.iocpsrv_port(h)))
    reader = threading.Thread(target=drain_socket, args=(client,), daemon=True)
    reader.start()
    try:
        packed = hasattr(srv, "_poll_buffer")
        conn, peer = first_connect(lib, h, ffi, n)
        stand_in = (PackedPoll if packed else StructPoll)(n, ffi, conn, peer, args)
        stand_in.flush = make_flush(lib, h, ffi, packed)
        srv._lib = Proxy(lib, stand_in)
        start = time.thread_time()
        srv._dispatcher = None
        srv._run()
        spent = time.thread_time() - start
    finally:
        srv._lib = lib
        client.close()
        lib.iocpsrv_stop(h, 0)
        srv.close(0)
    return spent / stand_in.delivered * 1e9


def drain_socket(sock):
    try:
        while sock.recv(1 << 20):
            pass
    except OSError:
        pass


def make_flush(lib, h, ffi, packed):
    """A real poll that takes nothing (the client sends nothing more): it writes what
    the last batch sent (pull_batch_sends)."""
    if packed:
        buf = ffi.new("char[]", 4096)
        return lambda: lib.iocpsrv_poll_packed(h, buf, 4096, 0)
    evs = ffi.new("iocpsrv_event_t[1]")
    return lambda: lib.iocpsrv_poll(h, evs, 1, 0)


def first_connect(lib, h, ffi, n):
    """The client's CONNECT, taken with a real poll."""
    evs = ffi.new("iocpsrv_event_t[4]")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        k = lib.iocpsrv_poll(h, evs, 4, 100)
        for i in range(max(k, 0)):
            if evs[i].type == n.IOCPSRV_EVENT_CONNECT:
                return int(evs[i].conn), ffi.string(evs[i].data)
    raise SystemExit("no connect")


class Proxy:
    """The real library, but for the poll."""

    def __init__(self, lib, stand_in):
        self._lib = lib
        self.iocpsrv_poll = stand_in.poll
        self.iocpsrv_poll_packed = stand_in.poll_packed

    def __getattr__(self, name):
        return getattr(self._lib, name)


class PackedPoll:
    """iocpsrv_poll_packed: first the CONNECT record, then the same batch of packet
    records, then ESTOPPED."""

    def __init__(self, n, ffi, conn, peer, args):
        self.n, self.ffi, self.left = n, ffi, args.batches
        head = struct.Struct("<IHHQQ")
        pad = bytes(-len(peer) & 7)
        self.connect = head.pack(len(peer), n.IOCPSRV_EVENT_CONNECT, 0, conn, 0) + peer + pad
        payload = b"x" * args.size + bytes(-args.size & 7)
        self.record = head.pack(args.size, n.IOCPSRV_EVENT_PACKET, 0, conn, 0) + payload
        self.batch = args.batch
        self.packets = None
        self.delivered = 0
        self.step = 0
        self.poll = None

    def poll_packed(self, h, buf, cap, ms):
        self.step += 1
        if self.step == 1:
            data = self.connect
        elif self.left > 0:
            self.left -= 1
            self.flush()
            if self.packets is None:  # as many as fit
                self.packets = self.record * min(self.batch, cap // len(self.record))
            self.delivered += len(self.packets) // len(self.record)
            if self.step > 2:
                return len(self.packets)  # the buffer still holds them
            data = self.packets
        else:
            return self.n.IOCPSRV_ESTOPPED
        self.ffi.memmove(buf, data, len(data))
        return len(data)


class StructPoll:
    """iocpsrv_poll (a binding older than the packed API): the same, as event structs."""

    def __init__(self, n, ffi, conn, peer, args):
        self.n, self.ffi, self.left = n, ffi, args.batches
        self.conn, self.batch = conn, args.batch
        self.peer = ffi.new("char[]", peer)
        self.payload = ffi.new("char[]", b"x" * args.size)
        self.size = args.size
        self.step = 0
        self.delivered = 0
        self.poll_packed = None

    def poll(self, h, evs, nmax, ms):
        self.step += 1
        if self.step == 1:
            evs[0].type = self.n.IOCPSRV_EVENT_CONNECT
            evs[0].conn = self.conn
            evs[0].data = self.ffi.cast("const uint8_t *", self.peer)
            evs[0].len = len(self.ffi.string(self.peer)) + 1
            return 1
        if self.left <= 0:
            return self.n.IOCPSRV_ESTOPPED
        self.left -= 1
        self.flush()
        k = min(self.batch, nmax)
        self.delivered += k
        if self.step == 2:
            for i in range(nmax):
                e = evs[i]
                e.type = self.n.IOCPSRV_EVENT_PACKET
                e.conn = self.conn
                e.data = self.ffi.cast("const uint8_t *", self.payload)
                e.len = self.size
        return k


if __name__ == "__main__":
    main()
