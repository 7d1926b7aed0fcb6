"""A small text transformer trained from scratch: token ids and their mask to one vector per text.

nanoGPT's pre-norm block without the causal mask: padding is masked out of attention, and the
output is the mean of the final token states over the real (non-pad) tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F


@dataclass(frozen=True)
class TextTransformerConfig:
    vocab_size: int = 2000  # the tokenizer's vocabulary, specials included
    context_length: int = 16  # T: the tokenizer pads and truncates to this many tokens
    width: int = 128  # C: token state size, also the output size
    layers: int = 2  # transformer blocks
    heads: int = 4  # attention heads; width must be a multiple of this
    dropout: float = 0.0  # on attention weights and residual branches


class Block(nn.Module):
    """Pre-norm: x + attention(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, config: TextTransformerConfig):
        super().__init__()
        if config.width % config.heads:
            raise ValueError(f"width {config.width} is not a multiple of heads {config.heads}")
        self.heads, self.dropout = config.heads, config.dropout
        self.ln_1 = nn.LayerNorm(config.width)
        self.qkv = nn.Linear(config.width, 3 * config.width)
        self.proj = nn.Linear(config.width, config.width)
        self.ln_2 = nn.LayerNorm(config.width)
        self.mlp = nn.Sequential(nn.Linear(config.width, 4 * config.width), nn.GELU(),
                                 nn.Linear(4 * config.width, config.width), nn.Dropout(config.dropout))

    def forward(self, x: Tensor, attend: Tensor) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln_1(x)).chunk(3, dim=2)  # (B, T, C) each
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))  # (B, h, T, C/h)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attend, dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        x = x + F.dropout(self.proj(y), self.dropout, self.training)
        return x + self.mlp(self.ln_2(x))


class TextTransformer(nn.Module):
    """(ids int64 (B, T), attention_mask (B, T)) -> (B, width): masked mean of the token states."""

    def __init__(self, config: TextTransformerConfig = TextTransformerConfig()):
        super().__init__()
        self.config, self.dim = config, config.width
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.position_embedding = nn.Parameter(torch.zeros(config.context_length, config.width))
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.layers))
        self.ln_final = nn.LayerNorm(config.width)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding, std=0.01)

    def forward(self, ids: Tensor, attention_mask: Tensor) -> Tensor:
        T = ids.shape[1]
        if not torch.jit.is_tracing() and T > self.config.context_length:  # a traced graph keeps no Python checks
            raise ValueError(f"{T} tokens but the model has positions for {self.config.context_length}")
        x = self.token_embedding(ids) + self.position_embedding[:T]  # (B, T, C)
        keep = attention_mask.to(x.dtype)  # (B, T): 1 for real tokens, 0 for padding
        attend = (keep[:, None, None, :] > 0)  # (B, 1, 1, T): every query may look at the real keys
        for block in self.blocks:
            x = block(x, attend)
        x = self.ln_final(x)  # (B, T, C)
        return (x * keep[:, :, None]).sum(1) / keep.sum(1, keepdim=True).clamp(min=1.0)  # (B, C)
