"""The checks an imported CLIP passes before anything is written: its ONNX towers against the source
library's own forward pass (texts through the library's own tokenizer, images through its own
transform), and the bundle's preprocessing (runtime.preprocessing, what the server runs) against
the library's transform on real photos: several sizes and aspect ratios, greyscale and
transparent ones. Each returns figures for the manifest; a tower under the bar is a ParityError.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer

from export.clip_towers import SourceClip, unit
from export.onnx import DEFAULT_MIN_COSINE, ParityError, run_onnx
from runtime.preprocessing import PreprocessingSpec, decode_image, preprocess_image
from runtime.tokens import encode_batch, used_length
from runtime.vectors import rowwise_cosine

# Texts for the text tower's check: one word to past the full context (which both sides cut the
# same way), several scripts, emoji, digits, odd spacing and punctuation.
PARITY_TEXTS = (
    "dog",
    "a photo of a cat.",
    "A red double-decker bus crossing a bridge in the rain, seen from a window on the third floor.",
    "ein Hund, der im Schnee spielt",
    "une tour Eiffel illuminée la nuit",
    "东京的夜景和霓虹灯",
    "Собака бежит по пляжу",
    "كلب يلعب في الحديقة",
    "I love this photo!!! 😍🐶🌸",
    "   tabs\tand   spaces   ",
    "3 apples and 12 oranges, 4.5 kg",
    " ".join(["a long caption that keeps describing the same sunny beach with palm trees and blue water"] * 6),
)
# The bar for the bundle's preprocessing: the image tower's cosine between its input made by
# runtime.preprocessing and made by the library's transform. Pillow's bicubic and torchvision's
# antialiased bicubic differ by a few levels per pixel; a wrong crop or mean costs far more.
PREPROCESSING_MIN_COSINE = 0.995


def _onnx_rows(onnx_path: Path, ids: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
    """The text tower run three ways: every row at the full context, every row on the columns the
    batch uses (as the server runs it), and the first row alone on its own columns."""
    length, first = used_length(mask), used_length(mask[:1])
    return [run_onnx(onnx_path, [ids, mask]), run_onnx(onnx_path, [ids[:, :length], mask[:, :length]]),
            run_onnx(onnx_path, [ids[:1, :first], mask[:1, :first]])]


def text_parity(source: SourceClip, onnx_path: Path, tokenizer: Tokenizer, texts: tuple[str, ...] | list[str],
                min_cosine: float = DEFAULT_MIN_COSINE) -> float:
    """The lowest cosine between the library's text features (its tokenizer, its model) and the
    ONNX tower on the bundle tokenizer's ids; ParityError below `min_cosine` (a tokenizer or a
    pooling that is not the library's)."""
    expected = unit(source.encode_texts(list(texts)))  # (N, D)
    ids, mask = encode_batch(tokenizer, texts)  # (N, T) int64 each
    worst = min(float(rowwise_cosine(expected[: len(got)], got).min()) for got in _onnx_rows(onnx_path, ids, mask))
    if not worst >= min_cosine:  # `not >=` so that NaN fails too
        raise ParityError(f"the ONNX text tower disagrees with {source.reference}: lowest cosine {worst:.6f} < {min_cosine}")
    return worst


def image_parity(source: SourceClip, onnx_path: Path, images: torch.Tensor, min_cosine: float = DEFAULT_MIN_COSINE) -> float:
    """The lowest cosine between the library's image features and the ONNX tower on `images`
    (B, 3, H, W), all at once and the first alone; ParityError below `min_cosine`."""
    expected = unit(source.encode_images(images))  # (B, D)
    runs = [run_onnx(onnx_path, [images.numpy()]), run_onnx(onnx_path, [images[:1].numpy()])]
    worst = min(float(rowwise_cosine(expected[: len(got)], got).min()) for got in runs)
    if not worst >= min_cosine:
        raise ParityError(f"the ONNX image tower disagrees with {source.reference}: lowest cosine {worst:.6f} < {min_cosine}")
    return worst


@dataclass(frozen=True)
class Photo:
    """One photo of the preprocessing check."""

    name: str  # where it came from and what was done to it, for the manifest
    data: bytes  # its encoded file, as a client would send it


