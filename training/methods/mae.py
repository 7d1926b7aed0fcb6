"""MAE: a ViT learns by reconstructing the 75% of patches it was not shown.

Reads top to bottom: the config (with a `quick` CPU profile), random masking, the light
decoder, the method the training loop drives, and `train_mae`. Only the encoder is kept for
embeddings; at eval time it sees every patch (training.methods.encoders.load_image_encoder).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from training.data.image_defaults import with_data_defaults
from training.data.images import ImageDataConfig, open_image_dataset
from training.data.transforms import MAETransform
from training.evaluation.knn_monitor import KnnMonitor
from training.loop import LoopConfig, default_param_groups, fit
from training.methods.encoders import EncoderSpec
from training.losses.mae import MAELoss
from training.models.vit import Block, init_transformer_weights, patchify, sincos_pos_embed_2d


@dataclass(frozen=True)
class MAEConfig(ImageDataConfig, LoopConfig):
    # data: the fields of ImageDataConfig (data, data_root, subset, image_size, mode, mean, std), then
    min_crop_scale: float = 0.35  # smallest random crop, as a fraction of the image area
    # encoder (the part kept for embeddings)
    patch_size: int = 4  # 28x28 -> 7x7 = 49 patches
    dim: int = 192  # token and embedding width
    depth: int = 6  # transformer blocks
    num_heads: int = 3
    # decoder (thrown away after training) and loss
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_num_heads: int = 4
    mask_ratio: float = 0.75  # fraction of patches hidden from the encoder
    norm_pix: bool = True  # reconstruct per-patch standardised pixels (MAE's better variant)
    # the shared loop's fields (LoopConfig), with this method's defaults
    epochs: int = 100
    batch_size: int = 256
    lr: float = 1.5e-3  # peak AdamW learning rate
    weight_decay: float = 0.05
    warmup_epochs: float = 5.0
    num_workers: int = 4
    checkpoint_path: str = "artifacts/checkpoints/mae.pt"
    log_path: str | None = "artifacts/logs/mae.jsonl"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.image_size is not None and self.image_size % self.patch_size:
            raise ValueError(f"--image-size {self.image_size} must be a multiple of --patch-size {self.patch_size}")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"--mask-ratio must be between 0 and 1, not {self.mask_ratio}")

    @classmethod
    def quick(cls, **overrides: Any) -> MAEConfig:
        """CPU profile (about 2 minutes on 2 idle cores): a 4-block 128-wide ViT, 5 epochs of a 20k-image subset
        (on a small folder, batches small enough for 10 steps an epoch)."""
        quick = cls(dim=128, depth=4, num_heads=4, decoder_dim=64, decoder_depth=1, subset=20_000, epochs=5,
                    batch_size=256, max_steps_per_epoch=None, min_steps_per_epoch=10, warmup_epochs=0.5,
                    num_workers=0,
                    checkpoint_path="artifacts/checkpoints/mae-quick.pt", log_path="artifacts/logs/mae-quick.jsonl")
        return replace(quick, **overrides)


def random_masking(batch_size: int, num_patches: int, mask_ratio: float, device: torch.device | str = "cpu",
                   generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Hide a random `mask_ratio` of patches per sample (MAE's shuffle-by-noise).

    Returns keep_ids (B, N_keep) indices of the visible patches, mask (B, N) float with 1 where
    hidden, and restore_ids (B, N) that put [visible, hidden] tokens back in patch order.
    """
    num_keep = int(num_patches * (1 - mask_ratio))
    noise = torch.rand(batch_size, num_patches, device=device, generator=generator)  # (B, N)
    shuffle_ids = noise.argsort(dim=1)  # (B, N) lowest noise first: those are kept
    restore_ids = shuffle_ids.argsort(dim=1)  # (B, N) inverse permutation
    keep_ids = shuffle_ids[:, :num_keep]  # (B, N_keep)
    mask = torch.ones(batch_size, num_patches, device=device)
    mask[:, :num_keep] = 0
    return keep_ids, torch.gather(mask, 1, restore_ids), restore_ids  # mask back in patch order


