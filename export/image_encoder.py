"""Vision checkpoint (SimCLR or MAE) to an image-encoder bundle: `image_encoder.onnx`, proven
equal to the torch encoder on a random batch, plus the manifest serving needs (dim,
preprocessing spec, ONNX input/output names)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from runtime.bundle import Bundle, Manifest, OnnxIO, sha256_file, write_bundle
from export.onnx import DEFAULT_OPSET, FP16_MIN_COSINE, check_parity, export_onnx, write_fp16_copy
from training.methods.encoders import load_image_encoder

ONNX_FILE = "image_encoder.onnx"
FP16_FILE = "image_encoder.fp16.onnx"
INPUT_NAME = "images"  # (batch, C, H, W) float32, already preprocessed as the manifest says
OUTPUT_NAME = "embeddings"  # (batch, dim) float32, not normalised


def export_image_encoder(
    checkpoint_path: Path | str,
    artifacts_dir: Path | str,
    name: str,
    version: str | None = None,
    metrics: dict[str, Any] | None = None,
    fp16: bool = False,
    parity_batch: int = 8,
    seed: int = 0,
) -> Bundle:
    """Export the encoder in `checkpoint_path` as bundle `artifacts_dir/models/<name>/<version>`
    (next vN by default) and make it current. Raises export.onnx.ParityError, writing nothing,
    if the ONNX model does not reproduce the torch encoder at batch 1 and at `parity_batch`.
    `fp16` adds a half-precision copy for GPUs; the fp32 file stays the one served by default."""
    module, info = load_image_encoder(checkpoint_path)
    generator = torch.Generator().manual_seed(seed)
    # Normal noise in the normalised input space: the range real preprocessed images occupy.
    inputs = torch.randn(parity_batch, *info.preprocessing.input_shape, generator=generator)  # (B, C, H, W)

    files = {"image_encoder": ONNX_FILE}
    extra: dict[str, Any] = {"opset": DEFAULT_OPSET}
    with tempfile.TemporaryDirectory(prefix="embedserve-export-") as scratch:
        # Exported and checked outside artifacts/, so a failed parity check leaves no trace there.
        onnx_path = export_onnx(module, inputs[:2], Path(scratch) / ONNX_FILE, INPUT_NAME, OUTPUT_NAME)
        # batch 1 and a batch unlike the export's 2 also prove the batch axis is really dynamic
        extra["parity_min_cosine"] = min(check_parity(module, onnx_path, inputs[:1]), check_parity(module, onnx_path, inputs))
        if fp16 and write_fp16_copy(onnx_path, Path(scratch) / FP16_FILE) is not None:
            files["image_encoder_fp16"] = FP16_FILE
            extra["fp16_parity_min_cosine"] = check_parity(module, Path(scratch) / FP16_FILE, inputs, FP16_MIN_COSINE)

        manifest = Manifest(
            name=name,
            kind="image-encoder",
            method=info.method,
            dim=int(info.dim),
            normalized=False,
            files=files,
            preprocessing=info.preprocessing,
            onnx={role: OnnxIO((INPUT_NAME,), OUTPUT_NAME) for role in files},  # the fp32 model and its fp16 copy alike
            training_config=info.config,
            metrics=metrics or {},
            extra=extra,
            source_checkpoint_sha256=sha256_file(Path(checkpoint_path)),
        )

        def write_files(folder: Path) -> None:
            for file in files.values():
                shutil.copyfile(Path(scratch) / file, folder / file)

        return write_bundle(Path(artifacts_dir), manifest, write_files, version)
