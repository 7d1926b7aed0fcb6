"""Benchmark: SimCLR and MAE on Fashion-MNIST against raw pixels and the same encoders at random init.

Prints one table (kNN top-1 and linear-probe top-1 at 1/10/100% of labels) and writes it, with
the machine and date, to bench/results/vision_ssl.json.

    python bench/vision_ssl.py --profile quick            # 1.5 min training per method on 2 CPU cores
    python bench/vision_ssl.py --profile cpu-long --out bench/results/vision_ssl_cpu_long.json   # ~40 min on 2 cores
    python bench/vision_ssl.py --profile full --reuse     # evaluate existing full checkpoints (GPU-sized)
    python bench/vision_ssl.py --smoke                    # --profile smoke: tiny encoders, two steps each, 300 images: seconds
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from bench.report import SMOKE_HELP, result_path, utc_now, write_report  # noqa: E402
from embedserve.machine import machine_info  # noqa: E402
from training.data.images import load_image_arrays, random_subset  # noqa: E402
from training.evaluation.encoder_eval import encoder_embed_fn, evaluate_encoder, raw_pixels  # noqa: E402
from training.methods.encoders import load_image_encoder  # noqa: E402
from training.methods.mae import MAEConfig, train_mae  # noqa: E402
from training.methods.simclr import SimCLRConfig, train_simclr  # noqa: E402

SMOKE_DIR = Path(tempfile.gettempdir()) / "embedserve-bench-smoke" / "vision_ssl"
# eval_train / eval_test: how many Fashion-MNIST images the kNN and probe use (None = all 60k / 10k)
PROFILES = {
    "quick": {"simclr": SimCLRConfig.quick(), "mae": MAEConfig.quick(), "eval_train": 10_000, "eval_test": 2_000},
    "full": {"simclr": SimCLRConfig(), "mae": MAEConfig(), "eval_train": None, "eval_test": None},
    # the quick models trained longer on all 60k images, evaluated on the whole train/test sets: what a CPU reaches
    "cpu-long": {
        "simclr": SimCLRConfig.quick(subset=None, epochs=10, max_steps_per_epoch=None,
                                     checkpoint_path="artifacts/checkpoints/simclr-cpu-long.pt",
                                     log_path="artifacts/logs/simclr-cpu-long.jsonl"),
        "mae": MAEConfig.quick(subset=None, epochs=15, checkpoint_path="artifacts/checkpoints/mae-cpu-long.pt",
                               log_path="artifacts/logs/mae-cpu-long.jsonl"),
        "eval_train": None, "eval_test": None,
    },
    # --smoke: the same code on tiny encoders trained two steps, checkpoints in a temporary folder
    "smoke": {
        "simclr": SimCLRConfig.quick(width=4, proj_hidden_dim=32, subset=256, epochs=1, batch_size=32, max_steps_per_epoch=2,
                                     eval_every_epochs=0, checkpoint_path=str(SMOKE_DIR / "simclr-smoke.pt"),
                                     log_path=str(SMOKE_DIR / "simclr-smoke.jsonl")),
        "mae": MAEConfig.quick(dim=32, depth=1, num_heads=2, decoder_dim=16, subset=256, epochs=1, batch_size=32,
                               max_steps_per_epoch=2, eval_every_epochs=0, checkpoint_path=str(SMOKE_DIR / "mae-smoke.pt"),
                               log_path=str(SMOKE_DIR / "mae-smoke.jsonl")),
        # no 1% probe: 1% of 300 images cannot hold every class
        "eval_train": 300, "eval_test": 100, "fractions": (0.1, 1.0),
    },
}
TRAINERS = {"simclr": train_simclr, "mae": train_mae}
FRACTIONS = (0.01, 0.1, 1.0)


def fixed_subset(data: tuple[np.ndarray, np.ndarray], size: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    keep = random_subset(len(data[0]), size, seed)
    return data if keep is None else (data[0][keep], data[1][keep])


def format_table(rows: list[dict]) -> str:
    def cell(value, fmt: str = "") -> str:
        return "-" if value is None else format(value, fmt)

    header = f"{'encoder':<32} {'epochs':>6} {'train s':>8} {'dim':>5} {'kNN top1':>9} {'lin 1%':>7} {'lin 10%':>8} {'lin 100%':>9}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lin = r["linear_top1_pct"]
        lines.append(f"{r['name']:<32} {cell(r['epochs']):>6} {cell(r['train_time_s'], '.0f'):>8} {r['dim']:>5} "
                     f"{r['knn_top1_pct']:>9.2f} {cell(lin.get('1%'), '.2f'):>7} {cell(lin.get('10%'), '.2f'):>8} "
                     f"{cell(lin.get('100%'), '.2f'):>9}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument("--methods", nargs="+", choices=sorted(TRAINERS), default=["simclr", "mae"])
    parser.add_argument("--reuse", action="store_true", help="evaluate existing checkpoints instead of training")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--note", default="", help="free text stored with the results (e.g. 'cores shared')")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP + "; the same as --profile smoke")
    parser.add_argument("--out", help="default: bench/results/vision_ssl.json")
    args = parser.parse_args(argv)
    if args.smoke:
        args.profile, args.reuse = "smoke", False
    args.out = result_path(args.out, "vision_ssl", args.profile == "smoke")
    profile = PROFILES[args.profile]
    fractions = profile.get("fractions", FRACTIONS)

    train = fixed_subset(load_image_arrays("fashion-mnist", "train"), profile["eval_train"], seed=1)
    test = fixed_subset(load_image_arrays("fashion-mnist", "test"), profile["eval_test"], seed=1)
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device)

    def evaluate(embed_fn) -> dict:
        return evaluate_encoder(embed_fn, train, test, fractions)

    rows = [{"name": "raw pixels", "method": None, "epochs": None, "train_time_s": None, **evaluate(raw_pixels)}]
    for name in args.methods:
        config = replace(profile[name], device=args.device)
        checkpoint = Path(config.checkpoint_path)
        train_time_s = None
        if not (args.reuse and checkpoint.is_file()):
            summary = TRAINERS[name](config)
            train_time_s = summary["train_time_s"]
        encoder, info = load_image_encoder(checkpoint, device)
        torch.manual_seed(0)
        random_encoder, _ = load_image_encoder(checkpoint, device, random_init=True)
        arch = {"resnet": "ResNet-18", "vit": "ViT"}[info.arch]
        rows.append({"name": f"random-init {arch} ({name})", "method": None, "epochs": 0, "train_time_s": None,
                     **evaluate(encoder_embed_fn(random_encoder, info.preprocessing, device=device))})
        rows.append({"name": f"{name} {arch}", "method": name, "epochs": info.config["epochs"],
                     "steps_per_epoch": info.config["max_steps_per_epoch"], "train_images": info.config["subset"],
                     "train_time_s": train_time_s, "checkpoint": str(checkpoint),
                     **evaluate(encoder_embed_fn(encoder, info.preprocessing, device=device))})

    table = format_table(rows)
    print(table)

    result = {
        "benchmark": "vision_ssl", "profile": args.profile, "date": utc_now(),
        "machine": machine_info("torch", "torchvision", "scikit-learn"), "note": args.note,
        "eval": {"data": "fashion-mnist", "train_images": len(train[0]), "test_images": len(test[0]), "knn_k": 200,
                 "knn_temperature": 0.1, "linear_probe": "sklearn LogisticRegression (C=1) on standardised embeddings",
                 "label_fractions": list(fractions)},
        "rows": rows, "table": table,
    }
    write_report(args.out, result)
    return result


if __name__ == "__main__":
    main()
