"""CLIP: an image tower and a text tower trained together so that any class named in words can be
recognised without retraining (zero-shot).

Reads top to bottom: the config (with a `quick` CPU profile), the two towers as export sees them,
the method the shared training loop drives, `train_clip`, and `load_clip_towers`, which turns a
checkpoint back into the two towers plus everything a bundle needs (tokenizer, preprocessing);
last, helpers for evaluation and export, the query bank of zero-shot normalisation among them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import Tensor, nn
from torch.nn import functional as F

from runtime.preprocessing import PreprocessingSpec
from runtime.templates import TRAIN_TEMPLATES
from runtime.tokens import encode_batch, load_tokenizer
from training.checkpoint import load_checkpoint
from training.data.captions import (FASHION_MNIST_CLASS_NAMES, FASHION_MNIST_DESCRIPTIONS, FASHION_MNIST_KINDS,
                                    FASHION_MNIST_SYNONYMS, CaptionedImages, fashion_mnist_caption)
from training.data.image_defaults import with_data_defaults
from training.data.images import ImageDataConfig, load_image_arrays, random_subset, split_positions
from training.data.pairs import category_labels, open_pairs
from training.data.tokenizer import load_minilm_tokenizer, train_bpe_tokenizer
from training.data.transforms import EvalTransform
from training.evaluation.knn_monitor import KnnMonitor
from training.evaluation.zero_shot_top1 import zero_shot_top1
from training.loop import LoopConfig, fit
from training.losses.clip import ClipLoss
from training.models.heads import ProjectionHead
from training.models.minilm import MiniLMTextEncoder, minilm_path
from training.models.text_transformer import TextTransformer, TextTransformerConfig
from training.methods.encoders import EncoderSpec, resnet_spec


@dataclass(frozen=True)
class ClipConfig(ImageDataConfig, LoopConfig):
    # data: the fields of ImageDataConfig, with `data` "fashion-mnist" (captions from labels) or a
    # manifest (.csv/.jsonl) or .tar shard(s) path; then
    held_out_classes: tuple[str, ...] = ()  # Fashion-MNIST classes kept out of training, images and words (open-vocabulary split)
    caption_kind_prob: float = 0.5  # chance a Fashion-MNIST caption also names the kind ("..., a kind of shoe")
    caption_description_prob: float = 0.5  # chance it also describes the look ("..., with a collar")
    # image tower
    width: int = 64  # ResNet-18 base width (64 = standard, 512-d features); smaller for CPU
    # text tower
    text_tower: Literal["minilm", "scratch"] = "minilm"  # "minilm" (pretrained all-MiniLM-L6-v2) or "scratch" (small transformer + BPE)
    lock_text: bool = True  # LiT-style: freeze the text tower's weights; only its projection head learns
    text_lr_scale: float = 0.1  # an unlocked pretrained MiniLM learns at this fraction of lr, so it is not wiped out
    context_length: int = 24  # tokens per caption, specials included (truncated or padded to this)
    vocab_size: int = 1000  # BPE vocabulary of the scratch tower
    text_width: int = 128  # scratch tower: token state size
    text_layers: int = 2  # scratch tower: transformer blocks
    text_heads: int = 4  # scratch tower: attention heads
    # shared space and loss
    embed_dim: int = 128  # size of the joint image–text space both projection heads map into
    text_projection: bool = True  # False: no text head; images map straight into the text tower's own space
                                  # (with a locked MiniLM this keeps its geometry, which unseen class names rely on)
    init_temperature: float = 0.07  # logit scale starts at 1 / this
    max_logit_scale: float = 100.0  # cap on the learned logit scale
    # the shared loop's fields (LoopConfig), with this method's defaults
    epochs: int = 20
    batch_size: int = 256  # image–caption pairs per step; every other pair in the batch is a negative
    lr: float = 1e-3  # peak AdamW learning rate
    weight_decay: float = 0.1
    warmup_epochs: float = 1.0
    num_workers: int = 4
    checkpoint_path: str = "artifacts/checkpoints/clip.pt"
    log_path: str | None = "artifacts/logs/clip.jsonl"

    @classmethod
    def quick(cls, **overrides: Any) -> ClipConfig:
        """CPU profile (~335 CPU-seconds, so about 3-4 minutes on 2 free cores): width-8 ResNet, locked MiniLM
        with no text head (images map into its space), 110 steps of 256 pairs (on a small manifest, batches
        small enough for 10 steps an epoch)."""
        quick = cls(width=8, subset=30_000, epochs=1, batch_size=256, max_steps_per_epoch=110, min_steps_per_epoch=10,
                    lr=2e-3, text_projection=False,
                    warmup_epochs=0.1, num_workers=0, checkpoint_path="artifacts/checkpoints/clip-quick.pt",
                    log_path="artifacts/logs/clip-quick.jsonl")
        return replace(quick, **overrides)


# ---- the two towers, as export and evaluation see them ----

class ImageTower(nn.Module):
    """Preprocessed images (B, C, H, W) -> unit vectors (B, embed_dim) in the joint space."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, images: Tensor) -> Tensor:
        return F.normalize(self.head(self.backbone(images)), dim=-1)  # (B, embed_dim)


