"""Linear probe: multinomial logistic regression on frozen, standardised embeddings, trained on
stratified fractions of the labels (1%, 10%, 100%) to show how label-efficient an encoder is."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler


def stratified_subset(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Indices of a class-stratified random `fraction` of `labels` (all of them for fraction 1)."""
    indices = np.arange(len(labels))
    if fraction >= 1.0:
        return indices
    subset, _ = train_test_split(indices, train_size=fraction, stratify=labels, random_state=seed)
    return np.sort(subset)


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 fractions: tuple[float, ...] = (0.01, 0.1, 1.0), seed: int = 0, c: float = 1.0,
                 max_iter: int = 300) -> dict[str, float]:
    """Top-1 test accuracy in percent per label fraction, keyed "1%", "10%", "100%".

    Features are standardised with the statistics of each training subset; L2 strength is 1/c.
    """
    results = {}
    for fraction in fractions:
        keep = stratified_subset(train_y, fraction, seed)
        scaler = StandardScaler().fit(train_x[keep])
        classifier = LogisticRegression(C=c, max_iter=max_iter, random_state=seed)
        classifier.fit(scaler.transform(train_x[keep]), train_y[keep])
        accuracy = (classifier.predict(scaler.transform(test_x)) == test_y).mean()
        results[f"{fraction * 100:g}%"] = 100.0 * float(accuracy)
    return results
