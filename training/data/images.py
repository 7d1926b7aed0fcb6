"""Images opened one way everywhere: any Pillow image to plain "L" or "RGB", then as datasets.

Torch-free on purpose (Pillow and numpy only): serving reuses `normalize_image` and
`preprocess_image`, so a picture is read identically at training and at serving time.
`preprocess_image` is the reference for the `preprocessing` dict of a bundle manifest
(see training/data/transforms.py: EvalTransform does the same with torchvision).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageOps

from training.data.idx import FASHION_MNIST_MEAN, FASHION_MNIST_STD

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # Pillow opens 16-bit greyscale as one of these
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


@dataclass(frozen=True)
class ImageDataConfig:
    """The fields every vision method's config starts with (SimCLR, MAE and CLIP extend it): where
    the training images come from and how pixels are normalised. The CLI offers them as flat
    options, like the rest of each config."""

    data: str = "fashion-mnist"  # "fashion-mnist", "digits" (tiny, for tests) or an image folder; CLIP: also pair manifests and shards
    data_root: str | None = None  # Fashion-MNIST folder; None = the Debian package's /usr/share/datasets/fashion-mnist
    subset: int | None = None  # train on a fixed random subset of this many images; None = all
    image_size: int = 28  # square input of the network, in pixels
    mode: str = "L"  # "L" (1 channel) or "RGB" (3 channels)
    mean: tuple[float, ...] = FASHION_MNIST_MEAN  # per-channel normalisation, also written to the bundle
    std: tuple[float, ...] = FASHION_MNIST_STD


def normalize_image(img: Image.Image, mode: str = "RGB") -> Image.Image:
    """Return `img` upright, in `mode` ("L" or "RGB"), with any transparency composited on white.

    The steps, in order: EXIF orientation applied; 1-bit -> L; 16-bit ("I;16*", "I") scaled by
    1/257 to 8 bits; float ("F") taken as [0, 1] if its maximum is <= 1 else as [0, 255];
    palette -> RGBA if it has transparency else RGB; CMYK/YCbCr -> RGB (Pillow's conversion);
    RGBA/LA/PA composited on opaque white; finally Pillow's convert to `mode`
    (RGB -> L uses L = 0.299 R + 0.587 G + 0.114 B).
    """
    if mode not in ("L", "RGB"):
        raise ValueError(f"mode must be 'L' or 'RGB', not {mode!r}")
    img = ImageOps.exif_transpose(img)  # a copy, upright; JPEGs from phones are often stored rotated
    if img.mode == "1":
        img = img.convert("L")
    elif img.mode in _SIXTEEN_BIT_MODES or img.mode == "F":
        pixels = np.asarray(img, dtype=np.float64)
        if img.mode != "F":
            pixels = pixels / 257.0  # 65535 -> 255 exactly
        elif pixels.size and pixels.max() <= 1.0:
            pixels = pixels * 255.0
        img = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "L")
    elif img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba).convert("RGB")
    if img.mode != mode:
        try:
            img = img.convert(mode)
        except ValueError as e:
            raise ValueError(f"cannot convert a Pillow image of mode {img.mode!r} to {mode!r}: {e}") from e
    return img


def preprocess_image(img: Image.Image, spec: dict[str, Any]) -> np.ndarray:
    """Apply a bundle's `preprocessing` spec to one image: float32 array (C, crop, crop).

    Exactly: normalize_image(img, spec["mode"]); resize with Pillow BILINEAR so the shorter
    side is spec["resize"] and the longer is int(resize * long / short) (skipped when already
    that size); centre crop spec["crop"] square with top = int(round((H - crop) / 2)) and
    left = int(round((W - crop) / 2)) (Python's round); /255; (x - mean[c]) / std[c].
    """
    if spec.get("interpolation", "bilinear") != "bilinear":
        raise ValueError(f"only bilinear interpolation is supported, not {spec['interpolation']!r}")
    img = normalize_image(img, spec["mode"])
    width, height = img.size
    short, long = min(width, height), max(width, height)
    new_short, new_long = spec["resize"], int(spec["resize"] * long / short)
    new_size = (new_short, new_long) if width <= height else (new_long, new_short)  # (W, H)
    if new_size != img.size:
        img = img.resize(new_size, Image.Resampling.BILINEAR)
    crop = spec["crop"]
    top, left = int(round((img.height - crop) / 2.0)), int(round((img.width - crop) / 2.0))
    img = img.crop((left, top, left + crop, top + crop))
    pixels = np.asarray(img, dtype=np.float32) / 255.0  # (H, W) or (H, W, C)
    pixels = pixels.reshape(crop, crop, -1).transpose(2, 0, 1)  # (C, H, W)
    mean = np.asarray(spec["mean"], dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(spec["std"], dtype=np.float32).reshape(-1, 1, 1)
    return np.ascontiguousarray((pixels - mean) / std, dtype=np.float32)


def to_pil(image: np.ndarray) -> Image.Image:
    """A uint8 array (H, W) or (H, W, 3) as a Pillow image ("L" or "RGB")."""
    return Image.fromarray(np.ascontiguousarray(image), "L" if image.ndim == 2 else "RGB")


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
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist")

        def images_under(folder: Path) -> list[Path]:
            return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in extensions)

        subfolders = sorted(d for d in self.root.iterdir() if d.is_dir())
        self.classes = [d.name for d in subfolders]
        if subfolders:
            self.samples = [(p, label) for label, d in enumerate(subfolders) for p in images_under(d)]
        else:
            self.samples = [(p, -1) for p in images_under(self.root)]
        if not self.samples:
            raise FileNotFoundError(f"no images with extensions {extensions} under {self.root}")

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
        from training.data.idx import DEFAULT_FASHION_MNIST_ROOT, load_fashion_mnist

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
