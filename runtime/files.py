"""Writing files so that a reader never sees half of one, and versioned folders with a `current`
pointer: the one place that knows how artifacts land on disk.

Every file and folder written here is readable by other users (0644 files, 0755 folders), so a
server running as another user (a container's) can read what the trainer exported; temporary
names (`mkstemp`, `mkdtemp`) would otherwise leave 0600 files and 0700 folders behind.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

FILE_MODE = 0o644  # owner writes, everyone reads
DIR_MODE = 0o755  # owner writes, everyone lists and enters
CURRENT_FILE = "current"
# A model, version, index or job name: one folder (or file) under the artifacts folder, never a
# path out of it, and short enough to be one (a file name is at most 255 bytes, a character at
# most 4). The one rule for every name a client sends and every name read from a manifest or a
# `current` pointer, checked before the name touches a file.
NAME_MAX_CHARS = 63
NAME_PATTERN = r"^[^./\\\x00-\x1f\x7f][^/\\\x00-\x1f\x7f]*$"


class VersionError(Exception):
    """A versioned folder is missing, or a version asked for does not exist or already exists."""


class InvalidName(ValueError):
    """A name that is not one plain folder name (a path, a control character, too long)."""


def check_name(name: str, what: str = "name") -> str:
    """`name` if it names one folder (NAME_PATTERN, NAME_MAX_CHARS, valid Unicode), else
    InvalidName saying what to fix; `what` says which name it is ("index name")."""
    if not isinstance(name, str) or not name:
        raise InvalidName(f"{what} is empty; send a name")
    if len(name) > NAME_MAX_CHARS:
        raise InvalidName(f"{what} has {len(name):,} characters; a name has at most {NAME_MAX_CHARS}")
    if not re.fullmatch(NAME_PATTERN, name):
        raise InvalidName(f"{what} {name[:80]!r} must be a name, not a path: no '/', '\\', control characters "
                          "or leading '.'")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidName(f"{what} holds a lone surrogate, which is no character: send valid Unicode") from None
    return name


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """A temporary name beside `path` for a writer to fill (a library that wants a path, such as
    torch.save or onnx.save); on success it is made readable, flushed to disk and renamed to
    `path`, so `path` is either its old self or complete. On failure the temporary file goes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def exclusive(path: Path | str, wait: bool = True) -> Iterator[bool]:
    """Hold the lock file `path` (created if missing) against every other process and thread that
    takes it: yields True once held, or at once False when `wait` is False and another holds it.
    An advisory `flock`: the kernel lets it go when its holder closes the file or dies, so a killed
    writer never leaves a lock behind. The server's workers, its jobs and the CLI share an artifacts
    folder through these."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def lock_file(artifacts: Path | str, name: str) -> Path:
    """Where the lock `name` of an artifacts folder lives (`exclusive` takes it): every lock in one folder."""
    check_name(name.partition(".")[2] or name, "lock name")  # "index.<name>", "job.<id>"
    return Path(artifacts) / "locks" / f"{name}.lock"


def file_stamp(path: Path | str) -> tuple[int, int, int] | None:
    """What changes whenever `path` is replaced or rewritten (its inode, time and size), or None if
    it does not exist: one `stat`, cheap enough for every request."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def atomic_write_text(path: Path | str, text: str) -> None:
    """Write a text file through a temporary name and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def make_readable(folder: Path) -> None:
    """Give `folder` and everything under it the modes other users can read (0755 / 0644)."""
    os.chmod(folder, DIR_MODE)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), DIR_MODE)
        for name in files:
            os.chmod(os.path.join(root, name), FILE_MODE)


def _versions(parent: Path) -> list[str]:
    """The vN folders under `parent`, oldest first."""
    numbered = [p.name for p in parent.glob("v*") if p.is_dir() and p.name[1:].isdigit()]
    return sorted(numbered, key=lambda v: int(v[1:]))


def write_versioned_dir(
    parent: Path,
    fill: Callable[[Path, str], None],
    version: str | None = None,
    make_current: bool = True,
) -> Path:
    """Create `parent/<version>/` atomically: `fill(tmp_dir, version)` writes the files into a
    temporary folder beside it, which is made readable and renamed into place. Versions default
    to v1, v2, ... Returns the final folder. Model bundles, indexes and Triton models use it."""
    parent.mkdir(parents=True, exist_ok=True)
    os.chmod(parent, DIR_MODE)
    while True:
        existing = _versions(parent)
        chosen = version or f"v{int(existing[-1][1:]) + 1 if existing else 1}"
        if (parent / chosen).exists():
            raise VersionError(f"{parent / chosen} already exists; choose another version")
        tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{chosen}."))
        try:
            fill(tmp, chosen)
            make_readable(tmp)
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
    if make_current:
        set_current(parent, chosen)
    return parent / chosen


def set_current(parent: Path, version: str) -> None:
    """Point `parent/current` at `version` (a one-line text file, replaced atomically)."""
    if not (parent / version).is_dir():
        raise VersionError(f"cannot make {version!r} current: {parent / version} does not exist")
    atomic_write_text(parent / CURRENT_FILE, version + "\n")


def current_version(parent: Path) -> str:
    """The version that `parent/current` names, or the highest vN if there is no pointer."""
    pointer = parent / CURRENT_FILE
    if pointer.is_file():
        # a name read from disk is checked as a client's is: a pointer holding "../x" leads nowhere
        return check_name(pointer.read_text(encoding="utf-8", errors="replace").strip()[:1000], f"the version {pointer} names")
    versions = _versions(parent)
    if not versions:
        raise VersionError(f"no versions under {parent}")
    return versions[-1]


def version_folder(root: Path, name: str, version: str | None = None, what: str = "model") -> Path:
    """The folder of `name` at `version` (its current one by default) under `root`, which holds
    one folder per name; VersionError naming what is there when it is missing, InvalidName for a
    name or version that is not one folder name (before any file is touched)."""
    check_name(name, f"{what} name")
    if version is not None:
        check_name(version, f"{what} version")
    parent = Path(root) / name
    if not parent.is_dir():
        known = ", ".join(sorted(names_under(root))) or "none"
        raise VersionError(f"no {what} named {name!r} under {root} (there: {known})")
    chosen = version or current_version(parent)
    if not (parent / chosen).is_dir():
        raise VersionError(f"{what} {name!r} has no version {chosen!r}; it has {', '.join(_versions(parent)) or 'none'}")
    return parent / chosen


def names_under(root: Path) -> list[str]:
    """The names (folders) under `root`, sorted; temporary folders (".v3.xyz") left out."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def prune_versions(parent: Path, keep_previous: int, stale_tmp_s: float = 3600.0) -> list[str]:
    """Delete the versions under `parent` older than the current one and the `keep_previous`
    versions before it, and temporary folders a killed writer left (older than `stale_tmp_s`, so
    a writer at work keeps its own). The current version is never deleted. Returns what went."""
    if not Path(parent).is_dir():
        return []
    versions = _versions(parent)
    try:
        current = current_version(parent)
    except VersionError:
        return []
    older = [v for v in versions if v != current and int(v[1:]) < int(current[1:])] if current in versions else []
    doomed = older[: max(0, len(older) - keep_previous)]
    now = time.time()
    doomed += [p.name for p in Path(parent).glob(".v*") if p.is_dir() and now - p.stat().st_mtime > stale_tmp_s]
    for name in doomed:
        shutil.rmtree(Path(parent) / name, ignore_errors=True)
    return doomed

