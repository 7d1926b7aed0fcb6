"""Projection heads: a base class built from a list of layer specs, one small subclass per method."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

# (input_dim, output_dim, normalisation layer or None, activation or None) for one Linear layer.
LayerSpec = tuple[int, int, nn.Module | None, nn.Module | None]


class ProjectionHead(nn.Module):
    """A stack of Linear -> [norm] -> [activation] layers; the Linear has a bias only without a norm."""

    def __init__(self, blocks: Sequence[LayerSpec]):
        super().__init__()
        layers: list[nn.Module] = []
        for input_dim, output_dim, norm, activation in blocks:
            layers.append(nn.Linear(input_dim, output_dim, bias=norm is None))
            layers += [m for m in (norm, activation) if m is not None]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class SimCLRProjectionHead(ProjectionHead):
    """SimCLR's head: Linear -> BatchNorm -> ReLU -> Linear, from the backbone embedding to the loss space."""

    def __init__(self, input_dim: int = 512, hidden_dim: int = 512, output_dim: int = 128):
        super().__init__([
            (input_dim, hidden_dim, nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)),
            (hidden_dim, output_dim, None, None),
        ])
