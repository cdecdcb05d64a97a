"""What a native library needs, read from the file itself (standard library only): the
wheel platform tag it deserves and, for a Windows DLL, the non-system DLLs that must
travel with it.

The tag comes from the binary, not from the machine building the wheel, so one Linux
host builds both the Linux wheel and the Windows one (from the MinGW cross build).

- ELF (Linux): ``manylinux_2_X_<arch>`` where 2.X is the newest GLIBC_ symbol version
  the library needs (PEP 600: it then loads on any distribution with glibc >= 2.X),
  provided it links only libraries every such distribution has; otherwise the honest
  ``linux_<arch>`` (installs only where it was built, as pip's tags go).
- PE (Windows): ``win_amd64`` / ``win32`` / ``win_arm64`` from the machine field.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

__all__ = ["NativeInfo", "inspect_native", "MANYLINUX_LIBRARIES", "WINDOWS_SYSTEM_DLLS"]

# The libraries the manylinux policies let a wheel link against without bundling
# (PEP 600 / auditwheel's policy list, the part a C library like this can use).
MANYLINUX_LIBRARIES = frozenset({
    "libc.so.6", "libm.so.6", "libdl.so.2", "librt.so.1", "libpthread.so.0",
    "libgcc_s.so.1", "libresolv.so.2", "libutil.so.1", "libnsl.so.1",
    "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1",
})

# DLLs every Windows has; anything else a DLL imports must be shipped beside it.
WINDOWS_SYSTEM_DLLS = frozenset({
    "kernel32.dll", "ntdll.dll", "msvcrt.dll", "ucrtbase.dll", "ws2_32.dll",
    "mswsock.dll", "advapi32.dll", "user32.dll", "gdi32.dll", "shell32.dll",
    "ole32.dll", "iphlpapi.dll", "bcrypt.dll", "secur32.dll", "crypt32.dll",
})

_ELF_MACHINES = {62: "x86_64", 183: "aarch64"}
_PE_MACHINES = {0x8664: "win_amd64", 0x14C: "win32", 0xAA64: "win_arm64"}


class NativeInfo:
    """A native library as the wheel needs to know it."""

    def __init__(self, path: Path, platform_tag: str, kind: str,
                 needed: list[str], foreign: list[str]):
        self.path = path
        self.platform_tag = platform_tag  # e.g. "manylinux_2_34_x86_64", "win_amd64"
        self.kind = kind  # "elf" or "pe"
        self.needed = needed  # every library it links (DT_NEEDED / PE imports)
        self.foreign = foreign  # those not on every target system: must be bundled

    @property
    def package_name(self) -> str:
        """The file name the binding's loader looks for inside the package."""
        return "libiocpsrv.so" if self.kind == "elf" else "iocpsrv.dll"


def inspect_native(path: str | Path) -> NativeInfo:
    """Read the library at path; ValueError if it is neither ELF nor PE, or not one
    this binding can use (32-bit ELF, an unknown machine)."""
    path = Path(path)
    data = path.read_bytes()
    if data[:4] == b"\x7fELF":
        return _inspect_elf(path, data)
    if data[:2] == b"MZ":
        return _inspect_pe(path, data)
    raise ValueError(f"{path}: not a shared library (neither ELF nor PE)")


# ---- ELF ------------------------------------------------------------------------------

_SHT_DYNAMIC = 6
_SHT_GNU_VERNEED = 0x6FFFFFFE
_DT_NEEDED = 1


def _inspect_elf(path: Path, data: bytes) -> NativeInfo:
    if data[4] != 2 or data[5] != 1:
        raise ValueError(f"{path}: only 64-bit little-endian ELF libraries are supported")
    machine = struct.unpack_from("<H", data, 18)[0]
    arch = _ELF_MACHINES.get(machine)
    if arch is None:
        raise ValueError(f"{path}: unsupported ELF machine {machine}")
    sections = _elf_sections(data)
    needed: list[str] = []
    glibc: list[tuple[int, int]] = []
    for kind, offset, size, link, info in sections:
        strings = sections[link]
        if kind == _SHT_DYNAMIC:
            needed += _elf_needed(data, offset, size, strings)
        elif kind == _SHT_GNU_VERNEED:
            glibc += _elf_glibc_versions(data, offset, info, strings)
    foreign = [lib for lib in needed if lib not in MANYLINUX_LIBRARIES]
    if foreign or not glibc:
        tag = f"linux_{arch}"
    else:
        major, minor = max(glibc)
        tag = f"manylinux_{major}_{minor}_{arch}"
    return NativeInfo(path, tag, "elf", needed, foreign)


