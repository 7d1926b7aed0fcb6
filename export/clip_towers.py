"""The source library's CLIP model, loaded from a folder that export.clip_folders read, and its two
towers as the torch modules that become the bundle's ONNX models: images (B, 3, H, W) -> unit
rows (B, D), and (ids, attention_mask) (B, T) -> unit rows (B, D), each with the model's own
projection and the text tower with the model's own pooling of the end-of-text token's state.

The pooling takes the argmax of token ids on int32 (transformers does so itself; open_clip's is
wrapped here): onnxruntime has no ArgMax over int64 (transformers #18515, openai/CLIP #219).
A Hugging Face config whose text eos_token_id is 2 (written before transformers #24777) pools at
the highest token id, as transformers still does for it; others at the first eos_token_id.
Both text towers take any number of tokens up to the context (a causal model's end token never
reads the padding after it), so the server runs a batch on the tokens its longest text uses.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from export.clip_folders import ClipFolder
from export.folders import FolderError


@dataclass
class SourceClip:
    """The folder's model as its own library runs it, and what the import needs from it."""

    model: nn.Module  # transformers' CLIPModel or open_clip's CLIP, on CPU, in eval mode
    image_tower: nn.Module  # (B, 3, H, W) float32 -> (B, D) unit rows
    text_tower: nn.Module  # (ids, attention_mask) (B, T) int64 -> (B, D) unit rows
    encode_images: Callable[[torch.Tensor], torch.Tensor]  # the library's own image features (B, D), not normalised
    encode_texts: Callable[[list[str]], torch.Tensor]  # the library's own tokenizer and text features (B, D)
    preprocess: Callable[[Any], torch.Tensor]  # the library's own transform: one PIL image -> (3, H, W)
    logit_scale: float  # exp of the learned log scale: zero-shot's softmax temperature's inverse
    pooling: str  # how the text tower pools: "argmax" of ids, or "eos" (the first eos_token_id)
    eos_token_id: int  # the end-of-text token's id
    dim: int  # embedding dimension
    reference: str  # the library and version, for the manifest


