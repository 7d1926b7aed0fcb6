"""Fixtures shared across the test tree: tiny artifacts made on the spot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from export.word_vectors import write_word_vectors_bundle

# A planted vocabulary: axis 0 is royalty, axis 1 is gender, axis 2 is youth, the rest is
# small noise, so that king − man + woman lands on queen and fruit words sit apart.
PLANTED = {
    "king": [1, 1, 0],
    "queen": [1, -1, 0],
    "man": [0, 1, 0],
    "woman": [0, -1, 0],
    "prince": [1, 1, 1],
    "princess": [1, -1, 1],
    "café": [-1, 0, -1],
    "apple": [-1, 0.1, -1],
    "banana": [-1, -0.1, -1],
}


def planted_vectors(dim: int = 8, seed: int = 0) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    words = list(PLANTED)
    vectors = rng.normal(scale=0.01, size=(len(words), dim)).astype(np.float32)
    vectors[:, :3] = np.array([PLANTED[w] for w in words], dtype=np.float32)
    return words, vectors


@pytest.fixture
def planted() -> tuple[list[str], np.ndarray]:
    return planted_vectors()


@pytest.fixture
def words_artifacts(tmp_path: Path) -> Path:
    """An artifacts folder holding one word-vectors bundle named 'words'."""
    words, vectors = planted_vectors()
    counts = np.arange(len(words), 0, -1) * 10
    write_word_vectors_bundle(tmp_path, "words", words, counts, vectors, metrics={"analogy_total": 1.0})
    return tmp_path
