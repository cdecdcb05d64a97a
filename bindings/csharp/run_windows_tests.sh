#!/usr/bin/env bash
# run_windows_tests.sh -- .NET on the real Windows DLL (iocpsrv.dll), under Wine. Called by
# scripts/test.sh (section csharp-windows), which first installs MinGW-w64 and wine64 and
# builds what this needs; runs standalone too, given:
#   build/windows/dll/iocpsrv.dll        cmake --preset windows && cmake --build --preset windows --target iocpsrv
#   build/linux/dll/libiocpsrv.so        the package holds both native libraries
#   build/linux/samples/iocpsrv-flood    drives the Windows servers from Linux
#
#   1. pack       the package, both native libraries, under a version of its own
#   2. publish    tests/PackageConsumer (an app on the .nupkg) for win-x64, framework-dependent
#                 (checked for layout: the app, Iocpsrv.Net.dll and the native iocpsrv.dll side
#                 by side; NETSDK1152 was the old assembly/native name clash) and self-contained;
#                 examples/Echo for win-x64, self-contained
#   3. consumer   the self-contained consumer under Wine, with no IOCPSRV_LIBRARY: the runtime's
#                 default probing finds iocpsrv.dll. First its client-role check on engines of
#                 its own (StartWithoutListener, ConnectAsync to a listening one, an echo, a
#                 closed port refused: "consumer: client role ok"); then iocpsrv-flood from
#                 Linux: 50 connections, depth 8, every echo verified; then SIGINT: a graceful
#                 StopAsync, its "stopped:" line with the totals, exit status 0
#   4. echo       examples/Echo under Wine, the same with 100 connections
#   5. xunit      for information, never a gate (IOCPSRV_WINE_XUNIT=0 skips it): the xunit
#                 suite published win-x64 self-contained as one .exe that runs its own tests
#                 (tests/Iocpsrv.Tests/WineRunner.cs, -p:IocpsrvWineRunner=true) and run under
#                 Wine; its counts are printed, its failures are not counted
#
# Wine (see /work/shared/DESIGN.md, ".NET on Windows"): a private prefix
# build/wineprefix-dotnet (IOCPSRV_DOTNET_WINEPREFIX overrides), WINEDEBUG=-all,
# WINEDLLOVERRIDES="mshtml=" (NOT mscoree: .NET apps need it), DOTNET_EnableWriteXorExecute=0
# (avoids an internal CLR error under Wine 8). The apps are stopped with SIGINT (SIGTERM kills
# a Wine process without a clean stop), and wineserver -k ends the prefix's processes at the
# end. The xunit suite under Wine is no gate: Wine 8's sockets give .NET clients false
# end-of-stream reads even without iocpsrv, so the gate is flood (a Linux client) against
# .NET servers.
#
# Exits non-zero if any step failed. The last line is "csharp-windows: N passed, N failed".
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
NAME=csharp-windows
LINUX_LIB="$ROOT/build/linux/dll/libiocpsrv.so"
WIN_DLL="${IOCPSRV_WINDOWS_DLL:-$ROOT/build/windows/dll/iocpsrv.dll}"
FLOOD="$ROOT/build/linux/samples/iocpsrv-flood"

export WINEPREFIX="${IOCPSRV_DOTNET_WINEPREFIX:-$ROOT/build/wineprefix-dotnet}"
export WINEDEBUG=-all WINEDLLOVERRIDES="mshtml=" DOTNET_EnableWriteXorExecute=0
WINE=$(command -v wine64 || { [ -x /usr/lib/wine/wine64 ] && echo /usr/lib/wine/wine64; } || command -v wine || true)
WINESERVER=$(command -v wineserver || { [ -x /usr/lib/wine/wineserver64 ] && echo /usr/lib/wine/wineserver64; } || true)

TMP=$(mktemp -d)
APP_PID=""
# shellcheck source=ci-common.sh
. "$HERE/ci-common.sh"
cleanup() {
  if [ -n "$APP_PID" ]; then kill -KILL "$APP_PID" 2>/dev/null || true; wait "$APP_PID" 2>/dev/null || true; fi
  [ -n "$WINESERVER" ] && "$WINESERVER" -k 2>/dev/null
  ci_cleanup
  rm -rf "$TMP"
}
trap cleanup EXIT

