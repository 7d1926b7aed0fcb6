"""The one `Encoder` interface that every runtime implements.

Routers and the micro-batcher talk to an `Encoder`, never to onnxruntime or Triton directly,
so a deployment can move a model to a Triton server by changing a setting and nothing else.
An encoder takes a batch that is already preprocessed (numpy, float32) and returns one
embedding row per input. The server, the batch re-embedding jobs and index builds all embed
through one, so an item embeds the same wherever it is embedded.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from runtime.bundle import Manifest


class EncoderUnavailable(RuntimeError):
    """The runtime behind an encoder cannot serve now (a Triton server down or without the model);
    the message says what to check. A server answers it with 503."""


class Encoder(ABC):
    """A model that maps a preprocessed batch to embeddings.

    `manifest` says what the model is (name, version, dim, preprocessing, tokenizer).
    """

    manifest: Manifest
    role: str  # the bundle file role of the model it runs, e.g. "image_encoder"
    precision: str = "fp32"  # which variant runs: fp32, fp16 or int8 (runtime.encoders.factory.choose_precision)
    providers: list[str] | None = None  # onnxruntime's execution providers, for a model run in this process; else None

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

    def row_tokens(self, batch: np.ndarray) -> np.ndarray | None:
        """The tokens each row of `batch` makes the model run, (B,) int, for a text model; None for
        a model whose rows all cost alike (images). A batch costs its rows times its longest row's
        tokens, as it is padded to that; the micro-batcher keeps batches within a token budget by
        it. Default: None."""
        return None

    def close(self) -> None:
        """Release the runtime's resources (sessions, connections). Default: nothing to do."""


def split_inputs(batch: np.ndarray, input_names: list[str], model: str) -> list[np.ndarray]:
    """The model's inputs from one batch: the batch itself for a model of one input, else the
    inputs stacked on axis 1 in the model's order ((B, k, ...) -> k arrays (B, ...)), as the
    micro-batcher carries a text tower's token ids and attention mask."""
    if len(input_names) == 1:
        return [batch]
    if batch.ndim < 2 or batch.shape[1] != len(input_names):
        raise ValueError(f"model {model} takes its inputs {input_names} stacked as "
                         f"(batch, {len(input_names)}, ...), got {tuple(batch.shape)}")
    return [np.ascontiguousarray(batch[:, i]) for i in range(len(input_names))]

