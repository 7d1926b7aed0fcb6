"""Word2vec's two embedding tables as a torch module, for the batched (GPU) trainer."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn


# A row looked up more often than this in one batch gets this many times its mean gradient.
MAX_SUMMED_LOOKUPS = 16


class Word2VecModel(nn.Module):
    """Input vectors (the word vectors kept after training) and output vectors (the classifier).

    Both tables are sparse embeddings: a batch touches a few thousand rows of the vocabulary,
    and sparse SGD updates only those, as word2vec.c does. A batch sums the loss of many
    examples, and a frequent word can sit in hundreds of them (as a noise word above all);
    word2vec.c would move its row once per example, each step seeing the last, but a batch
    adds all those steps at once and diverges. So a row's gradient sums at most
    MAX_SUMMED_LOOKUPS of its lookups' gradients: beyond that it is their mean, times that cap.
    """

    def __init__(self, input_vectors: np.ndarray, output_vectors: np.ndarray):
        super().__init__()
        self.input = nn.Embedding.from_pretrained(torch.from_numpy(input_vectors), freeze=False, sparse=True)  # (V, D)
        self.output = nn.Embedding.from_pretrained(torch.from_numpy(output_vectors), freeze=False, sparse=True)  # (V, D)

    def hidden(self, context: Tensor, context_mask: Tensor | None = None) -> Tensor:
        """Skip-gram: context (B,) -> its input vectors (B, D). CBOW: context (B, C) with
        context_mask (B, C) of 1 for real words, 0 for padding -> mean input vector (B, D)."""
        if context.dim() == 1:
            return capped_lookup(self.input, context)  # (B, D)
        vectors = capped_lookup(self.input, context, context_mask) * context_mask.unsqueeze(-1)  # (B, C, D)
        return vectors.sum(dim=1) / context_mask.sum(dim=1, keepdim=True).clamp(min=1)  # (B, D)

    def forward(self, context: Tensor, context_mask: Tensor | None, targets: Tensor, negatives: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Hidden vectors (B, D), target output vectors (B, D), negative output vectors (B, K, D)."""
        outputs = capped_lookup(self.output, torch.cat([targets.unsqueeze(1), negatives], dim=1))  # (B, 1 + K, D)
        return self.hidden(context, context_mask), outputs[:, 0], outputs[:, 1:]


def capped_lookup(table: nn.Embedding, ids: Tensor, mask: Tensor | None = None) -> Tensor:
    """`table(ids)`, whose gradient to a row looked up n > MAX_SUMMED_LOOKUPS times is scaled
    by MAX_SUMMED_LOOKUPS / n.

    ids (...) -> vectors (..., D); `mask` (same shape as ids) marks padding lookups (0), which
    do not count.
    """
    vectors = table(ids)  # (..., D)
    _, inverse, _ = torch.unique(ids, return_inverse=True, return_counts=True)
    weights = torch.ones_like(ids, dtype=vectors.dtype) if mask is None else mask.to(vectors.dtype)
    occurrences = torch.zeros(int(inverse.max()) + 1, dtype=vectors.dtype, device=ids.device)
    occurrences.index_add_(0, inverse.flatten(), weights.flatten())
    scale = (MAX_SUMMED_LOOKUPS / occurrences.clamp(min=MAX_SUMMED_LOOKUPS))[inverse].unsqueeze(-1)  # (..., 1)
    # Same value as `vectors`; gradient scaled by `scale`.
    return vectors.detach() + (vectors - vectors.detach()) * scale
