"""Image data sets for training: in-memory arrays (Fashion-MNIST, scikit-learn's digits) and
image folders, every image opened through runtime.preprocessing.normalize_image, the one reading
of pixels that serving shares (see training/data/transforms.py: EvalTransform computes
runtime.preprocessing.preprocess_image with torchvision).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np
from PIL import Image

from runtime.idx import DEFAULT_FASHION_MNIST_ROOT, FASHION_MNIST_MEAN, FASHION_MNIST_STD, load_fashion_mnist
from runtime.preprocessing import normalize_image
from runtime.sources import IMAGE_EXTENSIONS, list_images, to_pil


@dataclass(frozen=True)
class ImageDataConfig:
    """The fields every vision method's config starts with (SimCLR, MAE and CLIP extend it): where
    the training images come from and how pixels are normalised. The CLI offers them as flat
    options, like the rest of each config."""

    data: str = "fashion-mnist"  # "fashion-mnist", "digits" (tiny, for tests) or an image folder; CLIP: also pair manifests and shards
    data_root: str | None = None  # Fashion-MNIST folder; None = the Debian package's /usr/share/datasets/fashion-mnist
    subset: int | None = None  # train on a fixed random subset of this many images; None = all
    image_size: int = 28  # square input of the network, in pixels
    mode: Literal["L", "RGB"] = "L"  # "L" (1 channel) or "RGB" (3 channels)
    mean: tuple[float, ...] = FASHION_MNIST_MEAN  # per-channel normalisation, also written to the bundle
    std: tuple[float, ...] = FASHION_MNIST_STD


class ArrayImageDataset:
    """Images held in memory as uint8 [N, H, W] or [N, H, W, 3], served as (transform(PIL image), label)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray | None = None, transform: Callable | None = None):
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise ValueError(f"expected uint8 images [N, H, W] or [N, H, W, 3], got {images.dtype} {images.shape}")
        self.images = images
        self.labels = np.full(len(images), -1, np.int64) if labels is None else np.asarray(labels, np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        img = to_pil(self.images[index])
        return (self.transform(img) if self.transform else img), int(self.labels[index])


class ImageFolder:
    """A folder of images: one class per subfolder (label = index in sorted `classes`), or a
    flat folder of unlabeled images (label -1). Every image goes through `normalize_image`."""

    def __init__(self, root: Path | str, mode: str = "RGB", transform: Callable | None = None,
                 extensions: tuple[str, ...] = IMAGE_EXTENSIONS):
        self.root, self.mode, self.transform = Path(root), mode, transform
        self.samples, self.classes = list_images(self.root, extensions)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        with Image.open(path) as opened:
            img = normalize_image(opened, self.mode)
        return (self.transform(img) if self.transform else img), label


def load_digits_images(size: int = 28, digit_size: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 8x8 digits as uint8 [N, size, size] (each digit resized bilinearly to
    digit_size and centred on black, like MNIST) and int64 labels: tiny data for tests."""
    from sklearn.datasets import load_digits  # lazy: only tests and smoke runs need scikit-learn

    digits = load_digits()
    small = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)  # values 0..16 -> 0..255
    pad = (size - digit_size) // 2
    images = np.zeros((len(small), size, size), np.uint8)
    for i, d in enumerate(small):
        images[i, pad:pad + digit_size, pad:pad + digit_size] = np.asarray(
            Image.fromarray(d, "L").resize((digit_size, digit_size), Image.Resampling.BILINEAR))
    return images, digits.target.astype(np.int64)


def load_image_arrays(name: str, split: str = "train", root: Path | str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8, labels int64) of a named in-memory data set: "fashion-mnist" or "digits"
    (digits: a fixed 80/20 train/test split of scikit-learn's digits at 28x28)."""
    if name == "fashion-mnist":
        return load_fashion_mnist(root or DEFAULT_FASHION_MNIST_ROOT, split)
    if name == "digits":
        images, labels = load_digits_images()
        order = np.random.default_rng(0).permutation(len(images))
        cut = int(0.8 * len(images))
        keep = order[:cut] if split == "train" else order[cut:]
        return images[keep], labels[keep]
    raise ValueError(f"unknown image data set {name!r}: use 'fashion-mnist' or 'digits' (or an image folder path)")


def random_subset(count: int, size: int | None, seed: int) -> np.ndarray | None:
    """Sorted indices of a fixed random `size` of `count` items (the same for a given seed), or
    None when `size` is None or covers them all."""
    if size is None or size >= count:
        return None
    return np.sort(np.random.default_rng(seed).choice(count, size, replace=False))


def open_image_dataset(source: str, split: str = "train", mode: str = "L", transform: Callable | None = None,
                       root: Path | str | None = None, subset: int | None = None, seed: int = 0):
    """A training data set by name ("fashion-mnist", "digits") or image folder path, optionally cut
    to a fixed random `subset` of images (the same for a given seed)."""
    if source in ("fashion-mnist", "digits"):
        images, labels = load_image_arrays(source, split, root)
        keep = random_subset(len(images), subset, seed)
        if keep is not None:
            images, labels = images[keep], labels[keep]
        return ArrayImageDataset(images, labels, transform)
    dataset = ImageFolder(source, mode, transform)
    keep = random_subset(len(dataset), subset, seed)
    if keep is not None:
        dataset.samples = [dataset.samples[i] for i in keep]
    return dataset