missing=()
command -v dotnet >/dev/null 2>&1 || missing+=("dotnet (the .NET SDK)")
[ -n "$WINE" ] || missing+=("wine64 (apt-get install wine64)")
[ -e "$WIN_DLL" ] || missing+=("$WIN_DLL (cmake --preset windows && cmake --build --preset windows --target iocpsrv)")
[ -e "$LINUX_LIB" ] || missing+=("$LINUX_LIB (cmake --preset linux && cmake --build --preset linux)")
[ -x "$FLOOD" ] || missing+=("$FLOOD (cmake --build --preset linux --target iocpsrv-flood)")
if [ "${#missing[@]}" -gt 0 ]; then
  printf 'csharp-windows: missing: %s\n' "${missing[@]}" >&2
  echo "csharp-windows: 0 passed, 1 failed"
  exit 1
fi
echo "csharp-windows: $(dotnet --version) SDK; $("$WINE" --version 2>/dev/null); native $WIN_DLL; prefix $WINEPREFIX"

# An app started in the background of a non-interactive shell has SIGINT ignored: give it
# back its default, so that the SIGINT below reaches Wine (which turns it into Ctrl+C).
SIGINT_DEFAULT=()
env --default-signal=INT true 2>/dev/null && SIGINT_DEFAULT=(env --default-signal=INT)

# wine_serve LABEL EXE CONNECTIONS COUNT [ARG...]: runs EXE under Wine until it prints
# "listening on HOST:PORT", floods it from Linux (CONNECTIONS x COUNT packets of 64 bytes,
# depth 8, every echo verified), stops it with SIGINT and checks its exit status and its
# "stopped: N connections, N packets in, ..." line.
wine_serve() {
  local label=$1 exe=$2 conns=$3 count=$4 out port="" rc
  shift 4
  out="$TMP/$label.out"
  "${SIGINT_DEFAULT[@]}" "$WINE" "$exe" "$@" >"$out" 2>&1 &
  APP_PID=$!
  for _ in $(seq 1200); do   # up to 120 s: the first start also fills the prefix
    port=$(sed -n 's/^listening on [^ ]*:\([0-9]*\).*/\1/p' "$out")
    [ -n "$port" ] && break
    kill -0 "$APP_PID" 2>/dev/null || break
    sleep 0.1
  done
  cat "$out"
  if [ -z "$port" ]; then
    fail "$label: did not start under Wine"
    kill -KILL "$APP_PID" 2>/dev/null; wait "$APP_PID" 2>/dev/null; APP_PID=""
    return
  fi
  ok "$label started under Wine with no IOCPSRV_LIBRARY (port $port)"
  if timeout 300 "$FLOOD" --port "$port" --connections "$conns" --depth 8 --count "$count" --size 64 \
       --threads 2 --timeout 30 --no-progress | tee "$TMP/$label.flood"; then
    ok "$label: iocpsrv-flood, $conns connections x $count packets, every echo verified"
  else
    fail "$label: iocpsrv-flood"
  fi
  kill -INT "$APP_PID" 2>/dev/null
  for _ in $(seq 300); do kill -0 "$APP_PID" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$APP_PID" 2>/dev/null; then
    fail "$label: still running 30 s after SIGINT"
    kill -KILL "$APP_PID" 2>/dev/null
  fi
  wait "$APP_PID"; rc=$?
  APP_PID=""
  local stopped
  stopped=$(grep '^stopped: ' "$out" | tail -n1)
  echo "$label: exit status $rc; ${stopped:-no stopped line}"
  if [ "$rc" -eq 0 ] && [ -n "$stopped" ]; then ok "$label: clean stop on SIGINT"; else fail "$label: no clean stop on SIGINT"; fi
  if grep -q "^stopped: $conns connections, $((conns * count)) packets in, $((conns * count)) out" <<<"$stopped"; then
    ok "$label: its totals match the flood's"
  else
    fail "$label: totals do not match $conns connections and $((conns * count)) packets"
  fi
}

# ---- 1. pack -----------------------------------------------------------------------------
step "dotnet pack (both native libraries)"
pack_binding "-p:IocpsrvWindowsNative=$WIN_DLL" "-p:IocpsrvLinuxNative=$LINUX_LIB"
if [ -z "$NUPKG" ]; then
  fail "pack"
  summary
fi
check_package 1

