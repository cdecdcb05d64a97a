"""The iocpsrv package's own PEP 517 build backend (standard library only).

Why not setuptools: pip's build isolation installs the backend from an index, and many
hosts (build farms, air-gapped machines, Debian's externally-managed Python) have none.
This backend needs nothing that is not in the standard library, so
``pip install ./bindings/python`` works offline, with or without build isolation.

What it builds:

- a **platform wheel** holding the package and the native library, tagged from the
  library itself (native_tags.py): ``py3-none-manylinux_2_X_x86_64`` for libiocpsrv.so,
  ``py3-none-win_amd64`` for iocpsrv.dll (the MinGW cross build); the binding is pure
  Python on cffi's ABI mode, so only the platform part of the tag matters;
- with ``native=none``, a ``py3-none-any`` wheel without a library (it then comes from
  IOCPSRV_LIBRARY or the system's library path at run time);
- an editable wheel (``pip install -e``): a .pth naming the source directory, whose
  loader then finds the library in the repository's CMake build tree;
- an sdist of the sources.

The native library: config setting ``native=PATH`` (``pip install
--config-settings native=PATH ./bindings/python``), else a copy already in the package
directory, else the repository's CMake build tree (build/linux/dll/libiocpsrv.so, or
build/windows/dll/iocpsrv.dll on Windows). None of them: the build stops and says what
to run.

Also a command line, used by the CMake target ``python-wheel``::

    python3 bindings/python/build_backend/iocpsrv_build.py wheel --native PATH --out DIR
    python3 bindings/python/build_backend/iocpsrv_build.py sdist --out DIR
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import os
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any, Mapping, Optional

from native_tags import NativeInfo, inspect_native

__all__ = [
    "build_wheel",
    "build_sdist",
    "build_editable",
    "get_requires_for_build_wheel",
    "get_requires_for_build_sdist",
    "get_requires_for_build_editable",
    "NativeLibraryMissing",
]

PROJECT_DIR = Path(__file__).resolve().parent.parent  # bindings/python
PACKAGE = "iocpsrv"
# Zip entries get this date (zipfile's earliest) unless SOURCE_DATE_EPOCH says otherwise,
# so the same inputs give the same wheel.
_EPOCH_1980 = 315532800
# What the sdist carries besides the package: enough to build every kind of wheel.
_SDIST_FILES = ["pyproject.toml", "README.md", "run_tests.sh"]
_SDIST_DIRS = ["iocpsrv", "build_backend", "tests", "examples"]


class NativeLibraryMissing(RuntimeError):
    """No native library to put in the wheel; the message says how to get one."""


# ---- PEP 517 / PEP 660 hooks ------------------------------------------------------------

def get_requires_for_build_wheel(config_settings: Optional[Mapping[str, Any]] = None) -> list[str]:
    return []


def get_requires_for_build_sdist(config_settings: Optional[Mapping[str, Any]] = None) -> list[str]:
    return []


def get_requires_for_build_editable(config_settings: Optional[Mapping[str, Any]] = None) -> list[str]:
    return []


def build_wheel(wheel_directory: str, config_settings: Optional[Mapping[str, Any]] = None,
                metadata_directory: Optional[str] = None) -> str:
    native = _setting(config_settings, "native")
    if native == "none":
        return write_wheel(Path(wheel_directory), None)
    try:
        found = find_native(native)
    except NativeLibraryMissing as e:
        # pip shows a backend's output when it fails: the message alone, no traceback.
        print(e, file=sys.stderr)
        raise SystemExit(1) from None
    return write_wheel(Path(wheel_directory), found)


def build_editable(wheel_directory: str, config_settings: Optional[Mapping[str, Any]] = None,
                   metadata_directory: Optional[str] = None) -> str:
    project = read_project()
    wheel = WheelWriter(Path(wheel_directory), project, "py3-none-any", purelib=True)
    with wheel:
        # The source directory goes on sys.path: the package is used where it is, and
        # its loader finds the library in the repository's build tree.
        wheel.add_bytes(f"__editable__.{PACKAGE}.pth", f"{PROJECT_DIR}\n".encode())
    return wheel.name


def build_sdist(sdist_directory: str,
                config_settings: Optional[Mapping[str, Any]] = None) -> str:
    return write_sdist(Path(sdist_directory))


def _setting(config_settings: Optional[Mapping[str, Any]], key: str) -> Optional[str]:
    value = (config_settings or {}).get(key)
    if isinstance(value, list):  # pip passes a repeated setting as a list
        value = value[-1]
    return None if value in (None, "") else str(value)


# ---- the native library ----------------------------------------------------------------

def find_native(explicit: Optional[str]) -> NativeInfo:
    """The library to bundle: explicit path, a copy in the package, or the build tree."""
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise NativeLibraryMissing(f"native={explicit}: no such file")
        return inspect_native(path)
    for path in _default_natives():
        if path.is_file():
            return inspect_native(path)
    raise NativeLibraryMissing(_missing_message())


def _default_natives() -> list[Path]:
    windows = sys.platform == "win32"
    name = "iocpsrv.dll" if windows else "libiocpsrv.so"
    preset = "windows" if windows else "linux"
    candidates = [PROJECT_DIR / PACKAGE / name]
    repo = PROJECT_DIR.parent.parent
    if (repo / "dll" / "include" / "iocpsrv.h").is_file():
        candidates.append(repo / "build" / preset / "dll" / name)
    return candidates


def _missing_message() -> str:
    places = "\n".join(f"  - {p}" for p in _default_natives())
    return (
        "iocpsrv: no native library to put in the wheel; looked in:\n"
        f"{places}\n"
        "Build it first, from the repository root:\n"
        "  cmake --preset linux && cmake --build --preset linux -j2\n"
        "then run the same pip command again; or name a built library:\n"
        "  pip install --config-settings native=/path/to/libiocpsrv.so ./bindings/python\n"
        "or build a wheel without one (the library then comes from IOCPSRV_LIBRARY or the\n"
        "system's library path):\n"
        "  pip install --config-settings native=none ./bindings/python"
    )


# ---- metadata ----------------------------------------------------------------------------

def read_project() -> dict[str, Any]:
    """pyproject.toml's [project] table."""
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError:
            raise RuntimeError("building iocpsrv needs Python 3.11+ (tomllib) or tomli") from None
    with open(PROJECT_DIR / "pyproject.toml", "rb") as f:
        return dict(tomllib.load(f)["project"])