class TextTower(nn.Module):
    """Token ids and attention mask (B, T) -> unit vectors (B, embed_dim) in the joint space."""

    def __init__(self, encoder: nn.Module, head: nn.Module):
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, ids: Tensor, attention_mask: Tensor) -> Tensor:
        return F.normalize(self.head(self.encoder(ids, attention_mask)), dim=-1)  # (B, embed_dim)


def _linear_head(input_dim: int, output_dim: int) -> ProjectionHead:
    return ProjectionHead([(input_dim, output_dim, None, None)])  # CLIP's heads are single linear maps


def _build_text_encoder(config: ClipConfig, pretrained: bool = True) -> nn.Module:
    if config.text_tower == "minilm":
        return MiniLMTextEncoder(freeze=config.lock_text, pretrained=pretrained)
    if config.text_tower == "scratch":
        return TextTransformer(TextTransformerConfig(vocab_size=config.vocab_size, context_length=config.context_length,
                                                     width=config.text_width, layers=config.text_layers,
                                                     heads=config.text_heads))
    raise ValueError(f"text_tower must be 'minilm' or 'scratch', not {config.text_tower!r}")


def image_backbone_spec(config: ClipConfig) -> EncoderSpec:
    """The image tower's bare backbone, as build_towers builds it and the checkpoint records it."""
    return resnet_spec(config, prefix="image.backbone.")


def build_towers(config: ClipConfig, pretrained: bool = True) -> nn.ModuleDict:
    """Everything trained: image tower, text tower and the loss (which holds the learned temperature)."""
    backbone = image_backbone_spec(config).build()
    text_encoder = _build_text_encoder(config, pretrained)
    dim = config.embed_dim if config.text_projection else text_encoder.dim
    text_head = _linear_head(text_encoder.dim, dim) if config.text_projection else nn.Identity()
    return nn.ModuleDict({
        "image": ImageTower(backbone, _linear_head(backbone.dim, dim)),
        "text": TextTower(text_encoder, text_head),
        "loss": ClipLoss(config.init_temperature, config.max_logit_scale),
    })


# ---- captions and tokenizer ----

def kept_class_names(config: ClipConfig) -> list[str]:
    unknown = set(config.held_out_classes) - set(FASHION_MNIST_CLASS_NAMES)
    if unknown:
        raise ValueError(f"held_out_classes {sorted(unknown)} are not Fashion-MNIST classes {FASHION_MNIST_CLASS_NAMES}")
    return [c for c in FASHION_MNIST_CLASS_NAMES if c not in config.held_out_classes]


def _fashion_mnist_corpus(class_names: Sequence[str]) -> list[str]:
    """Every caption the training captions can be, for the BPE tokenizer to learn from."""
    kinds = {FASHION_MNIST_KINDS[c] for c in class_names}
    return [t.format(s) for c in class_names for s in FASHION_MNIST_SYNONYMS[c] for t in TRAIN_TEMPLATES] + \
           [f"a kind of {k}" for k in kinds] + [d for c in class_names for d in FASHION_MNIST_DESCRIPTIONS[c]]


