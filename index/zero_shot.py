"""Zero-shot classification from prompt templates (open_clip's build_zero_shot_classifier, in numpy).

A class's text embedding is the L2-normalised mean of its L2-normalised template embeddings; an
image's class probabilities are the softmax of logit_scale × cosine to each class. Torch-free.
"""

from __future__ import annotations

from collections import OrderedDict
from threading import Lock
from typing import Callable, Hashable, Sequence

import numpy as np

# texts (N) -> embeddings (N, D); normalised or not, build_class_matrix normalises them
EncodeTexts = Callable[[list[str]], np.ndarray]


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def build_class_matrix(encode_texts: EncodeTexts, class_names: Sequence[str], templates: Sequence[str]) -> np.ndarray:
    """(C, D) float32: row c is the normalised mean over templates of the normalised embedding of
    template.format(class_names[c]). All C × K prompts go through `encode_texts` in one call."""
    if not class_names or not templates:
        raise ValueError("need at least one class name and one template")
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise ValueError(f"templates need a '{{}}' for the class name: {bad}")
    prompts = [t.format(name) for name in class_names for t in templates]
    embeddings = np.asarray(encode_texts(prompts), dtype=np.float64)  # (C * K, D)
    if embeddings.ndim != 2 or len(embeddings) != len(prompts):
        raise ValueError(f"encode_texts returned shape {embeddings.shape} for {len(prompts)} prompts")
    per_template = _unit_rows(embeddings).reshape(len(class_names), len(templates), -1)  # (C, K, D)
    return _unit_rows(per_template.mean(axis=1)).astype(np.float32)  # (C, D)


def classify(image_embeddings: np.ndarray, class_matrix: np.ndarray, logit_scale: float = 100.0) -> np.ndarray:
    """(B, C) class probabilities: softmax over classes of logit_scale × cosine(image, class)."""
    images = _unit_rows(np.asarray(image_embeddings, dtype=np.float64))  # (B, D)
    if images.ndim != 2 or images.shape[1] != class_matrix.shape[1]:
        raise ValueError(f"image embeddings {images.shape} do not match the class matrix {class_matrix.shape}")
    logits = logit_scale * images @ np.asarray(class_matrix, dtype=np.float64).T  # (B, C)
    logits -= logits.max(axis=1, keepdims=True)  # softmax without overflow
    probabilities = np.exp(logits)
    return (probabilities / probabilities.sum(axis=1, keepdims=True)).astype(np.float32)


class ClassMatrixCache:
    """A small LRU of class matrices keyed by (model name, version, classes, templates): building
    one costs a text-encoder pass over every prompt, and callers ask for the same lists again."""

    def __init__(self, max_entries: int = 32):
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._lock = Lock()

    @staticmethod
    def key(model: str, version: str, class_names: Sequence[str], templates: Sequence[str]) -> tuple:
        return (model, version, tuple(class_names), tuple(templates))

    def get(self, model: str, version: str, class_names: Sequence[str], templates: Sequence[str],
            encode_texts: EncodeTexts) -> np.ndarray:
        """The cached matrix, or one built now with `encode_texts` and remembered."""
        key = self.key(model, version, class_names, templates)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        matrix = build_class_matrix(encode_texts, class_names, templates)  # outside the lock: it is slow
        with self._lock:
            self._entries[key] = matrix
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return matrix

    def __len__(self) -> int:
        return len(self._entries)
