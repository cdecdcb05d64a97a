#!/usr/bin/env bash
# run_tests.sh -- test the C# binding (bindings/csharp). Called by scripts/test.sh; runs
# standalone too. Assumes the native Linux build exists (build/linux, the caller builds it).
#
#   1. dotnet test   the xunit suite against build/linux/dll/libiocpsrv.so, restored offline
#                    with ./nuget.config; fails on any failed test or when no test ran
#   2. pack          dotnet pack into a temporary folder; the .nupkg must hold
#                    runtimes/linux-x64/native/libiocpsrv.so and runtimes/win-x64/native/iocpsrv.dll
#                    (the Windows check is skipped, with a message, when
#                    build/windows/dll/iocpsrv.dll does not exist)
#   3. consumer      a throw-away app that references the .nupkg: the native library is found by
#                    the runtime's default probing, and serves one echo
#   4. echo          examples/Echo under iocpsrv-flood: 100 pipelining clients, every echo verified
#
# Exits non-zero if any step failed. The last line is "csharp: N passed, N failed".
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
LINUX_LIB="$ROOT/build/linux/dll/libiocpsrv.so"
WIN_DLL="${IOCPSRV_WINDOWS_DLL:-$ROOT/build/windows/dll/iocpsrv.dll}"   # override for another build
FLOOD="$ROOT/build/linux/samples/iocpsrv-flood"
CONFIG="$HERE/nuget.config"

export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1
export DOTNET_CLI_WORKLOAD_UPDATE_NOTIFY_DISABLE=1 DOTNET_GENERATE_ASPNET_CERTIFICATE=false
export MSBUILDDISABLENODEREUSE=1 DOTNET_CLI_USE_MSBUILD_SERVER=0
unset IOCPSRV_LIBRARY

FAILED_STEPS=()
PASSED=0 FAILED=0
TMP=$(mktemp -d)
ECHO_PID=""
cleanup() {
  if [ -n "$ECHO_PID" ]; then kill "$ECHO_PID" 2>/dev/null || true; wait "$ECHO_PID" 2>/dev/null || true; fi
  rm -rf "$TMP"
}
trap cleanup EXIT

step() { echo; echo "== csharp: $* =="; }
fail() { echo "csharp: FAILED: $*" >&2; FAILED_STEPS+=("$1"); }

# zip_list FILE: the names inside a zip (python3 if present, else unzip).
zip_list() {
  if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import sys, zipfile; print("\n".join(zipfile.ZipFile(sys.argv[1]).namelist()))' "$1"
  else
    unzip -Z1 "$1"
  fi
}

command -v dotnet >/dev/null 2>&1 || { echo "csharp: dotnet is not installed" >&2; echo "csharp: 0 passed, 1 failed"; exit 1; }
if [ ! -e "$LINUX_LIB" ]; then
  echo "csharp: $LINUX_LIB is missing: build it first (cmake --preset linux && cmake --build --preset linux)" >&2
  echo "csharp: 0 passed, 1 failed"
  exit 1
fi
echo "csharp: $(dotnet --version) SDK; native $LINUX_LIB"

# ---- 1. dotnet test ---------------------------------------------------------------------
step "dotnet test"
if ! timeout 600 dotnet restore "$HERE/tests/Iocpsrv.Tests/Iocpsrv.Tests.csproj" --configfile "$CONFIG" -v q; then
  fail "restore"
else
  timeout 1200 dotnet test "$HERE/tests/Iocpsrv.Tests/Iocpsrv.Tests.csproj" -c Release --no-restore \
    --blame-hang-timeout 5m \
    --logger "console;verbosity=normal" --logger "trx;LogFileName=results.trx" \
    --results-directory "$TMP/results"
  rc=$?
  TRX="$TMP/results/results.trx"
  if [ -f "$TRX" ]; then
    counters=$(grep -o '<Counters [^>]*>' "$TRX" | head -n1)
    total=$(sed -n 's/.* total="\([0-9]*\)".*/\1/p' <<<"$counters")
    PASSED=$(sed -n 's/.* passed="\([0-9]*\)".*/\1/p' <<<"$counters")
    FAILED=$(sed -n 's/.* failed="\([0-9]*\)".*/\1/p' <<<"$counters")
  else
    total=0 PASSED=0 FAILED=0
  fi
  : "${total:=0}" "${PASSED:=0}" "${FAILED:=0}"
  echo "csharp: dotnet test exit $rc, $total tests, $PASSED passed, $FAILED failed"
  if [ "$rc" -ne 0 ]; then fail "dotnet-test"
  elif [ "$total" -eq 0 ] || [ "$PASSED" -eq 0 ]; then fail "dotnet-test (no test ran)"
  fi
fi

# ---- 2. pack -----------------------------------------------------------------------------
step "dotnet pack"
PACK_ARGS=("-p:IocpsrvWindowsNative=$WIN_DLL")
if [ ! -e "$WIN_DLL" ]; then
  echo "csharp: NOTE: $WIN_DLL does not exist (no Windows build): packing and checking WITHOUT runtimes/win-x64/native/iocpsrv.dll"
  PACK_ARGS+=(-p:IocpsrvLinuxOnlyPack=true)
fi
NUPKG=""
if timeout 600 dotnet pack "$HERE/src/Iocpsrv/Iocpsrv.csproj" -c Release -o "$TMP/pkg" -v q "${PACK_ARGS[@]}"; then
  NUPKG=$(ls "$TMP"/pkg/Iocpsrv.*.nupkg 2>/dev/null | head -n1)
