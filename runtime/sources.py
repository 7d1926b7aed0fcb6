"""Where images to embed come from: a Fashion-MNIST split, a folder of image files, or a manifest
(CSV or JSONL) of image paths with captions and metadata, read one by one with a metadata record
each. The record says where the item came from (`source` and its `position` or `path`), so an
index built from it can be re-read item by item (`read_item`) when a job re-embeds the index with
a new model version. Torch-free: index builds and jobs read images here; training reads its
folders through `list_images` too.

A server reads client-named paths only under its data roots (`roots`): every path is resolved,
symlinks followed and `..` collapsed, and one that lands outside every root is a
`SourceForbidden` before a byte of it is read. So a symbolic link is followed where it points
inside a data root, never out of them; the message names the link and where it points.
docs/training-on-your-images.md writes the policy down.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from runtime.fashion_mnist import DEFAULT_FASHION_MNIST_ROOT, FASHION_MNIST_CLASSES, load_fashion_mnist
from runtime.preprocessing import ImageLimits, ImageTooLarge, bytes_over_limit, decode_image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
FASHION_MNIST_PREFIX = "fashion-mnist:"


MANIFEST_SUFFIXES = (".csv", ".jsonl")
MAX_MANIFEST_BYTES = 1 << 30  # a manifest is read whole: 1 GiB of paths is millions of items
Roots = Sequence[Path] | None  # the folders client-named paths must lie under; None: anywhere (the CLI's user)


class SourceError(ValueError):
    """A source that names nothing readable; the message says what sources look like."""


class SourceForbidden(SourceError):
    """A path outside the data roots this process may read (a server answers 403)."""


def confine(path: Path | str, roots: Roots) -> Path:
    """`path` resolved (symlinks followed, `..` collapsed); SourceForbidden when `roots` is given
    and the real path lies under none of them, saying which symbolic link led out and where to."""
    try:
        real = Path(path).resolve()
    except (ValueError, OSError) as e:  # a NUL in it, or a name too long for the file system
        raise SourceError(f"{str(path)[:200]!r} is not a path this server can read ({e}); name a file under its data roots") from None
    if roots is not None and not _under(real, roots):
        allowed = ", ".join(str(r) for r in roots) or "none (EMBEDSERVE_DATA_ROOTS is empty)"
        link = _link_out(Path(path), roots)
        if link is None:
            raise SourceForbidden(f"{path} is outside the folders this server may read ({allowed}); name a file under "
                                  "one of them, a data set, or an index:<name> source, or add its folder to "
                                  "EMBEDSERVE_DATA_ROOTS")
        where = "is a symbolic link" if link == Path(path) else f"lies in {link}, a symbolic link"
        raise SourceForbidden(f"{path} {where} to {os.readlink(link)} (really {real}), outside the folders this server "
                              f"may read ({allowed}): links are followed only within them. Add a folder holding "
                              f"{real.parent} to EMBEDSERVE_DATA_ROOTS, or put a copy in place of the link")
    return real


def _under(real: Path, roots: Sequence[Path]) -> bool:
    """Whether the resolved path `real` lies under one of `roots`."""
    return any(real.is_relative_to(Path(root).resolve()) for root in roots)


def _link_out(path: Path, roots: Sequence[Path]) -> Path | None:
    """The outermost symbolic link among `path`'s folders and `path` itself that points outside
    `roots`; None when no link leads out (the path itself is elsewhere)."""
    absolute = Path(os.path.abspath(path))  # `..` collapsed without following links
    return next((p for p in [*reversed(absolute.parents), absolute] if p.is_symlink() and not _under(p.resolve(), roots)),
                None)


def _inside(path: Path, roots: Sequence[Path]) -> bool:
    try:
        confine(path, roots)
    except SourceError:
        return False
    return True


@dataclass(frozen=True)
class ImageSource:
    """`count` images, read lazily by `read(position)`, with one metadata dict each."""

    description: str  # what an index manifest records as the source
    count: int
    read: Callable[[int], Image.Image]  # position -> decoded image
    metadata: Callable[[int], dict[str, Any]]  # position -> metadata, with what read_item needs to read it again
    ids: np.ndarray | None = None  # position -> item id (int64); None: the position is the id
    arrays: Callable[[range], np.ndarray] | None = None  # positions -> their uint8 pixels (N, H, W[, 3]), when held in memory


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


def _read_file(path: Path, limits: ImageLimits, roots: Roots, resize: int | None = None) -> Image.Image:
    """Decode the image file `path` (confined to `roots`) with the same checks as an upload, so a
    bomb or a corrupt file fails with a message naming it; a file over the byte limit is refused
    before it is read, and `resize` decodes it at about that size (runtime.preprocessing.load_pixels)."""
    real = confine(path, roots)
    size = real.stat().st_size
    if size > limits.max_bytes:
        raise ImageTooLarge(f"{path}: {bytes_over_limit(size, limits.max_bytes)}")
    try:
        with open(real, "rb") as f:
            return decode_image(f.read(limits.max_bytes + 1), limits, resize)  # + 1: a file grown since is refused too
    except ValueError as e:
        raise type(e)(f"{path}: {e}") from e


def folder_source(root: Path, limits: ImageLimits = ImageLimits(), roots: Roots = None) -> ImageSource:
    """Every image under `root`, recursively; metadata = the folder, the path relative to it and
    the class folder."""
    root = confine(root, roots)
    samples, classes = list_images(root)
    if roots is not None:  # files reached through symlinks out of the roots are not listed, not even by name
        samples = [(path, label) for path, label in samples if _inside(path, roots)]

    def metadata(position: int) -> dict[str, Any]:
        path, label = samples[position]
        return {"source": str(root), "path": path.relative_to(root).as_posix(), "class": classes[label] if label >= 0 else None}

    return ImageSource(str(root), len(samples), lambda position: _read_file(samples[position][0], limits, roots), metadata)


def _manifest_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a CSV (with a header) or JSONL manifest, each with a "path"."""
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise SourceError(f"manifest {path} is larger than {MAX_MANIFEST_BYTES:,} bytes; split it")
    with open(path, encoding="utf-8", newline="") as f:
        if path.suffix == ".csv":
            rows = list(csv.DictReader(f))
        else:
            rows = []
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise SourceError(f"{path} line {number} is not JSON ({e})") from None
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not str(row.get("path") or "").strip():
            raise SourceError(f"{path}: item {number} has no \"path\"; each row names an image file (and may add a caption)")
    if not rows:
        raise SourceError(f"manifest {path} lists no images")
    return rows


