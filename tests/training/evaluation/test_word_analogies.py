"""The analogy evaluation gives gensim's numbers, section by section, on the same vectors."""

import numpy as np
import pytest

from training.evaluation.datasets import ANALOGIES, gensim_test_file
from training.evaluation.word_analogies import evaluate_word_analogies

gensim_models = pytest.importorskip("gensim.models")


@pytest.fixture(scope="module")
def analogy_vectors():
    """Vectors for the analogy set's words where, for some questions, d = b - a + c holds
    roughly, so that some answers are right and some wrong; plus a case variant and filler words."""
    rng = np.random.default_rng(0)
    lines = gensim_test_file(ANALOGIES).read_text(encoding="utf-8").splitlines()
    questions = [line.lower().split() for line in lines if not line.startswith(":")]
    words = sorted({w for q in questions for w in q})
    words = [w for w in words if rng.random() < 0.9]  # some questions lose a word and are skipped
    words += ["King", "zzfiller", "yyfiller"]  # "King" shares "king"'s upper-case key, and loses to it
    index = {w: i for i, w in enumerate(words)}
    vectors = rng.normal(size=(len(words), 24)).astype(np.float32)
    for a, b, c, d in questions[::7]:
        if all(w in index for w in (a, b, c, d)):
            vectors[index[d]] = vectors[index[b]] - vectors[index[a]] + vectors[index[c]] + rng.normal(scale=0.3, size=24)
    return words, vectors


@pytest.mark.parametrize("restrict_vocab", [300_000, 600])
def test_matches_gensim_evaluate_word_analogies(analogy_vectors, restrict_vocab):
    words, vectors = analogy_vectors
    keyed = gensim_models.KeyedVectors(vectors.shape[1])
    keyed.add_vectors(words, vectors)
    score, gensim_sections = keyed.evaluate_word_analogies(str(gensim_test_file(ANALOGIES)), restrict_vocab=restrict_vocab)

    ours = evaluate_word_analogies(vectors, words, gensim_test_file(ANALOGIES), restrict_vocab=restrict_vocab)
    assert [s["section"] for s in ours["sections"]] == [s["section"] for s in gensim_sections[:-1]]
    for mine, theirs in zip(ours["sections"] + [ours["total"]], gensim_sections):
        assert (mine["correct"], mine["incorrect"]) == (len(theirs["correct"]), len(theirs["incorrect"]))
    assert ours["total"]["accuracy"] == pytest.approx(score)
    assert ours["total"]["correct"] > 0 and ours["total"]["incorrect"] > 0
    assert ours["covered"] + ours["skipped"] == 19544
    assert ours["skipped"] > 0


def test_semantic_and_syntactic_split_the_sections(tmp_path):
    words = ["a", "b", "c", "d", "e", "f"]
    vectors = np.eye(6, dtype=np.float32)
    vectors[3] = vectors[1] - vectors[0] + vectors[2]  # a : b :: c : d holds
    questions = tmp_path / "questions.txt"
    questions.write_text(": family\nA b c d\n: gram1-x\na b c e\n: gram2-y\na b c zz\n", encoding="utf-8")
    result = evaluate_word_analogies(vectors, words, questions)
    assert result["semantic"] == 1.0 and result["syntactic"] == 0.0
    assert result["total"] == {"correct": 1, "incorrect": 1, "accuracy": 0.5}
    assert result["covered"] == 2 and result["skipped"] == 1


def test_max_questions_scores_an_evenly_spread_share_of_every_section(analogy_vectors):
    words, vectors = analogy_vectors
    full = evaluate_word_analogies(vectors, words, gensim_test_file(ANALOGIES))
    bounded = evaluate_word_analogies(vectors, words, gensim_test_file(ANALOGIES), max_questions=500)
    assert bounded["covered"] == 500 and full["covered"] > 10_000
    scored = [s["correct"] + s["incorrect"] for s in bounded["sections"]]
    shares = [500 * (s["correct"] + s["incorrect"]) / full["covered"] for s in full["sections"]]
    assert all(abs(n - share) <= 1 for n, share in zip(scored, shares))  # each section keeps its share
