"""Checkpoints for every training method: one file, written atomically, resumable.

A checkpoint is a dict saved with `torch.save`: the method's name, its config, the model and
optimiser state (or, for word2vec, its tables), and where training had got to. It is written
to a temporary name and renamed, so a crash mid-save leaves the previous checkpoint intact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from runtime.files import atomic_path


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Save `state` to `path` through a temporary file and a rename (runtime.files.atomic_path)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint this project wrote (it holds configs and numpy arrays, not only tensors)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return torch.load(path, map_location=map_location, weights_only=False)
