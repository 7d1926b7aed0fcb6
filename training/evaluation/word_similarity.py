"""Word-similarity benchmarks (WordSim-353 and its kind): rank correlation between human
similarity judgements and cosine similarity, as gensim's `KeyedVectors.evaluate_word_pairs` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import stats


def evaluate_word_similarity(
    vectors: np.ndarray,
    vocab: Sequence[str],
    pairs_path: str | Path,
    delimiter: str = "\t",
    restrict_vocab: int = 300_000,
    case_insensitive: bool = True,
) -> dict:
    """Spearman and Pearson correlation of cosine similarity with the human scores.

    Lines are "word1<delimiter>word2<delimiter>score"; lines starting with "#" are comments.
    Pairs with a word outside the `restrict_vocab` most frequent words are skipped and counted
    in `oov_ratio` (a fraction of all pairs, where gensim reports a percentage).
    """
    pairs_path = Path(pairs_path)
    if not pairs_path.is_file():
        raise FileNotFoundError(f"no word-pair file at {pairs_path}")
    vectors = np.asarray(vectors, dtype=np.float32)[:restrict_vocab]  # (R, D)
    key_to_index: dict[str, int] = {}
    for i, word in enumerate(vocab[: len(vectors)]):
        key_to_index.setdefault(word.upper() if case_insensitive else word, i)

    firsts, seconds, gold = [], [], []
    skipped = 0
    with open(pairs_path, encoding="utf-8") as lines:
        for line in lines:
            if not line.strip() or line.startswith("#"):
                continue
            fields = line.rstrip("\n").split(delimiter)
            if len(fields) != 3:
                continue  # gensim skips malformed lines
            a, b = (w.upper() if case_insensitive else w for w in fields[:2])
            if a in key_to_index and b in key_to_index:
                firsts.append(key_to_index[a])
                seconds.append(key_to_index[b])
                gold.append(float(fields[2]))
            else:
                skipped += 1
    if not gold:
        raise ValueError(f"no pair of {pairs_path} has both words in the vocabulary")

    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)  # (R, D)
    model = np.einsum("pd,pd->p", unit[firsts], unit[seconds])  # (P,) cosine similarities
    spearman = stats.spearmanr(gold, model)
    pearson = stats.pearsonr(gold, model)
    return {
        "spearman": float(spearman.statistic),
        "spearman_pvalue": float(spearman.pvalue),
        "pearson": float(pearson.statistic),
        "pearson_pvalue": float(pearson.pvalue),
        "pairs": len(gold),
        "skipped": skipped,
        "oov_ratio": skipped / (skipped + len(gold)),
    }
