"""Backbone weights files: reading local DINO/DINOv2/DINOv3/timm checkpoints into a timm ViT or Eva
(through timm's own converter of the model's family), and the record (path and SHA-256) a model
file keeps of the checkpoint it was trained with."""

from __future__ import annotations

import contextlib
import dataclasses
import io
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import SegUnifyError
from ..files.manifest import file_sha256

if TYPE_CHECKING:
    from .registry import TimmViT

WEIGHTS_KINDS = "official DINO/DINOv2/DINOv3 .pth or a timm .safetensors/.pth checkpoint"


@dataclasses.dataclass(frozen=True)
class WeightsFile:
    """A local backbone checkpoint: its absolute path and SHA-256 (recorded in the model file)."""

    path: str
    sha256: str

    @classmethod
    def of(cls, path: str | Path) -> WeightsFile:
        path = Path(path)
        if not path.is_file():
            raise SegUnifyError(f"Backbone weights file '{path}' does not exist; check the path given to the "
                                "backbone weights (--backbone-weights).")
        return cls(str(path.resolve()), file_sha256(path))

    def to_metadata(self) -> dict[str, str]:
        return {"path": self.path, "sha256": self.sha256}


def unwrap_dino(state: dict) -> dict[str, torch.Tensor]:
    """The DINO-specific layer over timm's reading: training checkpoints keep the backbone under
    'teacher' (preferred) or 'student', with 'backbone.' prefixes and projection heads."""
    from timm.models import clean_state_dict

    for key in ("teacher", "student"):
        if isinstance(state.get(key), dict):
            state = clean_state_dict(state[key])
            break
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SegUnifyError(f"The backbone weights file holds no tensor state dict; pass an {WEIGHTS_KINDS} "
                            "(--backbone-weights).")
    out = {}
    for key, value in state.items():
        key = key.removeprefix("backbone.")
        if key.startswith("head.") or key.startswith("head_drop."):
            continue  # DINO projection heads and classifier heads are not part of the feature extractor
        out[key] = value
    return out


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint with timm's reader (safetensors, or torch.load with weights_only: never
    runs code) and unwrap DINO's layouts."""
    from timm.models import load_state_dict

    path = Path(path)
    if not path.is_file():
        raise SegUnifyError(f"Backbone weights file '{path}' does not exist; check the path given to the "
                            "backbone weights (--backbone-weights).")
    try:
        state = load_state_dict(str(path), use_ema=False, weights_only=True)
    except Exception as exc:  # corrupt or pickled-with-code files end here, nothing is executed
        raise SegUnifyError(
            f"Cannot read backbone weights '{path}' ({type(exc).__name__}); pass an {WEIGHTS_KINDS} "
            "(--backbone-weights)."
        ) from None
    return unwrap_dino(state)


def load_weights(model: TimmViT, path: Path) -> None:
    """Load a local checkpoint into a timm ViT or Eva, converting official layouts (DINO, DINOv2,
    Meta's DINOv3 .pth with storage_tokens and RoPE periods) with timm's filter of the model's family."""
    from timm.models import eva, vision_transformer

    from .registry import is_eva

    state = read_checkpoint(path)
    checkpoint_filter_fn: Callable[..., dict[str, torch.Tensor]] = vision_transformer.checkpoint_filter_fn
    if is_eva(model):
        checkpoint_filter_fn = eva.checkpoint_filter_fn
        _refuse_dropped_qkv_bias(state, model, path)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # timm's filter prints what it skips; stdout is the CLI's
            state = checkpoint_filter_fn(state, model)
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1][:200]
        raise SegUnifyError(
            f"Backbone weights '{path}' do not fit this backbone ({first}); choose the weights file "
            "(--backbone-weights) of the chosen backbone (--backbone)."
        ) from None
    missing = [k for k in missing if not k.startswith("head")]
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise SegUnifyError(
            f"Backbone weights '{path}' do not fit this backbone ({detail}); choose the weights file "
            "(--backbone-weights) of the chosen backbone (--backbone)."
        )


def _refuse_dropped_qkv_bias(state: dict[str, torch.Tensor], model: TimmViT, path: Path) -> None:
    """Meta's DINOv3 files keep a qkv bias; timm's filter drops it for models built without one
    (the published distilled weights have all-zero biases). Non-zero biases would be lost: refuse."""
    if any(name.endswith("attn.q_bias") for name, _ in model.named_parameters()):
        return
    for key, value in state.items():
        if key.endswith("attn.qkv.bias") and any(part.abs().max() > 0 for part in value.chunk(3)[::2]):  # q, v
            raise SegUnifyError(
                f"Backbone weights '{path}' have non-zero query/value biases, which this backbone has no place "
                "for; choose the timm model of the same size with biases (--backbone, its name with _qkvb, "
                "e.g. vit_small_patch16_dinov3_qkvb).")
