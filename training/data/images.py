"""Image data sets for training: in-memory arrays (Fashion-MNIST, scikit-learn's digits) and
image folders, every image opened through runtime.preprocessing.normalize_image, the one reading
of pixels that serving shares (see training/data/transforms.py: EvalTransform computes
runtime.preprocessing.preprocess_image with torchvision).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np
from PIL import Image

from runtime.fashion_mnist import DEFAULT_FASHION_MNIST_ROOT, load_fashion_mnist
from runtime.preprocessing import MODES, normalize_image
from runtime.sources import IMAGE_EXTENSIONS, list_images, to_pil
from training.data.pairs import MANIFEST_TYPES, category_labels, is_pairs_source, read_manifest_rows, relative_key

NAMED_DATA = ("fashion-mnist", "digits")  # the in-memory data sets, each with a test split of its own
HELD_OUT = "held-out"  # the split of a labelled folder or manifest that training never sees


@dataclass(frozen=True)
class ImageDataConfig:
    """The fields every vision method's config starts with (SimCLR, MAE and CLIP extend it): where
    the training images come from and how pixels are normalised. The CLI offers them as flat
    options, like the rest of each config. Those left None are taken from the data before training
    (training.data.image_defaults.with_data_defaults), and the checkpoint records what was taken."""

    data: str = "fashion-mnist"  # "fashion-mnist", "digits" (tiny, for tests), an image folder (a class per subfolder) or a path,caption[,category] manifest (.csv/.jsonl); CLIP: also .tar shards
    data_root: str | None = None  # Fashion-MNIST folder; None = the Debian package's /usr/share/datasets/fashion-mnist
    subset: int | None = None  # train on a fixed random subset of this many images; None = all
    image_size: int | None = None  # square input of the network, in pixels; None = 28 for Fashion-MNIST and digits, else by the images (at most 64)
    mode: Literal["L", "RGB"] | None = None  # "L" (1 channel) or "RGB" (3 channels); None = RGB where sampled images have colour
    mean: tuple[float, ...] | None = None  # per-channel normalisation, comma-separated; None = measured on a sample of the data; written to the bundle
    std: tuple[float, ...] | None = None  # per-channel standard deviation, comma-separated; None = measured with the mean
    held_out_fraction: float = 0.1  # share of a labelled folder's or manifest's images kept out of training and scored on after each epoch; 0 = train on all

    def __post_init__(self) -> None:
        check_image_options(self)
        if hasattr(super(), "__post_init__"):  # a method config's next base: the loop's checks
            super().__post_init__()


def check_image_options(config: ImageDataConfig) -> None:
    """ValueError naming the option to change, for image options that cannot work together: checked
    when a config is made, so a mistake is reported before any data is read or step taken."""
    if config.mode is not None and config.mode not in MODES:
        raise ValueError(f"--mode must be one of {', '.join(MODES)}, not {config.mode!r}")
    if config.image_size is not None and not 8 <= config.image_size <= 1024:
        raise ValueError(f"--image-size must be between 8 and 1024 pixels, not {config.image_size}")
    if (config.mean is None) != (config.std is None):
        raise ValueError("give --mean and --std together (or neither, to measure both on the data)")
    if config.mean is not None:
        if len(config.mean) != len(config.std):
            raise ValueError(f"--mean has {len(config.mean)} value(s) but --std has {len(config.std)}; give one per channel")
        if config.mode is not None and len(config.mean) != (channels := 1 if config.mode == "L" else 3):
            raise ValueError(f"--mode {config.mode} has {channels} channel(s) but --mean/--std have {len(config.mean)} "
                             f"value(s); give {channels} comma-separated values each, or leave both out to measure them")
        if len(config.mean) not in (1, 3):
            raise ValueError(f"--mean/--std need 1 value (grey) or 3 (colour), not {len(config.mean)}")
        if any(s <= 0 for s in config.std):
            raise ValueError(f"--std values must be positive, not {config.std}")
    if config.subset is not None and config.subset < 1:
        raise ValueError(f"--subset must be at least 1, not {config.subset}")
    if not 0.0 <= config.held_out_fraction < 1.0:
        raise ValueError(f"--held-out-fraction must be at least 0 and below 1, not {config.held_out_fraction}")


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

    @classmethod
    def from_manifest(cls, manifest: Path | str, mode: str = "RGB", transform: Callable | None = None) -> ImageFolder:
        """The images a path,caption[,category] manifest lists, labelled by category (-1 where a row
        names none; `classes` sorted); captions are left out."""
        rows = read_manifest_rows(manifest)
        dataset = cls.__new__(cls)
        dataset.root, dataset.mode, dataset.transform = Path(manifest).parent, mode, transform
        labels, dataset.classes = category_labels([category for *_, category in rows])
        dataset.samples = [(path, label) for (path, *_), label in zip(rows, labels)]
        return dataset

    def keys(self) -> list[str]:
        """Each image's path relative to the folder (or manifest), what the held-out split hashes."""
        return [relative_key(path, self.root) for path, _ in self.samples]

    def keep(self, positions: Sequence[int]) -> None:
        """Keep only the images at `positions`, in their order."""
        self.samples = [self.samples[i] for i in positions]

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


