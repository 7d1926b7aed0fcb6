"""The word-similarity evaluation gives gensim's correlations on the same vectors."""

import numpy as np
import pytest

from training.evaluation.datasets import WORD_SIMILARITY, gensim_test_file
from training.evaluation.word_similarity import evaluate_word_similarity

gensim_models = pytest.importorskip("gensim.models")


def test_matches_gensim_evaluate_word_pairs():
    rng = np.random.default_rng(0)
    lines = gensim_test_file(WORD_SIMILARITY).read_text(encoding="utf-8").splitlines()
    words = sorted({w.lower() for line in lines if not line.startswith("#") for w in line.split("\t")[:2]})
    words = [w for w in words if rng.random() < 0.85]  # some pairs go out of vocabulary
    vectors = rng.normal(size=(len(words), 16)).astype(np.float32)
    keyed = gensim_models.KeyedVectors(16)
    keyed.add_vectors(words, vectors)
    pearson, spearman, oov_percent = keyed.evaluate_word_pairs(str(gensim_test_file(WORD_SIMILARITY)))

    ours = evaluate_word_similarity(vectors, words, gensim_test_file(WORD_SIMILARITY))
    assert ours["spearman"] == pytest.approx(spearman.statistic, abs=1e-6)
    assert ours["pearson"] == pytest.approx(pearson.statistic, abs=1e-6)
    assert 100 * ours["oov_ratio"] == pytest.approx(oov_percent)
    assert ours["skipped"] > 0


def test_all_pairs_out_of_vocabulary_is_an_error(tmp_path):
    (tmp_path / "pairs.tsv").write_text("# comment\nfoo\tbar\t3.0\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no pair"):
        evaluate_word_similarity(np.eye(2, dtype=np.float32), ["a", "b"], tmp_path / "pairs.tsv")
