"""The one training loop for every torch method (SimCLR, MAE, CLIP, ...).

A method brings its model, its optimiser parameter groups, `training_step(batch) -> (loss,
metrics)` and, if it has one, `evaluate() -> metrics`; the loop brings seeding, device, AMP (CUDA
only), AdamW with a per-step linear-warmup cosine schedule, checkpoints with exact resume, a tqdm
bar, a JSON-lines metrics log and its curves as a PNG beside it (training.curves).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from training.checkpoint import load_checkpoint, save_checkpoint
from training.curves import RunLog, write_curves
from training.device import choose_device, seed_everything

logger = logging.getLogger(__name__)  # `log` is fit's metrics-log writer


@dataclass(frozen=True)
class LoopConfig:
    """The loop's settings. Each method's config extends it (and ImageDataConfig), redeclaring
    the defaults that suit the method, so one set of names reaches the CLI and the checkpoint."""

    epochs: int = 10  # passes over the data
    batch_size: int = 256  # examples per optimiser step (the last partial batch is dropped)
    lr: float = 1e-3  # peak AdamW learning rate, reached at the end of warm-up
    weight_decay: float = 0.05  # AdamW decoupled weight decay, for the groups the method marks
    warmup_epochs: float = 1.0  # linear warm-up from ~0 to lr, then cosine to 0; stepped per batch
    seed: int = 0  # seeds Python, numpy, torch and the shuffling order of every epoch
    device: str = "auto"  # "auto" (CUDA if present), "cpu" or "cuda[:n]"
    amp: bool = True  # float16 autocast + GradScaler; takes effect on CUDA only
    num_workers: int = 0  # DataLoader worker processes (0 = load in the training process)
    checkpoint_path: str | None = None  # where to save (and resume from); None = no checkpoints
    checkpoint_every_epochs: int = 1  # also saved after the last epoch
    log_path: str | None = None  # JSON-lines metrics log, appended to; None = no log
    log_every_steps: int = 10  # step records in the log and refreshes of the progress bar
    eval_every_epochs: int = 1  # the method's evaluate() (vision: kNN top-1) after every this many epochs and the last; 0 = never
    max_steps_per_epoch: int | None = None  # cut epochs short for quick runs; None = whole data set
    min_steps_per_epoch: int = 0  # where the data gives fewer full batches, batch_size shrinks (not below 16) to give this many; 0 = keep batch_size
    progress: bool = True  # show a tqdm bar on stderr

    def __post_init__(self) -> None:
        """Options that cannot work, refused when the config is made: before any data is read."""
        for name in ("epochs", "batch_size", "checkpoint_every_epochs", "log_every_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_epochs < 0:
            raise ValueError(f"--lr must be positive and --weight-decay and --warmup-epochs not negative "
                             f"(got {self.lr}, {self.weight_decay}, {self.warmup_epochs})")
        if self.eval_every_epochs < 0 or self.num_workers < 0:
            raise ValueError("--eval-every-epochs and --num-workers cannot be negative")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise ValueError(f"--max-steps-per-epoch must be at least 1, not {self.max_steps_per_epoch}")
        if self.min_steps_per_epoch < 0:
            raise ValueError(f"--min-steps-per-epoch cannot be negative, not {self.min_steps_per_epoch}")

    def loop_config(self) -> LoopConfig:
        """Just the loop's fields, of a method config that extends this one (SimCLR, MAE, CLIP)."""
        return LoopConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(LoopConfig)})


SMALLEST_FITTED_BATCH = 16  # min_steps_per_epoch never shrinks a batch below this: contrastive losses need negatives
FEW_EXAMPLES = 1000  # fewer training examples than this draw a warning: these methods learn from thousands
FEW_STEPS = 100  # fewer optimiser steps in a run than this draw a warning


