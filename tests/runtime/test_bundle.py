import json
import threading
from pathlib import Path

import numpy as np
import pytest

from export.word_vectors import write_word_vectors_bundle
from index.word_vectors import read_vocab
from runtime.bundle import (BundleError, Manifest, OnnxIO, QueryBankSpec, TokenizerSpec, iter_current_bundles, open_bundle,
                            read_bundle, write_bundle)
from runtime.preprocessing import PreprocessingSpec
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


# What the exporters of schema 1 wrote (before 2026-12): the facts schema 2 types were in `extra`
# and in plain dicts. Bundles like these on a user's disk must keep loading, upgraded in memory.
V1_SPEC = {"image_size": 8, "channels": 1, "mode": "L", "resize": 8, "crop": 8, "interpolation": "bilinear",
           "mean": [0.5], "std": [0.5]}
V1_MANIFESTS = {
    "image": {"name": "tiny", "kind": "image-encoder", "method": "simclr", "dim": 16, "normalized": False,
              "files": {"image_encoder": "image_encoder.onnx"}, "preprocessing": V1_SPEC, "tokenizer": None,
              "extra": {"onnx_input": "images", "onnx_output": "embeddings", "opset": 17, "parity_min_cosine": 1.0}},
    "clip": {"name": "clip", "kind": "image-text-encoder", "method": "clip", "dim": 16, "normalized": True,
             "files": {"image_encoder": "image_encoder.onnx", "text_encoder": "text_encoder.onnx",
                       "tokenizer": "tokenizer.json", "query_bank": "query_bank.npy"},
             "preprocessing": V1_SPEC, "tokenizer": {"file": "tokenizer.json", "context_length": 24},
             "extra": {"logit_scale": 14.3, "class_names": ["T-shirt/top", "Trouser"], "opset": 17,
                       "onnx_io": {"image_encoder": {"inputs": ["images"], "outputs": ["embeddings"]},
                                   "text_encoder": {"inputs": ["ids", "attention_mask"], "outputs": ["embeddings"]}},
                       "query_bank": {"images": 60, "k": 10, "seed": 0, "source": "random training images"}}},
    "words": {"name": "w", "kind": "word-vectors", "method": "word2vec", "dim": 2, "normalized": False,
              "files": {"vectors": "vectors.npy", "vocab": "vocab.txt"}, "preprocessing": None,
              "tokenizer": {"lowercase": True, "split": "non-letters"}, "extra": {"vocab_size": 1}},
}


def test_schema_1_manifests_load_upgraded():
    common = {"version": "v1", "training_config": {}, "metrics": {}, "created_at": "2026-11-25T00:00:00+00:00",
              "source_checkpoint_sha256": None, "file_sha256": {}, "schema_version": 1}
    image = Manifest.from_dict({**common, **V1_MANIFESTS["image"]})
    assert image.schema_version == 2 and image.onnx_io("image_encoder") == OnnxIO(("images",), "embeddings")
    assert image.preprocessing == PreprocessingSpec(mode="L", resize=8, crop=8, mean=(0.5,), std=(0.5,))
    assert image.extra == {"opset": 17, "parity_min_cosine": 1.0}  # what no code reads stays for humans

    clip = Manifest.from_dict({**common, **V1_MANIFESTS["clip"]})
    assert clip.onnx_io("text_encoder") == OnnxIO(("ids", "attention_mask"), "embeddings")
    assert clip.tokenizer == TokenizerSpec("tokenizer.json", 24) and clip.logit_scale == 14.3
    assert clip.class_names == ("T-shirt/top", "Trouser") and clip.query_bank == QueryBankSpec(60, 10, 0, "random training images")
    assert clip.extra == {"opset": 17}

    words = Manifest.from_dict({**common, **V1_MANIFESTS["words"]})
    assert words.tokenizer is None and words.extra["tokenization"] == {"lowercase": True, "split": "non-letters"}
    assert Manifest.from_dict(json.loads(words.to_json())) == words  # written back as schema 2, read the same