def build_tokenizer(config: ClipConfig, captions: Sequence[str]) -> Tokenizer:
    """MiniLM's own tokenizer, or a BPE trained on `captions`; both fixed at config.context_length."""
    if config.text_tower == "minilm":
        return load_minilm_tokenizer(minilm_path(), config.context_length)
    return train_bpe_tokenizer(captions, config.vocab_size, config.context_length)


def open_clip_dataset(config: ClipConfig, transform: Callable) -> tuple[Any, list[str]]:
    """The training pairs (transform(image), caption) and a corpus of their captions for the tokenizer.
    For Fashion-MNIST the held-out classes' images are dropped, and their words never appear; a
    manifest with categories loses its held-out part (config.held_out_fraction), scored after each epoch."""
    if config.data != "fashion-mnist":
        dataset = open_pairs(config.data, config.mode, transform)
        labels, _ = category_labels(dataset.categories)
        dataset.keep(split_positions(dataset.keys(), labels, "train", config.held_out_fraction))
        return dataset, dataset.captions
    kept = kept_class_names(config)
    images, labels = load_image_arrays("fashion-mnist", "train", config.data_root)
    keep = np.isin(labels, [FASHION_MNIST_CLASS_NAMES.index(c) for c in kept])
    images, labels = images[keep], labels[keep]
    chosen = random_subset(len(images), config.subset, config.seed)
    if chosen is not None:
        images, labels = images[chosen], labels[chosen]

    def caption_for(label: int, rng: random.Random) -> str:
        return fashion_mnist_caption(label, rng, TRAIN_TEMPLATES, config.caption_kind_prob, config.caption_description_prob)

    return CaptionedImages(images, labels, caption_for, transform, config.seed), _fashion_mnist_corpus(kept)


# The open-vocabulary split: two classes whose images and words never reach training.
OPEN_VOCABULARY_HELD_OUT = ("sneaker", "bag")


# ---- the method the loop drives ----