def fitted_batch_size(examples: int, config: LoopConfig) -> int:
    """config.batch_size, or smaller where `examples` would give fewer than config.min_steps_per_epoch
    full batches: the largest batch that gives that many, at least SMALLEST_FITTED_BATCH."""
    if config.min_steps_per_epoch == 0 or examples // config.batch_size >= config.min_steps_per_epoch:
        return config.batch_size
    return min(config.batch_size, max(SMALLEST_FITTED_BATCH, examples // config.min_steps_per_epoch))


def warn_if_too_little(examples: int, total_steps: int, config: LoopConfig) -> None:
    """Say in the log when a run has too few examples or steps to learn much, and what to change."""
    if examples < FEW_EXAMPLES:
        logger.warning("only %d training examples: these methods learn from thousands, so expect a weak model; "
                    "watch the held-out score, and add images if you can", examples)
    if total_steps < FEW_STEPS:
        logger.warning("only %d optimiser steps in all (%d an epoch): too few to learn much; raise --epochs%s",
                    total_steps, total_steps // config.epochs,
                    "" if config.min_steps_per_epoch else " or --min-steps-per-epoch (smaller batches)")


class Method(Protocol):
    """What the loop needs from a method; the method stays ignorant of devices and checkpoints."""

    name: str  # "simclr", "mae", ...
    model: nn.Module  # everything trained (backbone and heads)

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]: ...
    def training_step(self, batch: Any) -> tuple[Tensor, dict[str, Any]]: ...
    def checkpoint_extra(self) -> dict[str, Any]: ...  # saved beside the weights (config, encoder description)
    # Optional: `evaluate() -> dict[str, float]`, called after an epoch with the model on its device;
    # its numbers go into that epoch's log record ("eval") and onto the training curves.


def default_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices and convolution kernels; leave biases, norms and other vectors alone (nanoGPT)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate multiplier for optimiser step `step` (0-based): linear up, then cosine to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def _batch_size(batch: Any) -> int:
    """Examples in a batch: the first dimension of its first tensor."""
    if isinstance(batch, Tensor):
        return batch.shape[0]
    items = batch.values() if isinstance(batch, dict) else batch
    return next(_batch_size(b) for b in items if isinstance(b, (Tensor, list, tuple, dict)))


def fit(method: Method, data: Dataset | DataLoader, config: LoopConfig, resume: bool = False) -> dict[str, Any]:
    """Train `method` on `data` (a Dataset, shuffled here, or a ready DataLoader).

    With resume=True and a checkpoint at config.checkpoint_path, training continues after the
    last saved epoch with the saved weights, optimiser, schedule, scaler and RNG states, so the
    result equals an uninterrupted run. Returns {"epoch", "step", "loss", "train_time_s",
    "curves_path"}, the last the training curves' PNG (None without a log or without matplotlib).
    """
    seed_everything(config.seed)
    device = choose_device(config.device)
    use_amp = config.amp and device.type == "cuda"
    model = method.model.to(device)

    # data: our own loader re-seeds its shuffling generator each epoch, so a resumed epoch sees the same order
    own_loader = not isinstance(data, DataLoader)
    examples = len(data) if own_loader else len(data.dataset)
    if own_loader and (fitted := fitted_batch_size(examples, config)) != config.batch_size:
        logger.info("batch size %d rather than %d, so that %d examples give %d steps per epoch (--min-steps-per-epoch)",
                 fitted, config.batch_size, examples, examples // fitted)
        config = dataclasses.replace(config, batch_size=fitted)  # the checkpoint records the batch size used
    loader = DataLoader(data, batch_size=config.batch_size, shuffle=True, drop_last=True, num_workers=config.num_workers,
                        generator=torch.Generator(), pin_memory=device.type == "cuda") if own_loader else data
    steps_per_epoch = min(len(loader), config.max_steps_per_epoch or len(loader))
    if steps_per_epoch == 0:
        raise ValueError(f"no full batch: {len(loader.dataset)} examples, batch_size {config.batch_size}")
    total_steps = config.epochs * steps_per_epoch
    warn_if_too_little(examples, total_steps, config)

    # optimiser, schedule and loss scaler
    optimizer = torch.optim.AdamW(method.param_groups(config.weight_decay), lr=config.lr)
    warmup_steps = max(1, int(config.warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, warmup_steps, total_steps))
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)

    start_epoch, step = 0, 0
    checkpoint_path = Path(config.checkpoint_path) if config.checkpoint_path else None
    if resume and checkpoint_path is not None and checkpoint_path.is_file():
        state = load_checkpoint(checkpoint_path, map_location="cpu")  # RNG states must stay on the CPU
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, step = state["epoch"], state["step"]
        _set_rng_state(state["rng"])

    def save(epochs_done: int) -> None:
        save_checkpoint(checkpoint_path, {
            "method": method.name, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epochs_done, "step": step,
            "rng": _rng_state(), "loop_config": asdict(config), **method.checkpoint_extra(),
        })

    log_file = RunLog(config.log_path, method.name) if config.log_path else None

    def log(record: dict[str, Any]) -> None:
        if log_file is not None:
            log_file.write(record)

    evaluate = getattr(method, "evaluate", None)
    train_start = time.perf_counter()
    epoch_loss, curves = float("nan"), None
    try:
        # marks where this run starts in a log that earlier runs appended to (training.curves.read_run)
        log({"kind": "start", "epoch": start_epoch, "step": step, "epochs": config.epochs, "steps_per_epoch": steps_per_epoch})
        for epoch in range(start_epoch, config.epochs):
            model.train()
            if own_loader:
                loader.generator.manual_seed(config.seed + epoch)
            bar = tqdm(itertools.islice(loader, steps_per_epoch), total=steps_per_epoch, disable=not config.progress,
                       desc=f"{method.name} epoch {epoch + 1}/{config.epochs}", leave=False)
            epoch_start, window_start, window_images, loss_sum = time.perf_counter(), time.perf_counter(), 0, 0.0
            for batch in bar:
                batch = _to_device(batch, device)
                with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                    loss, metrics = method.training_step(batch)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                step += 1
                loss_value = loss.item()  # one sync per step; negligible next to a training step
                if not math.isfinite(loss_value):
                    raise FloatingPointError(f"{method.name}: loss is {loss_value} at step {step}; lower lr or check the data")
                loss_sum += loss_value
                window_images += _batch_size(batch)
                if step % config.log_every_steps == 0:
                    images_per_s = window_images / (time.perf_counter() - window_start)
                    bar.set_postfix(loss=f"{loss_value:.4f}", img_s=f"{images_per_s:.0f}")
                    log({"kind": "step", "epoch": epoch + 1, "step": step, "loss": loss_value,
                         "lr": scheduler.get_last_lr()[0], "images_per_s": images_per_s,
                         **{k: float(v) for k, v in metrics.items()}})
                    window_start, window_images = time.perf_counter(), 0
            epoch_loss = loss_sum / steps_per_epoch
            epoch_time_s = time.perf_counter() - epoch_start
            due = config.eval_every_epochs > 0 and ((epoch + 1) % config.eval_every_epochs == 0 or epoch + 1 == config.epochs)
            scores = {k: float(v) for k, v in evaluate().items()} if evaluate is not None and due else {}
            log({"kind": "epoch", "epoch": epoch + 1, "step": step, "loss": epoch_loss, "epoch_time_s": epoch_time_s,
                 **({"eval": scores} if scores else {})})
            if log_file is not None:
                curves = write_curves(config.log_path)  # after every epoch, so a long run's picture is never far behind
            if config.progress:
                shown = "".join(f", {k} {v:.2f}" for k, v in scores.items())
                tqdm.write(f"{method.name} epoch {epoch + 1}/{config.epochs}: loss {epoch_loss:.4f}{shown}, {epoch_time_s:.1f} s")
            if checkpoint_path is not None and ((epoch + 1) % config.checkpoint_every_epochs == 0 or epoch + 1 == config.epochs):
                save(epoch + 1)
    finally:
        if log_file is not None:
            log_file.close()
    model.eval()
    return {"epoch": config.epochs, "step": step, "loss": epoch_loss, "train_time_s": time.perf_counter() - train_start,
            "curves_path": str(curves) if curves else None}
