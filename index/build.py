"""Build an image index: embed every image of a source with a model's current bundle and save a
VectorIndex. Images go through the server's own path (decode_image, preprocess_batch, load_encoder),
so an indexed image and the same file sent to /search embed identically. Torch-free.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image
from tqdm import tqdm

from export.bundle import BundleError, open_bundle
from index.vector_index import VectorIndex
from serving.encoders.factory import load_encoder
from serving.preprocessing import decode_image, preprocess_batch
from serving.settings import Settings
from training.data.idx import DEFAULT_FASHION_MNIST_ROOT, FASHION_MNIST_CLASSES, load_fashion_mnist
from training.data.images import ImageFolder, to_pil

log = logging.getLogger(__name__)

FASHION_MNIST_PREFIX = "fashion-mnist:"


@dataclass(frozen=True)
class ImageSource:
    """`count` images, read lazily by `read(position)`, with one metadata dict each."""

    description: str  # what the manifest records as the source
    count: int
    read: Callable[[int], Image.Image]  # position -> decoded image
    metadata: Callable[[int], dict[str, Any]]  # position -> metadata


def folder_source(root: Path, settings: Settings) -> ImageSource:
    """Every image under `root`, recursively; metadata = path relative to root and class folder."""
    folder = ImageFolder(root)  # lists the files: one class per top-level subfolder, else unlabeled

    def read(position: int) -> Image.Image:
        path = folder.samples[position][0]
        return decode_image(path.read_bytes(), settings.max_image_bytes, settings.max_image_pixels)

    def metadata(position: int) -> dict[str, Any]:
        path, label = folder.samples[position]
        return {"path": path.relative_to(folder.root).as_posix(), "class": folder.classes[label] if label >= 0 else None}

    return ImageSource(str(Path(root).resolve()), len(folder), read, metadata)


def fashion_mnist_source(split: str, root: Path = DEFAULT_FASHION_MNIST_ROOT) -> ImageSource:
    """Fashion-MNIST's "train" or "test" split; metadata = split, position, label and class name."""
    images, labels = load_fashion_mnist(root, split)  # (N, 28, 28) uint8, (N,)

    def metadata(position: int) -> dict[str, Any]:
        label = int(labels[position])
        return {"split": split, "position": position, "label": label, "class": FASHION_MNIST_CLASSES[label]}

    return ImageSource(f"{FASHION_MNIST_PREFIX}{split}", len(images), lambda position: to_pil(images[position]), metadata)


def open_source(source: str | Path, settings: Settings) -> ImageSource:
    """"fashion-mnist:train", "fashion-mnist:test", or a folder of images."""
    text = str(source)
    if text.startswith(FASHION_MNIST_PREFIX):
        return fashion_mnist_source(text[len(FASHION_MNIST_PREFIX) :])
    if not Path(text).is_dir():
        raise FileNotFoundError(f"image source {text!r} is neither a folder nor fashion-mnist:train / fashion-mnist:test")
    return folder_source(Path(text), settings)


def _batches(count: int, batch_size: int) -> Iterator[range]:
    for start in range(0, count, batch_size):
        yield range(start, min(start + batch_size, count))


def build_image_index(
    artifacts_dir: Path,
    index_name: str,
    model_name: str,
    source: str | Path,
    batch_size: int = 256,
    limit: int | None = None,
    progress: bool = True,
    kind: str | None = None,
    settings: Settings | None = None,
) -> Path:
    """Embed the first `limit` (default all) images of `source` with `model_name`'s current bundle
    and save them as index `index_name`; ids are positions in the source. Returns the index folder."""
    settings = settings or Settings(artifacts_dir=Path(artifacts_dir))
    bundle = open_bundle(artifacts_dir, model_name)
    manifest = bundle.manifest
    if manifest.kind not in ("image-encoder", "image-text-encoder") or not manifest.preprocessing:
        raise BundleError(
            f"model {model_name!r} is a {manifest.kind} bundle; an image index needs an image encoder "
            "(image-encoder or a CLIP image-text-encoder) with preprocessing"
        )
    images = open_source(source, settings)
    count = images.count if limit is None else min(limit, images.count)
    encoder = load_encoder(bundle, settings, role="image_encoder")  # a CLIP bundle's image tower
    vectors = np.empty((count, manifest.dim), dtype=np.float32)  # (N, D)
    try:
        with tqdm(total=count, desc=f"embedding {images.description}", unit="img", disable=not progress) as bar:
            for positions in _batches(count, batch_size):
                batch = preprocess_batch([images.read(p) for p in positions], manifest.preprocessing)  # (B, C, H, W)
                vectors[positions.start : positions.stop] = encoder.encode(batch)  # (B, D)
                bar.update(len(positions))
    finally:
        encoder.close()
    index = VectorIndex.build(
        np.arange(count, dtype=np.int64),
        vectors,  # normalised by VectorIndex
        [images.metadata(p) for p in range(count)],
        kind=kind,
        model=manifest.name,
        model_version=manifest.version,
    )
    path = index.save(artifacts_dir, index_name, extra={"source": images.description, "limit": limit})
    log.info("index %s: %d vectors of model %s %s in %s", index_name, count, manifest.name, manifest.version, path)
    return path
