"""Word2vec training: both architectures on both backends learn planted structure; checkpoints resume."""

import numpy as np
import pytest

from training.checkpoint import load_checkpoint
from training.methods.word2vec import Word2VecConfig, train_word2vec

CLASSES, WORDS_PER_CLASS = 6, 8


@pytest.fixture(scope="module")
def planted_corpus(tmp_path_factory):
    """A language whose words come in hidden classes: every sentence uses one class only,
    plus a few shared filler words, so words of a class share contexts and nothing else."""
    rng = np.random.default_rng(0)
    letters = "abcdefghij"
    classes = [[f"c{letters[c]}{letters[w]}" for w in range(WORDS_PER_CLASS)] for c in range(CLASSES)]
    fillers = ["the", "of", "and"]
    lines = []
    for _ in range(3000):
        words = list(rng.choice(classes[rng.integers(CLASSES)], size=10))
        for position in rng.integers(0, 10, size=3):
            words.insert(int(position), fillers[rng.integers(3)])
        lines.append(" ".join(words) + "\n\n")
    path = tmp_path_factory.mktemp("corpus") / "planted.txt"
    path.write_text("".join(lines), encoding="utf-8")
    return path


def nearest_neighbour_class_accuracy(vocab, vectors) -> float:
    """Fraction of class words whose nearest other word (cosine) is of the same class."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    similarity = unit @ unit.T  # (V, V)
    np.fill_diagonal(similarity, -np.inf)
    is_class_word = [w.startswith("c") for w in vocab]
    similarity[:, ~np.array(is_class_word)] = -np.inf  # neighbours among class words only
    hits = [vocab[int(np.argmax(similarity[i]))][:2] == w[:2] for i, w in enumerate(vocab) if is_class_word[i]]
    return float(np.mean(hits))


@pytest.mark.parametrize("architecture", ["skipgram", "cbow"])
@pytest.mark.parametrize("device", ["numba", "cpu"])
def test_learns_planted_classes(planted_corpus, architecture, device, one_torch_thread):
    config = Word2VecConfig(corpus=str(planted_corpus), architecture=architecture, device=device, dim=16,
                            epochs=3, min_count=1, sample=0.0, batch_words=1000)  # fmt: skip
    result = train_word2vec(config, progress=False)
    assert len(result.vocab) == CLASSES * WORDS_PER_CLASS + 3
    assert result.vectors.shape == (len(result.vocab), 16) and result.vectors.dtype == np.float32
    assert result.counts.dtype == np.int64 and result.counts.sum() == 3000 * 13
    assert result.seconds > 0 and result.cpu_seconds > 0
    assert nearest_neighbour_class_accuracy(result.vocab, result.vectors) >= 0.95


def test_resume_continues_the_schedule_where_it_stopped(planted_corpus, tmp_path, killed_after_first_checkpoint):
    """An interrupted run resumed from its checkpoint ends where an uninterrupted run ends."""
    config = Word2VecConfig(corpus=str(planted_corpus), device="numba", workers=1, dim=8, epochs=2, min_count=1)
    straight = train_word2vec(config, progress=False)

    checkpoint = tmp_path / "w2v.pt"
    killed_after_first_checkpoint(config, checkpoint)

    state = load_checkpoint(checkpoint)
    assert set(state) == {"method", "config", "vocab", "counts", "input_vectors", "output_vectors",
                          "epochs_done", "words_done"}  # fmt: skip
    assert state["method"] == "word2vec" and state["epochs_done"] == 1
    assert state["input_vectors"].dtype == np.float32 and state["counts"].dtype == np.int64

    resumed = train_word2vec(config, checkpoint_path=checkpoint, resume=True, progress=False)
    assert resumed.epochs_done == 2 and load_checkpoint(checkpoint)["epochs_done"] == 2
    assert not np.allclose(resumed.vectors, state["input_vectors"])
    np.testing.assert_allclose(resumed.vectors, straight.vectors, rtol=1e-5, atol=1e-6)


def test_resume_refuses_a_checkpoint_of_another_model(planted_corpus, tmp_path):
    checkpoint = tmp_path / "w2v.pt"
    config = Word2VecConfig(corpus=str(planted_corpus), device="numba", dim=8, epochs=1, min_count=1)
    train_word2vec(config, checkpoint_path=checkpoint, progress=False)
    with pytest.raises(ValueError, match="dim"):
        train_word2vec(Word2VecConfig(**{**config.__dict__, "dim": 9}), checkpoint_path=checkpoint, resume=True, progress=False)


def test_clear_errors_for_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        train_word2vec(Word2VecConfig(corpus=str(tmp_path / "missing.txt")), progress=False)
    (tmp_path / "tiny.txt").write_text("just a few words\n", encoding="utf-8")
    with pytest.raises(ValueError, match="lower min_count"):
        train_word2vec(Word2VecConfig(corpus=str(tmp_path / "tiny.txt")), progress=False)
    with pytest.raises(ValueError, match="architecture"):
        Word2VecConfig(architecture="glove")


def test_quick_profile_is_a_config_for_the_given_corpus():
    config = Word2VecConfig.quick("some/corpus.txt")
    assert isinstance(config, Word2VecConfig) and config.corpus == "some/corpus.txt"
    assert config.learning_rate == 0.025 and Word2VecConfig(architecture="cbow").learning_rate == 0.05
