"""The word2vec vocabulary: counting, pruning, ordering, subsampling and negative sampling."""

import numpy as np
import pytest

from training.data.vocab import (
    alias_table,
    build_vocab,
    keep_probabilities,
    negative_sampling_probabilities,
)


def test_min_count_and_order_by_count_then_word():
    sentences = [["b", "a", "c", "a"], ["b", "d", "e", "e"]]
    vocab = build_vocab(sentences, min_count=2)
    assert vocab.words == ["a", "b", "e"]  # ties broken alphabetically
    assert vocab.counts.dtype == np.int64 and vocab.counts.tolist() == [2, 2, 2]
    assert vocab.word_to_id == {"a": 0, "b": 1, "e": 2}


def test_max_vocab_keeps_the_most_frequent():
    vocab = build_vocab([["x"] * 5 + ["y"] * 3 + ["z"] * 4], min_count=1, max_vocab=2)
    assert vocab.words == ["x", "z"]


def test_empty_vocabulary_says_to_lower_min_count():
    with pytest.raises(ValueError, match="lower min_count"):
        build_vocab([["a", "b"]], min_count=5)


def test_keep_probabilities_match_gensim():
    gensim = pytest.importorskip("gensim")
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(200)]
    sentences = [list(rng.choice(words, size=30, p=np.arange(200, 0, -1) / 20100)) for _ in range(300)]
    vocab = build_vocab(sentences, min_count=1)
    model = gensim.models.Word2Vec(min_count=1, sample=1e-2, vector_size=4)
    model.build_vocab(sentences)
    expected = [model.wv.get_vecattr(w, "sample_int") / 2**32 for w in vocab.words]
    np.testing.assert_allclose(keep_probabilities(vocab.counts, 1e-2), expected, atol=1e-9)
    assert keep_probabilities(vocab.counts, 0.0).tolist() == [1.0] * len(vocab)


def test_negative_sampling_is_unigram_to_the_three_quarters_and_the_alias_table_is_exact():
    counts = np.array([1000, 300, 40, 7, 1])
    probs = negative_sampling_probabilities(counts)
    np.testing.assert_allclose(probs, counts**0.75 / (counts**0.75).sum())
    threshold, alias = alias_table(probs)
    # Probability mass each word gets: its own slot's kept share plus the slots that alias to it.
    keep = threshold / 2**32
    implied = keep.copy()
    np.add.at(implied, alias, 1.0 - keep)
    np.testing.assert_allclose(implied / len(counts), probs, atol=1e-9)