class MAEDecoder(nn.Module):
    """Visible tokens + a shared learned mask token at every hidden position -> pixels of every patch."""

    def __init__(self, grid_size: int, encoder_dim: int, dim: int, depth: int, num_heads: int, patch_pixels: int):
        super().__init__()
        self.embed = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", sincos_pos_embed_2d(grid_size, dim)[None], persistent=False)  # (1, N, D)
        self.blocks = nn.ModuleList(Block(dim, num_heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.pred = nn.Linear(dim, patch_pixels)
        init_transformer_weights(self)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, tokens: Tensor, restore_ids: Tensor) -> Tensor:
        x = self.embed(tokens)  # (B, N_keep, D)
        B, N = restore_ids.shape
        x = torch.cat([x, self.mask_token.expand(B, N - x.shape[1], -1)], dim=1)  # (B, N, D), shuffled order
        x = torch.gather(x, 1, restore_ids[..., None].expand(-1, -1, x.shape[-1])) + self.pos_embed  # (B, N, D)
        for block in self.blocks:
            x = block(x)
        return self.pred(self.norm(x))  # (B, N, patch_pixels)


class MAE:
    """The method the loop drives: mask, encode the visible patches, decode all, score the hidden."""

    name = "mae"

    def __init__(self, config: MAEConfig):
        self.config = config = with_data_defaults(config)
        channels = 1 if config.mode == "L" else 3
        self.encoder_spec = EncoderSpec("vit", {  # built here, recorded in the checkpoint
            "image_size": config.image_size, "patch_size": config.patch_size, "in_channels": channels,
            "dim": config.dim, "depth": config.depth, "num_heads": config.num_heads}, prefix="encoder.")
        encoder = self.encoder_spec.build()
        decoder = MAEDecoder(encoder.grid_size, config.dim, config.decoder_dim, config.decoder_depth,
                             config.decoder_num_heads, config.patch_size ** 2 * channels)
        self.model = nn.ModuleDict({"encoder": encoder, "decoder": decoder})
        self.loss = MAELoss(config.norm_pix)
        self.monitor = KnnMonitor(config)  # loads its images at the first evaluate()

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        return default_param_groups(self.model, weight_decay)

    def training_step(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, dict[str, Any]]:
        images, _labels = batch  # (B, C, H, W); labels unused
        encoder, decoder = self.model["encoder"], self.model["decoder"]
        keep_ids, mask, restore_ids = random_masking(images.shape[0], encoder.num_patches, self.config.mask_ratio, images.device)
        tokens = encoder.forward_tokens(images, keep_ids)  # (B, N_keep, D): the encoder never sees hidden patches
        pred = decoder(tokens, restore_ids)  # (B, N, P)
        loss = self.loss(pred, patchify(images, self.config.patch_size), mask)
        return loss, {"mask_ratio": mask.mean()}

    def evaluate(self) -> dict[str, float]:
        """kNN top-1 of the encoder, shown every patch as at export, after an epoch."""
        return self.monitor(self.model["encoder"])

    def checkpoint_extra(self) -> dict[str, Any]:
        return self.encoder_spec.checkpoint_entries(self.config)


def train_mae(config: MAEConfig, resume: bool = False) -> dict[str, Any]:
    """Train MAE and save its checkpoint at config.checkpoint_path; returns the loop's summary
    plus "checkpoint_path". Resume continues a run interrupted after a saved epoch."""
    config = with_data_defaults(config)  # colour, size, mean and std from the data where not given
    transform = MAETransform(config.image_size, config.mode, config.mean, config.std, min_scale=config.min_crop_scale)
    dataset = open_image_dataset(config.data, "train", config.mode, transform, config.data_root, config.subset, config.seed,
                                 config.held_out_fraction)
    torch.manual_seed(config.seed)  # the same initial weights for the same seed
    method = MAE(config)
    summary = fit(method, dataset, config.loop_config(), resume=resume)
    return {**summary, "checkpoint_path": config.checkpoint_path}
