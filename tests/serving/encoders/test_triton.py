import sys
import types
from pathlib import Path

import numpy as np
import pytest

from export.bundle import Manifest, write_bundle
from serving.encoders.factory import load_encoder
from serving.encoders.triton import TritonEncoder
from serving.errors import NotReady
from serving.settings import Settings


class InferenceServerException(Exception):
    pass


class FakeClient:
    """Stands in for tritonclient.http.InferenceServerClient: a model that sums each row."""

    ready_models = {("tiny", "1")}
    calls: list = []

    def __init__(self, url, connection_timeout, network_timeout):
        self.url, self.closed = url, False

    def is_model_ready(self, name, version):
        return (name, version) in self.ready_models

    def infer(self, name, inputs, model_version, outputs):
        (request,) = inputs
        self.calls.append((name, model_version, request.name, request.shape, request.datatype, outputs[0].name))
        rows = request.data.reshape(len(request.data), -1).sum(axis=1, keepdims=True)  # (B, 1)
        return types.SimpleNamespace(as_numpy=lambda output_name: rows.astype(np.float64))

    def close(self):
        self.closed = True


class FakeInput:
    def __init__(self, name, shape, datatype):
        self.name, self.shape, self.datatype = name, shape, datatype

    def set_data_from_numpy(self, data, binary_data):
        self.data = data


@pytest.fixture
def fake_tritonclient(monkeypatch):
    http = types.ModuleType("tritonclient.http")
    http.InferenceServerClient, http.InferInput = FakeClient, FakeInput
    http.InferRequestedOutput = lambda name, binary_data: types.SimpleNamespace(name=name)
    utils = types.ModuleType("tritonclient.utils")
    utils.np_to_triton_dtype = lambda dtype: {np.dtype(np.float32): "FP32"}[np.dtype(dtype)]
    utils.InferenceServerException = InferenceServerException
    package = types.ModuleType("tritonclient")
    package.http, package.utils = http, utils
    monkeypatch.setitem(sys.modules, "tritonclient", package)
    monkeypatch.setitem(sys.modules, "tritonclient.http", http)
    monkeypatch.setitem(sys.modules, "tritonclient.utils", utils)
    FakeClient.calls = []


@pytest.fixture
def bundle(tmp_path: Path):
    manifest = Manifest(name="tiny", kind="image-encoder", method="simclr", dim=1, normalized=False,
                        files={"image_encoder": "image_encoder.onnx"},
                        extra={"onnx_input": "images", "onnx_output": "embeddings"})
    return write_bundle(tmp_path, manifest, lambda folder: (folder / "image_encoder.onnx").write_bytes(b"onnx"))


def test_triton_url_without_tritonclient_says_what_to_install(bundle, monkeypatch):
    monkeypatch.setitem(sys.modules, "tritonclient", None)  # an import of it now raises ImportError
    monkeypatch.setitem(sys.modules, "tritonclient.http", None)
    with pytest.raises(ImportError, match=r"pip install 'embedserve\[triton\]'"):
        load_encoder(bundle, Settings(triton_url="localhost:8000"))


def test_encode_calls_the_bundles_model_and_version_with_manifest_names(bundle, fake_tritonclient):
    encoder = load_encoder(bundle, Settings(triton_url="triton:8000"))
    assert isinstance(encoder, TritonEncoder)
    batch = np.ones((2, 3, 4, 4), np.float32)
    got = encoder.encode(batch)
    assert got.dtype == np.float32 and got.tolist() == [[48.0], [48.0]]
    assert FakeClient.calls == [("tiny", "1", "images", [2, 3, 4, 4], "FP32", "embeddings")]
    encoder.close()


def test_a_model_triton_has_not_loaded_is_not_ready(bundle, fake_tritonclient, monkeypatch):
    monkeypatch.setattr(FakeClient, "ready_models", set())
    with pytest.raises(NotReady, match="no ready model 'tiny' version 1"):
        TritonEncoder(bundle, "image_encoder", "triton:8000")
