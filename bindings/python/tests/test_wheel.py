"""The package's build backend (build_backend/iocpsrv_build.py): platform wheels tagged
from the native library, their metadata and RECORD, the pure, editable and sdist
builds, and the message when there is no library. (scripts/test.sh's python-wheel
section installs the wheels into a fresh venv and runs an example from them.)"""

import base64
import csv
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser

import pytest

import iocpsrv

from conftest import PKG_ROOT, REPO_ROOT, TIMEOUT

BACKEND_DIR = os.path.join(PKG_ROOT, "build_backend")
sys.path.insert(0, BACKEND_DIR)

import iocpsrv_build  # noqa: E402
import native_tags  # noqa: E402

WINDOWS_DLL = os.path.join(REPO_ROOT, "build", "windows", "dll", "iocpsrv.dll")


def _glibc_needed_by_objdump(path):
    """The newest GLIBC_2.X the library needs, as binutils reads it (a second opinion
    on native_tags' own ELF reader)."""
    r = subprocess.run(["objdump", "-T", path], capture_output=True, text=True,
                       timeout=TIMEOUT, check=True)
    versions = {tuple(map(int, m)) for m in re.findall(r"GLIBC_(\d+)\.(\d+)", r.stdout)}
    return max(versions)


def _read_wheel(path):
    with zipfile.ZipFile(path) as z:
        files = {name: z.read(name) for name in z.namelist()}
    dist_info = next(n.split("/")[0] for n in files if n.endswith(".dist-info/WHEEL"))
    return files, dist_info


def _check_record(files, dist_info):
    rows = list(csv.reader(io.StringIO(files[f"{dist_info}/RECORD"].decode())))
    assert {row[0] for row in rows} == set(files)
    for name, digest, size in rows:
        if name.endswith("/RECORD"):
            assert digest == size == ""
            continue
        algo, value = digest.split("=", 1)
        expected = base64.urlsafe_b64encode(hashlib.new(algo, files[name]).digest())
        assert value == expected.rstrip(b"=").decode(), name
        assert int(size) == len(files[name]), name


def _metadata(files, dist_info):
    return Parser().parsestr(files[f"{dist_info}/METADATA"].decode())


@pytest.fixture(scope="module")
def linux_wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    name = iocpsrv_build.write_wheel(out, native_tags.inspect_native(iocpsrv.library_path()))
    return out / name


def test_linux_wheel_is_tagged_from_the_glibc_it_needs(linux_wheel):
    info = native_tags.inspect_native(iocpsrv.library_path())
    assert info.needed == ["libc.so.6"] and info.foreign == []
    if shutil.which("objdump"):
        major, minor = _glibc_needed_by_objdump(iocpsrv.library_path())
        assert info.platform_tag == f"manylinux_{major}_{minor}_x86_64"
    files, dist_info = _read_wheel(linux_wheel)
    wheel = Parser().parsestr(files[f"{dist_info}/WHEEL"].decode())
    assert wheel["Tag"] == f"py3-none-{info.platform_tag}"
    assert wheel["Root-Is-Purelib"] == "false"
    assert linux_wheel.name == f"iocpsrv-{iocpsrv.__version__}-py3-none-{info.platform_tag}.whl"


def test_linux_wheel_holds_the_package_and_the_library(linux_wheel):
    files, dist_info = _read_wheel(linux_wheel)
    package = {n for n in files if n.startswith("iocpsrv/")}
    sources = {f"iocpsrv/{n}" for n in os.listdir(os.path.join(PKG_ROOT, "iocpsrv"))
               if n.endswith(".py") or n == "py.typed"}
    assert package == sources | {"iocpsrv/libiocpsrv.so"}
    with open(iocpsrv.library_path(), "rb") as f:
        assert files["iocpsrv/libiocpsrv.so"] == f.read()
    _check_record(files, dist_info)


def test_wheel_metadata(linux_wheel):
    files, dist_info = _read_wheel(linux_wheel)
    meta = _metadata(files, dist_info)
    assert meta["Metadata-Version"] == "2.1"
    assert meta["Name"] == "iocpsrv" and meta["Version"] == iocpsrv.__version__
    assert meta["Requires-Python"] == ">=3.9"
    assert "cffi>=1.12" in meta.get_all("Requires-Dist")
    assert meta["License"] == "MIT"
    assert meta["Description-Content-Type"] == "text/markdown"
    assert "# iocpsrv for Python" in meta.get_payload()


