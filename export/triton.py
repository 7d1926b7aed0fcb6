"""A bundle's models as a Triton Inference Server model repository, under artifacts/triton/.

For each image model (an image encoder, or a CLIP bundle's image tower) three Triton models:
`<model>` (the bundle's ONNX file, dynamic batching; what runtime.encoders.triton.TritonEncoder
calls with preprocessed batches), `<model>_preprocess` (Python backend: image bytes to the same
float32 input the server computes, with runtime/preprocessing.py copied beside it) and
`<model>_ensemble` (bytes in, embeddings out, for clients that talk to Triton directly). A CLIP
bundle's text tower is one ONNX model taking token ids and attention mask (INT64), which the
gateway tokenises with the bundle's tokenizer. Everything is checked before anything is written,
so a bundle this writer cannot serve leaves the repository as it was.

Each ONNX model runs on one of two backends (`onnx_backend`): "onnxruntime", Triton's own
onnxruntime backend (`platform: "onnxruntime_onnx"`, in the full Triton images), or "python", a
Python-backend model that runs the same file with the onnxruntime package, for Triton builds
without that backend (the one nvidia-pytriton ships); its Python environment needs numpy and
onnxruntime. Names, inputs and outputs are the same either way, so TritonEncoder cannot tell.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import runtime.preprocessing
from runtime.bundle import Bundle, BundleError
from runtime.encoders.triton import triton_model_name, triton_model_version
from runtime.files import atomic_write_text, write_versioned_dir

PREPROCESS_SUFFIX = "_preprocess"
ENSEMBLE_SUFFIX = "_ensemble"
BYTES_INPUT = "image"  # the ensemble's and preprocessing model's input: one encoded image file per row
# The Python backend runs in Triton's own interpreter, where embedserve is not installed: the one
# preprocessing module (no project imports) is copied beside model.py under this name.
PREPROCESSING_MODULE = "embedserve_preprocessing.py"
ONNX_BACKENDS = ("onnxruntime", "python")  # Triton's onnxruntime backend, or onnxruntime inside the Python backend
# The roles of the ONNX models each bundle kind holds.
ROLES = {"image-encoder": ("image_encoder",), "image-text-encoder": ("image_encoder", "text_encoder")}

PREPROCESS_MODEL_PY = '''"""Triton Python backend: encoded image bytes -> the float32 input of model {onnx_model!r}.

Written by embedserve's export/triton.py. The checks and the arithmetic are embedserve's own
runtime/preprocessing.py (copied beside this file as {module}), so Triton and the gateway compute
the same input and refuse the same images.
"""

import json
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, str(Path(__file__).parent))
from {module_import} import ImageLimits, PreprocessingSpec, decode_image, preprocess_image  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        parameters = json.loads(args["model_config"])["parameters"]
        self.spec = PreprocessingSpec.from_dict(json.loads(parameters["preprocessing"]["string_value"]))
        self.limits = ImageLimits(max_bytes=int(parameters["max_bytes"]["string_value"]),
                                  max_pixels=int(parameters["max_pixels"]["string_value"]))

    def execute(self, requests):
        responses = []
        for request in requests:
            blobs = pb_utils.get_input_tensor_by_name(request, "{bytes_input}").as_numpy()  # (B, 1) bytes
            try:
                # decoded at about the model's size (spec.resize), as the gateway decodes
                batch = np.stack([preprocess_image(decode_image(bytes(blob), self.limits, self.spec.resize), self.spec)
                                  for blob in blobs.reshape(-1)])  # (B, C, H, W)
                output = pb_utils.Tensor("{preprocessed}", batch.astype(np.float32))
                responses.append(pb_utils.InferenceResponse(output_tensors=[output]))
            except ValueError as e:  # one bad image fails its own request, not the batch's others
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(f"cannot read image: {{e}}")))
        return responses

    def finalize(self):
        pass
'''

ONNX_MODEL_PY = '''"""Triton Python backend: model {onnx_model!r}, the bundle's ONNX file (model.onnx) run with onnxruntime.

