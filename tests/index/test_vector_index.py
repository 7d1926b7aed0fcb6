import json

import faiss
import numpy as np
import pytest

from index.vector_index import FLAT_MAX_COUNT, HNSW_MAX_COUNT, VectorIndex, choose_kind, open_index


@pytest.fixture(autouse=True, scope="module")
def one_faiss_thread():
    # OpenMP threads spin-wait: on a small shared machine one thread trains IVF-PQ ten times faster.
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def clustered(n: int = 200, dim: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


@pytest.fixture(params=["flat", "hnsw", "ivfpq"])
def kind(request) -> str:
    return request.param


def build(kind: str, n: int = 200, dim: int = 16) -> tuple[VectorIndex, np.ndarray, np.ndarray]:
    n = max(n, 2000) if kind == "ivfpq" else n  # IVF-PQ trains its codebooks on the first add
    vectors = clustered(n, dim)
    ids = np.arange(n, dtype=np.int64) * 3 + 1000  # ids unrelated to positions
    index = VectorIndex.build(ids, vectors, [{"row": i} for i in range(n)], kind=kind, model="m", model_version="v2")
    return index, ids, vectors


def test_each_vector_finds_itself_first_with_cosine_scores(kind: str):
    index, ids, vectors = build(kind)
    scores, found = index.search(vectors[:5] * 7.0, k=3)  # scale does not matter: cosine
    assert found.shape == scores.shape == (5, 3)
    np.testing.assert_array_equal(found[:, 0], ids[:5])
    if kind != "ivfpq":  # PQ codes are lossy
        np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first


def test_remove_hides_ids_from_search_vector_and_metadata(kind: str):
    index, ids, vectors = build(kind)
    assert index.remove([ids[0], ids[1], 999_999]) == 2  # unknown ids are ignored
    assert len(index) == len(ids) - 2
    _, found = index.search(vectors[:2], k=5)
    assert not np.isin(found, ids[:2]).any()
    assert ids[0] not in index and ids[2] in index
    with pytest.raises(KeyError):
        index.vector(int(ids[0]))
    assert index.metadata([ids[0], ids[2]]) == [None, {"row": 2}]


def test_vectors_reads_many_at_once_as_vector_reads_each(kind: str):
    index, ids, _ = build(kind)
    some = ids[[7, 2, 150]]  # any order
    np.testing.assert_allclose(index.vectors(some), np.stack([index.vector(int(i)) for i in some]), atol=1e-6)
    index.remove([int(ids[2])])
    with pytest.raises(KeyError):
        index.vectors(some)


def test_vector_returns_the_unit_vector():
    index, ids, vectors = build("flat")
    expected = vectors[3] / np.linalg.norm(vectors[3])
    np.testing.assert_allclose(index.vector(int(ids[3])), expected, atol=1e-6)


def test_adding_an_id_twice_is_refused_and_changes_nothing():
    index, ids, vectors = build("flat")
    with pytest.raises(ValueError, match="already in the index"):
        index.add(np.array([12345, ids[0]]), vectors[:2], [{}, {}])
    assert len(index) == len(ids) and 12345 not in index


def test_wrong_dimension_is_refused():
    index, _, _ = build("flat")
    with pytest.raises(ValueError, match="16"):
        index.search(np.zeros((1, 15), np.float32), k=1)


def test_k_above_count_pads_with_minus_one():
    index = VectorIndex.build(np.array([5, 6]), clustered(2, 4))
    scores, found = index.search(clustered(1, 4, seed=1), k=4)
    assert list(found[0, 2:]) == [-1, -1] and np.isneginf(scores[0, 2:]).all()


def test_save_then_load_round_trips_vectors_ids_metadata_and_manifest(tmp_path, kind: str):
    index, ids, vectors = build(kind)
    index.remove([ids[0]])
    path = index.save(tmp_path, "things", extra={"source": "test"})
    assert path == tmp_path / "indexes" / "things" / "v1"
    assert {p.name for p in path.iterdir()} == {"index.faiss", "metadata.sqlite", "manifest.json"}
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["name"] == "things" and manifest["model"] == "m" and manifest["model_version"] == "v2"
    assert manifest["dim"] == 16 and manifest["count"] == len(ids) - 1 and manifest["faiss_kind"] == kind
    assert manifest["created_at"] and manifest["extra"] == {"source": "test"}

    loaded = open_index(tmp_path, "things")
    assert loaded.kind == kind and len(loaded) == len(ids) - 1 and loaded.model == "m"
    before, after = index.search(vectors[:10], k=5), loaded.search(vectors[:10], k=5)
    np.testing.assert_array_equal(before[1], after[1])
    assert loaded.metadata([ids[5], ids[0]]) == [{"row": 5}, None]
    index.save(tmp_path, "things")
    assert open_index(tmp_path, "things").manifest.version == "v2"  # the newest save is current


def test_kind_is_chosen_by_size():
    assert choose_kind(10) == "flat"
    assert choose_kind(FLAT_MAX_COUNT - 1) == "flat"
    assert choose_kind(FLAT_MAX_COUNT) == "hnsw"
    assert choose_kind(HNSW_MAX_COUNT) == "ivfpq"
    assert VectorIndex.build(np.arange(3), clustered(3, 4)).kind == "flat"
    with pytest.raises(ValueError, match="unknown index kind"):
        VectorIndex(4, kind="annoy")
