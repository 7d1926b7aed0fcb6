"""Move a FAISS index to the GPU when faiss-gpu and a GPU it has code for are present; keep it on
CPU otherwise. A faiss GPU build carries kernels for the architectures it was compiled for only
(the faiss-gpu-cu12 wheels: sm_70 and sm_80, none for an H100's sm_90), and on a GPU it has no code
for, faiss aborts the process at the first kernel launch: so the GPU's compute capability is checked
against the build's code (index/cuda_archs.py) before any index moves."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import faiss

from index.cuda_archs import GpuCode, device_capability, library_code

log = logging.getLogger(__name__)


def faiss_gpu_code() -> set[GpuCode]:
    """The GPU code of the installed faiss: its own libraries and those its wheel bundles beside it."""
    package = Path(faiss.__file__).resolve().parent
    libraries = [*package.glob("*.so*"), *(p for libs in package.parent.glob("faiss*.libs") for p in libs.glob("*.so*"))]
    return {code for library in libraries for code in library_code(library)}


def gpu_problem(capability: tuple[int, int] | None, code: set[GpuCode]) -> str | None:
    """Why this faiss build cannot run on a GPU of `capability` (None: the driver did not say), or
    None when it can."""
    if capability is None:
        return "the CUDA driver reports no compute capability for GPU 0"
    if not code:
        return "this faiss build carries no GPU code that could be read"
    if any(c.runs_on(capability) for c in code):
        return None
    return (f"this faiss build has code for {', '.join(map(str, sorted(code)))} only, and GPU 0 is "
            f"sm_{capability[0]}{capability[1]}: install a faiss GPU build with code for it (faiss-gpu)")


@functools.lru_cache(maxsize=1)
def gpu_count() -> int:
    """The GPUs faiss can run indexes on: 0 for faiss-cpu, without a GPU, or when GPU 0 is of an
    architecture this build has no code for (said once in the log)."""
    get = getattr(faiss, "get_num_gpus", None)  # faiss-cpu builds have no GPU functions
    count = int(get()) if get else 0
    if count == 0:
        return 0
    problem = gpu_problem(device_capability(0), faiss_gpu_code())
    if problem is not None:
        log.warning("keeping FAISS indexes on CPU: %s", problem)
        return 0
    return count


def maybe_to_gpu(index: faiss.Index) -> faiss.Index:
    """The same index on GPU 0 if one is usable, else `index` unchanged."""
    if gpu_count() == 0:
        return index
    try:
        resources = faiss.StandardGpuResources()
        gpu_index = faiss.index_cpu_to_gpu(resources, 0, index)
        gpu_index.referenced_resources = resources  # keep the resources alive with the index
        return gpu_index
    except RuntimeError as e:  # e.g. an index type with no GPU implementation
        log.warning("keeping FAISS index on CPU: %s", e)
        return index