Written by embedserve's export/triton.py for Triton builds without the onnxruntime backend. The
inputs and the output are config.pbtxt's, which are the bundle's, so a client cannot tell this
model from the `onnxruntime_onnx` one.
"""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.inputs = [tensor["name"] for tensor in config["input"]]
        self.output = config["output"][0]["name"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(config["parameters"]["intra_op_threads"]["string_value"])  # 0: onnxruntime's choice
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        # dynamic batching hands over several requests at once: one session run for all their rows
        arrays = {{name: [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for r in requests] for name in self.inputs}}
        rows = [len(a) for a in arrays[self.inputs[0]]]
        try:
            feeds = {{name: np.concatenate(parts) for name, parts in arrays.items()}}  # (sum of rows, ...)
            embeddings = self.session.run([self.output], feeds)[0]  # (sum of rows, D)
        except Exception as e:  # shapes or types the model refuses: every request of the batch says why
            error = pb_utils.TritonError(f"onnxruntime could not run {onnx_model!r}: {{e}}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output, np.ascontiguousarray(part))])
                for part in np.split(embeddings, np.cumsum(rows)[:-1])]

    def finalize(self):
        self.session = None
'''


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a Triton model, as config.pbtxt states it (batch axis left out)."""

    name: str
    data_type: str  # TYPE_FP32, TYPE_INT64, TYPE_STRING
    dims: tuple[int, ...]

    def pbtxt(self) -> str:
        return f'{{ name: "{self.name}" data_type: {self.data_type} dims: [ {", ".join(map(str, self.dims))} ] }}'


def _tensors(tensors: list[TensorSpec]) -> str:
    return ",\n".join(f"  {t.pbtxt()}" for t in tensors)


def _onnx_config(name: str, inputs: list[TensorSpec], output: TensorSpec, max_batch_size: int,
                 max_queue_delay_us: int, backend: str, intra_op_threads: int) -> str:
    if backend == "python":
        runs_on = (f'backend: "python"\n'
                   f'parameters {{ key: "intra_op_threads" value: {{ string_value: "{intra_op_threads}" }} }}\n'
                   "instance_group [ { kind: KIND_CPU } ]")
    else:
        runs_on = 'platform: "onnxruntime_onnx"'
    return f"""name: "{name}"
{runs_on}
max_batch_size: {max_batch_size}
input [
{_tensors(inputs)}
]
output [
{_tensors([output])}
]
dynamic_batching {{ max_queue_delay_microseconds: {max_queue_delay_us} }}
version_policy: {{ latest: {{ num_versions: 1 }} }}
"""


def _preprocess_config(name: str, output: TensorSpec, spec: dict, max_batch_size: int, max_bytes: int,
                       max_pixels: int) -> str:
    spec_json = json.dumps(spec, sort_keys=True).replace("\\", "\\\\").replace('"', '\\"')
    return f"""name: "{name}"
backend: "python"
max_batch_size: {max_batch_size}
input [
{_tensors([TensorSpec(BYTES_INPUT, "TYPE_STRING", (1,))])}
]
output [
{_tensors([output])}
]
parameters {{ key: "preprocessing" value: {{ string_value: "{spec_json}" }} }}
parameters {{ key: "max_bytes" value: {{ string_value: "{max_bytes}" }} }}
parameters {{ key: "max_pixels" value: {{ string_value: "{max_pixels}" }} }}
instance_group [ {{ kind: KIND_CPU }} ]
version_policy: {{ latest: {{ num_versions: 1 }} }}
"""


def _ensemble_config(name: str, preprocess: str, onnx_model: str, version: str, onnx_input: str, output: TensorSpec,
                     max_batch_size: int) -> str:
    return f"""name: "{name}"
platform: "ensemble"
max_batch_size: {max_batch_size}
input [
{_tensors([TensorSpec(BYTES_INPUT, "TYPE_STRING", (1,))])}
]
output [
{_tensors([output])}
]
ensemble_scheduling {{
  step [
    {{
      model_name: "{preprocess}"
      model_version: {version}
      input_map {{ key: "{BYTES_INPUT}" value: "{BYTES_INPUT}" }}
      output_map {{ key: "{onnx_input}" value: "preprocessed" }}
    }},
    {{
      model_name: "{onnx_model}"
      model_version: {version}
      input_map {{ key: "{onnx_input}" value: "preprocessed" }}
      output_map {{ key: "{output.name}" value: "{output.name}" }}
    }}
  ]
}}
"""


Fill = Callable[[Path, str], None]


