from pathlib import Path

import numpy as np
import pytest
import torch

from export.onnx import check_parity, export_onnx, run_onnx
from training.methods.encoders import EncoderSpec, load_image_encoder


@pytest.mark.parametrize("run", ["simclr_run", "mae_run"])
def test_eval_encoder_exports_to_onnx_and_matches_torch(run, request, tmp_path: Path):
    # export's own functions, on the encoder load_image_encoder rebuilds: what `embedserve export` ships
    _, summary = request.getfixturevalue(run)
    encoder, info = load_image_encoder(summary["checkpoint_path"])
    images = torch.randn(5, *info.preprocessing.input_shape)  # (B, C, H, W)
    path = export_onnx(encoder, images[:2], tmp_path / "encoder.onnx")
    assert check_parity(encoder, path, images[:1]) >= 0.9999 and check_parity(encoder, path, images) >= 0.9999
    got = run_onnx(path, images.numpy())
    assert got.shape == (5, info.dim)
    with torch.no_grad():
        np.testing.assert_allclose(got, encoder(images).numpy(), rtol=1e-3, atol=1e-4)


def test_random_init_has_the_same_architecture_but_other_weights(simclr_run):
    _, summary = simclr_run
    trained, info = load_image_encoder(summary["checkpoint_path"])
    fresh, fresh_info = load_image_encoder(summary["checkpoint_path"], random_init=True)
    assert fresh_info == info and not fresh.training
    assert trained.state_dict().keys() == fresh.state_dict().keys()
    assert not torch.equal(trained.state_dict()["conv1.weight"], fresh.state_dict()["conv1.weight"])


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown encoder architecture"):
        EncoderSpec("vgg", {}, prefix="").build()
