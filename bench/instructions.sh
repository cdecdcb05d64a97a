#!/usr/bin/env bash
# bench/instructions.sh [--flood PATH] [--count N] [--workload CxSxD] -- SERVER [ARGS...]
#
# User-space instructions per echoed message of an echo server, counted by callgrind:
# the server runs under valgrind, iocpsrv-flood sends C connections x N packets of S
# bytes at depth D (default 8x10x64: --workload 8x10x64; every echo verified), and the
# total is divided by the messages.
# Unlike time, an instruction count does not move with the machine's load, so it shows
# what a change to the per-packet path bought even on a shared machine; the kernel's
# share (the same syscalls for every server here) is not counted. Example:
#   bench/instructions.sh -- build/bench/servers/ref_epoll
#   bench/instructions.sh -- build/linux/samples/iocpsrv-echo --threads 1
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
FLOOD="$ROOT/build/linux/samples/iocpsrv-flood"
COUNT=20000
WORKLOAD=8x10x64
while [ $# -gt 0 ]; do
  case $1 in
    --flood) FLOOD=$2; shift 2 ;;
    --count) COUNT=$2; shift 2 ;;
    --workload) WORKLOAD=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "usage: $0 [--flood PATH] [--count N] [--workload CxSxD] -- SERVER [ARGS...]" >&2; exit 2 ;;
  esac
done
[ $# -gt 0 ] || { echo "$0: name the server after --" >&2; exit 2; }
command -v valgrind >/dev/null || { echo "$0: needs valgrind (apt-get install valgrind)" >&2; exit 1; }
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
valgrind --tool=callgrind --callgrind-out-file="$OUT/cg" "$@" --port 0 >"$OUT/server.out" 2>"$OUT/server.err" &
PID=$!
PORT=
for _ in $(seq 1 200); do
  PORT=$(sed -n 's/.*listening on .*:\([0-9][0-9]*\).*/\1/p' "$OUT/server.out" | head -1)
  [ -n "$PORT" ] && break
  sleep 0.05 # the server has no other way to say it is ready than its first line
done
[ -n "$PORT" ] || { kill "$PID"; cat "$OUT/server.err" >&2; echo "$0: the server never listened" >&2; exit 1; }
IFS=x read -r CONNS SIZE DEPTH <<<"$WORKLOAD"
"$FLOOD" --port "$PORT" --connections "$CONNS" --size "$SIZE" --depth "$DEPTH" --count "$COUNT" \
  --json --no-progress >"$OUT/flood.json"
kill -INT "$PID"
wait "$PID" || true
/usr/bin/python3 - "$OUT/flood.json" "$OUT/cg" <<'PY'
import json, re, subprocess, sys
flood = json.load(open(sys.argv[1]))
if not flood.get("ok"):
    sys.exit("flood failed: %s" % flood)
text = subprocess.run(["callgrind_annotate", sys.argv[2]], capture_output=True, text=True).stdout
total = int(re.search(r"([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", text).group(1).replace(",", ""))
msgs = flood["packets"]
print("%d messages, %d instructions in user space: %.0f per message" % (msgs, total, total / msgs))
PY
