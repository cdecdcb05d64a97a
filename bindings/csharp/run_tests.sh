#!/usr/bin/env bash
# run_tests.sh -- test the C# binding (bindings/csharp) on Linux. Called by scripts/test.sh
# (section csharp); runs standalone too. Assumes the native Linux build exists (build/linux,
# the caller builds it). The Windows side is run_windows_tests.sh (section csharp-windows).
#
#   1. dotnet test   Iocpsrv.sln (as `dotnet test` in this folder does): the xunit suite
#                    against build/linux/dll/libiocpsrv.so; fails on any failed test or when
#                    no test ran
#   2. pack          into a temporary folder, under a version of its own; the .nupkg must hold
#                    lib/net8.0 and lib/net10.0 Iocpsrv.Net.dll, runtimes/linux-x64/native/
#                    libiocpsrv.so and runtimes/win-x64/native/iocpsrv.dll (that one skipped,
#                    with a message, when build/windows/dll/iocpsrv.dll does not exist)
#   3. consumer      tests/PackageConsumer, an app that references the .nupkg, with no
#                    IOCPSRV_LIBRARY: net10.0 built (deps.json probing), published for
#                    linux-x64 framework-dependent, and net8.0 published for linux-x64
#                    self-contained (so it runs on the .NET 8 runtime); each serves one echo
#                    and checks the client role (ConnectAsync: an echo, a refusal)
#   4. echo          examples/Echo under iocpsrv-flood: 100 pipelining clients, every echo
#                    verified; per-packet handler, --batch (PacketsReceived) and --pull (batches)
#
# IOCPSRV_BUILD_DIR=DIR uses another CMake build tree of the Linux library instead of
# build/linux (DIR/dll/libiocpsrv.so, DIR/samples/iocpsrv-flood), e.g. one configured with
# cmake -S . -B DIR.
#
# Exits non-zero if any step failed. The last line is "csharp: N passed, N failed" (xunit
# tests plus this script's checks).
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
NAME=csharp
LINUX_BUILD="${IOCPSRV_BUILD_DIR:-$ROOT/build/linux}"
LINUX_LIB="$LINUX_BUILD/dll/libiocpsrv.so"
# MSBuild reads it as the property that Directory.Build.props otherwise sets to build/linux.
export IocpsrvLinuxNative="$LINUX_LIB"
WIN_DLL="${IOCPSRV_WINDOWS_DLL:-$ROOT/build/windows/dll/iocpsrv.dll}"   # override for another build
FLOOD="$LINUX_BUILD/samples/iocpsrv-flood"

TMP=$(mktemp -d)
ECHO_PID=""
# shellcheck source=ci-common.sh
. "$HERE/ci-common.sh"
cleanup() {
  if [ -n "$ECHO_PID" ]; then kill "$ECHO_PID" 2>/dev/null || true; wait "$ECHO_PID" 2>/dev/null || true; fi
  ci_cleanup
  rm -rf "$TMP"
}
trap cleanup EXIT

command -v dotnet >/dev/null 2>&1 || { echo "csharp: dotnet is not installed" >&2; echo "csharp: 0 passed, 1 failed"; exit 1; }
if [ ! -e "$LINUX_LIB" ]; then
  echo "csharp: $LINUX_LIB is missing: build it first (cmake --preset linux && cmake --build --preset linux)" >&2
  echo "csharp: 0 passed, 1 failed"
  exit 1
fi
echo "csharp: $(dotnet --version) SDK; native $LINUX_LIB"

# ---- 1. dotnet test ---------------------------------------------------------------------
step "dotnet test (Iocpsrv.sln)"
XFAILED=0
if ! timeout 600 dotnet restore "$HERE/Iocpsrv.sln" --configfile "$CONFIG" -v q; then
  fail "restore"
else
  timeout 1200 dotnet test "$HERE/Iocpsrv.sln" -c Release --no-restore \
    --blame-hang-timeout 5m \
    --logger "console;verbosity=normal" --logger "trx;LogFileName=results.trx" \
    --results-directory "$TMP/results"
  rc=$?
  TRX="$TMP/results/results.trx"
  total=0 passed=0 XFAILED=0
  if [ -f "$TRX" ]; then
    counters=$(grep -o '<Counters [^>]*>' "$TRX" | head -n1)
    total=$(sed -n 's/.* total="\([0-9]*\)".*/\1/p' <<<"$counters")
    passed=$(sed -n 's/.* passed="\([0-9]*\)".*/\1/p' <<<"$counters")
    XFAILED=$(sed -n 's/.* failed="\([0-9]*\)".*/\1/p' <<<"$counters")
  fi
  : "${total:=0}" "${passed:=0}" "${XFAILED:=0}"
  CHECKS=$((CHECKS + passed))
  echo "csharp: dotnet test exit $rc, $total tests, $passed passed, $XFAILED failed"
  if [ "$rc" -ne 0 ]; then fail "dotnet-test"
  elif [ "$total" -eq 0 ] || [ "$passed" -eq 0 ]; then fail "dotnet-test (no test ran)"
  fi
fi

# ---- 2. pack -----------------------------------------------------------------------------
step "dotnet pack"
PACK_ARGS=("-p:IocpsrvWindowsNative=$WIN_DLL")
HAVE_WIN=1
if [ ! -e "$WIN_DLL" ]; then
  echo "csharp: NOTE: $WIN_DLL does not exist (no Windows build): packing and checking WITHOUT runtimes/win-x64/native/iocpsrv.dll"
  PACK_ARGS+=(-p:IocpsrvLinuxOnlyPack=true)
  HAVE_WIN=0
