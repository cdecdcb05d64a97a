#!/usr/bin/python3
"""revs.py -- what each engine change bought: iocpsrv-echo built from several git
revisions, each measured against ref_epoll in the same run.

    /usr/bin/python3 bench/revs.py [--reps 5] [--duration 2] [--workloads 8x10Bx64,8x1KiBx16]
                                   REV[=LABEL] REV[=LABEL] ...

Each revision is exported with git archive into build/bench/revs/<sha>/src and built
Release (engine and samples only). Then, per repetition and workload, ref_epoll and every
revision's iocpsrv-echo (default workers) are driven in a rotating order by the newest
revision's iocpsrv-flood, and the table gives the median msgs/s and server CPU ns/msg, each
as a ratio to ref_epoll measured in the same repetition. Prints a Markdown table; needs
bench/run to have built build/bench first (ref_epoll, the flood client).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BUILD = os.path.join(ROOT, "build", "bench")
sys.path.insert(0, HERE)

import harness  # noqa: E402  (Server, Harness, Workload: the same runner as bench/run)


def build_rev(rev):
    sha = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", rev], check=True,
                         capture_output=True, text=True).stdout.strip()
    base = os.path.join(BUILD, "revs", sha)
    echo = os.path.join(base, "cmake", "samples", "iocpsrv-echo")
    if not os.path.exists(echo):
        src = os.path.join(base, "src")
        os.makedirs(src, exist_ok=True)
        arch = subprocess.Popen(["git", "-C", ROOT, "archive", "--format=tar", rev],
                                stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", src], stdin=arch.stdout, check=True)
        arch.wait()
        for cmd in (["cmake", "-S", src, "-B", os.path.join(base, "cmake"),
                     "-DCMAKE_BUILD_TYPE=Release", "-DIOCPSRV_BUILD_TESTS=OFF"],
                    ["cmake", "--build", os.path.join(base, "cmake"), "-j", str(os.cpu_count()),
                     "--target", "iocpsrv-echo"]):
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return sha, echo


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("revs", nargs="+", help="REV or REV=LABEL, oldest first")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--workloads", default="8x10Bx64,8x1KiBx16")
    a = ap.parse_args()
    a.flood = os.path.join(BUILD, "cmake", "samples", "iocpsrv-flood")
    a.pidfile = ""
    ref_exe = os.path.join(BUILD, "servers", "ref_epoll")
    for need in (a.flood, ref_exe):
        if not os.path.exists(need):
            sys.exit(f"revs.py: {need} is missing: run bench/run --quick first")

    servers = [harness.Server("ref", "ref_epoll", "native", [ref_exe])]
    for spec in a.revs:
        rev, _, label = spec.partition("=")
        sha, echo = build_rev(rev)
        servers.append(harness.Server(sha, label or sha, "native", [echo]))
    workloads = [w for w in harness.WORKLOADS if w.key in a.workloads.split(",")]

    h = harness.Harness(a)
    ratios = {(s.key, w.key): {"msgs": [], "cpu": [], "abs": []} for s in servers
              for w in workloads}
    try:
        for s in servers:
            h.start(s)
            h.flood(s, harness.Workload("warmup", 8, 10, 16, "warm-up"), 0.5)
        for rep in range(a.reps):
            for w in workloads:
                k = rep % len(servers)
                got = {}
                for s in servers[k:] + servers[:k]:
                    r = h.flood(s, w, a.duration)
                    if r:
                        got[s.key] = r
                ref = got.get("ref")
                if not ref:
                    continue
                for key, r in got.items():
                    d = ratios[(key, w.key)]
                    d["msgs"].append(r["msgs_per_s"] / ref["msgs_per_s"])
                    d["cpu"].append(r["cpu_ns_per_msg"] / ref["cpu_ns_per_msg"])
                    d["abs"].append(r["msgs_per_s"])
            print(f"repetition {rep + 1}/{a.reps} done", file=sys.stderr, flush=True)
    finally:
        h.stop_all()

    print("| revision | workload | msgs/s (median) | msgs/s × ref | CPU/msg × ref | runs |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for w in workloads:
        for s in servers:
            d = ratios[(s.key, w.key)]
            if not d["msgs"]:
                continue
            print(f"| {s.label} | {w.key} | {statistics.median(d['abs']):,.0f} | "
                  f"{statistics.median(d['msgs']):.2f}× | {statistics.median(d['cpu']):.2f}× | "
                  f"{len(d['msgs'])} |")
    if h.failures:
        print("FAILURES: " + json.dumps(h.failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
