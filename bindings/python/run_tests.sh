#!/usr/bin/env bash
# run_tests.sh -- the Python binding's test suite (pytest, real sockets on 127.0.0.1).
#
#   bash bindings/python/run_tests.sh              the whole suite
#   bash bindings/python/run_tests.sh -k aio -x    extra arguments go to pytest
#
# Uses Debian's /usr/bin/python3 (PYTHON=... to override) with python3-cffi,
# python3-pytest and python3-mypy, installing them with apt-get when they are missing.
# The native library is found as the package finds it (IOCPSRV_LIBRARY, a copy in the
# package, or the CMake build tree build/linux/dll: build it first with cmake --preset
# linux && cmake --build --preset linux). IOCPSRV_BUILD_DIR=DIR tests against another CMake build tree instead:
# DIR/dll/libiocpsrv.so (unless IOCPSRV_LIBRARY is set) and DIR/samples/iocpsrv-flood.
#
# Exit status: pytest's, except that "no test collected" (pytest's 5) is a failure too,
# and so is a missing library or missing Python packages.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-/usr/bin/python3}"
cd "$HERE"

if [ ! -x "$PYTHON" ]; then
  echo "run_tests.sh: $PYTHON not found (set PYTHON=...)" >&2
  exit 1
fi

if ! "$PYTHON" -c 'import cffi, pytest' 2>/dev/null; then
  echo "run_tests.sh: installing python3-cffi python3-pytest"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  if command -v apt-get >/dev/null 2>&1; then
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        python3-cffi python3-pytest ||
      { $SUDO apt-get update -q && $SUDO env DEBIAN_FRONTEND=noninteractive \
          apt-get install -y -q --no-install-recommends python3-cffi python3-pytest; }
  fi
  if ! "$PYTHON" -c 'import cffi, pytest'; then
    echo "run_tests.sh: $PYTHON needs cffi and pytest (Debian: python3-cffi python3-pytest)" >&2
    exit 1
  fi
fi

# mypy --strict on the package (tests/test_idioms.py) needs Debian's python3-mypy: the
# test is skipped without it, except under CI=true, where it fails.
if ! "$PYTHON" -c 'import mypy' 2>/dev/null && command -v apt-get >/dev/null 2>&1; then
  echo "run_tests.sh: installing python3-mypy"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      python3-mypy || echo "run_tests.sh: could not install python3-mypy" >&2
fi

export PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "${IOCPSRV_BUILD_DIR:-}" ]; then
  export IOCPSRV_LIBRARY="${IOCPSRV_LIBRARY:-$IOCPSRV_BUILD_DIR/dll/libiocpsrv.so}"
  export IOCPSRV_FLOOD="${IOCPSRV_FLOOD:-$IOCPSRV_BUILD_DIR/samples/iocpsrv-flood}"
fi

# Fail early, with the loader's own list of places it looked, if there is no library.
if ! "$PYTHON" -c 'import iocpsrv, sys; print("iocpsrv", iocpsrv.version_string(), "from", iocpsrv.library_path())'; then
  echo "run_tests.sh: the native library is not available (see above)" >&2
  exit 1
fi

TIMEOUT_CMD=()
if command -v timeout >/dev/null 2>&1; then
  TIMEOUT_CMD=(timeout --kill-after=30 1200)
fi

"${TIMEOUT_CMD[@]}" "$PYTHON" -m pytest -p no:cacheprovider -ra tests "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "run_tests.sh: pytest collected no test" >&2
  exit 1
fi
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
  echo "run_tests.sh: the suite timed out" >&2
fi
exit "$rc"
