"""Word2vec's metrics log: the loop's record format, a loss that falls, the per-epoch scores, the
curves beside the log, a resumed run continuing it, and nothing written without a log path."""

import json
import math

import numpy as np
import pytest
from PIL import Image

from training.curves import read_run
from training.methods.word2vec import Word2VecConfig, train_word2vec


@pytest.fixture(scope="module")
def analogy_corpus(tmp_path_factory):
    """Sentences of words from the analogy questions' first section and WordSim-353's pairs, so
    that the per-epoch evaluation has questions and pairs to score."""
    from training.evaluation.datasets import ANALOGIES, WORD_SIMILARITY, gensim_test_file

    try:
        questions = [line.lower().split() for line in gensim_test_file(ANALOGIES).read_text().splitlines()[1:507]]
        pairs = [line.lower().split("\t")[:2] for line in gensim_test_file(WORD_SIMILARITY).read_text().splitlines()
                 if not line.startswith("#")][:100]
    except (ImportError, FileNotFoundError) as e:
        pytest.skip(f"the evaluation files ship with gensim: {e}")
    rng = np.random.default_rng(0)
    lines = []
    for _ in range(3000):
        (a, b, c, d), (x, y) = questions[rng.integers(len(questions))], pairs[rng.integers(len(pairs))]
        lines.append(f"{a} {b} the {x} of {c} {d} and {y}\n\n")
    path = tmp_path_factory.mktemp("corpus") / "analogies.txt"
    path.write_text("".join(lines), encoding="utf-8")
    return path


def config(corpus, tmp_path, **overrides) -> Word2VecConfig:
    values = dict(corpus=str(corpus), dim=16, epochs=3, min_count=1, batch_words=1000, log_path=str(tmp_path / "logs" / "w2v.jsonl"))
    return Word2VecConfig(**{**values, **overrides})


def records(log_path, kind: str) -> list[dict]:
    return [r for r in read_run(log_path) if r["kind"] == kind]


@pytest.mark.parametrize("device", ["numba", "cpu"])
def test_the_log_has_a_falling_loss_per_step_and_the_scores_per_epoch(analogy_corpus, tmp_path, device, one_torch_thread):
    c = config(analogy_corpus, tmp_path, device=device)
    result = train_word2vec(c, progress=False)
    steps, epochs = records(c.log_path, "step"), records(c.log_path, "epoch")
    losses = [s["loss"] for s in steps]
    assert steps[0]["step"] == 0 and all(math.isfinite(x) for x in losses)
    assert losses[0] == pytest.approx((1 + c.negative) * math.log(2), rel=0.05)  # zero output vectors: sigmoid 1/2 everywhere
    half = len(losses) // 2
    assert np.mean(losses[half:]) < np.mean(losses[:half]) and losses[-1] < losses[0] - 1.0
    assert [s["step"] for s in steps] == sorted({s["step"] for s in steps})  # words trained, increasing
    if device == "cpu":  # one progress report per batch: a point every 10% of each epoch
        assert [sum(s["epoch"] == e for s in steps) for e in (1, 2, 3)] == [10, 10, 10]
    words = epochs[0]["step"]
    assert [e["step"] for e in epochs] == [words, 2 * words, 3 * words] and steps[-1]["step"] == 3 * words
    for e in epochs:
        assert set(e["eval"]) == {"analogy_accuracy", "wordsim353_spearman"}
        assert 0 <= e["eval"]["analogy_accuracy"] <= 1 and -1 <= e["eval"]["wordsim353_spearman"] <= 1
    assert result.curves_path == str(tmp_path / "logs" / "w2v.png")
    with Image.open(result.curves_path) as image:
        assert image.format == "PNG" and image.size == (1100, 420)  # loss, and the scores per epoch


def test_a_resumed_run_continues_the_log_of_the_run_it_resumes(analogy_corpus, tmp_path, killed_after_first_checkpoint):
    c = config(analogy_corpus, tmp_path, device="numba", workers=1, epochs=2)
    checkpoint = tmp_path / "w2v.pt"
    killed_after_first_checkpoint(c, checkpoint)
    train_word2vec(c, checkpoint_path=checkpoint, resume=True, progress=False)

    lines = [json.loads(line) for line in (tmp_path / "logs" / "w2v.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["kind"] == "start"] == [0, lines[-1]["step"] // 2]  # appended, not rewritten
    run = read_run(c.log_path)
    assert [r["epoch"] for r in run if r["kind"] == "epoch"] == [1, 2]
    steps = [r["step"] for r in run if r["kind"] == "step"]
    assert steps == sorted(set(steps)) and steps[0] == 0 and steps[-1] == lines[-1]["step"]


def test_training_without_a_log_path_writes_nothing(analogy_corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = train_word2vec(config(analogy_corpus, tmp_path, log_path=None, device="numba", epochs=1), progress=False)
    assert result.curves_path is None and list(tmp_path.iterdir()) == []
