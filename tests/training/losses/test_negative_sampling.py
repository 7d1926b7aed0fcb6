"""The negative-sampling loss is word2vec's objective and its gradient is word2vec's update."""

import torch
import torch.nn.functional as F

from training.losses.negative_sampling import negative_sampling_loss


def test_loss_is_the_sum_of_log_sigmoid_terms_and_skips_masked_negatives():
    torch.manual_seed(0)
    hidden, positive, negatives = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 2, 4)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    expected = 0.0
    for b in range(3):
        expected -= F.logsigmoid(hidden[b] @ positive[b])
        for k in range(2):
            expected -= mask[b, k] * F.logsigmoid(-(hidden[b] @ negatives[b, k]))
    assert torch.allclose(negative_sampling_loss(hidden, positive, negatives, mask), expected)


def test_gradient_matches_word2vec_update():
    """word2vec.c's step for the positive: g = (1 - sigmoid(h.u)), u += alpha g h, h += alpha g u."""
    hidden = torch.randn(1, 5, requires_grad=True)
    positive = torch.randn(1, 5, requires_grad=True)
    negatives = torch.zeros(1, 1, 5)
    negative_sampling_loss(hidden, positive, negatives, torch.zeros(1, 1)).backward()
    g = 1 - torch.sigmoid((hidden * positive).sum())
    assert torch.allclose(-positive.grad, g * hidden.detach())
    assert torch.allclose(-hidden.grad, g * positive.detach())
