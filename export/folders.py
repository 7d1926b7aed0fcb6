"""What every `embedserve import` shares: the error for a folder it cannot read, and reading the
folder's JSON files into that error's one line rather than a traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class FolderError(ValueError):
    """A folder that is not a model this importer can read; the message names the file that is
    missing or the setting it does not handle, and what to do (the CLI prints it, exit 2)."""


def read_json(path: Path, what: str) -> dict[str, Any] | list[Any]:
    """The JSON in `path`, or FolderError naming it: missing (`what` says what it holds) or unreadable."""
    if not path.is_file():
        raise FolderError(f"{path} is missing: {what}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FolderError(f"{path} is not valid JSON ({e}); restore it from the model's source") from None
