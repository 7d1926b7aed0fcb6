"""Occlusion sensitivity (Zeiler & Fergus 2014, "Visualizing and Understanding Convolutional
Networks"), in numpy: an image's model input with one patch masked at a time, the map of how far
a score drops for each patch, and that map drawn over the image as a PNG. Torch-free; what runs
the copies through a model is the caller's (serving's /explain feeds them to a micro-batcher).

The copies are a sequence of grid rows × cols + 1 model inputs: the unmasked input first, then one
per patch in row-major order (top row first, left to right). `occlusion_batch` builds any slice
of it, so a caller holds one batch of copies at a time however fine the grid.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from runtime.preprocessing import PreprocessingSpec

# A masked patch is set to 0 in the model's input, which after (x - mean) / std is the training
# mean of every channel: the value that carries least information for the model. Black or white
# would paint a square the model can see (an edge, a dark blob) and measure its reaction to that
# square rather than to the evidence going missing.
MASK_FILL = 0.0

OVERLAY_MIN_SIDE = 224  # an overlay is the model's input scaled up by a whole factor to at least this
OVERLAY_MAX_ALPHA = 0.6  # the opacity of the tint at the patch whose drop is largest in size
EVIDENCE_RGB = (255, 40, 0)  # red: masking the patch lowers the score
COUNTER_RGB = (0, 90, 255)  # blue: masking the patch raises it


def grid_shape(height: int, width: int, grid: int) -> tuple[int, int]:
    """(rows, cols) of patches for `grid` patches per side of a (height, width) input: a side of
    fewer pixels than `grid` gets one patch per pixel, so no patch is empty."""
    if grid < 1 or height < 1 or width < 1:
        raise ValueError(f"grid {grid} and input {height}x{width} must all be at least 1")
    return min(grid, height), min(grid, width)


def patch_edges(size: int, patches: int) -> np.ndarray:
    """(patches + 1,) int pixel offsets cutting `size` pixels into `patches` near-equal runs:
    patch i spans [edges[i], edges[i + 1]), and every pixel is in exactly one."""
    if not 1 <= patches <= size:
        raise ValueError(f"cannot cut {size} pixels into {patches} non-empty patches")
    return np.arange(patches + 1) * size // patches


def occlusion_count(rows: int, cols: int) -> int:
    """How many model inputs an occlusion map of rows × cols costs: one per patch and the unmasked one."""
    return rows * cols + 1


def occlusion_batch(image: np.ndarray, rows: int, cols: int, start: int, stop: int) -> np.ndarray:
    """Inputs start..stop (exclusive) of the sequence [unmasked, masked patch 0, masked patch 1,
    ...] for one model input `image` (C, H, W): (stop - start, C, H, W) float32, each a copy with
    at most one patch set to MASK_FILL."""
    channels, height, width = image.shape
    if not 0 <= start < stop <= occlusion_count(rows, cols):
        raise ValueError(f"inputs {start}..{stop} are outside the {occlusion_count(rows, cols)} of a {rows}x{cols} map")
    row_edges, col_edges = patch_edges(height, rows), patch_edges(width, cols)
    batch = np.repeat(np.asarray(image, np.float32)[None], stop - start, axis=0)  # (n, C, H, W)
    for offset, position in enumerate(range(start, stop)):
        if position == 0:
            continue  # the unmasked input
        r, c = divmod(position - 1, cols)
        batch[offset, :, row_edges[r]:row_edges[r + 1], col_edges[c]:col_edges[c + 1]] = MASK_FILL
    return batch


def drop_map(scores: np.ndarray, rows: int, cols: int) -> tuple[float, np.ndarray]:
    """(the unmasked score, (rows, cols) float64 drops) from the scores (rows * cols + 1,) of the
    whole occlusion sequence: drop = unmasked − masked, so a positive drop marks evidence for the
    score and a negative one evidence against it."""
    scores = np.asarray(scores, np.float64)  # (rows * cols + 1,)
    if scores.shape != (occlusion_count(rows, cols),):
        raise ValueError(f"got {scores.shape} scores for a {rows}x{cols} map, which needs {occlusion_count(rows, cols)}")
    return float(scores[0]), scores[0] - scores[1:].reshape(rows, cols)  # (rows, cols)


def input_view(image: np.ndarray, spec: PreprocessingSpec) -> np.ndarray:
    """What the model sees of one input (C, H, W), back in pixels: x × std + mean, as uint8
    (H, W, 3); a greyscale model's one channel is repeated into three."""
    mean = np.asarray(spec.mean, np.float32).reshape(-1, 1, 1)
    std = np.asarray(spec.std, np.float32).reshape(-1, 1, 1)
    pixels = np.clip(np.asarray(image, np.float32) * std + mean, 0.0, 1.0)  # (C, H, W) in [0, 1]
    pixels = np.rint(pixels * 255.0).astype(np.uint8).transpose(1, 2, 0)  # (H, W, C)
    return np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels  # (H, W, 3)


def overlay_png(view: np.ndarray, drops: np.ndarray, min_side: int = OVERLAY_MIN_SIDE) -> bytes:
    """The image `view` (H, W, 3) uint8 tinted patch by patch with `drops` (rows, cols): red where
    masking lowers the score, blue where it raises it, opacity in proportion to |drop| over the
    largest |drop| (untinted when every drop is 0). Scaled up by the smallest whole factor that
    makes the longer side at least `min_side`, pixels kept square and sharp (nearest), since the
    map has no finer resolution than its patches. PNG bytes of (H × f, W × f)."""
    height, width, _ = view.shape
    rows, cols = drops.shape
    row_sizes = np.diff(patch_edges(height, rows))  # (rows,)
    col_sizes = np.diff(patch_edges(width, cols))  # (cols,)
    peak = float(np.abs(drops).max()) if drops.size else 0.0
    strength = drops / peak if peak > 0 and np.isfinite(peak) else np.zeros_like(drops, dtype=np.float64)  # (rows, cols)
    strength = np.repeat(np.repeat(strength, row_sizes, axis=0), col_sizes, axis=1)  # (H, W) in [-1, 1]
    alpha = (OVERLAY_MAX_ALPHA * np.abs(strength))[..., None]  # (H, W, 1)
    tint = np.where(strength[..., None] >= 0, np.array(EVIDENCE_RGB, np.float64), np.array(COUNTER_RGB, np.float64))  # (H, W, 3)
    blended = np.rint(view * (1.0 - alpha) + tint * alpha).astype(np.uint8)  # (H, W, 3)
    factor = max(1, -(-min_side // max(height, width)))  # ceil(min_side / longer side)
    scaled = np.repeat(np.repeat(blended, factor, axis=0), factor, axis=1)  # (H * f, W * f, 3)
    out = io.BytesIO()
    Image.fromarray(scaled, "RGB").save(out, "PNG")
    return out.getvalue()
