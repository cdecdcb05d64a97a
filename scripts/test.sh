#!/usr/bin/env bash
# test.sh -- the one command that installs what is missing and runs every test.
#
#   bash scripts/test.sh                 every section, in order
#   bash scripts/test.sh build ctest     only the named sections
#   bash scripts/test.sh --list          the section names
#
# Sections (each a function named section_<name>; add new ones to SECTIONS):
#   deps     install missing tools with apt-get (cmake, gcc, make, pkg-config)
#   build    cmake --preset linux && cmake --build --preset linux
#   ctest    ctest --preset linux (fails when no test ran)
#   demo     scripts/demo.sh --no-build: echo server + flood verification, clean stop
#   install  cmake --install into a temporary prefix; build and run samples/consumer
#            with find_package(iocpsrv) and with pkg-config
#   python   the Python binding's pytest suite (bindings/python/run_tests.sh), with
#            Debian's python3-cffi, python3-pytest and python3-mypy (the suite runs
#            mypy --strict on the package) installed when missing
#   python-wheel  the Python package as users install it: both wheels (CMake target
#            python-wheel, Linux and MinGW builds), the Linux one installed offline into
#            a fresh venv and examples/echo.py run from outside the repository under
#            iocpsrv-flood, the Windows wheel's contents and tags, pip install of the
#            source directory and -e (bindings/python/wheel_tests.sh)
#   csharp   the C# binding: dotnet test, dotnet pack with both natives, a consumer of the
#            package (net10.0, linux-x64 publishes, net8.0 self-contained), the Echo example
#            (bindings/csharp/run_tests.sh; restores from /opt/nuget/packages and NuGet)
#   windows  install MinGW-w64 and wine64 when missing, cross-build the windows preset
#            (iocpsrv.dll, samples, the same C tests) and run ctest under wine64 in a
#            private prefix (build/wineprefix)
#   csharp-windows  .NET on iocpsrv.dll: cross-build it, publish a package consumer and
#            examples/Echo for win-x64 (self-contained) and run them under Wine, driven by
#            iocpsrv-flood from Linux (bindings/csharp/run_windows_tests.sh)
#   asan     the C tests built with AddressSanitizer + UBSan (preset linux-asan)
#   tsan     the C tests built with ThreadSanitizer (preset linux-tsan)
#   valgrind the lifecycle and framing tests under valgrind memcheck: no error, no leak
#   fuzz     libFuzzer (clang) on the framing, PROXY header and trusted-list parsers,
#            FUZZ_SECONDS in all (default 60)
#   bench    bench/run --quick: every benchmark server built (Release) and driven for
#            a second, every echo verified, so the harness cannot rot (no timing
#            threshold: slow numbers never fail it); installs python3-uvloop when missing
# Every section runs even when an earlier one failed (sections that need the build are
# skipped when it failed). Exits non-zero if any section failed or was skipped.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
BUILD_DIR="$ROOT/build/linux"
JOBS=$(nproc 2>/dev/null || echo 2)
SECTIONS=(deps build ctest demo install python python-wheel csharp windows csharp-windows asan tsan valgrind fuzz bench)

export DEBIAN_FRONTEND=noninteractive

# ---- helpers --------------------------------------------------------------------------

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
APT_UPDATED=0

# apt_install PKG...: install Debian packages, non-interactively, updating lists once.
apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: need $* but apt-get is not available; install them by hand" >&2
    return 1
  fi
  if [ "$APT_UPDATED" = 0 ]; then
    $SUDO apt-get update -q || return 1
    APT_UPDATED=1
  fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

# need_cmd CMD PKG...: install PKG... unless CMD is on PATH.
MISSING=()
need_cmd() {
  local cmd=$1
  shift
  command -v "$cmd" >/dev/null 2>&1 || MISSING+=("$@")
}

# version_ge A B: true when dotted version A >= B.
version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }

# ---- sections -------------------------------------------------------------------------

