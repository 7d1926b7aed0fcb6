"""Our word2vec trainer against gensim's, on the same corpus, tokens and settings.

Both read the corpus through our tokenizer, so only the trainers differ. For each
architecture it runs `--repeats` pairs (ours and gensim, the order alternating from pair to
pair, pair i seeded with seed + i), so that both meet the same share of whatever else the
machine is doing. It prints, per architecture, the spread (min / median / max over the pairs)
of speed, analogy accuracy, WordSim-353 and SimLex-999 for both trainers, and the speed ratio
of the slowest pair, and writes every run's figures, with the machine's details and the date,
to bench/results/word2vec_vs_gensim.json.

    python bench/word2vec_vs_gensim.py                            # GCIDE, skip-gram and CBOW, 3 pairs each
    python bench/word2vec_vs_gensim.py --arch cbow --repeats 1    # one architecture, one pair
    python bench/word2vec_vs_gensim.py --max-words 1000000 --epochs 1   # a quick look
    python bench/word2vec_vs_gensim.py --smoke             # 20,000 words, one epoch, one pair per architecture: seconds

Training time excludes, for both, reading and encoding the corpus and building the vocabulary;
ours also excludes the numba compile, which is cached on disk after the first run and
reported on its own.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from bench.report import SMOKE_HELP, result_path, utc_now, write_report  # noqa: E402
from embedserve.machine import machine_info  # noqa: E402
from training.data.text import iter_sentences  # noqa: E402
from embedserve.pipelines import evaluate_word_vectors  # noqa: E402
from training.methods.word2vec import ARCHITECTURES, Word2VecConfig, train_word2vec  # noqa: E402

SMOKE = {"max_words": 20_000, "epochs": 1, "repeats": 1, "min_count": 2}  # --smoke's sizes
# Test sets that ship with gensim (gensim/test/test_data).


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = Word2VecConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=defaults.corpus, help="a .txt/.gz/.dz file or a folder of them")
    parser.add_argument("--arch", choices=[*ARCHITECTURES, "both"], default="both",
                        help="the architecture(s) to compare; each keeps its own default learning rate")  # fmt: skip
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--dim", type=int, default=defaults.dim)
    parser.add_argument("--window", type=int, default=defaults.window)
    parser.add_argument("--negative", type=int, default=defaults.negative)
    parser.add_argument("--sample", type=float, default=defaults.sample)
    parser.add_argument("--min-count", type=int, default=defaults.min_count)
    parser.add_argument("--alpha", type=float, default=None,
                        help="starting learning rate for both trainers; default 0.025 for skip-gram, 0.05 for CBOW")  # fmt: skip
    parser.add_argument("--workers", type=int, default=0, help="threads for both trainers; 0 = all cores")
    parser.add_argument("--max-words", type=int, default=None, help="read only this many tokens of the corpus")
    parser.add_argument("--repeats", type=int, default=3,
                        help="pairs of runs (ours, gensim) per architecture; the spread over them is reported")  # fmt: skip
    parser.add_argument("--seed", type=int, default=defaults.seed, help="pair i is seeded with seed + i")
    parser.add_argument("--smoke", action="store_true",
                        help=SMOKE_HELP + f"; {SMOKE['max_words']:,} words, {SMOKE['epochs']} epoch, {SMOKE['repeats']} pair")
    parser.add_argument("--out", type=Path, help="default: bench/results/word2vec_vs_gensim.json")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, not {args.repeats}")
    if args.smoke:
        vars(args).update(SMOKE)
    args.out = result_path(args.out, "word2vec_vs_gensim", args.smoke)
    return args


def configs(args: argparse.Namespace) -> dict[str, Word2VecConfig]:
    """The numba-kernel config of each architecture asked for; gensim gets the same settings."""
    architectures = ARCHITECTURES if args.arch == "both" else (args.arch,)
    return {
        arch: Word2VecConfig(
            corpus=args.corpus, architecture=arch, epochs=args.epochs, dim=args.dim, window=args.window,
            negative=args.negative, sample=args.sample, min_count=args.min_count, alpha=args.alpha,
            workers=args.workers, max_words=args.max_words, seed=args.seed, device="numba",
        )  # fmt: skip
        for arch in architectures
    }


def run_ours(config: Word2VecConfig) -> tuple[dict, np.ndarray, list[str]]:
    """Timings of one training run, and its vectors and vocabulary."""
    started = time.perf_counter()
    result = train_word2vec(config, progress=False)
    timings = {
        "raw_words_per_second": result.words_per_second,
        "effective_words_per_second": result.effective_words_per_second,
        "train_seconds": result.seconds,
        "raw_words_per_cpu_second": result.words_per_second * result.seconds / result.cpu_seconds,
        "wall_seconds": time.perf_counter() - started,
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
    train_started, cpu_started = time.perf_counter(), time.process_time()
    effective_words, raw_words = model.train(sentences, total_examples=model.corpus_count, epochs=config.epochs)
    train_seconds, cpu_seconds = time.perf_counter() - train_started, time.process_time() - cpu_started
    timings = {
        "raw_words_per_second": raw_words / train_seconds,
        "effective_words_per_second": effective_words / train_seconds,
        "train_seconds": train_seconds,
        "raw_words_per_cpu_second": raw_words / cpu_seconds,
        "wall_seconds": time.perf_counter() - started - read_seconds,
        "compile_seconds": 0.0,
        "vocab_size": len(model.wv),
    }
    return timings, model.wv.vectors, list(model.wv.index_to_key)


TRAINERS = {"ours": run_ours, "gensim": run_gensim}
QUALITY = ("analogy", "wordsim", "simlex")  # the figures compared as differences, not ratios


def run_pairs(config: Word2VecConfig, repeats: int) -> list[dict]:
    """`repeats` pairs of runs, ours first in even pairs and gensim first in odd ones."""
    pairs = []
    for i in range(repeats):
        seeded = replace(config, seed=config.seed + i)
        order = ("ours", "gensim") if i % 2 == 0 else ("gensim", "ours")
        pair: dict = {"seed": seeded.seed, "order": list(order)}
        for name in order:
            timings, vectors, vocab = TRAINERS[name](seeded)
            pair[name] = {**timings, **evaluate_word_vectors(vectors, vocab), "load_average_1min": round(os.getloadavg()[0], 2)}
        for key in ("raw_words_per_second", "raw_words_per_cpu_second"):
            pair[f"{key}_ratio"] = pair["ours"][key] / pair["gensim"][key]
        pairs.append(pair)
    return pairs


SUMMARY_KEYS = [
    ("raw words/s (corpus tokens, gensim's 'raw')", "raw_words_per_second", "{:,.0f}"),
    ("effective words/s (after subsampling)", "effective_words_per_second", "{:,.0f}"),
    ("training time, s", "train_seconds", "{:.1f}"),
    ("raw words per CPU-second (all threads)", "raw_words_per_cpu_second", "{:,.0f}"),
    ("analogy accuracy, semantic", "analogy_semantic", "{:.2%}"),
    ("analogy accuracy, syntactic", "analogy_syntactic", "{:.2%}"),
    ("analogy accuracy, total", "analogy_total", "{:.2%}"),
    ("WordSim-353 Spearman", "wordsim353_spearman", "{:.3f}"),
    ("SimLex-999 Spearman", "simlex999_spearman", "{:.3f}"),
]


def spread(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "mean": statistics.fmean(values)}


def summarize(pairs: list[dict]) -> dict:
    """Per trainer and figure, the spread over pairs; the speed ratio of the slowest pair."""
    summary: dict = {
        name: {key: spread([pair[name][key] for pair in pairs]) for _, key, _ in SUMMARY_KEYS} for name in TRAINERS
    }
    ratios = [pair["raw_words_per_second_ratio"] for pair in pairs]
    summary["raw_words_per_second_ratio"] = {
        "per_pair": ratios,
        "slowest_pair": min(ratios),
        # The harshest reading: our slowest run against gensim's fastest, whatever the pairing.
        "ours_min_over_gensim_max": summary["ours"]["raw_words_per_second"]["min"] / summary["gensim"]["raw_words_per_second"]["max"],
    }
    summary["raw_words_per_cpu_second_ratio"] = {"per_pair": [pair["raw_words_per_cpu_second_ratio"] for pair in pairs]}
    summary["ours_minus_gensim_mean"] = {
        key: summary["ours"][key]["mean"] - summary["gensim"][key]["mean"] for _, key, _ in SUMMARY_KEYS if key.startswith(QUALITY)
    }
    return summary


def table(arch: str, summary: dict, repeats: int) -> str:
    cell = 34
    width = max(len(name) for name, _, _ in SUMMARY_KEYS)
    lines = [f"{arch}, {repeats} pair(s): min / median / max", f"{'':{width}}  {'ours':>{cell}}  {'gensim':>{cell}}"]
    for name, key, fmt in SUMMARY_KEYS:
        cells = [" / ".join(fmt.format(summary[t][key][s]) for s in ("min", "median", "max")) for t in TRAINERS]
        lines.append(f"{name:{width}}  {cells[0]:>{cell}}  {cells[1]:>{cell}}")
    ratio = summary["raw_words_per_second_ratio"]
    lines.append(
        f"ours/gensim raw words/s per pair: {', '.join(f'{r:.2f}' for r in ratio['per_pair'])}; "
        f"slowest pair {ratio['slowest_pair']:.2f}; our slowest / gensim's fastest {ratio['ours_min_over_gensim_max']:.2f}\n"
        f"ours/gensim raw words per CPU-second per pair: "
        f"{', '.join(f'{r:.2f}' for r in summary['raw_words_per_cpu_second_ratio']['per_pair'])}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report: dict = {
        "date": utc_now(),
        "command": " ".join(["python", "bench/word2vec_vs_gensim.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine_info("torch", "numba", "gensim"),
        "smoke": args.smoke,
    }
    for arch, config in configs(args).items():
        pairs = run_pairs(config, args.repeats)
        summary = summarize(pairs)
        report[arch] = {"config": asdict(config), "summary": summary, "pairs": pairs}
        print(table(arch, summary, args.repeats) + "\n", flush=True)
    report["load_average_1_5_15min_at_end"] = [round(x, 2) for x in os.getloadavg()]
    write_report(args.out, report)


if __name__ == "__main__":
    main()
