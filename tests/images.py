"""A folder of small noise PNGs, as jobs and index tests read them (one helper for every test file)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def write_pngs(folder: Path, count: int, seed: int = 0, size: tuple[int, int] = (12, 10),
               corrupt: tuple[int, ...] = ()) -> Path:
    """`count` greyscale noise PNGs of `size` (W, H) named 000.png, 001.png, ... in `folder`; the
    positions in `corrupt` are cut to 30 bytes (unreadable)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size[1], size[0]), dtype=np.uint8), "L").save(buffer, "PNG")
        data = buffer.getvalue()
        (folder / f"{i:03d}.png").write_bytes(data[:30] if i in corrupt else data)
    return folder
