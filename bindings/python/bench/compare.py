#!/usr/bin/env python3
"""Throughput of the Python echo servers against a plain asyncio echo, measured with
samples/iocpsrv-flood (4-byte length framing, every echo verified).

    python3 bench/compare.py [--seconds 5] [--rounds 2] [--connections 8] [--depth 16]
                             [--size 10] [--flood PATH] [--only NAME ...]

The references are the repository's asyncio server (bench/servers/asyncio_echo.py, one
transport.write() per read: the one the issue's targets are judged against), the same
on uvloop when it is installed (bench/uvloop_echo.py), and this directory's
asyncio_echo.py (one write per packet, or per read with --batch).

Each server runs alone on the machine's loopback while iocpsrv-flood drives it; the
variants alternate round by round so that a change in background load hits them alike.
Reported per variant: the best and median msgs/s over the rounds, and the server's CPU
time per message (user+system of the whole server process from /proc/PID/stat, engine
threads included), then the ratio of each to the plain asyncio server.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
REPO = os.path.dirname(os.path.dirname(ROOT))
PY = sys.executable

VARIANTS = {
    "iocpsrv.Server (examples/echo.py)": [PY, f"{ROOT}/examples/echo.py"],
    "iocpsrv.Server (examples/echo.py --per-packet)": [PY, f"{ROOT}/examples/echo.py",
                                                       "--per-packet"],
    "iocpsrv.Server, pull_batch_sends=0": [PY, f"{ROOT}/examples/echo.py",
                                           "--pull-batch-sends", "0"],
    "iocpsrv.aio Protocol (examples/aio_echo.py)": [PY, f"{ROOT}/examples/aio_echo.py"],
    "iocpsrv.aio Protocol, batches (aio_echo.py --batch)": [PY, f"{ROOT}/examples/aio_echo.py",
                                                            "--batch"],
    "iocpsrv.aio async for (aio_echo.py --events)": [PY, f"{ROOT}/examples/aio_echo.py",
                                                     "--events"],
    "asyncio Protocol, one write per packet": [PY, f"{HERE}/asyncio_echo.py"],
    "asyncio Protocol, one write per read": [PY, f"{HERE}/asyncio_echo.py", "--batch"],
    "bench/servers/asyncio_echo.py (per read)": [PY, f"{REPO}/bench/servers/asyncio_echo.py"],
    "uvloop (bench/uvloop_echo.py)": [PY, f"{HERE}/uvloop_echo.py"],
}
BASELINE = "bench/servers/asyncio_echo.py (per read)"


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def has_uvloop():
    return subprocess.run([PY, "-c", "import uvloop"], capture_output=True).returncode == 0


def run_one(cmd, args):
    srv = subprocess.Popen(cmd + ["--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        line = srv.stdout.readline()
        if not line.startswith("listening on "):
            raise RuntimeError(f"{cmd}: {line!r}")
        port = line.rsplit(":", 1)[1].strip()
        c0 = cpu_seconds(srv.pid)
        r = subprocess.run([args.flood, "--port", port, "--connections", str(args.connections),
                            "--depth", str(args.depth), "--size", str(args.size),
                            "--duration", str(args.seconds), "--no-progress", "--json"],
                           capture_output=True, text=True, timeout=args.seconds + 60)
        c1 = cpu_seconds(srv.pid)
        d = json.loads(r.stdout)
        if r.returncode != 0 or not d.get("ok") or d.get("errors"):
            raise RuntimeError(f"flood failed against {cmd}: {r.stdout}{r.stderr}")
        return d["msgs_per_s"], (c1 - c0) / d["packets"] * 1e9
    finally:
        srv.terminate()
        try:
            srv.wait(10)
        except subprocess.TimeoutExpired:
            srv.kill()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--depth", type=int, default=16)
    ap.add_argument("--size", type=int, default=10)
    ap.add_argument("--flood", default=os.path.join(REPO, "build", "linux", "samples",
                                                     "iocpsrv-flood"))
    ap.add_argument("--only", action="append", help="substring of the variants to run")
    ap.add_argument("--before", metavar="DIR",
                    help="also run DIR/examples/echo.py: another copy of the binding, e.g. "
                         "git archive REV bindings/python | tar -x -C /tmp, then "
                         "/tmp/bindings/python (it uses this tree's library)")
    args = ap.parse_args()
    if args.before:
        VARIANTS[f"echo.py before ({args.before})"] = [
            PY, os.path.join(args.before, "examples", "echo.py")]
        lib = os.path.join(REPO, "build", "linux", "dll", "libiocpsrv.so")
        os.environ.setdefault("IOCPSRV_LIBRARY", lib)
    variants = {k: v for k, v in VARIANTS.items()
                if not args.only or k == BASELINE or any(o in k for o in args.only)
                or k.startswith("echo.py before")}
    if "uvloop (bench/uvloop_echo.py)" in variants and not has_uvloop():
        print("uvloop is not installed: its variant is left out", flush=True)
        del variants["uvloop (bench/uvloop_echo.py)"]
    results = {k: [] for k in variants}
    for rnd in range(args.rounds):
        for name, cmd in variants.items():
            rate, ns = run_one(cmd, args)
            results[name].append((rate, ns))
            print(f"round {rnd + 1}: {name:46s} {rate:>11,.0f} msgs/s "
                  f"{ns:>7,.0f} ns CPU/msg", flush=True)
            time.sleep(0.5)
    print(f"\n{args.connections} connections x depth {args.depth} x {args.size}-byte "
          f"payloads, {args.seconds:g} s each, {args.rounds} round(s); "
          f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    base = statistics.median(r for r, _ in results[BASELINE])
    base_ns = statistics.median(n for _, n in results[BASELINE])
    print(f"{'server':46s} {'best msgs/s':>12s} {'median':>12s} {'CPU ns/msg':>11s} "
          f"{'x asyncio':>10s}")
    for name, rs in results.items():
        med = statistics.median(r for r, _ in rs)
        ns = statistics.median(n for _, n in rs)
        print(f"{name:46s} {max(r for r, _ in rs):>12,.0f} {med:>12,.0f} {ns:>11,.0f} "
              f"{med / base:>9.2f}x")
    print(f"(CPU per message vs asyncio: see the ns column; baseline {base_ns:,.0f} ns)")


if __name__ == "__main__":
    main()
