"""Seeding and device choice, shared by every training method."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices) so a run can be repeated."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def choose_device(preference: str = "auto") -> torch.device:
    """"auto" picks CUDA when present, else CPU; "cpu" or "cuda[:n]" force one."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(preference)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {preference!r} was asked for but torch sees no CUDA GPU; use --device cpu or auto")
    return device
