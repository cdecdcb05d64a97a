#!/usr/bin/python3
"""harness.py -- the measuring half of bench/run (which builds, then runs this).

Starts every echo server on 127.0.0.1 (port 0, parsing "listening on HOST:PORT"), drives
each with iocpsrv-flood --json (same client, same 4-byte little-endian framing, every echo
verified), reads the server's CPU time (utime+stime of the whole process, /proc/PID/stat)
before and after each run, and writes RESULTS.md (medians over the repetitions, ratios to
the reference ref_epoll and to each binding's plain baseline, targets met or missed, the
machine) plus the raw numbers as JSON. Optionally profiles iocpsrv-echo (perf).

Not meant to be run by hand (bench/run passes the paths), but it can be:
    /usr/bin/python3 bench/harness.py --build build/bench --src . --out /tmp/R.md --quick
Exit status: 0 when every run verified, 1 when any flood run or server failed, 2 on usage.
"""

import argparse
import datetime
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
LISTEN_RE = re.compile(r"listening on (\S+):(\d+)")


# ---------------------------------------------------------------------------------------
# What is measured

class Workload:
    def __init__(self, key, conns, size, depth, label, kind="duration", count=None,
                 message=None):
        self.key, self.conns, self.size, self.depth = key, conns, size, depth
        self.label, self.kind, self.count, self.message = label, kind, count, message

    def flood_args(self, duration):
        a = ["--connections", str(self.conns), "--depth", str(self.depth), "--threads", "1",
             "--timeout", "10", "--no-progress", "--json"]
        if self.kind == "count":
            a += ["--count", str(self.count), "--message", self.message]
        else:
            a += ["--size", str(self.size), "--duration", f"{duration:g}"]
        return a


WORKLOADS = [
    Workload("1x10Bx1", 1, 10, 1, "1 × 10 B × depth 1 (latency)"),
    Workload("8x10Bx64", 8, 10, 64, "8 × 10 B × depth 64"),
    Workload("100x10Bx16", 100, 10, 16, "100 × 10 B × depth 16"),
    Workload("8x1KiBx16", 8, 1024, 16, "8 × 1 KiB × depth 16"),
    Workload("8x64KiBx4", 8, 65536, 4, "8 × 64 KiB × depth 4"),
    Workload("1000x10Bx1", 1000, 10, 1, "1000 × 10 B × depth 1"),
    Workload("headline", 1, None, 1, "headline: 1 connection, 99,999 × \"Test Item N\", depth 1",
             kind="count", count=99999, message="Test Item "),
]
HEADLINE = "headline"
THROUGHPUT_WORKLOADS = ["8x10Bx64", "100x10Bx16", "8x1KiBx16", "8x64KiBx4", "1000x10Bx1"]
PROFILE_WORKLOAD = "8x10Bx64"
QUICK_WORKLOADS = ["8x10Bx64", "100x10Bx16"]


class Server:
    def __init__(self, key, label, group, cmd, env=None, baselines=(), warmup=0.5,
                 reps=None, note="", check=None):
        self.key, self.label, self.group, self.cmd = key, label, group, cmd
        self.env = env or {}
        self.baselines = list(baselines)  # keys of the plain servers it is compared with
        self.warmup = warmup
        self.reps = reps  # None: every repetition
        self.note = note
        self.check = check  # None, or a callable returning why the server cannot run
        # runtime
        self.proc = None
        self.port = None
        self.lines = []
        self.reader = None
        self.exit_code = None


def uvloop_missing(py):
    """Why py cannot run the uvloop server, or None."""
    r = subprocess.run([py, "-c", "import uvloop"], capture_output=True, text=True)
    if r.returncode == 0:
        return None
    last = (r.stderr.strip().splitlines() or ["?"])[-1]
    return f"{py} cannot import uvloop ({last}; Debian: python3-uvloop)"


