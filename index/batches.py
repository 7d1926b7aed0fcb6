"""A batch of a source's items, read and preprocessed for an image encoder: what a job embeds (here
or on a Ray worker), one batch per shard, so an item embeds the same wherever it runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.preprocessing import PreprocessingSpec, preprocess_arrays, preprocess_image
from runtime.sources import ImageSource


@dataclass
class Batch:
    """One shard's worth of source positions, read and preprocessed."""

    number: int
    ids: np.ndarray  # (n,) of the items that could be read
    metadata: list[dict[str, Any]]
    inputs: np.ndarray  # (n, C, H, W)
    errors: dict[int, str]  # position -> why it could not be read


def prepare_batch(source: ImageSource, preprocessing: PreprocessingSpec, number: int, size: int) -> Batch:
    """Shard `number` of `source` (its positions number*size onwards), read and preprocessed: what
    a job embeds, here or on a Ray worker (jobs/ray_runner.py), so an item embeds the same in both."""
    count = source.count
    positions = range(number * size, min((number + 1) * size, count))
    fast = preprocess_arrays(source.arrays(positions), preprocessing) if source.arrays else None
    if fast is not None:  # pixels in memory at the model's size: one vectorised pass, the same numbers
        ids = source.ids[positions.start:positions.stop] if source.ids is not None else np.arange(
            positions.start, positions.stop, dtype=np.int64)
        return Batch(number, ids, [source.metadata(p) for p in positions], fast, {})
    good, inputs, errors = [], [], {}
    for p in positions:
        try:
            inputs.append(preprocess_image(source.read(p), preprocessing))  # (C, H, W)
            good.append(p)
        except (ValueError, OSError) as e:  # unreadable, corrupt, forbidden: recorded, the job goes on
            errors[p] = f"{type(e).__name__}: {e}"
    ids = source.ids[good] if source.ids is not None else np.asarray(good, dtype=np.int64)
    batch = np.stack(inputs) if inputs else np.empty((0, *preprocessing.input_shape), np.float32)
    return Batch(number, ids, [source.metadata(p) for p in good], batch, errors)  # inputs (n, C, H, W)
