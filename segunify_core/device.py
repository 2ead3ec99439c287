"""Choosing the device the model runs on."""

from __future__ import annotations

import torch

from . import settings
from .errors import SegUnifyError

DEVICE_CHOICES = settings.DEVICES


def api_device(name: str | torch.device) -> torch.device:
    """A device argument of the API: "auto" (settings.DEVICE, the default) as `--device auto`, any
    other name torch accepts ("cpu", "cuda", "cuda:1") as it is."""
    return resolve_device(name) if name == "auto" else torch.device(name)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SegUnifyError("The GPU (--device cuda) was asked for but PyTorch sees no CUDA GPU; use the CPU "
                            "(--device cpu) or install a CUDA build of PyTorch.")
    if name not in DEVICE_CHOICES:
        raise SegUnifyError(f"Unknown device '{name}'; use one of {', '.join(DEVICE_CHOICES)} (--device).")
    return torch.device(name)
