"""The per-epoch evaluation of the vision methods: kNN top-1 of the encoder being trained on a
fixed labelled sample (the "kNN monitor" of SimCLR/MoCo training runs), small enough to run
after every epoch; the loop logs it and draws it on the training curves. The labels are the data
set's (Fashion-MNIST, digits) or the user's own: an image folder's class subfolders or a
manifest's category column, scored on the held-out part that training never sees."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from runtime.sources import to_pil
from training.data.captions import FASHION_MNIST_CLASS_NAMES
from training.data.image_defaults import with_data_defaults
from training.data.images import HELD_OUT, NAMED_DATA, load_image_arrays, open_image_dataset, random_subset
from training.data.transforms import EvalTransform
from training.evaluation.knn import knn_accuracy

log = logging.getLogger(__name__)

MONITOR_REFERENCES = 2000  # labelled training images the queries vote over
MONITOR_QUERIES = 1000  # test images classified (held-out training images where there is no test split)
MONITOR_K = 20  # neighbours per vote: fewer than the benchmarks' 200, for so few references
MONITOR_MAX_BYTES = 256 << 20  # the preprocessed images it holds, references and queries: fewer of them at large sizes
CLASS_NAMES = {"fashion-mnist": FASHION_MNIST_CLASS_NAMES}  # the named data sets' classes, as words


class KnnMonitor:
    """kNN top-1 (%) of an encoder on MONITOR_QUERIES images against MONITOR_REFERENCES, both drawn
    once (seeded) from the data `config` trains on and preprocessed as its bundle will be. Data
    without labels (a flat folder, a manifest without categories, shards) give no score."""

    def __init__(self, config: Any, references: int = MONITOR_REFERENCES, queries: int = MONITOR_QUERIES, seed: int = 0):
        self.config, self.references, self.queries, self.seed = config, references, queries, seed
        self._data: tuple[torch.Tensor, np.ndarray, torch.Tensor, np.ndarray] | None = None
        self._available = True  # until loading finds no labelled held-out images
        self.class_names: list[str] | None = None  # the labels as words, where the data names them

    def held_out(self) -> tuple[torch.Tensor, np.ndarray, list[str]] | None:
        """(query images (N, C, H, W), their labels (N,), class names) once loaded, for a score of
        another kind on the same held-out images (CLIP's zero-shot); None without class names."""
        if self._data is None or self.class_names is None:
            return None
        return self._data[2], self._data[3], self.class_names

    def __call__(self, encoder: nn.Module) -> dict[str, float]:
        """{"knn_top1_pct": ...} of `encoder` (preprocessed images (B, C, H, W) -> (B, D)), or {}."""
        if self._available and self._data is None:
            self.config = with_data_defaults(self.config)  # a method hands its own already filled
            self._data = self._load() if self.config.data in NAMED_DATA else self._load_files()
            self._available = self._data is not None
        if not self._available:
            return {}
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

        names = CLASS_NAMES.get(c.data)
        self.class_names = list(names) if names else None
        return prepare(images[reference_ids]), labels[reference_ids], prepare(queries), query_labels

    def _load_files(self) -> tuple[torch.Tensor, np.ndarray, torch.Tensor, np.ndarray] | None:
        """References from the training part of a labelled folder or manifest, queries from its
        held-out part; None (no score, said once in the log) where there are no such labels."""
        c = self.config
        transform = EvalTransform(c.image_size, c.mode, c.mean, c.std)
        try:
            train, held_out = (open_image_dataset(c.data, split, c.mode, transform, c.data_root, None, c.seed,
                                                  c.held_out_fraction) for split in ("train", HELD_OUT))
        except (OSError, ValueError) as e:  # shards, or data that cannot be listed: no labels to score on
            log.info("no per-epoch kNN score: %s", e)
            return None
        if len(held_out) == 0 or len(train.classes) < 2:
            log.info("no per-epoch kNN score: %s has no labelled images to hold out; give it a subfolder per class "
                     "(or a manifest a category column) and a --held-out-fraction above 0", c.data)
            return None
        per_image = 4 * (1 if c.mode == "L" else 3) * c.image_size ** 2  # bytes of one preprocessed image
        room = max(2, MONITOR_MAX_BYTES // per_image)
        rng = np.random.default_rng(self.seed)

        def draw(dataset, count: int) -> tuple[torch.Tensor, np.ndarray]:
            labelled = np.flatnonzero([label >= 0 for _, label in dataset.samples])
            chosen = np.sort(rng.permutation(labelled)[:count])
            return torch.stack([dataset[int(i)][0] for i in chosen]), np.array([dataset.samples[i][1] for i in chosen])

        queries, query_labels = draw(held_out, min(self.queries, room // 3))
        references, reference_labels = draw(train, min(self.references, room - len(queries)))
        self.class_names = [name.replace("_", " ").replace("-", " ") for name in train.classes]
        log.info("per-epoch kNN score: %d held-out images of %s against %d training images, %d classes",
                 len(queries), c.data, len(references), len(train.classes))
        return references, reference_labels, queries, query_labels

    @staticmethod
    def _embed(encoder: nn.Module, images: torch.Tensor, batch_size: int = 512) -> np.ndarray:
        device = next(encoder.parameters()).device
        with torch.inference_mode():
            return torch.cat([encoder(images[i:i + batch_size].to(device)).float().cpu()
                              for i in range(0, len(images), batch_size)]).numpy()  # (N, D)
