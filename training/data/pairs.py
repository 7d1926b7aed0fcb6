"""Image–caption pairs from manifests (CSV or JSON lines) and WebDataset tar shards. Torch-free.

A manifest lists `path` and `caption` per row, and optionally a `category` (the label the
per-epoch scores use: docs/training-on-your-images.md); relative paths are resolved against the
manifest's folder. A WebDataset shard is a tar whose members share a key per sample
(`000001.png` + `000001.txt`); the image is the jpg/jpeg/png/webp member, the caption the .txt
member or the "caption" field of the .json member.
"""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path
from typing import Callable, Iterable

from PIL import Image

from runtime.preprocessing import normalize_image

WEBDATASET_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
MANIFEST_TYPES = (".csv", ".jsonl", ".json")


class ManifestError(ValueError):
    """A manifest or shard that cannot be read as image–caption pairs; the message names the line."""


def read_manifest(path: str | Path, check_files: bool = True) -> list[tuple[Path, str]]:
    """(image path, caption) rows of a .csv (header with path,caption) or .jsonl/.json manifest."""
    return [(image, caption) for image, caption, _ in read_manifest_rows(path, check_files)]


def read_manifest_rows(path: str | Path, check_files: bool = True) -> list[tuple[Path, str, str | None]]:
    """(image path, caption, category or None) rows of a .csv (header path,caption[,category]) or
    .jsonl/.json manifest; an empty category is None."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} not found")
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = {"path", "caption"} - set(reader.fieldnames or ())
            if missing:
                raise ManifestError(f"{path}:1: header {reader.fieldnames} lacks column(s) {sorted(missing)}; "
                                    f"the first line must be 'path,caption' or 'path,caption,category'")
            rows = [(line, row) for line, row in enumerate(reader, start=2)]  # line 1 is the header
    elif path.suffix.lower() in (".jsonl", ".json"):
        rows = []
        with open(path, encoding="utf-8") as f:
            for line, text in enumerate(f, start=1):
                if not text.strip():
                    continue
                try:
                    rows.append((line, json.loads(text)))
                except json.JSONDecodeError as e:
                    raise ManifestError(f"{path}:{line}: not a JSON object ({e.msg})") from e
    else:
        raise ManifestError(f"{path}: unknown manifest type {path.suffix!r}; use .csv, .jsonl or .json (JSON lines)")

    pairs = []
    for line, row in rows:
        if not isinstance(row, dict) or not row.get("path") or row.get("caption") in (None, ""):
            raise ManifestError(f"{path}:{line}: needs a non-empty 'path' and 'caption', got {row!r}")
        image_path = Path(row["path"])
        image_path = image_path if image_path.is_absolute() else path.parent / image_path
        if check_files and not image_path.is_file():
            raise ManifestError(f"{path}:{line}: image {image_path} does not exist")
        category = str(row.get("category") or "").strip() or None
        pairs.append((image_path, str(row["caption"]), category))
    if not pairs:
        raise ManifestError(f"{path}: no rows")
    return pairs


def relative_key(path: Path, folder: Path) -> str:
    """`path` relative to `folder` where it lies under it (else whole), with "/": what the held-out
    split hashes, so an item keeps its side wherever the folder is moved."""
    path = Path(path)
    return path.relative_to(folder).as_posix() if path.is_relative_to(folder) else path.as_posix()


def category_labels(categories: list[str | None]) -> tuple[list[int], list[str]]:
    """(label per row, classes): a row's label is its category's index in the sorted distinct
    categories, -1 for a row without one."""
    classes = sorted({c for c in categories if c is not None})
    index = {name: label for label, name in enumerate(classes)}
    return [index[c] if c is not None else -1 for c in categories], classes


class ManifestPairs:
    """A manifest as a data set of (transform(image), caption); images normalised to `mode`.
    `categories` holds each row's category (None where it names none)."""

    def __init__(self, manifest: str | Path, mode: str = "RGB", transform: Callable | None = None):
        rows = read_manifest_rows(manifest)
        self.pairs = [(image, caption) for image, caption, _ in rows]
        self.categories = [category for *_, category in rows]
        self.folder, self.mode, self.transform = Path(manifest).parent, mode, transform

    def keys(self) -> list[str]:
        """Each row's image path relative to the manifest's folder: what the held-out split hashes."""
        return [relative_key(p, self.folder) for p, _ in self.pairs]

    def keep(self, positions) -> None:
        """Keep only the rows at `positions` (a training or held-out part), in their order."""
        self.pairs = [self.pairs[i] for i in positions]
        self.categories = [self.categories[i] for i in positions]

    @property
    def captions(self) -> list[str]:
        return [caption for _, caption in self.pairs]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        path, caption = self.pairs[index]
        with Image.open(path) as opened:
            img = normalize_image(opened, self.mode)
        return (self.transform(img) if self.transform else img), caption


