"""Image bytes to model input, without torch: decode an image safely, then apply a bundle's
preprocessing spec exactly as training's EvalTransform does.

This module imports nothing of the project, on purpose: the Triton repository that export writes
copies it beside the Python-backend model, which then computes the same input as the server, the
jobs and training. Its errors are its own (`ImageError` and kin); serving maps them to 413, 415
and 422 in one place.
"""

from __future__ import annotations

import io
import math
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Only these decoders are tried: exotic ones (EPS runs Ghostscript, FITS, PSD, ...) widen the
# attack surface of a public endpoint for no benefit to an embedding service.
SUPPORTED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM")
SUPPORTED_TEXT = "PNG, JPEG, GIF, BMP, TIFF, WebP or PPM/PGM"

# Leading bytes of the supported formats: a body that starts like one of them but that Pillow
# cannot open is a damaged image (422), not a file of the wrong type (415).
_MAGIC_PREFIXES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*",
                   b"P1", b"P2", b"P3", b"P4", b"P5", b"P6")

# What Pillow's decoders raise on damaged data: truncation is an OSError, a broken chunk or marker
# is often a SyntaxError, short headers give struct.error or EOFError.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError)

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # Pillow opens 16-bit greyscale as one of these
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
MODES = ("L", "RGB")  # what a model takes: 1 or 3 channels
# The resampling a bundle's preprocessing may name, as Pillow's filters.
INTERPOLATIONS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
CROP_OFFSETS = ("round", "floor")  # PreprocessingSpec.crop_offset
ALPHA_HANDLING = ("white", "drop")  # PreprocessingSpec.alpha
# A big image is decoded at about this multiple of the model's resize on its shorter side: enough
# that the final bilinear resize still averages over several source pixels (what it does at full size)
DECODE_MARGIN = 2


class ImageError(ValueError):
    """An image that cannot be used; the message says what to fix."""


class InvalidImage(ImageError):
    """Empty, truncated or corrupt image data (a client error: 422)."""


class ImageTooLarge(ImageError):
    """More bytes or pixels than the limits allow (413)."""


class UnsupportedImage(ImageError):
    """Not an image of a supported format, or pixels that cannot be converted (415)."""


@dataclass(frozen=True)
class PreprocessingSpec:
    """How a model's input is made from an image: EvalTransform, as a bundle records it."""

    mode: str  # "L" (1 channel) or "RGB" (3 channels)
    resize: int  # the shorter side is resized to this (Pillow, with `interpolation`)
    crop: int  # then a centred square of this side is cut: the model's input is (C, crop, crop)
    mean: tuple[float, ...]  # per-channel mean subtracted after scaling pixels to [0, 1]
    std: tuple[float, ...]  # per-channel standard deviation divided by
    interpolation: str = "bilinear"  # one of INTERPOLATIONS: training resizes bilinear, CLIPs imported from elsewhere bicubic
    # Where the crop starts when the margin (resized side - crop) is odd: at half of it rounded as
    # Python rounds ("round": torchvision's CenterCrop, so training and open_clip) or rounded down
    # ("floor": transformers' CLIPImageProcessor). One pixel apart, but a whole photo shifted by one.
    crop_offset: str = "round"
    # What becomes of transparency in an RGB model's input: composited on white ("white": training,
    # transformers' convert_to_rgb) or dropped after the resize and crop, the colour under it kept
    # ("drop": open_clip's transform, which converts to RGB last).
    alpha: str = "white"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"preprocessing mode must be one of {MODES}, not {self.mode!r}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mode {self.mode!r} has {self.channels} channel(s) but mean/std have "
                             f"{len(self.mean)}/{len(self.std)} values")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}, not {self.interpolation!r}")
        if self.alpha not in ALPHA_HANDLING:
            raise ValueError(f"alpha must be one of {ALPHA_HANDLING}, not {self.alpha!r}")
        if self.crop_offset not in CROP_OFFSETS:
            raise ValueError(f"crop_offset must be one of {CROP_OFFSETS}, not {self.crop_offset!r}")
        if not 1 <= self.crop <= self.resize:
            raise ValueError(f"crop {self.crop} must be between 1 and resize {self.resize}")

    @property
    def channels(self) -> int:
        return 1 if self.mode == "L" else 3

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.crop, self.crop)  # (C, H, W)

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "resize": self.resize, "crop": self.crop, "mean": list(self.mean),
                "std": list(self.std), "interpolation": self.interpolation, "crop_offset": self.crop_offset,
                "alpha": self.alpha, "channels": self.channels}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessingSpec:
        """Read `to_dict`'s output, or a schema-1 manifest's dict (which also held image_size)."""
        spec = cls(mode=data["mode"], resize=int(data["resize"]), crop=int(data["crop"]),
                   mean=tuple(float(m) for m in data["mean"]), std=tuple(float(s) for s in data["std"]),
                   interpolation=data.get("interpolation", "bilinear"), crop_offset=data.get("crop_offset", "round"),
                   alpha=data.get("alpha", "white"))
        if "channels" in data and int(data["channels"]) != spec.channels:
            raise ValueError(f"preprocessing says {data['channels']} channels for mode {spec.mode!r}")
        return spec


