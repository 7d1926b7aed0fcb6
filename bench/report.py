"""Where a benchmark's figures go: `bench/results/<name>.json`, written whole or not at all, with
its chart beside it (bench/charts.py). Every bench writes its results through here."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.charts import write_chart
from runtime.files import atomic_write_text


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