# The [project] keys metadata() turns into core metadata; any other key is refused rather
# than silently dropped.
_KNOWN_KEYS = {"name", "version", "description", "readme", "requires-python", "license",
               "dependencies", "optional-dependencies", "classifiers", "urls", "keywords"}


def metadata(project: Mapping[str, Any]) -> str:
    """Core metadata 2.1 (METADATA in a wheel, PKG-INFO in an sdist)."""
    unknown = set(project) - _KNOWN_KEYS
    if unknown:
        raise RuntimeError(f"pyproject.toml [project]: {sorted(unknown)} not supported "
                           "by build_backend/iocpsrv_build.py")
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {project['name']}",
        f"Version: {project['version']}",
        f"Summary: {project['description']}",
    ]
    if "license" in project:
        lines.append(f"License: {project['license']['text']}")
    if "keywords" in project:
        lines.append(f"Keywords: {','.join(project['keywords'])}")
    lines += [f"Classifier: {c}" for c in project.get("classifiers", [])]
    lines.append(f"Requires-Python: {project['requires-python']}")
    lines += [f"Requires-Dist: {d}" for d in project.get("dependencies", [])]
    lines += [f"Project-URL: {label}, {url}" for label, url in project.get("urls", {}).items()]
    for extra, requirements in project.get("optional-dependencies", {}).items():
        lines.append(f"Provides-Extra: {extra}")
        lines += [f'Requires-Dist: {r}; extra == "{extra}"' for r in requirements]
    lines.append("Description-Content-Type: text/markdown")
    readme = (PROJECT_DIR / project["readme"]).read_text(encoding="utf-8")
    return "\n".join(lines) + "\n\n" + readme


def _base_name(project: Mapping[str, Any]) -> str:
    return f"{project['name']}-{project['version']}"


# ---- wheels ------------------------------------------------------------------------------

def _zip_time() -> tuple[int, int, int, int, int, int]:
    import time

    epoch = max(int(os.environ.get("SOURCE_DATE_EPOCH", _EPOCH_1980)), _EPOCH_1980)
    return time.gmtime(epoch)[:6]