def _split_member_name(name: str) -> tuple[str, str]:
    """WebDataset's rule: the key is everything before the first dot of the base name."""
    folder, _, base = name.rpartition("/")
    stem, _, extension = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), extension.lower()


def read_webdataset(path: str | Path) -> list[tuple[str, bytes, str]]:
    """(key, image bytes, caption) per sample of a tar shard, in the shard's order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"WebDataset shard {path} not found")
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            if member.isfile():
                key, extension = _split_member_name(member.name)
                samples.setdefault(key, {})[extension] = tar.extractfile(member).read()

    out = []
    for key, parts in samples.items():
        image = next((parts[e] for e in WEBDATASET_IMAGE_EXTENSIONS if e in parts), None)
        if image is None:
            raise ManifestError(f"{path}: sample {key!r} has no image ({'/'.join(WEBDATASET_IMAGE_EXTENSIONS)}); "
                                f"members: {sorted(parts)}")
        if "txt" in parts:
            caption = parts["txt"].decode("utf-8").strip()
        elif "json" in parts:
            caption = json.loads(parts["json"]).get("caption", "")
        else:
            raise ManifestError(f"{path}: sample {key!r} has no caption (.txt or .json with 'caption')")
        if not caption:
            raise ManifestError(f"{path}: sample {key!r} has an empty caption")
        out.append((key, image, caption))
    return out


class WebDatasetPairs:
    """One or more tar shards as a data set of (transform(image), caption), held in memory as bytes."""

    def __init__(self, shards: str | Path | Iterable[str | Path], mode: str = "RGB", transform: Callable | None = None):
        shards = [shards] if isinstance(shards, (str, Path)) else list(shards)
        self.samples = [s for shard in shards for s in read_webdataset(shard)]
        self.categories: list[str | None] = [None] * len(self.samples)  # shards carry no category
        self.mode, self.transform = mode, transform

    def keys(self) -> list[str]:
        return [key for key, *_ in self.samples]

    def keep(self, positions) -> None:
        """Keep only the samples at `positions`, in their order."""
        self.samples = [self.samples[i] for i in positions]
        self.categories = [self.categories[i] for i in positions]

    @property
    def captions(self) -> list[str]:
        return [caption for *_, caption in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        _key, image, caption = self.samples[index]
        with Image.open(io.BytesIO(image)) as opened:
            img = normalize_image(opened, self.mode)
        return (self.transform(img) if self.transform else img), caption


def write_webdataset(samples: Iterable[tuple[str, Image.Image, str]], path: str | Path) -> Path:
    """Write (key, Pillow image, caption) samples to a tar shard as <key>.png + <key>.txt."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for key, image, caption in samples:
            png = io.BytesIO()
            image.save(png, format="PNG")
            for name, data in ((f"{key}.png", png.getvalue()), (f"{key}.txt", caption.encode("utf-8"))):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def is_pairs_source(source: str | Path) -> bool:
    """Whether `source` names image–caption pairs (a manifest, a .tar shard, a folder of shards)
    rather than a data set name or an image folder."""
    path = Path(source)
    if path.suffix.lower() in (*MANIFEST_TYPES, ".tar"):
        return True
    return path.is_dir() and any(path.glob("*.tar"))


def open_pairs(source: str | Path, mode: str = "RGB", transform: Callable | None = None):
    """A pairs data set from a manifest (.csv/.jsonl/.json), a .tar shard or a folder of .tar shards."""
    source = Path(source)
    if source.is_dir():
        shards = sorted(source.glob("*.tar"))
        if not shards:
            raise FileNotFoundError(f"no .tar shards in {source}")
        return WebDatasetPairs(shards, mode, transform)
    if source.suffix.lower() == ".tar":
        return WebDatasetPairs(source, mode, transform)
    return ManifestPairs(source, mode, transform)
