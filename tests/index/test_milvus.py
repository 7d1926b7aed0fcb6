"""The Milvus backend against a real Milvus Lite (a file under tmp; one per module, its start-up
is a few seconds): the same answers as FAISS Flat, item changes, versions, and promotion by
`alter_alias` while another thread searches."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from index.config import IndexConfig
from index.milvus_index import MilvusStore, alias_for
from index.store import open_index_store
from index.vector_index import VectorIndex

DIM = 32


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> MilvusStore:
    config = IndexConfig(backend="milvus", milvus_uri=str(tmp_path_factory.mktemp("milvus") / "milvus.db"))
    store = open_index_store(tmp_path_factory.mktemp("artifacts"), config)
    assert isinstance(store, MilvusStore)
    yield store
    store.close()


def data(n: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    rng = np.random.default_rng(seed)
    ids = rng.choice(10**12, size=n, replace=False).astype(np.int64)  # ids far from positions
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)  # (N, D)
    return ids, vectors, [{"row": i, "parity": "odd" if i % 2 else "even"} for i in range(n)]


def test_flat_search_equals_faiss_flat_on_the_same_vectors(store):
    ids, vectors, metadata = data()
    milvus = store.build("same-as-flat", ids, vectors, metadata, kind="flat", model="m", model_version="v3")
    store.save(milvus, "same-as-flat")
    faiss = VectorIndex.build(ids, vectors, metadata, kind="flat")
    queries = np.random.default_rng(1).standard_normal((20, DIM)).astype(np.float32)  # (Q, D)

    milvus_scores, milvus_ids = milvus.search(queries, 10)
    faiss_scores, faiss_ids = faiss.search(queries, 10)
    np.testing.assert_array_equal(milvus_ids, faiss_ids)
    np.testing.assert_allclose(milvus_scores, faiss_scores, atol=1e-5)
    assert milvus.metadata(milvus_ids[0]) == faiss.metadata(faiss_ids[0])
    np.testing.assert_allclose(milvus.vector(int(ids[7])), faiss.vector(int(ids[7])), atol=1e-6)

    # the filter on a metadata field, and a k beyond what matches
    where = {"parity": "odd"}
    filtered = milvus.search(queries, 10, where)[1]
    np.testing.assert_array_equal(filtered, faiss.search(queries, 10, where)[1])
    odd = {int(i) for i, m in zip(ids, metadata) if m["parity"] == "odd"}
    assert set(filtered.ravel().tolist()) <= odd
    scores, found = milvus.search(queries[:1], 5, {"row": 4})
    assert found[0].tolist() == [ids[4], -1, -1, -1, -1] and np.isinf(scores[0, 1:]).all()

    opened = store.open("same-as-flat")  # what a server loads: the manifest is Milvus's, too
    assert (opened.model, opened.model_version, opened.kind, opened.dim, len(opened)) == ("m", "v3", "flat", DIM, 1000)
    assert opened.manifest.backend == "milvus" and opened.manifest.name == "same-as-flat"


def test_hnsw_and_ivf_find_the_exact_neighbours(store):
    ids, _, metadata = data(2000, seed=2)
    rng = np.random.default_rng(2)  # clustered, as embeddings are: pure noise has no neighbourhoods for IVF to find
    vectors = (rng.standard_normal((40, DIM))[rng.integers(0, 40, 2000)] + 0.3 * rng.standard_normal((2000, DIM))).astype(np.float32)
    queries = vectors[:50] + 0.1 * np.random.default_rng(3).standard_normal((50, DIM)).astype(np.float32)
    _, exact = VectorIndex.build(ids, vectors, metadata, kind="flat").search(queries, 10)
    for kind in ("hnsw", "ivfpq"):
        index = store.build(f"approx-{kind}", ids, vectors, metadata, kind=kind)
        _, found = index.search(queries, 10)
        recall = np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact)])
        assert recall >= 0.9, (kind, recall)
        assert found[:, 0].tolist() == ids[:50].tolist()  # each query's own vector first


def test_add_and_remove_items(store):
    ids, vectors, metadata = data(200, seed=4)
    index = store.build("items", ids[:150], vectors[:150], metadata[:150])
    store.save(index, "items")
    index.add(ids[150:], vectors[150:], metadata[150:])
    assert len(index) == 200 and int(ids[180]) in index
    assert index.search(vectors[180:181], 1)[1][0, 0] == ids[180]
    with pytest.raises(ValueError, match="already in the index"):
        index.add(ids[:1], vectors[:1])

    assert index.remove([int(ids[180]), int(ids[181]), 12345]) == 2  # an unknown id is ignored
    assert int(ids[180]) not in index and len(index) == 198
    assert ids[180] not in index.search(vectors[180:181], 10)[1]
    assert index.metadata([int(ids[180]), int(ids[0])]) == [None, metadata[0]]
    some = [int(ids[190]), int(ids[3]), int(ids[150])]
    np.testing.assert_allclose(index.vectors(some), np.stack([index.vector(i) for i in some]), atol=1e-6)
    with pytest.raises(KeyError):
        index.vectors([int(ids[0]), int(ids[180])])  # a removed id

    from index.plot import sample_index  # embedserve plot index reads a Milvus index as it reads FAISS

    sample = sample_index(index, max_points=50, seed=1)
    assert len(sample.ids) == 50 and set(sample.ids.tolist()) <= set(index.ids().tolist())
    np.testing.assert_allclose(sample.vectors, index.vectors(sample.ids), atol=1e-6)
    assert sample.metadata == [metadata[list(ids).index(i)] for i in sample.ids]
    assert index.ids().tolist() == sorted(set(ids.tolist()) - {int(ids[180]), int(ids[181])})
    assert store.save(index, "items") == index.manifest.version  # changed in place: the same version
    assert store.open("items").manifest.count == 198


def test_versions_and_promotion_while_searching(store):
    name = "live-swap"
    ids, vectors, metadata = data(300, seed=5)
    first = store.build(name, ids, vectors, metadata)
    assert store.save(first, name) == "v1"
    queries = vectors[:4]
    errors: list[BaseException] = []
    seen: set[str] = set()
    stop = threading.Event()

    def search_all_the_while() -> None:
        # as a gateway loading the current version, and as any Milvus client searching the alias
        while not stop.is_set():
            try:
                current = store.open(name)
                _, found = current.search(queries, 5)
                assert (found >= 0).all(), "an empty or short result"
                seen.add(current.manifest.version)
                hits = store.client.search(alias_for(name), data=queries.tolist(), limit=5, output_fields=["id"])
                assert all(len(row) == 5 for row in hits), "an empty or short result through the alias"
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)
                return

    reader = threading.Thread(target=search_all_the_while)
    reader.start()
    try:
        for seed in (6, 7, 8):
            new_ids, new_vectors, new_metadata = data(300, seed=seed)
            store.save(store.build(name, new_ids, new_vectors, new_metadata), name)
            store.prune(name, keep_previous=0)  # keeps the version just replaced all the same
    finally:
        stop.set()
        reader.join(timeout=60)
    assert not errors, errors
    assert store.current_version(name) == "v4" and name in store.names()
    assert seen <= {"v1", "v2", "v3", "v4"} and seen
    left = sorted(c for c in store.client.list_collections() if c.startswith(f"{alias_for(name)}__"))
    assert left == [f"{alias_for(name)}__v3", f"{alias_for(name)}__v4"]  # v1, v2 dropped; the one replaced kept
    v3_ids, v3_vectors, _ = data(300, seed=7)
    assert store.open(name, "v3").search(v3_vectors[:1], 1)[1][0, 0] == v3_ids[0]  # the one replaced still answers
