#!/usr/bin/env bash
# run_bench.sh -- examples/Echo (iocpsrv .NET binding) vs bench/SocketEcho (plain .NET
# Socket async echo, same 4-byte framing), both driven by build/linux/samples/iocpsrv-flood.
# A measurement, not a test: it prints msgs/s and server CPU per message for each, and the
# ratio. Needs build/linux (cmake --preset linux && cmake --build --preset linux).
#
#   bash bindings/csharp/bench/run_bench.sh [--duration S] [--connections N] [--depth D] [--size B] [--rounds R]
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CS="$(cd "$HERE/.." && pwd)"
ROOT="$(cd "$CS/../.." && pwd)"
FLOOD="$ROOT/build/linux/samples/iocpsrv-flood"
DURATION=5 CONNECTIONS=8 DEPTH=16 SIZE=10 ROUNDS=1
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=$2; shift 2 ;;
    --connections) CONNECTIONS=$2; shift 2 ;;
    --depth) DEPTH=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    *) echo "run_bench.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -x "$FLOOD" ] || { echo "run_bench.sh: $FLOOD is missing: build the linux preset first" >&2; exit 1; }
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1

dotnet build -c Release -v q --nologo "$CS/examples/Echo/Echo.csproj" >/dev/null
dotnet build -c Release -v q --nologo "$CS/bench/SocketEcho/SocketEcho.csproj" >/dev/null
ECHO_DLL="$CS/examples/Echo/bin/Release/net10.0/Echo.dll"
SOCK_DLL="$CS/bench/SocketEcho/bin/Release/net10.0/SocketEcho.dll"
TICKS=$(getconf CLK_TCK)
TMP=$(mktemp -d)
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$TMP"
}
trap cleanup EXIT

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# run NAME CMD...: start the server, flood it, print "msgs/s cpu_ns_per_msg".
run() {
  local name=$1; shift
  "$@" >"$TMP/$name.out" 2>&1 &
  SERVER_PID=$!
  local port=""
  for _ in $(seq 200); do
    port=$(sed -n 's/^listening on [^ ]*:\([0-9]*\).*/\1/p' "$TMP/$name.out")
    [ -n "$port" ] && break
    sleep 0.05
  done
  [ -n "$port" ] || { echo "$name did not start:" >&2; cat "$TMP/$name.out" >&2; exit 1; }
  # Warm up (JIT tiering), then measure.
  "$FLOOD" --port "$port" --connections "$CONNECTIONS" --depth "$DEPTH" --size "$SIZE" --duration 1 --no-progress >/dev/null
  local t0; t0=$(cpu_ticks "$SERVER_PID")
  "$FLOOD" --port "$port" --connections "$CONNECTIONS" --depth "$DEPTH" --size "$SIZE" --duration "$DURATION" --json >"$TMP/$name.json"
  local t1; t1=$(cpu_ticks "$SERVER_PID")
  kill -TERM "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""
  python3 - "$TMP/$name.json" "$t0" "$t1" "$TICKS" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
assert j["ok"] and j["errors"] == 0, j
cpu_s = (int(sys.argv[3]) - int(sys.argv[2])) / int(sys.argv[4])
print(f'{j["msgs_per_s"]:.0f} {cpu_s * 1e9 / j["packets"]:.0f}')
PY
}

echo "flood: $CONNECTIONS connections x depth $DEPTH x $SIZE-byte payloads, ${DURATION}s per run, $ROUNDS round(s)"
printf '%-34s %14s %16s\n' server msgs/s "server CPU/msg"
for r in $(seq "$ROUNDS"); do
  read -r e_rate e_cpu < <(run echo dotnet "$ECHO_DLL" --port 0 --quiet ${ECHO_ARGS:-})
  printf '%-34s %14s %13s ns\n' "examples/Echo (iocpsrv binding)" "$e_rate" "$e_cpu"
  read -r s_rate s_cpu < <(run socket dotnet "$SOCK_DLL" --port 0)
  printf '%-34s %14s %13s ns\n' "bench/SocketEcho (plain Socket)" "$s_rate" "$s_cpu"
  python3 -c "import sys; e,s,ec,sc=map(float,sys.argv[1:]); print(f'ratio Echo/SocketEcho: {e/s:.2f}x msgs/s, {ec/sc:.2f}x CPU per message')" "$e_rate" "$s_rate" "$e_cpu" "$s_cpu"
  if [ -x "$ROOT/build/linux/samples/iocpsrv-echo" ]; then
    read -r c_rate c_cpu < <(run cecho "$ROOT/build/linux/samples/iocpsrv-echo" --port 0)
    printf '%-34s %14s %13s ns\n' "(reference: C iocpsrv-echo)" "$c_rate" "$c_cpu"
  fi
done
