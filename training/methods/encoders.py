"""Eval-time image encoders from checkpoints, without knowing how each method trained them.

Every vision checkpoint names its encoder ({"arch", "kwargs", "prefix"} under "encoder") and its
EvalTransform ("preprocessing"); this module rebuilds that encoder and loads its weights.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.checkpoint import load_checkpoint
from training.data.transforms import preprocessing_spec
from training.models.resnet import ResNetBackbone
from training.models.vit import ViTEncoder

ARCHITECTURES = {"resnet": ResNetBackbone, "vit": ViTEncoder}


def encoder_checkpoint_entries(config: Any, arch: str, kwargs: dict[str, Any], prefix: str) -> dict[str, Any]:
    """What a vision method adds to its checkpoint so that `load_image_encoder` can rebuild the
    encoder: the config, the encoder's architecture and where its weights sit in the model's
    state dict (`prefix`), and the EvalTransform spec. `config` needs image_size, mode, mean, std."""
    return {
        "config": asdict(config),
        "encoder": {"arch": arch, "kwargs": kwargs, "prefix": prefix},
        "preprocessing": preprocessing_spec(config.image_size, config.mode, config.mean, config.std),
    }


def build_image_encoder(arch: str, kwargs: dict[str, Any]) -> nn.Module:
    """A freshly initialised encoder (B, C, H, W) -> (B, D) of a registered architecture."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown encoder architecture {arch!r}; known: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch](**kwargs)


def load_image_encoder(checkpoint_path: Path | str, device: str | torch.device = "cpu",
                       random_init: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """The trained backbone in eval mode, mapping images already normalised by EvalTransform
    (float (B, C, H, W)) to un-normalised embeddings (B, D) (no projection head, no masking),
    and {"method", "dim", "preprocessing" (preprocessing_spec), "config" (the training config),
    "arch" ("resnet" or "vit")}.

    random_init=True gives the same architecture with fresh weights (seeded from the torch RNG):
    the baseline that shows what training added."""
    checkpoint = load_checkpoint(Path(checkpoint_path), map_location=device)
    if "encoder" not in checkpoint:
        raise ValueError(f"{checkpoint_path} is a {checkpoint.get('method')!r} checkpoint without an image encoder")
    spec = checkpoint["encoder"]
    encoder = build_image_encoder(spec["arch"], spec["kwargs"])
    prefix = spec["prefix"]
    if not random_init:
        encoder.load_state_dict({k[len(prefix):]: v for k, v in checkpoint["model"].items() if k.startswith(prefix)})
    encoder.to(device).eval()
    info = {"method": checkpoint["method"], "dim": encoder.dim, "preprocessing": checkpoint["preprocessing"],
            "config": checkpoint["config"], "arch": spec["arch"]}
    return encoder, info
