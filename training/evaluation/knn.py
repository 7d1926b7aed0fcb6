"""Weighted k-nearest-neighbour classification of frozen embeddings (the InstDisc / DINO protocol)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def knn_predict(train_embeddings: np.ndarray, train_labels: np.ndarray, test_embeddings: np.ndarray,
                k: int = 200, temperature: float = 0.1, chunk_size: int = 1024) -> np.ndarray:
    """Predicted labels (N_test,): each test embedding votes over its k most cosine-similar training
    embeddings, neighbour i weighing exp(cos_i / temperature) for its class."""
    train = F.normalize(torch.as_tensor(train_embeddings, dtype=torch.float32), dim=1)  # (N_train, D)
    labels = torch.as_tensor(train_labels, dtype=torch.int64)  # (N_train,)
    num_classes = int(labels.max()) + 1
    k = min(k, len(train))
    predictions = []
    for start in range(0, len(test_embeddings), chunk_size):
        test = F.normalize(torch.as_tensor(test_embeddings[start:start + chunk_size], dtype=torch.float32), dim=1)  # (n, D)
        similarity, neighbours = (test @ train.T).topk(k, dim=1)  # (n, k) each
        weights = (similarity / temperature).exp()  # (n, k)
        votes = torch.zeros(len(test), num_classes).scatter_add_(1, labels[neighbours], weights)  # (n, classes)
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions).numpy()


def knn_accuracy(train_embeddings: np.ndarray, train_labels: np.ndarray, test_embeddings: np.ndarray,
                 test_labels: np.ndarray, k: int = 200, temperature: float = 0.1) -> float:
    """Top-1 accuracy of knn_predict, in percent."""
    predicted = knn_predict(train_embeddings, train_labels, test_embeddings, k, temperature)
    return 100.0 * float((predicted == np.asarray(test_labels)).mean())
