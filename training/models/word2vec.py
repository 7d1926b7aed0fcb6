"""Word2vec's two embedding tables as a torch module, for the batched (GPU) trainer."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn


class Word2VecModel(nn.Module):
    """Input vectors (the word vectors kept after training) and output vectors (the classifier).

    Both tables are sparse embeddings: a batch touches a few thousand rows out of the
    vocabulary, and sparse SGD updates only those, as word2vec.c does.
    """

    def __init__(self, input_vectors: np.ndarray, output_vectors: np.ndarray):
        super().__init__()
        self.input = nn.Embedding.from_pretrained(torch.from_numpy(input_vectors), freeze=False, sparse=True)  # (V, D)
        self.output = nn.Embedding.from_pretrained(torch.from_numpy(output_vectors), freeze=False, sparse=True)  # (V, D)

    def hidden(self, context: Tensor, context_mask: Tensor | None = None) -> Tensor:
        """Skip-gram: context (B,) -> its input vectors (B, D). CBOW: context (B, C) with
        context_mask (B, C) of 1 for real words, 0 for padding -> mean input vector (B, D)."""
        if context.dim() == 1:
            return self.input(context)  # (B, D)
        vectors = self.input(context) * context_mask.unsqueeze(-1)  # (B, C, D)
        return vectors.sum(dim=1) / context_mask.sum(dim=1, keepdim=True).clamp(min=1)  # (B, D)

    def forward(self, context: Tensor, context_mask: Tensor | None, targets: Tensor, negatives: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Hidden vectors (B, D), target output vectors (B, D), negative output vectors (B, K, D)."""
        return self.hidden(context, context_mask), self.output(targets), self.output(negatives)