fi
if [ -z "$NUPKG" ]; then
  fail "pack"
else
  contents=$(zip_list "$NUPKG")
  echo "$contents" | sed 's/^/  /'
  want=(runtimes/linux-x64/native/libiocpsrv.so lib/net10.0/Iocpsrv.dll)
  [ -e "$WIN_DLL" ] && want+=(runtimes/win-x64/native/iocpsrv.dll)
  for f in "${want[@]}"; do
    if grep -qx "$f" <<<"$contents"; then echo "csharp: package has $f"; else fail "pack: $(basename "$NUPKG") lacks $f"; fi
  done
  [ -e "$WIN_DLL" ] || echo "csharp: SKIPPED the runtimes/win-x64/native/iocpsrv.dll check (no Windows build)"
fi

# ---- 3. consumer -------------------------------------------------------------------------
step "package consumer (default probing)"
if [ -n "$NUPKG" ]; then
  C="$TMP/consumer"
  mkdir -p "$C"
  cat >"$C/nuget.config" <<XML
<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <packageSources>
    <clear />
    <add key="built" value="$TMP/pkg" />
    <add key="local-packages" value="/opt/nuget/packages" />
  </packageSources>
</configuration>
XML
  cat >"$C/Consumer.csproj" <<'XML'
<Project Sdk="Microsoft.NET.Sdk">
  <PropertyGroup>
    <OutputType>Exe</OutputType>
    <TargetFramework>net10.0</TargetFramework>
    <ImplicitUsings>enable</ImplicitUsings>
    <Nullable>enable</Nullable>
  </PropertyGroup>
  <ItemGroup>
    <PackageReference Include="Iocpsrv" Version="1.0.0" />
  </ItemGroup>
</Project>
XML
  cat >"$C/Program.cs" <<'CS'
using System.Net.Sockets;
using System.Runtime.InteropServices;
using Iocpsrv;

// The consumer's own assembly has no resolver: this is the runtime's default probing,
// through the runtimes/<rid>/native asset that deps.json lists.
if (!NativeLibrary.TryLoad("iocpsrv", typeof(Program).Assembly, null, out _))
{
    Console.Error.WriteLine("default probing did not find the native library");
    return 1;
}
using var server = new IocpServer();
server.PacketReceived += (s, id, p) => s.Send(id, p);
server.Start();
using var c = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
c.Connect("127.0.0.1", server.Port);
c.Send(new byte[] { 3, 0, 0, 0, 1, 2, 3 });
var buf = new byte[7];
int got = 0;
c.ReceiveTimeout = 10000;
while (got < 7) got += c.Receive(buf, got, 7 - got, SocketFlags.None);
Console.WriteLine($"consumer: {IocpServer.LibraryVersionString}, echo {(buf.AsSpan(4).SequenceEqual(new byte[] { 1, 2, 3 }) ? "ok" : "WRONG")}");
return buf.AsSpan(4).SequenceEqual(new byte[] { 1, 2, 3 }) ? 0 : 1;
CS
  # A private package cache: never reuse a stale copy of the package just built.
  if NUGET_PACKAGES="$TMP/nuget-cache" timeout 600 dotnet build "$C/Consumer.csproj" -c Release -v q -o "$C/out" >"$TMP/consumer.log" 2>&1; then
    if grep -q '"runtimes/linux-x64/native/libiocpsrv.so"' "$C/out/Consumer.deps.json"; then
      echo "csharp: deps.json lists runtimes/linux-x64/native/libiocpsrv.so"
    else
      fail "consumer: deps.json does not list the native asset"
    fi
    timeout 60 dotnet "$C/out/Consumer.dll" || fail "consumer run"
  else
    cat "$TMP/consumer.log" >&2
    fail "consumer build"
  fi
else
  echo "csharp: skipped (no package)"
fi

# ---- 4. examples/Echo under flood ----------------------------------------------------------
step "examples/Echo with 100 pipelining clients"
if [ ! -x "$FLOOD" ]; then
  echo "csharp: SKIPPED: $FLOOD is missing"
elif ! timeout 600 dotnet build "$HERE/examples/Echo/Echo.csproj" -c Release -v q >"$TMP/echo-build.log" 2>&1; then
  cat "$TMP/echo-build.log" >&2
  fail "echo build"
else
  dotnet "$HERE/examples/Echo/bin/Release/net10.0/Echo.dll" --port 0 --quiet >"$TMP/echo.out" 2>&1 &
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
    fail "echo start"
  else
    head -n1 "$TMP/echo.out"
    timeout 120 "$FLOOD" --port "$port" --connections 100 --depth 8 --count 500 --size 64 --threads 2 --no-progress \
      || fail "flood against examples/Echo"
    kill -TERM "$ECHO_PID"
    wait "$ECHO_PID"; erc=$?
    ECHO_PID=""
    tail -n1 "$TMP/echo.out"
    [ "$erc" -eq 0 ] || fail "echo exit status $erc after SIGTERM"
  fi
fi

echo
if [ "${#FAILED_STEPS[@]}" -gt 0 ]; then
  echo "csharp: failed steps: ${FAILED_STEPS[*]}"
  [ "$FAILED" -eq 0 ] && FAILED=1
  echo "csharp: $PASSED passed, $FAILED failed"
  exit 1
fi
echo "csharp: $PASSED passed, $FAILED failed"
