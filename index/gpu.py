"""Move a FAISS index to the GPU when faiss-gpu and a GPU are present; keep it on CPU otherwise."""

from __future__ import annotations

import logging

import faiss

log = logging.getLogger(__name__)


def gpu_count() -> int:
    get = getattr(faiss, "get_num_gpus", None)  # faiss-cpu builds have no GPU functions
    return int(get()) if get else 0


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
