"""NT-Xent, SimCLR's normalised-temperature cross-entropy over two views of a batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class NTXentLoss(nn.Module):
    """For 2B embeddings (two views of B images), each view's positive is the other view of its
    image and its negatives are the other 2B - 2 embeddings; the loss is the mean over all 2B
    anchors of cross-entropy over cosine similarities / temperature (self-similarity excluded)."""

    def __init__(self, temperature: float = 0.5):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, not {temperature}")
        self.temperature = temperature

    def forward(self, z_a: Tensor, z_b: Tensor) -> Tensor:
        B = z_a.shape[0]
        z = F.normalize(torch.cat([z_a, z_b]).float(), dim=1)  # (2B, D), float32 even under autocast
        logits = z @ z.T / self.temperature  # (2B, 2B)
        logits.fill_diagonal_(float("-inf"))  # an embedding is not its own positive or negative
        targets = torch.cat([torch.arange(B, 2 * B), torch.arange(0, B)]).to(z.device)  # (2B,) index of the other view
        return F.cross_entropy(logits, targets)
