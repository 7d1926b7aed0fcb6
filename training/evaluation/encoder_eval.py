"""Frozen-encoder evaluation of image encoders: embed labelled images, then kNN and linear probe.

`evaluate_encoder` takes any function from uint8 images to embeddings, so the same call scores
a trained encoder, the same architecture at random initialisation, and raw pixels.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from runtime.preprocessing import PreprocessingSpec
from runtime.sources import to_pil
from training.data.transforms import EvalTransform
from training.evaluation.knn import knn_accuracy
from training.evaluation.linear_probe import linear_probe

EmbedFn = Callable[[np.ndarray], np.ndarray]  # uint8 images (N, H, W[, 3]) -> float embeddings (N, D)


def encoder_embed_fn(encoder: nn.Module, preprocessing: PreprocessingSpec, batch_size: int = 512,
                     device: str | torch.device = "cpu") -> EmbedFn:
    """Embed uint8 images with `encoder` after the EvalTransform its preprocessing spec describes."""
    transform = EvalTransform.from_spec(preprocessing)

    @torch.inference_mode()
    def embed(images: np.ndarray) -> np.ndarray:
        encoder.to(device).eval()
        out = []
        for start in range(0, len(images), batch_size):
            batch = torch.stack([transform(to_pil(im)) for im in images[start:start + batch_size]])  # (b, C, H, W)
            out.append(encoder(batch.to(device)).float().cpu().numpy())  # (b, D)
        return np.concatenate(out)

    return embed


def raw_pixels(images: np.ndarray) -> np.ndarray:
    """The pixel baseline: each image flattened and scaled to [0, 1], (N, H * W * C)."""
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


def evaluate_encoder(embed_fn: EmbedFn, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                     fractions: tuple[float, ...] = (0.01, 0.1, 1.0), k: int = 200, temperature: float = 0.1,
                     seed: int = 0) -> dict[str, Any]:
    """{"dim", "embed_time_s", "knn_top1_pct", "linear_top1_pct": {"1%": ..., ...}} for (images, labels) pairs."""
    start = time.perf_counter()
    train_x, test_x = embed_fn(train[0]), embed_fn(test[0])
    embed_time_s = time.perf_counter() - start
    return {
        "dim": int(train_x.shape[1]),
        "embed_time_s": embed_time_s,
        "knn_top1_pct": knn_accuracy(train_x, train[1], test_x, test[1], k, temperature),
        "linear_top1_pct": linear_probe(train_x, train[1], test_x, test[1], fractions, seed),
    }
