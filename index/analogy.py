"""Word-analogy arithmetic on unit vectors: 3CosAdd and 3CosMul (Levy & Goldberg, 2014).

Pure functions over numpy arrays; `index/word_vectors.py` applies them to a vocabulary.
For "a is to b as c is to ?" with the convention of `GET /analogy?a=king&b=man&c=woman`
(king − man + woman = queen): positive words are a and c, the negative word is b.
"""

from __future__ import annotations

import numpy as np

METHODS = ("3cosadd", "3cosmul")


def three_cos_add_query(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """The 3CosAdd query a − b + c, normalised: its cosine to x ranks candidates (D,)."""
    query = a - b + c  # (D,)
    return query / max(float(np.linalg.norm(query)), 1e-12)


def three_cos_mul_scores(
    sim_a: np.ndarray, sim_b: np.ndarray, sim_c: np.ndarray, epsilon: float = 1e-3
) -> np.ndarray:
    """3CosMul: cos(x,a)·cos(x,c) / (cos(x,b) + ε), with cosines shifted to [0, 1] as in the paper.

    Each argument holds the cosine of every candidate x to one query word (N,).
    """
    shift = lambda s: (s + 1.0) / 2.0  # noqa: E731 - cosines in [-1, 1] → [0, 1]
    return shift(sim_a) * shift(sim_c) / (shift(sim_b) + epsilon)  # (N,)
