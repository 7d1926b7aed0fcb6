"""CLIP's loss: symmetric cross-entropy over the batch's image–text similarities, with a learned
temperature (open_clip's ClipLoss, single process)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class ClipLoss(nn.Module):
    """Row i of the images matches row i of the texts; every other row in the batch is a negative.

    The logit scale (1 / temperature) is learned as its log, starts at 1/0.07 and is capped at
    `max_logit_scale` (100 in CLIP) so the logits cannot grow without bound and destabilise training.
    """

    def __init__(self, init_temperature: float = 0.07, max_logit_scale: float = 100.0):
        super().__init__()
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        self.max_logit_scale = max_logit_scale

    def logit_scale(self) -> Tensor:
        return self.log_logit_scale.exp().clamp(max=self.max_logit_scale)

    def forward(self, image_features: Tensor, text_features: Tensor) -> Tensor:
        image_features = F.normalize(image_features.float(), dim=-1)  # (B, D), float32 even under autocast
        text_features = F.normalize(text_features.float(), dim=-1)  # (B, D)
        logits = self.logit_scale() * image_features @ text_features.T  # (B, B): images by rows, texts by columns
        labels = torch.arange(logits.shape[0], device=logits.device)  # (B,)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
