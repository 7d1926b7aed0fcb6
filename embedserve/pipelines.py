"""The steps the CLI and the demo run: train → evaluate → export, each one library function.

The CLI only parses arguments and calls these; tests and benchmarks call the same functions.
Torch is imported inside the steps that need it, so `embedserve serve` never loads it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from runtime.bundle import TRAINING_CURVES_ROLE, Bundle

log = logging.getLogger(__name__)


def evaluate_word_vectors(vectors, vocab: list[str]) -> dict[str, Any]:
    """Analogy accuracy (questions-words.txt, 3CosAdd) and the Spearman correlation on WordSim-353
    and SimLex-999, as the manifest records them and bench/word2vec_vs_gensim.py reports them.

    The data files ship with gensim (a dev dependency); without it the metrics are skipped.
    """
    from training.evaluation.datasets import ANALOGIES, SIMLEX, WORD_SIMILARITY, gensim_test_file
    from training.evaluation.word_analogies import evaluate_word_analogies
    from training.evaluation.word_similarity import evaluate_word_similarity

    try:
        files = [gensim_test_file(name) for name in (ANALOGIES, WORD_SIMILARITY, SIMLEX)]
    except (FileNotFoundError, ImportError) as e:
        log.warning("skipping word-vector evaluation: %s", e)
        return {}
    analogies = evaluate_word_analogies(vectors, vocab, files[0])
    metrics = {
        "analogy_semantic": analogies["semantic"],
        "analogy_syntactic": analogies["syntactic"],
        "analogy_total": analogies["total"]["accuracy"],
        "analogy_covered": analogies["covered"],
    }
    for name, path in (("wordsim353", files[1]), ("simlex999", files[2])):
        try:
            similarity = evaluate_word_similarity(vectors, vocab, path)
        except ValueError as e:  # a small vocabulary covers too few of the pairs
            log.warning("skipping %s: %s", name, e)
            continue
        metrics[f"{name}_spearman"], metrics[f"{name}_pairs"] = similarity["spearman"], similarity["pairs"]
    return metrics


def train_word2vec_bundle(
    config, artifacts: Path, name: str, checkpoint: Path | None = None, resume: bool = False
) -> Bundle:
    """Train word2vec with `config`, evaluate it, and export a word-vectors bundle named `name`
    with its training curves; the metrics log goes to `config.log_path`, by default
    `artifacts/logs/<name>.jsonl` as the other methods' does (train_and_export)."""
    import dataclasses

    from export.word_vectors import export_word_vectors
    from training.methods.word2vec import train_word2vec

    checkpoint = checkpoint or Path(artifacts) / "checkpoints" / f"{name}.pt"
    config = dataclasses.replace(config, log_path=config.log_path or str(Path(artifacts) / "logs" / f"{name}.jsonl"))
    result = train_word2vec(config, checkpoint_path=checkpoint, resume=resume)
    metrics = evaluate_word_vectors(result.vectors, result.vocab)
    metrics["words_per_second"] = round(result.words_per_second)
    metrics["train_seconds"] = round(result.seconds, 1)
    return export_word_vectors(checkpoint, artifacts, name, metrics=metrics)


def _torch_trainer(method: str):
    """The train function and the config class of a method that runs through training/loop.py."""
    if method == "simclr":
        from training.methods.simclr import SimCLRConfig, train_simclr

        return train_simclr, SimCLRConfig
    if method == "mae":
        from training.methods.mae import MAEConfig, train_mae

        return train_mae, MAEConfig
    if method == "clip":
        from training.methods.clip import ClipConfig, train_clip

        return train_clip, ClipConfig
    raise ValueError(f"unknown method {method!r}; use simclr, mae or clip")


def config_class(method: str) -> type:
    """The frozen config dataclass of `method` (simclr, mae or clip)."""
    return _torch_trainer(method)[1]


def train_and_export(method: str, config, artifacts: Path, name: str, resume: bool = False) -> Bundle:
    """Train SimCLR, MAE or CLIP with `config` (checkpoint and log under `artifacts/checkpoints`
    and `artifacts/logs`, named after the bundle) and export the result as bundle `name`."""
    import dataclasses

    train, _ = _torch_trainer(method)
    artifacts = Path(artifacts)
    checkpoint = artifacts / "checkpoints" / f"{name}.pt"
    config = dataclasses.replace(config, checkpoint_path=str(checkpoint), log_path=str(artifacts / "logs" / f"{name}.jsonl"))
    summary = train(config, resume=resume)
    metrics = {"final_loss": round(float(summary["loss"]), 4), "train_steps": summary["step"],
               "train_seconds": round(float(summary["train_time_s"]), 1)}
    return export_checkpoint(checkpoint, artifacts, name, metrics=metrics)


def curves_note(bundle: Bundle) -> str | None:
    """Where the training curves of `bundle` are, as the CLI and the demo print it: the PNG the
    loop drew beside its log and the bundle's copy; None for a bundle without them."""
    copy = bundle.optional_file(TRAINING_CURVES_ROLE)
    if copy is None:
        return None
    from training.curves import curves_path

    log_path = bundle.manifest.training_config.get("log_path")
    drawn = curves_path(log_path) if log_path else None
    beside_log = f"{drawn} (beside its log), " if drawn is not None and drawn.is_file() else ""
    return f"training curves: {beside_log}{copy} (in the bundle)"


def export_checkpoint(
    checkpoint: Path, artifacts: Path, name: str, fp16: bool = True, triton: bool = False, metrics: dict | None = None,
    triton_backend: str = "onnxruntime",
) -> Bundle:
    """Export any checkpoint this project trains, dispatching on the method it records; with
    `triton`, also add the model to the Triton repository `artifacts/triton`, its ONNX models on
    `triton_backend` (export.triton.ONNX_BACKENDS). Encoders get an int8
    copy for CPUs and, with `fp16`, a half-precision one for GPUs (export.quantize)."""
    from training.checkpoint import load_checkpoint

    method = load_checkpoint(checkpoint).get("method")
    if method == "word2vec":
        from export.word_vectors import export_word_vectors

        bundle = export_word_vectors(checkpoint, artifacts, name, metrics=metrics)
    elif method in ("simclr", "mae"):
        from export.image_encoder import export_image_encoder

        bundle = export_image_encoder(checkpoint, artifacts, name, metrics=metrics, fp16=fp16)
    elif method == "clip":
        from export.clip import export_clip

        bundle = export_clip(checkpoint, artifacts, name, metrics=metrics, fp16=fp16)
    else:
        raise ValueError(f"{checkpoint}: cannot export a checkpoint of method {method!r}")
    if triton:
        from export.triton import write_triton_repository

        write_triton_repository(bundle, Path(artifacts) / "triton", onnx_backend=triton_backend)
    return bundle
