"""A CLIP that another library saved to an image-text-encoder bundle: `embedserve import clip
<folder> --name <name>`, for a Hugging Face CLIPModel folder or an open_clip folder
(export.clip_folders reads either).

The bundle is the demo's CLIP's (export.clip): `image_encoder.onnx` and `text_encoder.onnx`, unit
rows both, with the model's own projections and text pooling (export.clip_towers), the folder's
tokenizer as tokenizer.json at the model's context (77), its logit scale, and its preprocessing
(resize the shortest side bicubic, centre crop, mean and std). Nothing is written until the towers
reproduce the library's own forward pass and the bundle's preprocessing reproduces the library's
transform (export.clip_parity); the figures go into the manifest. Like an exported CLIP, it gets
int8 copies for CPUs (and fp16 for GPUs when asked), scored against fp32, which
`EMBEDSERVE_PRECISION=auto` serves only where they pass; and, given an image folder, a zero-shot
query bank of its images' embeddings.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from export.clip import IMAGE_INPUTS, IMAGE_ONNX_FILE, ONNX_IO, OUTPUT_NAME, QUERY_BANK_FILE, TEXT_INPUTS, TEXT_ONNX_FILE, TOKENIZER_FILE
from export.clip_folders import ClipFolder, read_clip_folder
from export.clip_parity import (PARITY_TEXTS, Photo, image_parity, installed_photos, preprocessing_parity, source_inputs,
                                text_parity)
from export.clip_tokenizer import bundle_tokenizer
from export.clip_towers import SourceClip, exportable_attention, load_source
from export.onnx import DEFAULT_MIN_COSINE, DEFAULT_OPSET, export_onnx, run_onnx
from export.quantize import (WrittenVariant, ZeroShotData, check_fp16_agreement, image_encoder_variants, int8_technique,
                             text_encoder_variants)
from runtime.bundle import QUERY_BANK_K, QUERY_BANK_ROLE, Bundle, Manifest, QueryBankSpec, TokenizerSpec, sha256_file, write_bundle
from runtime.preprocessing import preprocess_batch
from runtime.sources import folder_source
from runtime.templates import EVAL_TEMPLATES
from runtime.tokens import encode_batch, used_length

log = logging.getLogger(__name__)

# Everyday classes whose prompts score the text tower's int8/fp16 copies: how often a copy's
# zero-shot answer on the check's photos is fp32's.
AGREEMENT_CLASSES = ("dog", "cat", "flower", "building", "person", "car", "bird", "tree", "food", "drawing")
QUERY_BANK_BATCH = 32  # images per image-tower call while building a query bank


def _random_images(folder: ClipFolder, count: int, seed: int = 0) -> torch.Tensor:
    """Normal noise in the normalised input space (count, 3, H, W): the range real images occupy."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, *folder.preprocessing.input_shape, generator=generator)


def _export_towers(source: SourceClip, folder: ClipFolder, tokenizer, work: Path) -> tuple[Path, Path]:
    """Both towers as ONNX in `work`: images with a dynamic batch, texts with a dynamic batch and
    a dynamic number of tokens (the server runs a batch on the tokens its longest text uses)."""
    ids, mask = (torch.from_numpy(a) for a in encode_batch(tokenizer, list(PARITY_TEXTS[:2])))  # (2, T) int64 each
    length = used_length(mask.numpy())
    ids, mask = ids[:, :length], mask[:, :length]
    with warnings.catch_warnings(), exportable_attention(source.model):
        # the tracer's notes that shape checks are fixed at export: the parity checks run other
        # batch sizes and lengths than the trace's, so a fixed check would show there
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        image_path = export_onnx(source.image_tower, _random_images(folder, 2), work / IMAGE_ONNX_FILE, IMAGE_INPUTS, OUTPUT_NAME)
        text_path = export_onnx(source.text_tower, (ids, mask), work / TEXT_ONNX_FILE, TEXT_INPUTS,
                                OUTPUT_NAME, more_dynamic_axes={name: {1: "sequence"} for name in TEXT_INPUTS})
    return image_path, text_path


def _variants(work: Path, precisions: list[str], vision_arch: str, tokenizer, photos: np.ndarray,
              texts: tuple[str, ...]) -> list[WrittenVariant]:
    """int8/fp16 copies of both towers, scored against fp32: the image tower by cosine on the
    check's photos, the text tower by cosine on the parity texts and prompts and by how often its
    zero-shot answer on those photos (AGREEMENT_CLASSES) is fp32's."""
    if not precisions:
        return []
    written = image_encoder_variants(work / IMAGE_ONNX_FILE, "image_encoder", IMAGE_INPUTS[0], precisions,
                                     photos, None, photos, int8=int8_technique(vision_arch))
    prompts = [[t.format(c) for t in EVAL_TEMPLATES] for c in AGREEMENT_CLASSES]
    images = run_onnx(work / IMAGE_ONNX_FILE, [photos])  # (N, D) unit rows
    ids, mask = encode_batch(tokenizer, [p for class_prompts in prompts for p in class_prompts])
    classes = run_onnx(work / TEXT_ONNX_FILE, [ids, mask]).reshape(len(prompts), len(EVAL_TEMPLATES), -1).mean(1)  # (C, D)
    labels = (images @ classes.T).argmax(1)  # fp32's own answers: the copies are scored by agreeing with them
    zero_shot = ZeroShotData(images, labels, prompts, f"{len(images)} photos labelled by the fp32 towers' own answers")
    scored = list(texts) + [p for class_prompts in prompts for p in class_prompts]
    scored_ids, scored_mask = encode_batch(tokenizer, scored)
    used = used_length(scored_mask)
    written += text_encoder_variants(work / TEXT_ONNX_FILE, "text_encoder", precisions,
                                     (scored_ids[:, :used], scored_mask[:, :used]),
                                     lambda batch: encode_batch(tokenizer, batch), zero_shot)
    check_fp16_agreement(written)
    return written


