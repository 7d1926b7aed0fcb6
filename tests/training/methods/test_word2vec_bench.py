"""bench/word2vec_vs_gensim.py: its arguments, and the spread and ratios it reports."""

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[3] / "bench" / "word2vec_vs_gensim.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("word2vec_vs_gensim", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_arch_cbow_runs_cbow_only_with_its_learning_rate(bench):
    configs = bench.configs(bench.parse_args(["--arch", "cbow", "--epochs", "2", "--max-words", "1000"]))
    assert list(configs) == ["cbow"]
    config = configs["cbow"]
    assert config.architecture == "cbow" and config.epochs == 2 and config.max_words == 1000
    assert config.device == "numba" and config.learning_rate == 0.05


def test_by_default_both_architectures_three_pairs_each(bench):
    args = bench.parse_args([])
    assert list(bench.configs(args)) == ["skipgram", "cbow"] and args.repeats == 3
    assert {c.learning_rate for c in bench.configs(bench.parse_args(["--alpha", "0.03"])).values()} == {0.03}
    with pytest.raises(SystemExit):
        bench.parse_args(["--arch", "glove"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--repeats", "0"])


def test_summary_reports_the_spread_and_the_slowest_pair(bench):
    def run(words_per_second, accuracy):
        figures = {key: 0.5 for _, key, _ in bench.SUMMARY_KEYS}
        return {**figures, "raw_words_per_second": words_per_second, "analogy_total": accuracy}

    pairs = [
        {"ours": run(300.0, 0.16), "gensim": run(100.0, 0.15)},
        {"ours": run(250.0, 0.14), "gensim": run(110.0, 0.15)},
        {"ours": run(330.0, 0.15), "gensim": run(120.0, 0.16)},
    ]
    for pair in pairs:
        for key in ("raw_words_per_second", "raw_words_per_cpu_second"):
            pair[f"{key}_ratio"] = pair["ours"][key] / pair["gensim"][key]
    summary = bench.summarize(pairs)
    assert summary["ours"]["raw_words_per_second"] == {"min": 250.0, "median": 300.0, "max": 330.0, "mean": 880.0 / 3}
    assert summary["raw_words_per_second_ratio"]["slowest_pair"] == pytest.approx(250 / 110)
    assert summary["raw_words_per_second_ratio"]["ours_min_over_gensim_max"] == pytest.approx(250 / 120)
    assert summary["ours_minus_gensim_mean"]["analogy_total"] == pytest.approx(-0.01 / 3)
    assert "slowest pair 2.27" in bench.table("cbow", summary, 3)
