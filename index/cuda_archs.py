"""Which GPU architectures a CUDA library has code for, and which one a GPU is: a library without
code for its GPU cannot launch a kernel there ("no kernel image is available"), and faiss aborts the
process on that error rather than raising, so the check comes before the first launch.

A library's kernels are in its ELF section `.nv_fatbin`: fat binaries, each a header and entries of
machine code (SASS) for one architecture or PTX that the driver compiles for newer ones. SASS for
sm_XY runs on a GPU of compute capability X.Z with Z >= Y; PTX for compute_XY on any capability >= X.Y.
"""

from __future__ import annotations

import ctypes
import mmap
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

FATBIN_SECTIONS = (".nv_fatbin", "__nv_relfatbin")  # whole-program and relocatable device code
FATBIN_MAGIC = 0xBA55ED50
FATBIN_HEADER = struct.Struct("<IHHQ")  # magic, version, header size, size of the entries that follow
ENTRY_HEADER = struct.Struct("<HHIQ")  # kind, version, header size, payload size; the arch is at byte 28
ENTRY_ARCH = struct.Struct("<I")
ENTRY_ARCH_OFFSET = 28
ENTRY_KINDS = {1: "ptx", 2: "sass"}
# the CUDA driver API's CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR and _MINOR
CAPABILITY_MAJOR, CAPABILITY_MINOR = 75, 76


@dataclass(frozen=True, order=True)
class GpuCode:
    """One kind of code a library carries: SASS for `arch` (sm_90 is 90), or PTX for it."""

    kind: str  # "sass" or "ptx"
    arch: int  # major * 10 + minor

    def __str__(self) -> str:
        return f"sm_{self.arch}" if self.kind == "sass" else f"compute_{self.arch} (PTX)"

    def runs_on(self, capability: tuple[int, int]) -> bool:
        major, minor = capability
        if self.kind == "ptx":
            return self.arch <= major * 10 + minor
        return self.arch // 10 == major and self.arch % 10 <= minor


def _elf_sections(data: bytes | mmap.mmap, names: Iterable[str]) -> list[tuple[int, int]]:
    """(offset, size) in the file of each section of a 64-bit little-endian ELF named in `names`;
    nothing for any other file."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return []
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    if shoff == 0 or shnum == 0 or shstrndx >= shnum or shoff + shnum * shentsize > len(data):
        return []

    def header(i: int) -> tuple[int, int, int]:  # name offset, file offset, size
        base = shoff + i * shentsize
        (name,) = struct.unpack_from("<I", data, base)
        offset, size = struct.unpack_from("<QQ", data, base + 24)
        return name, offset, size

    _, strings, _ = header(shstrndx)
    wanted = {n.encode() for n in names}
    found = []
    for i in range(shnum):
        name, offset, size = header(i)
        end = data.find(b"\0", strings + name)
        if data[strings + name:end] in wanted and offset + size <= len(data):
            found.append((offset, size))
    return found


def fatbin_code(data: bytes | mmap.mmap, start: int = 0, size: int | None = None) -> set[GpuCode]:
    """The code entries of the fat binaries in data[start:start + size] (a .nv_fatbin section)."""
    end = len(data) if size is None else start + size
    found: set[GpuCode] = set()
    offset = start
    while offset + FATBIN_HEADER.size <= end:
        magic, _, header_size, entries_size = FATBIN_HEADER.unpack_from(data, offset)
        if magic != FATBIN_MAGIC:
            offset += 8  # fat binaries are 8-byte aligned, with padding between them
            continue
        entry, entries_end = offset + header_size, min(offset + header_size + entries_size, end)
        while entry + ENTRY_ARCH_OFFSET + ENTRY_ARCH.size <= entries_end:
            kind, _, entry_header_size, payload_size = ENTRY_HEADER.unpack_from(data, entry)
            (arch,) = ENTRY_ARCH.unpack_from(data, entry + ENTRY_ARCH_OFFSET)
            if kind in ENTRY_KINDS:
                found.add(GpuCode(ENTRY_KINDS[kind], arch))
            if entry_header_size == 0:
                break
            entry += entry_header_size + payload_size
        offset = max(entries_end, offset + 8)
    return found


def library_code(path: Path) -> set[GpuCode]:
    """Every architecture the ELF file `path` has GPU code for; empty for a file without any."""
    with open(path, "rb") as f:
        try:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file
            return set()
        with data:
            return {code for offset, size in _elf_sections(data, FATBIN_SECTIONS) for code in fatbin_code(data, offset, size)}


def device_capability(device: int = 0) -> tuple[int, int] | None:
    """GPU `device`'s compute capability (9, 0 for an H100), from the CUDA driver; None where there
    is no driver or no such GPU."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    handle, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGet(ctypes.byref(handle), device) != 0:
        return None
    if (cuda.cuDeviceGetAttribute(ctypes.byref(major), CAPABILITY_MAJOR, handle) != 0
            or cuda.cuDeviceGetAttribute(ctypes.byref(minor), CAPABILITY_MINOR, handle) != 0):
        return None
    return major.value, minor.value