# The settings that move each limit, as messages name them: the server, `index build` and `jobs run`
# read them from these environment variables (serving.settings).
MAX_BYTES_SETTING = "EMBEDSERVE_MAX_IMAGE_BYTES"
MAX_PIXELS_SETTING = "EMBEDSERVE_MAX_IMAGE_PIXELS"


@dataclass(frozen=True)
class ImageLimits:
    """What one image may cost to decode."""

    max_bytes: int = 10_000_000  # largest encoded image accepted
    max_pixels: int = 40_000_000  # largest decoded image accepted (width x height): decompression bombs


def bytes_over_limit(size: int, max_bytes: int) -> str:
    """The message for an encoded image of `size` bytes over `max_bytes`, naming the setting."""
    return (f"image is {size:,} bytes; the limit is {max_bytes:,} bytes ({MAX_BYTES_SETTING}): "
            "send a smaller or more compressed image, or raise the limit")


def _pixels_over_limit(pixels: int, max_pixels: int, size: str = "") -> ImageTooLarge:
    return ImageTooLarge(f"image is {size}{pixels:,} pixels; the limit is {max_pixels:,} pixels ({MAX_PIXELS_SETTING}): "
                         "downscale it, or raise the limit")


def _looks_like_supported_image(data: bytes) -> bool:
    return data.startswith(_MAGIC_PREFIXES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def _bomb(error: Exception, max_pixels: int) -> ImageTooLarge:
    """Pillow's own decompression-bomb guard fired before our pixel check could: one message about
    the one limit that stopped the image, ours where the image is over it too, else Pillow's."""
    found = re.search(r"\((\d+) pixels\)", str(error))
    if found and int(found.group(1)) > max_pixels:
        return _pixels_over_limit(int(found.group(1)), max_pixels)
    what = f"{int(found.group(1)):,} pixels" if found else "too large to decode"
    bomb_limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)  # Pillow refuses at twice its MAX_IMAGE_PIXELS
    return ImageTooLarge(f"image is {what}; Pillow refuses to decode more than {bomb_limit:,} pixels (its "
                         f"decompression-bomb limit, which {MAX_PIXELS_SETTING} does not raise): downscale it")


def open_image(data: bytes, limits: ImageLimits = ImageLimits()) -> Image.Image:
    """Every check up to the pixel count, reading the header only (cheap, whatever the image's
    size): empty (InvalidImage), more than `max_bytes` (ImageTooLarge), not a supported format
    (UnsupportedImage), more than `max_pixels` by its header (ImageTooLarge), an unreadable header
    (InvalidImage). `load_pixels` decodes the pixels."""
    if not data:
        raise InvalidImage("empty image: no bytes arrived; send the image file's contents")
    if len(data) > limits.max_bytes:
        raise ImageTooLarge(bytes_over_limit(len(data), limits.max_bytes))
    try:
        img = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)  # reads the header only
    except Image.DecompressionBombError as e:
        raise _bomb(e, limits.max_pixels) from e
    except UnidentifiedImageError as e:
        if _looks_like_supported_image(data):
            raise InvalidImage("image is truncated or corrupt: its header could not be read; re-encode or re-upload it") from e
        raise UnsupportedImage(f"the data is not an image in a supported format; send {SUPPORTED_TEXT}") from e
    except _DECODE_ERRORS as e:
        raise InvalidImage(f"image is truncated or corrupt ({e}); re-encode or re-upload it") from e

    width, height = img.size
    if width * height > limits.max_pixels:
        raise _pixels_over_limit(width * height, limits.max_pixels, f"{width}x{height} = ")
    return img


