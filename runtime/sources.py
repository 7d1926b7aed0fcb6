"""Where images to embed come from: a Fashion-MNIST split or a folder of image files, read one
by one with a metadata record each, so an index (and the job that re-embeds it) can say where
every item came from. Torch-free: index builds and jobs read images here, training reads its
folders through `list_images` too."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from runtime.idx import DEFAULT_FASHION_MNIST_ROOT, FASHION_MNIST_CLASSES, load_fashion_mnist
from runtime.preprocessing import ImageLimits, decode_image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
FASHION_MNIST_PREFIX = "fashion-mnist:"


class SourceError(ValueError):
    """A source that names nothing readable; the message says what sources look like."""


@dataclass(frozen=True)
class ImageSource:
    """`count` images, read lazily by `read(position)`, with one metadata dict each."""

    description: str  # what an index manifest records as the source
    count: int
    read: Callable[[int], Image.Image]  # position -> decoded image
    metadata: Callable[[int], dict[str, Any]]  # position -> metadata


def list_images(root: Path | str, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> tuple[list[tuple[Path, int]], list[str]]:
    """(samples, classes) of an image folder: one class per subfolder (label = index in sorted
    `classes`), or a flat folder of unlabeled images (label -1). Files sorted, so positions are stable."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")

    def images_under(folder: Path) -> list[Path]:
        return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in extensions)

    subfolders = sorted(d for d in root.iterdir() if d.is_dir())
    if subfolders:
        samples = [(p, label) for label, d in enumerate(subfolders) for p in images_under(d)]
    else:
        samples = [(p, -1) for p in images_under(root)]
    if not samples:
        raise FileNotFoundError(f"no images with extensions {extensions} under {root}")
    return samples, [d.name for d in subfolders]


def to_pil(image: np.ndarray) -> Image.Image:
    """A uint8 array (H, W) or (H, W, 3) as a Pillow image ("L" or "RGB")."""
    return Image.fromarray(np.ascontiguousarray(image), "L" if image.ndim == 2 else "RGB")


def folder_source(root: Path, limits: ImageLimits = ImageLimits()) -> ImageSource:
    """Every image under `root`, recursively; metadata = path relative to root and class folder.
    Each file is decoded with the same checks as an upload (`limits`), so a bomb or a corrupt
    file fails with a message naming it."""
    root = Path(root)
    samples, classes = list_images(root)

    def read(position: int) -> Image.Image:
        path = samples[position][0]
        try:
            return decode_image(path.read_bytes(), limits)
        except ValueError as e:
            raise type(e)(f"{path}: {e}") from e

    def metadata(position: int) -> dict[str, Any]:
        path, label = samples[position]
        return {"path": path.relative_to(root).as_posix(), "class": classes[label] if label >= 0 else None}

    return ImageSource(str(root.resolve()), len(samples), read, metadata)


def fashion_mnist_source(split: str, root: Path = DEFAULT_FASHION_MNIST_ROOT) -> ImageSource:
    """Fashion-MNIST's "train" or "test" split; metadata = split, position, label and class name."""
    images, labels = load_fashion_mnist(root, split)  # (N, 28, 28) uint8, (N,)

    def metadata(position: int) -> dict[str, Any]:
        label = int(labels[position])
        return {"split": split, "position": position, "label": label, "class": FASHION_MNIST_CLASSES[label]}

    return ImageSource(f"{FASHION_MNIST_PREFIX}{split}", len(images), lambda position: to_pil(images[position]), metadata)


def open_source(source: str | Path, limits: ImageLimits = ImageLimits()) -> ImageSource:
    """"fashion-mnist:train", "fashion-mnist:test", or a folder of images."""
    text = str(source)
    if text.startswith(FASHION_MNIST_PREFIX):
        split = text[len(FASHION_MNIST_PREFIX):]
        if split not in ("train", "test"):
            raise SourceError(f"source {text!r}: the Fashion-MNIST splits are fashion-mnist:train and fashion-mnist:test")
        return fashion_mnist_source(split)
    if not Path(text).is_dir():
        raise SourceError(f"image source {text!r} is neither a folder nor fashion-mnist:train / fashion-mnist:test")
    return folder_source(Path(text), limits)
