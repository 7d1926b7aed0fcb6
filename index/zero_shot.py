"""Zero-shot classification from prompt templates (open_clip's build_zero_shot_classifier, in numpy).

A class's text embedding is the L2-normalised mean of its L2-normalised template embeddings; an
image's class probabilities are the softmax of logit_scale × cosine to each class. Torch-free.

Query-bank normalisation corrects the hubness of classes whose text embedding sits close to many
images: a class seen in training was pulled onto a dense cluster of training images, so it
out-scores any class that training never named, on every image. Each class's cosine is lowered
by its offset c(t), the mean of its k largest cosines to a bank of training-image embeddings:
the hubness penalty of CSLS (Conneau et al. 2018, "Word translation without parallel data"),
measured against a bank of training queries as in querybank normalisation (Bogolin et al.,
CVPR 2022, "Cross Modal Retrieval with Querybank Normalisation"). On the open-vocabulary Fashion-MNIST model it takes
the held-out classes from never chosen to about half right, for a few points on the seen ones
(bench/zero_shot.py). The bank is a model's own: export writes it into the CLIP bundle.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from threading import Lock
from typing import Callable, Hashable, Sequence

import numpy as np

from export.bundle import Bundle

# texts (N) -> embeddings (N, D); normalised or not, build_class_matrix normalises them
EncodeTexts = Callable[[list[str]], np.ndarray]

NORMALIZATIONS = ("querybank", "none")  # what a zero-shot request may ask for
QUERY_BANK_K = 10  # a class's offset averages its k largest cosines to the bank
QUERY_BANK_ROLE = "query_bank"  # the bundle file role of the bank's embeddings


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


def query_bank_offsets(bank: np.ndarray, class_matrix: np.ndarray, k: int = QUERY_BANK_K) -> np.ndarray:
    """(C,) float32: for each class, the mean of its k largest cosines to the N bank images (N, D).
    Subtracted from the class's cosines, it levels classes that sit close to many images."""
    bank = _unit_rows(np.asarray(bank, dtype=np.float64))  # (N, D)
    if bank.ndim != 2 or bank.shape[1] != class_matrix.shape[1]:
        raise ValueError(f"query bank {bank.shape} does not match the class matrix {class_matrix.shape}")
    if not 1 <= k <= len(bank):
        raise ValueError(f"k={k} must be between 1 and the bank's {len(bank)} images")
    cosines = bank @ np.asarray(class_matrix, dtype=np.float64).T  # (N, C)
    top = np.partition(cosines, len(bank) - k, axis=0)[len(bank) - k:]  # (k, C): each class's k largest
    return top.mean(axis=0).astype(np.float32)  # (C,)


def classify(image_embeddings: np.ndarray, class_matrix: np.ndarray, logit_scale: float = 100.0,
             offsets: np.ndarray | None = None) -> np.ndarray:
    """(B, C) class probabilities: softmax over classes of logit_scale × (cosine(image, class) −
    offset(class)); no offsets (None) is plain CLIP, query_bank_offsets gives query-bank normalisation."""
    images = _unit_rows(np.asarray(image_embeddings, dtype=np.float64))  # (B, D)
    if images.ndim != 2 or images.shape[1] != class_matrix.shape[1]:
        raise ValueError(f"image embeddings {images.shape} do not match the class matrix {class_matrix.shape}")
    scores = images @ np.asarray(class_matrix, dtype=np.float64).T  # (B, C) cosines
    if offsets is not None:
        if np.shape(offsets) != (len(class_matrix),):
            raise ValueError(f"offsets {np.shape(offsets)} do not match the class matrix's {len(class_matrix)} classes")
        scores -= np.asarray(offsets, dtype=np.float64)  # (B, C)
    logits = logit_scale * scores  # (B, C)
    logits -= logits.max(axis=1, keepdims=True)  # softmax without overflow
    probabilities = np.exp(logits)
    return (probabilities / probabilities.sum(axis=1, keepdims=True)).astype(np.float32)


@dataclass(frozen=True)
class QueryBank:
    """A model's query bank: image embeddings of its training images and the k of the offsets."""

    embeddings: np.ndarray  # (N, D) float32, unit rows from the model's image tower
    k: int = QUERY_BANK_K  # each class's offset averages its k largest cosines to the bank

    def offsets(self, class_matrix: np.ndarray) -> np.ndarray:
        return query_bank_offsets(self.embeddings, class_matrix, self.k)  # (C,)


def read_query_bank(bundle: Bundle) -> QueryBank | None:
    """The bank a CLIP bundle holds (file role "query_bank", k in manifest.extra["query_bank"]),
    or None for a bundle exported without one."""
    if QUERY_BANK_ROLE not in bundle.manifest.files:
        return None
    k = int(bundle.manifest.extra.get(QUERY_BANK_ROLE, {}).get("k", QUERY_BANK_K))
    return QueryBank(np.load(bundle.file(QUERY_BANK_ROLE)).astype(np.float32), k)


class ClassMatrixCache:
    """A small LRU of class matrices keyed by (model name, version, classes, templates): building
    one costs a text-encoder pass over every prompt, and callers ask for the same lists again.
    Each entry also remembers its query-bank offsets once asked for: a model version has one bank,
    so the key that fixes the matrix fixes them too."""

    def __init__(self, max_entries: int = 32):
        self.max_entries = max_entries
        # key -> (class matrix (C, D), query-bank offsets (C,) or None until first asked for)
        self._entries: OrderedDict[Hashable, tuple[np.ndarray, np.ndarray | None]] = OrderedDict()
        self._lock = Lock()

    @staticmethod
    def key(model: str, version: str, class_names: Sequence[str], templates: Sequence[str]) -> tuple:
        return (model, version, tuple(class_names), tuple(templates))

    def get(self, model: str, version: str, class_names: Sequence[str], templates: Sequence[str],
            encode_texts: EncodeTexts, query_bank: QueryBank | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """(class matrix (C, D), offsets (C,) or None): the cached matrix, or one built now with
        `encode_texts` and remembered; with `query_bank` (the model's), also its offsets for the
        matrix, computed on first use and remembered beside it. Without one, offsets are None."""
        key = self.key(model, version, class_names, templates)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
        matrix, offsets = entry or (None, None)
        missing_offsets = query_bank is not None and offsets is None
        if matrix is None or missing_offsets:
            if matrix is None:
                matrix = build_class_matrix(encode_texts, class_names, templates)  # outside the lock: it is slow
            if missing_offsets:
                offsets = query_bank.offsets(matrix)  # (C,)
            self._remember(key, matrix, offsets)
        return matrix, offsets if query_bank is not None else None

    def _remember(self, key: Hashable, matrix: np.ndarray, offsets: np.ndarray | None) -> None:
        with self._lock:
            if offsets is None and key in self._entries:
                offsets = self._entries[key][1]  # another request's offsets for this key: keep them
            self._entries[key] = (matrix, offsets)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