def batch_flag_missing(echo):
    """Why iocpsrv-echo --batch cannot run, or None. `--batch --help` exits 0 only when
    the binary knows the flag (an unknown argument exits 2 before --help is seen)."""
    try:
        r = subprocess.run([echo, "--batch", "--help"], capture_output=True, text=True,
                           timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"iocpsrv-echo --batch --help failed: {e}"
    if r.returncode == 0:
        return None
    return (f"the iocpsrv-echo built does not accept --batch (`iocpsrv-echo --batch --help` "
            f"exits {r.returncode}); the row runs once samples/echo has the flag "
            "(the packet-batch callback)")


def make_servers(a):
    b = a.build
    lib = os.path.join(b, "cmake", "dll", "libiocpsrv.so")
    native_env = {}
    py_env = {"IOCPSRV_LIBRARY": lib, "PYTHONDONTWRITEBYTECODE": "1"}
    cs_env = {"IOCPSRV_LIBRARY": lib, "DOTNET_CLI_TELEMETRY_OPTOUT": "1", "DOTNET_NOLOGO": "1",
              "DOTNET_gcServer": "0"}
    echo = os.path.join(b, "cmake", "samples", "iocpsrv-echo")
    py = "/usr/bin/python3"
    aio = os.path.join(a.bench, "servers", "asyncio_echo.py")
    dn = os.path.join(b, "dotnet", "bin")
    all_servers = [
        Server("ref", "ref_epoll (reference: 1 thread, epoll)", "native",
               [os.path.join(b, "servers", "ref_epoll")], native_env),
        Server("uv", "uv_echo (libuv)", "native", [os.path.join(b, "servers", "uv_echo")],
               native_env),
        Server("iocpsrv", "iocpsrv-echo (default workers)", "native",
               [echo, "--max-connections", "20000"], native_env),
        Server("iocpsrv-batch", "iocpsrv-echo --batch (packet-batch callback)", "native",
               [echo, "--batch", "--max-connections", "20000"], native_env,
               check=lambda: batch_flag_missing(echo)),
        Server("iocpsrv-t1", "iocpsrv-echo --threads 1", "native",
               [echo, "--threads", "1", "--max-connections", "20000"], native_env),
        Server("py-iocpsrv", "Python: iocpsrv examples/echo.py", "python",
               [py, os.path.join(a.src, "bindings", "python", "examples", "echo.py")], py_env,
               baselines=["py-asyncio", "py-uvloop", "py-asyncio-pp"], warmup=1.0),
        Server("py-asyncio", "Python: asyncio Protocol, write per read", "python",
               [py, aio], py_env, warmup=1.0),
        Server("py-uvloop", "Python: the same Protocol on uvloop, write per read", "python",
               [py, aio, "--loop", "uvloop"], py_env, warmup=1.0,
               check=lambda: uvloop_missing(py)),
        Server("py-asyncio-pp", "Python: asyncio Protocol, write per packet", "python",
               [py, aio, "--per-packet"], py_env, warmup=1.0),
        Server("cs-iocpsrv", "C#: iocpsrv examples/Echo", "csharp",
               ["dotnet", os.path.join(dn, "Echo", "release", "Echo.dll"), "--quiet"], cs_env,
               baselines=["cs-socket", "cs-kestrel"], warmup=2.0),
        Server("cs-socket", "C#: plain .NET Socket (bench/SocketEcho)", "csharp",
               ["dotnet", os.path.join(dn, "SocketEcho", "release", "SocketEcho.dll")], cs_env,
               warmup=2.0),
        Server("cs-kestrel", "C#: Kestrel ConnectionHandler (bench/KestrelEcho)", "csharp",
               ["dotnet", os.path.join(dn, "KestrelEcho", "release", "KestrelEcho.dll")],
               cs_env, warmup=2.0),
    ]
    return all_servers


# ---------------------------------------------------------------------------------------
# Processes

def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime, every thread


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Fatal(Exception):
    pass


class Harness:
    def __init__(self, a):
        self.a = a
        self.running = []
        self.failures = []  # strings
        self.pidfile = a.pidfile

    def log(self, msg):
        print(msg, flush=True)

    def _record_pids(self):
        if not self.pidfile:
            return
        with open(self.pidfile, "w") as f:
            for s in self.running:
                if s.proc is not None and s.proc.poll() is None:
                    f.write(f"{s.proc.pid}\n")

    def start(self, s):
        env = dict(os.environ)
        env.update(s.env)
        s.lines = []
        s.exit_code = None
        s.proc = subprocess.Popen(s.cmd + ["--port", "0"], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  env=env, start_new_session=True)
        self.running.append(s)
        self._record_pids()
        got = threading.Event()

        def reader():
            for line in s.proc.stdout:
                line = line.rstrip("\n")
                if len(s.lines) < 2000:
                    s.lines.append(line)
                if s.port is None:
                    m = LISTEN_RE.search(line)
                    if m:
                        s.port = int(m.group(2))
                        got.set()
            got.set()

        s.port = None
        s.reader = threading.Thread(target=reader, daemon=True)
        s.reader.start()
        if not got.wait(60) or s.port is None:
            self.stop(s)
            raise Fatal(f"{s.key}: did not print 'listening on HOST:PORT': "
                        + " | ".join(s.lines[-5:]))

    def stop(self, s):
        """SIGINT, up to 10 s for a clean exit, then SIGKILL (the whole process group)."""
        p = s.proc
        if p is None:
            return
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                self.log(f"  {s.key}: no exit 10 s after SIGINT: SIGKILL")
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        else:
            p.wait()
        try:  # whatever else is left in its group
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if s.reader is not None:
            s.reader.join(5)
        s.exit_code = p.returncode
        s.proc = None
        if s in self.running:
            self.running.remove(s)
        self._record_pids()

    def stop_all(self):
        for s in list(self.running):
            try:
                self.stop(s)
            except Exception as e:  # keep going: nothing may be left running
                self.log(f"  stopping {s.key}: {e}")

    def check_stats(self, s):
        """Cross-check the server's own summary line: packets in == packets out, no errors."""
        text = "\n".join(s.lines[-20:])
        m = re.search(r"packets in (\d+), (?:packets )?out (\d+)", text)
        if m and m.group(1) != m.group(2):
            self.fail(f"{s.key}: its stats say {m.group(1)} packets in but {m.group(2)} out")
        m = re.search(r"errors (\d+)", text)
        if m and int(m.group(1)) != 0:
            self.fail(f"{s.key}: its stats report {m.group(1)} errors")
        if s.exit_code not in (0, None):
            self.fail(f"{s.key}: exited with status {s.exit_code} after SIGINT: "
                      + " | ".join(s.lines[-3:]))

    def fail(self, msg):
        self.failures.append(msg)
        self.log(f"  FAILED: {msg}")

    def flood(self, s, w, duration, quiet=False, client=None, label="iocpsrv-flood"):
        """One verified flood run against server s; returns a result dict or None.
        client: the flood binary (default: the one just built); its CPU time is
        measured too (RUSAGE_CHILDREN: the flood is the only child reaped meanwhile)."""
        if s.proc is None or s.proc.poll() is not None:
            self.fail(f"{s.key}: not running before {w.key} "
                      + " | ".join(s.lines[-3:]))
            return None
        cmd = [client or self.a.flood, "--host", "127.0.0.1", "--port", str(s.port)] + \
            w.flood_args(duration)
        c0 = cpu_seconds(s.proc.pid)
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        limit = (duration if w.kind == "duration" else 60) + 60
        try:
            out, err = p.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            self.fail(f"{s.key} {w.key}: {label} still running after {limit} s")
            return None
        wall = time.monotonic() - t0
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        client_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        alive = s.proc.poll() is None
        c1 = cpu_seconds(s.proc.pid) if alive else c0
        try:
            d = json.loads(out)
        except ValueError:
            d = {}
        if p.returncode != 0 or not d.get("ok") or d.get("errors"):
            self.fail(f"{s.key} {w.key}: {label} exit {p.returncode}: "
                      f"{out.strip()[:400]} {err.strip()[:400]}")
            return None
        if not alive:
            self.fail(f"{s.key} {w.key}: the server died: " + " | ".join(s.lines[-3:]))
            return None
        packets = d["packets"]
        return {
            "msgs_per_s": d["msgs_per_s"], "mb_per_s": d["mb_per_s"],
            "p50_us": d["latency_us"]["p50"], "p99_us": d["latency_us"]["p99"],
            "elapsed_s": d["elapsed_s"], "packets": packets,
            "cpu_s": c1 - c0, "cpu_ns_per_msg": (c1 - c0) / packets * 1e9 if packets else None,
            "wall_s": wall,
            "client_cpu_ns_per_msg": client_cpu / packets * 1e9 if packets else None,
        }


# ---------------------------------------------------------------------------------------
# Running the matrix

def run_matrix(h, servers, workloads, a):
    results = {s.key: {w.key: [] for w in workloads} for s in servers}
    for rep in range(a.reps):
        active = [s for s in servers if s.reps is None or rep < s.reps]
        h.log(f"repetition {rep + 1}/{a.reps}: starting {', '.join(s.key for s in active)}")
        try:
            for s in active:
                h.start(s)
                if a.warmup:
                    # JIT tiering, page faults, first accepts: not measured.
                    h.flood(s, Workload("warmup", 8, 10, 16, "warm-up"),
                            s.warmup * (0.5 if a.quick else 1))
            for w in workloads:
                # rotate the order each repetition so no server always runs first
                k = rep % len(active)
                order = active[k:] + active[:k]
                for s in order:
                    r = h.flood(s, w, a.duration)
                    if r is None:
                        continue
                    r["rep"] = rep
                    results[s.key][w.key].append(r)
                    h.log(f"  {w.key:11s} {s.key:14s} {r['msgs_per_s']:>12,.0f} msgs/s "
                          f"p50 {r['p50_us']:>9,.1f} us  cpu {r['cpu_ns_per_msg']:>8,.0f} ns/msg"
                          + (f"  elapsed {r['elapsed_s']:.2f} s" if w.kind == "count" else ""))
        finally:
            for s in active:
                h.stop(s)
                h.check_stats(s)
    return results


# ---------------------------------------------------------------------------------------
# iocpsrv-flood (the library's client role) against the old flood (its own epoll loop)

FLOOD_NEED = 0.9  # the bar: the new flood drives >= 0.9x the old one's msgs/s
FLOOD_CLIENTS = (("new", "iocpsrv-flood (library client role)"),
                 ("legacy", "old iocpsrv-flood (own epoll loop)"))


def run_flood_compare(h, ref, workloads, a):
    """Both floods against ref_epoll, the same workloads, the order alternating each
    repetition; {"new"|"legacy": {workload: [result, ...]}}."""
    clients = {"new": a.flood, "legacy": a.legacy_flood}
    results = {k: {w.key: [] for w in workloads} for k in clients}
    reps = a.flood_reps or a.reps
    for rep in range(reps):
        h.log(f"flood comparison {rep + 1}/{reps}: both floods against {ref.key}")
        h.start(ref)
        try:
            if a.warmup:
                for k in clients:
                    h.flood(ref, Workload("warmup", 8, 10, 16, "warm-up"),
                            0.25 if a.quick else 0.5, client=clients[k], label=k)
            for w in workloads:
                order = ["new", "legacy"] if rep % 2 == 0 else ["legacy", "new"]
                for k in order:
                    r = h.flood(ref, w, a.duration, client=clients[k],
                                label=f"{k} iocpsrv-flood")
                    if r is None:
                        continue
                    r["rep"] = rep
                    results[k][w.key].append(r)
                    h.log(f"  {w.key:11s} {k:7s} flood {r['msgs_per_s']:>12,.0f} msgs/s "
                          f"p50 {r['p50_us']:>9,.1f} us  client cpu "
                          f"{r['client_cpu_ns_per_msg']:>8,.0f} ns/msg")
        finally:
            h.stop(ref)
            h.check_stats(ref)
    return results


def flood_compare_cells(fc, workloads):
    """Per workload: the paired median ratio new / legacy of msgs/s, and how many pairs."""
    out = {}
    for w in workloads:
        v, n = paired_ratio(fc, "new", "legacy", w.key, "msgs_per_s")
        out[w.key] = (v, n)
    return out


def flood_compare_section(fc, workloads, a):
    L = ["## iocpsrv-flood on the library's client role against the old flood", ""]
    L.append(f"Both clients drive the reference server (ref_epoll) with the same arguments "
             f"(`--threads 1`, the workloads of this run), one after the other, the order "
             f"alternating each repetition. The old flood is samples/flood/flood.c as of "
             f"{a.legacy_note}, built by bench/run with the same compiler flags into "
             f"build/bench/; it had its own epoll loop and plain sockets. × old is the median "
             f"over the repetitions of new ÷ old msgs/s within each repetition; the bar is "
             f"{FLOOD_NEED:.1f}× on every workload. Client CPU per message: utime+stime of "
             f"the flood process (getrusage of the reaped child) divided by its verified "
             f"messages.")
    L.append("")
    L.append("| workload | new msgs/s | old msgs/s | × old | ≥ 0.9× | new p50 µs | old p50 µs "
             "| new client CPU ns/msg | old client CPU ns/msg | runs |")
    L.append("| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    cells = flood_compare_cells(fc, workloads)
    met_n = total = 0
    for w in workloads:
        new, old = fc["new"][w.key], fc["legacy"][w.key]
        v, n = cells[w.key]
        if v is None:
            verdict = "–"
        else:
            total += 1
            ok = v >= FLOOD_NEED
            met_n += ok
            verdict = ("✅" if ok else f"❌ {(FLOOD_NEED - v) / FLOOD_NEED * 100:.0f}% short") + \
                ("" if n >= TARGET_REPS else " †")
        L.append(f"| {w.key} | {fmt_num(med(new, 'msgs_per_s'))} | "
                 f"{fmt_num(med(old, 'msgs_per_s'))} | "
                 f"{'–' if v is None else f'{v:.2f}×'} | {verdict} | "
                 f"{fmt_num(med(new, 'p50_us'), 1)} | {fmt_num(med(old, 'p50_us'), 1)} | "
                 f"{fmt_num(med(new, 'client_cpu_ns_per_msg'))} | "
                 f"{fmt_num(med(old, 'client_cpu_ns_per_msg'))} | {n} |")
    L.append("")
    if total:
        L.append(f"{met_n} of {total} workloads at {FLOOD_NEED:.1f}× or more.")
        if any(n < TARGET_REPS for _, n in cells.values()):
            L.append("")
            L.append(f"† fewer than {TARGET_REPS} repetitions paired: an indication, not a "
                     "verdict.")
        L.append("")
    return L


def flood_only_report(a, workloads, fc, meta, elapsed_total):
    m = meta["machine"]
    L = ["# iocpsrv-flood against the old flood", ""]
    L.append(f"Generated by `{meta['command']}` on {meta['date']} in "
             f"{elapsed_total / 60:.1f} min (only the flood comparison of `bench/run`; "
             "see bench/README.md).")
    L.append("")
    L.append(f"- {m['nproc']} CPUs: {m['cpu']}; kernel {m['kernel']}, {m['os']}; gcc {m['gcc']}")
    L.append(f"- load average before: {meta['load_before']}; after: {meta['load_after']} "
             "(1/5/15 min; the machine is shared)")
    L.append(f"- source: {meta['source']}")
    reps = a.flood_reps or a.reps
    L.append(f"- {reps} repetition{'s' if reps != 1 else ''}; throughput workloads run for "
             f"{a.duration:g} s, the headline is 99,999 packets")
    L.append("")
    L.extend(flood_compare_section(fc, workloads, a))
    L.append("## Verification")
    L.append("")
    if meta["failures"]:
        L.append(f"**{len(meta['failures'])} FAILURE(S)**:")
        L.append("")
        for f in meta["failures"]:
            L.append(f"- {f}")
    else:
        L.append(f"Every run passed: {meta['runs']} flood runs, {meta['packets']:,} packets "
                 "echoed and verified by each client.")
    L.append("")
    return "\n".join(L)


def med(rs, key):
    vals = [r[key] for r in rs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def summarize(results):
    out = {}
    for skey, per_w in results.items():
        out[skey] = {}
        for wkey, rs in per_w.items():
            if not rs:
                continue
            rates = [r["msgs_per_s"] for r in rs]
            m = statistics.median(rates)
            out[skey][wkey] = {
                "n": len(rs),
                "msgs_per_s": m,
                "mb_per_s": med(rs, "mb_per_s"),
                "p50_us": med(rs, "p50_us"),
                "p99_us": med(rs, "p99_us"),
                "cpu_ns_per_msg": med(rs, "cpu_ns_per_msg"),
                "elapsed_s": med(rs, "elapsed_s"),
                "spread": (max(rates) - min(rates)) / m if m and len(rs) > 1 else None,
            }
    return out


# ---------------------------------------------------------------------------------------
# Memory: resident memory per idle connection

MEMORY_SERVERS = ["ref", "uv", "iocpsrv", "iocpsrv-t1"]
IDLE_SETTLE_S = 2.0  # iocpsrv trims an idle connection's buffers after 1 s


def framed(payload):
    return len(payload).to_bytes(4, "little") + payload


def recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed before the echo arrived")
        data += chunk
    return data


def open_idle_connections(port, n):
    """n clients, each verified by one echoed packet, then left idle."""
    import socket
    socks = []
    try:
        for i in range(n):
            c = socket.create_connection(("127.0.0.1", port), timeout=30)
            socks.append(c)
        for i, c in enumerate(socks):
            c.sendall(framed(b"idle %05d" % i))
        for i, c in enumerate(socks):
            want = framed(b"idle %05d" % i)
            got = recv_exact(c, len(want))
            if got != want:
                raise ValueError(f"connection {i}: echo {got!r} != {want!r}")
    except BaseException:
        for c in socks:
            c.close()
        raise
    return socks


def memory_run(h, s, n):
    """Resident memory of server s before and with n idle connections (KiB)."""
    h.start(s)
    socks = []
    try:
        h.flood(s, Workload("warmup", 8, 10, 16, "warm-up"), 0.5)  # worker buffers touched
        time.sleep(IDLE_SETTLE_S)
        before = rss_kib(s.proc.pid)
        t0 = time.monotonic()
        try:
            socks = open_idle_connections(s.port, n)
        except (OSError, ValueError) as e:
            h.fail(f"{s.key} memory: {len(socks)} of {n} idle connections: {e}")
            return None
        opened_s = time.monotonic() - t0
        time.sleep(IDLE_SETTLE_S)  # what an idle connection keeps, not a busy one
        with_n = rss_kib(s.proc.pid)
        return {"n": n, "rss_before_kib": before, "rss_idle_kib": with_n,
                "bytes_per_conn": (with_n - before) * 1024 / n, "open_s": opened_s}
    finally:
        for c in socks:
            c.close()
        h.stop(s)
        h.check_stats(s)


def memory(h, servers_by_key, n):
    out = {}
    for key in MEMORY_SERVERS:
        s = servers_by_key.get(key)
        if s is None:
            continue
        r = memory_run(h, s, n)
        if r:
            out[key] = r
            h.log(f"  memory {key:11s} {r['rss_before_kib']:>8,} KiB idle server, "
                  f"{r['rss_idle_kib']:>8,} KiB with {n:,} idle connections: "
                  f"{r['bytes_per_conn']:,.0f} B each")
    return out


def memory_section(mem, n):
    L = [f"## Memory: {n:,} idle connections", ""]
    L.append(f"Each server alone: resident memory (VmRSS) after a short warm-up flood and "
             f"{IDLE_SETTLE_S:g} s idle, then with {n:,} clients connected, each verified by one "
             f"echoed 10-byte packet and then idle for {IDLE_SETTLE_S:g} s. Per connection = the "
             f"difference / {n:,}. The kernel's socket memory (about 5 KB of slab per socket "
             f"here) is not in any process's RSS and is the same for every server.")
    L.append("")
    L.append("| server | RSS idle server KiB | RSS with connections KiB | bytes per connection "
             "| × ref |")
    L.append("| --- | ---: | ---: | ---: | ---: |")
    ref = mem.get("ref", {}).get("bytes_per_conn")
    for key, r in mem.items():
        L.append(f"| {key} | {r['rss_before_kib']:,} | {r['rss_idle_kib']:,} | "
                 f"{r['bytes_per_conn']:,.0f} | {fmt_ratio(r['bytes_per_conn'], ref)} |")
    L.append("")
    L.append("ref_epoll allocates its 64 KiB read buffer at the first read and keeps it "
             "(the page the first packet touched stays resident); uv_echo allocates it at "
             "accept; iocpsrv reads into the worker's buffer and frees a quiet connection's "
             "own buffers after 1 s, so an idle connection holds its slot and nothing else.")
    L.append("")
    return L


# ---------------------------------------------------------------------------------------
# Profile of iocpsrv-echo (8 x 10 B x 64): perf software events (no PMU needed)

PERF_TRACEPOINTS = ["read", "write", "readv", "writev", "recvfrom", "sendto", "recvmsg",
                    "sendmsg", "epoll_wait", "epoll_pwait", "epoll_ctl", "futex", "accept4",
                    "close", "sched_yield", "ioctl"]


def perf_usable():
    if not shutil.which("perf"):
        return False, "perf is not installed (Debian: linux-perf)"
    r = subprocess.run(["perf", "stat", "-e", "task-clock,raw_syscalls:sys_enter", "true"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        return False, f"perf stat with software events and tracepoints fails here ({last})"
    r = subprocess.run(["perf", "stat", "-e", "instructions", "true"], capture_output=True,
                       text=True)
    hw = "<not supported>" not in r.stderr and r.returncode == 0
    return True, ("hardware counters available" if hw else
                  "no hardware counters in this VM (perf stat -e instructions: not "
                  "supported): software events only (cpu-clock sampling, tracepoints)")


def perf_stat_run(h, s, w, a):
    events = ["task-clock", "context-switches", "cpu-migrations", "raw_syscalls:sys_enter"]
    events += [f"syscalls:sys_enter_{n}" for n in PERF_TRACEPOINTS]
    outf = os.path.join(a.build, f"perf-stat-{s.key}.txt")
    perf = subprocess.Popen(["perf", "stat", "-x", ",", "-e", ",".join(events), "-p",
                             str(s.proc.pid), "-o", outf], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    r = h.flood(s, w, a.duration)
    perf.send_signal(signal.SIGINT)
    perf.wait(30)
    counts = {}
    with open(outf) as f:
        for line in f:
            parts = line.strip().split(",")
            if len(parts) < 3 or line.startswith("#"):
                continue
            try:
                counts[parts[2]] = float(parts[0])
            except ValueError:
                pass
    return r, counts


def perf_record_run(h, s, w, a):
    data = os.path.join(a.build, f"perf-{s.key}.data")
    perf = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "2999", "-p",
                             str(s.proc.pid), "-o", data], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    r = h.flood(s, w, a.duration)
    perf.send_signal(signal.SIGINT)
    perf.wait(60)
    rep = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", "dso,sym",
                          "--stdio", "-g", "none", "--percent-limit", "0.01"],
                         capture_output=True, text=True)
    rows = []
    for line in rep.stdout.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*?)\s*$", line)
        if m:
            rows.append((float(m.group(1)), m.group(2), m.group(4)))
    return r, rows


def classify(dso, sym):
    if dso.startswith("[kernel"):
        return "kernel"
    if "libiocpsrv" in dso:
        return "libiocpsrv"
    if dso.startswith("libc") or "libc.so" in dso or "ld-linux" in dso:
        return "libc"
    return dso


def profile(h, servers_by_key, a):
    ok, why = perf_usable()
    sec = {"tool_note": why, "ok": ok, "stat": {}, "record": None}
    if not ok:
        if shutil.which("strace"):
            sec["tool_note"] += "; syscall counts from strace -c -f instead"
            sec["strace"] = {}
        else:
            return sec
    w = next(x for x in WORKLOADS if x.key == PROFILE_WORKLOAD)
    for key in ["ref", "iocpsrv", "iocpsrv-t1"]:
        s = servers_by_key.get(key)
        if s is None:
            continue
        h.start(s)
        try:
            h.flood(s, Workload("warmup", 8, 10, 16, "warm-up"), 0.5)
            if ok:
                r, counts = perf_stat_run(h, s, w, a)
                if r:
                    sec["stat"][key] = {"run": r, "counts": counts}
                    h.log(f"  perf stat {key}: {r['msgs_per_s']:,.0f} msgs/s")
                if key == "iocpsrv":
                    r2, rows = perf_record_run(h, s, w, a)
                    if r2:
                        sec["record"] = {"run": r2, "rows": rows}
            else:
                p = subprocess.Popen(["strace", "-c", "-f", "-q", "-p", str(s.proc.pid),
                                      "-o", os.path.join(a.build, f"strace-{key}.txt")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(0.5)
                r = h.flood(s, w, a.duration)
                p.send_signal(signal.SIGINT)
                p.wait(30)
                with open(os.path.join(a.build, f"strace-{key}.txt")) as f:
                    sec["strace"][key] = {"run": r, "text": f.read()}
        finally:
            h.stop(s)
            h.check_stats(s)
    return sec


# ---------------------------------------------------------------------------------------
# Report

def fmt_num(v, digits=0):
    if v is None:
        return "–"
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def fmt_ratio(v, base):
    if v is None or base is None or base == 0:
        return "–"
    return f"{v / base:.2f}×"


def sh(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, shell=True,
                              timeout=20).stdout.strip()
    except Exception:
        return ""


def machine():
    model = ""
    hyper = False
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and " hypervisor" in line:
                hyper = True
    mem = ""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return {
        "nproc": os.cpu_count(),
        "cpu": model + (" (virtual machine: hypervisor flag set)" if hyper else ""),
        "kernel": platform.release(),
        "memory": mem,
        "os": sh(". /etc/os-release 2>/dev/null && echo \"$PRETTY_NAME\""),
        "gcc": sh("gcc -dumpfullversion 2>/dev/null"),
        "python": sh("/usr/bin/python3 -c 'import sys; print(sys.version.split()[0])'"),
        "dotnet": sh("dotnet --version 2>/dev/null"),
        "libuv": sh("pkg-config --modversion libuv 2>/dev/null"),
        "perf": sh("perf --version 2>/dev/null"),
    }


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


# Issue 17's targets: (server, base, figure, op, needed, label). Each is judged on every
# throughput workload by the median over the repetitions of server / base, both measured
# in the same repetition (minutes apart at most), so a slow patch of the shared machine
# moves both sides of a ratio. TARGET_REPS repetitions at least make it a verdict.
TARGET_REPS = 3
TARGETS = [
    ("iocpsrv", "ref", "msgs_per_s", "≥", 1.0, "iocpsrv-echo msgs/s ≥ 1.0× ref_epoll"),
    ("iocpsrv", "ref", "cpu_ns_per_msg", "≤", 1.0, "iocpsrv-echo CPU/msg ≤ 1.0× ref_epoll"),
    ("py-iocpsrv", "py-asyncio", "msgs_per_s", "≥", 1.5,
     "Python echo.py msgs/s ≥ 1.5× asyncio (write per read)"),
    ("py-iocpsrv", "py-uvloop", "msgs_per_s", "≥", 1.0,
     "Python echo.py msgs/s ≥ 1.0× uvloop (same server)"),
    ("cs-iocpsrv", "cs-socket", "msgs_per_s", "≥", 1.5, "C# Echo msgs/s ≥ 1.5× .NET Socket"),
    ("cs-iocpsrv", "cs-kestrel", "msgs_per_s", "≥", 1.0, "C# Echo msgs/s ≥ 1.0× Kestrel"),
]
# Reported beside the targets, not counted: the packet-batch callback against the same
# references as iocpsrv-echo.
INFO_TARGETS = [
    ("iocpsrv-batch", "ref", "msgs_per_s", "≥", 1.0, "iocpsrv-echo --batch msgs/s ≥ 1.0× ref_epoll"),
    ("iocpsrv-batch", "ref", "cpu_ns_per_msg", "≤", 1.0,
     "iocpsrv-echo --batch CPU/msg ≤ 1.0× ref_epoll"),
]


def paired_ratio(results, skey, bkey, wkey, field):
    """(median over repetitions of skey/bkey from the same repetition, repetitions paired)."""
    sv = {r["rep"]: r.get(field) for r in results.get(skey, {}).get(wkey, [])}
    bv = {r["rep"]: r.get(field) for r in results.get(bkey, {}).get(wkey, [])}
    ratios = [sv[k] / bv[k] for k in sv if k in bv and sv[k] is not None and bv[k]]
    if not ratios:
        return None, 0
    return statistics.median(ratios), len(ratios)


def met(v, op, need):
    return v >= need if op == "≥" else v <= need


def targets(results, present, left_out, workloads, specs=None):
    """One dict per target: its spec, per workload (ratio, repetitions paired), and why it
    could not be measured when its server or base is missing."""
    out = []
    for skey, bkey, field, op, need, label in (TARGETS if specs is None else specs):
        t = {"server": skey, "base": bkey, "field": field, "op": op, "need": need,
             "label": label, "cells": {}, "missing": None}
        gone = [k for k in (skey, bkey) if k not in present]
        if gone:
            why = [f"{k} left out: {left_out[k][1]}" for k in gone if k in left_out]
            absent = [k for k in gone if k not in left_out]
            if absent:
                why.append("not in this run: " + ", ".join(absent))
            t["missing"] = "; ".join(why)
            t["left_out"] = any(k in left_out for k in gone)
        else:
            for w in workloads:
                v, n = paired_ratio(results, skey, bkey, w, field)
                if v is not None:
                    t["cells"][w] = (v, n, met(v, op, need))
        out.append(t)
    return out


def target_cell(cell, op, need):
    if cell is None:
        return "–"
    v, n, ok = cell
    dag = "" if n >= TARGET_REPS else "†"
    if ok:
        return f"{v:.2f}×{dag} ✅"
    if op == "≥":
        return f"{v:.2f}×{dag} ❌ {(need - v) / need * 100:.0f}% short"
    return f"{v:.2f}×{dag} ❌ {(v - need) / need * 100:.0f}% over"


def targets_table(trows, wkeys):
    L = ["| target | needed | " + " | ".join(wkeys) + " |",
         "| --- | ---: |" + " ---: |" * len(wkeys)]
    for t in trows:
        if t["missing"]:
            continue
        L.append(f"| {t['label']} | {t['op']} {t['need']:.1f}× | "
                 + " | ".join(target_cell(t["cells"].get(w), t["op"], t["need"]) for w in wkeys)
                 + " |")
    return L


def write_report(a, servers, workloads, results, summary, prof, meta, elapsed_total,
                 mem=None):
    present = {s.key for s in servers if summary.get(s.key)}
    L = []
    L.append("# iocpsrv benchmark results" + (" (quick smoke)" if a.quick else ""))
    L.append("")
    L.append(f"Generated by `{meta['command']}` on {meta['date']} in "
             f"{elapsed_total / 60:.1f} min. Regenerate with `bench/run` "
             "(see bench/README.md for what each server is and how figures are measured).")
    L.append("")
    m = meta["machine"]
    L.append("## Machine")
    L.append("")
    L.append(f"- {m['nproc']} CPUs: {m['cpu']}")
    L.append(f"- kernel {m['kernel']}, {m['os']}, memory {m['memory']}")
    L.append(f"- load average before the run: {meta['load_before']}; after: "
             f"{meta['load_after']} (1/5/15 min). The machine is shared: other work ran "
             "during the measurements, and client and server share the CPUs.")
    L.append(f"- gcc {m['gcc']}, Python {m['python']}, .NET SDK {m['dotnet'] or '–'}, "
             f"libuv {m['libuv'] or '–'}, {m['perf'] or 'no perf'}")
    L.append(f"- source: {meta['source']}")
    L.append("")
    L.append("## Method")
    L.append("")
    L.append(f"- Client: `iocpsrv-flood` (the library's client role with 1 worker thread, "
             f"`--json`; every echoed byte, length "
             f"and order verified; any error fails the run). Throughput workloads run for "
             f"{a.duration:g} s each (`--duration`); the headline is a fixed 99,999 packets.")
    reps_note = f"{a.reps} repetition{'s' if a.reps != 1 else ''}, median reported"
    extra = [s for s in servers if s.reps is not None and s.reps < a.reps and s.key in present]
    if extra:
        reps_note += "; " + ", ".join(f"{s.key}: {min(s.reps, a.reps)}" for s in extra) + \
            " (to keep the run short)"
    L.append(f"- {reps_note}. All servers of a repetition run side by side (idle while not "
             "measured); for each workload they are measured one after another, the order "
             "rotating each repetition, so ratios compare runs minutes apart at most.")
    L.append("- CPU per message: utime+stime of the whole server process (all threads) "
             "from /proc/PID/stat before and after the flood run, divided by the verified "
             f"messages (clock tick {1000 / CLK_TCK:g} ms).")
    L.append("- Ratios (×ref) divide by ref_epoll measured in the same run: above 1 is better "
             "for msgs/s and MB/s, below 1 is better for latency and CPU per message. "
             "MB/s counts echoed bytes with headers; for one workload its ratio equals the "
             "msgs/s ratio. spread = (max − min) / median of msgs/s over the repetitions.")
    L.append("- Targets and the binding tables use paired ratios instead: server ÷ base "
             "within each repetition, then the median of those ratios (a figure of the "
             "per-workload tables divides the two medians, which can differ slightly).")
    L.append("")

    if a.left_out:
        L.append("## Servers left out")
        L.append("")
        for key, (label, why) in a.left_out.items():
            L.append(f"- `{key}` ({label}): {why}.")
        L.append("")

    # Targets
    wkeys = [w.key for w in workloads if w.key in THROUGHPUT_WORKLOADS]
    trows = targets(results, present, a.left_out, wkeys)
    irows = targets(results, present, a.left_out, wkeys, INFO_TARGETS)
    L.append("## Targets (issue 17)")
    L.append("")
    L.append("Each cell: the median over the repetitions of the ratio server ÷ base, both "
             "measured in the same repetition; ≥ targets are on msgs/s (higher is better), "
             "≤ targets on server CPU per message (lower is better).")
    L.append("")
    measured = [t for t in trows if not t["missing"]]
    cells = [c for t in measured for c in t["cells"].values()]
    if cells:
        L.extend(targets_table(trows, wkeys))
        L.append("")
        n_met = sum(1 for c in cells if c[2])
        L.append(f"{n_met} of {len(cells)} met ({len(measured)} targets × {len(wkeys)} "
                 f"workloads measured).")
        if any(c[1] < TARGET_REPS for c in cells):
            L.append("")
            L.append(f"† fewer than {TARGET_REPS} repetitions paired "
                     f"({min(c[1] for c in cells)} here): an indication, not a verdict "
                     "(a full `bench/run` measures 3).")
    else:
        L.append("(no target could be evaluated: a server is missing)")
    missing = [t for t in trows if t["missing"]]
    if missing:
        L.append("")
        for t in missing:
            L.append(f"- {t['label']}: not measured ({t['missing']}).")
    if wkeys and len(wkeys) < len(THROUGHPUT_WORKLOADS):
        L.append("")
        L.append("Workloads not in this run: "
                 + ", ".join(w for w in THROUGHPUT_WORKLOADS if w not in wkeys) + ".")
    L.append("")
    if any(not t["missing"] for t in irows):
        L.append("Informational, not targets: iocpsrv-echo with the packet-batch callback "
                 "against the same references.")
        L.append("")
        L.extend(targets_table(irows, wkeys))
        L.append("")
    elif irows and irows[0]["missing"]:
        L.append("Informational rows (iocpsrv-echo --batch against the same references): "
                 f"not measured ({irows[0]['missing']}).")
        L.append("")
    native = [k for k in ("iocpsrv", "iocpsrv-batch", "iocpsrv-t1") if k in present]
    if native and "ref" in present:
        names = {"iocpsrv": "iocpsrv-echo", "iocpsrv-batch": "--batch",
                 "iocpsrv-t1": "--threads 1"}
        L.append("Server CPU per message, medians of each server (the ratios here divide "
                 "medians, the targets above pair repetitions):")
        L.append("")
        L.append("| workload | ref_epoll ns/msg | " + " | ".join(
            f"{names[k]} ns/msg | × ref" for k in native) + " |")
        L.append("| --- | ---: |" + " ---: | ---: |" * len(native))
        for w in workloads:
            b = summary["ref"].get(w.key, {}).get("cpu_ns_per_msg")
            cols = []
            for k in native:
                v = summary.get(k, {}).get(w.key, {}).get("cpu_ns_per_msg")
                cols.append(f"{fmt_num(v)} | {fmt_ratio(v, b)}")
            L.append(f"| {w.key} | {fmt_num(b)} | " + " | ".join(cols) + " |")
        L.append("")

    fc = getattr(a, "flood_compare", None)
    if fc is not None:
        L.extend(flood_compare_section(fc, workloads, a))
    elif getattr(a, "flood_compare_missing", None):
        L.append("## iocpsrv-flood on the library's client role against the old flood")
        L.append("")
        L.append(f"Not measured: {a.flood_compare_missing}.")
        L.append("")

    # Per-workload tables
    L.append("## Results by workload")
    L.append("")
    for w in workloads:
        L.append(f"### {w.label}")
        L.append("")
        if w.kind == "count":
            L.append("`iocpsrv-flood --count 99999 --message \"Test Item \"` (one packet in "
                     "flight: a round-trip test; the article reports about 3 s).")
            L.append("")
            L.append("| server | elapsed s | × ref | msgs/s | × ref | p50 µs | × ref | "
                     "p99 µs | × ref | CPU ns/msg | × ref | runs |")
            L.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | "
                     "---: | ---: |")
        else:
            L.append("| server | msgs/s | × ref | spread | MB/s | × ref | p50 µs | × ref | "
                     "p99 µs | × ref | CPU ns/msg | × ref | runs |")
            L.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | "
                     "---: | ---: | ---: |")
        ref = summary.get("ref", {}).get(w.key, {})
        for s in servers:
            r = summary.get(s.key, {}).get(w.key)
            if r is None:
                continue
            g = lambda k: r.get(k)  # noqa: E731
            rb = lambda k: ref.get(k)  # noqa: E731
            if w.kind == "count":
                L.append(f"| {s.label} | {fmt_num(g('elapsed_s'), 2)} | "
                         f"{fmt_ratio(g('elapsed_s'), rb('elapsed_s'))} | "
                         f"{fmt_num(g('msgs_per_s'))} | {fmt_ratio(g('msgs_per_s'), rb('msgs_per_s'))} | "
                         f"{fmt_num(g('p50_us'), 1)} | {fmt_ratio(g('p50_us'), rb('p50_us'))} | "
                         f"{fmt_num(g('p99_us'), 1)} | {fmt_ratio(g('p99_us'), rb('p99_us'))} | "
                         f"{fmt_num(g('cpu_ns_per_msg'))} | "
                         f"{fmt_ratio(g('cpu_ns_per_msg'), rb('cpu_ns_per_msg'))} | {r['n']} |")
            else:
                spread = "–" if r["spread"] is None else f"{r['spread'] * 100:.0f}%"
                L.append(f"| {s.label} | {fmt_num(g('msgs_per_s'))} | "
                         f"{fmt_ratio(g('msgs_per_s'), rb('msgs_per_s'))} | {spread} | "
                         f"{fmt_num(g('mb_per_s'), 2)} | {fmt_ratio(g('mb_per_s'), rb('mb_per_s'))} | "
                         f"{fmt_num(g('p50_us'), 1)} | {fmt_ratio(g('p50_us'), rb('p50_us'))} | "
                         f"{fmt_num(g('p99_us'), 1)} | {fmt_ratio(g('p99_us'), rb('p99_us'))} | "
                         f"{fmt_num(g('cpu_ns_per_msg'))} | "
                         f"{fmt_ratio(g('cpu_ns_per_msg'), rb('cpu_ns_per_msg'))} | {r['n']} |")
        L.append("")

    # Bindings vs their baselines
    for group, title in (("python", "Python: the iocpsrv binding against asyncio and uvloop"),
                         ("csharp", "C#: the iocpsrv binding against .NET Socket and Kestrel")):
        pairs = [(s.key, b) for s in servers if s.group == group and s.key in present
                 for b in s.baselines if b in present]
        if not pairs:
            continue
        L.append(f"## {title}")
        L.append("")
        L.append("Ratios to a plain server of the same runtime (× base): the median over the "
                 "repetitions of the ratio within each repetition.")
        L.append("")
        L.append("| server | base | workload | msgs/s | × base | p50 × base | CPU ns/msg | "
                 "CPU × base |")
        L.append("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
        for skey, bkey in pairs:
            for w in workloads:
                r = summary[skey].get(w.key)
                if not r or not summary[bkey].get(w.key):
                    continue

                def pr(field):
                    v, _ = paired_ratio(results, skey, bkey, w.key, field)
                    return "–" if v is None else f"{v:.2f}×"

                L.append(f"| {skey} | {bkey} | {w.key} | {fmt_num(r['msgs_per_s'])} | "
                         f"{pr('msgs_per_s')} | {pr('p50_us')} | "
                         f"{fmt_num(r['cpu_ns_per_msg'])} | {pr('cpu_ns_per_msg')} |")
        L.append("")

    if mem:
        L.extend(memory_section(mem, a.idle_connections))
    if prof is not None:
        L.extend(profile_section(prof))

    L.append("## Verification")
    L.append("")
    if meta["failures"]:
        L.append(f"**{len(meta['failures'])} FAILURE(S)**:")
        L.append("")
        for f in meta["failures"]:
            L.append(f"- {f}")
    else:
        L.append(f"Every run passed: {meta['runs']} flood runs, {meta['packets']:,} packets "
                 "echoed and verified byte for byte and in order; every server exited cleanly "
                 "on SIGINT, and those that print packets in/out counted as many out as in.")
    L.append("")
    L.append("Raw per-run numbers: build/bench/results.json (not committed).")
    L.append("")
    return "\n".join(L)


def profile_section(prof):
    L = ["## Where the time goes", ""]
    L.append(f"iocpsrv-echo on {PROFILE_WORKLOAD} (8 connections × 10 B × depth 64), each "
             f"server started alone. Tools: {prof['tool_note']}.")
    L.append("")
    st = prof.get("stat") or {}
    if st:
        L.append("Per 1,000 echoed messages (perf stat on the server process; tracepoint "
                 "counts are per syscall):")
        L.append("")
        keys = [k for k in ("ref", "iocpsrv", "iocpsrv-t1") if k in st]
        L.append("| per 1,000 messages | " + " | ".join(keys) + " |")
        L.append("| --- |" + " ---: |" * len(keys))

        def per_k(key, ev, scale=1.0):
            c = st[key]["counts"].get(ev)
            n = st[key]["run"]["packets"]
            return None if c is None or not n else c / n * 1000 * scale

        L.append("| msgs/s in this run | " + " | ".join(
            fmt_num(st[k]["run"]["msgs_per_s"]) for k in keys) + " |")
        L.append("| CPU µs (task-clock) | " + " | ".join(
            fmt_num(per_k(k, "task-clock", 1000.0), 1) for k in keys) + " |")  # ms -> us
        for ev, name in (("context-switches", "context switches"),
                         ("cpu-migrations", "CPU migrations"),
                         ("raw_syscalls:sys_enter", "syscalls, all")):
            L.append(f"| {name} | " + " | ".join(fmt_num(per_k(k, ev), 1) for k in keys) + " |")
        for n in PERF_TRACEPOINTS:
            ev = f"syscalls:sys_enter_{n}"
            vals = [per_k(k, ev) for k in keys]
            if all(v is None or v < 0.05 for v in vals):
                continue
            L.append(f"| {n} | " + " | ".join(fmt_num(v, 1) for v in vals) + " |")
        others = []
        for k in keys:
            tot = per_k(k, "raw_syscalls:sys_enter") or 0
            listed = sum(per_k(k, f"syscalls:sys_enter_{n}") or 0 for n in PERF_TRACEPOINTS)
            others.append(tot - listed)
        L.append("| other syscalls | " + " | ".join(fmt_num(v, 1) for v in others) + " |")
        L.append("")
    rec = prof.get("record")
    if rec and rec["rows"]:
        rows = rec["rows"]
        groups = {}
        for pct, dso, sym in rows:
            g = classify(dso, sym)
            groups[g] = groups.get(g, 0) + pct
        L.append(f"Where iocpsrv-echo's CPU goes (perf record -e cpu-clock, timer sampling "
                 f"at 2,999 Hz over {rec['run']['elapsed_s']:.1f} s, "
                 f"{rec['run']['msgs_per_s']:,.0f} msgs/s, self time). By module: "
                 + ", ".join(f"{g} {p:.1f}%" for g, p in
                             sorted(groups.items(), key=lambda x: -x[1])) + ".")
        L.append("")
        L.append("| self % | module | symbol |")
        L.append("| ---: | --- | --- |")
        for pct, dso, sym in rows[:25]:
            L.append(f"| {pct:.2f} | {dso} | `{sym}` |")
        L.append("")
        L.append("In a VM without a PMU, perf samples on a timer interrupt, so kernel time "
                 "tends to land on the instruction that re-enables interrupts "
                 "(`_raw_spin_unlock_irqrestore`, `finish_task_switch`): read those rows as "
                 "'wake-ups and scheduling', not as lock contention.")
        L.append("")
    for key, v in (prof.get("strace") or {}).items():
        L.append(f"strace -c -f, {key} ({v['run']['packets'] if v['run'] else '?'} messages):")
        L.append("")
        L.append("```")
        L.append(v["text"].strip())
        L.append("```")
        L.append("")
    if prof.get("notes"):
        L.append(prof["notes"])
        L.append("")
    return L


# ---------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", required=True, help="bench build dir (build/bench)")
    ap.add_argument("--src", required=True, help="source tree the engine was built from")
    ap.add_argument("--bench", default=os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--out", required=True, help="RESULTS.md to write")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--managed-reps", type=int, default=None,
                    help="repetitions of the Python and C# servers (default: --reps)")
    ap.add_argument("--servers", default="", help="comma list of server keys (default all)")
    ap.add_argument("--skip", action="append", default=[],
                    help="comma list of server keys to leave out (repeatable)")
    ap.add_argument("--workloads", default="", help="comma list of workload keys")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--idle-connections", type=int, default=10000,
                    help="idle connections of the memory measurement (0: none)")
    ap.add_argument("--no-warmup", dest="warmup", action="store_false")
    ap.add_argument("--pidfile", default="")
    ap.add_argument("--command", default="bench/run")
    ap.add_argument("--source-note", default="")
    ap.add_argument("--profile-notes", default="", help="file with notes for the profile section")
    ap.add_argument("--left-out-note", action="append", default=[], metavar="KEYS=WHY",
                    help="why bench/run did not build these servers (repeatable)")
    ap.add_argument("--legacy-flood", default="",
                    help="the old iocpsrv-flood (own epoll loop) to compare the new one with")
    ap.add_argument("--legacy-note", default="an earlier revision",
                    help="what the old flood was built from (for the report)")
    ap.add_argument("--legacy-missing", default="",
                    help="why there is no old flood (the comparison is left out)")
    ap.add_argument("--flood-only", action="store_true",
                    help="only the comparison of the two floods against ref_epoll")
    ap.add_argument("--flood-reps", type=int, default=None,
                    help="repetitions of the flood comparison (default: --reps)")
    a = ap.parse_args()
    a.flood = os.path.join(a.build, "cmake", "samples", "iocpsrv-flood")
    if a.quick:
        a.reps = 1
        a.duration = min(a.duration, 1.0)
        a.no_profile = True
        a.idle_connections = min(a.idle_connections, 500)
    t_start = time.monotonic()

    servers = make_servers(a)
    if a.managed_reps is not None:
        for s in servers:
            if s.group != "native":
                s.reps = a.managed_reps
    want = [x for x in a.servers.split(",") if x]
    skip = {x for item in a.skip for x in item.split(",") if x}
    if want:
        servers = [s for s in servers if s.key in want]
    servers = [s for s in servers if s.key not in skip]
    # Anything that was not built or cannot run is left out with a note (in RESULTS.md
    # too), never a failure: bench/run passes its own reasons (no dotnet, no libuv, ...).
    a.left_out = {}
    given = {}
    for item in a.left_out_note:
        keys, _, why = item.partition("=")
        for k in keys.split(","):
            given[k] = why
    for s in list(servers):
        exe = s.cmd[1] if s.cmd[0] in ("dotnet", "/usr/bin/python3") else s.cmd[0]
        why = given.get(s.key)
        if why:
            pass
        elif not os.path.exists(exe):
            why = f"{exe} is missing (not built)"
        elif s.check is not None:
            why = s.check()
        if why:
            print(f"harness: {s.key}: left out: {why}", flush=True)
            a.left_out[s.key] = (s.label, why)
            servers.remove(s)
    if a.workloads:
        wk = a.workloads.split(",")
        workloads = [w for w in WORKLOADS if w.key in wk]
    elif a.quick:
        workloads = [w for w in WORKLOADS if w.key in QUICK_WORKLOADS]
    else:
        workloads = list(WORKLOADS)
    if not servers or not workloads:
        print("harness: nothing to run", file=sys.stderr)
        return 2
    # The flood comparison needs the old flood and ref_epoll.
    a.flood_compare = None
    a.flood_compare_missing = None
    if a.legacy_flood and not os.path.exists(a.legacy_flood):
        a.legacy_missing = a.legacy_missing or f"{a.legacy_flood} is missing (not built)"
    if not a.legacy_flood and not a.legacy_missing:
        a.legacy_missing = "no old flood given (--legacy-flood)"
    ref_server = next((s for s in servers if s.key == "ref"), None)
    if a.legacy_missing:
        a.flood_compare_missing = a.legacy_missing
    elif ref_server is None:
        a.flood_compare_missing = "ref_epoll is not in this run"
    if a.flood_only:
        if a.flood_compare_missing:
            print(f"harness: --flood-only: {a.flood_compare_missing}", file=sys.stderr)
            return 1
        servers = [ref_server]

    # The memory measurement holds every idle client in this process.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, a.idle_connections + 1000))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if a.idle_connections + 100 > want:
        print(f"harness: {a.idle_connections:,} idle connections need more file descriptors "
              f"than ulimit -n allows ({want}): fewer measured", flush=True)
        a.idle_connections = max(0, want - 200)
    h = Harness(a)

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    # bench/run starts this in the background, where bash sets SIGINT to "ignore"; ignored
    # signals stay ignored across exec, and the servers must get SIGINT: catch it here, so
    # the children start with the default action.
    signal.signal(signal.SIGINT, on_signal)
    load_before = loadavg()
    prof = None
    mem = None
    try:
        if a.flood_only:
            results = {}
        else:
            results = run_matrix(h, servers, workloads, a)
        if not a.flood_compare_missing:
            a.flood_compare = run_flood_compare(h, ref_server, workloads, a)
        if a.flood_only:
            pass
        elif a.idle_connections > 0:
            h.log(f"memory: {a.idle_connections:,} idle connections")
            mem = memory(h, {s.key: s for s in servers}, a.idle_connections)
        if not a.no_profile and not a.flood_only:
            h.log("profile: iocpsrv-echo and ref_epoll on " + PROFILE_WORKLOAD)
            try:
                prof = profile(h, {s.key: s for s in servers}, a)
                if a.profile_notes and os.path.exists(a.profile_notes):
                    with open(a.profile_notes) as f:
                        prof["notes"] = f.read().strip()
            except Fatal as e:
                h.fail(str(e))
    except Fatal as e:
        h.fail(str(e))
        results = None
    except KeyboardInterrupt:
        h.log("harness: interrupted: stopping the servers")
        h.stop_all()
        return 130
    finally:
        h.stop_all()

    if results is None:
        print("harness: FAILED: " + "; ".join(h.failures), file=sys.stderr)
        return 1
    summary = summarize(results)
    every = list(results.values()) + list((a.flood_compare or {}).values())
    runs = sum(len(rs) for per in every for rs in per.values())
    packets = sum(r["packets"] for per in every for rs in per.values() for r in rs)
    meta = {
        "command": a.command,
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "load_before": load_before,
        "load_after": loadavg(),
        "source": a.source_note or a.src,
        "failures": h.failures,
        "runs": runs,
        "packets": packets,
    }
    elapsed = time.monotonic() - t_start
    if a.flood_only:
        report = flood_only_report(a, workloads, a.flood_compare, meta, elapsed)
        raw = "results-flood.json"
    else:
        report = write_report(a, servers, workloads, results, summary, prof, meta, elapsed,
                              mem)
        raw = "results-quick.json" if a.quick else "results.json"
    with open(a.out, "w") as f:
        f.write(report)
    with open(os.path.join(a.build, raw), "w") as f:
        json.dump({"meta": meta, "results": results, "summary": summary,
                   "memory": mem, "profile": prof, "flood_compare": a.flood_compare},
                  f, indent=1, default=str)
    h.log(f"wrote {a.out} ({elapsed:.0f} s)")
    if a.flood_compare is not None:
        for wkey, (v, n) in flood_compare_cells(a.flood_compare, workloads).items():
            if v is not None:
                h.log(f"  flood {'met   ' if v >= FLOOD_NEED else 'MISSED'} new flood msgs/s "
                      f">= {FLOOD_NEED:.1f}x the old flood against ref_epoll {wkey:11s} "
                      f"{v:.2f}x (n={n})")
    present = {s.key for s in servers if summary.get(s.key)}
    wkeys = [w.key for w in workloads if w.key in THROUGHPUT_WORKLOADS]
    noted = set()
    for t in targets(results, present, a.left_out, wkeys) + \
            targets(results, present, a.left_out, wkeys, INFO_TARGETS):
        info = " (informational)" if t["server"] == "iocpsrv-batch" else ""
        if t["missing"] and t.get("left_out") and t["missing"] not in noted:
            noted.add(t["missing"])
            h.log(f"  not measured: {t['server']} against {t['base']}{info}: {t['missing']}")
        for w, (v, n, ok) in t["cells"].items():
            h.log(f"  target {'met   ' if ok else 'MISSED'} {t['label'] + info:56s} {w:11s} "
                  f"{v:.2f}x (n={n})")
    if h.failures:
        print(f"harness: {len(h.failures)} verification failure(s):", file=sys.stderr)
        for f in h.failures:
            print(f"  {f}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
