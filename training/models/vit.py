"""A small Vision Transformer over non-overlapping patches, the backbone MAE trains.

Patches are embedded by a strided convolution and given fixed 2-D sin-cos positions; the encoder
may be handed the indices of the patches to keep (MAE shows it only the visible quarter). The
image embedding is the layer-normed mean of the output tokens (no class token).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sincos_pos_embed_2d(grid_size: int, dim: int) -> Tensor:
    """Fixed 2-D sine-cosine position embeddings (MAE's), (grid_size**2, dim), row-major patch order."""
    if dim % 4:
        raise ValueError(f"embedding dim must be a multiple of 4 for 2-D sin-cos positions, not {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))  # (D/4,)
    ys, xs = torch.meshgrid(torch.arange(grid_size, dtype=torch.float64), torch.arange(grid_size, dtype=torch.float64), indexing="ij")

    def embed(pos: Tensor) -> Tensor:
        angles = pos.reshape(-1, 1) * omega  # (N, D/4)
        return torch.cat([angles.sin(), angles.cos()], dim=1)  # (N, D/2)

    return torch.cat([embed(xs), embed(ys)], dim=1).float()  # (N, D)


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """(B, C, H, W) -> (B, N, patch_size**2 * C), patches row-major, pixels (p, q, c) inside each."""
    B, C, H, W = images.shape
    h, w = H // patch_size, W // patch_size
    x = images.reshape(B, C, h, patch_size, w, patch_size)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(B, h * w, patch_size * patch_size * C)  # (B, N, P)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, h, N, D/h)
        x = F.scaled_dot_product_attention(q, k, v)  # (B, h, N, D/h)
        return self.proj(x.transpose(1, 2).reshape(B, N, D))  # (B, N, D)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(), nn.Linear(int(dim * mlp_ratio), dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTEncoder(nn.Module):
    """(B, C, H, W) -> embedding (B, dim); `forward_tokens` gives the per-patch tokens."""

    def __init__(self, image_size: int = 28, patch_size: int = 4, in_channels: int = 1,
                 dim: int = 192, depth: int = 6, num_heads: int = 3, mlp_ratio: float = 4.0):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.patch_size, self.dim = patch_size, dim
        self.grid_size = image_size // patch_size
        self.num_patches = self.grid_size ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(self.grid_size, dim)[None], persistent=False)  # (1, N, D)
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        init_transformer_weights(self)
        nn.init.xavier_uniform_(self.patch_embed.weight.view(dim, -1))  # as a linear layer on flattened patches, like MAE

    def forward_tokens(self, images: Tensor, keep_ids: Tensor | None = None) -> Tensor:
        """Tokens of all patches, or only of `keep_ids` (B, N_keep) when given: (B, N or N_keep, D)."""
        x = self.patch_embed(images).flatten(2).transpose(1, 2) + self.pos_embed  # (B, N, D)
        if keep_ids is not None:
            x = torch.gather(x, 1, keep_ids[..., None].expand(-1, -1, x.shape[-1]))  # (B, N_keep, D)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, images: Tensor) -> Tensor:
        return self.forward_tokens(images).mean(dim=1)  # (B, D)


def init_transformer_weights(module: nn.Module) -> None:
    """MAE's initialisation: Xavier-uniform linear weights, zero biases, unit LayerNorms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
