"""Indexes in Milvus: each version of an index is a collection (`<alias>__v3`), the index's name is
a Milvus alias on the current one, and promotion is `alter_alias`, which Milvus makes atomic.

A `MilvusIndex` is one version, searched by its collection's own name, not through the alias: a
server that holds it embeds queries with that version's model, and moving the alias (here or from
another gateway) changes what it serves only when its registry loads the new version, model first,
exactly as for FAISS. Item changes (add, remove) are written to the collection in place, at
Strong consistency, so the next search sees them. The index's manifest (model, model version,
kind, count, extra) is kept in the collection's properties, so Milvus holds everything.

`MilvusStore(config)` connects to `config.milvus_uri`: a file path runs Milvus Lite in this
process (pip milvus-lite); `http://host:19530` reaches a Milvus server or cluster.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np
from pymilvus import DataType, MilvusClient

from index.config import IndexConfig
from index.vector_index import (
    HNSW_EF_CONSTRUCTION,
    HNSW_EF_SEARCH,
    HNSW_M,
    IVF_NPROBE,
    IndexManifest,
    check_items,
    check_query,
    check_where,
    choose_kind,
)
from runtime.bundle import BundleError
from runtime.vectors import unit_rows

log = logging.getLogger(__name__)

MANIFEST_PROPERTY = "embedserve.manifest"  # the collection property holding the IndexManifest JSON
INSERT_ROWS = 10_000  # rows per insert call: Milvus caps one request's size (64 MB by default)
READ_ROWS = 1_000  # ids per get/query call
# Milvus index type per kind. IVF_SQ8 (one byte per dimension) stands in for IVF-PQ: Milvus Lite has
# no IVF_PQ, and the same type on both keeps a test on Lite meaningful for a cluster.
MILVUS_INDEX_TYPES = {"flat": "FLAT", "hnsw": "HNSW", "ivfpq": "IVF_SQ8"}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def alias_for(name: str) -> str:
    """The Milvus alias of index `name`: Milvus names take letters, digits and underscores only, so
    '-' and '.' become '_' (and a leading digit gets a '_'); the manifest keeps the real name."""
    alias = re.sub(r"[-.]", "_", name)
    alias = alias if not alias[:1].isdigit() else f"_{alias}"
    if not _NAME.match(alias) or len(alias) > 200:
        raise ValueError(f"index name {name!r} cannot be a Milvus alias: use letters, digits, '_', '-' or '.' "
                         "(at most 200 characters)")
    return alias


def collection_for(name: str, version: str) -> str:
    return f"{alias_for(name)}__{version}"


class MilvusIndex:
    """One version of an index: a Milvus collection of (id INT64, vector FLOAT_VECTOR, metadata JSON)."""

    def __init__(self, client: MilvusClient, collection: str, manifest: IndexManifest, remote: bool = False):
        self.client, self.collection, self.manifest = client, collection, manifest
        self.remote = remote  # a Milvus server (by URL), not Milvus Lite
        self.dim, self.kind = manifest.dim, manifest.faiss_kind
        self.model, self.model_version = manifest.model, manifest.model_version

    def __len__(self) -> int:
        rows = self.client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def __contains__(self, id: int) -> bool:
        return bool(self._existing([int(id)]))

    def add(self, ids: np.ndarray, vectors: np.ndarray, metadata: Sequence[dict[str, Any]] | None = None) -> None:
        """Add `vectors` (N, D), normalised here, under new, distinct `ids` (N,) with `metadata` (N dicts)."""
        ids, vectors = check_items(self.dim, ids, vectors, metadata)  # (N,), (N, D)
        taken = self._existing(ids.tolist())
        if taken:  # Milvus would keep both rows (or overwrite): refuse, as FAISS does
            raise ValueError(f"ids already in the index: {taken[:10]}; remove them first or choose new ids")
        unit = unit_rows(vectors)  # (N, D)
        for start in range(0, len(ids), INSERT_ROWS):
            stop = min(start + INSERT_ROWS, len(ids))
            self.client.insert(self.collection, [
                {"id": int(ids[i]), "vector": unit[i].tolist(), "metadata": metadata[i] if metadata is not None else {}}
                for i in range(start, stop)
            ])

    def remove(self, ids: Sequence[int] | np.ndarray) -> int:
        """Remove `ids` (unknown ids are ignored); returns how many were removed."""
        present = self._existing([int(i) for i in ids])
        if present:
            self.client.delete(self.collection, ids=present)
        return len(present)

    def search(self, queries: np.ndarray, k: int, where: dict[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest ids by cosine to each query (Q, D): scores (Q, k) float32, ids (Q, k) int64,
        padded with -inf and -1; `where` keeps items whose metadata fields equal its values."""
        unit = check_query(self.dim, queries, k)  # (Q, D)
        expression = " and ".join(f'metadata["{key}"] == {_literal(value)}' for key, value in check_where(where).items())
        params: dict[str, Any] = {"metric_type": "IP"}
        if self.kind == "hnsw":
            params["params"] = {"ef": max(HNSW_EF_SEARCH, k)}  # ef below k caps the hits
        elif self.kind == "ivfpq":
            params["params"] = {"nprobe": IVF_NPROBE}
        hits = self.client.search(self.collection, data=unit.tolist(), limit=k, filter=expression,
                                  search_params=params, output_fields=["id"])
        scores = np.full((len(unit), k), -np.inf, np.float32)  # (Q, k)
        found = np.full((len(unit), k), -1, np.int64)  # (Q, k)
        for row, row_hits in enumerate(hits):
            for column, hit in enumerate(row_hits[:k]):
                scores[row, column], found[row, column] = hit["distance"], hit["id"]
        return scores, found

    def vector(self, id: int) -> np.ndarray:
        """The stored unit vector of `id` (D,); KeyError if absent."""
        rows = self.client.get(self.collection, ids=[int(id)], output_fields=["vector"])
        if not rows:
            raise KeyError(id)
        return np.asarray(rows[0]["vector"], np.float32)

    def vectors(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """The stored unit vectors of `ids` (N, D), in their order, READ_ROWS a call; KeyError for
        an id not in the index."""
        ids = [int(i) for i in ids]
        found: dict[int, list[float]] = {}
        for start in range(0, len(ids), READ_ROWS):
            for row in self.client.get(self.collection, ids=ids[start:start + READ_ROWS], output_fields=["vector"]):
                found[int(row["id"])] = row["vector"]
        missing = [i for i in ids if i not in found]
        if missing:
            raise KeyError(missing[0])
        return np.asarray([found[i] for i in ids], np.float32).reshape(len(ids), self.dim)  # (N, D)

    def metadata(self, ids: Sequence[int] | np.ndarray) -> list[dict[str, Any] | None]:
        """The metadata dict of each id, None for ids not in the index."""
        ids = [int(i) for i in ids]
        found: dict[int, dict[str, Any]] = {}
        for start in range(0, len(ids), READ_ROWS):
            chunk = ids[start:start + READ_ROWS]
            for row in self.client.get(self.collection, ids=chunk, output_fields=["metadata"]) if chunk else []:
                found[int(row["id"])] = row["metadata"]
        return [found.get(i) for i in ids]

    def ids(self) -> np.ndarray:
        """Every live id, ascending (N,) int64."""
        if not self.remote:  # Milvus Lite answers a query with every row, and has no iterator timestamps
            rows = self.client.query(self.collection, filter="", output_fields=["id"])
            return np.sort(np.asarray([int(row["id"]) for row in rows], np.int64))
        iterator = self.client.query_iterator(self.collection, batch_size=READ_ROWS * 10, filter="", output_fields=["id"])
        out: list[int] = []
        try:
            while batch := iterator.next():
                out += [int(row["id"]) for row in batch]
        finally:
            iterator.close()
        return np.sort(np.asarray(out, np.int64))

    def _existing(self, ids: list[int]) -> list[int]:
        out: list[int] = []
        for start in range(0, len(ids), READ_ROWS):
            chunk = ids[start:start + READ_ROWS]
            if chunk:
                out += [int(r["id"]) for r in self.client.query(self.collection, filter=f"id in {chunk}", output_fields=["id"])]
        return out


class MilvusStore:
    """Versions of named indexes as Milvus collections under an alias per name (see the module)."""

    def __init__(self, config: IndexConfig):
        self.config = config
        self.remote = "://" in config.milvus_uri  # http://host:19530; a path is Milvus Lite
        self.client = MilvusClient(uri=config.milvus_uri, token=config.milvus_token or "")

    def names(self) -> list[str]:
        names = []
        for alias in self.client.list_aliases().get("aliases", []):
            try:
                names.append(self._manifest(self.client.describe_alias(alias)["collection_name"]).name)
            except BundleError:  # an alias someone else made, on a collection that is not ours
                continue
        return sorted(names)

    def current_version(self, name: str) -> str:
        alias = alias_for(name)
        if alias not in self.client.list_aliases().get("aliases", []):
            raise BundleError(f"no index named {name!r} in Milvus at {self._where()} (there: {', '.join(self.names()) or 'none'})")
        return self.client.describe_alias(alias)["collection_name"].rsplit("__", 1)[1]

    def open(self, name: str, version: str | None = None) -> MilvusIndex:
        collection = collection_for(name, version or self.current_version(name))
        if not self.client.has_collection(collection):
            raise BundleError(f"index {name!r} has no version {version!r} in Milvus at {self._where()} "
                              f"(there: {', '.join(self._versions(name)) or 'none'})")
        self.client.load_collection(collection)  # a server searches loaded collections only; a no-op when loaded
        return MilvusIndex(self.client, collection, self._manifest(collection), self.remote)

    def stamp(self, name: str) -> None:
        """None: which collection an alias names is a call to Milvus, too slow for every request;
        a server follows another process's promotion at its next reload."""
        return None

    def build(self, name: str, ids: np.ndarray, vectors: np.ndarray, metadata: Sequence[dict[str, Any]] | None = None,
              kind: str | None = None, model: str | None = None, model_version: str | None = None) -> MilvusIndex:
        """A new version of `name` holding `vectors` (N, D) under `ids` (N,): a new collection, not yet
        current (`save` makes it so). Its kind is chosen by N unless given."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2:
            raise ValueError(f"vectors must be (N, D), got {vectors.shape}")
        kind = kind or choose_kind(len(vectors), self.config)
        if kind not in MILVUS_INDEX_TYPES:
            raise ValueError(f"unknown index kind {kind!r}; use one of {tuple(MILVUS_INDEX_TYPES)}")
        versions = self._versions(name)
        version = f"v{int(versions[-1][1:]) + 1 if versions else 1}"
        collection = collection_for(name, version)
        manifest = IndexManifest(name=name, model=model, model_version=model_version, dim=vectors.shape[1], count=len(vectors),
                                 faiss_kind=kind, faiss_description=f"Milvus {MILVUS_INDEX_TYPES[kind]}", version=version,
                                 backend="milvus")
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=manifest.dim)
        schema.add_field("metadata", DataType.JSON)
        # Milvus's bulk-load order: insert into an unindexed, unloaded collection, flush, build the
        # index, then load, so the version is indexed before it is promoted (Milvus Lite indexes a
        # loaded collection in the background, while searches scan every vector).
        self.client.create_collection(collection, schema=schema, consistency_level="Strong",
                                      properties={MANIFEST_PROPERTY: _manifest_json(manifest)})
        index = MilvusIndex(self.client, collection, manifest, self.remote)
        try:
            index.add(ids, vectors, metadata)
            self.client.flush(collection)
            index_params = self.client.prepare_index_params()
            index_params.add_index(field_name="vector", index_type=MILVUS_INDEX_TYPES[kind], metric_type="IP",
                                   params=_build_params(kind, len(vectors)))
            self.client.create_index(collection, index_params)
            self.client.load_collection(collection)
        except BaseException:
            self.client.drop_collection(collection)
            raise
        return index

    def save(self, index: MilvusIndex, name: str, extra: dict[str, Any] | None = None, make_current: bool = True) -> str:
        """Record `index`'s manifest (count, extra, time) and, with `make_current`, point the alias at
        it (`alter_alias`: atomic). Items changed in place keep their version: it is returned as it is."""
        manifest = dataclasses.replace(index.manifest, name=name, count=len(index), extra=extra or {},
                                       created_at=index.manifest.created_at or _now())
        self.client.alter_collection_properties(index.collection, properties={MANIFEST_PROPERTY: _manifest_json(manifest)})
        self.client.flush(index.collection)
        index.manifest = manifest
        if make_current:
            alias = alias_for(name)
            if alias in self.client.list_aliases().get("aliases", []):
                self.client.alter_alias(index.collection, alias)
            else:
                self.client.create_alias(index.collection, alias)
        return manifest.version

    def prune(self, name: str, keep_previous: int) -> list[str]:
        """Drop the versions older than the current one and the `keep_previous` before it, keeping at
        least one: a request (or a gateway not yet reloaded) may still search the one just replaced."""
        try:
            current = self.current_version(name)
        except BundleError:
            return []
        older = [v for v in self._versions(name) if int(v[1:]) < int(current[1:])]
        doomed = older[: max(0, len(older) - max(1, keep_previous))]
        for version in doomed:
            self.client.drop_collection(collection_for(name, version))
        return doomed

    def close(self) -> None:
        self.client.close()

    def _versions(self, name: str) -> list[str]:
        prefix = f"{alias_for(name)}__"
        versions = [c[len(prefix):] for c in self.client.list_collections() if c.startswith(prefix)]
        return sorted((v for v in versions if v[:1] == "v" and v[1:].isdigit()), key=lambda v: int(v[1:]))

    def _manifest(self, collection: str) -> IndexManifest:
        properties = self.client.describe_collection(collection).get("properties") or {}
        if MANIFEST_PROPERTY not in properties:
            raise BundleError(f"Milvus collection {collection!r} has no {MANIFEST_PROPERTY} property: not an embedserve index")
        return IndexManifest.from_dict(json.loads(properties[MANIFEST_PROPERTY]))

    def _where(self) -> str:
        return self.config.milvus_uri if self.remote else "the Milvus Lite file"


def _build_params(kind: str, count: int) -> dict[str, Any]:
    if kind == "hnsw":
        return {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION}
    if kind == "ivfpq":
        return {"nlist": int(min(max(1, 4 * np.sqrt(count)), max(1, count // 39), 65536))}  # as FAISS's IVF-PQ
    return {}


def _literal(value: str | int | float | bool) -> str:
    """A filter value as a Milvus expression literal (JSON's quoting is Milvus's)."""
    return ("true" if value else "false") if isinstance(value, bool) else json.dumps(value)


def _manifest_json(manifest: IndexManifest) -> str:
    return json.dumps(dataclasses.asdict(manifest), sort_keys=True)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