section_deps() {
  MISSING=()
  need_cmd cmake cmake
  need_cmd gcc gcc libc6-dev
  need_cmd make make          # the linux preset uses CMake's default generator
  need_cmd pkg-config pkg-config
  need_cmd timeout coreutils
  if [ "${#MISSING[@]}" -gt 0 ]; then
    echo "installing: ${MISSING[*]}"
    apt_install "${MISSING[@]}" || return 1
  else
    echo "all tools present"
  fi
  local v
  v=$(cmake --version | head -n1 | awk '{print $3}')
  echo "cmake $v, $(gcc --version | head -n1), $(make --version | head -n1)"
  version_ge "$v" 3.25 || { echo "CMakePresets.json needs cmake >= 3.25, found $v" >&2; return 1; }
}

section_build() {
  cmake --preset linux || return 1
  cmake --build --preset linux -j"$JOBS"
}

section_ctest() {
  ctest --preset linux --no-tests=error
}

section_demo() {
  bash "$ROOT/scripts/demo.sh" --no-build
}

section_install() {
  local work prefix lib pc flags f
  work=$(mktemp -d "${TMPDIR:-/tmp}/iocpsrv-install.XXXXXX")
  prefix="$work/prefix"
  # shellcheck disable=SC2064 # expand $work now: the trap runs after the function returns
  trap "rm -rf '$work'" EXIT # the section runs in its own subshell

  cmake --install "$BUILD_DIR" --prefix "$prefix" || return 1
  echo "--- installed files"
  (cd "$prefix" && find . \( -type f -o -type l \) | sort)

  for f in include/iocpsrv.h bin/iocpsrv-echo; do
    [ -e "$prefix/$f" ] || { echo "missing after install: $f" >&2; return 1; }
  done
  lib=$(find "$prefix" -name libiocpsrv.so | head -n1)
  pc=$(find "$prefix" -name iocpsrv.pc | head -n1)
  [ -n "$lib" ] || { echo "missing after install: libiocpsrv.so" >&2; return 1; }
  [ -n "$pc" ] || { echo "missing after install: iocpsrv.pc" >&2; return 1; }

  echo "--- the installed iocpsrv-echo finds the installed library (RPATH)"
  env -u LD_LIBRARY_PATH "$prefix/bin/iocpsrv-echo" --help >/dev/null || return 1
  echo "ok"

  echo "--- find_package(iocpsrv): samples/consumer"
  cmake -S "$ROOT/samples/consumer" -B "$work/consumer" -DCMAKE_PREFIX_PATH="$prefix" \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo || return 1
  cmake --build "$work/consumer" || return 1
  timeout 60 "$work/consumer/iocpsrv-consumer" || return 1

  echo "--- pkg-config --cflags --libs iocpsrv"
  flags=$(PKG_CONFIG_PATH="$(dirname "$pc")" pkg-config --cflags --libs iocpsrv) || return 1
  echo "pkg-config: $flags"
  if [[ "$flags" != *"-I$prefix/"* || "$flags" != *"-L$prefix/"* ]]; then
    echo "iocpsrv.pc does not point into the install prefix $prefix:" >&2
    sed -n '1,3p' "$pc" >&2
    echo "(cmake --install --prefix moves the files, not a prefix written into the .pc" \
         "at configure time; iocpsrv.pc.in could say prefix=\${pcfiledir}/../..)" >&2
    return 1
  fi
  # shellcheck disable=SC2086 # $flags is a list of words
  gcc -o "$work/consumer-pc" "$ROOT/samples/consumer/consumer.c" $flags || return 1
  LD_LIBRARY_PATH="$(dirname "$lib")" timeout 60 "$work/consumer-pc" || return 1
}

section_python() {
  if ! /usr/bin/python3 -c "import cffi, pytest, mypy" >/dev/null 2>&1; then
    apt_install python3 python3-cffi python3-pytest python3-mypy || return 1
  fi
  bash "$ROOT/bindings/python/run_tests.sh"
}

section_python-wheel() {
  MISSING=()
  need_cmd x86_64-w64-mingw32-gcc gcc-mingw-w64-x86-64
  need_cmd unzip unzip
  if ! /usr/bin/python3 -c "import cffi, ensurepip, venv" >/dev/null 2>&1; then
    MISSING+=(python3-cffi python3-venv)
  fi
  if [ "${#MISSING[@]}" -gt 0 ]; then
    echo "installing: ${MISSING[*]}"
    apt_install "${MISSING[@]}" || return 1
  fi
  if [ ! -e "$BUILD_DIR/dll/libiocpsrv.so" ] || [ ! -x "$BUILD_DIR/samples/iocpsrv-flood" ]; then
    cmake --preset linux >/dev/null || return 1
    cmake --build --preset linux -j"$JOBS" --target iocpsrv iocpsrv-flood || return 1
  fi
  cmake --preset linux >/dev/null || return 1  # (re)configure: the python-wheel target
  cmake --preset windows >/dev/null || return 1
  timeout 900 bash "$ROOT/bindings/python/wheel_tests.sh"
}

