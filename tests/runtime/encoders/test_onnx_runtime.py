from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from export.onnx import export_onnx
from runtime.bundle import Manifest, OnnxIO, write_bundle
from runtime.config import RuntimeConfig
from runtime.encoders.factory import load_encoder
from runtime.encoders.onnx_runtime import OnnxEncoder, resolve_providers, session_options


@pytest.fixture
def bundle_and_module(tmp_path: Path):
    torch.manual_seed(0)
    module = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5)).eval()
    manifest = Manifest(name="tiny", kind="image-encoder", method="simclr", dim=5, normalized=False,
                        files={"image_encoder": "image_encoder.onnx"}, onnx={"image_encoder": OnnxIO(("pixels",), "vectors")})

    def write_files(folder: Path) -> None:
        export_onnx(module, torch.randn(2, 3, 4, 4), folder / "image_encoder.onnx", "pixels", "vectors")

    return write_bundle(tmp_path, manifest, write_files), module


def test_auto_prefers_tensorrt_then_cuda_and_always_ends_with_cpu():
    gpu_build = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers("auto", gpu_build) == gpu_build
    assert resolve_providers("auto", ["AzureExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert resolve_providers("cpu, cuda", gpu_build) == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_naming_a_provider_this_build_lacks_says_how_to_fix_it():
    with pytest.raises(ValueError, match="onnxruntime-gpu"):
        resolve_providers("cuda", ["CPUExecutionProvider"])


def test_encode_returns_float32_rows_equal_to_torch(bundle_and_module):
    bundle, module = bundle_and_module
    encoder = load_encoder(bundle, RuntimeConfig(cache_dir=bundle.path.parents[2] / "cache"))
    assert isinstance(encoder, OnnxEncoder) and encoder.input_name == "pixels" and encoder.dim == 5
    batch = np.random.default_rng(0).normal(size=(3, 3, 4, 4))  # float64 on purpose: the encoder casts
    with torch.no_grad():
        expected = module(torch.from_numpy(batch).float()).numpy()
    got = encoder.encode(batch)
    assert got.dtype == np.float32 and got.shape == (3, 5)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_a_wrongly_shaped_batch_names_the_expected_shape(bundle_and_module):
    bundle, _ = bundle_and_module
    encoder = OnnxEncoder(bundle, "image_encoder", "cpu")
    with pytest.raises(ValueError, match=r"takes input shape \['batch', 3, 4, 4\]"):
        encoder.encode(np.zeros((2, 3, 8, 8), np.float32))


def test_concurrent_calls_give_the_serial_answers(bundle_and_module):
    bundle, _ = bundle_and_module
    encoder = OnnxEncoder(bundle, "image_encoder", "cpu")
    batches = [np.random.default_rng(i).normal(size=(i + 1, 3, 4, 4)).astype(np.float32) for i in range(8)]
    serial = [encoder.encode(b) for b in batches]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(encoder.encode, batches))
    for a, b in zip(serial, threaded):
        np.testing.assert_array_equal(a, b)


def test_serving_sessions_use_the_configured_threads_and_never_spin():
    options = session_options(3)
    assert options.intra_op_num_threads == 3
    # spinning pool threads would keep cores busy between calls, away from the HTTP side
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert session_options().intra_op_num_threads == RuntimeConfig().intra_op_threads  # the config and the module agree


def test_tensorrt_caches_its_engines_per_precision_and_builds_fp16_kernels_for_fp16(tmp_path: Path):
    from runtime.encoders.onnx_runtime import _options_for

    fp16 = _options_for("TensorrtExecutionProvider", tmp_path / "fp16", "fp16")
    assert fp16["trt_fp16_enable"] == "True" and fp16["trt_engine_cache_enable"] == "True"
    assert fp16["trt_engine_cache_path"] == str(tmp_path / "fp16") and (tmp_path / "fp16").is_dir()
    assert "trt_fp16_enable" not in _options_for("TensorrtExecutionProvider", None, "fp32")
    assert _options_for("CUDAExecutionProvider", tmp_path, "fp16") == {}  # CUDA runs the fp16 file itself


def test_row_tokens_are_what_each_text_makes_the_model_run(minilm_artifacts: Path, bundle_and_module):
    from runtime.bundle import open_bundle
    from runtime.tokens import load_tokenizer, text_encoder_batch

    bundle = open_bundle(minilm_artifacts, "minilm")
    encoder = load_encoder(bundle, RuntimeConfig(precision="fp32"), role="text_encoder")
    batch = text_encoder_batch(load_tokenizer(bundle.file("tokenizer")), ["ok", "a somewhat longer sentence to embed"])
    assert encoder.trims_padding  # its sequence axis is dynamic: a text costs its own tokens
    np.testing.assert_array_equal(encoder.row_tokens(batch), batch[:, 1].sum(axis=1))
    assert encoder.providers == ["CPUExecutionProvider"]
    image = OnnxEncoder(bundle_and_module[0], "image_encoder", "cpu")
    assert image.row_tokens(np.zeros((2, 3, 4, 4), np.float32)) is None  # images cost alike