def manifest_source(manifest: Path, limits: ImageLimits = ImageLimits(), roots: Roots = None) -> ImageSource:
    """The images a CSV or JSONL manifest lists (column/field "path", relative to the manifest's
    folder or absolute; every other column is kept as metadata, "caption" among them)."""
    manifest = confine(manifest, roots)
    rows = _manifest_rows(manifest)

    def metadata(position: int) -> dict[str, Any]:
        row = rows[position]
        return {**{k: v for k, v in row.items() if k != "path"}, "source": str(manifest), "path": str(row["path"])}

    def read(position: int) -> Image.Image:
        return _read_file(manifest.parent / str(rows[position]["path"]), limits, roots)

    return ImageSource(str(manifest), len(rows), read, metadata)


def read_item(record: dict[str, Any], limits: ImageLimits = ImageLimits(), roots: Roots = None,
              fashion_mnist_root: Path = DEFAULT_FASHION_MNIST_ROOT, default_source: str | None = None,
              resize: int | None = None) -> Image.Image:
    """The image a metadata record of this module describes, read again: a data set position, or
    a path relative to its folder or manifest. `default_source` stands in for a record that names
    none (an index built before items recorded their source: its own); `resize` decodes a file at
    about that size."""
    source = str(record.get("source") or default_source or "")
    if source.startswith(FASHION_MNIST_PREFIX):
        images, _ = _fashion_mnist(source[len(FASHION_MNIST_PREFIX):], fashion_mnist_root)
        position = int(record["position"])
        if not 0 <= position < len(images):  # a record is data (an item's metadata): -1 is no position
            raise IndexError(f"position {position} is not in the data set's {len(images):,} images")
        return to_pil(images[position])
    if not source or "path" not in record:
        raise SourceError("the item records no source it can be read from again (index built before sources were recorded?)")
    base = Path(source)
    folder = base.parent if base.suffix in MANIFEST_SUFFIXES else base
    return _read_file(folder / str(record["path"]), limits, roots, resize)


