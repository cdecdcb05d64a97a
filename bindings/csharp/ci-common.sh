# ci-common.sh -- shared by run_tests.sh and run_windows_tests.sh; sourced, never run.
# The caller sets NAME (message prefix), HERE (bindings/csharp), ROOT (the repository) and
# TMP (a temporary folder it removes), and calls ci_cleanup from its EXIT trap.

export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1
export DOTNET_CLI_WORKLOAD_UPDATE_NOTIFY_DISABLE=1 DOTNET_GENERATE_ASPNET_CERTIFICATE=false
export MSBUILDDISABLENODEREUSE=1 DOTNET_CLI_USE_MSBUILD_SERVER=0
# Every check here is about finding the native library WITHOUT this variable.
unset IOCPSRV_LIBRARY

CONFIG="$HERE/nuget.config"
CONSUMER="$HERE/tests/PackageConsumer/PackageConsumer.csproj"
FAILED_STEPS=()
CHECKS=0

step() { echo; echo "== $NAME: $* =="; }
fail() { echo "$NAME: FAILED: $*" >&2; FAILED_STEPS+=("$1"); }
ok() { echo "$NAME: ok: $*"; CHECKS=$((CHECKS + 1)); }

# zip_list FILE: the names inside a zip (python3 if present, else unzip).
zip_list() {
  if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import sys, zipfile; print("\n".join(zipfile.ZipFile(sys.argv[1]).namelist()))' "$1"
  else
    unzip -Z1 "$1"
  fi
}

# pack_binding [MSBUILD-ARG...]: packs src/Iocpsrv into $TMP/pkg under a version of its own
# (1.1.0-ci.TIME.PID), so that no restore can pick up a stale copy of the package from NuGet's
# global folder; that version's folder there is removed again by ci_cleanup. Sets PKG_DIR,
# PKG_VERSION and NUPKG (empty on failure).
PKG_DIR="" PKG_VERSION="" NUPKG="" GLOBAL_PACKAGES=""
pack_binding() {
  local base
  base=$(sed -n 's:.*<Version>\(.*\)</Version>.*:\1:p' "$HERE/src/Iocpsrv/Iocpsrv.csproj" | head -n1)
  PKG_VERSION="${base:-1.1.0}-ci.$(date +%s).$$"
  PKG_DIR="$TMP/pkg"
  GLOBAL_PACKAGES=$(dotnet nuget locals global-packages --list 2>/dev/null | sed -n 's/^global-packages: *//p')
  NUPKG=""
  if timeout 600 dotnet pack "$HERE/src/Iocpsrv/Iocpsrv.csproj" -c Release -o "$PKG_DIR" -v q \
       --configfile "$CONFIG" -p:PackageVersion="$PKG_VERSION" "$@"; then
    NUPKG=$(ls "$PKG_DIR"/Iocpsrv."$PKG_VERSION".nupkg 2>/dev/null | head -n1)
  fi
  [ -n "$NUPKG" ] && echo "$NAME: packed $(basename "$NUPKG")"
}

# check_package WANT_WINDOWS(0|1): the .nupkg has both target frameworks' assembly, the
# native files, and no file of the native library's name anywhere but runtimes/*/native.
check_package() {
  local contents f
  contents=$(zip_list "$NUPKG")
  echo "$contents" | sed 's/^/  /'
  local want=(lib/net8.0/Iocpsrv.Net.dll lib/net10.0/Iocpsrv.Net.dll runtimes/linux-x64/native/libiocpsrv.so)
  [ "$1" = 1 ] && want+=(runtimes/win-x64/native/iocpsrv.dll)
  for f in "${want[@]}"; do
    if grep -qx "$f" <<<"$contents"; then ok "package has $f"; else fail "package lacks $f"; fi
  done
  # Windows ignores case: a lib/**/Iocpsrv.dll would be the native iocpsrv.dll there.
  if grep -v '^runtimes/[^/]*/native/' <<<"$contents" | grep -qiE '(^|/)(lib)?iocpsrv\.(dll|so|dylib)$'; then
    fail "package has a file named like the native library outside runtimes/*/native"
  else
    ok "no managed file is named like the native library (case-insensitive)"
  fi
}

# consumer_publish OUT [build] [ARG...]: dotnet publish (or build) of
# tests/PackageConsumer against the package just packed, into OUT; the log goes to OUT.log.
consumer_publish() {
  local out=$1 verb=publish
  shift
  if [ "${1:-}" = build ]; then verb=build; shift; fi
  if timeout 600 dotnet "$verb" "$CONSUMER" -c Release -o "$out" -v q \
       -p:IocpsrvPackageVersion="$PKG_VERSION" -p:RestoreAdditionalProjectSources="$PKG_DIR" \
       "$@" >"$out.log" 2>&1; then
    return 0
  fi
  cat "$out.log" >&2
  return 1
}

ci_cleanup() {
  if [ -n "$PKG_VERSION" ] && [ -n "$GLOBAL_PACKAGES" ]; then
    rm -rf "${GLOBAL_PACKAGES%/}/iocpsrv/$PKG_VERSION"
    rmdir "${GLOBAL_PACKAGES%/}/iocpsrv" 2>/dev/null || true   # only if no other version is there
  fi
}

# summary [MORE_FAILED]: the closing lines ("NAME: N passed, N failed", counting the checks
# and the failed steps, plus MORE_FAILED); exits 1 if anything failed.
summary() {
  local failed=$(( ${#FAILED_STEPS[@]} + ${1:-0} ))
  echo
  [ "${#FAILED_STEPS[@]}" -gt 0 ] && echo "$NAME: failed steps: ${FAILED_STEPS[*]}"
  echo "$NAME: $CHECKS passed, $failed failed"
  [ "$failed" -eq 0 ]
  exit
}
