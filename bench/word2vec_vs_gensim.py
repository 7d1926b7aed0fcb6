"""Our word2vec trainer against gensim's, on the same corpus, tokens and settings.

Both read the corpus through our tokenizer, so only the trainers differ. Prints one table
(speed, wall time, analogy accuracy, WordSim-353 correlation, and the ratio ours/gensim) and
writes the same figures, with the machine's details, to bench/results/word2vec_vs_gensim.json.

    python bench/word2vec_vs_gensim.py                      # GCIDE, skip-gram, 5 epochs, all cores
    python bench/word2vec_vs_gensim.py --max-words 1000000 --epochs 1   # a quick look
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from embedserve.machine import machine_info  # noqa: E402
from embedserve.pipelines import evaluate_word_vectors  # noqa: E402
from training.data.text import iter_sentences  # noqa: E402
from training.methods.word2vec import Word2VecConfig, train_word2vec  # noqa: E402

RESULTS_PATH = Path(__file__).resolve().parent / "results" / "word2vec_vs_gensim.json"


def parse_args() -> argparse.Namespace:
    defaults = Word2VecConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=defaults.corpus, help="a .txt/.gz/.dz file or a folder of them")
    parser.add_argument("--arch", choices=["skipgram", "cbow"], default="skipgram")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--dim", type=int, default=defaults.dim)
    parser.add_argument("--window", type=int, default=defaults.window)
    parser.add_argument("--negative", type=int, default=defaults.negative)
    parser.add_argument("--sample", type=float, default=defaults.sample)
    parser.add_argument("--min-count", type=int, default=defaults.min_count)
    parser.add_argument("--workers", type=int, default=0, help="threads for both trainers; 0 = all cores")
    parser.add_argument("--max-words", type=int, default=None, help="read only this many tokens of the corpus")
    parser.add_argument("--repeats", type=int, default=1,
                        help="train each this many times, alternating, and keep each one's fastest run "
                             "(the fair figure on a machine that others share)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS_PATH)
    return parser.parse_args()


def run_ours(config: Word2VecConfig) -> tuple[dict, np.ndarray, list[str]]:
    """Timings of one training run, and its vectors and vocabulary."""
    started = time.perf_counter()
    result = train_word2vec(config, progress=False)
    wall_seconds = time.perf_counter() - started
    timings = {
        "raw_words_per_second": result.words_per_second,
        "effective_words_per_second": result.effective_words_per_second,
        "train_seconds": result.seconds,
        "wall_seconds": wall_seconds,
        "compile_seconds": result.compile_seconds,
        "vocab_size": len(result.vocab),
    }
    return timings, result.vectors, result.vocab


def run_gensim(config: Word2VecConfig) -> tuple[dict, np.ndarray, list[str]]:
    from gensim.models import Word2Vec

    started = time.perf_counter()
    # gensim gets our tokens, as lists in memory (its fastest input); reading them is not timed.
    sentences = list(iter_sentences(config.corpus, config.sentence_unit, max_words=config.max_words))
    read_seconds = time.perf_counter() - started
    model = Word2Vec(
        vector_size=config.dim, window=config.window, negative=config.negative, hs=0, sample=config.sample,
        min_count=config.min_count, sg=int(config.architecture == "skipgram"), cbow_mean=1,
        alpha=config.learning_rate, min_alpha=config.min_alpha, workers=config.threads, seed=config.seed,
    )  # fmt: skip
    model.build_vocab(sentences)
    train_started = time.perf_counter()
    effective_words, raw_words = model.train(sentences, total_examples=model.corpus_count, epochs=config.epochs)
    train_seconds = time.perf_counter() - train_started
    wall_seconds = time.perf_counter() - started - read_seconds
    timings = {
        "raw_words_per_second": raw_words / train_seconds,
        "effective_words_per_second": effective_words / train_seconds,
        "train_seconds": train_seconds,
        "wall_seconds": wall_seconds,
        "compile_seconds": 0.0,
        "vocab_size": len(model.wv),
    }
    return timings, model.wv.vectors, list(model.wv.index_to_key)


ROWS = [
    ("raw words/s (corpus tokens, gensim's 'raw')", "raw_words_per_second", "{:,.0f}"),
    ("effective words/s (after subsampling)", "effective_words_per_second", "{:,.0f}"),
    ("training time, s", "train_seconds", "{:.1f}"),
    ("wall time incl. vocab + encode + compile, s", "wall_seconds", "{:.1f}"),
    ("numba compile / cache load, s", "compile_seconds", "{:.2f}"),
    ("analogy accuracy, semantic", "analogy_semantic", "{:.4f}"),
    ("analogy accuracy, syntactic", "analogy_syntactic", "{:.4f}"),
    ("analogy accuracy, total", "analogy_total", "{:.4f}"),
    ("analogy questions covered", "analogy_covered", "{:d}"),
    ("WordSim-353 Spearman", "wordsim353_spearman", "{:.4f}"),
]


def table(ours: dict, gensim: dict) -> str:
    width = max(len(name) for name, _, _ in ROWS)
    lines = [f"{'':{width}}  {'ours':>12}  {'gensim':>12}  {'ours/gensim':>11}"]
    for name, key, fmt in ROWS:
        ratio = f"{ours[key] / gensim[key]:.2f}" if gensim[key] else "-"
        lines.append(f"{name:{width}}  {fmt.format(ours[key]):>12}  {fmt.format(gensim[key]):>12}  {ratio:>11}")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    config = Word2VecConfig(
        corpus=args.corpus, architecture=args.arch, epochs=args.epochs, dim=args.dim, window=args.window,
        negative=args.negative, sample=args.sample, min_count=args.min_count, workers=args.workers,
        max_words=args.max_words, device="numba",
    )  # fmt: skip
    info = machine_info("torch", "numba", "gensim")
    runs: dict[str, list[dict]] = {"ours": [], "gensim": []}
    best: dict[str, tuple[dict, np.ndarray, list[str]]] = {}
    for _ in range(args.repeats):
        for name, run in (("ours", run_ours), ("gensim", run_gensim)):
            timings, vectors, vocab = run(config)
            runs[name].append(timings)
            if name not in best or timings["train_seconds"] < best[name][0]["train_seconds"]:
                best[name] = (timings, vectors, vocab)
    ours, gensim = ({**timings, **evaluate_word_vectors(vectors, vocab)} for timings, vectors, vocab in (best["ours"], best["gensim"]))
    print(table(ours, gensim))
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": info,
        "config": asdict(config),
        "ours": ours,
        "gensim": gensim,
        "ratio": {key: ours[key] / gensim[key] for _, key, _ in ROWS if gensim[key]},
        "all_runs": runs,  # every repeat's timings, in the order they ran (ours, gensim, ours, ...)
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
