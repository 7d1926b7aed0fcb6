"""TritonEncoder with the real `tritonclient` against a real Triton server on loopback: the
tritonserver binary nvidia-pytriton carries (tests/triton_server.py), serving the repository that
export/triton.py writes for the tiny image bundle and the tiny CLIP bundle (ONNX models on the
Python backend, as that build has no onnxruntime backend)."""

import sys
from pathlib import Path

import numpy as np
import pytest

from export.triton import write_triton_repository
from runtime.bundle import open_bundle
from runtime.config import RuntimeConfig
from runtime.encoders.base import EncoderUnavailable
from runtime.encoders.factory import load_encoder
from runtime.encoders.onnx_runtime import OnnxEncoder
from runtime.encoders.triton import TritonEncoder
from tests.triton_server import TritonServer

pytest.importorskip("tritonclient.http")


def triton_repository(artifacts: Path, folder: Path) -> Path:
    for name in ("tiny", "clip"):
        write_triton_repository(open_bundle(artifacts, name), folder, onnx_backend="python")
    return folder


@pytest.fixture(scope="module")
def triton(clip_bundle_artifacts: Path, tmp_path_factory) -> TritonServer:
    repository = triton_repository(clip_bundle_artifacts, tmp_path_factory.mktemp("triton-repository"))
    server = TritonServer(repository, ["tiny", "clip_text_encoder"], tmp_path_factory.mktemp("triton"))
    yield server
    server.stop()


def test_triton_url_without_tritonclient_says_what_to_install(image_artifacts, monkeypatch):
    monkeypatch.setitem(sys.modules, "tritonclient", None)  # an import of it now raises ImportError
    monkeypatch.setitem(sys.modules, "tritonclient.http", None)
    with pytest.raises(ImportError, match=r"pip install 'embedserve\[triton\]'"):
        load_encoder(open_bundle(image_artifacts, "tiny"), RuntimeConfig(triton_url="127.0.0.1:9"))


def test_triton_encoder_gives_what_onnxruntime_gives(triton, clip_bundle_artifacts: Path):
    bundle = open_bundle(clip_bundle_artifacts, "tiny")
    encoder = load_encoder(bundle, RuntimeConfig(triton_url=triton.url))
    assert isinstance(encoder, TritonEncoder)
    assert (encoder.model_name, encoder.model_version) == ("tiny", "1")  # bundle v1 is Triton version 1
    batch = np.random.default_rng(0).normal(size=(3, 1, 8, 8)).astype(np.float32)  # (B, C, H, W)
    got = encoder.encode(batch)
    assert got.dtype == np.float32 and got.shape == (3, 16)
    np.testing.assert_allclose(got, OnnxEncoder(bundle, "image_encoder").encode(batch), rtol=1e-5, atol=1e-5)
    encoder.close()


def test_a_clip_text_tower_on_triton_gives_what_onnxruntime_gives(triton, clip_bundle_artifacts: Path):
    # two INT64 inputs, carried stacked (B, 2, T) as the micro-batcher hands them, sent as two tensors
    from runtime.tokens import load_tokenizer, text_encoder_batch

    bundle = open_bundle(clip_bundle_artifacts, "clip")
    encoder = TritonEncoder(bundle, "text_encoder", triton.url)
    tokens = text_encoder_batch(load_tokenizer(bundle.file("tokenizer")), ["a sneaker", "a bag", "une robe"])
    np.testing.assert_allclose(encoder.encode(tokens), OnnxEncoder(bundle, "text_encoder").encode(tokens),
                               rtol=1e-5, atol=1e-5)
    encoder.close()


def test_a_model_triton_has_not_loaded_is_not_ready(triton, clip_artifacts: Path, write_image_bundle):
    write_image_bundle(clip_artifacts, "tiny", seed=1)  # v2: the server has version 1 only
    with pytest.raises(EncoderUnavailable, match="no ready model 'tiny' version 2"):
        TritonEncoder(open_bundle(clip_artifacts, "tiny"), "image_encoder", triton.url)


def test_an_unreachable_server_is_not_ready_and_says_which_setting(image_artifacts):
    with pytest.raises(EncoderUnavailable, match="check the Triton URL setting"):
        TritonEncoder(open_bundle(image_artifacts, "tiny"), "image_encoder", "127.0.0.1:9", timeout_s=2)


def test_a_server_that_stopped_makes_encode_unavailable_with_the_reason(clip_bundle_artifacts: Path, tmp_path: Path):
    # a server of its own, to stop: the encoder was built (and ran) while it was up
    server = TritonServer(triton_repository(clip_bundle_artifacts, tmp_path / "repository"), ["tiny"], tmp_path)
    try:
        encoder = TritonEncoder(open_bundle(clip_bundle_artifacts, "tiny"), "image_encoder", server.url)
        batch = np.zeros((2, 1, 8, 8), dtype=np.float32)
        assert encoder.encode(batch).shape == (2, 16)
    finally:
        server.stop()
    with pytest.raises(EncoderUnavailable, match=f"cannot reach Triton at {server.url} to run 'tiny'"):
        encoder.encode(batch)
    encoder.close()
