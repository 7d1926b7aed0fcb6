"""The vocabulary of a word-vector corpus: word counts, frequent-word subsampling, negative sampling.

Built in one streaming pass over tokenized sentences. Word ids follow frequency rank (most
frequent first, ties broken alphabetically), as gensim and word2vec.c order them, so
"the first N words" always means "the N most frequent".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

import numpy as np

@dataclass(frozen=True)
class Vocabulary:
    """Words kept for training, most frequent first, with their corpus counts."""

    words: list[str]  # id -> word
    counts: np.ndarray  # (V,) int64 occurrences of each word in the corpus

    def __len__(self) -> int:
        return len(self.words)

    @cached_property
    def word_to_id(self) -> dict[str, int]:
        return {word: i for i, word in enumerate(self.words)}

    @property
    def total_words(self) -> int:
        """Corpus tokens that are in the vocabulary."""
        return int(self.counts.sum())


def build_vocab(sentences: Iterable[list[str]], min_count: int = 5, max_vocab: int | None = None) -> Vocabulary:
    """Count words in one pass; keep those seen `min_count` times, at most the `max_vocab` most frequent."""
    counter: Counter[str] = Counter()
    for sentence in sentences:
        counter.update(sentence)
    return vocab_from_counts(counter, min_count, max_vocab)


def vocab_from_counts(counter: Counter[str] | dict[str, int], min_count: int = 5, max_vocab: int | None = None) -> Vocabulary:
    """Apply `min_count` and `max_vocab` to word counts and sort by count desc, then word."""
    kept = sorted(((-n, w) for w, n in counter.items() if n >= min_count))
    if max_vocab is not None:
        kept = kept[:max_vocab]
    if not kept:
        raise ValueError(
            f"the vocabulary is empty: no word occurs min_count={min_count} times in "
            f"{sum(counter.values())} tokens; lower min_count or use a bigger corpus"
        )
    return Vocabulary(words=[w for _, w in kept], counts=np.array([-n for n, _ in kept], dtype=np.int64))


def keep_probabilities(counts: np.ndarray, sample: float) -> np.ndarray:
    """Mikolov's subsampling: the probability of keeping each occurrence of each word.

    keep = (sqrt(f / t) + 1) * t / f with t = sample * total (word2vec.c and gensim), capped at
    1, so words rarer than about `sample` of the corpus are always kept. sample=0 keeps all.
    """
    counts = np.asarray(counts, dtype=np.float64)  # (V,)
    if sample <= 0:
        return np.ones_like(counts)
    threshold_count = sample * counts.sum()
    keep = (np.sqrt(counts / threshold_count) + 1.0) * threshold_count / counts
    return np.minimum(keep, 1.0)


def keep_thresholds_u32(keep_probs: np.ndarray) -> np.ndarray:
    """Keep probabilities as uint32 thresholds: a word is kept when a uniform uint32 draw is below.

    Computed in int64 so a probability of exactly 1 becomes 2**32, which every draw is below.
    """
    return np.round(np.asarray(keep_probs, dtype=np.float64) * 2.0**32).astype(np.int64)  # (V,)


def negative_sampling_probabilities(counts: np.ndarray, power: float = 0.75) -> np.ndarray:
    """The distribution negatives are drawn from: counts**0.75, normalised (Mikolov et al. 2013)."""
    weights = np.asarray(counts, dtype=np.float64) ** power  # (V,)
    return weights / weights.sum()


def alias_table(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walker's alias table: draw from `probabilities` with one uniform index and one coin.

    Pick slot i uniformly; keep i when a uniform uint32 draw is below `threshold_u32[i]`, else
    take `alias[i]`. Exact, O(1) per draw, and two small arrays, so it is cheaper than
    word2vec.c's 1e8-entry table or a binary search of gensim's cumulative table.
    """
    size = len(probabilities)
    scaled = np.asarray(probabilities, dtype=np.float64) * size  # (V,) mean 1
    threshold = np.ones(size, dtype=np.float64)
    alias = np.arange(size, dtype=np.int32)
    small = [i for i in range(size) if scaled[i] < 1.0]
    large = [i for i in range(size) if scaled[i] >= 1.0]
    while small and large:
        s, g = small.pop(), large.pop()
        threshold[s], alias[s] = scaled[s], g
        scaled[g] -= 1.0 - scaled[s]
        (small if scaled[g] < 1.0 else large).append(g)
    # What is left is 1 up to rounding: those slots always keep their own word.
    return keep_thresholds_u32(threshold), alias  # (V,) int64 out of 2**32, (V,) int32