class Clip:
    """Image tower + text tower + ClipLoss; captions are tokenised inside the step, the same way
    serving tokenises them (runtime.tokens.encode_batch on the saved tokenizer.json)."""

    name = "clip"

    def __init__(self, config: ClipConfig, tokenizer: Tokenizer):
        self.config, self.tokenizer = with_data_defaults(config), tokenizer
        config = self.config
        self.model = build_towers(config)
        # A locked tower gives the same features for the same caption, and templated captions repeat,
        # so each distinct caption goes through it once: that makes a locked MiniLM almost free.
        self._locked_features: dict[str, Tensor] = {}
        self.monitor = KnnMonitor(config)  # Fashion-MNIST: loads its images at the first evaluate(); manifests: none

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Matrices decay, vectors and the temperature do not; an unlocked MiniLM learns slower."""
        groups = []
        slow = self.model["text"].encoder if self.config.text_tower == "minilm" and not self.config.lock_text else None
        slow_ids = {id(p) for p in slow.parameters()} if slow is not None else set()
        for scale, params in ((1.0, [p for p in self.model.parameters() if id(p) not in slow_ids]),
                              (self.config.text_lr_scale, list(slow.parameters()) if slow is not None else [])):
            params = [p for p in params if p.requires_grad]
            for decay, chosen in ((weight_decay, [p for p in params if p.dim() >= 2]), (0.0, [p for p in params if p.dim() < 2])):
                if chosen:
                    # LambdaLR scales each group's initial_lr, so a group's lr ratio holds through the schedule
                    groups.append({"params": chosen, "weight_decay": decay, "lr": self.config.lr * scale})
        return groups

    def tokenize(self, captions: Sequence[str], device: torch.device) -> tuple[Tensor, Tensor]:
        ids, mask = encode_batch(self.tokenizer, captions)  # (B, T) each, int64
        return torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)

    def text_features(self, captions: Sequence[str], device: torch.device) -> Tensor:
        """The text encoder's output (B, text dim) for `captions`, from the cache when it is locked."""
        encoder = self.model["text"].encoder
        if not self.config.lock_text:
            return encoder(*self.tokenize(captions, device))
        missing = sorted(set(captions) - self._locked_features.keys())
        if missing:
            with torch.no_grad():
                encoder.eval()  # dropout off: the locked features must be deterministic
                features = encoder(*self.tokenize(missing, device))  # (M, text dim)
            self._locked_features.update(zip(missing, features.float().cpu()))
        return torch.stack([self._locked_features[c] for c in captions]).to(device)  # (B, text dim)

    def training_step(self, batch: tuple[Tensor, list[str]]) -> tuple[Tensor, dict[str, Any]]:
        images, captions = batch  # (B, C, H, W), B strings
        image_embeddings = self.model["image"](images)  # (B, embed_dim), unit rows
        text_embeddings = F.normalize(self.model["text"].head(self.text_features(captions, images.device)), dim=-1)  # (B, embed_dim)
        loss = self.model["loss"](image_embeddings, text_embeddings)
        with torch.no_grad():
            # share of images whose own caption is the most similar text in the batch (duplicates of the
            # same class wording cap this below 1 on labelled data)
            matched = (image_embeddings @ text_embeddings.T).argmax(1) == torch.arange(len(captions), device=images.device)
        return loss, {"logit_scale": self.model["loss"].logit_scale().detach(), "batch_i2t_top1": matched.float().mean()}

    def evaluate(self) -> dict[str, float]:
        """kNN top-1 of the image tower's joint-space embeddings after an epoch (held-out classes
        included) and, where the held-out images' classes have names, zero-shot top-1 on them."""
        scores = self.monitor(self.model["image"])
        held_out = self.monitor.held_out()
        if held_out is None:
            return scores
        images, labels, class_names = held_out
        was_training = self.model.training
        self.model.eval()
        try:
            device = next(self.model.parameters()).device
            with torch.inference_mode():
                embedded = torch.cat([self.model["image"](images[i:i + 256].to(device)) for i in range(0, len(images), 256)])
                scores["zero_shot_top1_pct"] = zero_shot_top1(
                    embedded, labels, class_names, lambda texts: self.model["text"](*self.tokenize(texts, device)))
        finally:
            self.model.train(was_training)
        return scores

    def checkpoint_extra(self) -> dict[str, Any]:
        c = self.config
        return {
            **image_backbone_spec(c).checkpoint_entries(c),  # the bare image backbone, for image-only evaluation
            "tokenizer_json": self.tokenizer.to_str(),
            "context_length": c.context_length,
            "class_names": list(FASHION_MNIST_CLASS_NAMES) if c.data == "fashion-mnist" else None,
        }


def train_clip(config: ClipConfig, resume: bool = False) -> dict[str, Any]:
    """Train CLIP and save its checkpoint at config.checkpoint_path; returns the loop's summary plus
    "checkpoint_path". Resume continues a run interrupted after a saved epoch."""
    config = with_data_defaults(config)  # colour, size, mean and std from the data where not given
    transform = EvalTransform(config.image_size, config.mode, config.mean, config.std)
    dataset, corpus = open_clip_dataset(config, transform)
    tokenizer = build_tokenizer(config, corpus)
    torch.manual_seed(config.seed)  # the same initial weights for the same seed
    method = Clip(config, tokenizer)
    summary = fit(method, dataset, config.loop_config(), resume=resume)
    return {**summary, "checkpoint_path": config.checkpoint_path}


def embedding_dim(config: ClipConfig, text_tower: TextTower) -> int:
    return config.embed_dim if config.text_projection else text_tower.encoder.dim


def config_from_dict(saved: dict[str, Any]) -> ClipConfig:
    """The ClipConfig a checkpoint saved as a dict (its tuples came back as lists)."""
    return ClipConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})


@dataclass(frozen=True)
class ClipInfo:
    """What a CLIP checkpoint says besides the weights: everything its bundle needs."""

    dim: int  # the joint space's size
    logit_scale: float  # the learned inverse temperature, for zero-shot softmax
    preprocessing: PreprocessingSpec  # how an image becomes the image tower's input
    tokenizer_json: str  # the text of the tokenizer.json training tokenised with
    context_length: int  # tokens per text, specials included
    class_names: tuple[str, ...] | None  # Fashion-MNIST's classes when trained on them, else None
    config: dict[str, Any]  # the training config, as saved


