"""Where an index's versions are kept, behind one interface: the server, the jobs and the CLI
build, save, open and prune indexes through an `IndexStore`, and `open_index_store` (the one
place that looks at `IndexConfig.backend`) says which.

- `FaissStore`: in-process FAISS indexes, one folder per version under `artifacts/indexes/<name>/`
  with a `current` pointer (index.vector_index).
- `MilvusStore`: one Milvus collection per version, the index name a Milvus alias on the current
  one, promotion an `alter_alias` (index.milvus_index); Milvus Lite for a file URI.

Both hand out objects with the same methods (`SearchIndex`): search, vector, metadata, ids,
add, remove, len, `in`, and the `manifest` that names the model version queries must embed with.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from index.config import IndexConfig
from index.vector_index import IndexManifest, VectorIndex, indexes_dir, open_index
from runtime.bundle import BundleError
from runtime.files import CURRENT_FILE, VersionError, check_name, exclusive, file_stamp, lock_file, names_under, prune_versions, version_folder


class SearchIndex(Protocol):
    """What the server needs of one index version, whichever backend holds it."""

    dim: int
    kind: str  # flat | hnsw | ivfpq
    model: str | None
    model_version: str | None
    manifest: IndexManifest | None

    def __len__(self) -> int: ...
    def __contains__(self, id: int) -> bool: ...
    def add(self, ids: np.ndarray, vectors: np.ndarray, metadata: Sequence[dict[str, Any]] | None = None) -> None: ...
    def remove(self, ids: Sequence[int] | np.ndarray) -> int: ...
    def search(self, queries: np.ndarray, k: int, where: dict[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]: ...
    def vector(self, id: int) -> np.ndarray: ...
    def vectors(self, ids: Sequence[int] | np.ndarray) -> np.ndarray: ...
    def metadata(self, ids: Sequence[int] | np.ndarray) -> list[dict[str, Any] | None]: ...
    def ids(self) -> np.ndarray: ...


class IndexStore(Protocol):
    """Versions of named indexes: build one, save it (as the current version), open, list, prune."""

    config: IndexConfig

    def names(self) -> list[str]: ...
    def current_version(self, name: str) -> str: ...
    def open(self, name: str, version: str | None = None) -> SearchIndex: ...
    def build(self, name: str, ids: np.ndarray, vectors: np.ndarray, metadata: Sequence[dict[str, Any]] | None = None,
              kind: str | None = None, model: str | None = None, model_version: str | None = None) -> SearchIndex: ...
    def save(self, index: SearchIndex, name: str, extra: dict[str, Any] | None = None, make_current: bool = True) -> str: ...
    def prune(self, name: str, keep_previous: int) -> list[str]: ...
    def stamp(self, name: str) -> Hashable | None: ...
    def close(self) -> None: ...


class FaissStore:
    """Indexes as FAISS files in `artifacts/indexes/<name>/<version>/`; saving writes a new version."""

    def __init__(self, artifacts: Path, config: IndexConfig = IndexConfig()):
        self.artifacts, self.config = Path(artifacts), config

    def names(self) -> list[str]:
        return names_under(indexes_dir(self.artifacts))

    def current_version(self, name: str) -> str:
        try:
            return version_folder(indexes_dir(self.artifacts), name, what="index").name
        except VersionError as e:
            raise BundleError(str(e)) from e

    def open(self, name: str, version: str | None = None) -> VectorIndex:
        return open_index(self.artifacts, name, version)

    def build(self, name: str, ids: np.ndarray, vectors: np.ndarray, metadata: Sequence[dict[str, Any]] | None = None,
              kind: str | None = None, model: str | None = None, model_version: str | None = None) -> VectorIndex:
        return VectorIndex.build(ids, vectors, metadata, kind, model, model_version, self.config)

    def save(self, index: VectorIndex, name: str, extra: dict[str, Any] | None = None, make_current: bool = True) -> str:
        return index.save(self.artifacts, name, extra=extra, make_current=make_current).name

    def prune(self, name: str, keep_previous: int) -> list[str]:
        return prune_versions(indexes_dir(self.artifacts) / name, keep_previous)

    def stamp(self, name: str) -> Hashable | None:
        """What changes whenever another process makes a new version of `name` current (its
        `current` pointer's inode and time), None while it has none: one `stat` a call."""
        check_name(name, "index name")  # before the name becomes a path
        return file_stamp(indexes_dir(self.artifacts) / name / CURRENT_FILE)

    def close(self) -> None:
        pass


def writing(artifacts: Path, name: str) -> AbstractContextManager[bool]:
    """Hold the write lock of index `name`: every process that writes its versions (the server's
    workers, their jobs, the CLI) takes it around reading the current version, changing it and
    saving the next, so no writer builds on a version another has already replaced."""
    return exclusive(lock_file(artifacts, f"index.{name}"))  # the same place whichever backend holds it


def open_index_store(artifacts: Path, config: IndexConfig = IndexConfig()) -> IndexStore:
    """The store `config.backend` names; pymilvus is imported only for Milvus."""
    if config.backend == "milvus":
        from index.milvus_index import MilvusStore  # the milvus extra; not needed for FAISS

        return MilvusStore(config if config.milvus_uri else replace(config, milvus_uri=str(Path(artifacts) / "milvus.db")))
    return FaissStore(artifacts, config)
