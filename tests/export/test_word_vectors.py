from pathlib import Path

import numpy as np
from PIL import Image

from export.word_vectors import export_word_vectors
from runtime.bundle import TRAINING_CURVES_ROLE, read_bundle
from training.checkpoint import save_checkpoint

WORDS = ["the", "king", "queen"]


def _checkpoint(tmp_path: Path, log_path: Path) -> Path:
    """A word2vec checkpoint as training/methods/word2vec.py saves it, of a run logged at `log_path`."""
    vectors = np.random.default_rng(0).normal(size=(len(WORDS), 4)).astype(np.float32)
    path = tmp_path / "w2v.pt"
    save_checkpoint(path, {"method": "word2vec", "config": {"dim": 4, "log_path": str(log_path)}, "vocab": WORDS,
                           "counts": np.array([9, 5, 4]), "input_vectors": vectors, "output_vectors": vectors * 0,
                           "epochs_done": 1, "words_done": 18})
    return path


def test_export_copies_the_training_curves_into_the_bundle_hashed_like_its_other_files(tmp_path: Path):
    log = tmp_path / "logs" / "words.jsonl"
    log.parent.mkdir()
    Image.new("RGB", (40, 20), "white").save(log.with_suffix(".png"))  # what training drew beside its log
    bundle = export_word_vectors(_checkpoint(tmp_path, log), tmp_path / "artifacts", "words")
    copy = bundle.optional_file(TRAINING_CURVES_ROLE)
    assert copy == bundle.path / "training_curves.png"
    assert copy.read_bytes() == log.with_suffix(".png").read_bytes()
    again = read_bundle(bundle.path, verify=True)  # the PNG's sha256 is in the manifest and checked
    assert "training_curves.png" in again.manifest.file_sha256


def test_a_run_without_curves_exports_a_bundle_without_them_that_loads(tmp_path: Path):
    bundle = export_word_vectors(_checkpoint(tmp_path, tmp_path / "logs" / "never-drawn.jsonl"), tmp_path / "artifacts", "words")
    assert bundle.optional_file(TRAINING_CURVES_ROLE) is None
    assert read_bundle(bundle.path, verify=True).manifest.files == {"vectors": "vectors.npy", "vocab": "vocab.txt"}