def _vision_arch(folder: ClipFolder) -> str:
    """"vit" or "resnet" (an open_clip ModifiedResNet, whose layers are a list): the int8 technique's choice."""
    if folder.library == "open_clip" and isinstance(folder.config["model_cfg"]["vision_cfg"].get("layers"), (list, tuple)):
        return "resnet"
    return "vit"


def _write_query_bank(image_path: Path, folder: ClipFolder, images: Path, target: Path) -> QueryBankSpec:
    """Every image under `images`, embedded by the image tower through the bundle's preprocessing,
    as zero-shot normalisation's bank (N, D) float32 in `target`."""
    source = folder_source(Path(images))
    rows = []
    for start in range(0, source.count, QUERY_BANK_BATCH):
        batch = [source.read(i) for i in range(start, min(source.count, start + QUERY_BANK_BATCH))]
        rows.append(run_onnx(image_path, [preprocess_batch(batch, folder.preprocessing)]))  # (b, D)
    bank = np.concatenate(rows).astype(np.float32)  # (N, D)
    np.save(target, bank)
    return QueryBankSpec(images=len(bank), k=min(QUERY_BANK_K, len(bank)), seed=0, source=f"every image under {images}")


def import_clip(
    folder: Path | str,
    artifacts_dir: Path | str,
    name: str,
    version: str | None = None,
    texts: tuple[str, ...] | list[str] = PARITY_TEXTS,
    photos: list[Photo] | None = None,
    min_cosine: float = DEFAULT_MIN_COSINE,
    int8: bool = True,
    fp16: bool = False,
    query_bank: Path | str | None = None,
    bpe_file: Path | None = None,
) -> Bundle:
    """Import the CLIP in `folder` as the image-text-encoder bundle `artifacts_dir/models/<name>/<version>`
    (next vN by default) and make it current. `photos` (default: installed_photos()) check the
    image tower and the preprocessing; `query_bank`, an image folder, becomes zero-shot's bank;
    `bpe_file` is open_clip's BPE for an open_clip folder (default: the installed wheel's). Raises
    FolderError for a folder it cannot read and ParityError, writing nothing, when the bundle
    would not compute what the library does."""
    spec = read_clip_folder(folder)
    source = load_source(spec)
    tokenizer = bundle_tokenizer(spec, bpe_file)
    photos = installed_photos() if photos is None else photos
    texts = tuple(texts)

    with tempfile.TemporaryDirectory(prefix="embedserve-import-") as scratch:
        # Exported and checked outside artifacts/, so a failed check leaves no trace there.
        work = Path(scratch)
        image_path, text_path = _export_towers(source, spec, tokenizer, work)
        real = source_inputs(source, photos) if photos else _random_images(spec, 0)  # (P, 3, H, W)
        images = torch.cat([real, _random_images(spec, 4)])  # (P + 4, 3, H, W)
        parity = {"text_encoder": text_parity(source, text_path, tokenizer, texts, min_cosine),
                  "image_encoder": image_parity(source, image_path, images, min_cosine)}
        preprocessing = preprocessing_parity(source, image_path, spec.preprocessing, photos) if photos else None
        log.info("imported %s: lowest cosine to %s: text %.7f, image %.7f", spec.path, source.reference,
                 parity["text_encoder"], parity["image_encoder"])
        tokenizer.save(str(work / TOKENIZER_FILE))
        files = {"image_encoder": IMAGE_ONNX_FILE, "text_encoder": TEXT_ONNX_FILE, "tokenizer": TOKENIZER_FILE}
        bank = None
        if query_bank is not None:
            bank = _write_query_bank(image_path, spec, Path(query_bank), work / QUERY_BANK_FILE)
            files[QUERY_BANK_ROLE] = QUERY_BANK_FILE
        precisions = [p for p, wanted in (("int8", int8), ("fp16", fp16)) if wanted]
        written = _variants(work, precisions, _vision_arch(spec), tokenizer, images.numpy(), texts)
        files.update({w.variant.file_role: w.file for w in written})
        manifest = Manifest(
            name=name,
            kind="image-text-encoder",
            method="clip",
            dim=source.dim,
            normalized=True,
            files=files,
            preprocessing=spec.preprocessing,
            tokenizer=TokenizerSpec(file=TOKENIZER_FILE, context_length=spec.context_length),
            onnx=ONNX_IO,
            logit_scale=source.logit_scale,
            query_bank=bank,
            training_config={"source": spec.library, "folder": str(spec.path.resolve()), "weights": spec.weights.name,
                             "text_pooling": source.pooling, "eos_token_id": source.eos_token_id, "config": spec.config},
            extra={"opset": DEFAULT_OPSET, "parity_min_cosine": parity, "parity_texts": len(texts),
                   "parity_images": len(images), "parity_reference": f"{source.reference}, torch {torch.__version__}, CPU",
                   "preprocessing_parity": preprocessing, "sequence_axis": "dynamic"},
            source_checkpoint_sha256=sha256_file(spec.weights),
            variants=tuple(w.variant for w in written),
        )

        def write_files(target: Path) -> None:
            for file in files.values():
                shutil.copyfile(work / file, target / file)

        return write_bundle(Path(artifacts_dir), manifest, write_files, version)
