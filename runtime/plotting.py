"""The one way our pictures get matplotlib: imported when a picture is drawn, never before, on the
file-only Agg backend, so that the server image and every module that draws nothing run without
it (it comes with the `plot` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runtime.files import atomic_path

INSTALL_HINT = "pip install 'embedserve[plot]'"


class PlotDependencyError(ImportError):
    """matplotlib (or umap-learn) is not installed; the message says how to install it."""


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend, or PlotDependencyError."""
    try:
        import matplotlib
    except ImportError as e:
        raise PlotDependencyError(f"drawing pictures needs matplotlib: {INSTALL_HINT}") from e
    matplotlib.use("Agg")  # files only: no display, and no GUI toolkit imported
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Any, path: Path | str, dpi: int = 100) -> Path:
    """Write `figure` as a PNG at `path` (its folder made if missing), free it, and return the path."""
    path = Path(path)
    with atomic_path(path) as tmp:  # a reader (an export copying it, a browser) never sees half a PNG
        figure.savefig(tmp, format="png", dpi=dpi)
    pyplot().close(figure)
    return path
