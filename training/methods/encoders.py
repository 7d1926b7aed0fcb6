"""Eval-time image encoders from checkpoints, without knowing how each method trained them.

Each vision method describes its encoder once, as an `EncoderSpec`: it builds the encoder from it
and records it in the checkpoint, with the EvalTransform's preprocessing spec beside it; this
module rebuilds that encoder from a checkpoint and loads its weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from runtime.preprocessing import PreprocessingSpec
from training.checkpoint import load_checkpoint
from training.data.images import open_image_dataset, random_subset
from training.data.transforms import EvalTransform, preprocessing_spec
from training.models.resnet import ResNetBackbone
from training.models.vit import ViTEncoder

ARCHITECTURES = {"resnet": ResNetBackbone, "vit": ViTEncoder}


@dataclass(frozen=True)
class EncoderSpec:
    """An image encoder as a checkpoint records it: enough to rebuild it and find its weights."""

    arch: str  # a key of ARCHITECTURES
    kwargs: dict[str, Any]  # the architecture's constructor arguments
    prefix: str  # where its weights sit in the trained model's state dict, e.g. "encoder."

    def build(self) -> nn.Module:
        """A freshly initialised encoder (B, C, H, W) -> (B, D)."""
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown encoder architecture {self.arch!r}; known: {sorted(ARCHITECTURES)}")
        return ARCHITECTURES[self.arch](**self.kwargs)

    def checkpoint_entries(self, config: Any) -> dict[str, Any]:
        """What a vision method adds to its checkpoint so that `load_image_encoder` can rebuild the
        encoder: the config, this spec, and the EvalTransform's preprocessing spec (plain data, so
        a checkpoint loads without this code's classes). `config` needs image_size, mode, mean, std."""
        spec = preprocessing_spec(config.image_size, config.mode, config.mean, config.std)
        return {"config": asdict(config), "encoder": asdict(self), "preprocessing": spec.to_dict()}


def resnet_spec(config: Any, prefix: str) -> EncoderSpec:
    """The small-image ResNet of a config with `mode` and `width` (SimCLR, CLIP's image tower)."""
    return EncoderSpec("resnet", {"in_channels": 1 if config.mode == "L" else 3, "width": config.width}, prefix)


@dataclass(frozen=True)
class ImageEncoderInfo:
    """What a vision checkpoint says about its encoder, besides the weights."""

    method: str  # "simclr", "mae" or "clip"
    dim: int  # embedding size (the backbone's, before any projection head)
    preprocessing: PreprocessingSpec  # how an image becomes the encoder's input
    config: dict[str, Any]  # the training config, as saved
    arch: str  # "resnet" or "vit"


def load_image_encoder(checkpoint_path: Path | str, device: str | torch.device = "cpu",
                       random_init: bool = False) -> tuple[nn.Module, ImageEncoderInfo]:
    """The trained backbone in eval mode, mapping images already normalised by EvalTransform
    (float (B, C, H, W)) to un-normalised embeddings (B, D) (no projection head, no masking),
    and what the checkpoint says about it.

    random_init=True gives the same architecture with fresh weights (seeded from the torch RNG):
    the baseline that shows what training added."""
    checkpoint = load_checkpoint(Path(checkpoint_path), map_location=device)
    if "encoder" not in checkpoint:
        raise ValueError(f"{checkpoint_path} is a {checkpoint.get('method')!r} checkpoint without an image encoder")
    spec = EncoderSpec(**checkpoint["encoder"])
    encoder = spec.build()
    if not random_init:
        encoder.load_state_dict({k[len(spec.prefix):]: v for k, v in checkpoint["model"].items() if k.startswith(spec.prefix)})
    encoder.to(device).eval()
    info = ImageEncoderInfo(method=checkpoint["method"], dim=encoder.dim,
                            preprocessing=PreprocessingSpec.from_dict(checkpoint["preprocessing"]),
                            config=checkpoint["config"], arch=spec.arch)
    return encoder, info


def training_image_embeddings(encoder: nn.Module, info: ImageEncoderInfo, images: int = 2048, seed: int = 0,
                              batch_size: int = 512) -> np.ndarray:
    """The encoder's raw embeddings (N, dim) float32 of N = min(images, data size) random training
    images (seeded): the data `info`'s config trained on (same source, root and subset),
    preprocessed as its bundle says. Raises what opening the data raises (FileNotFoundError,
    ValueError) when that data is not on this machine."""
    config = info.config
    dataset = open_image_dataset(config["data"], "train", info.preprocessing.mode, EvalTransform.from_spec(info.preprocessing),
                                 config.get("data_root"), config.get("subset"), config.get("seed", 0),
                                 config.get("held_out_fraction", 0.0))
    chosen = random_subset(len(dataset), images, seed)
    chosen = np.arange(len(dataset)) if chosen is None else chosen
    device = next(encoder.parameters()).device
    out = []
    with torch.inference_mode():
        for start in range(0, len(chosen), batch_size):  # a batch at a time: large RGB images do not pile up
            batch = torch.stack([dataset[int(i)][0] for i in chosen[start:start + batch_size]])  # (b, C, H, W)
            out.append(encoder.eval()(batch.to(device)).float().cpu().numpy())  # (b, dim)
    return np.concatenate(out)  # (N, dim)