fi
pack_binding "${PACK_ARGS[@]}"
if [ -z "$NUPKG" ]; then
  fail "pack"
else
  check_package "$HAVE_WIN"
  [ "$HAVE_WIN" = 1 ] || echo "csharp: SKIPPED the runtimes/win-x64/native/iocpsrv.dll check (no Windows build)"
fi

# ---- 3. consumer -------------------------------------------------------------------------
step "package consumer (no IOCPSRV_LIBRARY)"
if [ -z "$NUPKG" ]; then
  echo "csharp: skipped (no package)"
else
  # 3a. net10.0, built without a runtime identifier: the runtime finds
  #     runtimes/linux-x64/native/libiocpsrv.so through deps.json.
  C="$TMP/consumer-net10"
  if consumer_publish "$C" build -f net10.0; then
    if grep -q '"runtimes/linux-x64/native/libiocpsrv.so"' "$C/PackageConsumer.deps.json"; then
      ok "deps.json lists runtimes/linux-x64/native/libiocpsrv.so"
    else
      fail "consumer: deps.json does not list the native asset"
    fi
    if timeout 60 dotnet "$C/PackageConsumer.dll" --self-test; then ok "net10.0 consumer (build)"; else fail "consumer net10.0 build run"; fi
  else
    fail "consumer net10.0 build"
  fi
  # 3b. net10.0 published for linux-x64, framework-dependent: the native file sits next to
  #     the app.
  C="$TMP/consumer-linux-fdd"
  if consumer_publish "$C" -f net10.0 -r linux-x64 --self-contained false; then
    [ -e "$C/libiocpsrv.so" ] && [ -e "$C/Iocpsrv.Net.dll" ] && ok "linux-x64 framework-dependent publish layout" \
      || fail "linux-x64 framework-dependent publish: libiocpsrv.so or Iocpsrv.Net.dll missing"
    if timeout 60 "$C/PackageConsumer" --self-test; then ok "linux-x64 framework-dependent consumer"; else fail "consumer linux-x64 fdd run"; fi
  else
    fail "consumer linux-x64 framework-dependent publish"
  fi
  # 3c. net8.0 published for linux-x64, self-contained: the .NET 8 runtime and the package's
  #     net8.0 assembly, whatever runtime the machine has.
  C="$TMP/consumer-linux-net8"
  if consumer_publish "$C" -f net8.0 -r linux-x64 --self-contained true; then
    if out=$(timeout 60 "$C/PackageConsumer" --self-test); then
      echo "$out"
      if grep -q 'consumer: \.NET 8\.' <<<"$out" && grep -q 'Version=v8\.0' <<<"$out"; then
        ok "net8.0 self-contained consumer runs on .NET 8 with the net8.0 assembly"
      else
        fail "net8.0 consumer did not run on .NET 8 with lib/net8.0"
      fi
    else
      echo "$out"
      fail "consumer net8.0 self-contained run"
    fi
  else
    fail "consumer net8.0 linux-x64 self-contained publish"
  fi
fi

# ---- 4. examples/Echo under flood ----------------------------------------------------------
# Each way of taking packets: a handler call per packet, per receive (--batch), and pull-mode
# batches read in place with gathered replies (--pull).
step "examples/Echo with 100 pipelining clients"
if [ ! -x "$FLOOD" ]; then
  echo "csharp: SKIPPED: $FLOOD is missing"
elif ! timeout 600 dotnet build "$HERE/examples/Echo/Echo.csproj" -c Release -v q >"$TMP/echo-build.log" 2>&1; then
  cat "$TMP/echo-build.log" >&2
  fail "echo build"
else
  for mode in "" --batch --pull; do
    name="examples/Echo${mode:+ $mode}"
    dotnet "$HERE/examples/Echo/bin/Release/net10.0/Echo.dll" --port 0 --quiet $mode >"$TMP/echo.out" 2>&1 &
    ECHO_PID=$!
    port=""
    for _ in $(seq 300); do
      port=$(sed -n 's/^listening on [^ ]*:\([0-9]*\).*/\1/p' "$TMP/echo.out")
      [ -n "$port" ] && break
      kill -0 "$ECHO_PID" 2>/dev/null || break
      sleep 0.1
    done
    if [ -z "$port" ]; then
      cat "$TMP/echo.out" >&2
      fail "$name start"
      kill "$ECHO_PID" 2>/dev/null; wait "$ECHO_PID" 2>/dev/null; ECHO_PID=""
      continue
    fi
    head -n1 "$TMP/echo.out"
    if timeout 120 "$FLOOD" --port "$port" --connections 100 --depth 8 --count 500 --size 64 --threads 2 --no-progress; then
      ok "flood against $name"
    else
      fail "flood against $name"
    fi
    kill -TERM "$ECHO_PID"
    wait "$ECHO_PID"; erc=$?
    ECHO_PID=""
    tail -n1 "$TMP/echo.out"
    if [ "$erc" -eq 0 ]; then ok "$name stopped cleanly on SIGTERM"; else fail "$name exit status $erc after SIGTERM"; fi
  done
fi

summary "$XFAILED"
