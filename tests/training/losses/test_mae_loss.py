import pytest
import torch

from training.losses.mae import MAELoss

# one image, two patches of three pixels
TARGET = torch.tensor([[[1.0, 2.0, 3.0], [4.0, 4.0, 4.0]]])  # (B=1, N=2, P=3)
PRED = torch.zeros(1, 2, 3)


def test_raw_pixels_only_masked_patches_count():
    loss = MAELoss(norm_pix=False)
    # patch 0: (1 + 4 + 9) / 3; patch 1: 16
    assert loss(PRED, TARGET, torch.tensor([[1.0, 0.0]])).item() == pytest.approx(14 / 3)
    assert loss(PRED, TARGET, torch.tensor([[0.0, 1.0]])).item() == pytest.approx(16.0)
    assert loss(PRED, TARGET, torch.tensor([[1.0, 1.0]])).item() == pytest.approx((14 / 3 + 16) / 2)


def test_norm_pix_standardises_each_target_patch():
    # patch 0: mean 2, unbiased var 1 -> target (-1, 0, 1)/sqrt(1 + eps), mse vs 0 = 2/3;
    # patch 1: constant -> target 0, mse 0
    loss = MAELoss(norm_pix=True, eps=1e-6)
    assert loss(PRED, TARGET, torch.tensor([[1.0, 1.0]])).item() == pytest.approx((2 / 3 / (1 + 1e-6)) / 2, rel=1e-6)
    perfect = torch.tensor([[[-1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]])
    assert loss(perfect, TARGET, torch.tensor([[1.0, 1.0]])).item() == pytest.approx(0.0, abs=1e-5)


def test_visible_patches_do_not_matter():
    loss = MAELoss(norm_pix=False)
    mask = torch.tensor([[1.0, 0.0]])
    wrong_on_visible = PRED.clone()
    wrong_on_visible[0, 1] = 100.0
    assert loss(wrong_on_visible, TARGET, mask).item() == loss(PRED, TARGET, mask).item()
