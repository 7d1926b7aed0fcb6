"""Request images to model input within the server's limits: the one place serving decodes.

Every route that takes images (/embed/image, /zero-shot, /search, /v1/embeddings, index items)
decodes through the registry's `ImageDecoder`, so each has the same limits and the same costs.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from runtime.preprocessing import ImageLimits, PreprocessingSpec, load_pixels, open_image, preprocess_batch
from serving.errors import PayloadTooLarge

# A request whose images hold at most this many pixels in all is decoded on the event loop: a
# 28×28 PNG decodes and preprocesses in about 50 µs, less than the hop to a worker thread costs
# the loop; anything larger goes to the decoder's threads so that the loop never stalls on a big decode.
INLINE_DECODE_MAX_PIXELS = 64 * 64 * 16


class ImageDecoder:
    """Decodes request images within the server's limits, a few requests at a time.

    What one request may cost is bounded by its header-read pixel count (`max_request_pixels`,
    checked before any pixel is decoded) and what the server as a whole spends by its threads:
    at most `threads` requests decode at once, each image at the model's size (see
    runtime.preprocessing.load_pixels), so decoding memory stays bounded under any offered load."""

    def __init__(self, limits: ImageLimits, max_request_pixels: int, threads: int):
        self.limits = limits
        self.max_request_pixels = max_request_pixels
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode")

    async def prepare(self, blobs: list[bytes], spec: PreprocessingSpec) -> np.ndarray:
        """Encoded images → the model's batch (n, C, H, W): every header checked first, then decoded."""
        images = [open_image(blob, self.limits) for blob in blobs]  # headers only
        pixels = sum(img.width * img.height for img in images)
        if pixels > self.max_request_pixels:
            raise PayloadTooLarge(f"the images in this request hold {pixels:,} pixels; the limit is "
                                  f"{self.max_request_pixels:,} per request (EMBEDSERVE_MAX_REQUEST_PIXELS): "
                                  "send fewer or smaller images per request")
        if pixels <= INLINE_DECODE_MAX_PIXELS:
            return self._decode(images, spec)
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._decode, images, spec)

    def _decode(self, images: list[Image.Image], spec: PreprocessingSpec) -> np.ndarray:
        return preprocess_batch([load_pixels(img, self.limits, spec.resize) for img in images], spec)  # (n, C, H, W)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
