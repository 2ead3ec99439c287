"""Inference on whole images: flip-averaged codes, teacher logits x 2, log-softmax, CRF, argmax."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .. import settings
from .model import SegUnifyModel

if TYPE_CHECKING:
    from .crf import CRF


def pad_to_patch(rgb: torch.Tensor, patch: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad (B, 3, H, W) on the bottom/right to multiples of the patch size."""
    h, w = rgb.shape[-2:]
    ph, pw = (-h) % patch, (-w) % patch
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        rgb = F.pad(rgb, (0, pw, 0, ph), mode=mode)
    return rgb, (h, w)


@torch.inference_mode()
def predict_log_probs(model: SegUnifyModel, rgb: torch.Tensor, flip: bool = settings.FLIP) -> torch.Tensor:
    """(B, 3, H, W) 0..255 RGB of any size -> (B, K, H, W) log-probabilities."""
    padded, (h, w) = pad_to_patch(rgb, model.config.patch_size)
    return model.log_probs(padded, flip)[..., :h, :w]


@torch.inference_mode()
def predict_labels(model: SegUnifyModel, rgb: torch.Tensor, flip: bool = settings.FLIP, crf: CRF | None = None) -> torch.Tensor:
    """Cluster index (B, H, W) per pixel, CRF-refined when a CRF is given."""
    log_probs = predict_log_probs(model, rgb, flip)
    if crf is not None:
        return crf(rgb, log_probs).argmax(1)
    return log_probs.argmax(1)
