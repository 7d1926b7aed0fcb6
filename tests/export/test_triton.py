"""The Triton repository export writes: each config.pbtxt parsed with Triton's own schema (the
ModelConfig protobuf that tritonclient ships), and the whole repository of a real bundle loaded and
run by a real Triton server (tests/triton_server.py)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

import runtime.preprocessing
from export.triton import ONNX_BACKENDS, PREPROCESSING_MODULE, write_triton_repository
from runtime.bundle import BundleError, Manifest, OnnxIO, TokenizerSpec, open_bundle, write_bundle
from runtime.encoders.onnx_runtime import OnnxEncoder
from runtime.preprocessing import PreprocessingSpec

SPEC = PreprocessingSpec(mode="RGB", resize=10, crop=8, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2))
IMAGE_IO = {"image_encoder": OnnxIO(("images",), "embeddings")}


def _model_config_pb2():
    """Triton's model_config.proto as tritonclient ships it, loaded from its file: importing
    tritonclient.grpc would want grpcio, which tritonclient[http] does not bring."""
    spec = importlib.util.find_spec("tritonclient")
    if spec is None:
        pytest.skip("tritonclient is not installed (pip install 'embedserve[triton]')")
    path = Path(spec.submodule_search_locations[0]) / "grpc" / "model_config_pb2.py"
    module_spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


model_config_pb2 = _model_config_pb2()
TYPES = model_config_pb2.DataType


def parse_config(path: Path):
    """config.pbtxt as Triton reads it: a ParseError for any field or value its schema lacks."""
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def tensors(specs) -> list[tuple[str, str, list[int]]]:
    return [(t.name, TYPES.Name(t.data_type), list(t.dims)) for t in specs]


def _vision_repository(tmp_path: Path, onnx_backend: str) -> Path:
    manifest = Manifest(name="vision", kind="image-encoder", method="simclr", dim=32, normalized=False,
                        files={"image_encoder": "image_encoder.onnx"}, preprocessing=SPEC, onnx=IMAGE_IO)
    bundle = write_bundle(tmp_path / "artifacts", manifest, lambda f: (f / "image_encoder.onnx").write_bytes(b"onnx bytes"))
    write_triton_repository(bundle, tmp_path / "triton", max_batch_size=16, max_queue_delay_us=2000,
                            onnx_backend=onnx_backend, intra_op_threads=2)
    return tmp_path / "triton"


@pytest.fixture(params=ONNX_BACKENDS)
def repository(tmp_path: Path, request) -> Path:
    return _vision_repository(tmp_path, request.param)


def test_repository_layout(tmp_path: Path):
    repository = _vision_repository(tmp_path, "onnxruntime")
    files = sorted(str(p.relative_to(repository)) for p in repository.rglob("*") if p.is_file())
    assert files == [
        "vision/1/model.onnx", "vision/config.pbtxt",
        "vision_ensemble/config.pbtxt",
        "vision_preprocess/1/embedserve_preprocessing.py", "vision_preprocess/1/model.py", "vision_preprocess/config.pbtxt",
    ]
    assert (repository / "vision_ensemble" / "1").is_dir()  # Triton wants a version folder, even empty
    assert (repository / "vision/1/model.onnx").read_bytes() == b"onnx bytes"


def test_every_config_parses_with_tritons_schema_and_is_named_for_its_folder(repository: Path):
    configs = sorted(repository.glob("*/config.pbtxt"))
    assert [c.parent.name for c in configs] == ["vision", "vision_ensemble", "vision_preprocess"]
    for path in configs:
        config = parse_config(path)
        assert config.name == path.parent.name
        assert config.max_batch_size == 16


def test_onnx_config_names_the_bundles_inputs_outputs_and_dims(repository: Path):
    config = parse_config(repository / "vision/config.pbtxt")
    assert tensors(config.input) == [("images", "TYPE_FP32", [3, 8, 8])]
    assert tensors(config.output) == [("embeddings", "TYPE_FP32", [32])]
    assert config.HasField("dynamic_batching") and config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert config.version_policy.latest.num_versions == 1  # a new export's version replaces the old


def test_the_onnxruntime_backend_is_tritons_own(tmp_path: Path):
    repository = _vision_repository(tmp_path, "onnxruntime")
    config = parse_config(repository / "vision/config.pbtxt")
    assert (config.platform, config.backend) == ("onnxruntime_onnx", "")
    assert not (repository / "vision/1/model.py").exists()


def test_the_python_backend_runs_the_same_file_with_onnxruntime(tmp_path: Path):
    repository = _vision_repository(tmp_path, "python")
    config = parse_config(repository / "vision/config.pbtxt")
    assert (config.platform, config.backend) == ("", "python")
    assert config.parameters["intra_op_threads"].string_value == "2"
    assert [g.kind for g in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]
    assert (repository / "vision/1/model.onnx").read_bytes() == b"onnx bytes"
    assert "import onnxruntime" in (repository / "vision/1/model.py").read_text()


def test_an_unknown_onnx_backend_is_refused_before_anything_is_written(tmp_path: Path):
    with pytest.raises(ValueError, match="onnxruntime, python"):
        _vision_repository(tmp_path, "tensorrt")
    assert not (tmp_path / "triton").exists()


def test_preprocessing_config_carries_the_bundles_spec_and_limits(repository: Path):
    config = parse_config(repository / "vision_preprocess/config.pbtxt")
    assert config.backend == "python"
    assert tensors(config.input) == [("image", "TYPE_STRING", [1])]
    assert tensors(config.output) == [("images", "TYPE_FP32", [3, 8, 8])]
    parameters = {key: value.string_value for key, value in config.parameters.items()}
    assert PreprocessingSpec.from_dict(json.loads(parameters["preprocessing"])) == SPEC
    assert (parameters["max_bytes"], parameters["max_pixels"]) == ("10000000", "40000000")


def test_ensemble_chains_preprocessing_into_the_onnx_model(repository: Path):
    config = parse_config(repository / "vision_ensemble/config.pbtxt")
    assert config.platform == "ensemble"
    assert tensors(config.input) == [("image", "TYPE_STRING", [1])]
    assert tensors(config.output) == [("embeddings", "TYPE_FP32", [32])]
    steps = config.ensemble_scheduling.step
    assert [(s.model_name, s.model_version) for s in steps] == [("vision_preprocess", 1), ("vision", 1)]
    assert dict(steps[0].input_map) == {"image": "image"} and dict(steps[0].output_map) == {"images": "preprocessed"}
    assert dict(steps[1].input_map) == {"images": "preprocessed"}  # out of one step, into the next
    assert dict(steps[1].output_map) == {"embeddings": "embeddings"}


# The preprocessing module the Python backend imports, in a fresh `python -I -S` (no PYTHONPATH, no
# current folder, no site-packages .pth files, so not this checkout's editable install either) with
# only its own folder and the folders numpy and Pillow come from on the path: Triton's Python
# environment has no embedserve. (The real server below runs model.py itself.)
IMPORT_ALONE = r"""
import os, sys
folder, third_party = sys.argv[1:3]
sys.path[:0] = [folder, *third_party.split(os.pathsep)]
import embedserve_preprocessing
project = {"runtime", "training", "export", "serving", "index", "embedserve"}
print(*sorted(m for m in sys.modules if m.split(".")[0] in project))
"""


def test_the_copied_preprocessing_imports_nothing_of_the_project(repository: Path, tmp_path: Path):
    import PIL

    third_party = os.pathsep.join(sorted({str(Path(m.__file__).parents[1]) for m in (np, PIL)}))
    result = subprocess.run([sys.executable, "-I", "-S", "-c", IMPORT_ALONE, str(repository / "vision_preprocess/1"), third_party],
                            cwd=tmp_path, capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == []
    assert (repository / "vision_preprocess/1" / PREPROCESSING_MODULE).read_bytes() == \
        Path(runtime.preprocessing.__file__).read_bytes()


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
    for path in (tmp_path / "triton").glob("*/config.pbtxt"):
        assert parse_config(path).name == path.parent.name
    config = parse_config(tmp_path / "triton/clip_text_encoder/config.pbtxt")
    assert tensors(config.input) == [("ids", "TYPE_INT64", [12]), ("attention_mask", "TYPE_INT64", [12])]
    assert tensors(config.output) == [("embeddings", "TYPE_FP32", [16])]


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
    steps = parse_config(tmp_path / "triton/vision_ensemble/config.pbtxt").ensemble_scheduling.step
    assert [s.model_version for s in steps] == [2, 2]


# What Triton's onnxruntime backend checks as it loads a model of the default `onnxruntime_onnx`
# configs, which no Triton here can do (pytriton's server has no onnxruntime backend; the official
# image has): the config names every input of the ONNX model and outputs it has, with their types and
# shapes (the batch axis dynamic, as max_batch_size > 0 requires), and the file is one that the
# image's onnxruntime reads (tritonserver:24.08-py3 carries onnxruntime 1.18.1: IR 10, opset 21).
ONNX_TYPES = {"tensor(float)": "TYPE_FP32", "tensor(int64)": "TYPE_INT64"}
IMAGE_ONNXRUNTIME_MAX_IR, IMAGE_ONNXRUNTIME_MAX_OPSET = 10, 21


def test_the_default_onnxruntime_configs_agree_with_their_onnx_models(clip_bundle_artifacts: Path, tmp_path: Path):
    import onnx
    import onnxruntime as ort

    repository = tmp_path / "triton"
    for name in ("tiny", "clip"):
        write_triton_repository(open_bundle(clip_bundle_artifacts, name), repository)
    checked = []
    for path in sorted(repository.glob("*/config.pbtxt")):
        config = parse_config(path)
        if config.platform != "onnxruntime_onnx":
            continue
        onnx_file = repository / config.name / "1" / "model.onnx"
        session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
        graph = {t.name: (ONNX_TYPES.get(t.type, t.type), [d if isinstance(d, int) else -1 for d in t.shape])
                 for t in [*session.get_inputs(), *session.get_outputs()]}
        assert {t.name for t in config.input} == {t.name for t in session.get_inputs()}, config.name
        for tensor in [*config.input, *config.output]:
            data_type, shape = graph[tensor.name]
            assert TYPES.Name(tensor.data_type) == data_type, (config.name, tensor.name)
            assert shape[0] == -1 and len(shape) == 1 + len(tensor.dims), (config.name, tensor.name, shape)
            assert all(m in (-1, c) for m, c in zip(shape[1:], tensor.dims)), (config.name, tensor.name, shape)
        model = onnx.load(str(onnx_file), load_external_data=False)
        opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        assert model.ir_version <= IMAGE_ONNXRUNTIME_MAX_IR and opset <= IMAGE_ONNXRUNTIME_MAX_OPSET, config.name
        checked.append(config.name)
    assert checked == ["clip_image_encoder", "clip_text_encoder", "tiny"]


# A real bundle's repository (the tiny CLIP bundle and the tiny image bundle beside it), its ONNX
# models on the Python backend, loaded by a real Triton server: what `embedserve export --triton
# --triton-backend python` writes is what Triton runs.

@pytest.fixture(scope="module")
def triton(clip_bundle_artifacts: Path, tmp_path_factory):
    from tests.triton_server import TritonServer

    repository = tmp_path_factory.mktemp("triton-repository")
    for name in ("tiny", "clip"):
        write_triton_repository(open_bundle(clip_bundle_artifacts, name), repository, onnx_backend="python")
    server = TritonServer(repository, sorted(p.name for p in repository.iterdir()), tmp_path_factory.mktemp("triton"))
    yield server
    server.stop()


KIT_PROBE = r"""
import importlib.util, numpy, PIL
print(numpy.__version__, PIL.__version__, PIL.__file__)
print(*[name for name in ("runtime", "serving", "embedserve") if importlib.util.find_spec(name)])
"""


def test_tritons_python_has_the_images_packages_and_not_this_venvs():
    """The Python that the test Triton's models run in is the Triton image's: numpy < 2 as in the
    official image, the Pillow that deploy/triton.Dockerfile pins, and neither this venv's Pillow
    nor embedserve."""
    from tests.triton_server import IMAGE_REQUIREMENTS, kit_python, triton_kit

    kit = triton_kit()
    result = subprocess.run([str(kit_python(kit)), "-I", "-c", KIT_PROBE], capture_output=True, text=True,
                            env={"PATH": os.environ["PATH"]})
    assert result.returncode == 0, result.stderr
    versions, project = result.stdout.splitlines()[0].split(), result.stdout.splitlines()[1:]
    numpy_version, pillow_version, pillow_file = versions
    assert int(numpy_version.split(".")[0]) < 2
    assert f"pillow=={pillow_version}" in [r.lower() for r in IMAGE_REQUIREMENTS]
    assert Path(pillow_file).resolve().is_relative_to(kit.resolve()), pillow_file
    assert project in ([], [""]), f"the Triton Python imports the project: {project}"


@pytest.fixture(scope="module")
def client(triton):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(triton.url)
    yield client
    client.close()


def infer_images(client, model: str, blobs: list[bytes], output: str) -> np.ndarray:
    import tritonclient.http as httpclient

    request = httpclient.InferInput("image", [len(blobs), 1], "BYTES")
    request.set_data_from_numpy(np.array(blobs, dtype=object).reshape(-1, 1))  # (B, 1): one file per row
    return client.infer(model, [request]).as_numpy(output)


# What the gateway computes, run in the Python of the Triton image (numpy < 2 and the Pillow
# deploy/triton.Dockerfile pins, which the server image pins too: tests/test_deploy.py): Pillow
# releases differ by the odd pixel level (12.3 and 13.0 do on a 9x30 image), so a gateway and a
# Triton agree bit for bit only on one Pillow, and this is the batch a deployment's gateway sends.
GATEWAY_IN_IMAGE_PYTHON = r"""
import json, sys
from pathlib import Path
import numpy as np
folder, module_dir = Path(sys.argv[1]), sys.argv[2]
sys.path.insert(0, module_dir)
from preprocessing import PreprocessingSpec, decode_image, preprocess_batch
spec = PreprocessingSpec.from_dict(json.loads((folder / "spec.json").read_text()))
blobs = [p.read_bytes() for p in sorted(folder.glob("*.image"))]
np.save(folder / "batch.npy", preprocess_batch([decode_image(b, resize=spec.resize) for b in blobs], spec))
"""


def gateway_batch(blobs: list[bytes], spec: PreprocessingSpec, workdir: Path) -> np.ndarray:
    """What the gateway feeds the model: each image decoded at about the model's size, then
    preprocessed, by runtime/preprocessing.py in the Triton image's Python."""
    from tests.triton_server import kit_python, triton_kit

    (workdir / "spec.json").write_text(json.dumps(spec.to_dict()))
    for i, blob in enumerate(blobs):
        (workdir / f"{i:03d}.image").write_bytes(blob)
    module_dir = str(Path(runtime.preprocessing.__file__).parent)
    result = subprocess.run([str(kit_python(triton_kit())), "-I", "-c", GATEWAY_IN_IMAGE_PYTHON, str(workdir), module_dir],
                            capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
    assert result.returncode == 0, result.stderr
    return np.load(workdir / "batch.npy")  # (B, C, H, W)


# small images, and one large enough for the reduced decode of big images
IMAGE_SIZES = [(12, 10), (9, 30), (160, 120)]


def test_triton_loads_every_model_export_wrote(triton, client):
    index = {(m["name"], m.get("version")): m.get("state") for m in client.get_model_repository_index()}
    assert index == {
        ("tiny", "1"): "READY", ("tiny_preprocess", "1"): "READY", ("tiny_ensemble", "1"): "READY",
        ("clip_image_encoder", "1"): "READY", ("clip_image_encoder_preprocess", "1"): "READY",
        ("clip_image_encoder_ensemble", "1"): "READY", ("clip_text_encoder", "1"): "READY",
    }, triton.log()


@pytest.mark.parametrize("name, model", [("tiny", "tiny_preprocess"), ("clip", "clip_image_encoder_preprocess")])
def test_tritons_preprocessing_is_the_gateways_bit_for_bit(client, clip_bundle_artifacts: Path, make_png, tmp_path: Path,
                                                           name, model):
    spec = open_bundle(clip_bundle_artifacts, name).manifest.preprocessing
    blobs = [make_png(seed, size) for seed, size in enumerate(IMAGE_SIZES)]
    got = infer_images(client, model, blobs, "images")
    np.testing.assert_array_equal(got, gateway_batch(blobs, spec, tmp_path))


@pytest.mark.parametrize("name, model", [("tiny", "tiny_ensemble"), ("clip", "clip_image_encoder_ensemble")])
def test_the_ensemble_embeds_image_files_as_the_gateway_does(client, clip_bundle_artifacts: Path, make_png, tmp_path: Path,
                                                             name, model):
    bundle = open_bundle(clip_bundle_artifacts, name)
    blobs = [make_png(seed, size) for seed, size in enumerate(IMAGE_SIZES)]
    got = infer_images(client, model, blobs, bundle.manifest.onnx_io("image_encoder").output)
    expected = OnnxEncoder(bundle, "image_encoder").encode(gateway_batch(blobs, bundle.manifest.preprocessing, tmp_path))
    assert got.shape == (len(blobs), bundle.manifest.dim)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_an_unreadable_image_fails_with_the_reason(client):
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException, match="cannot read image"):
        infer_images(client, "tiny_ensemble", [b"not an image"], "embeddings")
