"""IDX files (the MNIST family's format) read into numpy, and Fashion-MNIST loaded from them.

Torch-free: only numpy and the standard library, so training and the image sources of index
builds and jobs read the same bytes.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

DEFAULT_FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
# Per-pixel statistics of the 60k training images, scaled to [0, 1].
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)

# The third byte of an IDX magic number names the element type.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path | str) -> np.ndarray:
    """Read one IDX file (gzip-compressed or not) into an array of its stored shape and type."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - offset != expected:
        raise ValueError(f"{path}: header says {shape} ({expected} bytes) but {len(raw) - offset} bytes follow")
    return np.frombuffer(raw, dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


def _find(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}[.gz] not found under {root}; install the Debian package "
        f"`dataset-fashion-mnist` (apt-get install dataset-fashion-mnist) or pass root= to its folder"
    )


def load_fashion_mnist(root: Path | str = DEFAULT_FASHION_MNIST_ROOT, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 [N, 28, 28], labels int64 [N]) for split "train" (60k) or "test" (10k)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    prefix = "train" if split == "train" else "t10k"
    root = Path(root)
    images = read_idx(_find(root, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(root, f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
    if images.dtype != np.uint8 or images.ndim != 3 or len(images) != len(labels):
        raise ValueError(f"{root}: expected uint8 images [N, H, W] and N labels, got {images.dtype} {images.shape} and {labels.shape}")
    return images, labels