def _elf_sections(data: bytes) -> list[tuple[int, int, int, int, int]]:
    """(type, offset, size, link, info) of every section header."""
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    out = []
    for i in range(shnum):
        _name, kind, _flags, _addr, offset, size, link, info = struct.unpack_from(
            "<IIQQQQII", data, shoff + i * shentsize)
        out.append((kind, offset, size, link, info))
    return out


def _cstring(data: bytes, offset: int) -> str:
    return data[offset:data.index(b"\0", offset)].decode("ascii", "replace")


def _elf_needed(data: bytes, offset: int, size: int, strtab: tuple) -> list[str]:
    out = []
    for tag, value in struct.iter_unpack("<qQ", data[offset:offset + size]):
        if tag == _DT_NEEDED:
            out.append(_cstring(data, strtab[1] + value))
    return out


def _elf_glibc_versions(data: bytes, offset: int, count: int,
                        strtab: tuple) -> list[tuple[int, int]]:
    """The GLIBC_X.Y versions of the version-needed entries (Elf64_Verneed chain)."""
    out = []
    for _ in range(count):
        _version, aux_count, _file, aux, next_entry = struct.unpack_from("<HHIII", data, offset)
        at = offset + aux
        for _ in range(aux_count):
            _hash, _flags, _other, name, next_aux = struct.unpack_from("<IHHII", data, at)
            match = re.fullmatch(r"GLIBC_(\d+)\.(\d+)(?:\.\d+)?", _cstring(data, strtab[1] + name))
            if match:
                out.append((int(match[1]), int(match[2])))
            at += next_aux
        offset += next_entry
    return out


# ---- PE -------------------------------------------------------------------------------

def _inspect_pe(path: Path, data: bytes) -> NativeInfo:
    pe = struct.unpack_from("<I", data, 0x3C)[0]
    if data[pe:pe + 4] != b"PE\0\0":
        raise ValueError(f"{path}: not a PE file")
    machine, nsections = struct.unpack_from("<HH", data, pe + 4)
    tag = _PE_MACHINES.get(machine)
    if tag is None:
        raise ValueError(f"{path}: unsupported PE machine {machine:#x}")
    optional_size = struct.unpack_from("<H", data, pe + 20)[0]
    optional = pe + 24
    magic = struct.unpack_from("<H", data, optional)[0]
    directories = optional + (112 if magic == 0x20B else 96)  # PE32+ or PE32
    import_rva = struct.unpack_from("<I", data, directories + 8)[0]  # directory 1
    sections = []
    for i in range(nsections):
        start = optional + optional_size + i * 40
        vsize, vaddr, _rawsize, rawptr = struct.unpack_from("<IIII", data, start + 8)
        sections.append((vaddr, vsize, rawptr))

    def file_offset(rva: int) -> int:
        for vaddr, vsize, rawptr in sections:
            if vaddr <= rva < vaddr + vsize:
                return rva - vaddr + rawptr
        raise ValueError(f"{path}: RVA {rva:#x} is in no section")

    needed = []
    if import_rva:
        at = file_offset(import_rva)
        while True:
            descriptor = struct.unpack_from("<IIIII", data, at)
            if not any(descriptor):
                break
            needed.append(_cstring(data, file_offset(descriptor[3])))
            at += 20
    foreign = [dll for dll in needed if not _is_windows_system_dll(dll)]
    return NativeInfo(path, tag, "pe", needed, foreign)


def _is_windows_system_dll(name: str) -> bool:
    lower = name.lower()
    return lower in WINDOWS_SYSTEM_DLLS or lower.startswith(("api-ms-win-", "ext-ms-win-"))
