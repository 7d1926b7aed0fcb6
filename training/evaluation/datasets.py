"""Where the word-vector benchmarks live: the test-data folder that the gensim package ships."""

from __future__ import annotations

import importlib.util
from pathlib import Path

# questions-words.txt: Mikolov's Google analogy set; wordsim353.tsv: WordSim-353 similarities.
ANALOGIES = "questions-words.txt"
WORD_SIMILARITY = "wordsim353.tsv"
SIMLEX = "simlex999.txt"  # SimLex-999: similarity proper, not relatedness


def gensim_test_file(name: str) -> Path:
    """Path of a file in gensim/test/test_data, found without importing gensim (which is slow)."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"{name} ships with gensim, which is not installed; `pip install gensim` (the dev extra) "
            "or pass the path of your own copy"
        )
    path = Path(spec.origin).parent / "test" / "test_data" / name
    if not path.is_file():
        raise FileNotFoundError(f"gensim is installed but has no test data file {path}")
    return path
