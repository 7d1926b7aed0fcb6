"""A FAISS index of unit vectors with int64 ids and per-id JSON metadata in SQLite.

Vectors and queries are L2-normalised, so inner product is cosine similarity. Saved indexes
live in `artifacts/indexes/<name>/<version>/` (index.faiss, metadata.sqlite, manifest.json),
written atomically through runtime.files.write_versioned_dir, with a `current` pointer per name.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from runtime.bundle import MANIFEST_FILE, BundleError, dataclass_from_dict, iter_current, read_manifest
from runtime.files import VersionError, atomic_write_text, version_folder, write_versioned_dir
from runtime.vectors import unit_rows
from index.config import FLAT_MAX_COUNT, HNSW_MAX_COUNT, IndexConfig  # noqa: F401 (the thresholds' home)
from index.gpu import gpu_count, maybe_to_gpu

log = logging.getLogger(__name__)

INDEX_SCHEMA_VERSION = 1
INDEX_FILE = "index.faiss"
METADATA_FILE = "metadata.sqlite"
KINDS = ("flat", "hnsw", "ivfpq")

HNSW_M = 32  # graph neighbours per node: FAISS's usual recall/memory balance
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 64
IVF_NPROBE = 16  # inverted lists scanned per query


def choose_kind(count: int, config: IndexConfig = IndexConfig()) -> str:
    """The index kind for `count` vectors: exact "flat", then "hnsw", then "ivfpq" for millions
    (the thresholds are the config's, EMBEDSERVE_INDEX_FLAT_MAX_COUNT and _HNSW_MAX_COUNT)."""
    if count < config.flat_max_count:
        return "flat"
    return "hnsw" if count < config.hnsw_max_count else "ivfpq"


def check_items(dim: int, ids: np.ndarray, vectors: np.ndarray, metadata: Sequence[dict[str, Any]] | None
                ) -> tuple[np.ndarray, np.ndarray]:
    """`ids` (N,) int64 and `vectors` (N, D) float32 as an index takes them; ValueError saying what
    is wrong otherwise (shapes, NaN, repeated ids). Every backend adds through it."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)  # (N,)
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != dim or len(ids) != len(vectors) or ids.ndim != 1:
        raise ValueError(f"expected ids (N,) and vectors (N, {dim}); got {ids.shape} and {vectors.shape}")
    if metadata is not None and len(metadata) != len(ids):
        raise ValueError(f"{len(metadata)} metadata dicts for {len(ids)} ids")
    if not np.isfinite(vectors).all():
        raise ValueError("vectors contain NaN or infinity")
    if len(np.unique(ids)) != len(ids):
        raise ValueError("ids must be distinct")
    return ids, vectors


def check_query(dim: int, queries: np.ndarray, k: int) -> np.ndarray:
    """`queries` (Q, D) as unit float32 rows; ValueError for a wrong shape or k < 1."""
    queries = np.asarray(queries, dtype=np.float32)
    if queries.ndim != 2 or queries.shape[1] != dim:
        raise ValueError(f"queries must be (Q, {dim}), got {queries.shape}")
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    return unit_rows(queries)  # (Q, D)


def check_where(where: dict[str, Any] | None) -> dict[str, Any]:
    """A metadata filter: field name -> the value it must equal (a string, number or boolean)."""
    for key, value in (where or {}).items():
        if not isinstance(key, str) or not key.replace("_", "").isalnum():
            raise ValueError(f"filter field {key!r}: a metadata field name is letters, digits and underscores")
        if not isinstance(value, (str, int, float, bool)):
            raise ValueError(f"filter on {key!r}: the value must be a string, number or boolean, not {type(value).__name__}")
        if isinstance(value, int) and not -(2**63) <= value < 2**63:  # SQLite's integers are int64
            raise ValueError(f"filter on {key!r}: an integer must fit in 64 bits (±9.2e18); send a smaller one")
    return dict(where or {})


def indexes_dir(artifacts: Path) -> Path:
    return Path(artifacts) / "indexes"


@dataclass(frozen=True)
class IndexManifest:
    """What an index's `manifest.json` holds."""

    name: str  # the index's name, as /search asks for it
    model: str | None  # the model whose embeddings it holds (queries must use the same one)
    model_version: str | None  # that model's bundle version
    dim: int  # vector dimension
    count: int  # live vectors
    faiss_kind: str  # one of KINDS
    faiss_description: str = ""  # FAISS's own name for the index type, for humans
    metric: str = "cosine"  # inner product of L2-normalised vectors
    version: str = ""  # filled in by save
    created_at: str = ""  # ISO-8601 UTC, filled in by save
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. the source it was built from
    backend: str = "faiss"  # where the vectors are: faiss (index.faiss beside the manifest) or milvus (a collection)
    schema_version: int = INDEX_SCHEMA_VERSION

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IndexManifest:
        if data.get("schema_version") != INDEX_SCHEMA_VERSION:
            raise BundleError(f"index manifest schema {data.get('schema_version')!r} is not {INDEX_SCHEMA_VERSION}; rebuild the index")
        return dataclass_from_dict(cls, data)


def _new_faiss_index(kind: str, dim: int) -> faiss.Index:
    if kind == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    if kind == "hnsw":
        hnsw = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        hnsw.hnsw.efSearch = HNSW_EF_SEARCH
        return faiss.IndexIDMap2(hnsw)
    if kind == "ivfpq":
        # IVF takes ids natively; IndexIDMap over IVF would mis-map ids after a removal.
        # Untrained until the first add, which decides nlist from the data's size.
        return None
    raise ValueError(f"unknown index kind {kind!r}; use one of {KINDS}")


def _new_ivfpq(dim: int, train: np.ndarray) -> faiss.Index:
    count = len(train)
    nlist = int(min(max(1, 4 * np.sqrt(count)), max(1, count // 39)))  # FAISS wants ~39 points per list
    sub_quantizers = next(m for m in (dim // 4, dim // 8, dim // 2, dim) if m >= 1 and dim % m == 0)
    bits = 8 if count >= 256 * 39 else max(1, int(np.log2(max(2, count // 39))))
    index = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, nlist, sub_quantizers, bits, faiss.METRIC_INNER_PRODUCT)
    index.train(train)
    index.nprobe = min(IVF_NPROBE, nlist)
    index.set_direct_map_type(faiss.DirectMap.Hashtable)  # reconstruct(id) and remove_ids by id
    return index


class VectorIndex:
    """Unit vectors under int64 ids, searched by cosine, each with a JSON metadata dict.

    Thread-safe: one lock guards FAISS and SQLite, since FAISS does not allow a search during
    an add and a SQLite connection is shared by the server's worker threads.
    """

    def __init__(self, dim: int, kind: str = "flat", model: str | None = None, model_version: str | None = None):
        if kind not in KINDS:
            raise ValueError(f"unknown index kind {kind!r}; use one of {KINDS}")
        self.dim, self.kind = int(dim), kind
        self.model, self.model_version = model, model_version
        self.manifest: IndexManifest | None = None  # set when loaded from or saved to disk
        self.index: faiss.Index | None = _new_faiss_index(kind, self.dim)
        self._search_index: faiss.Index | None = None  # a GPU copy when one is usable; rebuilt after changes
        # HNSW cannot delete: removed ids stay in the graph and are filtered out of every search.
        self._removed: set[int] = set()
        self._selector: faiss.IDSelector | None = None  # excludes _removed from HNSW searches
        self._lock = threading.RLock()
        self._db = sqlite3.connect(":memory:", check_same_thread=False)
        self._db.executescript(
            "CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, metadata TEXT NOT NULL);"
            "CREATE TABLE IF NOT EXISTS removed (id INTEGER PRIMARY KEY);"
        )

    @classmethod
    def build(
        cls,
        ids: np.ndarray,
        vectors: np.ndarray,
        metadata: Sequence[dict[str, Any]] | None = None,
        kind: str | None = None,
        model: str | None = None,
        model_version: str | None = None,
        config: IndexConfig = IndexConfig(),
    ) -> VectorIndex:
        """A new index holding `vectors` (N, D) under `ids` (N,); kind chosen by N (and the config's
        thresholds) unless given."""
        index = cls(np.asarray(vectors).shape[1], kind or choose_kind(len(vectors), config), model, model_version)
        index.add(ids, vectors, metadata)
        return index

    def __len__(self) -> int:
        with self._lock:
            return (self.index.ntotal if self.index is not None else 0) - len(self._removed)

    def add(self, ids: np.ndarray, vectors: np.ndarray, metadata: Sequence[dict[str, Any]] | None = None) -> None:
        """Add `vectors` (N, D), normalised here, under new, distinct `ids` (N,) with `metadata` (N dicts)."""
        ids, vectors = check_items(self.dim, ids, vectors, metadata)  # (N,), (N, D)
        if len(ids) == 0:
            return
        unit = unit_rows(vectors)  # (N, D)
        rows = [(int(i), json.dumps(m if metadata is not None else {})) for i, m in zip(ids, metadata or [None] * len(ids))]
        with self._lock:
            try:
                with self._db:  # one transaction: an id already present rolls every row back
                    self._db.executemany("INSERT INTO items (id, metadata) VALUES (?, ?)", rows)
            except sqlite3.IntegrityError:
                taken = self._existing(ids)
                raise ValueError(f"ids already in the index: {taken[:10]}; remove them first or choose new ids") from None
            try:
                if self.index is None:  # an untrained IVF-PQ: the first vectors train it
                    self.index = _new_ivfpq(self.dim, unit)
                self.index.add_with_ids(unit, ids)
            except BaseException:
                with self._db:
                    self._db.executemany("DELETE FROM items WHERE id = ?", [(r[0],) for r in rows])
                raise
            self._search_index = None

    def remove(self, ids: Sequence[int] | np.ndarray) -> int:
        """Remove `ids` (unknown ids are ignored); returns how many were removed."""
        present = self._existing(np.asarray(ids, dtype=np.int64))
        if not present:
            return 0
        with self._lock, self._db:
            self._db.executemany("DELETE FROM items WHERE id = ?", [(i,) for i in present])
            if self.kind == "hnsw":
                self._removed.update(present)
                self._selector = None
                self._db.executemany("INSERT INTO removed (id) VALUES (?)", [(i,) for i in present])
            else:
                self.index.remove_ids(np.asarray(present, dtype=np.int64))
            self._search_index = None
        return len(present)

    def search(self, queries: np.ndarray, k: int, where: dict[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest ids by cosine to each query (Q, D): scores (Q, k) float32, ids (Q, k) int64;
        with `where`, only among items whose metadata has each of its fields equal to its value.

        Rows are padded with score -inf and id -1 when fewer than k vectors exist (or match)."""
        unit = check_query(self.dim, queries, k)  # (Q, D)
        where = check_where(where)
        with self._lock:
            if self.index is None or self.index.ntotal == 0:
                return np.full((len(unit), k), -np.inf, np.float32), np.full((len(unit), k), -1, np.int64)
            selector = self._where_selector(where) if where else None  # only live ids match: no removed ones
            params = None
            if self.kind == "hnsw":
                params = faiss.SearchParametersHNSW(efSearch=max(HNSW_EF_SEARCH, k))  # ef below k caps the hits
                if selector is not None or self._removed:
                    params.sel = selector if selector is not None else self._removed_selector()
            elif selector is not None:
                params = (faiss.SearchParametersIVF(sel=selector, nprobe=self.index.nprobe) if self.kind == "ivfpq"
                          else faiss.SearchParameters(sel=selector))
            searcher = self._searcher() if selector is None else self.index  # GPU indexes take no selector
            scores, ids = searcher.search(unit, k, params=params)  # (Q, k), (Q, k)
        scores[ids < 0] = -np.inf
        return scores, ids

    def vector(self, id: int) -> np.ndarray:
        """The stored unit vector of `id` (D,) (approximate for IVF-PQ); KeyError if absent."""
        with self._lock:
            if not self._existing(np.asarray([id], dtype=np.int64)):
                raise KeyError(id)
            return self.index.reconstruct(int(id))

    def vectors(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """The stored unit vectors of `ids` (N, D), in their order, read in one call; KeyError for
        an id not in the index."""
        ids = np.asarray(ids, dtype=np.int64)  # (N,)
        with self._lock:
            missing = set(ids.tolist()) - set(self._existing(ids))
            if missing:
                raise KeyError(min(missing))
            return self.index.reconstruct_batch(ids) if len(ids) else np.empty((0, self.dim), np.float32)  # (N, D)

    def metadata(self, ids: Sequence[int] | np.ndarray) -> list[dict[str, Any] | None]:
        """The metadata dict of each id, None for ids not in the index."""
        ids = [int(i) for i in ids]
        found: dict[int, dict[str, Any]] = {}
        with self._lock:
            for chunk in _chunks(ids):
                marks = ",".join("?" * len(chunk))
                for i, text in self._db.execute(f"SELECT id, metadata FROM items WHERE id IN ({marks})", chunk):
                    found[i] = json.loads(text)
        return [found.get(i) for i in ids]

    def ids(self) -> np.ndarray:
        """Every live id, ascending (N,) int64."""
        with self._lock:
            return np.fromiter((r[0] for r in self._db.execute("SELECT id FROM items ORDER BY id")), np.int64)

    def __contains__(self, id: int) -> bool:
        return bool(self._existing(np.asarray([id], dtype=np.int64)))

    def _existing(self, ids: np.ndarray) -> list[int]:
        out: list[int] = []
        with self._lock:
            for chunk in _chunks([int(i) for i in ids]):
                marks = ",".join("?" * len(chunk))
                out += [r[0] for r in self._db.execute(f"SELECT id FROM items WHERE id IN ({marks})", chunk)]
        return out

    def _where_selector(self, where: dict[str, Any]) -> faiss.IDSelector:
        """The live ids whose metadata matches `where`, as a FAISS selector (SQLite's JSON functions)."""
        clauses = " AND ".join("json_extract(metadata, ?) = ?" for _ in where)
        args = [a for key, value in where.items() for a in (f'$."{key}"', value)]
        matching = np.fromiter((r[0] for r in self._db.execute(f"SELECT id FROM items WHERE {clauses}", args)), np.int64)
        selector = faiss.IDSelectorBatch(matching)
        selector.referenced_ids = matching  # the batch copies them, but keep the array with it anyway
        return selector

    def _removed_selector(self) -> faiss.IDSelector:
        if self._selector is None:
            batch = faiss.IDSelectorBatch(np.fromiter(self._removed, np.int64, len(self._removed)))
            self._selector = faiss.IDSelectorNot(batch)
            self._selector.referenced_batch = batch  # IDSelectorNot keeps only a pointer: keep the batch alive
        return self._selector

    def _searcher(self) -> faiss.Index:
        # HNSW (and any selector search) has no GPU implementation; flat and IVF-PQ do.
        if self.kind == "hnsw" or gpu_count() == 0:
            return self.index
        if self._search_index is None:
            self._search_index = maybe_to_gpu(self.index)
        return self._search_index

    # --- on disk -------------------------------------------------------------------------

    def save(self, artifacts: Path, name: str, version: str | None = None, extra: dict[str, Any] | None = None,
             make_current: bool = True) -> Path:
        """Write `artifacts/indexes/<name>/<version>/` atomically and make it current; returns the folder."""

        def fill(tmp: Path, version: str) -> None:
            with self._lock:
                faiss.write_index(self.index if self.index is not None else _new_faiss_index("flat", self.dim), str(tmp / INDEX_FILE))
                destination = sqlite3.connect(tmp / METADATA_FILE)
                try:
                    self._db.backup(destination)
                finally:
                    destination.close()
                manifest = IndexManifest(
                    name=name,
                    model=self.model,
                    model_version=self.model_version,
                    dim=self.dim,
                    count=len(self),
                    faiss_kind=self.kind if self.index is not None else "flat",
                    faiss_description=_describe(self.index),
                    version=version,
                    created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    extra=extra or {},
                )
            atomic_write_text(tmp / MANIFEST_FILE, json.dumps(dataclasses.asdict(manifest), indent=2, sort_keys=True))
            self.manifest = manifest

        return write_versioned_dir(indexes_dir(artifacts) / name, fill, version, make_current)

    @classmethod
    def load(cls, path: Path) -> VectorIndex:
        """Read the index saved in folder `path` (…/indexes/<name>/<version>)."""
        path = Path(path)
        manifest = read_manifest(path, IndexManifest, what="index")
        index = cls(manifest.dim, manifest.faiss_kind, manifest.model, manifest.model_version)
        index.index = faiss.read_index(str(path / INDEX_FILE))
        source = sqlite3.connect(f"file:{path / METADATA_FILE}?mode=ro", uri=True)
        try:
            source.backup(index._db)  # into memory: the saved folder stays read-only and immutable
        finally:
            source.close()
        index._removed = {r[0] for r in index._db.execute("SELECT id FROM removed")}
        index.manifest = manifest
        return index


def open_index(artifacts: Path, name: str, version: str | None = None) -> VectorIndex:
    """The index `name` at `version`, or at its current version."""
    try:
        return VectorIndex.load(version_folder(indexes_dir(artifacts), name, version, what="index"))
    except VersionError as e:
        raise BundleError(str(e)) from e


def iter_current_indexes(artifacts: Path) -> Iterator[VectorIndex]:
    """Every index's current version, by name, skipping folders that hold none or a broken one."""
    return iter_current(indexes_dir(artifacts), VectorIndex.load, "index")


def _describe(index: faiss.Index | None) -> str:
    if index is None:
        return "empty"
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    return type(inner).__name__


def _chunks(values: list[int], size: int = 900) -> Iterator[list[int]]:
    # SQLite caps the number of ? parameters in one statement (999 in older builds).
    for start in range(0, len(values), size):
        yield values[start : start + size]