def _models(bundle: Bundle, max_batch_size: int, max_queue_delay_us: int, max_bytes: int,
            max_pixels: int, onnx_backend: str, intra_op_threads: int) -> dict[str, tuple[Fill, str]]:
    """Every Triton model of `bundle`: name -> (what fills its version folder, its config.pbtxt).
    Raises BundleError, having written nothing, for a bundle this writer cannot serve."""
    if onnx_backend not in ONNX_BACKENDS:
        raise ValueError(f"onnx_backend {onnx_backend!r}: choose one of {', '.join(ONNX_BACKENDS)}")
    manifest = bundle.manifest
    if manifest.kind not in ROLES:
        raise BundleError(f"{manifest.name} is a {manifest.kind} bundle: only image encoders and CLIP "
                          "image-text encoders have Triton models")
    version = triton_model_version(manifest) or "1"
    models: dict[str, tuple[Fill, str]] = {}
    for role in ROLES[manifest.kind]:
        io, source = manifest.onnx_io(role), bundle.file(role)
        output = TensorSpec(io.output, "TYPE_FP32", (manifest.dim,))
        onnx_model = triton_model_name(manifest, role)

        def onnx_files(folder: Path, _: str, source: Path = source, onnx_model: str = onnx_model) -> None:
            shutil.copyfile(source, folder / "model.onnx")
            if onnx_backend == "python":
                (folder / "model.py").write_text(ONNX_MODEL_PY.format(onnx_model=onnx_model), encoding="utf-8")

        def onnx_config(inputs: list[TensorSpec], name: str = onnx_model, output: TensorSpec = output) -> str:
            return _onnx_config(name, inputs, output, max_batch_size, max_queue_delay_us, onnx_backend, intra_op_threads)

        if role == "text_encoder":
            if manifest.tokenizer is None:
                raise BundleError(f"{manifest.name}: a text tower needs a tokenizer in its manifest")
            inputs = [TensorSpec(name, "TYPE_INT64", (manifest.tokenizer.context_length,)) for name in io.inputs]
            models[onnx_model] = (onnx_files, onnx_config(inputs))
            continue
        spec = manifest.preprocessing
        if spec is None:
            raise BundleError(f"{manifest.name}: an image model needs a preprocessing spec in its manifest")
        image_input = TensorSpec(io.inputs[0], "TYPE_FP32", spec.input_shape)
        preprocess, ensemble = onnx_model + PREPROCESS_SUFFIX, onnx_model + ENSEMBLE_SUFFIX

        def python_files(folder: Path, _: str, onnx_model: str = onnx_model, onnx_input: str = image_input.name) -> None:
            shutil.copyfile(runtime.preprocessing.__file__, folder / PREPROCESSING_MODULE)
            (folder / "model.py").write_text(PREPROCESS_MODEL_PY.format(
                onnx_model=onnx_model, module=PREPROCESSING_MODULE, module_import=PREPROCESSING_MODULE.removesuffix(".py"),
                bytes_input=BYTES_INPUT, preprocessed=onnx_input), encoding="utf-8")

        models[onnx_model] = (onnx_files, onnx_config([image_input]))
        models[preprocess] = (python_files, _preprocess_config(
            preprocess, TensorSpec(image_input.name, "TYPE_FP32", spec.input_shape), spec.to_dict(), max_batch_size,
            max_bytes, max_pixels))
        models[ensemble] = (lambda folder, _: None, _ensemble_config(
            ensemble, preprocess, onnx_model, version, image_input.name, output, max_batch_size))
    return models


def write_triton_repository(bundle: Bundle, triton_dir: Path | str, max_batch_size: int = 64,
                            max_queue_delay_us: int = 0, max_bytes: int = 10_000_000,
                            max_pixels: int = 40_000_000, onnx_backend: str = "onnxruntime",
                            intra_op_threads: int = 0) -> list[Path]:
    """Add `bundle`'s models to the Triton repository `triton_dir`; returns their folders. Each
    version folder is written atomically; Triton versions are the bundle's (v3 -> 3), so
    TritonEncoder asks for exactly the exported model. `onnx_backend` is "onnxruntime" (Triton's
    onnxruntime backend) or "python" (onnxruntime in the Python backend, `intra_op_threads`
    threads per model instance, 0 for onnxruntime's choice). `max_queue_delay_us` is how long
    Triton holds a request for later ones to join its batch; 0, as the gateway's max_wait_ms: a
    batch is what queued while the model was busy, and the gateway already sends whole batches."""
    triton_dir = Path(triton_dir)
    version = triton_model_version(bundle.manifest) or "1"
    folders = []
    models = _models(bundle, max_batch_size, max_queue_delay_us, max_bytes, max_pixels, onnx_backend, intra_op_threads)
    for model, (fill, config) in models.items():
        # the version folder first, then the config that serves it: Triton never sees a config without its files
        write_versioned_dir(triton_dir / model, fill, version, make_current=False)
        atomic_write_text(triton_dir / model / "config.pbtxt", config)
        folders.append(triton_dir / model)
    return folders
