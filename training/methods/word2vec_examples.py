"""The torch backend's training examples, built from a run of subsampled words with numpy:
skip-gram (context, centre) pairs and CBOW context windows, each under word2vec's dynamic
window. The metrics log draws its fixed loss sample with the same functions, so it scores the
examples that training sees."""

from __future__ import annotations

import numpy as np


def _window_spans(n: int, window: int, rng: np.random.Generator) -> np.ndarray:
    """Per centre word, the dynamic window actually used: uniform in 1..window."""
    return window - rng.integers(0, window, size=n)  # (n,)


def skipgram_pairs(ids: np.ndarray, sentences: np.ndarray, window: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(context, centre) word pairs of a run of subsampled words, vectorised over offsets.

    ids (n,) word ids and sentences (n,) the sentence each came from; pairs never cross a
    sentence. Returns contexts (P,) and centres (P,), the centre being the word to predict.
    """
    spans = _window_spans(len(ids), window, rng)  # (n,)
    contexts, centres = [], []
    for offset in range(1, window + 1):
        left, right = np.arange(len(ids) - offset), np.arange(offset, len(ids))  # positions offset apart
        same = sentences[left] == sentences[right]
        for centre, context in ((left, right), (right, left)):
            ok = same & (spans[centre] >= offset)
            contexts.append(ids[context[ok]])
            centres.append(ids[centre[ok]])
    return np.concatenate(contexts), np.concatenate(centres)


def cbow_examples(
    ids: np.ndarray, sentences: np.ndarray, window: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CBOW examples of a run of subsampled words: context ids (B, 2W), mask (B, 2W), centres (B,).

    Centres with no context word in their window (one-word sentences) are left out.
    """
    n = len(ids)
    spans = _window_spans(n, window, rng)  # (n,)
    context = np.zeros((n, 2 * window), dtype=ids.dtype)
    mask = np.zeros((n, 2 * window), dtype=bool)
    positions = np.arange(n)
    for offset in range(1, window + 1):
        for column, neighbour in ((2 * offset - 2, positions - offset), (2 * offset - 1, positions + offset)):
            inside = (neighbour >= 0) & (neighbour < n)
            ok = np.zeros(n, dtype=bool)
            ok[inside] = (sentences[neighbour[inside]] == sentences[inside]) & (spans[inside] >= offset)
            context[ok, column] = ids[neighbour[ok]]
            mask[ok, column] = True
    has_context = mask.any(axis=1)
    return context[has_context], mask[has_context], ids[has_context]
