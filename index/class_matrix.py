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

import asyncio
from collections import OrderedDict
from dataclasses import dataclass
from typing import Awaitable, Callable, Hashable, Sequence

import numpy as np

from runtime.bundle import QUERY_BANK_K, QUERY_BANK_ROLE, Bundle
from runtime.vectors import unit_rows

# texts (N) -> embeddings (N, D); normalised or not, the class matrix normalises them
EncodeTexts = Callable[[list[str]], np.ndarray]
AsyncEncodeTexts = Callable[[list[str]], Awaitable[np.ndarray]]  # the same, awaited (a server's batcher)

NORMALIZATIONS = ("querybank", "none")  # what a zero-shot request may ask for


def prompts_for(class_names: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Every prompt of a class matrix, class by class and template by template (C * K)."""
    if not class_names or not templates:
        raise ValueError("need at least one class name and one template")
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise ValueError(f"templates need a '{{}}' for the class name: {bad}")
    return [t.format(name) for name in class_names for t in templates]


def class_matrix_from_embeddings(embeddings: np.ndarray, classes: int, templates: int) -> np.ndarray:
    """(C, D) float32 from the (C * K, D) embeddings of `prompts_for`: row c is the normalised mean
    over templates of the normalised embedding of each of class c's prompts."""
    embeddings = np.asarray(embeddings, dtype=np.float64)  # (C * K, D)
    if embeddings.ndim != 2 or len(embeddings) != classes * templates:
        raise ValueError(f"got embeddings of shape {embeddings.shape} for {classes * templates} prompts")
    per_template = unit_rows(embeddings, np.float64).reshape(classes, templates, -1)  # (C, K, D)
    return unit_rows(per_template.mean(axis=1), np.float64).astype(np.float32)  # (C, D)


def build_class_matrix(encode_texts: EncodeTexts, class_names: Sequence[str], templates: Sequence[str]) -> np.ndarray:
    """(C, D) float32: row c is the normalised mean over templates of the normalised embedding of
    template.format(class_names[c]). All C × K prompts go through `encode_texts` in one call."""
    prompts = prompts_for(class_names, templates)
    return class_matrix_from_embeddings(encode_texts(prompts), len(class_names), len(templates))


def query_bank_offsets(bank: np.ndarray, class_matrix: np.ndarray, k: int = QUERY_BANK_K) -> np.ndarray:
    """(C,) float32: for each class, the mean of its k largest cosines to the N bank images (N, D).
    Subtracted from the class's cosines, it levels classes that sit close to many images."""
    bank = unit_rows(bank, np.float64)  # (N, D)
    if bank.ndim != 2 or bank.shape[1] != class_matrix.shape[1]:
        raise ValueError(f"query bank {bank.shape} does not match the class matrix {class_matrix.shape}")
    if not 1 <= k <= len(bank):
        raise ValueError(f"k={k} must be between 1 and the bank's {len(bank)} images")
    cosines = bank @ np.asarray(class_matrix, dtype=np.float64).T  # (N, C)
    top = np.partition(cosines, len(bank) - k, axis=0)[len(bank) - k:]  # (k, C): each class's k largest
    return top.mean(axis=0).astype(np.float32)  # (C,)


def class_scores(image_embeddings: np.ndarray, class_matrix: np.ndarray,
                 offsets: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(cosines, scores), each (B, C) float64: cosine(image, class), and what the softmax ranks,
    cosine − offset(class); no offsets (None) is plain CLIP, query_bank_offsets gives query-bank
    normalisation."""
    images = unit_rows(image_embeddings, np.float64)  # (B, D)
    if images.ndim != 2 or images.shape[1] != class_matrix.shape[1]:
        raise ValueError(f"image embeddings {images.shape} do not match the class matrix {class_matrix.shape}")
    cosines = images @ np.asarray(class_matrix, dtype=np.float64).T  # (B, C)
    if offsets is None:
        return cosines, cosines
    if np.shape(offsets) != (len(class_matrix),):
        raise ValueError(f"offsets {np.shape(offsets)} do not match the class matrix's {len(class_matrix)} classes")
    return cosines, cosines - np.asarray(offsets, dtype=np.float64)  # (B, C), (B, C)


def class_probabilities(scores: np.ndarray, logit_scale: float = 100.0) -> np.ndarray:
    """(B, C) float32: softmax over classes of logit_scale × `scores` (B, C) from class_scores."""
    logits = logit_scale * scores  # (B, C)
    logits = logits - logits.max(axis=1, keepdims=True)  # softmax without overflow
    probabilities = np.exp(logits)
    return (probabilities / probabilities.sum(axis=1, keepdims=True)).astype(np.float32)


def classify(image_embeddings: np.ndarray, class_matrix: np.ndarray, logit_scale: float = 100.0,
             offsets: np.ndarray | None = None) -> np.ndarray:
    """(B, C) class probabilities: class_probabilities of class_scores."""
    return class_probabilities(class_scores(image_embeddings, class_matrix, offsets)[1], logit_scale)


@dataclass(frozen=True)
class QueryBank:
    """A model's query bank: image embeddings of its training images and the k of the offsets."""

    embeddings: np.ndarray  # (N, D) float32, unit rows from the model's image tower
    k: int = QUERY_BANK_K  # each class's offset averages its k largest cosines to the bank

    def offsets(self, class_matrix: np.ndarray) -> np.ndarray:
        return query_bank_offsets(self.embeddings, class_matrix, self.k)  # (C,)


def read_query_bank(bundle: Bundle) -> QueryBank | None:
    """The bank a CLIP bundle holds (file role "query_bank", described by manifest.query_bank),
    or None for a bundle exported without one."""
    if QUERY_BANK_ROLE not in bundle.manifest.files:
        return None
    k = bundle.manifest.query_bank.k if bundle.manifest.query_bank else QUERY_BANK_K
    return QueryBank(np.load(bundle.file(QUERY_BANK_ROLE), allow_pickle=False).astype(np.float32), k)


class ClassMatrixCache:
    """A small LRU of class matrices keyed by (model name, version, classes, templates): building
    one costs a text-encoder pass over every prompt, and callers ask for the same lists again.
    Each entry also remembers its query-bank offsets once asked for: a model version has one bank,
    so the key that fixes the matrix fixes them too. Used from one event loop."""

    def __init__(self, max_entries: int = 32):
        self.max_entries = max_entries
        # key -> (class matrix (C, D), query-bank offsets (C,) or None until first asked for)
        self._entries: OrderedDict[Hashable, tuple[np.ndarray, np.ndarray | None]] = OrderedDict()

    @staticmethod
    def key(model: str, version: str, class_names: Sequence[str], templates: Sequence[str]) -> tuple:
        return (model, version, tuple(class_names), tuple(templates))

    async def get(self, model: str, version: str, class_names: Sequence[str], templates: Sequence[str],
                  encode_texts: AsyncEncodeTexts, query_bank: QueryBank | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """(class matrix (C, D), offsets (C,) or None): the cached matrix, or one built now by
        awaiting `encode_texts` on every prompt; with `query_bank` (the model's), also its offsets
        for the matrix, computed (in a thread: a bank x classes product) on first use and
        remembered beside it. Without one, offsets are None."""
        key = self.key(model, version, class_names, templates)
        matrix, offsets = self._entries.get(key, (None, None))
        if matrix is None:
            embeddings = await encode_texts(prompts_for(class_names, templates))  # (C * K, D)
            matrix = class_matrix_from_embeddings(embeddings, len(class_names), len(templates))
        if query_bank is not None and offsets is None:
            offsets = await asyncio.to_thread(query_bank.offsets, matrix)  # (C,)
        self._remember(key, matrix, offsets)
        return matrix, offsets if query_bank is not None else None

    def _remember(self, key: Hashable, matrix: np.ndarray, offsets: np.ndarray | None) -> None:
        if offsets is None and key in self._entries:
            offsets = self._entries[key][1]  # another request's offsets for this key: keep them
        self._entries[key] = (matrix, offsets)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
