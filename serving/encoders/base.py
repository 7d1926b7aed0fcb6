"""The one `Encoder` interface that every runtime implements.

Routers and the micro-batcher talk to an `Encoder`, never to onnxruntime or Triton directly,
so a deployment can move a model to a Triton server by changing a setting and nothing else.
An encoder takes a batch that is already preprocessed (numpy, float32) and returns one
embedding row per input.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from export.bundle import Manifest


class Encoder(ABC):
    """A model that maps a preprocessed batch to embeddings.

    `manifest` says what the model is (name, version, dim, preprocessing, tokenizer).
    """

    manifest: Manifest

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def dim(self) -> int:
        return self.manifest.dim

    @abstractmethod
    def encode(self, batch: np.ndarray) -> np.ndarray:
        """Embed a batch → (B, dim) float32: images (B, C, H, W) float32, or for a model of k inputs
        of one shape, the inputs stacked on axis 1 in the model's order (a CLIP text tower: token ids
        and attention mask as (B, 2, T) int64), so the micro-batcher handles one array per request."""

    def close(self) -> None:
        """Release the runtime's resources (sessions, connections). Default: nothing to do."""