class WheelWriter:
    """A wheel being written: files in, then dist-info (METADATA, WHEEL, RECORD) on
    close. ``name`` is the file name."""

    def __init__(self, directory: Path, project: Mapping[str, Any], tag: str, purelib: bool):
        self.project = project
        self.tag = tag
        self.purelib = purelib
        self.name = f"{_base_name(project)}-{tag}.whl"
        self.dist_info = f"{_base_name(project)}.dist-info"
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / self.name
        self._zip = zipfile.ZipFile(self.path, "w", zipfile.ZIP_DEFLATED)
        self._records: list[str] = []
        self._time = _zip_time()

    def add_bytes(self, arcname: str, data: bytes, executable: bool = False) -> None:
        info = zipfile.ZipInfo(arcname, self._time)
        info.external_attr = (0o755 if executable else 0o644) << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        self._zip.writestr(info, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
        self._records.append(f"{arcname},sha256={digest.decode()},{len(data)}")

    def add_file(self, arcname: str, path: Path, executable: bool = False) -> None:
        self.add_bytes(arcname, path.read_bytes(), executable)

    def __enter__(self) -> "WheelWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                self._finish()
        finally:
            self._zip.close()
        if exc[0] is not None:
            self.path.unlink()

    def _finish(self) -> None:
        self.add_bytes(f"{self.dist_info}/METADATA", metadata(self.project).encode())
        wheel = ("Wheel-Version: 1.0\n"
                 "Generator: iocpsrv_build (bindings/python/build_backend)\n"
                 f"Root-Is-Purelib: {'true' if self.purelib else 'false'}\n"
                 f"Tag: {self.tag}\n")
        self.add_bytes(f"{self.dist_info}/WHEEL", wheel.encode())
        record = f"{self.dist_info}/RECORD"
        text = "\n".join(self._records + [f"{record},,"]) + "\n"
        info = zipfile.ZipInfo(record, self._time)
        info.external_attr = 0o644 << 16
        self._zip.writestr(info, text, zipfile.ZIP_DEFLATED)


def package_sources() -> list[Path]:
    """The package's own files: its modules and py.typed (never a stray library copy:
    the wheel's library is the one chosen by find_native)."""
    package_dir = PROJECT_DIR / PACKAGE
    files = sorted(package_dir.glob("*.py")) + [package_dir / "py.typed"]
    return [f for f in files if f.is_file()]


def write_wheel(directory: Path, native: Optional[NativeInfo]) -> str:
    """Write the wheel into directory; returns its file name. native None: a pure
    wheel without a library."""
    project = read_project()
    tag = "py3-none-any" if native is None else f"py3-none-{native.platform_tag}"
    bundled = [] if native is None else _bundled_files(native)
    with WheelWriter(directory, project, tag, purelib=native is None) as wheel:
        for path in package_sources():
            wheel.add_file(f"{PACKAGE}/{path.name}", path)
        for arcname, path in bundled:
            wheel.add_file(f"{PACKAGE}/{arcname}", path, executable=True)
    return wheel.name


def _bundled_files(native: NativeInfo) -> list[tuple[str, Path]]:
    """(name in the package, source path): the library, and for a DLL the non-system
    DLLs it imports (a MinGW runtime, if it was not linked statically)."""
    files = [(native.package_name, native.path)]
    if native.kind == "elf":
        if native.foreign:
            print(f"iocpsrv_build: {native.path} links {native.foreign}, which not every "
                  f"Linux has: tagged {native.platform_tag}, installable where it was built",
                  file=sys.stderr)
        return files
    for dll in native.foreign:
        found = _find_runtime_dll(dll, native.path.parent)
        if found is None:
            raise NativeLibraryMissing(
                f"{native.path} imports {dll}, which Windows does not have and which is "
                f"not beside it nor in the MinGW-w64 directories: copy it next to "
                f"{native.path.name}, or link it statically (-static-libgcc)")
        files.append((dll, found))
    return files


def _find_runtime_dll(name: str, beside: Path) -> Optional[Path]:
    """A MinGW runtime DLL: next to the library, or where Debian's MinGW-w64 puts it."""
    places = [beside, Path("/usr/x86_64-w64-mingw32/lib")]
    places += sorted(Path("/usr/lib/gcc/x86_64-w64-mingw32").glob("*-posix"))
    places += sorted(Path("/usr/lib/gcc/x86_64-w64-mingw32").glob("*"))
    for place in places:
        for candidate in (place / name, place / name.lower()):
            if candidate.is_file():
                return candidate
    return None


# ---- sdist -------------------------------------------------------------------------------

def write_sdist(directory: Path) -> str:
    project = read_project()
    base = _base_name(project)
    directory.mkdir(parents=True, exist_ok=True)
    name = f"{base}.tar.gz"
    mtime = int(os.environ.get("SOURCE_DATE_EPOCH", _EPOCH_1980))
    with tarfile.open(directory / name, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        def add(arcname: str, data: bytes) -> None:
            info = tarfile.TarInfo(f"{base}/{arcname}")
            info.size, info.mtime, info.mode = len(data), mtime, 0o644
            tar.addfile(info, io.BytesIO(data))

        add("PKG-INFO", metadata(project).encode())
        for rel in _sdist_sources():
            add(rel, (PROJECT_DIR / rel).read_bytes())
    return name


def _sdist_sources() -> list[str]:
    files = [f for f in _SDIST_FILES if (PROJECT_DIR / f).is_file()]
    for top in _SDIST_DIRS:
        for path in sorted((PROJECT_DIR / top).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix in (
                    ".py", ".typed", ".md"):
                files.append(path.relative_to(PROJECT_DIR).as_posix())
    return files


# ---- command line ------------------------------------------------------------------------

def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="Build the iocpsrv Python wheel or sdist.")
    ap.add_argument("what", choices=["wheel", "sdist"])
    ap.add_argument("--native", help="the library to bundle (libiocpsrv.so or iocpsrv.dll); "
                                     "'none' for a wheel without one")
    ap.add_argument("--out", default="dist", help="output directory (default: dist)")
    args = ap.parse_args(argv)
    try:
        if args.what == "sdist":
            name = write_sdist(Path(args.out))
        elif args.native == "none":
            name = write_wheel(Path(args.out), None)
        else:
            name = write_wheel(Path(args.out), find_native(args.native))
    except (NativeLibraryMissing, ValueError) as e:
        print(e, file=sys.stderr)
        return 1
    print(Path(args.out) / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
