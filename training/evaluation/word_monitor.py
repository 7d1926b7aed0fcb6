"""The per-epoch evaluation of word2vec, the word-vector counterpart of the vision methods' kNN
monitor: analogy accuracy on a bounded, evenly spread share of the Google questions among the
most frequent words, and the Spearman correlation on WordSim-353, cheap enough to run after every
epoch; word2vec's metrics log records them and the training curves draw them. The full scores
of a finished model are embedserve.pipelines.evaluate_word_vectors's."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from training.evaluation.datasets import ANALOGIES, WORD_SIMILARITY, gensim_test_file
from training.evaluation.word_analogies import evaluate_word_analogies
from training.evaluation.word_similarity import evaluate_word_similarity

log = logging.getLogger(__name__)

# Measured on the quick profile's vectors (GCIDE, 47k words, 2 busy cores): about 0.5 s per
# evaluation, where the 8.3k questions those words cover, over all of them, take about 4 s.
MONITOR_QUESTIONS = 1000  # analogy questions scored, at most
MONITOR_VOCAB = 30_000  # the most frequent words they and their answers are drawn from (gensim's usual bound)


class WordVectorMonitor:
    """{"analogy_accuracy", "wordsim353_spearman"} of word vectors, each left out where the
    vocabulary covers none of its questions or pairs; {} without gensim, which ships the files."""

    def __init__(self, questions: int = MONITOR_QUESTIONS, restrict_vocab: int = MONITOR_VOCAB):
        self.questions, self.restrict_vocab = questions, restrict_vocab
        try:
            self._files = gensim_test_file(ANALOGIES), gensim_test_file(WORD_SIMILARITY)
        except (FileNotFoundError, ImportError) as e:
            log.info("no per-epoch word-vector evaluation: %s", e)
            self._files = None

    def __call__(self, vectors: np.ndarray, vocab: Sequence[str]) -> dict[str, float]:
        """vectors (V, D), row i for vocab[i], most frequent first."""
        if self._files is None:
            return {}
        analogies, pairs = self._files
        scores: dict[str, float] = {}
        analogy = evaluate_word_analogies(vectors, vocab, analogies, self.restrict_vocab, max_questions=self.questions)
        if analogy["covered"]:
            scores["analogy_accuracy"] = analogy["total"]["accuracy"]
        try:
            scores["wordsim353_spearman"] = evaluate_word_similarity(vectors, vocab, pairs, restrict_vocab=self.restrict_vocab)["spearman"]
        except ValueError:  # no pair has both words in a small vocabulary
            pass
        return scores
