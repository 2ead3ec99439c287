"""Codes and probabilities of windows: backbone features of each window (and of its horizontal
mirror), flip-averaged codes, teacher logits x 2, log-softmax, CRF, argmax.

Flip averaging is written here once: the raster job (`job.parts`), evaluation and the feature
cache (which stores both views, `window_features`) all go through these functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .. import settings

if TYPE_CHECKING:
    from .backbone import Backbone
    from .crf import CRF
    from .model import SegUnifyModel


def window_features(backbone: Backbone, rgb: torch.Tensor, flip: bool) -> torch.Tensor:
    """Features (B, V, C, h, w) of 0..255 RGB windows (B, 3, H, W): V = 2 with flip (each window,
    then its horizontal mirror as the backbone saw it, in one backbone call), else V = 1."""
    if not flip:
        return backbone(rgb)[:, None]
    return torch.stack(backbone(torch.cat([rgb, rgb.flip(-1)])).chunk(2), dim=1)


def codes_from_features(model: SegUnifyModel, features: torch.Tensor) -> torch.Tensor:
    """Codes (B, D, h, w) of `window_features`' views: with two views, the mean of the window's code
    and its mirror's code flipped back."""
    code = model.compress(features[:, 0])
    if features.shape[1] == 1:
        return code
    return (code + model.compress(features[:, 1]).flip(-1)) / 2.0


@torch.inference_mode()
def window_codes(model: SegUnifyModel, rgb: torch.Tensor, flip: bool = settings.FLIP) -> torch.Tensor:
    """Codes (B, D, h, w) of 0..255 RGB windows whose sides are patch multiples."""
    return codes_from_features(model, window_features(model.attached_backbone, rgb, flip))


@torch.inference_mode()
def window_log_probs(model: SegUnifyModel, rgb: torch.Tensor, flip: bool = settings.FLIP) -> torch.Tensor:
    """Per-pixel log-probabilities (B, K, H, W) of windows whose sides are patch multiples. A fast
    (distilled) model computes them in one pass of its network (`flip` is the teacher's, distilled in)."""
    from .student import is_fast

    if is_fast(model):
        return model.window_log_probs(rgb)  # type: ignore[operator]
    return model.log_probs_from_code(window_codes(model, rgb, flip), rgb.shape[-2:])


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
    return window_log_probs(model, padded, flip)[..., :h, :w]


@torch.inference_mode()
def predict_labels(model: SegUnifyModel, rgb: torch.Tensor, flip: bool = settings.FLIP, crf: CRF | None = None) -> torch.Tensor:
    """Cluster index (B, H, W) per pixel, CRF-refined when a CRF is given."""
    log_probs = predict_log_probs(model, rgb, flip)
    if crf is not None:
        return crf(rgb, log_probs).argmax(1)
    return log_probs.argmax(1)


@torch.inference_mode()
def teacher_probabilities(model: SegUnifyModel, rgb: torch.Tensor, flip: bool = settings.FLIP,
                          crf: CRF | None = None) -> torch.Tensor:
    """What a fast model is distilled to: the probabilities (B, K, H, W) over the model's K clusters
    (before the legend's merges) of windows whose sides are patch multiples, CRF-refined when a CRF is
    given: the teacher's whole pipeline on one window."""
    log_probs = model.log_probs_from_code(window_codes(model, rgb, flip), rgb.shape[-2:], merge=False)
    return crf(rgb, log_probs) if crf is not None else log_probs.exp()