def load_pixels(img: Image.Image, limits: ImageLimits = ImageLimits(), resize: int | None = None) -> Image.Image:
    """Decode an opened image's pixels; truncated or corrupt data is an InvalidImage now rather
    than an error later.

    With `resize` (the shorter side the model's preprocessing resizes to), an image much larger
    than that is decoded small: a JPEG at the smallest DCT scale (1/2, 1/4, 1/8: Pillow's draft
    mode) whose shorter side is still at least DECODE_MARGIN × resize, any other format shrunk by
    box averaging to about that size right after decoding. So memory per image is bounded
    by the model's input rather than the file's pixels (a 6000×6000 JPEG decodes to 750×750), and
    at most one full-size copy ever exists, briefly. Images under 2 × DECODE_MARGIN × resize on
    their shorter side are left exactly as decoded, so preprocessing sees the same pixels as
    training did."""
    need = None if resize is None else DECODE_MARGIN * resize  # the shorter side worth keeping
    if need is not None and img.format == "JPEG" and min(img.size) >= 2 * need:
        width, height = img.size
        short = min(width, height)
        img.draft(None, (math.ceil(width * need / short), math.ceil(height * need / short)))
    try:
        img.load()
    except Image.DecompressionBombError as e:
        raise _bomb(e, limits.max_pixels) from e
    except _DECODE_ERRORS as e:
        raise InvalidImage(f"image is truncated or corrupt ({e}); re-encode or re-upload it") from e
    if need is not None and min(img.size) // need >= 2:
        img = _reduced(img, min(img.size) // need)
    return img


def _reduced(img: Image.Image, factor: int) -> Image.Image:
    """`img` shrunk about `factor` times by box averaging (Pillow's BOX resampling with exact,
    fractional geometry), a strip of _STRIP_SOURCE_ROWS source rows at a time, so that no second
    full-size copy is made (Pillow would premultiply a whole RGBA image, or expand a whole palette
    image, before resampling it). Each strip is first put in a mode normalize_image reads the same
    way: palette and 1-bit expanded (resampling takes neither), 16-bit greyscale widened to
    32-bit; Pillow averages transparent pixels premultiplied, so colours hidden under alpha 0 do
    not bleed into their visible neighbours. The image's metadata (EXIF orientation) is kept."""
    width, height = max(1, round(img.width / factor)), max(1, round(img.height / factor))
    scale = img.height / height  # source rows per output row
    rows = max(1, _STRIP_SOURCE_ROWS // factor)  # output rows per strip
    out = None
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        y0, y1 = math.floor(top * scale), min(img.height, math.ceil(bottom * scale))
        strip = _resamplable(img.crop((0, y0, img.width, y1)))
        strip = strip.resize((width, bottom - top), Image.Resampling.BOX,
                             box=(0, top * scale - y0, img.width, bottom * scale - y0))
        if out is None:
            out = Image.new(strip.mode, (width, height))
        out.paste(strip, (0, top))
    out.info = dict(img.info)
    exif = img.getexif()
    if exif and "exif" not in out.info:  # e.g. a TIFF's orientation tag, which lives outside info
        out.info["exif"] = exif.tobytes()
    return out


_STRIP_SOURCE_ROWS = 256  # about how many full-width source rows _reduced holds in a working copy at once


def _resamplable(img: Image.Image) -> Image.Image:
    if img.mode == "1":
        return img.convert("L")
    if img.mode == "P":
        return img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode == "PA":
        return img.convert("RGBA")
    if img.mode in _SIXTEEN_BIT_MODES and img.mode != "I":
        return img.convert("I")
    return img


def decode_image(data: bytes, limits: ImageLimits = ImageLimits(), resize: int | None = None) -> Image.Image:
    """Decode an encoded image: `load_pixels(open_image(data), resize=resize)`. The image keeps
    its own mode and EXIF orientation; `preprocess_image` normalises both."""
    return load_pixels(open_image(data, limits), limits, resize)


def normalize_image(img: Image.Image, mode: str = "RGB") -> Image.Image:
    """Return `img` upright, in `mode` ("L" or "RGB"), with any transparency composited on white.

    The steps, in order: EXIF orientation applied; 1-bit -> L; 16-bit ("I;16*", "I") scaled by
    1/257 to 8 bits; float ("F") taken as [0, 1] if its maximum is <= 1 else as [0, 255];
    palette -> RGBA if it has transparency else RGB; CMYK/YCbCr -> RGB (Pillow's conversion);
    RGBA/LA/PA composited on opaque white; finally Pillow's convert to `mode`
    (RGB -> L uses L = 0.299 R + 0.587 G + 0.114 B). A mode Pillow cannot convert is an
    UnsupportedImage.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be 'L' or 'RGB', not {mode!r}")
    img = ImageOps.exif_transpose(img)  # a copy, upright; JPEGs from phones are often stored rotated
    if img.mode == "1":
        img = img.convert("L")
    elif img.mode in _SIXTEEN_BIT_MODES or img.mode == "F":
        pixels = np.asarray(img, dtype=np.float64)
        if img.mode != "F":
            pixels = pixels / 257.0  # 65535 -> 255 exactly
        elif pixels.size and pixels.max() <= 1.0:
            pixels = pixels * 255.0
        img = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "L")
    elif img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba).convert("RGB")
    if img.mode != mode:
        try:
            img = img.convert(mode)
        except ValueError as e:
            raise UnsupportedImage(f"cannot convert this image's pixels (mode {img.mode!r}) to {mode!r}: {e}; "
                                   "send it as 8/16-bit greyscale, RGB(A), palette or CMYK") from e
    return img


def preprocess_image(img: Image.Image, spec: PreprocessingSpec) -> np.ndarray:
    """One decoded image to model input, float32 (C, crop, crop). Exactly:
    normalize_image(img, spec.mode); resize with Pillow's spec.interpolation so the shorter side is
    spec.resize and the longer int(resize * long / short) (skipped when already that size);
    centre crop spec.crop square with top = int(round((H - crop) / 2)) and left likewise
    (Python's round; with crop_offset "floor", (H - crop) // 2); /255; (x - mean[c]) / std[c].
    With alpha "drop", a transparent image is resized and cropped with its alpha (upright, palette
    expanded), which is then dropped, as open_clip does, instead of composited first."""
    if spec.alpha == "drop" and spec.mode == "RGB" and _transparent(img):
        img = ImageOps.exif_transpose(img)
        img = img.convert("RGBA") if img.mode in ("P", "PA") else img
    else:
        img = normalize_image(img, spec.mode)
    width, height = img.size
    short, long = min(width, height), max(width, height)
    new_short, new_long = spec.resize, int(spec.resize * long / short)
    new_size = (new_short, new_long) if width <= height else (new_long, new_short)  # (W, H)
    if new_size != img.size:
        img = img.resize(new_size, INTERPOLATIONS[spec.interpolation])
    crop = spec.crop
    if spec.crop_offset == "floor":
        top, left = (img.height - crop) // 2, (img.width - crop) // 2
    else:
        top, left = int(round((img.height - crop) / 2.0)), int(round((img.width - crop) / 2.0))
    img = img.crop((left, top, left + crop, top + crop))
    if img.mode != spec.mode:  # alpha "drop": the transparency goes here
        img = img.convert(spec.mode)
    pixels = np.asarray(img, dtype=np.float32) / 255.0  # (H, W) or (H, W, C)
    pixels = pixels.reshape(crop, crop, -1).transpose(2, 0, 1)  # (C, H, W)
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(-1, 1, 1)
    return np.ascontiguousarray((pixels - mean) / std, dtype=np.float32)


def _transparent(img: Image.Image) -> bool:
    return img.mode in _ALPHA_MODES or (img.mode == "P" and "transparency" in img.info)


def preprocess_batch(images: Sequence[Image.Image], spec: PreprocessingSpec) -> np.ndarray:
    """Several decoded images to one model batch, float32 (B, C, crop, crop)."""
    if not images:
        return np.empty((0, *spec.input_shape), dtype=np.float32)  # (0, C, H, W)
    return np.stack([preprocess_image(img, spec) for img in images])  # (B, C, H, W)


def preprocess_arrays(images: np.ndarray, spec: PreprocessingSpec) -> np.ndarray | None:
    """A batch of uint8 images already at the model's size and mode, (B, H, W) greyscale or
    (B, H, W, 3) RGB with H = W = spec.crop = spec.resize, to model input (B, C, H, W) in one
    vectorised pass: bit for bit what `preprocess_batch` computes for the same pixels (no resize,
    no crop; the same float32 /255 and (x - mean) / std). None when the images need more than that."""
    channels_last = images.ndim == 4 and images.shape[-1] == 3
    if images.dtype != np.uint8 or spec.resize != spec.crop or images.shape[1:3] != (spec.crop, spec.crop) \
            or (spec.mode == "L" and images.ndim != 3) or (spec.mode == "RGB" and not channels_last):
        return None
    pixels = images.astype(np.float32) / 255.0  # (B, H, W) or (B, H, W, C)
    pixels = pixels.reshape(len(images), spec.crop, spec.crop, -1).transpose(0, 3, 1, 2)  # (B, C, H, W)
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(1, -1, 1, 1)
    return np.ascontiguousarray((pixels - mean) / std, dtype=np.float32)

