"""The per-epoch word-vector scores: bounded, and left out where the vocabulary covers nothing."""

import numpy as np
import pytest

from training.evaluation.datasets import ANALOGIES, gensim_test_file
from training.evaluation.word_monitor import WordVectorMonitor

pytest.importorskip("gensim")


def test_scores_the_words_it_covers_within_its_bounds():
    questions = [line.lower().split() for line in gensim_test_file(ANALOGIES).read_text().splitlines()
                 if not line.startswith(":")]
    words = sorted({w for q in questions for w in q}) + ["tiger", "cat", "dog", "money", "bank"]
    vectors = np.random.default_rng(0).normal(size=(len(words), 8)).astype(np.float32)
    scores = WordVectorMonitor(questions=50)(vectors, words)
    assert set(scores) == {"analogy_accuracy", "wordsim353_spearman"}
    assert 0 <= scores["analogy_accuracy"] <= 1 and -1 <= scores["wordsim353_spearman"] <= 1


def test_a_vocabulary_with_none_of_the_words_has_no_scores_rather_than_zeros():
    words = ["qqa", "qqb", "qqc"]
    assert WordVectorMonitor()(np.eye(3, dtype=np.float32), words) == {}
