"""The torch word2vec tables: lookups, the CBOW mean, and per-row gradient scaling."""

import numpy as np
import torch

from training.models.word2vec import Word2VecModel


def make_model(vocab_size=5, dim=3):
    rng = np.random.default_rng(0)
    return Word2VecModel(rng.normal(size=(vocab_size, dim)).astype(np.float32), np.zeros((vocab_size, dim), np.float32))


def test_cbow_hidden_is_the_mean_of_real_context_words():
    model = make_model()
    context = torch.tensor([[1, 2, 0, 0]])
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    expected = (model.input.weight[1] + model.input.weight[2]) / 2
    assert torch.allclose(model.hidden(context, mask)[0], expected)


def test_forward_splits_targets_and_negatives():
    model = make_model()
    model.output.weight.data = torch.arange(15, dtype=torch.float32).view(5, 3)
    hidden, positive, negatives = model(torch.tensor([0, 1]), None, torch.tensor([2, 3]), torch.tensor([[4, 4], [0, 1]]))
    assert hidden.shape == (2, 3) and positive.shape == (2, 3) and negatives.shape == (2, 2, 3)
    assert torch.equal(positive[1], model.output.weight[3]) and torch.equal(negatives[1, 1], model.output.weight[1])


def test_gradients_are_sparse():
    model = make_model()
    hidden, positive, negatives = model(torch.tensor([0]), None, torch.tensor([1]), torch.tensor([[2]]))
    (hidden * positive).sum().backward()
    assert model.input.weight.grad.is_sparse and model.output.weight.grad.is_sparse


def test_a_row_looked_up_many_times_gets_a_capped_gradient():
    from training.models.word2vec import MAX_SUMMED_LOOKUPS, capped_lookup

    table = torch.nn.Embedding(3, 2, sparse=True)
    ids = torch.tensor([0] * (4 * MAX_SUMMED_LOOKUPS) + [1, 1])
    capped_lookup(table, ids).sum().backward()
    grad = table.weight.grad.to_dense()
    assert torch.allclose(grad[0], torch.full((2,), float(MAX_SUMMED_LOOKUPS)))  # capped, not 4x that
    assert torch.allclose(grad[1], torch.full((2,), 2.0))  # few lookups: the plain sum, as SGD
    assert torch.allclose(grad[2], torch.zeros(2))