section_csharp() {
  if ! command -v dotnet >/dev/null 2>&1; then
    echo "the .NET SDK (dotnet) is not installed; this machine image is expected to have it" >&2
    return 1
  fi
  bash "$ROOT/bindings/csharp/run_tests.sh"
}

section_windows() {
  MISSING=()
  need_cmd x86_64-w64-mingw32-gcc gcc-mingw-w64-x86-64
  if ! command -v wine64 >/dev/null 2>&1 && ! command -v wine >/dev/null 2>&1 &&
     [ ! -x /usr/lib/wine/wine64 ]; then
    MISSING+=(wine64 wine)
  fi
  if [ "${#MISSING[@]}" -gt 0 ]; then
    echo "installing: ${MISSING[*]}"
    apt_install "${MISSING[@]}" || return 1
  fi
  cmake --preset windows || return 1
  cmake --build --preset windows -j"$JOBS" || return 1
  local rc=0
  ctest --preset windows --no-tests=error || rc=$?
  # Nothing of Wine's may outlive the run.
  WINEPREFIX="$ROOT/build/wineprefix" wineserver -k 2>/dev/null || true
  return "$rc"
}

# .NET on the real Windows DLL: iocpsrv.dll cross-built, the package packed with it, a package
# consumer and examples/Echo published win-x64 and run under Wine (private prefix
# build/wineprefix-dotnet), each driven by iocpsrv-flood from Linux and stopped with SIGINT.
section_csharp-windows() {
  command -v dotnet >/dev/null 2>&1 || { echo "the .NET SDK (dotnet) is not installed" >&2; return 1; }
  MISSING=()
  need_cmd x86_64-w64-mingw32-gcc gcc-mingw-w64-x86-64
  if ! command -v wine64 >/dev/null 2>&1 && [ ! -x /usr/lib/wine/wine64 ]; then MISSING+=(wine64); fi
  if [ "${#MISSING[@]}" -gt 0 ]; then
    echo "installing: ${MISSING[*]}"
    apt_install "${MISSING[@]}" || return 1
  fi
  cmake --preset windows >/dev/null || return 1
  cmake --build --preset windows -j"$JOBS" --target iocpsrv || return 1
  if [ ! -e "$BUILD_DIR/dll/libiocpsrv.so" ] || [ ! -x "$BUILD_DIR/samples/iocpsrv-flood" ]; then
    cmake --preset linux >/dev/null || return 1
    cmake --build --preset linux -j"$JOBS" --target iocpsrv iocpsrv-flood || return 1
  fi
  bash "$ROOT/bindings/csharp/run_windows_tests.sh"
}

section_asan() {
  cmake --preset linux-asan || return 1
  cmake --build --preset linux-asan -j"$JOBS" || return 1
  ctest --preset linux-asan --no-tests=error
}

section_tsan() {
  cmake --preset linux-tsan || return 1
  cmake --build --preset linux-tsan -j"$JOBS" || return 1
  ctest --preset linux-tsan --no-tests=error
}

section_valgrind() {
  command -v valgrind >/dev/null 2>&1 || apt_install valgrind || return 1
  local t
  for t in test_lifecycle test_framing test_connect; do
    echo "--- valgrind $t"
    valgrind --error-exitcode=1 --leak-check=full --show-leak-kinds=definite,indirect \
      --errors-for-leak-kinds=definite,indirect -q "$BUILD_DIR/tests/$t" || return 1
  done
}

