"""Vision checkpoint (SimCLR or MAE) to an image-encoder bundle: `image_encoder.onnx`, proven
equal to the torch encoder on a random batch, plus the manifest serving needs (dim,
preprocessing spec, ONNX input/output names).

Pooled CNN/ViT features sit in a narrow cone (non-negative after ReLU, a shared mean direction,
most of the variance in a handful of directions), so every cosine between two images is close to 1
and no score threshold means anything. Export therefore fits the mean and a shrunk whitening of
the raw embeddings of a sample of training images and puts them into the graph: the model outputs
unit((e - mean) @ whitening), and the server, jobs, index builds and Triton all get the same
spread-out cosines without knowing about it. The two arrays are also stored in the bundle.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from runtime.bundle import (CENTERING_MEAN_ROLE, CENTERING_WHITENING_ROLE, Bundle, CenteringSpec, Manifest, OnnxIO,
                            sha256_file, write_bundle)
from export.curves import copy_training_curves
from export.onnx import DEFAULT_OPSET, check_parity, export_onnx
from export.quantize import (calibration_images, check_fp16_agreement, image_encoder_variants, int8_technique,
                             labelled_images)
from training.methods.encoders import ImageEncoderInfo, load_image_encoder, training_image_embeddings

log = logging.getLogger(__name__)

ONNX_FILE = "image_encoder.onnx"
MEAN_FILE = "embedding_mean.npy"  # (dim,) float32
WHITENING_FILE = "whitening.npy"  # (dim, dim) float32
INPUT_NAME = "images"  # (batch, C, H, W) float32, already preprocessed as the manifest says
OUTPUT_NAME = "embeddings"  # (batch, dim) float32: unit rows when centred, raw when exported without centering
CENTERING_IMAGES = 2048  # training images the mean and covariance come from; enough for a 128-dim covariance
# Whitening shrinks the covariance toward its mean variance by this much: 0 is full whitening,
# whose kNN is best but which scatters near-duplicates; 1 keeps ranks 1-10 of a query above 0.8
# while rank 1000 of 10k Fashion-MNIST images falls below 0.5 (bench/scores.py).
WHITENING_SHRINKAGE = 1.0


class CentredEncoder(nn.Module):
    """unit((encoder(x) - mean) @ whitening): the encoder with its training-set centring and whitening."""

    def __init__(self, encoder: nn.Module, mean: np.ndarray, whitening: np.ndarray):
        super().__init__()
        self.encoder = encoder
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))  # (D,)
        self.register_buffer("whitening", torch.as_tensor(whitening, dtype=torch.float32))  # (D, D)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        centred = (self.encoder(images) - self.mean) @ self.whitening  # (B, D)
        return F.normalize(centred, dim=1)  # (B, D)


def fit_centering(embeddings: np.ndarray, shrinkage: float = WHITENING_SHRINKAGE) -> tuple[np.ndarray, np.ndarray]:
    """(mean (D,), whitening (D, D)) float32 of raw embeddings (N, D): whitening is the inverse square
    root of the covariance plus `shrinkage` times its mean variance on the diagonal, so the
    directions that hold most of the variance stop dominating every cosine, and the near-empty
    ones are not blown up into noise."""
    x = np.asarray(embeddings, np.float64)  # (N, D)
    mean = x.mean(axis=0)  # (D,)
    variances, axes = np.linalg.eigh(np.cov(x - mean, rowvar=False))  # (D,), (D, D)
    variances = np.maximum(variances, 0.0)  # eigh's rounding can leave tiny negatives
    scale = 1.0 / np.sqrt(variances + shrinkage * variances.mean() + 1e-12)  # (D,)
    whitening = (axes * scale) @ axes.T  # (D, D), symmetric (ZCA): stays close to the original axes
    return mean.astype(np.float32), whitening.astype(np.float32)


def _centring(module: nn.Module, info: ImageEncoderInfo, images: int, seed: int
              ) -> tuple[np.ndarray, np.ndarray, CenteringSpec] | None:
    """The mean, whitening and manifest description fitted on `images` random training images;
    None when asked for none or when the training data cannot be read here (the bundle then
    serves raw embeddings, as bundles did before)."""
    if images <= 0:
        return None
    try:
        sample = training_image_embeddings(module, info, images, seed)  # (N, D)
    except (OSError, ValueError) as e:
        log.warning("exporting without centring: cannot read the training data (%s); cosines will all be near 1", e)
        return None
    mean, whitening = fit_centering(sample)
    spec = CenteringSpec(images=len(sample), shrinkage=WHITENING_SHRINKAGE, seed=seed,
                         source=f"random training images of {info.config.get('data')}")
    return mean, whitening, spec


def export_image_encoder(
    checkpoint_path: Path | str,
    artifacts_dir: Path | str,
    name: str,
    version: str | None = None,
    metrics: dict[str, Any] | None = None,
    fp16: bool = True,
    parity_batch: int = 8,
    seed: int = 0,
    centering_images: int = CENTERING_IMAGES,
    int8: bool = True,
) -> Bundle:
    """Export the encoder in `checkpoint_path` as bundle `artifacts_dir/models/<name>/<version>`
    (next vN by default) and make it current, centred and whitened with `centering_images`
    random training images (0: raw outputs, as before). Raises export.onnx.ParityError, writing
    nothing, if the ONNX model does not reproduce the (centred) torch encoder at batch 1 and at
    `parity_batch`. `int8` adds an int8 copy for CPUs (a CNN's static QDQ, calibrated on a few
    hundred training images; a ViT's dynamic row by row, export.quantize.int8_technique), `fp16` a
    half-precision copy for GPUs; each is scored against fp32 (kNN
    top-1 and output cosine, export.quantize) and recorded in the manifest's `variants`, from which
    the precision setting picks at load."""
    module, info = load_image_encoder(checkpoint_path)
    centring = _centring(module, info, centering_images, seed)
    if centring is not None:
        module = CentredEncoder(module, centring[0], centring[1]).eval()  # what ONNX must reproduce
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
        if centring is not None:
            np.save(Path(scratch) / MEAN_FILE, centring[0])
            np.save(Path(scratch) / WHITENING_FILE, centring[1])
        precisions = [p for p, wanted in (("int8", int8), ("fp16", fp16)) if wanted]
        technique = int8_technique(info.arch)
        written = image_encoder_variants(
            onnx_path, "image_encoder", INPUT_NAME, precisions,
            calibration_images(info.config, info.preprocessing, seed=seed) if int8 and technique == "static-qdq" else None,
            labelled_images(info.config, info.preprocessing, seed=seed) if precisions else None,
            inputs.numpy(), technique) if precisions else []
        check_fp16_agreement(written)
        files.update({w.variant.file_role: w.file for w in written})
        files.update(copy_training_curves(info.config, Path(scratch)))

        manifest = Manifest(
            name=name,
            kind="image-encoder",
            method=info.method,
            dim=int(info.dim),
            normalized=centring is not None,
            files={**files, **({CENTERING_MEAN_ROLE: MEAN_FILE, CENTERING_WHITENING_ROLE: WHITENING_FILE} if centring else {})},
            preprocessing=info.preprocessing,
            onnx={"image_encoder": OnnxIO((INPUT_NAME,), OUTPUT_NAME)},  # its variants take and give the same
            variants=tuple(w.variant for w in written),
            centering=centring[2] if centring else None,
            training_config=info.config,
            metrics=metrics or {},
            extra=extra,
            source_checkpoint_sha256=sha256_file(Path(checkpoint_path)),
        )

        def write_files(folder: Path) -> None:
            for file in manifest.files.values():
                shutil.copyfile(Path(scratch) / file, folder / file)

        return write_bundle(Path(artifacts_dir), manifest, write_files, version)
