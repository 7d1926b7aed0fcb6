"""SimCLR: a ResNet learns by pulling two augmented views of an image together (NT-Xent).

Reads top to bottom: the config (with a `quick` CPU profile), the method the training loop
drives, and `train_simclr`, which builds data and model, runs the loop and leaves a checkpoint
that training.methods.encoders.load_image_encoder turns into the eval-time encoder.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from training.data.image_defaults import with_data_defaults
from training.data.images import ImageDataConfig, open_image_dataset
from training.data.transforms import SimCLRTransform
from training.evaluation.knn_monitor import KnnMonitor
from training.loop import LoopConfig, default_param_groups, fit
from training.methods.encoders import resnet_spec
from training.losses.nt_xent import NTXentLoss
from training.models.heads import SimCLRProjectionHead


@dataclass(frozen=True)
class SimCLRConfig(ImageDataConfig, LoopConfig):
    # data: the fields of ImageDataConfig (data, data_root, subset, image_size, mode, mean, std), then
    min_crop_scale: float = 0.2  # smallest random crop, as a fraction of the image area
    blur_prob: float = 0.5  # chance of Gaussian blur per view
    jitter_strength: float = 0.4  # colour jitter of each view (brightness, contrast, saturation; hue a quarter of it): what the encoder learns to ignore
    grayscale_prob: float = 0.2  # chance a colour view is made grey
    # model and loss
    width: int = 64  # ResNet-18 base width: 64 = standard (512-d embedding); smaller for CPU
    proj_hidden_dim: int = 512  # projection head's hidden layer
    proj_dim: int = 128  # projection head's output, where NT-Xent is computed
    temperature: float = 0.2  # NT-Xent temperature (0.2 learnt faster than 0.5 on Fashion-MNIST at batch 256)
    # the shared loop's fields (LoopConfig), with this method's defaults
    epochs: int = 100
    batch_size: int = 512  # images per step; each gives two views, so 2x this goes through the network
    lr: float = 2e-3  # peak AdamW learning rate
    weight_decay: float = 1e-4
    warmup_epochs: float = 5.0
    num_workers: int = 4  # augmentation runs on the CPU; workers keep a GPU fed
    checkpoint_path: str = "artifacts/checkpoints/simclr.pt"
    log_path: str | None = "artifacts/logs/simclr.jsonl"

    @classmethod
    def quick(cls, **overrides: Any) -> SimCLRConfig:
        """CPU profile (2-3 minutes on 2 idle cores): 8-wide ResNet (64-d embedding), 160 steps over a
        20k-image subset, milder crops and no blur, which learn faster in so few steps; on a small folder,
        smaller batches, so an epoch still takes 10 steps."""
        quick = cls(width=8, proj_hidden_dim=256, subset=20_000, epochs=4, batch_size=256, max_steps_per_epoch=40,
                    min_steps_per_epoch=10, min_crop_scale=0.3, blur_prob=0.0, warmup_epochs=0.25, num_workers=0,
                    checkpoint_path="artifacts/checkpoints/simclr-quick.pt", log_path="artifacts/logs/simclr-quick.jsonl")
        return replace(quick, **overrides)


class SimCLR:
    """The method the loop drives: encoder + projection head, NT-Xent on the two views."""

    name = "simclr"

    def __init__(self, config: SimCLRConfig):
        self.config = config = with_data_defaults(config)
        self.encoder_spec = resnet_spec(config, prefix="encoder.")  # built here, recorded in the checkpoint
        encoder = self.encoder_spec.build()
        head = SimCLRProjectionHead(encoder.dim, config.proj_hidden_dim, config.proj_dim)
        self.model = nn.ModuleDict({"encoder": encoder, "head": head})
        self.loss = NTXentLoss(config.temperature)
        self.monitor = KnnMonitor(config)  # loads its images at the first evaluate()

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        return default_param_groups(self.model, weight_decay)

    def training_step(self, batch: tuple[tuple[Tensor, Tensor], Tensor]) -> tuple[Tensor, dict[str, Any]]:
        (view_a, view_b), _labels = batch  # (B, C, H, W) each; labels unused
        z = self.model["head"](self.model["encoder"](torch.cat([view_a, view_b])))  # (2B, proj_dim), one pass
        z_a, z_b = z.chunk(2)  # (B, proj_dim) each
        loss = self.loss(z_a, z_b)
        with torch.no_grad():
            positive_cos = nn.functional.cosine_similarity(z_a.float(), z_b.float()).mean()
        return loss, {"positive_cos": positive_cos}

    def evaluate(self) -> dict[str, float]:
        """kNN top-1 of the encoder (without the head, as it is exported) after an epoch."""
        return self.monitor(self.model["encoder"])

    def checkpoint_extra(self) -> dict[str, Any]:
        return self.encoder_spec.checkpoint_entries(self.config)


def train_simclr(config: SimCLRConfig, resume: bool = False) -> dict[str, Any]:
    """Train SimCLR and save its checkpoint at config.checkpoint_path; returns the loop's summary
    plus "checkpoint_path". Resume continues a run interrupted after a saved epoch."""
    config = with_data_defaults(config)  # colour, size, mean and std from the data where not given
    transform = SimCLRTransform(config.image_size, config.mode, config.mean, config.std,
                                min_scale=config.min_crop_scale, blur_prob=config.blur_prob,
                                jitter_strength=config.jitter_strength, grayscale_prob=config.grayscale_prob)
    dataset = open_image_dataset(config.data, "train", config.mode, transform, config.data_root, config.subset, config.seed,
                                 config.held_out_fraction)
    torch.manual_seed(config.seed)  # the same initial weights for the same seed
    method = SimCLR(config)
    summary = fit(method, dataset, config.loop_config(), resume=resume)
    return {**summary, "checkpoint_path": config.checkpoint_path}