def test_a_schema_1_bundle_on_disk_serves_as_before(image_artifacts: Path, make_png):
    from runtime.encoders.factory import load_encoder
    from runtime.preprocessing import decode_image, preprocess_batch

    bundle = open_bundle(image_artifacts, "tiny")
    batch = preprocess_batch([decode_image(make_png(1))], bundle.manifest.preprocessing)
    expected = load_encoder(bundle).encode(batch)
    v1 = {**json.loads((bundle.path / "manifest.json").read_text()), **V1_MANIFESTS["image"], "schema_version": 1}
    for field in ("onnx", "logit_scale", "class_names", "query_bank"):
        v1.pop(field)
    (bundle.path / "manifest.json").write_text(json.dumps(v1))
    old = open_bundle(image_artifacts, "tiny")
    assert old.manifest.preprocessing == bundle.manifest.preprocessing
    np.testing.assert_array_equal(load_encoder(old).encode(preprocess_batch([decode_image(make_png(1))], old.manifest.preprocessing)),
                                  expected)


def test_what_is_written_is_readable_by_other_users(tmp_path: Path):
    bundle = write_word_vectors_bundle(tmp_path, "w", ["a"], np.array([1]), np.ones((1, 2)))
    for path in [bundle.path, *bundle.path.iterdir(), bundle.path.parent / "current"]:
        mode = path.stat().st_mode & 0o777
        assert mode == (0o755 if path.is_dir() else 0o644), f"{path}: {oct(mode)}"


def test_precision_variants_round_trip_and_older_manifests_have_none(tmp_path: Path):
    from runtime.bundle import PrecisionVariant

    variant = PrecisionVariant("image_encoder", "int8", "image_encoder_int8", "static-qdq", calibration_images=256,
                               evaluation="kNN top-1", top1_pct=74.8, fp32_top1_pct=75.0, top1_change_pct=-0.2,
                               min_cosine=0.97, mean_cosine=0.99)
    manifest = Manifest(name="m", kind="image-encoder", method="simclr", dim=2, normalized=True,
                        files={"image_encoder": "e.onnx", "image_encoder_int8": "e.int8.onnx"}, variants=(variant,))
    bundle = write_bundle(tmp_path, manifest, lambda d: [(d / f).write_bytes(b"x") for f in ("e.onnx", "e.int8.onnx")])
    again = read_bundle(bundle.path, verify=True).manifest
    assert again.variants == (variant,) and again.variant("image_encoder", "int8") == variant
    assert again.variant("image_encoder", "fp16") is None and "e.int8.onnx" in again.file_sha256
    older = json.loads(again.to_json())
    del older["variants"]
    assert Manifest.from_dict(older).variants == ()


def test_a_bundle_is_written_at_the_oldest_schema_that_describes_it(tmp_path: Path):
    def image_bundle(name: str, **spec) -> Manifest:
        preprocessing = PreprocessingSpec(mode="RGB", resize=8, crop=8, mean=(0.5,) * 3, std=(0.5,) * 3, **spec)
        manifest = Manifest(name=name, kind="image-encoder", method="simclr", dim=2, normalized=False,
                            files={"data": "data.bin"}, preprocessing=preprocessing)
        return write_bundle(tmp_path, manifest, lambda d: (d / "data.bin").write_bytes(b"x")).manifest

    assert image_bundle("trained").schema_version == 2  # what code before schema 3 reads, and serves the same
    for name, spec in {"bicubic": {"interpolation": "bicubic"}, "floor": {"crop_offset": "floor"},
                       "drop": {"alpha": "drop"}}.items():
        manifest = image_bundle(name, **spec)
        assert manifest.schema_version == 3 and open_bundle(tmp_path, name).manifest.preprocessing == manifest.preprocessing
