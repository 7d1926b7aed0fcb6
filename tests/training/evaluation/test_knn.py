import numpy as np
import pytest

from training.evaluation.knn import knn_accuracy, knn_predict


def test_weighted_vote_prefers_closer_neighbours():
    # two neighbours of class 0 at ~60 degrees lose to one of class 1 at 0 degrees when the
    # temperature is low: exp(1/0.1) > 2 exp(0.5/0.1); with a high temperature the two win
    train = np.array([[1.0, 0.0], [0.5, 0.866], [0.5, -0.866]])
    labels = np.array([1, 0, 0])
    test = np.array([[1.0, 0.0]])
    assert knn_predict(train, labels, test, k=3, temperature=0.1).tolist() == [1]
    assert knn_predict(train, labels, test, k=3, temperature=10.0).tolist() == [0]


def test_embeddings_are_l2_normalised_first():
    train = np.array([[100.0, 0.0], [0.0, 0.01]])
    labels = np.array([0, 1])
    assert knn_predict(train, labels, np.array([[0.0, 5.0]]), k=1).tolist() == [1]


def test_accuracy_on_separated_clusters():
    rng = np.random.default_rng(0)
    centres = np.eye(3) * 5
    train_y, test_y = rng.integers(0, 3, 300), rng.integers(0, 3, 50)
    train_x = centres[train_y] + rng.normal(size=(300, 3))
    test_x = centres[test_y] + rng.normal(size=(50, 3))
    assert knn_accuracy(train_x, train_y, test_x, test_y, k=200) == pytest.approx(100.0)
    assert knn_accuracy(train_x, train_y, test_x, (test_y + 1) % 3, k=20) == pytest.approx(0.0)
