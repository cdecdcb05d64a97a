#!/usr/bin/env bash
# wheel_tests.sh -- the Python package as users install it (scripts/test.sh python-wheel).
#
#   bash bindings/python/wheel_tests.sh
#
# Expects both presets' libraries built (scripts/test.sh's section builds them): builds
# both wheels with the CMake target python-wheel, installs the Linux one offline into a
# fresh venv, runs examples/echo.py from outside the repository with no IOCPSRV_LIBRARY or
# PYTHONPATH and verifies it with iocpsrv-flood, stops it with SIGINT (Ctrl-C), checks
# the installed metadata and the Windows wheel's contents and tags, then installs from the
# source directory (pip install ./bindings/python, offline, with build isolation), in
# editable mode, and from a copy with no library (which must fail saying what to run).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-/usr/bin/python3}"
LINUX_BUILD="$ROOT/build/linux"
WINDOWS_BUILD="$ROOT/build/windows"
FLOOD="$LINUX_BUILD/samples/iocpsrv-flood"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/iocpsrv-wheel.XXXXXX")
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then kill "$SERVER_PID"; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

say() { printf '\n--- %s\n' "$*"; }
fail() { echo "wheel_tests.sh: $*" >&2; exit 1; }

# fresh_venv DIR: a venv that sees Debian's python3-cffi (PyPI is not reachable).
fresh_venv() {
  "$PYTHON" -m venv --system-site-packages "$1"
  "$1/bin/python" -m pip --version
}

# outside CMD...: run from a directory outside the repository, with no override that
# could point the binding at the repository.
outside() { (cd "$WORK/app" && env -u PYTHONPATH -u IOCPSRV_LIBRARY "$@"); }

# only_wheel DIR PATTERN: the one wheel in DIR matching PATTERN.
only_wheel() {
  local found=("$1"/$2)
  [ "${#found[@]}" -eq 1 ] && [ -f "${found[0]}" ] || fail "expected one $2 in $1: ${found[*]}"
  echo "${found[0]}"
}

say "build both wheels (cmake --build --preset linux|windows --target python-wheel)"
rm -rf "$LINUX_BUILD/python" "$WINDOWS_BUILD/python"
cmake --build --preset linux --target python-wheel
cmake --build --preset windows --target python-wheel
LINUX_WHEEL=$(only_wheel "$LINUX_BUILD/python" 'iocpsrv-*-py3-none-manylinux_*_x86_64.whl')
WINDOWS_WHEEL=$(only_wheel "$WINDOWS_BUILD/python" 'iocpsrv-*-py3-none-win_amd64.whl')
echo "$LINUX_WHEEL"
echo "$WINDOWS_WHEEL"

say "install the Linux wheel offline into a fresh venv"
mkdir -p "$WORK/app"
fresh_venv "$WORK/venv"
"$WORK/venv/bin/pip" install --no-index "$LINUX_WHEEL"
outside "$WORK/venv/bin/python" -c '
import iocpsrv, os, sys
path = iocpsrv.library_path()
print("iocpsrv", iocpsrv.version_string(), "from", path)
assert path.startswith(sys.prefix), f"not the bundled library: {path}"
assert os.path.dirname(path) == os.path.dirname(iocpsrv.__file__), path
'

say "pip show and the installed metadata"
"$WORK/venv/bin/pip" show iocpsrv | tee "$WORK/show.txt"
grep -q '^License: MIT$' "$WORK/show.txt" || fail "pip show: no License: MIT"
grep -q '^Requires: cffi$' "$WORK/show.txt" || fail "pip show: cffi is not required"
outside "$WORK/venv/bin/python" -c '
from importlib.metadata import metadata, version
import iocpsrv
m = metadata("iocpsrv")
assert version("iocpsrv") == iocpsrv.__version__, version("iocpsrv")
assert m["Metadata-Version"] == "2.1" and m["Requires-Python"] == ">=3.9", dict(m)
assert any(r.startswith("cffi") for r in m.get_all("Requires-Dist")), m.get_all("Requires-Dist")
print("metadata ok:", m["Name"], m["Version"], m["Requires-Python"], m["License"])
'

say "examples/echo.py from outside the repository, verified by iocpsrv-flood"
cp "$ROOT/bindings/python/examples/echo.py" "$WORK/app/"
# A background job of a non-interactive shell starts with SIGINT ignored, and Python
# keeps an ignored SIGINT ignored: reset it (exec keeps SIG_IGN, not SIG_DFL) so that
# kill -INT is what Ctrl-C would be. $! is then the server's own pid.
cd "$WORK/app"
"$PYTHON" -c 'import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)
os.execvp(sys.argv[1], sys.argv[1:])' env -u PYTHONPATH -u IOCPSRV_LIBRARY \
  "$WORK/venv/bin/python" -u echo.py --port 0 >"$WORK/echo.out" 2>"$WORK/echo.err" &
SERVER_PID=$!
cd "$ROOT"
port=""
for _ in $(seq 300); do  # up to 30 s for "listening on HOST:PORT"
  port=$(sed -n 's/^listening on .*:\([0-9]*\)$/\1/p' "$WORK/echo.out")
  [ -n "$port" ] && break
  kill -0 "$SERVER_PID" 2>/dev/null || break
  sleep 0.1
