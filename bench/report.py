"""Where a benchmark's figures go: `bench/results/<name>.json`, written whole or not at all, with
its chart beside it (bench/charts.py). Every bench writes its results through here.

Every bench also takes `--smoke`: the same code path end to end at its smallest sizes, in seconds,
on tiny models it makes itself, peers left out when they are not installed; its JSON goes to a
temporary folder unless `--out` says where, never over the recorded results. The suite runs each
bench so (tests/bench/test_smoke.py).
"""

from __future__ import annotations

import json
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.charts import RESULTS, write_chart
from runtime.files import atomic_write_text

SMOKE_HELP = ("run the same code end to end at the smallest sizes, in seconds, on tiny models the bench makes (a check "
              "that the bench runs, not a measurement); its JSON goes to a temporary folder unless --out says where")


def result_path(out: Path | str | None, name: str, smoke: bool) -> Path:
    """Where bench `name` writes: `out` when given, else bench/results/<name>.json, or for a smoke
    run a temporary folder's <name>.json (a smoke run's figures mean nothing)."""
    if out is not None:
        return Path(out)
    return (Path(tempfile.gettempdir()) / "embedserve-bench-smoke" if smoke else RESULTS) / f"{name}.json"


def utc_now() -> str:
    """The time a result is stamped with: UTC, to the second, ISO 8601."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_report(path: Path | str, result: dict[str, Any]) -> Path:
    """Write `result` as JSON at `path` (its folder made if missing) through a temporary name, so
    a reader never sees half of it, then draw its chart; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(result, indent=2, default=str) + "\n")  # default=str: paths, numpy scalars
    print(f"wrote {path}", flush=True)
    write_chart(path)
    return path