def test_project_urls_are_written_when_declared():
    project = dict(iocpsrv_build.read_project(), urls={"Source": "https://example.org/x"})
    assert "Project-URL: Source, https://example.org/x" in iocpsrv_build.metadata(project)


@pytest.mark.skipif(not os.path.isfile(WINDOWS_DLL), reason="the windows preset is not built")
def test_windows_wheel_from_the_mingw_build(tmp_path):
    info = native_tags.inspect_native(WINDOWS_DLL)
    assert info.platform_tag == "win_amd64" and info.kind == "pe"
    assert not info.foreign, f"iocpsrv.dll needs non-system DLLs: {info.foreign}"
    name = iocpsrv_build.write_wheel(tmp_path, info)
    assert name.endswith("-py3-none-win_amd64.whl")
    files, dist_info = _read_wheel(tmp_path / name)
    assert "iocpsrv/iocpsrv.dll" in files and "iocpsrv/libiocpsrv.so" not in files
    _check_record(files, dist_info)


def test_a_library_linking_non_manylinux_libraries_gets_the_plain_linux_tag():
    candidates = [os.path.realpath(os.path.join(d, n))
                  for d in ("/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu")
                  for n in ("libssl.so.3", "libffi.so.8")]
    for path in candidates:
        if os.path.isfile(path):
            info = native_tags.inspect_native(path)
            if info.foreign:
                assert info.platform_tag == "linux_x86_64"
                return
    pytest.skip("no system library with a non-manylinux dependency found")


def test_not_a_library_is_refused(tmp_path):
    junk = tmp_path / "libiocpsrv.so"
    junk.write_bytes(b"not a library")
    with pytest.raises(ValueError, match="not a shared library"):
        native_tags.inspect_native(junk)


def test_pure_wheel_without_a_library(tmp_path):
    name = iocpsrv_build.build_wheel(str(tmp_path), {"native": "none"})
    assert name.endswith("-py3-none-any.whl")
    files, dist_info = _read_wheel(tmp_path / name)
    assert not [n for n in files if n.endswith((".so", ".dll"))]
    _check_record(files, dist_info)


def test_editable_wheel_points_at_the_sources(tmp_path):
    name = iocpsrv_build.build_editable(str(tmp_path))
    files, dist_info = _read_wheel(tmp_path / name)
    assert files["__editable__.iocpsrv.pth"].decode().strip() == str(
        iocpsrv_build.PROJECT_DIR)
    _check_record(files, dist_info)


def test_sdist_holds_what_a_wheel_build_needs(tmp_path):
    name = iocpsrv_build.build_sdist(str(tmp_path))
    with tarfile.open(tmp_path / name) as tar:
        names = set(tar.getnames())
        pkg_info = tar.extractfile(f"iocpsrv-{iocpsrv.__version__}/PKG-INFO").read()
    base = f"iocpsrv-{iocpsrv.__version__}/"
    for needed in ("pyproject.toml", "README.md", "iocpsrv/__init__.py", "iocpsrv/py.typed",
                   "build_backend/iocpsrv_build.py", "build_backend/native_tags.py"):
        assert base + needed in names, needed
    assert b"Requires-Dist: cffi" in pkg_info


def test_no_library_stops_the_build_with_what_to_run(tmp_path):
    """pip install of a copy outside a checkout, with no library: the hook exits with
    a message naming the commands, not a traceback."""
    copy = tmp_path / "python"
    shutil.copytree(PKG_ROOT, copy, ignore=shutil.ignore_patterns(
        "*.so*", "*.dll", "__pycache__", "tests", "bench", "examples"))
    code = ("import sys; sys.path.insert(0, 'build_backend'); import iocpsrv_build; "
            "iocpsrv_build.build_wheel(sys.argv[1])")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out")], cwd=copy,
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr, r.stderr
    assert "no native library to put in the wheel" in r.stderr
    assert "cmake --preset linux && cmake --build --preset linux" in r.stderr
    assert "--config-settings native=" in r.stderr