done
[ -n "$port" ] || { cat "$WORK/echo.out" "$WORK/echo.err" >&2; fail "echo.py did not start"; }
timeout 120 "$FLOOD" --port "$port" --connections 20 --depth 8 --count 500 --size 64 \
  --no-progress --timeout 20 | tee "$WORK/flood.out"
grep -q "10,000 echoed and verified" "$WORK/flood.out" || fail "the flood was not verified"
kill -INT "$SERVER_PID"  # Ctrl-C
rc=0
timeout 60 tail --pid="$SERVER_PID" -f /dev/null || fail "echo.py still runs 60 s after SIGINT"
wait "$SERVER_PID" || rc=$?
SERVER_PID=""
cat "$WORK/echo.out"
[ "$rc" -eq 0 ] || { cat "$WORK/echo.err" >&2; fail "echo.py exited with $rc after SIGINT"; }
if grep -q Traceback "$WORK/echo.err"; then cat "$WORK/echo.err" >&2; fail "echo.py printed a traceback"; fi
grep -q "stopped: 20 connections, 10000 packets in, 10000 out" "$WORK/echo.out" ||
  fail "echo.py's summary is not the flood's"

say "the Windows wheel: contents, tags and the DLL's imports"
"$PYTHON" - "$WINDOWS_WHEEL" "$ROOT/bindings/python/iocpsrv" <<'EOF'
import os, sys, zipfile
from email.parser import Parser
wheel, package_dir = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    names = set(z.namelist())
    dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/WHEEL"))
    tags = Parser().parsestr(z.read(f"{dist_info}/WHEEL").decode())
    record = {line.split(",")[0] for line in z.read(f"{dist_info}/RECORD").decode().splitlines()}
sources = {f"iocpsrv/{n}" for n in os.listdir(package_dir) if n.endswith(".py") or n == "py.typed"}
expected = sources | {"iocpsrv/iocpsrv.dll"} | {f"{dist_info}/{n}" for n in ("METADATA", "WHEEL", "RECORD")}
assert names == expected, sorted(names ^ expected)
assert record == names, sorted(record ^ names)
assert tags.get_all("Tag") == ["py3-none-win_amd64"], tags.get_all("Tag")
assert tags["Root-Is-Purelib"] == "false" and tags["Wheel-Version"] == "1.0", dict(tags)
print("windows wheel ok:", os.path.basename(wheel), len(names), "files")
EOF
imports=$(x86_64-w64-mingw32-objdump -p "$WINDOWS_BUILD/dll/iocpsrv.dll" | sed -n 's/^\s*DLL Name: //p' | sort -f | tr '\n' ' ')
echo "iocpsrv.dll imports: $imports"
for dll in $imports; do
  case "${dll,,}" in
    kernel32.dll|msvcrt.dll|ws2_32.dll|mswsock.dll|advapi32.dll|ntdll.dll) ;;
    *) unzip -l "$WINDOWS_WHEEL" | grep -qi "iocpsrv/$dll" ||
         fail "iocpsrv.dll needs $dll, which is neither a system DLL nor in the wheel" ;;
  esac
done

say "pip install ./bindings/python: offline, with build isolation, in a fresh venv"
fresh_venv "$WORK/venv2"
(cd "$ROOT" && "$WORK/venv2/bin/pip" install --no-index ./bindings/python)
outside "$WORK/venv2/bin/python" -c '
import iocpsrv, sys
assert iocpsrv.library_path().startswith(sys.prefix), iocpsrv.library_path()
print("source install ok:", iocpsrv.library_path())
'

say "pip install -e ./bindings/python (development)"
"$WORK/venv2/bin/pip" uninstall -y iocpsrv
(cd "$ROOT" && "$WORK/venv2/bin/pip" install --no-index -e ./bindings/python)
outside "$WORK/venv2/bin/python" -c "
import iocpsrv
assert iocpsrv.__file__.startswith('$ROOT/bindings/python/'), iocpsrv.__file__
assert iocpsrv.library_path().startswith('$LINUX_BUILD/dll/'), iocpsrv.library_path()
print('editable install ok:', iocpsrv.__file__, iocpsrv.library_path())
"

say "pip install of a copy with no library: refused, saying what to run"
mkdir -p "$WORK/copy"
cp -r "$ROOT/bindings/python/pyproject.toml" "$ROOT/bindings/python/README.md" \
  "$ROOT/bindings/python/build_backend" "$ROOT/bindings/python/iocpsrv" "$WORK/copy/"
rm -f "$WORK/copy/iocpsrv/"*.so* "$WORK/copy/iocpsrv/"*.dll
if "$WORK/venv2/bin/pip" install --no-index "$WORK/copy" >"$WORK/pip.out" 2>&1; then
  fail "pip installed a copy that has no native library"
fi
cat "$WORK/pip.out"
grep -q "cmake --preset linux && cmake --build --preset linux" "$WORK/pip.out" ||
  fail "the refusal does not say what to run"

echo
echo "wheel_tests.sh: all checks passed"
