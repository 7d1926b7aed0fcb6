"""Write a word-vectors bundle: `vectors.npy`, `vocab.txt` (word and count), the training curves
when the run drew them (export.curves) and the manifest.

`export_word_vectors` reads a word2vec checkpoint (training/methods/word2vec.py writes them);
`write_word_vectors_bundle` takes arrays directly, for callers that already hold them.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from export.curves import copy_training_curves
from runtime.bundle import Bundle, Manifest, sha256_file, write_bundle


def write_word_vectors_bundle(
    artifacts: Path,
    name: str,
    vocab: list[str],
    counts: np.ndarray,
    vectors: np.ndarray,
    training_config: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    source_checkpoint_sha256: str | None = None,
    version: str | None = None,
) -> Bundle:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)  # (V, D)
    if vectors.ndim != 2 or len(vocab) != len(vectors) or len(counts) != len(vocab):
        raise ValueError(f"vocab ({len(vocab)}), counts ({len(counts)}) and vectors {vectors.shape} do not match")
    bad = [w for w in vocab if not w or "\t" in w or "\n" in w]
    if bad:
        raise ValueError(f"words must be non-empty and free of tabs and newlines: {bad[:5]}")

    with tempfile.TemporaryDirectory(prefix="embedserve-export-") as scratch:
        # copied once, before the manifest names it, so the bundle holds the PNG its manifest hashes
        curves = copy_training_curves(training_config or {}, Path(scratch))

        def write_files(folder: Path) -> None:
            np.save(folder / "vectors.npy", vectors)
            with open(folder / "vocab.txt", "w", encoding="utf-8") as f:
                f.writelines(f"{word}\t{int(count)}\n" for word, count in zip(vocab, counts))
            for file in curves.values():
                shutil.copyfile(Path(scratch) / file, folder / file)

        manifest = Manifest(
            name=name,
            kind="word-vectors",
            method="word2vec",
            dim=int(vectors.shape[1]),
            normalized=False,
            files={"vectors": "vectors.npy", "vocab": "vocab.txt", **curves},
            training_config=training_config or {},
            metrics=metrics or {},
            extra={"vocab_size": len(vocab), "tokenization": {"lowercase": True, "split": "non-letters"}},
            source_checkpoint_sha256=source_checkpoint_sha256,
        )
        return write_bundle(artifacts, manifest, write_files, version=version)


def export_word_vectors(
    checkpoint_path: Path,
    artifacts: Path,
    name: str,
    metrics: dict[str, Any] | None = None,
    version: str | None = None,
) -> Bundle:
    """Export the input vectors of a word2vec checkpoint as a bundle named `name`."""
    from training.checkpoint import load_checkpoint  # torch is needed only here

    state = load_checkpoint(checkpoint_path)
    if state.get("method") != "word2vec":
        raise ValueError(f"{checkpoint_path} is a {state.get('method')!r} checkpoint, not word2vec")
    return write_word_vectors_bundle(
        artifacts,
        name,
        vocab=list(state["vocab"]),
        counts=np.asarray(state["counts"]),
        vectors=np.asarray(state["input_vectors"]),
        training_config=state.get("config", {}),
        metrics=metrics if metrics is not None else state.get("metrics", {}),
        source_checkpoint_sha256=sha256_file(Path(checkpoint_path)),
        version=version,
    )
