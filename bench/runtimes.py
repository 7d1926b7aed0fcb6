"""Benchmark: the same models on torch eager, onnxruntime fp32 and onnxruntime int8 on the CPU
(and CUDA fp32/fp16 and TensorRT fp16 where onnxruntime has those providers), side by side in one run.

For each encoder of each bundle (a CLIP bundle has two: the image tower and the text tower) it
times batches of 1, 32 and 256 real inputs (Fashion-MNIST test images, preprocessed as the bundle
says; class prompts for a text tower), in `--rounds` alternating rounds so that a burst of other
work on a shared machine hits every runtime alike, and keeps each one's fastest call. Beside the
speed: each variant's top-1 change and output cosine as export measured and recorded them in the
manifest, and the cosine of what it returns here to torch's. Prints one table and writes it, with
the machine, the date and the load average, to bench/results/runtimes.json.

    python bench/runtimes.py --artifacts artifacts            # the demo's models (embedserve demo --no-serve)
    python bench/runtimes.py --artifacts artifacts --models simclr-fmnist --seconds 1 --threads 2
    python bench/runtimes.py --smoke                          # a tiny SimCLR trained two steps and exported: seconds

Torch eager needs the checkpoint the bundle was exported from, artifacts/checkpoints/<name>.pt
(where the demo and `embedserve train` put it); without it that row is skipped.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from bench.report import SMOKE_HELP, result_path, utc_now, write_report  # noqa: E402
from embedserve.machine import machine_info  # noqa: E402
from runtime.bundle import Bundle, open_bundle  # noqa: E402
from runtime.encoders.onnx_runtime import OnnxEncoder  # noqa: E402
from runtime.vectors import rowwise_cosine  # noqa: E402

BATCHES = (1, 32, 256)
DEMO_MODELS = ("simclr-fmnist", "mae-fmnist", "clip-fmnist")
TORCH = "torch eager (CPU)"
TARGETS = {"onnxruntime fp32 / torch eager at batch 32": 1.5, "int8 / fp32 at batch 32": 2.0, "int8 top-1 drop, points": 1.0}


@dataclass
class Runner:
    runtime: str  # the row's name, e.g. "onnxruntime int8 (CPU)"
    precision: str  # fp32, fp16 or int8
    run: Callable[[np.ndarray], np.ndarray]  # a batch (B, ...) -> embeddings (B, D)
    variant: object = None  # the manifest's PrecisionVariant, for the variants


def tower_inputs(bundle: Bundle, role: str, rows: int) -> np.ndarray:
    """`rows` real inputs of the tower: preprocessed Fashion-MNIST test images, or class prompts
    tokenised and stacked as the server sends them ((N, 2, T) int64)."""
    manifest = bundle.manifest
    if role == "text_encoder":
        from runtime.templates import EVAL_TEMPLATES
        from runtime.tokens import encode_batch, load_tokenizer

        names = manifest.class_names or ("shirt", "bag", "sneaker")
        texts = [t.format(c) for t in EVAL_TEMPLATES for c in names]
        texts = (texts * (rows // len(texts) + 1))[:rows]
        ids, mask = encode_batch(load_tokenizer(bundle.path / manifest.tokenizer.file), texts)
        return np.stack([ids, mask], axis=1)  # (N, 2, T)
    from runtime.fashion_mnist import load_fashion_mnist
    from runtime.preprocessing import preprocess_batch
    from runtime.sources import to_pil

    images, _ = load_fashion_mnist(split="test")
    return preprocess_batch([to_pil(im) for im in images[:rows]], manifest.preprocessing)  # (N, C, H, W)


def torch_runner(bundle: Bundle, role: str, checkpoint: Path, threads: int) -> Runner | None:
    """The torch module the bundle was exported from, computing what its ONNX file computes."""
    if not checkpoint.is_file():
        return None
    import torch

    torch.set_num_threads(threads)
    manifest = bundle.manifest
    if manifest.method == "clip":
        from training.methods.clip import load_clip_towers

        image_tower, text_tower, _ = load_clip_towers(str(checkpoint))
        module = image_tower if role == "image_encoder" else text_tower
    else:
        from export.image_encoder import CentredEncoder
        from runtime.bundle import CENTERING_MEAN_ROLE, CENTERING_WHITENING_ROLE
        from training.methods.encoders import load_image_encoder

        module, _ = load_image_encoder(checkpoint)
        if manifest.centering is not None:
            module = CentredEncoder(module, np.load(bundle.file(CENTERING_MEAN_ROLE)), np.load(bundle.file(CENTERING_WHITENING_ROLE)))
    module.eval()

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(batch)
            out = module(x[:, 0], x[:, 1]) if role == "text_encoder" else module(x)
        return out.float().numpy()

    return Runner(TORCH, "fp32", run)


def onnx_runners(bundle: Bundle, role: str, threads: int) -> tuple[list[Runner], list[str]]:
    """onnxruntime on the CPU at fp32 and int8, and on CUDA (fp32, fp16) and TensorRT (fp16) when
    this onnxruntime build has them; and a note for each row skipped."""
    manifest, available, notes = bundle.manifest, ort.get_available_providers(), []
    rows = [("CPU", ["CPUExecutionProvider"], "fp32"), ("CPU", ["CPUExecutionProvider"], "int8")]
    gpu = [("CUDA", ["CUDAExecutionProvider", "CPUExecutionProvider"], p) for p in ("fp32", "fp16")]
    gpu.append(("TensorRT", ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"], "fp16"))
    for device, providers, precision in gpu:
        if providers[0] in available:
            rows.append((device, providers, precision))
        else:
            notes.append(f"{device} {precision}: skipped, this onnxruntime has no {providers[0]} (providers: {available})")
    runners = []
    for device, providers, precision in rows:
        variant = manifest.variant(role, precision) if precision != "fp32" else None
        if precision != "fp32" and variant is None:
            notes.append(f"{manifest.name} {role} {precision}: skipped, the bundle has no {precision} variant (re-export it)")
            continue
        encoder = OnnxEncoder(bundle, role, providers, intra_op_threads=threads, precision=precision,
                              file_role=variant.file_role if variant else None,
                              one_at_a_time=variant is not None and variant.one_at_a_time,  # as the server runs it
                              trt_cache_dir=Path("bench/results/.trt-cache") if device == "TensorRT" else None)
        runners.append(Runner(f"onnxruntime {precision} ({device})", precision, encoder.encode, variant))
    return runners, notes


def rows_per_second(run: Callable[[np.ndarray], np.ndarray], batch: np.ndarray, seconds: float, min_calls: int = 3) -> float:
    """Rows per second of the fastest of the calls made in `seconds` (at least `min_calls`): on a
    CPU shared with other work the fastest call is the one least slowed by it (timeit's rule)."""
    run(batch)  # warm-up: first-call allocations and kernel choices
    fastest_s, calls, start = float("inf"), 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - start < seconds:
        began = time.perf_counter()
        run(batch)
        fastest_s = min(fastest_s, time.perf_counter() - began)
        calls += 1
    return len(batch) / fastest_s


def bench_tower(bundle: Bundle, role: str, checkpoint: Path, threads: int, seconds: float, rounds: int) -> tuple[list[dict], list[str]]:
    inputs = tower_inputs(bundle, role, max(BATCHES))
    runners, notes = onnx_runners(bundle, role, threads)
    eager = torch_runner(bundle, role, checkpoint, threads)
    if eager is None:
        notes.append(f"{bundle.manifest.name}: torch eager skipped, no checkpoint at {checkpoint}")
    else:
        runners.insert(0, eager)
    best = {r.runtime: {b: 0.0 for b in BATCHES} for r in runners}
    for _ in range(rounds):  # every runtime once per round, so a burst of other load hits them alike
        for batch in BATCHES:
            for r in runners:
                best[r.runtime][batch] = max(best[r.runtime][batch], rows_per_second(r.run, inputs[:batch], seconds / rounds))
    reference = (eager or runners[0]).run(inputs)  # torch's outputs (or fp32 onnxruntime's without torch)
    rows = []
    for r in runners:
        v = r.variant
        rows.append({
            "model": bundle.manifest.name, "version": bundle.manifest.version, "tower": role, "runtime": r.runtime,
            "precision": r.precision, "rows_per_s": {str(b): round(best[r.runtime][b], 1) for b in BATCHES},
            "min_cosine_to_reference_here": round(float(rowwise_cosine(reference, r.run(inputs)).min()), 5),
            "reference": TORCH if eager else "onnxruntime fp32 (CPU)",
            "recorded_top1_change_pct": v.top1_change_pct if v else None,
            "recorded_mean_cosine_to_fp32": v.mean_cosine if v else None,
            "recorded_evaluation": v.evaluation if v else None,
            "recorded_cpu_speedup_over_fp32": v.cpu_speedup if v else None,  # what precision auto goes by
        })
    return rows, notes


def add_ratios(rows: list[dict]) -> None:
    """Each row's speed at each batch over torch eager's and over onnxruntime fp32 (CPU)'s, same tower."""
    for row in rows:
        peers = {r["runtime"]: r for r in rows if (r["model"], r["tower"]) == (row["model"], row["tower"])}
        for key, base in (("x_torch", TORCH), ("x_onnx_fp32", "onnxruntime fp32 (CPU)")):
            if base in peers:
                row[key] = {b: round(row["rows_per_s"][b] / peers[base]["rows_per_s"][b], 2) for b in row["rows_per_s"]}


def check_targets(rows: list[dict]) -> list[dict]:
    """Per tower: onnxruntime fp32 ≥ 1.5× torch at batch 32; int8 ≥ 2× fp32 at batch 32 within 1 point top-1."""
    verdicts = []
    for key in dict.fromkeys((r["model"], r["tower"]) for r in rows):
        peers = {r["runtime"]: r for r in rows if (r["model"], r["tower"]) == key}
        fp32, int8 = peers.get("onnxruntime fp32 (CPU)"), peers.get("onnxruntime int8 (CPU)")
        verdict = {"model": key[0], "tower": key[1]}
        if fp32 and "x_torch" in fp32:
            verdict["fp32_vs_torch_b32"] = fp32["x_torch"]["32"]
            verdict["fp32_vs_torch_met"] = fp32["x_torch"]["32"] >= TARGETS["onnxruntime fp32 / torch eager at batch 32"]
        if int8:
            change = int8["recorded_top1_change_pct"]
            verdict["int8_vs_fp32_b32"] = int8["x_onnx_fp32"]["32"]
            verdict["int8_top1_change_pct"] = change
            verdict["int8_met"] = (int8["x_onnx_fp32"]["32"] >= TARGETS["int8 / fp32 at batch 32"]
                                   and change is not None and change >= -TARGETS["int8 top-1 drop, points"])
        verdicts.append(verdict)
    return verdicts


def print_table(rows: list[dict]) -> None:
    header = (f"{'model':<14} {'tower':<6} {'runtime':<26} " + " ".join(f"{'b' + str(b) + '/s':>8}" for b in BATCHES)
              + f" {'×torch@32':>9} {'×fp32@32':>8} {'top-1 Δ':>8} {'cos':>7}")
    print(header)
    print("-" * len(header))
    for r in rows:
        speeds = " ".join(f"{r['rows_per_s'][str(b)]:>8.0f}" for b in BATCHES)
        x_torch = f"{r['x_torch']['32']:.2f}" if "x_torch" in r else "-"
        x_fp32 = f"{r['x_onnx_fp32']['32']:.2f}" if "x_onnx_fp32" in r else "-"
        change = r["recorded_top1_change_pct"]
        print(f"{r['model']:<14} {r['tower'].replace('_encoder', ''):<6} {r['runtime']:<26} {speeds} {x_torch:>9} {x_fp32:>8} "
              f"{'-' if change is None else f'{change:+.1f}':>8} {r['min_cosine_to_reference_here']:>7.4f}")
    print("top-1 Δ: the variant's top-1 change against fp32 as export measured it (kNN for image towers, zero-shot for "
          "text), in points; cos: lowest cosine of its outputs here to torch eager's")


def smoke_artifacts(artifacts: Path, name: str = "simclr-smoke") -> str:
    """A tiny SimCLR (bench/vision_ssl.py's smoke configuration, two steps) trained into
    `artifacts`/checkpoints and exported as bundle `name` with its int8 and fp16 copies; returns `name`."""
    from dataclasses import replace

    from bench.vision_ssl import PROFILES
    from export.image_encoder import export_image_encoder
    from training.methods.simclr import train_simclr

    checkpoint = artifacts / "checkpoints" / f"{name}.pt"
    train_simclr(replace(PROFILES["smoke"]["simclr"], checkpoint_path=str(checkpoint),
                         log_path=str(artifacts / "logs" / f"{name}.jsonl")))
    export_image_encoder(checkpoint, artifacts, name, centering_images=256)
    return name


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--models", default=",".join(DEMO_MODELS), help="bundle names, comma-separated")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="threads per model call, torch and onnxruntime alike (default: one per core, as the "
                             "server's default, EMBEDSERVE_ONNX_INTRA_OP_THREADS=0, runs onnxruntime)")
    parser.add_argument("--seconds", type=float, default=5.0, help="timing per runtime and batch size, split over the rounds")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds; each runtime keeps its fastest call")
    parser.add_argument("--smoke", action="store_true",
                        help=SMOKE_HELP + "; a tiny SimCLR trained and exported into a temporary folder, one short round")
    parser.add_argument("--out", type=Path, help="default: bench/results/runtimes.json")
    args = parser.parse_args(argv)
    args.out = result_path(args.out, "runtimes", args.smoke)

    load_before = [round(x, 2) for x in os.getloadavg()]
    started = time.perf_counter()
    rows, notes = [], []
    scratch = tempfile.TemporaryDirectory(prefix="embedserve-bench-runtimes-")
    if args.smoke:
        args.artifacts = Path(scratch.name)
        args.models, args.seconds, args.rounds = smoke_artifacts(args.artifacts), 0.05, 1
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        bundle = open_bundle(args.artifacts, name)
        roles = ("image_encoder", "text_encoder") if bundle.manifest.kind == "image-text-encoder" else ("image_encoder",)
        for role in roles:
            print(f"timing {name} {role} ...", flush=True)
            tower_rows, tower_notes = bench_tower(bundle, role, args.artifacts / "checkpoints" / f"{name}.pt", args.threads,
                                                  args.seconds, args.rounds)
            rows += tower_rows
            notes += tower_notes
    scratch.cleanup()
    add_ratios(rows)
    print_table(rows)
    verdicts = check_targets(rows)
    for v in verdicts:
        print(f"{v['model']} {v['tower']}: " + ", ".join(f"{k} {val}" for k, val in v.items() if k not in ("model", "tower")))
    for note in dict.fromkeys(notes):
        print("note:", note)
    result = {
        "benchmark": "runtimes", "date": utc_now(), "smoke": args.smoke,
        "command": " ".join(["python", *sys.argv]), "artifacts": str(args.artifacts),
        "machine": machine_info("onnxruntime", "torch"), "load_average_before_1_5_15min": load_before,
        "wall_s": round(time.perf_counter() - started, 1), "threads_per_call": args.threads, "rounds": args.rounds,
        "seconds_per_runtime_and_batch": args.seconds, "batches": list(BATCHES), "targets": TARGETS,
        "rows": rows, "verdicts": verdicts, "notes": list(dict.fromkeys(notes)),
    }
    write_report(args.out, result)


if __name__ == "__main__":
    main()
