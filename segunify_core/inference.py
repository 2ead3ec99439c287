"""Inference on whole images: flip-averaged codes, teacher logits x 2, log-softmax, CRF, argmax."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .model import SegUnifyModel


def pad_to_patch(rgb: torch.Tensor, patch: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad (B, 3, H, W) on the bottom/right to multiples of the patch size."""
    h, w = rgb.shape[-2:]
    ph, pw = (-h) % patch, (-w) % patch
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        rgb = F.pad(rgb, (0, pw, 0, ph), mode=mode)
    return rgb, (h, w)


@torch.inference_mode()
def predict_log_probs(model: SegUnifyModel, rgb: torch.Tensor, flip: bool = True) -> torch.Tensor:
    """(B, 3, H, W) 0..255 RGB of any size -> (B, K, H, W) log-probabilities."""
    padded, (h, w) = pad_to_patch(rgb, model.config.patch_size)
    return model.log_probs(padded, flip)[..., :h, :w]


@torch.inference_mode()
def predict_labels(model: SegUnifyModel, rgb: torch.Tensor, flip: bool = True, crf=None) -> torch.Tensor:
    """Cluster index (B, H, W) per pixel, CRF-refined when a CRF is given."""
    log_probs = predict_log_probs(model, rgb, flip)
    if crf is not None:
        return crf(rgb, log_probs).argmax(1)
    return log_probs.argmax(1)


def class_colours(n: int) -> np.ndarray:
    """Distinct RGB colours (n, 3) uint8 for class maps: a fixed qualitative palette, then HSV."""
    base = np.array([
        [228, 26, 28], [55, 126, 184], [77, 175, 74], [152, 78, 163], [255, 127, 0],
        [255, 255, 51], [166, 86, 40], [247, 129, 191], [153, 153, 153], [102, 194, 165],
        [252, 141, 98], [141, 160, 203], [231, 138, 195], [166, 216, 84], [255, 217, 47],
        [229, 196, 148],
    ], np.uint8)
    if n <= len(base):
        return base[:n]
    import colorsys

    extra = [colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.65, 0.9) for i in range(n - len(base))]
    return np.concatenate([base, (np.array(extra) * 255).astype(np.uint8)])


def write_preview(path, rgb: np.ndarray, labels: np.ndarray, valid: np.ndarray | None = None,
                  max_side: int = 1024) -> None:
    """A PNG of the image, the class map and their overlay side by side.

    rgb (3, H, W) 0..255; labels (H, W) with classes 1..K and 0 = nodata.
    """
    from PIL import Image

    image = np.clip(rgb, 0, 255).astype(np.uint8).transpose(1, 2, 0)
    k = int(labels.max()) if labels.size else 0
    palette = np.concatenate([[[0, 0, 0]], class_colours(max(k, 1))]).astype(np.uint8)
    classes = palette[labels]
    overlay = (0.5 * image + 0.5 * classes).astype(np.uint8)
    if valid is not None:
        overlay[~valid] = image[~valid]
    strip = np.concatenate([image, classes, overlay], axis=1)
    pil = Image.fromarray(strip)
    scale = max_side / max(image.shape[:2])
    if scale < 1:
        pil = pil.resize((int(strip.shape[1] * scale), int(strip.shape[0] * scale)), Image.NEAREST)
    pil.save(path)
