"""Export copies a run's training curves (the PNG drawn beside its log) into the bundle, hashed
like its other files, for the loop's methods and word2vec alike; a run without them exports as before."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from export.image_encoder import export_image_encoder
from export.word_vectors import export_word_vectors
from runtime.bundle import TRAINING_CURVES_ROLE, read_bundle
from training.checkpoint import save_checkpoint
from training.methods.simclr import SimCLR, SimCLRConfig

WORDS = ["the", "king", "queen"]


def _simclr(tmp_path: Path, log_path: Path, artifacts: Path):
    torch.manual_seed(0)
    method = SimCLR(SimCLRConfig(data="digits", width=4, proj_hidden_dim=16, proj_dim=8, log_path=str(log_path)))
    path = tmp_path / "simclr.pt"
    save_checkpoint(path, {"method": "simclr", "model": method.model.state_dict(), **method.checkpoint_extra()})
    return export_image_encoder(path, artifacts, "vision", centering_images=0, int8=False, fp16=False)


def _word2vec(tmp_path: Path, log_path: Path, artifacts: Path):
    """A word2vec checkpoint as training/methods/word2vec.py saves it, of a run logged at `log_path`."""
    vectors = np.random.default_rng(0).normal(size=(len(WORDS), 4)).astype(np.float32)
    path = tmp_path / "w2v.pt"
    save_checkpoint(path, {"method": "word2vec", "config": {"dim": 4, "log_path": str(log_path)}, "vocab": WORDS,
                           "counts": np.array([9, 5, 4]), "input_vectors": vectors, "output_vectors": vectors * 0,
                           "epochs_done": 1, "words_done": 18})
    return export_word_vectors(path, artifacts, "words")


# each exporter, and the files its bundle holds without curves
EXPORTS = {"simclr": (_simclr, {"image_encoder": "image_encoder.onnx"}),
           "word2vec": (_word2vec, {"vectors": "vectors.npy", "vocab": "vocab.txt"})}


@pytest.mark.parametrize("method", EXPORTS)
def test_export_copies_the_training_curves_into_the_bundle_hashed_like_its_other_files(tmp_path: Path, method: str):
    log = tmp_path / "logs" / f"{method}.jsonl"
    log.parent.mkdir()
    Image.new("RGB", (40, 20), "white").save(log.with_suffix(".png"))  # what training drew beside its log
    bundle = EXPORTS[method][0](tmp_path, log, tmp_path / "artifacts")
    copy = bundle.optional_file(TRAINING_CURVES_ROLE)
    assert copy == bundle.path / "training_curves.png"
    assert copy.read_bytes() == log.with_suffix(".png").read_bytes()
    again = read_bundle(bundle.path, verify=True)  # the PNG's sha256 is in the manifest and checked
    assert "training_curves.png" in again.manifest.file_sha256


@pytest.mark.parametrize("method", EXPORTS)
def test_a_run_without_curves_exports_a_bundle_without_them_that_loads(tmp_path: Path, method: str):
    export, files = EXPORTS[method]
    bundle = export(tmp_path, tmp_path / "logs" / "never-drawn.jsonl", tmp_path / "artifacts")
    assert TRAINING_CURVES_ROLE not in bundle.manifest.files and bundle.optional_file(TRAINING_CURVES_ROLE) is None
    assert read_bundle(bundle.path, verify=True).manifest.files == files
