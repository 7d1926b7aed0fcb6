import io
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch

from training.methods.encoders import build_image_encoder, load_image_encoder


def export_onnx(encoder: torch.nn.Module, channels: int, size: int) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(encoder, (torch.randn(2, channels, size, size),), buffer, dynamo=False, opset_version=17,
                          input_names=["images"], output_names=["embeddings"],
                          dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}})
    return buffer.getvalue()


@pytest.mark.parametrize("run", ["simclr_run", "mae_run"])
def test_eval_encoder_exports_to_onnx_and_matches_torch(run, request):
    _, summary = request.getfixturevalue(run)
    encoder, info = load_image_encoder(summary["checkpoint_path"])
    spec = info["preprocessing"]
    session = ort.InferenceSession(export_onnx(encoder, spec["channels"], spec["crop"]), providers=["CPUExecutionProvider"])
    for batch_size in (1, 5):
        images = torch.randn(batch_size, spec["channels"], spec["crop"], spec["crop"])
        with torch.no_grad():
            expected = encoder(images).numpy()
        got = session.run(None, {"images": images.numpy()})[0]
        assert got.shape == (batch_size, info["dim"])
        cosine = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
        assert cosine.min() >= 0.9999


def test_random_init_has_the_same_architecture_but_other_weights(simclr_run):
    _, summary = simclr_run
    trained, info = load_image_encoder(summary["checkpoint_path"])
    fresh, fresh_info = load_image_encoder(summary["checkpoint_path"], random_init=True)
    assert fresh_info == info and not fresh.training
    assert trained.state_dict().keys() == fresh.state_dict().keys()
    assert not torch.equal(trained.state_dict()["conv1.weight"], fresh.state_dict()["conv1.weight"])


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown encoder architecture"):
        build_image_encoder("vgg", {})
