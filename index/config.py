"""Where indexes live and which kind each one is, in one small frozen config: the server builds it
from its settings (EMBEDSERVE_INDEX_BACKEND, EMBEDSERVE_MILVUS_URI, ...), the CLI and benchmarks
from their options; nothing in index/ reads the environment."""

from __future__ import annotations

from dataclasses import dataclass, field

BACKENDS = ("faiss", "milvus")

# The FAISS kind by size, when no kind is asked for (index.vector_index.choose_kind). Below
# FLAT_MAX_COUNT an exact scan is fast enough (100k x 512 floats is ~10 ms per query on one core)
# and needs no tuning; up to HNSW_MAX_COUNT an HNSW graph keeps recall high at ~1 ms per query for
# ~1.2x the memory of the vectors; beyond that IVF-PQ compresses each vector to PQ codes so that
# millions fit in RAM. bench/index_search.py measures the three on one machine.
FLAT_MAX_COUNT = 100_000
HNSW_MAX_COUNT = 2_000_000


@dataclass(frozen=True)
class IndexConfig:
    backend: str = "faiss"  # faiss: in-process indexes under artifacts/indexes; milvus: collections in Milvus
    milvus_uri: str = ""  # a file path: Milvus Lite, embedded; http://host:19530: a Milvus server; "": <artifacts>/milvus.db
    milvus_token: str | None = field(default=None, repr=False)  # "user:password" or an API key; never logged
    flat_max_count: int = FLAT_MAX_COUNT  # below this many vectors an index is exact (flat)
    hnsw_max_count: int = HNSW_MAX_COUNT  # below this many, HNSW; from here on, IVF-PQ

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"index backend {self.backend!r} is not one of {BACKENDS}")
        if not 0 <= self.flat_max_count <= self.hnsw_max_count:
            raise ValueError(f"flat_max_count ({self.flat_max_count}) must be between 0 and hnsw_max_count "
                             f"({self.hnsw_max_count})")