def load_source(folder: ClipFolder) -> SourceClip:
    """The model in `folder` through its own library, never reaching for the Hub."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are local; a missing file must fail, not download
    loader = _load_transformers if folder.library == "transformers" else _load_open_clip
    try:
        return loader(folder)
    except FolderError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged file fails in many ways; each is this folder's fault
        raise FolderError(f"{folder.library} cannot load {folder.path} ({type(e).__name__}: {e}); "
                          "restore the folder from the model's source") from e


def _pool_at(states: torch.Tensor, ids: torch.Tensor, pooling: str, eos_token_id: int) -> torch.Tensor:
    """The state (B, H) of each row's end-of-text token in `states` (B, T, H), found in `ids` (B, T)
    as the model's own pooling finds it, through int32 (onnxruntime's ArgMax takes no int64)."""
    ids = ids.to(torch.int32)
    position = ids.argmax(dim=-1) if pooling == "argmax" else (ids == eos_token_id).to(torch.int32).argmax(dim=-1)  # (B,)
    index = position[:, None, None].expand(-1, 1, states.shape[-1]).to(torch.int64)  # (B, 1, H)
    return states.gather(1, index).squeeze(1)  # (B, H)


class _TransformersImageTower(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(_features(self.model.get_image_features(pixel_values=images)), dim=-1)  # (B, D)


class _TransformersTextTower(nn.Module):
    """transformers' CLIPTextTransformer's states, pooled at the end token, projected, normalised."""

    def __init__(self, model: nn.Module, pooling: str, eos_token_id: int):
        super().__init__()
        self.text_model, self.projection = model.text_model, model.text_projection
        self.pooling, self.eos_token_id = pooling, eos_token_id

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.text_model(input_ids=ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H), after its final norm
        return F.normalize(self.projection(_pool_at(states, ids, self.pooling, self.eos_token_id)), dim=-1)  # (B, D)


def _features(output: Any) -> torch.Tensor:
    """get_*_features' answer: a tensor (transformers 4) or an output whose pooler_output it is (5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _load_transformers(folder: ClipFolder) -> SourceClip:
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel, __version__  # lazy: heavy

    # a .bin is read with torch.load(weights_only=True) by transformers itself: tensors, never code
    model = CLIPModel.from_pretrained(str(folder.path), local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder.path), local_files_only=True)
    processor = CLIPImageProcessor.from_pretrained(str(folder.path), local_files_only=True)
    eos = int(model.config.text_config.eos_token_id)
    pooling = "argmax" if eos == 2 else "eos"  # the legacy configs of transformers #24777

    def encode_texts(texts: list[str]) -> torch.Tensor:
        batch = tokenizer(texts, padding="max_length", truncation=True, max_length=folder.context_length, return_tensors="pt")
        with torch.no_grad():
            return _features(model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]))

    def encode_images(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return _features(model.get_image_features(pixel_values=images))

    def preprocess(image: Any) -> torch.Tensor:
        return processor(images=image, return_tensors="pt")["pixel_values"][0]  # (3, H, W)

    return SourceClip(model=model, image_tower=_TransformersImageTower(model).eval(),
                      text_tower=_TransformersTextTower(model, pooling, eos).eval(), encode_images=encode_images,
                      encode_texts=encode_texts, preprocess=preprocess, logit_scale=float(model.logit_scale.detach().exp()),
                      pooling=pooling, eos_token_id=eos, dim=int(model.config.projection_dim),
                      reference=f"transformers {__version__} CLIPModel.get_image_features/get_text_features")


class _OpenClipImageTower(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images, normalize=True)  # (B, D)


class _OpenClipTextTower(nn.Module):
    """open_clip's CLIP.encode_text on the first T positions (it adds all 77 positional embeddings,
    so it takes exactly 77 tokens; its causal mask makes the first T the same computation)."""

    def __init__(self, model: nn.Module, pooling: str, eos_token_id: int):
        super().__init__()
        self.model, self.pooling, self.eos_token_id = model, pooling, eos_token_id

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        m, length = self.model, ids.shape[1]
        x = m.token_embedding(ids) + m.positional_embedding[:length]  # (B, T, W)
        mask = m.attn_mask[:length, :length] if m.attn_mask is not None else None  # (T, T) causal
        x = m.ln_final(m.transformer(x, attn_mask=mask))  # (B, T, W)
        # open_clip reads no attention mask; the end token it pools is attended, so zeroing the
        # padding's states changes nothing, and keeps the mask the input every text tower takes
        x = x * attention_mask[:, :, None].to(x.dtype)  # (B, T, W)
        pooled = _pool_at(x, ids, self.pooling, self.eos_token_id)  # (B, W)
        projected = m.text_projection(pooled) if isinstance(m.text_projection, nn.Linear) else pooled @ m.text_projection
        return F.normalize(projected, dim=-1)  # (B, D)


class _WrittenOutAttention(nn.Module):
    """nn.MultiheadAttention's self-attention arithmetic (softmax(QK^T / sqrt(d) + mask) V, the
    projections its own), written with shapes read from the input, so that a traced ONNX graph
    keeps the batch and the tokens dynamic: torch's own forward reshapes by Python products of
    them, which the trace freezes at the example's sizes."""

    def __init__(self, attention: nn.MultiheadAttention):
        super().__init__()
        self.attention = attention

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, need_weights: bool = False,
                attn_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        a = self.attention
        x = query if a.batch_first else query.transpose(0, 1)  # (B, T, E)
        heads, width = a.num_heads, a.embed_dim // a.num_heads
        qkv = F.linear(x, a.in_proj_weight, a.in_proj_bias)  # (B, T, 3E)
        qkv = qkv.reshape(x.shape[0], x.shape[1], 3, heads, width).permute(2, 0, 3, 1, 4)  # (3, B, heads, T, width)
        scores = qkv[0] @ qkv[1].transpose(-1, -2) / width ** 0.5  # (B, heads, T, T)
        if attn_mask is not None:
            scores = scores.masked_fill(attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
        out = (scores.softmax(-1) @ qkv[2]).transpose(1, 2).reshape(x.shape)  # (B, T, E)
        out = a.out_proj(out)
        return (out if a.batch_first else out.transpose(0, 1)), None


@contextmanager
def exportable_attention(model: nn.Module) -> Iterator[None]:
    """For an ONNX export: every nn.MultiheadAttention in `model` (open_clip's blocks) computes as
    _WrittenOutAttention, the same weights; the model is left as it was."""
    swapped = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if isinstance(child, nn.MultiheadAttention) and child._qkv_same_embed_dim]
    for parent, name, child in swapped:
        setattr(parent, name, _WrittenOutAttention(child))
    try:
        yield
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


def _load_open_clip(folder: ClipFolder) -> SourceClip:
    import open_clip  # lazy: heavy, and only this importer needs it

    name = f"local-dir:{folder.path}"
    # open_clip reads a .bin with torch.load(weights_only=True), its default: tensors, never code
    model, _, preprocess = open_clip.create_model_and_transforms(name, device="cpu")
    model = model.eval()
    if not hasattr(model, "token_embedding"):
        raise FolderError(f"{folder.path}: an open_clip {type(model).__name__} (custom text tower) is not supported; "
                          "this importer reads open_clip's CLIP")
    tokenizer = open_clip.get_tokenizer(name)
    pooling = getattr(model, "text_pool_type", "argmax")
    # open_clip pools "eos" at its text_cfg.eos_id, whatever the tokenizer's end token is
    eos = int(model.text_eos_id) if pooling == "eos" else int(tokenizer.eot_token_id)

    def encode_texts(texts: list[str]) -> torch.Tensor:
        with torch.no_grad():
            return model.encode_text(tokenizer(texts))

    def encode_images(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model.encode_image(images)

    dim = int(folder.config["model_cfg"].get("embed_dim") or encode_texts(["a"]).shape[1])
    return SourceClip(model=model, image_tower=_OpenClipImageTower(model).eval(),
                      text_tower=_OpenClipTextTower(model, pooling, eos).eval(), encode_images=encode_images,
                      encode_texts=encode_texts, preprocess=preprocess, logit_scale=float(model.logit_scale.detach().exp()),
                      pooling=pooling, eos_token_id=eos, dim=dim,
                      reference=f"open_clip {open_clip.__version__} encode_image/encode_text")


def unit(x: torch.Tensor) -> np.ndarray:
    """A library's features (B, D) as float32 unit rows."""
    return F.normalize(x.float(), dim=-1).numpy()