def held_out_mask(keys: Sequence[str], fraction: float) -> np.ndarray:
    """bool (N,): True for the items kept out of training, about `fraction` of them, chosen by a
    hash of each item's key (its relative path), so an item stays on its side of the split
    whatever else is added, removed or reordered, and whatever the seed."""
    if fraction <= 0:
        return np.zeros(len(keys), bool)
    draws = [int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8).digest(), "big") / 2**64 for k in keys]
    return np.asarray(draws) < fraction


def split_positions(keys: Sequence[str], labels: Sequence[int], split: str, fraction: float) -> np.ndarray:
    """Positions of the training part ("train") or the held-out part (HELD_OUT or "test") of items
    with these keys and labels (-1: none). Only labelled items of data with two or more classes are
    held out; otherwise "train" is every item and the held-out part is empty."""
    labels = np.asarray(labels, dtype=np.int64)
    labelled = len(set(labels[labels >= 0].tolist())) >= 2
    held_out = held_out_mask(keys, fraction if labelled else 0.0) & (labels >= 0)
    if split == "train":
        return np.flatnonzero(~held_out)
    if split in (HELD_OUT, "test"):
        return np.flatnonzero(held_out)
    raise ValueError(f"unknown split {split!r}: use 'train' or {HELD_OUT!r}")


def random_subset(count: int, size: int | None, seed: int) -> np.ndarray | None:
    """Sorted indices of a fixed random `size` of `count` items (the same for a given seed), or
    None when `size` is None or covers them all."""
    if size is None or size >= count:
        return None
    return np.sort(np.random.default_rng(seed).choice(count, size, replace=False))


def open_image_dataset(source: str, split: str = "train", mode: str = "L", transform: Callable | None = None,
                       root: Path | str | None = None, subset: int | None = None, seed: int = 0,
                       held_out_fraction: float = 0.0):
    """A data set of (transform(image), label) by name ("fashion-mnist", "digits"), image folder or
    path,caption[,category] manifest, optionally cut to a fixed random `subset` of images (the same
    for a given seed). A labelled folder or manifest is split by `held_out_fraction`
    (split_positions): "train" is the part training sees, HELD_OUT (or "test") the rest."""
    if source in NAMED_DATA:
        images, labels = load_image_arrays(source, split, root)
        keep = random_subset(len(images), subset, seed)
        if keep is not None:
            images, labels = images[keep], labels[keep]
        return ArrayImageDataset(images, labels, transform)
    manifest = Path(source).suffix.lower() in MANIFEST_TYPES
    if is_pairs_source(source) and not manifest:
        raise ValueError(f"{source}: WebDataset shards carry captions, not labels; train CLIP on them, or give "
                         "an image folder or a path,caption[,category] manifest")
    dataset = ImageFolder.from_manifest(source, mode, transform) if manifest else ImageFolder(source, mode, transform)
    dataset.keep(split_positions(dataset.keys(), [label for _, label in dataset.samples], split, held_out_fraction))
    keep = random_subset(len(dataset), subset, seed)
    if keep is not None:
        dataset.keep(keep)
    return dataset
