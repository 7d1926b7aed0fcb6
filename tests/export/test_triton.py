import importlib.util
import io
import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from export.bundle import Manifest, write_bundle
from export.triton import write_triton_repository
from serving.preprocessing import decode_image, preprocess_batch

SPEC = {"image_size": 8, "channels": 3, "mode": "RGB", "resize": 10, "crop": 8, "interpolation": "bilinear",
        "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2]}


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    manifest = Manifest(name="vision", kind="image-encoder", method="simclr", dim=32, normalized=False,
                        files={"image_encoder": "image_encoder.onnx"}, preprocessing=SPEC,
                        extra={"onnx_input": "images", "onnx_output": "embeddings"})
    bundle = write_bundle(tmp_path / "artifacts", manifest, lambda f: (f / "image_encoder.onnx").write_bytes(b"onnx bytes"))
    write_triton_repository(bundle, tmp_path / "triton", max_batch_size=16)
    return tmp_path / "triton"


def test_repository_layout(repository: Path):
    files = sorted(str(p.relative_to(repository)) for p in repository.rglob("*") if p.is_file())
    assert files == [
        "vision/1/model.onnx", "vision/config.pbtxt",
        "vision_ensemble/config.pbtxt",
        "vision_preprocess/1/embedserve_images.py", "vision_preprocess/1/model.py", "vision_preprocess/config.pbtxt",
    ]
    assert (repository / "vision_ensemble" / "1").is_dir()  # Triton wants a version folder, even empty
    assert (repository / "vision/1/model.onnx").read_bytes() == b"onnx bytes"


def test_onnx_config_names_the_bundles_inputs_outputs_and_dims(repository: Path):
    config = (repository / "vision/config.pbtxt").read_text()
    assert 'name: "vision"' in config and 'platform: "onnxruntime_onnx"' in config
    assert "max_batch_size: 16" in config and "dynamic_batching" in config
    assert '{ name: "images" data_type: TYPE_FP32 dims: [ 3, 8, 8 ] }' in config
    assert '{ name: "embeddings" data_type: TYPE_FP32 dims: [ 32 ] }' in config


def test_ensemble_chains_preprocessing_into_the_onnx_model(repository: Path):
    config = (repository / "vision_ensemble/config.pbtxt").read_text()
    assert 'platform: "ensemble"' in config
    assert '{ name: "image" data_type: TYPE_STRING dims: [ 1 ] }' in config
    assert '{ name: "embeddings" data_type: TYPE_FP32 dims: [ 32 ] }' in config
    steps = re.findall(r'model_name: "(\w+)"', config)
    assert steps == ["vision_preprocess", "vision"]
    assert config.count('value: "preprocessed"') == 2  # out of one step, into the next


class FakeTensor:
    """triton_python_backend_utils.Tensor, as far as model.py uses it."""

    def __init__(self, name, array):
        self.name, self.array = name, array

    def as_numpy(self):
        return self.array


def _load_python_model(repository: Path, monkeypatch) -> types.ModuleType:
    """Import the generated model.py against a stand-in for triton_python_backend_utils."""
    pb_utils = types.ModuleType("triton_python_backend_utils")
    pb_utils.Tensor = FakeTensor
    pb_utils.TritonError = lambda message: message
    pb_utils.InferenceResponse = lambda output_tensors, error=None: types.SimpleNamespace(outputs=output_tensors, error=error)
    pb_utils.get_input_tensor_by_name = lambda request, name: request[name]
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb_utils)
    monkeypatch.syspath_prepend(str(repository / "vision_preprocess/1"))
    spec = importlib.util.spec_from_file_location("triton_model", repository / "vision_preprocess/1/model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_python_backend_computes_the_gateways_preprocessing(repository: Path, monkeypatch):
    module = _load_python_model(repository, monkeypatch)
    config = (repository / "vision_preprocess/config.pbtxt").read_text()
    # the config's parameters, as Triton hands them to initialize() (model_config as JSON)
    parameters = {key: {"string_value": value.encode().decode("unicode_escape")}
                  for key, value in re.findall(r'key: "(\w+)" value: \{ string_value: "((?:[^"\\]|\\.)*)" \}', config)}
    model = module.TritonPythonModel()
    model.initialize({"model_config": json.dumps({"parameters": parameters})})
    assert model.spec == SPEC

    rng = np.random.default_rng(0)
    blobs = []
    for size in [(20, 12), (9, 30)]:
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, "PNG")
        blobs.append(buffer.getvalue())
    request = {"image": FakeTensor("image", np.array(blobs, dtype=object).reshape(-1, 1))}  # (B, 1)
    (response,) = model.execute([request])
    assert response.error is None
    (output,) = response.outputs
    assert output.name == "images"
    expected = preprocess_batch([decode_image(b, 10**6, 10**6) for b in blobs], SPEC)  # (B, C, H, W)
    np.testing.assert_array_equal(output.array, expected)

    (bad,) = model.execute([{"image": FakeTensor("image", np.array([b"not an image"], dtype=object).reshape(-1, 1))}])
    assert bad.outputs == [] and "cannot read image" in bad.error


def test_a_second_export_adds_the_next_version(tmp_path: Path):
    manifest = Manifest(name="vision", kind="image-encoder", method="simclr", dim=4, normalized=False,
                        files={"image_encoder": "image_encoder.onnx"}, preprocessing=SPEC,
                        extra={"onnx_input": "images", "onnx_output": "embeddings"})
    for _ in range(2):
        bundle = write_bundle(tmp_path / "artifacts", manifest, lambda f: (f / "image_encoder.onnx").write_bytes(b"x"))
        write_triton_repository(bundle, tmp_path / "triton")
    assert sorted(p.name for p in (tmp_path / "triton/vision").iterdir()) == ["1", "2", "config.pbtxt"]
    assert "model_version: 2" in (tmp_path / "triton/vision_ensemble/config.pbtxt").read_text()
