"""Choosing the device the model runs on."""

from __future__ import annotations

import torch

from . import settings
from .errors import SegUnifyError

DEVICE_CHOICES = settings.DEVICES


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SegUnifyError("The GPU (--device cuda) was asked for but PyTorch sees no CUDA GPU; use the CPU "
                            "(--device cpu) or install a CUDA build of PyTorch.")
    if name not in DEVICE_CHOICES:
        raise SegUnifyError(f"Unknown device '{name}'; use one of {', '.join(DEVICE_CHOICES)} (--device).")
    return torch.device(name)
