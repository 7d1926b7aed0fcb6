from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from runtime.bundle import CENTERING_MEAN_ROLE, CENTERING_WHITENING_ROLE, OnnxIO, open_bundle, read_bundle
from export.image_encoder import export_image_encoder, fit_centering
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
    config = SimCLRConfig(data="digits", width=4, image_size=16, mode="RGB", mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3),
                          proj_hidden_dim=16, proj_dim=8)
    return _checkpoint(tmp_path / "simclr.pt", SimCLR(config))


def _mae(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    config = MAEConfig(data="digits", image_size=16, patch_size=4, dim=32, depth=2, num_heads=2, decoder_dim=16, decoder_depth=1,
                       decoder_num_heads=2)
    return _checkpoint(tmp_path / "mae.pt", MAE(config))


def _embed(bundle, batch: torch.Tensor) -> np.ndarray:
    encoder = OnnxEncoder(bundle, "image_encoder", "cpu")
    try:
        return encoder.encode(batch.numpy())
    finally:
        encoder.close()


@pytest.mark.parametrize("make_checkpoint", [_simclr, _mae], ids=["simclr-resnet", "mae-vit"])
def test_bundle_round_trip_serves_the_centred_torch_encoder(tmp_path: Path, make_checkpoint):
    checkpoint = make_checkpoint(tmp_path)
    bundle = export_image_encoder(checkpoint, tmp_path / "artifacts", "vision", metrics={"knn_top1": 0.5},
                                  centering_images=200)

    again = read_bundle(bundle.path, verify=True)
    module, info = load_image_encoder(checkpoint)
    manifest = again.manifest
    assert (manifest.kind, manifest.method, manifest.dim, manifest.normalized) == ("image-encoder", info.method, info.dim, True)
    assert manifest.preprocessing == info.preprocessing
    assert manifest.onnx_io("image_encoder") == OnnxIO(("images",), "embeddings")
    assert manifest.extra["parity_min_cosine"] >= 0.9999
    assert manifest.metrics == {"knn_top1": 0.5} and manifest.source_checkpoint_sha256
    assert manifest.centering is not None and manifest.centering.images == 200
    assert open_bundle(tmp_path / "artifacts", "vision").path == bundle.path  # made current

    mean = np.load(again.file(CENTERING_MEAN_ROLE))  # (D,)
    whitening = np.load(again.file(CENTERING_WHITENING_ROLE))  # (D, D)
    assert mean.shape == (info.dim,) and whitening.shape == (info.dim, info.dim)
    spec = manifest.preprocessing
    batch = torch.randn(5, spec.channels, spec.crop, spec.crop)  # (B, C, H, W)
    with torch.no_grad():
        centred = (module(batch).numpy() - mean) @ whitening  # (B, D)
    expected = centred / np.linalg.norm(centred, axis=1, keepdims=True)
    got = _embed(again, batch)
    assert got.dtype == np.float32 and got.shape == (5, info.dim)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)  # unit rows out of the graph
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)


    # int8 (a CNN's static QDQ calibrated on training images, a ViT's dynamic row by row) and fp16 copies,
    # scored on the digits test split
    int8, fp16 = manifest.variant("image_encoder", "int8"), manifest.variant("image_encoder", "fp16")
    expected = ("static-qdq", 256) if info.arch == "resnet" else ("dynamic-rowwise", 0)
    assert (int8.technique, int8.calibration_images, fp16.technique) == (*expected, "float16")
    for variant in (int8, fp16):
        assert manifest.files[variant.file_role] in manifest.file_sha256  # verified at load like the fp32 file
        assert variant.top1_change_pct == pytest.approx(variant.top1_pct - variant.fp32_top1_pct, abs=1e-3)
        assert 0 < variant.fp32_top1_pct <= 100 and "digits test" in variant.evaluation
        assert variant.min_cosine <= variant.mean_cosine <= 1.0
    assert fp16.min_cosine > 0.999 and int8.mean_cosine > 0.9
    assert int8.cpu_speedup > 0 and fp16.cpu_speedup is None  # int8 is timed against fp32 on this CPU; fp16 is for GPUs
    nodes = {n.op_type for n in onnx.load(str(again.file(int8.file_role))).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= nodes if info.arch == "resnet" else "MatMulIntegerToFloat" in nodes
    int8_rows = OnnxEncoder(again, "image_encoder", "cpu", file_role=int8.file_role).encode(batch.numpy())
    assert int8_rows.shape == got.shape and not np.allclose(int8_rows, got, atol=1e-6)  # its own file runs


def test_without_centering_the_bundle_serves_raw_embeddings_as_before(tmp_path: Path):
    checkpoint = _simclr(tmp_path)
    bundle = export_image_encoder(checkpoint, tmp_path / "artifacts", "vision", centering_images=0, int8=False, fp16=False)
    manifest = bundle.manifest
    assert (manifest.normalized, manifest.centering, manifest.variants) == (False, None, ())
    assert sorted(manifest.files) == ["image_encoder"]
    module, info = load_image_encoder(checkpoint)
    batch = torch.randn(3, *info.preprocessing.input_shape)  # (B, C, H, W)
    with torch.no_grad():
        expected = module(batch).numpy()  # (B, D), not normalised
    np.testing.assert_allclose(_embed(bundle, batch), expected, rtol=1e-3, atol=1e-4)


def test_training_data_not_on_this_machine_exports_without_centering(tmp_path: Path, caplog):
    torch.manual_seed(0)
    # a checkpoint's config has its image options filled (training took them from the data), so
    # nothing here reads the folder that is not on this machine
    config = SimCLRConfig(data=str(tmp_path / "no-such-folder"), width=4, image_size=16, mode="L", mean=(0.5,),
                          std=(0.25,), proj_hidden_dim=16, proj_dim=8)
    checkpoint = _checkpoint(tmp_path / "simclr.pt", SimCLR(config))
    bundle = export_image_encoder(checkpoint, tmp_path / "artifacts", "vision")
    assert bundle.manifest.centering is None and not bundle.manifest.normalized
    assert "without centring" in caplog.text
    # no training images: no int8 (nothing to calibrate on); fp16 is scored by cosine alone
    fp16 = bundle.manifest.variant("image_encoder", "fp16")
    assert bundle.manifest.variant("image_encoder", "int8") is None and "no int8 variant" in caplog.text
    assert fp16.top1_change_pct is None and fp16.min_cosine > 0.999 and "no labelled data" in fp16.evaluation


def test_centering_spreads_cosines_of_a_narrow_cone():
    # embeddings like pooled ReLU features: a large shared offset, most variance in two directions
    rng = np.random.default_rng(0)
    scales = np.r_[5.0, 3.0, np.full(30, 0.3)]
    x = 10.0 + rng.normal(size=(2000, 32)) * scales  # (N, D)

    def cosines(v: np.ndarray) -> np.ndarray:
        u = v / np.linalg.norm(v, axis=1, keepdims=True)
        return (u[:500] @ u[500:1000].T).ravel()

    mean, whitening = fit_centering(x)
    assert np.quantile(cosines(x), 0.1) > 0.9  # nearly every raw pair looks the same
    spread = cosines((x - mean) @ whitening)
    assert abs(spread.mean()) < 0.05 and np.quantile(spread, 0.9) < 0.5
    np.testing.assert_allclose(whitening, whitening.T, atol=1e-6)  # ZCA: symmetric
    # shrinkage: no direction is stretched beyond unit variance, the weak ones are damped
    variances = np.linalg.eigvalsh(np.cov((x - mean) @ whitening, rowvar=False))
    assert variances.max() < 1.0 and variances.min() > 0.05


def test_a_second_export_is_the_next_version(tmp_path: Path):
    checkpoint = _simclr(tmp_path)
    first = export_image_encoder(checkpoint, tmp_path / "artifacts", "vision", int8=False, fp16=False)
    second = export_image_encoder(checkpoint, tmp_path / "artifacts", "vision", int8=False, fp16=False)
    assert (first.manifest.version, second.manifest.version) == ("v1", "v2")
    assert open_bundle(tmp_path / "artifacts", "vision").manifest.version == "v2"