def load_clip_towers(checkpoint_path: str, device: str | torch.device = "cpu") -> tuple[nn.Module, nn.Module, ClipInfo]:
    """(image tower, text tower, info) in eval mode from a CLIP checkpoint.

    image tower: preprocessed images float32 (B, C, H, W) -> unit embeddings (B, dim).
    text tower: (ids int64 (B, T), attention_mask int64 (B, T)) -> unit embeddings (B, dim), with ids
    and mask from runtime.tokens.encode_batch(load_tokenizer(info.tokenizer_json), texts).
    """
    checkpoint = load_checkpoint(checkpoint_path, map_location=device)
    if checkpoint.get("method") != "clip":
        raise ValueError(f"{checkpoint_path} is a {checkpoint.get('method')!r} checkpoint, not a CLIP one")
    config = config_from_dict(checkpoint["config"])
    towers = build_towers(config, pretrained=False)  # the checkpoint brings every weight, MiniLM's too
    towers.load_state_dict(checkpoint["model"])
    towers.to(device).eval()
    class_names = checkpoint.get("class_names")
    info = ClipInfo(
        dim=embedding_dim(config, towers["text"]), logit_scale=float(towers["loss"].logit_scale().detach()),
        preprocessing=PreprocessingSpec.from_dict(checkpoint["preprocessing"]),
        tokenizer_json=checkpoint["tokenizer_json"], context_length=int(checkpoint["context_length"]),
        class_names=tuple(class_names) if class_names else None, config=checkpoint["config"],
    )
    return towers["image"], towers["text"], info


# ---- helpers for evaluation and benchmarks ----

def text_encoder_fn(text_tower: nn.Module, tokenizer_json: str, batch_size: int = 256) -> Callable[[list[str]], np.ndarray]:
    """texts -> unit embeddings (N, dim) as numpy: the `encode_texts` index.class_matrix expects."""
    tokenizer = load_tokenizer(tokenizer_json)
    device = next(text_tower.parameters()).device

    def encode_texts(texts: list[str]) -> np.ndarray:
        out = []
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                ids, mask = encode_batch(tokenizer, texts[start:start + batch_size])  # (b, T) each
                out.append(text_tower(torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)).float().cpu())
        return torch.cat(out).numpy()  # (N, dim)

    return encode_texts


def tower_embeddings(image_tower: nn.Module, images: Tensor, batch_size: int = 512) -> np.ndarray:
    """Preprocessed images (N, C, H, W) -> unit embeddings (N, dim) as numpy, in batches."""
    device = next(image_tower.parameters()).device
    with torch.no_grad():
        return torch.cat([image_tower(images[i:i + batch_size].to(device)).float().cpu()
                          for i in range(0, len(images), batch_size)]).numpy()


def query_bank_embeddings(image_tower: nn.Module, info: ClipInfo, images: int = 2048, seed: int = 0,
                          batch_size: int = 512) -> np.ndarray:
    """Image-tower embeddings (N, dim) float32, unit rows, of N = min(images, data size) random
    training images (seeded): the data the model in `info` (from load_clip_towers) was trained on,
    through open_clip_dataset, so the same subset and no held-out class, preprocessed as its bundle
    says. This is the query bank of index.class_matrix.query_bank_offsets. Raises what opening the
    data raises (FileNotFoundError, ValueError) when that data is not on this machine."""
    transform = EvalTransform.from_spec(info.preprocessing)
    dataset, _ = open_clip_dataset(config_from_dict(info.config), transform)
    chosen = random_subset(len(dataset), images, seed)
    chosen = np.arange(len(dataset)) if chosen is None else chosen
    embeddings = []
    for start in range(0, len(chosen), batch_size):  # a batch at a time: large RGB images do not pile up
        batch = torch.stack([dataset[int(i)][0] for i in chosen[start:start + batch_size]])  # (b, C, H, W)
        embeddings.append(tower_embeddings(image_tower, batch, batch_size))  # (b, dim)
    return np.concatenate(embeddings)  # (N, dim) float32
