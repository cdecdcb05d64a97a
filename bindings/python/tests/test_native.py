"""The cffi declarations against the real header, errors, and library lookup."""

import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

import iocpsrv
from iocpsrv import _native as n
from iocpsrv._native import ffi

from conftest import PKG_ROOT, REPO_ROOT, TIMEOUT

HEADER_DIR = os.path.join(REPO_ROOT, "dll", "include")
CC = shutil.which("cc") or shutil.which("gcc")

STRUCTS = {
    "iocpsrv_conn_info_t": ["struct_size", "flags", "id", "connect_time_ms", "bytes_in",
                            "bytes_out", "packets_in", "packets_out", "pending_send_bytes",
                            "peer", "local", "proxy"],
    "iocpsrv_stats_t": ["struct_size", "workers", "connections_now", "connections_total",
                        "connections_refused", "connections_rejected", "packets_in",
                        "packets_out", "bytes_in", "bytes_out", "accept_errors",
                        "protocol_errors", "send_queue_rejections", "idle_timeouts",
                        "pull_queue_depth", "workers_peak", "workers_busy", "pool_grows",
                        "pool_shrinks", "alloc_failures", "source_refusals",
                        "proxy_untrusted"],
    "iocpsrv_event_t": ["type", "reason", "conn", "conn_user", "data", "len"],
    "iocpsrv_buf_t": ["base", "len"],
    "iocpsrv_record_t": ["len", "type", "reason", "conn", "conn_user"],
    "iocpsrv_send_record_t": ["conn", "len", "flags"],
    "iocpsrv_send_result_t": ["index", "error"],
}

CONSTANTS = [name for name in dir(n) if name.startswith("IOCPSRV_")]


def _compile_and_run(tmp_path, source):
    if CC is None or not os.path.exists(os.path.join(HEADER_DIR, "iocpsrv.h")):
        pytest.skip("needs a C compiler and dll/include/iocpsrv.h")
    src = tmp_path / "probe.c"
    src.write_text(source)
    exe = tmp_path / "probe"
    subprocess.run([CC, "-std=c11", "-I", HEADER_DIR, str(src), "-o", str(exe)],
                   check=True, timeout=120)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True,
                         timeout=60).stdout
    return dict(line.split("=", 1) for line in out.split())


def test_struct_layouts_match_the_header(tmp_path):
    lines = []
    for st, fields in STRUCTS.items():
        lines.append(f'printf("{st}.size=%zu\\n", sizeof({st}));')
        for f in fields:
            lines.append(f'printf("{st}.{f}=%zu\\n", offsetof({st}, {f}));')
            lines.append(f'printf("{st}.{f}.size=%zu\\n", sizeof((({st} *)0)->{f}));')
    src = "#include <stdio.h>\n#include <stddef.h>\n#include \"iocpsrv.h\"\nint main(void){\n"
    src += "\n".join(lines) + "\nreturn 0;}\n"
    c = _compile_and_run(tmp_path, src)
    for st, fields in STRUCTS.items():
        # every field cffi knows, and no other
        assert [name for name, _ in ffi.typeof(st).fields] == fields, st
        for f in fields:
            assert ffi.offsetof(st, f) == int(c[f"{st}.{f}"]), (st, f)
            assert ffi.sizeof(ffi.typeof(st).fields[fields.index(f)][1].type) == \
                int(c[f"{st}.{f}.size"]), (st, f)
        assert ffi.sizeof(st) == int(c[f"{st}.size"]), st


def test_constants_match_the_header(tmp_path):
    src = "#include <stdio.h>\n#include \"iocpsrv.h\"\nint main(void){\n"
    src += "\n".join(f'printf("{c}=%lld\\n", (long long)({c}));' for c in CONSTANTS)
    src += "\nreturn 0;}\n"
    c = _compile_and_run(tmp_path, src)
    assert len(CONSTANTS) > 60
    for name in CONSTANTS:
        assert getattr(n, name) == int(c[name]), name


def _header_names():
    path = os.path.join(HEADER_DIR, "iocpsrv.h")
    if not os.path.exists(path):
        pytest.skip("dll/include/iocpsrv.h not found")
    with open(path) as f:
        text = f.read()
    names = set(re.findall(r"\b(IOCPSRV_(?:OPT|REASON|EVENT|FRAMING|CLOSE|PROXY)_[A-Z0-9_]+)\s*=", text))
    names |= {"IOCPSRV_E" + m for m in re.findall(r"^\s*X\((\w+),", text, re.M)}
    names |= set(re.findall(r"#define (IOCPSRV_CONN_\w+)", text))
    names |= set(re.findall(r"#define (IOCPSRV_VERSION_(?:MAJOR|MINOR|PATCH|HEX))\b", text))
    return names


