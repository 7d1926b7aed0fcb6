"""Training curves: the JSON-lines metrics log of a run (the loop's, word2vec's) drawn as a PNG
beside it (loss per step and per epoch, and each per-epoch evaluation metric), which export
copies into the bundle.

matplotlib is imported only to draw (runtime.plotting); without it training logs one line saying
how to install it and goes on, since the checkpoint, not the picture, is what training is for.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from runtime.plotting import PlotDependencyError, pyplot, save_figure

log = logging.getLogger(__name__)

# How the metrics that methods' evaluate() return are labelled on the chart; others by their key.
METRIC_LABELS = {
    "knn_top1_pct": "kNN top-1 on held-out images (%)",
    "zero_shot_top1_pct": "zero-shot top-1 on held-out images (%)",
    "analogy_accuracy": "analogy accuracy (Google questions, 3CosAdd)",
    "wordsim353_spearman": "WordSim-353 Spearman",
}
# The x axis of the loss, by the "step_unit" a run's "start" record names; the loop's runs name none.
STEP_LABELS = {"optimiser step": "optimiser step", "words": "corpus words trained"}
_warned_missing = False  # the install hint is logged once per process, not once per epoch


def curves_path(log_path: Path | str) -> Path:
    """Where the curves of the log at `log_path` go: beside it, `<log name>.png`."""
    return Path(log_path).with_suffix(".png")


class RunLog:
    """Appends one run's records to a JSON-lines log, each tagged with the method and flushed at
    once, so that a run that dies loses nothing it logged and read_run finds what it needs."""

    def __init__(self, log_path: Path | str, method: str):
        self.path, self.method = Path(log_path), method
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps({"method": self.method, **record}) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_run(log_path: Path | str) -> list[dict[str, Any]]:
    """The records of the latest run in a log the loop appends to. A fresh run's "start" record
    (step 0) drops what came before it; a resumed run's drops the records after the step it
    resumed from, which the interrupted run logged but the checkpoint does not hold."""
    records: list[dict[str, Any]] = []
    for line in Path(log_path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if record.get("kind") == "start":
            records = [r for r in records if record["step"] and r.get("step", 0) <= record["step"]]
        records.append(record)
    return records


def plot_curves(log_path: Path | str, out: Path | str | None = None) -> Path:
    """Draw the latest run of the log at `log_path` as a PNG at `out` (default: curves_path) and
    return its path: loss against optimiser step (each logged step, and each epoch's mean), and
    beside it every metric the method's evaluate() logged per epoch. PlotDependencyError
    without matplotlib; ValueError for a log with no step or epoch yet."""
    records = read_run(log_path)
    steps = [r for r in records if r.get("kind") == "step"]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    if not steps and not epochs:
        raise ValueError(f"{log_path} holds no step or epoch record yet")
    metrics = sorted({k for r in epochs for k, v in (r.get("eval") or {}).items() if _is_number(v)})
    method = next((r["method"] for r in records if "method" in r), "training")
    step_unit = next((r["step_unit"] for r in records if r.get("kind") == "start" and "step_unit" in r), "optimiser step")

    plt = pyplot()
    figure, axes = plt.subplots(1, 2 if metrics else 1, figsize=(11 if metrics else 6.5, 4.2), squeeze=False)
    loss_axes = axes[0][0]
    if steps:
        loss_axes.plot([r["step"] for r in steps], [r["loss"] for r in steps], color="tab:blue", alpha=0.45,
                       linewidth=1, label="logged step")
    if epochs:
        loss_axes.plot([r["step"] for r in epochs], [r["loss"] for r in epochs], color="tab:blue", marker="o",
                       linewidth=2, label="epoch mean")
    loss_axes.set(title=f"{method}: training loss", xlabel=STEP_LABELS.get(step_unit, step_unit), ylabel="loss")
    loss_axes.grid(alpha=0.3)
    loss_axes.legend()
    if metrics:
        metric_axes = axes[0][1]
        for metric in metrics:
            points = [(r["epoch"], r["eval"][metric]) for r in epochs if _is_number((r.get("eval") or {}).get(metric))]
            # the latest value in the legend: a one-epoch run (the demo's) has a dot per metric and no line
            metric_axes.plot(*zip(*points), marker="o", linewidth=2, label=f"{METRIC_LABELS.get(metric, metric)}: {points[-1][1]:.3g}")
        metric_axes.set(title=f"{method}: evaluation after each epoch", xlabel="epoch",
                        ylabel=METRIC_LABELS[metrics[0]] if len(metrics) == 1 and metrics[0] in METRIC_LABELS else "value")
        evaluated = [r["epoch"] for r in epochs if r.get("eval")]
        metric_axes.set_xlim(min(evaluated) - 0.5, max(evaluated) + 0.5)  # whole epochs, even for one
        metric_axes.xaxis.get_major_locator().set_params(integer=True, min_n_ticks=1)
        metric_axes.grid(alpha=0.3)
        metric_axes.legend()
    figure.tight_layout()
    return save_figure(figure, out or curves_path(log_path))


def write_curves(log_path: Path | str) -> Path | None:
    """plot_curves for the training loop: never raises. Without matplotlib it logs the install
    hint once; another failure is logged as a warning. Returns the PNG's path, or None."""
    global _warned_missing
    try:
        return plot_curves(log_path)
    except PlotDependencyError as e:
        if not _warned_missing:
            log.info("no training curves: %s", e)
            _warned_missing = True
    except Exception as e:  # noqa: BLE001 - a picture must not cost a training run
        log.warning("could not draw the training curves of %s: %s", log_path, e)
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
