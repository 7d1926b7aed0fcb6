"""The per-epoch evaluation of the vision methods: kNN top-1 of the encoder being trained on a
fixed labelled sample (the "kNN monitor" of SimCLR/MoCo training runs), small enough to run
after every epoch; the loop logs it and draws it on the training curves."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from runtime.sources import to_pil
from training.data.images import load_image_arrays, random_subset
from training.data.transforms import EvalTransform
from training.evaluation.knn import knn_accuracy

log = logging.getLogger(__name__)

MONITOR_REFERENCES = 2000  # labelled training images the queries vote over
MONITOR_QUERIES = 1000  # test images classified (held-out training images where there is no test split)
MONITOR_K = 20  # neighbours per vote: fewer than the benchmarks' 200, for so few references
LABELLED_DATA = ("fashion-mnist", "digits")  # the data sets whose labels are at hand here


class KnnMonitor:
    """kNN top-1 (%) of an encoder on MONITOR_QUERIES images against MONITOR_REFERENCES, both drawn
    once (seeded) from the data `config` trains on and preprocessed as its bundle will be. Data
    without labels here (image folders, caption manifests) give no score."""

    def __init__(self, config: Any, references: int = MONITOR_REFERENCES, queries: int = MONITOR_QUERIES, seed: int = 0):
        self.config, self.references, self.queries, self.seed = config, references, queries, seed
        self._data: tuple[torch.Tensor, np.ndarray, torch.Tensor, np.ndarray] | None = None
        self._available = config.data in LABELLED_DATA

    def __call__(self, encoder: nn.Module) -> dict[str, float]:
        """{"knn_top1_pct": ...} of `encoder` (preprocessed images (B, C, H, W) -> (B, D)), or {}."""
        if not self._available:
            return {}
        if self._data is None:
            self._data = self._load()
        references, reference_labels, queries, query_labels = self._data
        was_training = encoder.training
        encoder.eval()
        try:
            train_x, test_x = self._embed(encoder, references), self._embed(encoder, queries)
        finally:
            encoder.train(was_training)
        return {"knn_top1_pct": knn_accuracy(train_x, reference_labels, test_x, query_labels, k=MONITOR_K)}

    def _load(self) -> tuple[torch.Tensor, np.ndarray, torch.Tensor, np.ndarray]:
        c = self.config
        images, labels = load_image_arrays(c.data, "train", c.data_root)
        rng = np.random.default_rng(self.seed)
        try:
            test_images, test_labels = load_image_arrays(c.data, "test", c.data_root)
            query_ids = random_subset(len(test_images), self.queries, self.seed)
            query_ids = np.arange(len(test_images)) if query_ids is None else query_ids
            queries, query_labels = test_images[query_ids], test_labels[query_ids]
            reference_ids = np.sort(rng.permutation(len(images))[:self.references])
        except OSError:  # a training split alone (a partial copy): hold out some of its images
            order = rng.permutation(len(images))
            cut = max(1, len(order) - min(self.queries, len(order) // 2))
            reference_ids, query_ids = np.sort(order[:cut][:self.references]), np.sort(order[cut:])
            queries, query_labels = images[query_ids], labels[query_ids]
        transform = EvalTransform(c.image_size, c.mode, c.mean, c.std)

        def prepare(array: np.ndarray) -> torch.Tensor:
            return torch.stack([transform(to_pil(im)) for im in array])  # (N, C, H, W)

        return prepare(images[reference_ids]), labels[reference_ids], prepare(queries), query_labels

    @staticmethod
    def _embed(encoder: nn.Module, images: torch.Tensor, batch_size: int = 512) -> np.ndarray:
        device = next(encoder.parameters()).device
        with torch.inference_mode():
            return torch.cat([encoder(images[i:i + batch_size].to(device)).float().cpu()
                              for i in range(0, len(images), batch_size)]).numpy()  # (N, D)
