"""Word vectors behind a FAISS inner-product index: nearest words and analogies.

Vectors are L2-normalised once at load, so inner product is cosine similarity. Lookups try
the word as given, then lower-cased (the training tokenizer lower-cases by default).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from runtime.bundle import Bundle
from index.analogy import METHODS, three_cos_add_query, three_cos_mul_scores
from runtime.vectors import unit_rows
from index.gpu import maybe_to_gpu


@dataclass(frozen=True)
class WordScore:
    word: str
    score: float


def read_vocab(path: Path) -> tuple[list[str], np.ndarray]:
    """Read `vocab.txt`: one `word<TAB>count` per line, most frequent first."""
    words, counts = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            word, _, count = line.rstrip("\n").partition("\t")
            words.append(word)
            counts.append(int(count or 0))
    return words, np.asarray(counts, dtype=np.int64)


class WordVectors:
    """A vocabulary, its unit vectors and a FAISS index over them."""

    def __init__(self, vocab: list[str], vectors: np.ndarray, counts: np.ndarray | None = None):
        if len(vocab) != len(vectors):
            raise ValueError(f"{len(vocab)} words but {len(vectors)} vectors")
        self.vocab = list(vocab)
        self.counts = counts
        self.index_of = {word: i for i, word in enumerate(self.vocab)}
        self.unit = unit_rows(np.asarray(vectors, dtype=np.float32))  # (V, D)
        cpu_index = faiss.IndexFlatIP(self.unit.shape[1])
        cpu_index.add(self.unit)
        self.index = maybe_to_gpu(cpu_index)

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> WordVectors:
        vocab, counts = read_vocab(bundle.file("vocab"))
        vectors = np.load(bundle.file("vectors"), mmap_mode="r")
        return cls(vocab, vectors, counts)

    @property
    def dim(self) -> int:
        return self.unit.shape[1]

    def lookup(self, word: str) -> int | None:
        """The row of `word` (as given, else lower-cased), or None if it is not in the vocabulary."""
        i = self.index_of.get(word)
        return i if i is not None else self.index_of.get(word.lower())

    def unknown(self, *words: str) -> list[str]:
        """The words among `words` that are not in the vocabulary."""
        return [w for w in words if self.lookup(w) is None]

    def _search(self, query: np.ndarray, k: int, exclude: set[int]) -> list[WordScore]:
        # Ask for enough extra hits that dropping the excluded rows still leaves k.
        n = min(k + len(exclude), len(self.vocab))
        scores, rows = self.index.search(query[None, :].astype(np.float32), n)  # (1, n)
        hits = [WordScore(self.vocab[r], float(s)) for s, r in zip(scores[0], rows[0]) if r >= 0 and r not in exclude]
        return hits[:k]

    def similar(self, word: str, k: int = 10) -> list[WordScore]:
        """The k words closest to `word` by cosine, the word itself excluded."""
        i = self._require(word)
        return self._search(self.unit[i], k, {i})

    def analogy(self, a: str, b: str, c: str, k: int = 10, method: str = "3cosadd") -> list[WordScore]:
        """Words x with a − b + c ≈ x (king − man + woman ≈ queen); query words excluded."""
        if method not in METHODS:
            raise ValueError(f"unknown analogy method {method!r}; use one of {METHODS}")
        ia, ib, ic = self._require(a), self._require(b), self._require(c)
        exclude = {ia, ib, ic}
        if method == "3cosadd":
            return self._search(three_cos_add_query(self.unit[ia], self.unit[ib], self.unit[ic]), k, exclude)
        sims = self.unit @ self.unit[[ia, ib, ic]].T  # (V, 3): every word's cosine to a, b, c
        scores = three_cos_mul_scores(sims[:, 0], sims[:, 1], sims[:, 2])  # (V,)
        scores[list(exclude)] = -np.inf
        top = np.argpartition(-scores, min(k, len(scores) - 1))[:k]
        top = top[np.argsort(-scores[top])]
        return [WordScore(self.vocab[r], float(scores[r])) for r in top if np.isfinite(scores[r])]

    def _require(self, word: str) -> int:
        i = self.lookup(word)
        if i is None:
            raise KeyError(word)
        return i