_FASHION_MNIST_CACHE: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}


def _fashion_mnist(split: str, root: Path) -> tuple[np.ndarray, np.ndarray]:
    """A split's arrays, read once per process (60k images are 47 MB; read_item asks per item)."""
    key = (split, str(root))
    if key not in _FASHION_MNIST_CACHE:
        _FASHION_MNIST_CACHE[key] = load_fashion_mnist(root, split)
    return _FASHION_MNIST_CACHE[key]


def fashion_mnist_source(split: str, root: Path = DEFAULT_FASHION_MNIST_ROOT) -> ImageSource:
    """Fashion-MNIST's "train" or "test" split; metadata = split, position, label and class name."""
    images, labels = _fashion_mnist(split, root)  # (N, 28, 28) uint8, (N,)

    def metadata(position: int) -> dict[str, Any]:
        label = int(labels[position])
        return {"source": f"{FASHION_MNIST_PREFIX}{split}", "split": split, "position": position, "label": label,
                "class": FASHION_MNIST_CLASSES[label]}

    return ImageSource(f"{FASHION_MNIST_PREFIX}{split}", len(images), lambda position: to_pil(images[position]), metadata,
                       arrays=lambda positions: images[positions.start:positions.stop])


SAMPLED_FILES = 16  # a folder's files check_source looks at: a folder of links out of the roots is refused at once


def check_source(source: str | Path, roots: Roots = None) -> Path | str:
    """What `open_source` checks before it reads anything: a Fashion-MNIST split's name (returned),
    or a path under `roots` (returned resolved), and for a folder, that not all of its first
    SAMPLED_FILES images are links out of the roots (then every item would fail: SourceForbidden
    now, naming the first). Cheap: a server runs it before queueing a job."""
    text = str(source)
    if text.startswith(FASHION_MNIST_PREFIX):
        split = text[len(FASHION_MNIST_PREFIX):]
        if split not in ("train", "test"):
            raise SourceError(f"source {text!r}: the Fashion-MNIST splits are fashion-mnist:train and fashion-mnist:test")
        return split
    real = confine(text, roots)
    if roots is not None and real.is_dir():
        sampled = list(itertools.islice(_image_files(real), SAMPLED_FILES))
        refused = [p for p in sampled if not _inside(p, roots)]
        if sampled and len(refused) == len(sampled):
            confine(refused[0], roots)  # raises, saying which link leads where
    return real


def _image_files(folder: Path) -> Iterator[Path]:
    """The image files under `folder`, in the order the directory walk meets them (links not descended)."""
    for parent, _, names in os.walk(folder):
        for name in names:
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                yield Path(parent) / name


def open_source(source: str | Path, limits: ImageLimits = ImageLimits(), roots: Roots = None) -> ImageSource:
    """"fashion-mnist:train", "fashion-mnist:test", a folder of images, or a .csv/.jsonl manifest;
    paths only under `roots` when given."""
    text = str(source)
    checked = check_source(text, roots)  # before anything is read, even whether a path exists
    if isinstance(checked, str):
        return fashion_mnist_source(checked)
    path = checked
    if path.is_dir():
        return folder_source(path, limits, roots)
    if path.is_file() and path.suffix in MANIFEST_SUFFIXES:
        return manifest_source(path, limits, roots)
    raise SourceError(f"image source {text!r} is neither a folder, a .csv/.jsonl manifest, nor "
                      "fashion-mnist:train / fashion-mnist:test")
