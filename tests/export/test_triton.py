import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL
import pytest
from PIL import Image

from export.triton import write_triton_repository
from runtime.bundle import BundleError, Manifest, OnnxIO, TokenizerSpec, write_bundle
from runtime.preprocessing import PreprocessingSpec, decode_image, preprocess_batch

SPEC = PreprocessingSpec(mode="RGB", resize=10, crop=8, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2))
IMAGE_IO = {"image_encoder": OnnxIO(("images",), "embeddings")}


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    manifest = Manifest(name="vision", kind="image-encoder", method="simclr", dim=32, normalized=False,
                        files={"image_encoder": "image_encoder.onnx"}, preprocessing=SPEC, onnx=IMAGE_IO)
    bundle = write_bundle(tmp_path / "artifacts", manifest, lambda f: (f / "image_encoder.onnx").write_bytes(b"onnx bytes"))
    write_triton_repository(bundle, tmp_path / "triton", max_batch_size=16)
    return tmp_path / "triton"


def test_repository_layout(repository: Path):
    files = sorted(str(p.relative_to(repository)) for p in repository.rglob("*") if p.is_file())
    assert files == [
        "vision/1/model.onnx", "vision/config.pbtxt",
        "vision_ensemble/config.pbtxt",
        "vision_preprocess/1/embedserve_preprocessing.py", "vision_preprocess/1/model.py", "vision_preprocess/config.pbtxt",
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


# What the generated model.py is run with, in a fresh `python -I -S` (no PYTHONPATH, no current folder,
# no site-packages .pth files, so not this checkout's editable install either: no project package is
# importable) with only its model folder and the folders numpy and Pillow come from on the path: a
# stand-in for triton_python_backend_utils, which exists only inside Triton, then initialize()
# with the config's parameters as Triton passes them, then execute() on real PNG bytes.
RUN_MODEL = r"""
import json, os, re, sys, types

folder, config_path, blobs_path, out_path, third_party = sys.argv[1:6]
sys.path[:0] = third_party.split(os.pathsep)  # numpy and Pillow, as Triton's Python environment has them
class Tensor:
    def __init__(self, name, array): self.name, self.array = name, array
    def as_numpy(self): return self.array
pb = types.ModuleType("triton_python_backend_utils")
pb.Tensor, pb.TritonError = Tensor, lambda message: message
pb.InferenceResponse = lambda output_tensors, error=None: types.SimpleNamespace(outputs=output_tensors, error=error)
pb.get_input_tensor_by_name = lambda request, name: request[name]
sys.modules["triton_python_backend_utils"] = pb
import numpy as np
sys.path.insert(0, folder)
import model

config = open(config_path).read()
parameters = {k: {"string_value": v.encode().decode("unicode_escape")}
              for k, v in re.findall(r'key: "(\w+)" value: \{ string_value: "((?:[^"\\]|\\.)*)" \}', config)}
triton_model = model.TritonPythonModel()
triton_model.initialize({"model_config": json.dumps({"parameters": parameters})})
blobs = np.load(blobs_path, allow_pickle=True)
good, bad = triton_model.execute([{"image": Tensor("image", blobs.reshape(-1, 1))},
                                  {"image": Tensor("image", np.array([b"not an image"], dtype=object).reshape(-1, 1))}])
assert good.error is None, good.error
assert bad.outputs == [] and "cannot read image" in bad.error, bad.error
np.save(out_path, good.outputs[0].array)
project = {"runtime", "training", "export", "serving", "index", "embedserve"}
print(good.outputs[0].name, *sorted(m for m in sys.modules if m.split(".")[0] in project))
"""


def test_python_backend_runs_outside_this_checkout_and_computes_the_gateways_preprocessing(repository: Path, tmp_path: Path):
    rng = np.random.default_rng(0)
    blobs = []
    for size in [(20, 12), (9, 30)]:
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, "PNG")
        blobs.append(buffer.getvalue())
    np.save(tmp_path / "blobs.npy", np.array(blobs, dtype=object), allow_pickle=True)
    folder = repository / "vision_preprocess/1"
    third_party = os.pathsep.join(sorted({str(Path(m.__file__).parents[1]) for m in (np, PIL)}))
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", RUN_MODEL, str(folder), str(repository / "vision_preprocess/config.pbtxt"),
         str(tmp_path / "blobs.npy"), str(tmp_path / "out.npy"), third_party],
        cwd=tmp_path, capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["images"]  # the output name, and no project module was imported
    expected = preprocess_batch([decode_image(b) for b in blobs], SPEC)  # (B, C, H, W), as the gateway computes it
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected)


def test_files_are_readable_by_other_users(repository: Path):
    for path in repository.rglob("*"):
        mode = path.stat().st_mode & 0o777
        assert mode == (0o755 if path.is_dir() else 0o644), f"{path}: {oct(mode)}"


def _clip_bundle(artifacts: Path, tokenizer: bool = True):
    manifest = Manifest(name="clip", kind="image-text-encoder", method="clip", dim=16, normalized=True,
                        files={"image_encoder": "image_encoder.onnx", "text_encoder": "text_encoder.onnx"},
                        preprocessing=SPEC, tokenizer=TokenizerSpec("tokenizer.json", 12) if tokenizer else None,
                        onnx={**IMAGE_IO, "text_encoder": OnnxIO(("ids", "attention_mask"), "embeddings")})

    def write(folder: Path) -> None:
        (folder / "image_encoder.onnx").write_bytes(b"image tower")
        (folder / "text_encoder.onnx").write_bytes(b"text tower")

    return write_bundle(artifacts, manifest, write)


def test_a_clip_bundle_gets_both_towers(tmp_path: Path):
    write_triton_repository(_clip_bundle(tmp_path / "artifacts"), tmp_path / "triton")
    names = sorted(p.name for p in (tmp_path / "triton").iterdir())
    assert names == ["clip_image_encoder", "clip_image_encoder_ensemble", "clip_image_encoder_preprocess",
                     "clip_text_encoder"]
    assert (tmp_path / "triton/clip_text_encoder/1/model.onnx").read_bytes() == b"text tower"
    config = (tmp_path / "triton/clip_text_encoder/config.pbtxt").read_text()
    assert '{ name: "ids" data_type: TYPE_INT64 dims: [ 12 ] }' in config
    assert '{ name: "attention_mask" data_type: TYPE_INT64 dims: [ 12 ] }' in config
    assert '{ name: "embeddings" data_type: TYPE_FP32 dims: [ 16 ] }' in config


def test_a_bundle_it_cannot_serve_is_refused_before_anything_is_written(tmp_path: Path):
    with pytest.raises(BundleError, match="tokenizer"):
        write_triton_repository(_clip_bundle(tmp_path / "artifacts", tokenizer=False), tmp_path / "triton")
    assert not (tmp_path / "triton").exists()


def test_a_second_export_adds_the_next_version(tmp_path: Path):
    manifest = Manifest(name="vision", kind="image-encoder", method="simclr", dim=4, normalized=False,
                        files={"image_encoder": "image_encoder.onnx"}, preprocessing=SPEC, onnx=IMAGE_IO)
    for _ in range(2):
        bundle = write_bundle(tmp_path / "artifacts", manifest, lambda f: (f / "image_encoder.onnx").write_bytes(b"x"))
        write_triton_repository(bundle, tmp_path / "triton")
    assert sorted(p.name for p in (tmp_path / "triton/vision").iterdir()) == ["1", "2", "config.pbtxt"]
    assert "model_version: 2" in (tmp_path / "triton/vision_ensemble/config.pbtxt").read_text()