section_fuzz() {
  local out="$ROOT/build/fuzz" seconds="${FUZZ_SECONDS:-60}"
  if ! command -v clang >/dev/null 2>&1 ||
     ! clang -print-file-name=libclang_rt.fuzzer-x86_64.a | grep -q /; then
    apt_install clang libclang-rt-14-dev || return 1
  fi
  # One target at a time: framing gets 2/5 of FUZZ_SECONDS, the others 1/5 each.
  local core="$ROOT/dll/src/core" t secs maxlen failed=0 srcs
  local fifth=$(( seconds / 5 > 0 ? seconds / 5 : 1 ))
  local half=$(( seconds - 3 * fifth > 0 ? seconds - 3 * fifth : 1 ))
  local quarter=$fifth
  for t in framing proxy srcaddr send_records; do
    case $t in
      framing) secs=$half; maxlen=200000; srcs=("$core/framing.c") ;;
      proxy) secs=$quarter; maxlen=70000; srcs=("$core/proxy.c") ;;
      send_records) secs=$quarter; maxlen=4096; srcs=(-DIOCPSRV_STATIC "$core/records.c") ;;
      srcaddr) secs=$quarter; maxlen=4096 # built like test_srcaddr, with the fault seam
        srcs=(-DIOCPSRV_FAULT_INJECTION -DIOCPSRV_STATIC "$core/srcaddr.c" "$core/fault.c" "$core/check.c") ;;
    esac
    mkdir -p "$out/corpus/$t"
    cp "$ROOT/fuzz/corpus/$t"/* "$out/corpus/$t/"
    clang -g -O1 -fsanitize=fuzzer,address,undefined -I"$ROOT/dll/src" -I"$ROOT/dll/include" \
      "$ROOT/fuzz/fuzz_$t.c" "${srcs[@]}" -o "$out/fuzz_$t" || return 1
    # A working copy of the corpus grows here; the repository's seeds stay as they are.
    "$out/fuzz_$t" -max_total_time="$secs" -max_len="$maxlen" -print_final_stats=1 \
      -artifact_prefix="$out/$t-" "$out/corpus/$t" || {
      echo "fuzz_$t failed: the input is in $out/$t-crash-*; copy it to fuzz/crashers/$t/" >&2
      failed=1
    }
  done
  return "$failed"
}

section_bench() {
  # The uvloop baseline needs Debian's python3-uvloop; without it bench/run leaves that
  # one server out with a note, so a failed install is a warning, not a failure.
  if ! /usr/bin/python3 -c "import uvloop" >/dev/null 2>&1; then
    apt_install python3-uvloop || echo "test.sh: python3-uvloop not installed: bench/run leaves the uvloop server out" >&2
  fi
  bash "$ROOT/bench/run" --quick
}

# ---- runner ---------------------------------------------------------------------------

declare -A RESULT=()
ORDER=()

# run_section NAME: run section_NAME in a subshell with errexit, record PASS/FAIL/SKIP.
run_section() {
  local name=$1 start rc
  ORDER+=("$name")
  if [ "$name" != deps ] && [ "$name" != build ] && [ "${RESULT[build]:-}" = FAIL ]; then
    printf '\n==== [%s] skipped: the build failed\n' "$name"
    RESULT[$name]=SKIP
    return
  fi
  printf '\n==== [%s]\n' "$name"
  start=$(date +%s)
  ( set -e; "section_$name" )
  rc=$?
  if [ "$rc" -eq 0 ]; then RESULT[$name]=PASS; else RESULT[$name]=FAIL; fi
  printf '==== [%s] %s (%ss)\n' "$name" "${RESULT[$name]}" "$(( $(date +%s) - start ))"
}

case "${1:-}" in
  --list) printf '%s\n' "${SECTIONS[@]}"; exit 0 ;;
  -h|--help) sed -n '2,/^set -uo pipefail/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
esac

if [ "$#" -gt 0 ]; then selected=("$@"); else selected=("${SECTIONS[@]}"); fi
for name in "${selected[@]}"; do
  if ! declare -F "section_$name" >/dev/null; then
    echo "test.sh: unknown section '$name' (try --list)" >&2
    exit 2
  fi
done
for name in "${selected[@]}"; do run_section "$name"; done

printf '\n==== summary\n'
bad=0
for name in "${ORDER[@]}"; do
  printf '  %-10s %s\n' "$name" "${RESULT[$name]}"
  [ "${RESULT[$name]}" = PASS ] || bad=$((bad + 1))
done
if [ "$bad" -eq 0 ]; then
  echo "test.sh: every section passed"
  exit 0
fi
echo "test.sh: $bad of ${#ORDER[@]} sections did not pass"
exit 1
