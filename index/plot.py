"""A 2-D map of an index's vectors as a PNG: a bounded, seeded sample laid out by t-SNE
(scikit-learn) or UMAP (umap-learn), each point coloured by a metadata field, "class" or "label"
when the items have one. It reads through the `SearchIndex` interface, so FAISS and Milvus
indexes draw alike; matplotlib and the layouts are imported only here (the `plot` extra).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from index.store import SearchIndex
from runtime.plotting import INSTALL_HINT, PlotDependencyError, pyplot, save_figure

METHODS = ("tsne", "umap")
COLOR_FIELDS = ("class", "label", "category")  # looked for in this order when no field is named
MAX_LEGEND_VALUES = 20  # more distinct values than this: the 19 most common, the rest together as "other"
MISSING = "(none)"  # the legend entry of items without the field


@dataclass(frozen=True)
class IndexMapConfig:
    method: Literal["tsne", "umap"] = "tsne"  # the 2-D layout: t-SNE (scikit-learn) or UMAP (umap-learn)
    color_by: str | None = None  # metadata field to colour by; None = the first of "class", "label", "category" present
    max_points: int = 5000  # a seeded random sample of at most this many vectors: it bounds the layout's time
    seed: int = 0  # which sample, and the layout's random start
    size_px: int = 900  # the PNG is size_px x size_px pixels

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, not {self.method!r}")
        if self.max_points < 2:
            raise ValueError(f"max_points must be at least 2, not {self.max_points}")


@dataclass(frozen=True)
class IndexSample:
    ids: np.ndarray  # (N,) int64, ascending
    vectors: np.ndarray  # (N, D) float32, as stored
    metadata: list[dict[str, Any]]  # one dict per id ({} where an item has none)


def sample_index(index: SearchIndex, max_points: int, seed: int = 0) -> IndexSample:
    """At most `max_points` of the index's items, drawn at random (the same for a given seed)."""
    ids = index.ids()  # (N,)
    if len(ids) < 2:
        raise ValueError(f"the index holds {len(ids)} vector(s); a map needs at least 2")
    if len(ids) > max_points:
        ids = np.sort(np.random.default_rng(seed).choice(ids, max_points, replace=False))
    vectors = index.vectors(ids).astype(np.float32)  # (N, D), in one read (a Milvus index: a few calls)
    return IndexSample(ids, vectors, [m or {} for m in index.metadata(ids)])


def layout_2d(vectors: np.ndarray, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """(N, 2) float coordinates of (N, D) vectors: t-SNE or UMAP, both on cosine distance."""
    n = len(vectors)
    if method == "tsne":
        from sklearn.manifold import TSNE

        # perplexity must stay below the number of points; 30 (the default) for any real sample
        tsne = TSNE(n_components=2, perplexity=float(min(30.0, max(2.0, (n - 1) / 3))), metric="cosine",
                    init="pca", random_state=seed)
        return tsne.fit_transform(vectors)
    if method == "umap":
        try:
            import umap
        except ImportError as e:
            raise PlotDependencyError(f"--method umap needs umap-learn: {INSTALL_HINT}") from e
        reducer = umap.UMAP(n_components=2, n_neighbors=min(15, n - 1), metric="cosine", random_state=seed, n_jobs=1)  # seeded: one thread
        return reducer.fit_transform(vectors)
    raise ValueError(f"method must be one of {METHODS}, not {method!r}")


def colour_field(metadata: list[dict[str, Any]], wanted: str | None = None) -> str | None:
    """`wanted` if given (ValueError if no sampled item has it), else the first of COLOR_FIELDS some item has."""
    present = {key for m in metadata for key, value in m.items() if value is not None}
    if wanted is not None:
        if wanted not in present:
            raise ValueError(f"no sampled item has metadata field {wanted!r}; fields: {sorted(present) or 'none'}")
        return wanted
    return next((f for f in COLOR_FIELDS if f in present), None)


def colour_groups(values: list[Any]) -> list[str]:
    """Each item's legend entry: its value as text, the rare ones as "other" past MAX_LEGEND_VALUES."""
    names = [MISSING if v is None else str(v) for v in values]
    counts = Counter(names)
    if len(counts) <= MAX_LEGEND_VALUES:
        return names
    kept = {name for name, _ in counts.most_common(MAX_LEGEND_VALUES - 1)}
    return [name if name in kept else "other" for name in names]


def plot_index_map(index: SearchIndex, out: Path | str, config: IndexMapConfig = IndexMapConfig(),
                   title: str | None = None) -> Path:
    """Draw the map of `index` as a PNG at `out` and return its path."""
    plt = pyplot()  # before the layout: a missing matplotlib should not cost a t-SNE first
    sample = sample_index(index, config.max_points, config.seed)
    xy = layout_2d(sample.vectors, config.method, config.seed)  # (N, 2)
    field = colour_field(sample.metadata, config.color_by)
    dpi = 100
    figure, axes = plt.subplots(figsize=(config.size_px / dpi, config.size_px / dpi), dpi=dpi)
    point_size = float(np.clip(20000 / len(xy), 4, 30))  # small points for thousands, larger ones for a few
    if field is None:
        axes.scatter(xy[:, 0], xy[:, 1], s=point_size, color="tab:blue", alpha=0.7, linewidths=0)
    else:
        groups = colour_groups([m.get(field) for m in sample.metadata])
        order = sorted(set(groups), key=lambda g: (g in (MISSING, "other"), _natural(g)))
        palette = plt.get_cmap("tab10" if len(order) <= 10 else "tab20")
        for i, group in enumerate(order):
            chosen = np.array([g == group for g in groups])
            colour = "lightgrey" if group in (MISSING, "other") else palette(i % palette.N)
            axes.scatter(xy[chosen, 0], xy[chosen, 1], s=point_size, color=colour, alpha=0.75, linewidths=0,
                         label=f"{group} ({int(chosen.sum())})")
        axes.legend(title=field, loc="best", fontsize="small", markerscale=max(1.0, 6 / np.sqrt(point_size)),
                    framealpha=0.85)
    name = getattr(index.manifest, "name", None) or "index"
    version = getattr(index.manifest, "version", "") or ""
    model = f", model {index.model} {index.model_version or ''}".rstrip() if index.model else ""
    layout = {"tsne": "t-SNE", "umap": "UMAP"}[config.method]
    axes.set_title(title or f"{name} {version}: {len(xy):,} of {len(index):,} vectors{model}\n"
                            f"{layout} of cosine distances" + (f", coloured by {field}" if field else ""))
    axes.set_xticks([])
    axes.set_yticks([])  # the layout's axes have no units: only distances between points mean anything
    figure.tight_layout()
    return save_figure(figure, out, dpi=dpi)


def _natural(text: str) -> tuple:
    """Sort key that puts "2" before "10" when the values are numbers."""
    try:
        return (0, float(text), "")
    except ValueError:
        return (1, 0.0, text)