def installed_photos(clip_art: int = 3) -> list[Photo]:
    """Real photos that installed packages ship (scikit-learn's china.jpg and flower.jpg, matplotlib's
    grace_hopper.jpg, and `clip_art` Open Clip Art PNGs with transparency when openclipart-png is
    installed), plus variants of them the check needs: a greyscale JPEG, a tall and a wide crop, a
    small image that is enlarged, a large JPEG, a transparent PNG. Those not installed are left out."""
    files = []
    try:
        import sklearn.datasets

        files += [Path(sklearn.datasets.__file__).parent / "images" / n for n in ("china.jpg", "flower.jpg")]
    except ImportError:
        pass
    try:
        import matplotlib

        files.append(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    except ImportError:
        pass
    photos = [Photo(f.name, f.read_bytes()) for f in files if f.is_file()]
    art = sorted(Path("/usr/share/openclipart/png").rglob("*.png"))[:200] if Path("/usr/share/openclipart/png").is_dir() else []
    transparent = {f.name: f for f in art if _transparent(f)}  # a drawing may sit in several category folders
    photos += [Photo(f"openclipart {name}", f.read_bytes()) for name, f in list(transparent.items())[:clip_art]]
    if photos:
        base = Image.open(io.BytesIO(photos[0].data)).convert("RGB")
        w, h = base.size
        photos += [Photo(f"{photos[0].name}, greyscale", _encode(base.convert("L"), "JPEG")),
                   Photo(f"{photos[0].name}, tall crop", _encode(base.crop((0, 0, w // 3, h)), "JPEG")),
                   Photo(f"{photos[0].name}, wide crop", _encode(base.crop((0, 0, w, h // 3)), "PNG")),
                   Photo(f"{photos[0].name}, 97x61 (enlarged)", _encode(base.resize((97, 61)), "PNG")),
                   # large enough that the server decodes it at a reduced JPEG scale (runtime.preprocessing.load_pixels)
                   Photo(f"{photos[0].name}, 2560x1708 JPEG", _encode(base.resize((2560, 1708), Image.Resampling.BICUBIC), "JPEG"))]
        alpha = base.convert("RGBA")
        alpha.putalpha(Image.linear_gradient("L").resize(base.size))
        photos.append(Photo(f"{photos[0].name}, RGBA with a gradient alpha", _encode(alpha, "PNG")))
    return photos


def _transparent(path: Path) -> bool:
    with Image.open(path) as img:
        return "A" in img.getbands() or "transparency" in img.info


def _encode(img: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, quality=95) if fmt == "JPEG" else img.save(buffer, fmt)
    return buffer.getvalue()


def preprocessing_parity(source: SourceClip, onnx_path: Path, spec: PreprocessingSpec, photos: list[Photo],
                         min_cosine: float = PREPROCESSING_MIN_COSINE) -> dict:
    """The bundle's preprocessing against the library's transform, photo by photo: the largest
    pixel difference of the model input (in 0-255 levels), the image tower's cosine between the
    two inputs, and the same for the server's decoding (a large JPEG decoded at a reduced DCT
    scale, runtime.preprocessing.load_pixels) against full decoding. ParityError when a photo's
    cosine is under `min_cosine`."""
    std = np.asarray(spec.std, np.float32).reshape(-1, 1, 1) * 255.0
    rows = []
    for photo in photos:
        full = preprocess_image(decode_image(photo.data), spec)  # (3, H, W): every pixel decoded
        served = preprocess_image(decode_image(photo.data, resize=spec.resize), spec)  # (3, H, W): as the server decodes
        with Image.open(io.BytesIO(photo.data)) as img:
            img.load()
            theirs = source.preprocess(img).numpy()  # (3, H, W)
        if theirs.shape != full.shape:
            raise ParityError(f"{photo.name}: the library's transform gives {theirs.shape}, the bundle's preprocessing {full.shape}")
        embeddings = run_onnx(onnx_path, [np.stack([theirs, full, served])])  # (3, D)
        rows.append({"photo": photo.name, "size": list(Image.open(io.BytesIO(photo.data)).size),
                     "max_pixel_difference": round(float((np.abs(full - theirs) * std).max()), 3),
                     "cosine": round(float(embeddings[0] @ embeddings[1]), 6),
                     "draft_decoding_max_pixel_difference": round(float((np.abs(served - full) * std).max()), 3),
                     "draft_decoding_cosine": round(float(embeddings[1] @ embeddings[2]), 6)})
    failed = [r for r in rows if not r["cosine"] >= min_cosine]
    if failed:
        worst = min(failed, key=lambda r: r["cosine"])
        raise ParityError(f"the bundle's image preprocessing departs from {source.reference}'s transform on "
                          f"{worst['photo']}: image cosine {worst['cosine']} < {min_cosine} "
                          f"(largest pixel difference {worst['max_pixel_difference']} levels)")
    return {"photos": rows, "min_cosine": min((r["cosine"] for r in rows), default=None),
            "max_pixel_difference": max((r["max_pixel_difference"] for r in rows), default=None)}


def source_inputs(source: SourceClip, photos: list[Photo]) -> torch.Tensor:
    """The photos through the library's own transform: (B, 3, H, W), real inputs for the image check."""
    out = []
    for photo in photos:
        with Image.open(io.BytesIO(photo.data)) as img:
            img.load()
            out.append(source.preprocess(img))
    return torch.stack(out)
