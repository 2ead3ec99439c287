"""The Compressor: backbone features (B, C, h, w) to a low-dimensional code (B, D, h, w)."""

from __future__ import annotations

import torch
from torch import nn

from .. import settings

DROPOUT_MASKS = settings.DROPOUT_MASKS_CHOICES  # how training perturbs the features (settings.py)


def dropout2d_mask(shape: torch.Size | tuple[int, ...], p: float,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """A Dropout2d mask (B, C, 1, 1): each channel of each image kept with probability 1 - p and
    scaled by 1 / (1 - p), drawn from `generator` (CPU) so a training step owns its randomness."""
    if p <= 0.0:
        return torch.ones(shape[0], shape[1], 1, 1)
    if p >= 1.0:
        return torch.zeros(shape[0], shape[1], 1, 1)
    keep = torch.rand(shape[0], shape[1], generator=generator) >= p
    return (keep.float() / (1.0 - p))[..., None, None]


class Compressor(nn.Module):
    """Dropout2d, then a linear branch (1x1 conv, BN, SiLU) plus an optional nonlinear branch
    (1x1 conv, BN, SiLU, 1x1 conv, BN), optionally followed by an outer SiLU (the slides' variant).
    """

    def __init__(self, in_dim: int, code_dim: int = settings.CODE_DIM,
                 dropout: float = settings.DROPOUT, nonlinear: bool = settings.NONLINEAR,
                 outer_silu: bool = settings.OUTER_SILU):
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

    def perturb(self, features: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The features under one Dropout2d mask in training (unchanged in eval mode)."""
        if not self.training:
            return features
        return features * dropout2d_mask(features.shape, self.dropout.p, generator).to(features)

    def perturbed_inputs(self, features: torch.Tensor, generator: torch.Generator | None = None,
                         masks: str = settings.DROPOUT_MASKS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(linear branch input, nonlinear branch input, affinity features) for one training step:
        three independent masks, or one shared by all three (`masks`, one of DROPOUT_MASKS)."""
        if masks not in DROPOUT_MASKS:
            raise ValueError(f"dropout masks must be one of {DROPOUT_MASKS}, not {masks!r}")
        if masks == "shared":
            shared = self.perturb(features, generator)
            return shared, shared, shared
        linear_in = self.perturb(features, generator)
        nonlinear_in = self.perturb(features, generator)
        return linear_in, nonlinear_in, self.perturb(features, generator)

    def encode_branches(self, linear_in: torch.Tensor, nonlinear_in: torch.Tensor) -> torch.Tensor:
        """The code from (possibly differently perturbed) inputs of the two branches."""
        code = self.linear(linear_in)
        if self.nonlinear is not None:
            code = code + self.nonlinear(nonlinear_in)
        return self.outer(code)

    def encode(self, perturbed: torch.Tensor) -> torch.Tensor:
        return self.encode_branches(perturbed, perturbed)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.encode(self.perturb(features))
