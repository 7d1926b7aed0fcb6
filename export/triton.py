"""An image-encoder bundle as a Triton Inference Server model repository, under artifacts/triton/.

Three models per bundle: `<name>` (the bundle's ONNX file, dynamic batching; what the gateway's
TritonEncoder calls with preprocessed batches), `<name>_preprocess` (Python backend: image bytes
to the same float32 input serving computes) and `<name>_ensemble` (bytes in, embeddings out,
for clients that talk to Triton directly).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import training.data.images
from export.bundle import Bundle, atomic_write_text, write_versioned_dir
from serving.encoders.triton import triton_model_name, triton_model_version

PREPROCESS_SUFFIX = "_preprocess"
ENSEMBLE_SUFFIX = "_ensemble"
BYTES_INPUT = "image"  # the ensemble's and preprocessing model's input: one encoded image file per row
# The Python backend runs in Triton's own interpreter, where embedserve is not installed: the one
# preprocessing module (torch-free) is copied beside model.py under this name.
IMAGES_MODULE = "embedserve_images.py"

MODEL_PY = '''"""Triton Python backend: encoded image bytes -> the float32 input of model {onnx_model!r}.

Written by embedserve's export/triton.py. The arithmetic is embedserve's own preprocess_image
(copied beside this file as {images_module}), so Triton and the gateway compute the same input.
"""

import io
import json
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from {images_import} import preprocess_image  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        parameters = json.loads(args["model_config"])["parameters"]
        self.spec = json.loads(parameters["preprocessing"]["string_value"])
        self.max_pixels = int(parameters["max_pixels"]["string_value"])

    def _decode(self, data):
        img = Image.open(io.BytesIO(data))  # the header only
        width, height = img.size
        if width * height > self.max_pixels:
            raise ValueError(f"image is {{width}}x{{height}} pixels; the limit is {{self.max_pixels}}")
        img.load()  # the full decode: truncated files fail here
        return preprocess_image(img, self.spec)  # (C, H, W)

    def execute(self, requests):
        responses = []
        for request in requests:
            blobs = pb_utils.get_input_tensor_by_name(request, "{bytes_input}").as_numpy()  # (B, 1) bytes
            try:
                batch = np.stack([self._decode(blob) for blob in blobs.reshape(-1)])  # (B, C, H, W)
                output = pb_utils.Tensor("{preprocessed}", batch.astype(np.float32))
                responses.append(pb_utils.InferenceResponse(output_tensors=[output]))
            except Exception as e:  # one bad image fails its own request, not the batch's others
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(f"cannot read image: {{e}}")))
        return responses

    def finalize(self):
        pass
'''


def _dims(shape: list[int]) -> str:
    return "[ " + ", ".join(str(d) for d in shape) + " ]"


def _onnx_config(name: str, input_name: str, output_name: str, input_dims: list[int], dim: int,
                 max_batch_size: int, max_queue_delay_us: int) -> str:
    return f"""name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
input [
  {{ name: "{input_name}" data_type: TYPE_FP32 dims: {_dims(input_dims)} }}
]
output [
  {{ name: "{output_name}" data_type: TYPE_FP32 dims: {_dims([dim])} }}
]
dynamic_batching {{ max_queue_delay_microseconds: {max_queue_delay_us} }}
version_policy: {{ latest: {{ num_versions: 1 }} }}
"""


def _preprocess_config(name: str, output_name: str, output_dims: list[int], spec: dict, max_batch_size: int,
                       max_pixels: int) -> str:
    spec_json = json.dumps(spec, sort_keys=True).replace("\\", "\\\\").replace('"', '\\"')
    return f"""name: "{name}"
backend: "python"
max_batch_size: {max_batch_size}
input [
  {{ name: "{BYTES_INPUT}" data_type: TYPE_STRING dims: [ 1 ] }}
]
output [
  {{ name: "{output_name}" data_type: TYPE_FP32 dims: {_dims(output_dims)} }}
]
parameters {{ key: "preprocessing" value: {{ string_value: "{spec_json}" }} }}
parameters {{ key: "max_pixels" value: {{ string_value: "{max_pixels}" }} }}
instance_group [ {{ kind: KIND_CPU }} ]
version_policy: {{ latest: {{ num_versions: 1 }} }}
"""


def _ensemble_config(name: str, preprocess: str, onnx_model: str, version: str, onnx_input: str, onnx_output: str,
                     input_dims: list[int], dim: int, max_batch_size: int) -> str:
    return f"""name: "{name}"
platform: "ensemble"
max_batch_size: {max_batch_size}
input [
  {{ name: "{BYTES_INPUT}" data_type: TYPE_STRING dims: [ 1 ] }}
]
output [
  {{ name: "{onnx_output}" data_type: TYPE_FP32 dims: {_dims([dim])} }}
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
      output_map {{ key: "{onnx_output}" value: "{onnx_output}" }}
    }}
  ]
}}
"""


def write_triton_repository(bundle: Bundle, triton_dir: Path | str, max_batch_size: int = 64,
                            max_queue_delay_us: int = 5000, max_pixels: int = 40_000_000) -> list[Path]:
    """Add `bundle` (an image encoder) to the Triton repository `triton_dir`; returns the three
    model folders. Each version folder is written atomically; Triton versions are the bundle's
    (v3 -> 3), so the gateway's TritonEncoder asks for exactly the exported model."""
    manifest = bundle.manifest
    if manifest.kind != "image-encoder":
        raise ValueError(f"only image-encoder bundles have a Triton repository writer; {manifest.name} is a {manifest.kind}")
    triton_dir = Path(triton_dir)
    version = triton_model_version(manifest) or "1"
    spec = manifest.preprocessing or {}
    input_dims = [spec["channels"], spec["crop"], spec["crop"]]  # (C, H, W); Triton adds the batch axis
    onnx_input, onnx_output = manifest.extra["onnx_input"], manifest.extra["onnx_output"]
    onnx_model = triton_model_name(manifest, "image_encoder")
    preprocess, ensemble = onnx_model + PREPROCESS_SUFFIX, onnx_model + ENSEMBLE_SUFFIX
    images_source = Path(training.data.images.__file__)

    def onnx_files(folder: Path, _: str) -> None:
        shutil.copyfile(bundle.file("image_encoder"), folder / "model.onnx")

    def python_files(folder: Path, _: str) -> None:
        shutil.copyfile(images_source, folder / IMAGES_MODULE)
        (folder / "model.py").write_text(MODEL_PY.format(
            onnx_model=onnx_model, images_module=IMAGES_MODULE, images_import=IMAGES_MODULE.removesuffix(".py"),
            bytes_input=BYTES_INPUT, preprocessed=onnx_input), encoding="utf-8")

    models = {
        onnx_model: (onnx_files, _onnx_config(onnx_model, onnx_input, onnx_output, input_dims, manifest.dim,
                                              max_batch_size, max_queue_delay_us)),
        preprocess: (python_files, _preprocess_config(preprocess, onnx_input, input_dims, spec, max_batch_size, max_pixels)),
        ensemble: (lambda folder, _: None, _ensemble_config(ensemble, preprocess, onnx_model, version, onnx_input,
                                                            onnx_output, input_dims, manifest.dim, max_batch_size)),
    }
    folders = []
    for model, (fill, config) in models.items():
        # the version folder first, then the config that serves it: Triton never sees a config without its files
        write_versioned_dir(triton_dir / model, fill, version, make_current=False)
        atomic_write_text(triton_dir / model / "config.pbtxt", config)
        folders.append(triton_dir / model)
    return folders

