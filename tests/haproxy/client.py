"""Clients for test_haproxy.sh (standard library only; run with /usr/bin/python3).

Packets use iocpsrv's default framing: a 4-byte little-endian length, then the payload.
Every command prints one line per connection and exits 1 with a message on the first
problem. Addresses are IPv4 loopback ones; every socket operation has a timeout.

  freeport                       a port that was free a moment ago
  clients PORT N BIND TAG        N connections to 127.0.0.1:PORT, each from BIND:0, all
                                 open at once; each sends one packet "TAG i" and checks
                                 its echo. Prints "ok LOCAL" per connection (getsockname)
  hold PORT BIND                 like clients with N = 1, then keeps the connection open
                                 until the server closes it or 20 s pass
  direct PORT echo|closed [--v1 TEXT | --v2 SRC SPORT DST DPORT | --raw TEXT] [--split]
         [--bind ADDR]           one connection from 127.0.0.1 (or ADDR): sends the header
                                 (v1: TEXT + CRLF; v2: a binary PROXY v2 TCP4 header with
                                 TLVs; raw: TEXT + CRLF as it is), then one packet. "echo":
                                 the packet must come back, prints "echo LOCAL".
                                 "closed": the server must close without answering,
                                 prints "closed LOCAL". --split sends the header in two
                                 writes 100 ms apart (two reads on the server)
  limit PORT BIND N [BIND N ...] N connections from each BIND, all open at once; each
                                 sends one packet and either gets its echo ("served") or
                                 is closed by the server ("closed"). Prints
                                 "BIND served S closed C" per BIND
"""
import socket
import struct
import sys
import time

TIMEOUT = 5.0
V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def fail(msg):
    print("FAIL " + msg, flush=True)
    sys.exit(1)


def frame(payload):
    return struct.pack("<I", len(payload)) + payload


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        d = s.recv(n - len(buf))
        if not d:
            raise EOFError("server closed after %d of %d bytes" % (len(buf), n))
        buf += d
    return buf


def expect_echo(s, payload):
    (n,) = struct.unpack("<I", recv_exact(s, 4))
    body = recv_exact(s, n) if n <= 1 << 20 else b""
    if body != payload:
        raise ValueError("echo %r (length %d), expected %r" % (body[:64], n, payload))


def connect(port, bind=None):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(TIMEOUT)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if bind:
        s.bind((bind, 0))
    s.connect(("127.0.0.1", port))
    return s


def local(s):
    host, port = s.getsockname()[:2]
    return "%s:%d" % (host, port)


def v2_header(src, sport, dst, dport):
    addrs = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack(">HH", sport, dport)
    # TLVs a balancer may add; the server must skip them: PP2_TYPE_AUTHORITY (0x02),
    # PP2_TYPE_NOOP (0x04) and a custom one (0xE0).
    tlvs = b""
    for t, v in ((0x02, b"echo.example"), (0x04, b"\x00\x00\x00"), (0xE0, b"custom")):
        tlvs += struct.pack(">BH", t, len(v)) + v
    body = addrs + tlvs
    # version 2, command PROXY (0x21); TCP over IPv4 (0x11)
    return V2_SIG + bytes([0x21, 0x11]) + struct.pack(">H", len(body)) + body


def cmd_freeport():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])
    s.close()


def cmd_clients(port, n, bind, tag):
    socks = []
    try:
        for i in range(n):
            socks.append(connect(port, bind))
        for i, s in enumerate(socks):
            s.sendall(frame(("%s %d" % (tag, i)).encode()))
        for i, s in enumerate(socks):
            expect_echo(s, ("%s %d" % (tag, i)).encode())
            print("ok " + local(s), flush=True)
    except (OSError, EOFError, ValueError) as e:
        fail("client %d of %d: %s: %s" % (len(socks), n, type(e).__name__, e))
    finally:
        for s in socks:
            s.close()


