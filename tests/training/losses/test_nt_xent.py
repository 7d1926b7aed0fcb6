import math

import numpy as np
import pytest
import torch

from training.losses.nt_xent import NTXentLoss


def numpy_nt_xent(z_a: np.ndarray, z_b: np.ndarray, temperature: float) -> float:
    """The SimCLR paper's definition, anchor by anchor."""
    z = np.concatenate([z_a, z_b])
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n, b = len(z), len(z_a)
    losses = []
    for i in range(n):
        positive = (i + b) % n
        sims = np.array([z[i] @ z[k] / temperature for k in range(n)])
        denominator = sum(math.exp(sims[k]) for k in range(n) if k != i)
        losses.append(-math.log(math.exp(sims[positive]) / denominator))
    return float(np.mean(losses))


def test_hand_computed_orthogonal_pairs():
    # each anchor: positive cos 1, two negatives cos 0 -> -log(e / (e + 1 + 1)) = log(1 + 2/e)
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert NTXentLoss(temperature=1.0)(z, z.clone()).item() == pytest.approx(math.log(1 + 2 / math.e), abs=1e-6)


def test_single_pair_has_zero_loss():
    # with B = 1 the positive is the only candidate, whatever its similarity
    loss = NTXentLoss(0.5)(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 3.0]]))
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("temperature", [0.1, 0.5, 2.0])
def test_matches_the_definition_on_random_embeddings(temperature):
    rng = np.random.default_rng(0)
    z_a, z_b = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    got = NTXentLoss(temperature)(torch.tensor(z_a, dtype=torch.float32), torch.tensor(z_b, dtype=torch.float32))
    assert got.item() == pytest.approx(numpy_nt_xent(z_a, z_b, temperature), rel=1e-4)


def test_aligned_views_score_better_than_shuffled():
    torch.manual_seed(0)
    z = torch.randn(8, 16)
    loss = NTXentLoss(0.5)
    assert loss(z, z + 0.01 * torch.randn_like(z)) < loss(z, z[torch.randperm(8)])
