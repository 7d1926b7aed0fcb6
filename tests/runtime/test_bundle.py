import json
import threading
from pathlib import Path

import numpy as np
import pytest

from export.word_vectors import write_word_vectors_bundle
from index.word_vectors import read_vocab
from runtime.bundle import BundleError, Manifest, iter_current_bundles, open_bundle, read_bundle, write_bundle
from runtime.files import current_version, set_current


def _manifest(name: str = "m") -> Manifest:
    return Manifest(name=name, kind="word-vectors", method="word2vec", dim=2, normalized=False, files={"data": "data.bin"})


def test_word_vectors_round_trip(tmp_path: Path):
    words = ["the", "café", "naïve"]
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4)
    bundle = write_word_vectors_bundle(tmp_path, "w", words, np.array([9, 5, 1]), vectors, metrics={"x": 1})
    again = read_bundle(bundle.path, verify=True)
    assert again.manifest == bundle.manifest
    assert again.manifest.version == "v1" and again.manifest.dim == 4 and again.manifest.metrics == {"x": 1}
    np.testing.assert_array_equal(np.load(again.file("vectors")), vectors)
    vocab, counts = read_vocab(again.file("vocab"))
    assert vocab == words and counts.tolist() == [9, 5, 1]


def test_versions_increase_and_current_points_at_the_newest(tmp_path: Path):
    for _ in range(3):
        write_bundle(tmp_path, _manifest(), lambda d: (d / "data.bin").write_bytes(b"x"))
    parent = tmp_path / "models" / "m"
    assert current_version(parent) == "v3"
    set_current(parent, "v2")
    assert open_bundle(tmp_path, "m").manifest.version == "v2"
    assert open_bundle(tmp_path, "m", "v1").manifest.version == "v1"


def test_a_failed_write_leaves_nothing_behind(tmp_path: Path):
    def broken(folder: Path) -> None:
        (folder / "data.bin").write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_bundle(tmp_path, _manifest(), broken)
    parent = tmp_path / "models" / "m"
    assert list(parent.iterdir()) == []  # no version, no temp folder, no current pointer


def test_a_writer_that_forgets_a_file_is_refused(tmp_path: Path):
    with pytest.raises(BundleError, match="data.bin"):
        write_bundle(tmp_path, _manifest(), lambda d: None)


def test_concurrent_writers_get_distinct_versions(tmp_path: Path):
    errors = []

    def write():
        try:
            write_bundle(tmp_path, _manifest(), lambda d: (d / "data.bin").write_bytes(b"x"))
        except BundleError as e:  # a lost race on the same version number is reported, not merged
            errors.append(e)

    threads = [threading.Thread(target=write) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    versions = sorted(p.name for p in (tmp_path / "models" / "m").glob("v*"))
    assert len(versions) + len(errors) == 4
    for v in versions:
        assert read_bundle(tmp_path / "models" / "m" / v).manifest.version == v


def test_tampered_file_fails_verification(tmp_path: Path):
    bundle = write_word_vectors_bundle(tmp_path, "w", ["a"], np.array([1]), np.ones((1, 2)))
    np.save(bundle.file("vectors"), np.zeros((1, 2), dtype=np.float32))
    read_bundle(bundle.path)  # a plain read does not hash
    with pytest.raises(BundleError, match="sha256"):
        read_bundle(bundle.path, verify=True)


def test_unknown_schema_and_missing_pieces_are_clear_errors(tmp_path: Path):
    bundle = write_word_vectors_bundle(tmp_path, "w", ["a"], np.array([1]), np.ones((1, 2)))
    data = json.loads((bundle.path / "manifest.json").read_text())
    (bundle.path / "manifest.json").write_text(json.dumps({**data, "schema_version": 99}))
    with pytest.raises(BundleError, match="schema"):
        read_bundle(bundle.path)
    with pytest.raises(BundleError, match="no model named 'nope'"):
        open_bundle(tmp_path, "nope")
    with pytest.raises(BundleError, match="kind"):
        Manifest(name="x", kind="sound", method="word2vec", dim=1, normalized=True, files={})


def test_iter_current_bundles_skips_broken_models(tmp_path: Path):
    write_word_vectors_bundle(tmp_path, "good", ["a"], np.array([1]), np.ones((1, 2)))
    (tmp_path / "models" / "empty").mkdir()
    assert [b.manifest.name for b in iter_current_bundles(tmp_path)] == ["good"]
