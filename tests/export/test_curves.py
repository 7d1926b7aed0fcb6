from pathlib import Path

import torch
from PIL import Image

from export.image_encoder import export_image_encoder
from runtime.bundle import TRAINING_CURVES_ROLE, read_bundle
from training.checkpoint import save_checkpoint
from training.methods.simclr import SimCLR, SimCLRConfig


def _checkpoint(tmp_path: Path, log_path: Path) -> Path:
    torch.manual_seed(0)
    method = SimCLR(SimCLRConfig(data="digits", width=4, proj_hidden_dim=16, proj_dim=8, log_path=str(log_path)))
    path = tmp_path / "simclr.pt"
    save_checkpoint(path, {"method": "simclr", "model": method.model.state_dict(), **method.checkpoint_extra()})
    return path


def _export(checkpoint: Path, artifacts: Path):
    return export_image_encoder(checkpoint, artifacts, "vision", centering_images=0, int8=False, fp16=False)


def test_export_copies_the_training_curves_into_the_bundle_hashed_like_its_other_files(tmp_path: Path):
    log = tmp_path / "logs" / "simclr.jsonl"
    log.parent.mkdir()
    Image.new("RGB", (40, 20), "white").save(log.with_suffix(".png"))  # what the loop drew beside its log
    bundle = _export(_checkpoint(tmp_path, log), tmp_path / "artifacts")
    copy = bundle.optional_file(TRAINING_CURVES_ROLE)
    assert copy == bundle.path / "training_curves.png"
    assert copy.read_bytes() == log.with_suffix(".png").read_bytes()
    again = read_bundle(bundle.path, verify=True)  # the PNG's sha256 is in the manifest and checked
    assert "training_curves.png" in again.manifest.file_sha256


def test_a_run_without_curves_exports_a_bundle_without_them_that_loads(tmp_path: Path):
    bundle = _export(_checkpoint(tmp_path, tmp_path / "logs" / "never-drawn.jsonl"), tmp_path / "artifacts")
    assert TRAINING_CURVES_ROLE not in bundle.manifest.files and bundle.optional_file(TRAINING_CURVES_ROLE) is None
    assert read_bundle(bundle.path, verify=True).manifest.files == {"image_encoder": "image_encoder.onnx"}
