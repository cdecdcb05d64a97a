#!/usr/bin/env bash
# demo.sh -- build iocpsrv, start iocpsrv-echo on a free port, flood it with
# iocpsrv-flood (which verifies every echoed byte), then stop the server with SIGINT and
# check that it exited 0 and printed its stats line.
#
#   bash scripts/demo.sh              configure + build (linux preset), then the demo
#   bash scripts/demo.sh --no-build   use what build/linux (or $IOCPSRV_BUILD_DIR) holds
#
# Exits non-zero on any failure. Nothing is left running, even on failure or Ctrl+C.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
BUILD_DIR="${IOCPSRV_BUILD_DIR:-$ROOT/build/linux}" # override only with --no-build
ECHO_BIN="$BUILD_DIR/samples/iocpsrv-echo"
FLOOD_BIN="$BUILD_DIR/samples/iocpsrv-flood"

build=1
for arg in "$@"; do
  case "$arg" in
    --no-build) build=0 ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "demo.sh: unknown argument '$arg'" >&2; exit 2 ;;
  esac
done

say() { printf '\n== %s\n' "$*"; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/iocpsrv-demo.XXXXXX")
server_pid=""

cleanup() {
  local rc=$?
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() {
  echo "demo.sh: FAILED: $*" >&2
  if [ -s "$tmp/echo.err" ]; then
    echo "--- iocpsrv-echo stderr (last 20 lines) ---" >&2
    tail -n 20 "$tmp/echo.err" >&2
  fi
  exit 1
}

if [ "$build" = 1 ]; then
  say "build (cmake --preset linux)"
  cmake --preset linux >"$tmp/configure.log" 2>&1 || { cat "$tmp/configure.log" >&2; fail "cmake configure"; }
  cmake --build --preset linux -j"$(nproc 2>/dev/null || echo 2)" || fail "cmake build"
fi
[ -x "$ECHO_BIN" ] || fail "$ECHO_BIN is missing (build first)"
[ -x "$FLOOD_BIN" ] || fail "$FLOOD_BIN is missing (build first)"

say "start iocpsrv-echo --port 0"
"$ECHO_BIN" --port 0 >"$tmp/echo.out" 2>"$tmp/echo.err" &
server_pid=$!
port=""
for _ in $(seq 100); do
  line=$(grep -m1 '^listening on ' "$tmp/echo.out" 2>/dev/null || true)
  if [ -n "$line" ]; then port=${line##*:}; break; fi
  kill -0 "$server_pid" 2>/dev/null || fail "iocpsrv-echo exited before listening"
  sleep 0.1
done
[ -n "$port" ] || fail "iocpsrv-echo printed no 'listening on' line within 10 s"
echo "$line (pid $server_pid)"

flood() {
  say "iocpsrv-flood$(printf ' %q' "$@")"
  timeout 300 "$FLOOD_BIN" --port "$port" "$@" || fail "iocpsrv-flood $* (exit $?)"
}

flood --connections 100 --count 1000 --depth 16 --threads 2
flood --connections 8 --count 2000 --depth 8 --size 4096
flood --count 99999 --message "Test Item "

say "stop iocpsrv-echo with SIGINT"
kill -INT "$server_pid"
for _ in $(seq 150); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$server_pid" 2>/dev/null && fail "iocpsrv-echo still running 15 s after SIGINT"
set +e
wait "$server_pid"
rc=$?
set -e
server_pid=""
[ "$rc" -eq 0 ] || fail "iocpsrv-echo exited with status $rc"
stats=$(grep '^stats: ' "$tmp/echo.out" || true)
[ -n "$stats" ] || fail "iocpsrv-echo printed no 'stats:' line"
echo "$stats"
say "demo passed"
