"""The image options a config leaves None, taken from the data: colour or grey, the input size, and
the per-channel mean and std, from one bounded pass over a seeded sample of the training images.
So a folder of colour photos trains in colour, at a size that suits it, normalised by its own
statistics; what was taken is logged and, through the checkpoint, written to the bundle.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from runtime.fashion_mnist import FASHION_MNIST_MEAN, FASHION_MNIST_STD
from training.data.images import ImageDataConfig, open_image_dataset, random_subset
from training.data.pairs import MANIFEST_TYPES, is_pairs_source, open_pairs
from training.data.transforms import EvalTransform

log = logging.getLogger(__name__)

MEASURE_IMAGES = 256  # images decoded to choose mode and size and to measure mean and std: bounds the pass
LARGEST_DEFAULT_SIZE = 64  # the default input of images larger than this: trains on a CPU in minutes; --image-size for more
SMALLEST_DEFAULT_SIZE = 16  # below this a network sees too little of an image
COLOUR_LEVELS = 2.0  # an image whose channels differ by more than this on average (0-255 levels) has colour

C = TypeVar("C", bound=ImageDataConfig)


def _default_size(shorter_sides: list[int]) -> int:
    """The median shorter side of the sampled images, capped at LARGEST_DEFAULT_SIZE and rounded
    down to a multiple of 4 (patch sizes divide it), so small images are not blown up."""
    median = int(np.median(shorter_sides))
    return max(SMALLEST_DEFAULT_SIZE, min(LARGEST_DEFAULT_SIZE, median) // 4 * 4)


def _has_colour(img) -> bool:
    if img.mode != "RGB":  # in-memory data sets hand over their own greyscale images
        return False
    pixels = np.asarray(img, dtype=np.int16)  # (H, W, 3)
    spread = np.abs(pixels[..., 0] - pixels[..., 1]).mean() + np.abs(pixels[..., 1] - pixels[..., 2]).mean()
    return float(spread) > COLOUR_LEVELS


def with_data_defaults(config: C) -> C:
    """`config` with image_size, mode, mean and std filled where None, from MEASURE_IMAGES seeded
    training images (the held-out part excluded); unchanged when all four are set. Fashion-MNIST
    keeps its published mean and std. Raises what opening the data raises."""
    if None not in (config.image_size, config.mode, config.mean, config.std):
        return config
    if is_pairs_source(config.data) and Path(config.data).suffix.lower() not in MANIFEST_TYPES:  # CLIP's shards
        dataset = open_pairs(config.data, "RGB")
    else:
        dataset = open_image_dataset(config.data, "train", "RGB", None, config.data_root, config.subset, config.seed,
                                     config.held_out_fraction)
    chosen = random_subset(len(dataset), MEASURE_IMAGES, config.seed)
    images = [dataset[int(i)][0] for i in (range(len(dataset)) if chosen is None else chosen)]  # Pillow images, RGB from files
    coloured = sum(_has_colour(img) for img in images)
    mode = config.mode or ("RGB" if coloured else "L")
    size = config.image_size or _default_size([min(img.size) for img in images])
    mean, std = config.mean, config.std
    if mean is None and config.data == "fashion-mnist" and mode == "L":
        mean, std = FASHION_MNIST_MEAN, FASHION_MNIST_STD  # the data set's own, as every earlier run used
    elif mean is None:
        channels = 1 if mode == "L" else 3
        to_tensor = EvalTransform(size, mode, (0.0,) * channels, (1.0,) * channels)  # as training sees them, un-normalised
        pixels = torch.stack([to_tensor(img) for img in images]).transpose(0, 1).reshape(channels, -1)  # (C, N*H*W)
        mean = tuple(round(float(m), 4) for m in pixels.mean(1))
        std = tuple(round(max(float(s), 1e-3), 4) for s in pixels.std(1))
    resolved = dataclasses.replace(config, image_size=size, mode=mode, mean=mean, std=std)
    taken = {"--mode": (config.mode, f"{mode} ({coloured} of {len(images)} sampled images have colour)"),
             "--image-size": (config.image_size, f"{size} px (the sampled images' median shorter side, at most "
                                                 f"{LARGEST_DEFAULT_SIZE})"),
             "--mean/--std": (config.mean, f"{','.join(map(str, mean))} / {','.join(map(str, std))}")}
    chosen_here = [f"{flag} {what}" for flag, (given, what) in taken.items() if given is None]
    log.info("from the data %s: %s; give the option to choose otherwise", config.data, "; ".join(chosen_here))
    return resolved
