"""The GPU code a CUDA library carries, read from its ELF file, and whether it runs on a GPU: a
faiss build without code for the GPU must keep indexes on the CPU (faiss aborts at the first
kernel launch otherwise)."""

import struct
from pathlib import Path

import faiss
import pytest

from index.cuda_archs import FATBIN_MAGIC, GpuCode, library_code
from index.gpu import faiss_gpu_code, gpu_problem

PTX, SASS = 1, 2
ENTRY_HEADER_BYTES = 64


def fatbin(entries: list[tuple[int, int, bytes]]) -> bytes:
    """A fat binary as nvcc lays it out: a 16-byte header, then per entry a header (kind, version,
    header size, payload size, ..., arch at byte 28) and its payload."""
    body = b""
    for kind, arch, payload in entries:
        header = struct.pack("<HHIQ", kind, 0x0101, ENTRY_HEADER_BYTES, len(payload)) + bytes(12) + struct.pack("<I", arch)
        body += header.ljust(ENTRY_HEADER_BYTES, b"\0") + payload
    return struct.pack("<IHHQ", FATBIN_MAGIC, 1, 16, len(body)) + body


def elf_with_section(name: str, content: bytes) -> bytes:
    """A 64-bit little-endian ELF file of three sections: none, `name` holding `content`, .shstrtab."""
    strings = b"\0" + name.encode() + b"\0.shstrtab\0"
    content_at = 64
    strings_at = content_at + len(content)
    sections_at = (strings_at + len(strings) + 7) // 8 * 8

    def section(name_offset: int, kind: int, offset: int, size: int) -> bytes:
        return struct.pack("<IIQQQQIIQQ", name_offset, kind, 0, 0, offset, size, 0, 0, 1, 0)

    header = (b"\x7fELF" + bytes([2, 1, 1]) + bytes(9) + struct.pack("<HHIQQQIHHHHHH", 3, 62, 1, 0, 0, sections_at, 0,
                                                                     64, 0, 0, 64, 3, 2))
    table = section(0, 0, 0, 0) + section(1, 1, content_at, len(content)) + section(2 + len(name), 3, strings_at, len(strings))
    return (header + content + strings).ljust(sections_at, b"\0") + table


def test_the_code_of_every_fat_binary_in_the_section_is_read(tmp_path: Path):
    two = fatbin([(SASS, 70, b"x" * 40), (SASS, 80, b"y" * 24)]) + bytes(8) + fatbin([(PTX, 80, b"ptx text")])
    library = tmp_path / "libkernels.so"
    library.write_bytes(elf_with_section(".nv_fatbin", two))
    assert library_code(library) == {GpuCode("sass", 70), GpuCode("sass", 80), GpuCode("ptx", 80)}


def test_a_library_without_a_fatbin_section_or_not_an_elf_file_has_no_gpu_code(tmp_path: Path):
    (tmp_path / "other.so").write_bytes(elf_with_section(".text", fatbin([(SASS, 90, b"z")])))
    (tmp_path / "notes.txt").write_text("not a library")
    (tmp_path / "empty.so").write_bytes(b"")
    assert [library_code(tmp_path / n) for n in ("other.so", "notes.txt", "empty.so")] == [set(), set(), set()]


@pytest.mark.skipif(hasattr(faiss, "StandardGpuResources"), reason="a faiss GPU build is installed")
def test_faiss_cpu_has_no_gpu_code():
    assert faiss_gpu_code() == set()


@pytest.mark.parametrize("code, capability, runs", [
    (GpuCode("sass", 80), (8, 0), True),
    (GpuCode("sass", 80), (8, 6), True),  # within a major, newer minors run older SASS
    (GpuCode("sass", 86), (8, 0), False),
    (GpuCode("sass", 80), (9, 0), False),  # not across majors: the H100 and sm_80-only builds
    (GpuCode("ptx", 80), (9, 0), True),  # the driver compiles PTX for newer GPUs
    (GpuCode("ptx", 90), (8, 6), False),
])
def test_which_code_runs_on_which_gpu(code: GpuCode, capability: tuple[int, int], runs: bool):
    assert code.runs_on(capability) is runs


def test_faiss_keeps_indexes_on_cpu_on_a_gpu_its_build_has_no_code_for():
    wheel_cu12 = {GpuCode("sass", 70), GpuCode("sass", 80)}  # what faiss-gpu-cu12 1.14.1.post1's libfaiss carries
    problem = gpu_problem((9, 0), wheel_cu12)
    assert problem is not None and "sm_70, sm_80" in problem and "sm_90" in problem
    assert gpu_problem((8, 0), wheel_cu12) is None
    assert gpu_problem((9, 0), wheel_cu12 | {GpuCode("sass", 90)}) is None
    assert gpu_problem(None, wheel_cu12) is not None and gpu_problem((9, 0), set()) is not None