def test_every_header_constant_is_declared():
    missing = _header_names() - set(CONSTANTS)
    assert not missing, f"constants in iocpsrv.h that the binding lacks: {sorted(missing)}"


def test_every_option_is_a_keyword():
    opts = [c for c in _header_names() if c.startswith("IOCPSRV_OPT_")]
    assert sorted(iocpsrv.OPTIONS) == sorted(c[len("IOCPSRV_OPT_"):].lower() for c in opts)
    for name, value in iocpsrv.OPTIONS.items():
        assert getattr(n, "IOCPSRV_OPT_" + name.upper()) == value


def test_version():
    major, minor, patch = iocpsrv.version()
    assert major == n.ABI_MAJOR == n.IOCPSRV_VERSION_MAJOR
    assert iocpsrv.version_string().startswith(f"{major}.{minor}.{patch}")
    assert os.path.exists(iocpsrv.library_path())


def test_errors_carry_code_name_and_message():
    lib = n.library()
    cases = {
        -1: iocpsrv.InvalidArgument, -2: iocpsrv.OutOfMemory,
        -3: iocpsrv.ConnectionNotFound, -4: iocpsrv.SendQueueFull,
        -5: iocpsrv.PacketTooLarge, -6: iocpsrv.ServerStopped, -7: iocpsrv.InvalidState,
        -8: iocpsrv.AddressInUse, -9: iocpsrv.AddressNotAvailable, -10: iocpsrv.NotSupported,
        -11: iocpsrv.Busy, -12: iocpsrv.UnknownOption, -13: iocpsrv.OptionOutOfRange,
        -14: iocpsrv.InCallback, -15: iocpsrv.SystemFailure, -16: iocpsrv.PermissionDenied,
        -17: iocpsrv.BufferTooSmall, -18: iocpsrv.TooManyConnections,
    }
    for code, cls in cases.items():
        e = iocpsrv.error_from_code(code, "doing x")
        assert type(e) is cls and isinstance(e, iocpsrv.IocpsrvError)
        assert e.code == code
        assert e.name == ffi.string(lib.iocpsrv_err_name(code)).decode()
        assert e.message == ffi.string(lib.iocpsrv_strerror(code)).decode()
        assert e.message in str(e) and e.name in str(e) and "doing x" in str(e)
    assert iocpsrv.error_from_code(-3).name == "IOCPSRV_ENOTCONN"
    unknown = iocpsrv.error_from_code(-999)
    assert type(unknown) is iocpsrv.IocpsrvError and unknown.code == -999
    assert issubclass(iocpsrv.OptionOutOfRange, ValueError)


def _run_python(code, env_update, cwd=None):
    env = dict(os.environ)
    env.pop("IOCPSRV_LIBRARY", None)
    env.update(env_update)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=TIMEOUT)


def test_library_not_found_names_the_path(tmp_path):
    missing = str(tmp_path / "nowhere" / "libiocpsrv.so")
    r = _run_python("""
        import iocpsrv
        try:
            iocpsrv.Server()
        except iocpsrv.LibraryNotFoundError as e:
            assert isinstance(e, ImportError)
            print("ERROR:", e)
            print("SEARCHED:", e.searched)
        else:
            raise SystemExit("loaded a library")
        """, {"IOCPSRV_LIBRARY": missing, "PYTHONPATH": PKG_ROOT})
    assert r.returncode == 0, r.stderr
    assert "cannot find the iocpsrv native library" in r.stdout
    assert missing in r.stdout
    assert "IOCPSRV_LIBRARY" in r.stdout


def _copy_package(site):
    """A copy of the package without any library, in site/iocpsrv."""
    pkg = site / "iocpsrv"
    shutil.copytree(os.path.join(PKG_ROOT, "iocpsrv"), pkg,
                    ignore=shutil.ignore_patterns("*.so*", "*.dll", "*.dylib", "__pycache__"))
    return pkg


_LIST_PLACES = """
    import iocpsrv, iocpsrv._native as n
    try:
        n.library()
    except iocpsrv.LibraryNotFoundError as e:
        print(e)
    else:
        print("LOADED", iocpsrv.library_path())
    """


