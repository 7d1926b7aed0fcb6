"""Word2vec's negative-sampling loss (Mikolov et al. 2013), for skip-gram and CBOW alike.

Each example has a hidden vector (skip-gram: one context word's input vector; CBOW: the mean
of the context's input vectors), the output vector of the word it should predict, and output
vectors of K sampled noise words it should not.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def negative_sampling_loss(hidden: Tensor, positive: Tensor, negatives: Tensor, negative_mask: Tensor | None = None) -> Tensor:
    """Sum over the batch of -log sigmoid(h.u+) - sum_k log sigmoid(-h.u_k).

    hidden (B, D), positive (B, D), negatives (B, K, D); `negative_mask` (B, K) is 0 where a
    noise draw hit the positive word itself (word2vec.c skips those) and 1 elsewhere.
    The sum, not the mean, so that SGD at word2vec's learning rate takes word2vec's steps.
    """
    positive_logits = (hidden * positive).sum(dim=-1)  # (B,)
    negative_logits = (negatives @ hidden.unsqueeze(-1)).squeeze(-1)  # (B, K)
    negative_terms = F.logsigmoid(-negative_logits)  # (B, K)
    if negative_mask is not None:
        negative_terms = negative_terms * negative_mask
    return -(F.logsigmoid(positive_logits).sum() + negative_terms.sum())
