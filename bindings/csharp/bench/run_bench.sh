#!/usr/bin/env bash
# run_bench.sh -- examples/Echo (iocpsrv .NET binding) in each way of taking packets, against
# bench/SocketEcho (plain .NET Socket async echo, same 4-byte framing) and the C iocpsrv-echo,
# all driven by build/linux/samples/iocpsrv-flood. A measurement, not a test: it prints msgs/s
# and server CPU per message for each run, then the medians over the rounds and the ratios
# (callback / pull, batch / per-packet, binding / plain sockets). Needs build/linux
# (cmake --preset linux && cmake --build --preset linux).
#
#   bash bindings/csharp/bench/run_bench.sh [--duration S] [--connections N] [--depth D] [--size B]
#        [--rounds R] [--servers echo,batch,pull,pullev,socket,c,cpull]
#
# Servers: echo = examples/Echo with a PacketReceived handler, batch = --batch
# (PacketsReceived), pull = --pull (ReadBatchesAsync, replies gathered with EventBatch.Send),
# pullev = --pull-events (ReadEventsAsync, a TrySend per packet), socket = bench/SocketEcho,
# c = the C iocpsrv-echo, cpull = bench/pull_echo.c (a C host polling as the pull reader does:
# the most pull mode gives any binding on this engine).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CS="$(cd "$HERE/.." && pwd)"
ROOT="$(cd "$CS/../.." && pwd)"
FLOOD="$ROOT/build/linux/samples/iocpsrv-flood"
DURATION=5 CONNECTIONS=8 DEPTH=16 SIZE=10 ROUNDS=1 SERVERS=echo,batch,pull,pullev,socket,c,cpull
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=$2; shift 2 ;;
    --connections) CONNECTIONS=$2; shift 2 ;;
    --depth) DEPTH=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --servers) SERVERS=$2; shift 2 ;;
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

# The C pull reference, if a compiler is at hand.
if command -v cc >/dev/null 2>&1; then
  cc -O2 -I"$ROOT/dll/include" "$HERE/pull_echo.c" -L"$ROOT/build/linux/dll" -liocpsrv \
    -Wl,-rpath,"$ROOT/build/linux/dll" -o "$TMP/pull_echo" || echo "run_bench.sh: pull_echo.c did not build: cpull left out" >&2
fi

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# run NAME CMD...: start the server, flood it, print "msgs/s cpu_ns_per_msg".
run() {
  local name=$1; shift
  : >"$TMP/$name.out" # before the server starts: the wait below reads it at once
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

# The servers, by key: what runs and how it is labelled.
declare -A LABEL=(
  [echo]="examples/Echo (PacketReceived)"
  [batch]="examples/Echo --batch (PacketsReceived)"
  [pull]="examples/Echo --pull (ReadBatchesAsync)"
  [pullev]="examples/Echo --pull-events (ReadEventsAsync)"
  [socket]="bench/SocketEcho (plain Socket)"
  [c]="(reference: C iocpsrv-echo)"
  [cpull]="(reference: C pull_echo.c)"
)
server_cmd() {
  case "$1" in
    echo) echo dotnet "$ECHO_DLL" --port 0 --quiet ;;
    batch) echo dotnet "$ECHO_DLL" --port 0 --quiet --batch ;;
    pull) echo dotnet "$ECHO_DLL" --port 0 --quiet --pull ;;
    pullev) echo dotnet "$ECHO_DLL" --port 0 --quiet --pull-events ;;
    socket) echo dotnet "$SOCK_DLL" --port 0 ;;
    c) echo "$ROOT/build/linux/samples/iocpsrv-echo" --port 0 ;;
    cpull) echo "$TMP/pull_echo" ;;
  esac
}

echo "flood: $CONNECTIONS connections x depth $DEPTH x $SIZE-byte payloads, ${DURATION}s per run, $ROUNDS round(s)"
printf '%-42s %14s %16s\n' server msgs/s "server CPU/msg"
IFS=, read -r -a KEYS <<<"$SERVERS"
for r in $(seq "$ROUNDS"); do
  for key in "${KEYS[@]}"; do
    [ -n "${LABEL[$key]:-}" ] || { echo "run_bench.sh: unknown server $key" >&2; exit 2; }
    [ "$key" != c ] || [ -x "$ROOT/build/linux/samples/iocpsrv-echo" ] || continue
    [ "$key" != cpull ] || [ -x "$TMP/pull_echo" ] || continue
    # shellcheck disable=SC2046
    read -r rate cpu < <(run "$key" $(server_cmd "$key"))
    printf '%-42s %14s %13s ns\n' "${LABEL[$key]}" "$rate" "$cpu"
    echo "$key $rate $cpu" >>"$TMP/results"
  done
done

# Medians over the rounds, and the ratios that matter.
python3 - "$TMP/results" "$ROUNDS" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    k, rate, cpu = line.split()
    rows.setdefault(k, []).append((float(rate), float(cpu)))
med = {k: (statistics.median(r for r, _ in v), statistics.median(c for _, c in v)) for k, v in rows.items()}
print(f"median of {sys.argv[2]} round(s):")
for k, (rate, cpu) in med.items():
    print(f"  {k:8} {rate:12.0f} msgs/s {cpu:8.0f} ns/msg")
def ratio(a, b):
    if a in med and b in med:
        print(f"  {a} / {b}: {med[a][0] / med[b][0]:.2f}x the msgs/s, {med[a][1] / med[b][1]:.2f}x the CPU per message")
ratio("echo", "pull")    # how far pull mode is behind callbacks
ratio("pull", "cpull")   # the binding's pull mode against the C host doing the same
ratio("batch", "echo")   # what PacketsReceived saves
ratio("echo", "socket")  # the binding against plain .NET sockets
PY
