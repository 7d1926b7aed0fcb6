from pathlib import Path

import numpy as np
import pytest
import torch

from runtime.bundle import OnnxIO, open_bundle, read_bundle
from export.image_encoder import export_image_encoder
from runtime.encoders.onnx_runtime import OnnxEncoder
from training.checkpoint import save_checkpoint
from training.methods.encoders import load_image_encoder
from training.methods.mae import MAE, MAEConfig
from training.methods.simclr import SimCLR, SimCLRConfig


def _checkpoint(path: Path, method) -> Path:
    """What training's loop saves, less the optimiser state: enough for load_image_encoder."""
    save_checkpoint(path, {"method": method.name, "model": method.model.state_dict(), **method.checkpoint_extra()})
    return path


def _simclr(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    config = SimCLRConfig(width=4, image_size=16, mode="RGB", mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3),
                          proj_hidden_dim=16, proj_dim=8)
    return _checkpoint(tmp_path / "simclr.pt", SimCLR(config))


def _mae(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    config = MAEConfig(image_size=16, patch_size=4, dim=32, depth=2, num_heads=2, decoder_dim=16, decoder_depth=1,
                       decoder_num_heads=2)
    return _checkpoint(tmp_path / "mae.pt", MAE(config))


@pytest.mark.parametrize("make_checkpoint", [_simclr, _mae], ids=["simclr-resnet", "mae-vit"])
def test_bundle_round_trip_serves_the_torch_encoder(tmp_path: Path, make_checkpoint):
    checkpoint = make_checkpoint(tmp_path)
    bundle = export_image_encoder(checkpoint, tmp_path / "artifacts", "vision", metrics={"knn_top1": 0.5})

    again = read_bundle(bundle.path, verify=True)
    module, info = load_image_encoder(checkpoint)
    manifest = again.manifest
    assert (manifest.kind, manifest.method, manifest.dim, manifest.normalized) == ("image-encoder", info.method, info.dim, False)
    assert manifest.preprocessing == info.preprocessing
    assert manifest.onnx_io("image_encoder") == OnnxIO(("images",), "embeddings")
    assert manifest.extra["parity_min_cosine"] >= 0.9999
    assert manifest.metrics == {"knn_top1": 0.5} and manifest.source_checkpoint_sha256
    assert open_bundle(tmp_path / "artifacts", "vision").path == bundle.path  # made current

    spec = manifest.preprocessing
    batch = torch.randn(5, spec.channels, spec.crop, spec.crop)  # (B, C, H, W)
    with torch.no_grad():
        expected = module(batch).numpy()  # (B, D)
    encoder = OnnxEncoder(again, "image_encoder", "cpu")
    got = encoder.encode(batch.numpy())
    assert got.dtype == np.float32 and got.shape == (5, info.dim)
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)


def test_a_second_export_is_the_next_version(tmp_path: Path):
    checkpoint = _simclr(tmp_path)
    first = export_image_encoder(checkpoint, tmp_path / "artifacts", "vision")
    second = export_image_encoder(checkpoint, tmp_path / "artifacts", "vision")
    assert (first.manifest.version, second.manifest.version) == ("v1", "v2")
    assert open_bundle(tmp_path / "artifacts", "vision").manifest.version == "v2"
