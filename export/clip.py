"""CLIP checkpoint to an image-text-encoder bundle: `image_encoder.onnx` and `text_encoder.onnx`,
each proven equal to its torch tower, the `tokenizer.json` training tokenised with, the
`query_bank.npy` of training-image embeddings that zero-shot normalises class scores with
(index.class_matrix; left out when the training data is not on this machine), and the manifest
serving needs (dim, preprocessing, context length, logit scale, ONNX input/output names)."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runtime.bundle import QUERY_BANK_K, QUERY_BANK_ROLE, Bundle, Manifest, OnnxIO, QueryBankSpec, TokenizerSpec, sha256_file, write_bundle
from export.curves import copy_training_curves
from export.onnx import DEFAULT_OPSET, check_parity, export_onnx
from export.quantize import (WrittenVariant, ZeroShotData, calibration_images, check_fp16_agreement, image_encoder_variants,
                             labelled_images, run_batched, text_encoder_variants)
from runtime.templates import EVAL_TEMPLATES
from runtime.tokens import encode_batch, load_tokenizer
from training.methods.clip import ClipInfo, load_clip_towers, query_bank_embeddings

log = logging.getLogger(__name__)

IMAGE_ONNX_FILE = "image_encoder.onnx"
TEXT_ONNX_FILE = "text_encoder.onnx"
TOKENIZER_FILE = "tokenizer.json"
QUERY_BANK_FILE = "query_bank.npy"  # (N, dim) float32: image-tower embeddings of N training images
QUERY_BANK_IMAGES = 2048  # enough for steady top-10 means per class, small to ship (3 MB at MiniLM's 384 dims)
IMAGE_INPUTS = ("images",)  # (batch, C, H, W) float32, preprocessed as the manifest says
TEXT_INPUTS = ("ids", "attention_mask")  # (batch, T) int64 each, from runtime.tokens.encode_batch
OUTPUT_NAME = "embeddings"  # (batch, dim) float32, L2-normalised by the towers themselves
# The ONNX inputs and output of each model, by file role; runtime.encoders reads them.
ONNX_IO = {"image_encoder": OnnxIO(IMAGE_INPUTS, OUTPUT_NAME), "text_encoder": OnnxIO(TEXT_INPUTS, OUTPUT_NAME)}
# Texts for the text tower's parity check: short, long enough to be truncated, non-ASCII.
PARITY_TEXTS = (
    "a sneaker", "an ankle boot", "a photo of a t-shirt, a kind of top, with short sleeves and a round collar on it",
    "ein Kleid für den Sommer", "une chaussure à lacets", "a bag", "dress", "",
)


def _write_query_bank(image_tower: torch.nn.Module, info: ClipInfo, images: int, seed: int,
                      path: Path) -> QueryBankSpec | None:
    """Embed `images` random training images into `path` and return the manifest's description of
    the bank; None, writing nothing, when asked for none or when the training data cannot be read
    here (the bundle then serves zero-shot without normalisation)."""
    if images <= 0:
        return None
    try:
        bank = query_bank_embeddings(image_tower, info, images, seed)  # (N, dim) float32
    except (OSError, ValueError) as e:
        log.warning("exporting without a zero-shot query bank: cannot read the training data (%s)", e)
        return None
    np.save(path, bank)
    # which images exactly (subset, held-out classes) follows from the training config beside it
    return QueryBankSpec(images=len(bank), k=min(QUERY_BANK_K, len(bank)), seed=seed,
                         source=f"random training images of {info.config['data']}")


def _write_variants(info: ClipInfo, folder: Path, precisions: list[str], tokenizer, probe: np.ndarray,
                    seed: int) -> list[WrittenVariant]:
    """The int8 and fp16 copies of both towers beside their fp32 files in `folder`, each scored
    against fp32: the image tower by kNN top-1 (int8: static QDQ, calibrated on training images),
    the text tower by zero-shot top-1 of the same labelled images (int8: dynamic) and, both, by
    the cosine of their outputs to fp32's."""
    if not precisions:
        return []
    data = labelled_images(info.config, info.preprocessing, seed=seed)
    calibration = calibration_images(info.config, info.preprocessing, seed=seed) if "int8" in precisions else None
    written = image_encoder_variants(folder / IMAGE_ONNX_FILE, "image_encoder", IMAGE_INPUTS[0], precisions,
                                     calibration, data, probe)
    zero_shot = None
    if data is not None and info.class_names:
        images = run_batched(folder / IMAGE_ONNX_FILE, [data.queries])  # (N, dim), unit rows
        zero_shot = ZeroShotData(images, data.query_labels, [[t.format(c) for t in EVAL_TEMPLATES] for c in info.class_names],
                                 f"{len(images)} {data.source} images")
    texts = list(PARITY_TEXTS) + [t.format(c) for c in (info.class_names or ["thing", "object"]) for t in EVAL_TEMPLATES]
    written += text_encoder_variants(folder / TEXT_ONNX_FILE, "text_encoder", precisions, encode_batch(tokenizer, texts),
                                     lambda batch: encode_batch(tokenizer, batch), zero_shot)
    check_fp16_agreement(written)
    return written


