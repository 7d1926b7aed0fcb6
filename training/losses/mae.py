"""MAE's masked-patch reconstruction loss: mean squared error on masked patches only."""

from __future__ import annotations

from torch import Tensor, nn


class MAELoss(nn.Module):
    """Mean over masked patches of the per-patch mean squared error between predicted and target
    pixels. With `norm_pix` each target patch is first standardised by its own mean and
    (unbiased) variance, as in the MAE paper: (t - mean) / sqrt(var + eps)."""

    def __init__(self, norm_pix: bool = True, eps: float = 1e-6):
        super().__init__()
        self.norm_pix, self.eps = norm_pix, eps

    def forward(self, pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        """pred, target: (B, N, P) patch pixels; mask: (B, N), 1 where the patch was hidden."""
        target = target.float()
        if self.norm_pix:
            mean = target.mean(dim=-1, keepdim=True)  # (B, N, 1)
            var = target.var(dim=-1, keepdim=True)  # (B, N, 1), unbiased like MAE's code
            target = (target - mean) / (var + self.eps).sqrt()
        per_patch = (pred.float() - target).pow(2).mean(dim=-1)  # (B, N)
        return (per_patch * mask).sum() / mask.sum().clamp_min(1)