def test_library_not_found_lists_every_place(tmp_path):
    # A copy of the package outside any checkout (as pip installs it): the package
    # directory and the system path are searched; a build tree is not, since there is
    # none (issue 19: it used to list a meaningless <site>/../build/linux/dll path).
    pkg = _copy_package(tmp_path / "site")
    r = _run_python(_LIST_PLACES, {"PYTHONPATH": str(tmp_path / "site")}, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    if r.stdout.startswith("LOADED"):
        pytest.skip("a system-wide libiocpsrv is installed: " + r.stdout)
    assert "copy inside the package: " + str(pkg) in r.stdout
    assert "CMake build tree" not in r.stdout
    assert os.path.join("build", "linux", "dll") not in r.stdout
    assert "system library path" in r.stdout


def test_library_build_tree_is_searched_in_a_checkout(tmp_path):
    # <repo>/bindings/python/iocpsrv with <repo>/dll/include/iocpsrv.h: a source
    # checkout, whose CMake build tree is searched (and named) after the package copy.
    repo = tmp_path / "repo"
    (repo / "dll" / "include").mkdir(parents=True)
    (repo / "dll" / "include" / "iocpsrv.h").write_text("/* stand-in */\n")
    _copy_package(repo / "bindings" / "python")
    r = _run_python(_LIST_PLACES, {"PYTHONPATH": str(repo / "bindings" / "python")},
                    cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    if r.stdout.startswith("LOADED"):
        pytest.skip("a system-wide libiocpsrv is installed: " + r.stdout)
    assert "CMake build tree: " + str(repo / "build" / n._PRESETS[0] / "dll") in r.stdout
    assert n.source_checkout_root() == pathlib.Path(REPO_ROOT).resolve()


def test_library_copy_inside_the_package_is_used(tmp_path):
    pkg = tmp_path / "site" / "iocpsrv"
    shutil.copytree(os.path.join(PKG_ROOT, "iocpsrv"), pkg,
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(iocpsrv.library_path(), pkg / os.path.basename(n._NAMES[0]))
    r = _run_python("""
        import iocpsrv
        print(iocpsrv.library_path())
        with iocpsrv.Server() as s:
            assert s.port
        """, {"PYTHONPATH": str(tmp_path / "site")}, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(pkg / n._NAMES[0])


def test_wrong_major_version_is_refused(tmp_path):
    if CC is None:
        pytest.skip("needs a C compiler")
    src = tmp_path / "fake.c"
    src.write_text("unsigned iocpsrv_version(void) { return 2u << 16; }\n")
    lib = tmp_path / "libfake.so"
    subprocess.run([CC, "-shared", "-fPIC", str(src), "-o", str(lib)], check=True,
                   timeout=120)
    r = _run_python("""
        import iocpsrv
        try:
            iocpsrv.Server()
        except iocpsrv.LibraryVersionError as e:
            print("VERSION:", e)
        """, {"IOCPSRV_LIBRARY": str(lib), "PYTHONPATH": PKG_ROOT})
    assert r.returncode == 0, r.stderr
    assert "VERSION:" in r.stdout and "major version 1" in r.stdout


def test_no_ffi_callback_anywhere():
    """The binding never hands Python callbacks to native code."""
    for name in os.listdir(os.path.join(PKG_ROOT, "iocpsrv")):
        if name.endswith(".py"):
            with open(os.path.join(PKG_ROOT, "iocpsrv", name)) as f:
                text = f.read()
            code = re.sub(r'""".*?"""', "", text, flags=re.S)  # docstrings may say it
            code = re.sub(r"#.*", "", code)
            assert "ffi.callback" not in code and "def_extern" not in code, name


def test_waitable_handle_alone_drives_a_lone_fin_to_its_disconnect():
    """Raw C ABI, no binding logic: an event loop that polls only when the handle is
    signalled must see the DISCONNECT of a client whose FIN arrives after everything
    else was polled."""
    import select
    import socket
    import struct

    lib = n.library()
    pp = ffi.new("iocpsrv_t **")
    assert lib.iocpsrv_create(pp, ffi.NULL) == 0
    h = pp[0]
    try:
        assert lib.iocpsrv_set_option(h, n.IOCPSRV_OPT_PULL_MODE, 1) == 0
        assert lib.iocpsrv_listen(h, b"127.0.0.1", 0) == 0
        fd = int(lib.iocpsrv_wait_handle(h))
        evs = ffi.new("iocpsrv_event_t[64]")

        def wake(timeout):
            if not select.select([fd], [], [], timeout)[0]:
                return None
            got = []
            while True:
                k = lib.iocpsrv_poll(h, evs, 64, 0)
                if k <= 0:
                    return got
                got += [int(evs[i].type) for i in range(k)]

        with socket.create_connection(("127.0.0.1", lib.iocpsrv_port(h))) as c:
            c.sendall(struct.pack("<I", 2) + b"hi")
            seen = []
            while n.IOCPSRV_EVENT_PACKET not in seen:
                got = wake(TIMEOUT)
                assert got is not None
                seen += got
            c.shutdown(socket.SHUT_WR)
            seen = []
            for _ in range(5):
                got = wake(2.0)
                if got is None:
                    break
                seen += got
                if n.IOCPSRV_EVENT_DISCONNECT in seen:
                    break
            assert n.IOCPSRV_EVENT_DISCONNECT in seen
    finally:
        lib.iocpsrv_stop(h, 0)
        lib.iocpsrv_destroy(h)