def cmd_hold(port, bind):
    try:
        s = connect(port, bind)
        s.sendall(frame(b"held"))
        expect_echo(s, b"held")
        print("ok " + local(s), flush=True)
        s.settimeout(20)
        while s.recv(4096):
            pass
    except socket.timeout:
        pass
    except (OSError, EOFError, ValueError) as e:
        fail("%s: %s" % (type(e).__name__, e))


def cmd_direct(port, expect, args):
    header = b""
    split = False
    bind = None
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--v1" or a == "--raw":
            header = args[i + 1].encode() + b"\r\n"
            i += 2
        elif a == "--v2":
            header = v2_header(args[i + 1], int(args[i + 2]), args[i + 3], int(args[i + 4]))
            i += 5
        elif a == "--split":
            split = True
            i += 1
        elif a == "--bind":
            bind = args[i + 1]
            i += 2
        else:
            fail("unknown argument " + a)
    payload = b"hello through a hand-written header"
    try:
        s = connect(port, bind)
        me = local(s)
        try:
            if split and header:
                cut = len(header) // 2
                s.sendall(header[:cut])
                time.sleep(0.1)
                s.sendall(header[cut:])
            elif header:
                s.sendall(header)
            s.sendall(frame(payload))
        except (ConnectionResetError, BrokenPipeError):
            if expect == "echo":
                raise
            # The server closed (with a reset, as unread bytes were left) while we wrote.
            print("closed " + me, flush=True)
            s.close()
            return
        if expect == "echo":
            expect_echo(s, payload)
            print("echo " + me, flush=True)
            s.close()
            return
        try:
            d = s.recv(4096)
        except ConnectionResetError:
            d = b""
        if d:
            fail("expected the server to close, got %r" % d[:64])
        print("closed " + me, flush=True)
        s.close()
    except (OSError, EOFError, ValueError) as e:
        fail("%s: %s" % (type(e).__name__, e))


def cmd_limit(port, pairs):
    socks = []
    try:
        for bind, n in pairs:
            for i in range(n):
                socks.append((bind, connect(port, bind)))
    except OSError as e:
        fail("connect %d from %s: %s: %s" % (len(socks), bind, type(e).__name__, e))
    served = {bind: 0 for bind, _ in pairs}
    closed = {bind: 0 for bind, _ in pairs}
    for i, (bind, s) in enumerate(socks):
        try:
            s.sendall(frame(b"limit %d" % i))
        except OSError:
            pass  # already closed by the server: its recv below says so
    for i, (bind, s) in enumerate(socks):
        try:
            expect_echo(s, b"limit %d" % i)
            served[bind] += 1
        except (EOFError, ConnectionResetError, BrokenPipeError):
            closed[bind] += 1
        except (OSError, ValueError) as e:
            fail("connection %d from %s: %s: %s" % (i, bind, type(e).__name__, e))
    for bind, _ in pairs:
        print("%s served %d closed %d" % (bind, served[bind], closed[bind]), flush=True)
    for _, s in socks:
        s.close()


def main(argv):
    if not argv:
        fail("usage: see the module docstring")
    cmd = argv[0]
    if cmd == "freeport":
        cmd_freeport()
    elif cmd == "clients" and len(argv) == 5:
        cmd_clients(int(argv[1]), int(argv[2]), argv[3], argv[4])
    elif cmd == "hold" and len(argv) == 3:
        cmd_hold(int(argv[1]), argv[2])
    elif cmd == "direct" and len(argv) >= 3 and argv[2] in ("echo", "closed"):
        cmd_direct(int(argv[1]), argv[2], argv[3:])
    elif cmd == "limit" and len(argv) >= 4 and len(argv) % 2 == 0:
        cmd_limit(int(argv[1]), [(argv[i], int(argv[i + 1])) for i in range(2, len(argv), 2)])
    else:
        fail("bad arguments: %r" % (argv,))


if __name__ == "__main__":
    main(sys.argv[1:])
