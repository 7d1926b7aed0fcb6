"""From request data to unit vectors: images and texts through the inference core and a model's
micro-batcher. /embed/image, /embed/text, /zero-shot and /search all embed here, so an item
embeds the same whichever route it came through.
"""

from __future__ import annotations

import asyncio
from typing import Sequence

import numpy as np
from PIL import Image

from runtime.bundle import Manifest
from runtime.preprocessing import ImageLimits, PreprocessingSpec, load_pixels, open_image, preprocess_batch
from runtime.tokens import text_encoder_batch
from runtime.vectors import unit_rows
from serving.batching import MicroBatcher
from serving.errors import InvalidInput
from serving.registry import TextModel

# A request whose images hold at most this many pixels in all is decoded on the event loop: a
# 28×28 PNG decodes and preprocesses in about 50 µs, less than the hop to a worker thread costs
# the loop; anything larger goes to a thread so that the loop never stalls on a big decode.
INLINE_DECODE_MAX_PIXELS = 64 * 64 * 16


def _prepare(images: list[Image.Image], spec: PreprocessingSpec, limits: ImageLimits) -> np.ndarray:
    """Decode the pixels of opened images and preprocess them → the model's batch (n, C, H, W)."""
    return preprocess_batch([load_pixels(img, limits) for img in images], spec)  # (n, C, H, W)


async def embed_images(blobs: list[bytes], manifest: Manifest, batcher: MicroBatcher, limits: ImageLimits) -> np.ndarray:
    """Encoded images → L2-normalised embeddings (n, D)."""
    spec = manifest.preprocessing
    if spec is None:
        raise InvalidInput(f"model {manifest.name} has no preprocessing spec in its bundle; it cannot embed images")
    images = [open_image(blob, limits) for blob in blobs]  # headers only
    if sum(img.width * img.height for img in images) <= INLINE_DECODE_MAX_PIXELS:
        batch = _prepare(images, spec, limits)  # (n, C, H, W)
    else:
        # asyncio.to_thread rather than starlette's run_in_threadpool: the same kind of pool,
        # without anyio's limiter and cancel scope, which cost the loop more time
        batch = await asyncio.to_thread(_prepare, images, spec, limits)
    return unit_rows(await batcher.submit(batch))  # (n, D)


async def tokenize(texts: Sequence[str], model: TextModel, names: Sequence[str] | None = None) -> np.ndarray:
    """Texts → the text tower's batch (n, 2, T) int64 (ids and attention mask), in a thread. A
    text that is empty or longer than the model reads is refused (runtime.tokens.InvalidText, a
    422); `names[i]` says how the error names text i."""
    return await asyncio.to_thread(text_encoder_batch, model.tokenizer, texts, names)


async def embed_texts(texts: Sequence[str], model: TextModel, names: Sequence[str] | None = None) -> np.ndarray:
    """Texts → L2-normalised embeddings (n, D), through the model's text micro-batcher."""
    return unit_rows(await model.batcher.submit(await tokenize(texts, model, names)))  # (n, D)
