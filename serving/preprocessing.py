"""Request bytes to model input, without torch: decode an uploaded image safely, then apply a
bundle's `preprocessing` spec exactly as training's EvalTransform does.

The pixel arithmetic is training.data.images.preprocess_image (torch-free, one copy for training
and serving); this module adds what only a server needs: limits, and errors a client can act on.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from serving.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType

# Shared with training, so serving cannot drift from EvalTransform (and torch-free, like serving/).
from training.data.images import normalize_image
from training.data.images import preprocess_image as _preprocess_image

__all__ = ["SUPPORTED_FORMATS", "decode_image", "open_image", "load_pixels", "normalize_image", "preprocess_image",
           "preprocess_batch"]

# Only these decoders are tried: exotic ones (EPS runs Ghostscript, FITS, PSD, ...) widen the
# attack surface of a public endpoint for no benefit to an embedding service.
SUPPORTED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM")
_SUPPORTED_TEXT = "PNG, JPEG, GIF, BMP, TIFF, WebP or PPM/PGM"

# Leading bytes of the supported formats: a body that starts like one of them but that Pillow
# cannot open is a damaged image (422), not a file of the wrong type (415).
_MAGIC_PREFIXES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*",
                   b"P1", b"P2", b"P3", b"P4", b"P5", b"P6")

# What Pillow's decoders raise on damaged data: truncation is an OSError, a broken chunk or marker
# is often a SyntaxError, short headers give struct.error or EOFError.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError)


def _looks_like_supported_image(data: bytes) -> bool:
    return data.startswith(_MAGIC_PREFIXES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def _bomb(error: Exception, max_pixels: int) -> PayloadTooLarge:
    # Pillow's own decompression-bomb guard fired: its limit, not ours, but the same fix for the client
    return PayloadTooLarge(f"image is too large to decode ({error}); the limit is {max_pixels:,} pixels: send a smaller image")


def decode_image(data: bytes, max_bytes: int, max_pixels: int) -> Image.Image:
    """Decode an uploaded image fully, or raise the serving error that says what is wrong with it.

    Checks, in order: empty (422), larger than `max_bytes` (413), not an image of a supported
    format (415), more than `max_pixels` pixels by its header, before any pixel is decoded (413),
    truncated or corrupt pixel data (422). The image keeps its own mode and EXIF orientation;
    `preprocess_image` normalises both. The same as `load_pixels(open_image(...))`.
    """
    return load_pixels(open_image(data, max_bytes, max_pixels), max_pixels)


def open_image(data: bytes, max_bytes: int, max_pixels: int) -> Image.Image:
    """The first half of `decode_image`: every check up to the pixel count, reading the header
    only (cheap, whatever the image's size). `load_pixels` decodes the pixels."""
    if not data:
        raise InvalidInput("empty image: the request carried no bytes; send the image file's contents")
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"image is {len(data):,} bytes; the limit is {max_bytes:,} bytes: send a smaller or more compressed image")
    try:
        img = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)  # reads the header only
    except Image.DecompressionBombError as e:
        raise _bomb(e, max_pixels) from e
    except UnidentifiedImageError as e:
        if _looks_like_supported_image(data):
            raise InvalidInput("image is truncated or corrupt: its header could not be read; re-encode or re-upload it") from e
        raise UnsupportedMediaType(f"the body is not an image in a supported format; send {_SUPPORTED_TEXT}") from e
    except _DECODE_ERRORS as e:
        raise InvalidInput(f"image is truncated or corrupt ({e}); re-encode or re-upload it") from e

    width, height = img.size
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"image is {width}x{height} = {width * height:,} pixels; the limit is {max_pixels:,}: downscale it before sending"
        )
    return img


def load_pixels(img: Image.Image, max_pixels: int) -> Image.Image:
    """The second half of `decode_image`: decode an opened image's pixels; truncated or corrupt
    data is a 422 now rather than an error later."""
    try:
        img.load()
    except Image.DecompressionBombError as e:
        raise _bomb(e, max_pixels) from e
    except _DECODE_ERRORS as e:
        raise InvalidInput(f"image is truncated or corrupt ({e}); re-encode or re-upload it") from e
    return img


def preprocess_image(img: Image.Image, spec: dict[str, Any]) -> np.ndarray:
    """One decoded image to model input, float32 (C, crop, crop): exactly EvalTransform, i.e.
    upright, in the spec's "L"/"RGB", shorter side resized (bilinear), centre-cropped, /255,
    (x - mean) / std. A pixel mode Pillow cannot convert (e.g. a CIELab TIFF to "L") is a 415."""
    try:
        return _preprocess_image(img, spec)  # (C, crop, crop)
    except ValueError as e:
        raise UnsupportedMediaType(
            f"cannot convert this image's pixels (mode {img.mode!r}) to {spec['mode']!r}: {e}; "
            "send it as 8/16-bit greyscale, RGB(A), palette or CMYK"
        ) from e


def preprocess_batch(images: Sequence[Image.Image], spec: dict[str, Any]) -> np.ndarray:
    """Several decoded images to one model batch, float32 (B, C, crop, crop)."""
    if not images:
        return np.empty((0, spec["channels"], spec["crop"], spec["crop"]), dtype=np.float32)  # (0, C, H, W)
    return np.stack([preprocess_image(img, spec) for img in images])  # (B, C, H, W)
