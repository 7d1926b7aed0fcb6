"""The model bundle: the one contract between the torch half and the serving half.

A bundle is a folder `artifacts/models/<name>/<version>/` holding `manifest.json` and the
files it names. This module is the only place that writes or reads one; it imports no torch,
so serving/ and index/ can use it. Bundles (and indexes, through `write_versioned_dir`) are
written to a temporary folder and renamed into place, so a reader never sees half of one,
and a `current` file per name says which version is served.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
CURRENT_FILE = "current"
KINDS = ("image-encoder", "text-encoder", "image-text-encoder", "word-vectors")
METHODS = ("simclr", "mae", "clip", "word2vec")


class BundleError(Exception):
    """A bundle is missing, incomplete or of a schema this code cannot read."""


@dataclass(frozen=True)
class Manifest:
    """What `manifest.json` holds. Field meanings are the contract; keep them stable."""

    name: str  # the model's name, as clients ask for it
    kind: str  # one of KINDS
    method: str  # one of METHODS
    dim: int  # embedding dimension
    normalized: bool  # True if the encoder's outputs are already L2-normalised
    files: dict[str, str]  # role -> file name inside the bundle, e.g. {"vectors": "vectors.npy"}
    version: str = ""  # filled in by write_bundle
    preprocessing: dict[str, Any] | None = None  # image size, channels, resize, crop, mean, std
    tokenizer: dict[str, Any] | None = None  # tokenizer file and context length, text encoders
    training_config: dict[str, Any] = field(default_factory=dict)  # the config that trained it
    metrics: dict[str, Any] = field(default_factory=dict)  # evaluation results at export
    extra: dict[str, Any] = field(default_factory=dict)  # method-specific facts (e.g. temperature)
    created_at: str = ""  # ISO-8601 UTC, filled in by write_bundle
    source_checkpoint_sha256: str | None = None  # hash of the checkpoint it was exported from
    file_sha256: dict[str, str] = field(default_factory=dict)  # file name -> sha256, by write_bundle
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise BundleError(f"unknown bundle kind {self.kind!r}; expected one of {KINDS}")
        if self.method not in METHODS:
            raise BundleError(f"unknown method {self.method!r}; expected one of {METHODS}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        schema = data.get("schema_version")
        if schema != SCHEMA_VERSION:
            raise BundleError(f"manifest schema {schema!r} is not {SCHEMA_VERSION}; re-export the model")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Bundle:
    """A bundle on disk: its folder and its manifest."""

    path: Path
    manifest: Manifest

    def file(self, role: str) -> Path:
        """The path of the file that plays `role` (e.g. "vectors", "image_encoder")."""
        try:
            return self.path / self.manifest.files[role]
        except KeyError:
            raise BundleError(f"bundle {self.path} has no {role!r} file; it has {sorted(self.manifest.files)}") from None


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    """Write a small text file through a temporary name and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _next_version(parent: Path) -> str:
    numbers = [int(p.name[1:]) for p in parent.glob("v*") if p.is_dir() and p.name[1:].isdigit()]
    return f"v{max(numbers, default=0) + 1}"


def write_versioned_dir(
    parent: Path,
    fill: Callable[[Path, str], None],
    version: str | None = None,
    make_current: bool = True,
) -> Path:
    """Create `parent/<version>/` atomically: `fill(tmp_dir, version)` writes the files into a
    temporary folder beside it, which is then renamed into place. Versions default to v1, v2, ...
    Returns the final folder. Used for model bundles and for indexes alike."""
    parent.mkdir(parents=True, exist_ok=True)
    while True:
        chosen = version or _next_version(parent)
        if (parent / chosen).exists():
            raise BundleError(f"{parent / chosen} already exists; choose another version")
        tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{chosen}."))
        try:
            fill(tmp, chosen)
            os.rename(tmp, parent / chosen)
            break
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if version is not None or not (parent / chosen).exists():
                raise
            # Another writer took this number between our look and our rename: take the next.
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    final = parent / chosen
    if make_current:
        set_current(parent, chosen)
    return final


def set_current(parent: Path, version: str) -> None:
    """Point `parent/current` at `version` (a one-line text file, replaced atomically)."""
    if not (parent / version).is_dir():
        raise BundleError(f"cannot make {version!r} current: {parent / version} does not exist")
    atomic_write_text(parent / CURRENT_FILE, version + "\n")


def current_version(parent: Path) -> str:
    """The version that `parent/current` names, or the highest vN if there is no pointer."""
    pointer = parent / CURRENT_FILE
    if pointer.is_file():
        return pointer.read_text(encoding="utf-8").strip()
    versions = sorted((p.name for p in parent.glob("v*") if p.is_dir() and p.name[1:].isdigit()), key=lambda v: int(v[1:]))
    if not versions:
        raise BundleError(f"no versions under {parent}")
    return versions[-1]


def models_dir(artifacts: Path) -> Path:
    return Path(artifacts) / "models"


def write_bundle(
    artifacts: Path,
    manifest: Manifest,
    write_files: Callable[[Path], None],
    version: str | None = None,
    make_current: bool = True,
) -> Bundle:
    """Write a bundle: `write_files(folder)` writes every file the manifest names into a
    temporary folder; this adds hashes, version and time to the manifest, writes it, and
    renames the folder to `artifacts/models/<name>/<version>`."""

    def fill(tmp: Path, version: str) -> None:
        write_files(tmp)
        missing = [f for f in manifest.files.values() if not (tmp / f).is_file()]
        if missing:
            raise BundleError(f"the bundle writer did not write {missing}")
        final = dataclasses.replace(
            manifest,
            version=version,
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            file_sha256={f: sha256_file(tmp / f) for f in sorted(manifest.files.values())},
        )
        atomic_write_text(tmp / MANIFEST_FILE, final.to_json())

    path = write_versioned_dir(models_dir(artifacts) / manifest.name, fill, version, make_current)
    return read_bundle(path)


def read_bundle(path: Path, verify: bool = False) -> Bundle:
    """Read the bundle in folder `path`. With `verify`, also check every file's sha256."""
    path = Path(path)
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise BundleError(f"{path} is not a bundle: it has no {MANIFEST_FILE}")
    try:
        manifest = Manifest.from_dict(json.loads(manifest_path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError) as e:
        raise BundleError(f"{manifest_path} is not a valid manifest: {e}") from e
    for name in manifest.files.values():
        file = path / name
        if not file.is_file():
            raise BundleError(f"bundle {path} is missing {name}")
        if verify and manifest.file_sha256.get(name) != sha256_file(file):
            raise BundleError(f"bundle {path}: {name} does not match its sha256 in the manifest")
    return Bundle(path=path, manifest=manifest)


def open_bundle(artifacts: Path, name: str, version: str | None = None) -> Bundle:
    """The bundle `name` at `version`, or at its current version."""
    parent = models_dir(artifacts) / name
    if not parent.is_dir():
        raise BundleError(f"no model named {name!r} under {models_dir(artifacts)}")
    return read_bundle(parent / (version or current_version(parent)))


def iter_current_bundles(artifacts: Path) -> Iterator[Bundle]:
    """Every model's current bundle, by name, skipping folders that hold no version yet."""
    root = models_dir(artifacts)
    if not root.is_dir():
        return
    for parent in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            yield read_bundle(parent / current_version(parent))
        except BundleError as e:
            log.warning("skipping model folder %s: %s", parent, e)
