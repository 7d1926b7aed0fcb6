"""From request data to unit vectors: images and texts through the inference core and a model's
micro-batcher. /embed/image, /embed/text, /zero-shot and /search all embed here, so an item
embeds the same whichever route it came through.
"""

from __future__ import annotations

import asyncio
from typing import Sequence

import numpy as np

from runtime.bundle import Manifest
from runtime.tokens import text_encoder_batch
from runtime.vectors import unit_rows
from serving.batching import MicroBatcher
from serving.decoding import ImageDecoder
from serving.errors import InvalidInput
from serving.registry import TextModel

# A request of a few short texts is tokenised on the event loop: one short sentence takes about
# 80 µs (tokens, padding, arrays), where the hop to a worker thread and back took about 210 µs;
# anything more goes to a thread, so that the loop never stalls on long or many texts (eight
# short ones took 550 µs).
INLINE_TOKENIZE_MAX_TEXTS = 4
INLINE_TOKENIZE_MAX_CHARS = 256  # in all
# What the 422 for a text longer than the model reads tells the client it can do.
TOO_LONG_HINT = ('shorten it, or ask for it to be cut to the model\'s first tokens: "truncate": true in the '
                 "request (/embed/text, /v1/embeddings), or EMBEDSERVE_AUTO_TRUNCATE=true on the server")


async def model_input(blobs: list[bytes], manifest: Manifest, decoder: ImageDecoder) -> np.ndarray:
    """Encoded images → the image model's batch (n, C, H, W), decoded within the server's limits."""
    spec = manifest.preprocessing
    if spec is None:
        raise InvalidInput(f"model {manifest.name} has no preprocessing spec in its bundle; it cannot embed images")
    return await decoder.prepare(blobs, spec)  # (n, C, H, W)


async def embed_images(blobs: list[bytes], manifest: Manifest, batcher: MicroBatcher, decoder: ImageDecoder) -> np.ndarray:
    """Encoded images → L2-normalised embeddings (n, D)."""
    return unit_rows(await batcher.submit(await model_input(blobs, manifest, decoder)))  # (n, D)


async def tokenize(texts: Sequence[str], model: TextModel, names: Sequence[str] | None = None,
                   truncate: bool = False) -> np.ndarray:
    """Texts → the text tower's batch (n, 2, T) int64 (ids and attention mask), in a thread unless
    they are few and short (INLINE_TOKENIZE_MAX_TEXTS, INLINE_TOKENIZE_MAX_CHARS). A text that is
    empty is refused (runtime.tokens.InvalidText, a 422), and so is one longer than the model
    reads unless `truncate`; `names[i]` says how the error names text i."""
    if len(texts) <= INLINE_TOKENIZE_MAX_TEXTS and sum(len(t) for t in texts) <= INLINE_TOKENIZE_MAX_CHARS:
        return text_encoder_batch(model.tokenizer, texts, names, truncate, TOO_LONG_HINT)
    return await asyncio.to_thread(text_encoder_batch, model.tokenizer, texts, names, truncate, TOO_LONG_HINT)


async def embed_texts(texts: Sequence[str], model: TextModel, names: Sequence[str] | None = None,
                      truncate: bool = False) -> np.ndarray:
    """Texts → L2-normalised embeddings (n, D), through the model's text micro-batcher."""
    return unit_rows(await model.batcher.submit(await tokenize(texts, model, names, truncate)))  # (n, D)