def export_clip(
    checkpoint_path: Path | str,
    artifacts_dir: Path | str,
    name: str,
    version: str | None = None,
    metrics: dict[str, Any] | None = None,
    parity_batch: int = 8,
    seed: int = 0,
    query_bank_images: int = QUERY_BANK_IMAGES,
    fp16: bool = True,
    int8: bool = True,
) -> Bundle:
    """Export both towers of the CLIP model in `checkpoint_path` as bundle
    `artifacts_dir/models/<name>/<version>` (next vN by default) and make it current, with a query
    bank of `query_bank_images` training images (0: none). Raises export.onnx.ParityError, writing
    nothing, if either ONNX model does not reproduce its torch tower at batch 1 and at a larger batch.
    `int8` and `fp16` add those copies of both towers, scored against fp32 and recorded in the
    manifest's `variants` (see _write_variants)."""
    image_tower, text_tower, info = load_clip_towers(str(checkpoint_path))
    generator = torch.Generator().manual_seed(seed)
    # Normal noise in the normalised input space: the range real preprocessed images occupy.
    images = torch.randn(parity_batch, *info.preprocessing.input_shape, generator=generator)  # (B, C, H, W)
    tokenizer = load_tokenizer(info.tokenizer_json)
    # Prompts the way zero-shot builds them, plus PARITY_TEXTS: real token ids, real padding patterns.
    class_names = info.class_names or ["thing", "object"]
    texts = list(PARITY_TEXTS) + [t.format(c) for c in class_names[:2] for t in EVAL_TEMPLATES[:3]]
    ids, mask = (torch.from_numpy(a) for a in encode_batch(tokenizer, texts))  # (N, T) int64 each

    files = {"image_encoder": IMAGE_ONNX_FILE, "text_encoder": TEXT_ONNX_FILE, "tokenizer": TOKENIZER_FILE}
    with tempfile.TemporaryDirectory(prefix="embedserve-export-") as scratch:
        # Exported and checked outside artifacts/, so a failed parity check leaves no trace there.
        folder = Path(scratch)
        image_path = export_onnx(image_tower, images[:2], folder / IMAGE_ONNX_FILE, IMAGE_INPUTS, OUTPUT_NAME)
        text_path = export_onnx(text_tower, (ids[:2], mask[:2]), folder / TEXT_ONNX_FILE, TEXT_INPUTS, OUTPUT_NAME)
        # batch 1 and a batch unlike the export's 2 also prove the batch axis is really dynamic
        parity = {
            "image_encoder": min(check_parity(image_tower, image_path, images[:1]), check_parity(image_tower, image_path, images)),
            "text_encoder": min(check_parity(text_tower, text_path, (ids[:1], mask[:1])),
                                check_parity(text_tower, text_path, (ids, mask))),
        }
        (folder / TOKENIZER_FILE).write_text(info.tokenizer_json, encoding="utf-8")
        query_bank = _write_query_bank(image_tower, info, query_bank_images, seed, folder / QUERY_BANK_FILE)
        if query_bank:
            files[QUERY_BANK_ROLE] = QUERY_BANK_FILE  # the role runtime.bundle.Manifest.query_bank describes
        precisions = [p for p, wanted in (("int8", int8), ("fp16", fp16)) if wanted]
        written = _write_variants(info, folder, precisions, tokenizer, images.numpy(), seed)
        files.update({w.variant.file_role: w.file for w in written})
        files.update(copy_training_curves(info.config, folder))

        manifest = Manifest(
            name=name,
            kind="image-text-encoder",
            method="clip",
            dim=int(info.dim),
            normalized=True,
            files=files,
            preprocessing=info.preprocessing,
            tokenizer=TokenizerSpec(file=TOKENIZER_FILE, context_length=info.context_length),
            onnx=ONNX_IO,
            logit_scale=float(info.logit_scale),
            class_names=tuple(info.class_names or ()),
            query_bank=query_bank,
            training_config=info.config,
            metrics=metrics or {},
            extra={"opset": DEFAULT_OPSET, "parity_min_cosine": parity},
            source_checkpoint_sha256=sha256_file(Path(checkpoint_path)),
            variants=tuple(w.variant for w in written),
        )

        def write_files(target: Path) -> None:
            for file in files.values():
                shutil.copyfile(folder / file, target / file)

        return write_bundle(Path(artifacts_dir), manifest, write_files, version)
