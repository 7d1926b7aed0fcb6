"""Vector helpers every layer shares: unit rows and row-wise cosines, in numpy."""

from __future__ import annotations

import numpy as np


def unit_rows(vectors: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """Scale each row (last axis) to unit L2 norm, as `dtype`; zero rows stay zero."""
    vectors = np.asarray(vectors, dtype=dtype)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)  # (..., 1)
    return (vectors / np.maximum(norms, 1e-12)).astype(dtype, copy=False)


def rowwise_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of `a` (B, D) with the same row of `b` (B, D): (B,) float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(norms, 1e-12)
