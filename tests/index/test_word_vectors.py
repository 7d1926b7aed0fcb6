import numpy as np
import pytest

from index.word_vectors import WordVectors


@pytest.fixture
def vectors(planted) -> WordVectors:
    return WordVectors(*planted)


@pytest.mark.parametrize("method", ["3cosadd", "3cosmul"])
def test_king_minus_man_plus_woman_is_queen(vectors: WordVectors, method: str):
    hits = vectors.analogy("king", "man", "woman", k=3, method=method)
    assert hits[0].word == "queen"
    assert not {"king", "man", "woman"} & {h.word for h in hits}  # query words are excluded
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_similar_excludes_the_word_and_ranks_by_cosine(vectors: WordVectors):
    hits = vectors.similar("apple", k=2)
    assert [h.word for h in hits] == ["banana", "café"] or [h.word for h in hits] == ["café", "banana"]
    assert all(h.word != "apple" for h in hits)
    assert hits[0].score == pytest.approx(float(vectors.unit[vectors.lookup("apple")] @ vectors.unit[vectors.lookup(hits[0].word)]), abs=1e-5)


def test_lookup_falls_back_to_lower_case_and_reports_unknown_words(vectors: WordVectors):
    assert vectors.lookup("King") == vectors.lookup("king")
    assert vectors.unknown("king", "zebra", "CAFÉ") == ["zebra"]
    with pytest.raises(KeyError):
        vectors.analogy("king", "zebra", "woman")


def test_k_larger_than_the_vocabulary_returns_everything_else(vectors: WordVectors):
    assert len(vectors.similar("king", k=100)) == len(vectors.vocab) - 1


def test_mismatched_vocab_and_vectors_is_refused():
    with pytest.raises(ValueError, match="2 words but 3 vectors"):
        WordVectors(["a", "b"], np.ones((3, 2)))
