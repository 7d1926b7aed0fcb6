"""A job's embeddings on disk: Parquet shards of (id, source, model_version, vector), one per
batch of source positions, each written atomically, so a job killed mid-way keeps every shard it
finished and a resumed job embeds only the rest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from runtime.files import atomic_path

SHARD_PATTERN = "shard-{:06d}.parquet"


def shard_path(folder: Path, number: int) -> Path:
    return Path(folder) / SHARD_PATTERN.format(number)


def write_shard(path: Path, ids: np.ndarray, metadata: list[dict[str, Any]], model_version: str,
                vectors: np.ndarray) -> None:
    """Write one shard: `ids` (N,), a JSON metadata record each (where the item came from),
    `vectors` (N, D) float32. Atomic: the shard is complete or absent."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)  # (N, D)
    if len(ids) != len(vectors) or len(metadata) != len(ids):
        raise ValueError(f"{len(ids)} ids, {len(metadata)} metadata records and {len(vectors)} vectors")
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be (N, D), got {vectors.shape}")
    dim = vectors.shape[1]
    table = pa.table({
        "id": pa.array(np.asarray(ids, dtype=np.int64)),
        "source": pa.array([json.dumps(m, ensure_ascii=False) for m in metadata], pa.string()),
        "model_version": pa.array([model_version] * len(ids), pa.string()),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim),
    })
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_shard(path: Path) -> tuple[np.ndarray, list[dict[str, Any]], np.ndarray]:
    """(ids (N,), metadata records, vectors (N, D) float32) of one shard."""
    table = pq.read_table(path)
    column = table.column("vector").combine_chunks()
    vectors = column.values.to_numpy(zero_copy_only=False).reshape(len(column), column.type.list_size)
    metadata = [json.loads(text) for text in table.column("source").to_pylist()]
    return table.column("id").to_numpy(), metadata, vectors.astype(np.float32, copy=False)


def concatenate(parts: list[tuple[np.ndarray, list[dict[str, Any]], np.ndarray]]) -> tuple[np.ndarray, list[dict[str, Any]], np.ndarray]:
    """Shards' (ids, metadata, vectors) as one."""
    if not parts:
        return np.empty(0, np.int64), [], np.empty((0, 0), np.float32)
    return (np.concatenate([p[0] for p in parts]), [m for p in parts for m in p[1]],
            np.concatenate([p[2] for p in parts]).astype(np.float32, copy=False))