# ---- 2. publish --------------------------------------------------------------------------
step "dotnet publish -r win-x64"
FDD="$TMP/consumer-win-fdd" SC="$TMP/consumer-win-sc" ECHO="$TMP/echo-win-sc"
if consumer_publish "$FDD" -f net10.0 -r win-x64 --self-contained false; then
  ok "win-x64 framework-dependent publish of the consumer"
  for f in PackageConsumer.exe PackageConsumer.dll Iocpsrv.Net.dll iocpsrv.dll; do
    [ -e "$FDD/$f" ] || fail "win-x64 framework-dependent publish lacks $f"
  done
  cmp -s "$FDD/iocpsrv.dll" "$WIN_DLL" && ok "win-x64 framework-dependent: iocpsrv.dll is the native DLL, next to Iocpsrv.Net.dll" \
    || fail "win-x64 framework-dependent: iocpsrv.dll is not the native DLL"
else
  fail "win-x64 framework-dependent publish"
fi
if consumer_publish "$SC" -f net10.0 -r win-x64 --self-contained true; then
  ok "win-x64 self-contained publish of the consumer"
  cmp -s "$SC/iocpsrv.dll" "$WIN_DLL" || fail "win-x64 self-contained: iocpsrv.dll is not the native DLL"
else
  fail "win-x64 self-contained publish"
fi
if timeout 600 dotnet publish "$HERE/examples/Echo/Echo.csproj" -c Release -r win-x64 --self-contained true \
     -o "$ECHO" -v q >"$TMP/echo-publish.log" 2>&1; then
  ok "win-x64 self-contained publish of examples/Echo"
else
  cat "$TMP/echo-publish.log" >&2
  fail "examples/Echo win-x64 publish"
fi

# ---- Wine prefix ---------------------------------------------------------------------------
step "Wine prefix $WINEPREFIX"
if [ ! -f "$WINEPREFIX/system.reg" ]; then
  mkdir -p "$WINEPREFIX"
  timeout 300 "$WINE" wineboot --init >"$TMP/wineboot.log" 2>&1 || { cat "$TMP/wineboot.log" >&2; fail "wineboot"; }
  [ -n "$WINESERVER" ] && timeout 120 "$WINESERVER" -w
fi
[ -f "$WINEPREFIX/system.reg" ] && echo "csharp-windows: prefix ready"

# ---- 3. the package consumer under Wine -------------------------------------------------------
step "package consumer (win-x64, self-contained) under Wine"
if [ -e "$SC/PackageConsumer.exe" ]; then
  wine_serve consumer "$SC/PackageConsumer.exe" 50 200
  head -n1 "$TMP/consumer.out" | grep -q 'win-x64, binding Iocpsrv.Net.dll' \
    && ok "consumer ran as win-x64 with Iocpsrv.Net.dll" || fail "consumer: not the win-x64 runtime or not Iocpsrv.Net.dll"
  grep -q '^consumer: client role ok' "$TMP/consumer.out" \
    && ok "consumer: client role on iocpsrv.dll (StartWithoutListener, ConnectAsync echo, closed port ConnectRefused)" \
    || fail "consumer: client role on iocpsrv.dll"
fi

# ---- 4. examples/Echo under Wine -------------------------------------------------------------
step "examples/Echo (win-x64, self-contained) under Wine"
if [ -e "$ECHO/Echo.exe" ]; then
  wine_serve echo "$ECHO/Echo.exe" 100 500 --port 0 --quiet
fi

# ---- 5. the xunit suite under Wine, for information --------------------------------------------
step "xunit suite (win-x64) under Wine: for information, not a gate"
if [ "${IOCPSRV_WINE_XUNIT:-1}" = 0 ]; then
  echo "csharp-windows: skipped (IOCPSRV_WINE_XUNIT=0)"
elif ! timeout 600 dotnet publish "$HERE/tests/Iocpsrv.Tests/Iocpsrv.Tests.csproj" -c Release -r win-x64 \
       --self-contained true -p:IocpsrvWineRunner=true -o "$TMP/xunit-win" -v q >"$TMP/xunit-publish.log" 2>&1; then
  cat "$TMP/xunit-publish.log"
  echo "csharp-windows: NOTE: could not publish the xunit suite for win-x64 (not a gate)"
else
  timeout 300 "$WINE" "$TMP/xunit-win/Iocpsrv.Tests.exe" >"$TMP/xunit-wine.log" 2>&1
  xrc=$?
  grep -E '^\[FAIL\]' "$TMP/xunit-wine.log"
  xline=$(grep '^wine-xunit: ' "$TMP/xunit-wine.log" | tail -n1)
  echo "csharp-windows: xunit under Wine (not a gate): exit status $xrc; ${xline:-no result line (see below)}"
  [ -n "$xline" ] || tail -n 20 "$TMP/xunit-wine.log"
fi

summary
