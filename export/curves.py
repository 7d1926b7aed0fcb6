"""The training curves into a bundle: export copies the PNG the training loop drew beside its log
(training.curves) into the bundle as the file of role runtime.bundle.TRAINING_CURVES_ROLE."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from runtime.bundle import TRAINING_CURVES_ROLE
from training.curves import curves_path

CURVES_FILE = "training_curves.png"


def copy_training_curves(training_config: dict[str, Any], folder: Path) -> dict[str, str]:
    """Copy the curves of the run `training_config` describes (its `log_path`) into `folder` and
    return the manifest `files` entry for them; {} when that run drew none or they are not on
    this machine, since the curves are for humans and a bundle is complete without them."""
    log_path = training_config.get("log_path")
    source = curves_path(log_path) if log_path else None
    if source is None or not source.is_file():
        return {}
    shutil.copyfile(source, Path(folder) / CURVES_FILE)
    return {TRAINING_CURVES_ROLE: CURVES_FILE}
