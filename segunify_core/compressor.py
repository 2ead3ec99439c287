"""The Compressor: backbone features (B, C, h, w) to a low-dimensional code (B, D, h, w)."""

from __future__ import annotations

import torch
from torch import nn


class Compressor(nn.Module):
    """Dropout2d, then a linear branch (1x1 conv, BN, SiLU) plus an optional nonlinear branch
    (1x1 conv, BN, SiLU, 1x1 conv, BN), optionally followed by an outer SiLU (the slides' variant).
    """

    def __init__(self, in_dim: int, code_dim: int = 64, dropout: float = 0.2,
                 nonlinear: bool = True, outer_silu: bool = False):
        super().__init__()
        self.dropout = nn.Dropout2d(p=dropout)
        self.linear = nn.Sequential(nn.Conv2d(in_dim, code_dim, 1), nn.BatchNorm2d(code_dim), nn.SiLU())
        self.nonlinear = (
            nn.Sequential(
                nn.Conv2d(in_dim, in_dim, 1), nn.BatchNorm2d(in_dim), nn.SiLU(),
                nn.Conv2d(in_dim, code_dim, 1), nn.BatchNorm2d(code_dim),
            )
            if nonlinear else None
        )
        self.outer = nn.SiLU() if outer_silu else nn.Identity()

    def perturb(self, features: torch.Tensor) -> torch.Tensor:
        """The dropout-perturbed features; the energy's affinities use the same perturbation."""
        return self.dropout(features)

    def encode(self, perturbed: torch.Tensor) -> torch.Tensor:
        code = self.linear(perturbed)
        if self.nonlinear is not None:
            code = code + self.nonlinear(perturbed)
        return self.outer(code)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.encode(self.perturb(features))
