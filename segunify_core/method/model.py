"""The SegUnify model (backbone + Compressor + Labeler) and its configuration.

Reading and writing model files is `files.model_file`'s; codes and probabilities of windows
(flip averaging included) are `inference`'s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import settings
from .backbone import Backbone
from .compressor import Compressor
from .labeler import Labeler
from .legend import Legend
from .registry import BACKBONES, DEFAULT_BACKBONE

LOGIT_SCALE = 2.0  # teacher logits are doubled before the log-softmax at inference (reference)


@dataclasses.dataclass
class HeadConfig:
    """The trained head (Compressor and Labeler) and its input bands: what TrainConfig asks for and
    ModelConfig records, declared once for both."""

    classes: int = settings.CLASSES
    extra_clusters: int = settings.EXTRA_CLUSTERS
    code_dim: int = settings.CODE_DIM
    dropout: float = settings.DROPOUT
    nonlinear: bool = settings.NONLINEAR
    outer_silu: bool = settings.OUTER_SILU
    local_sets: int = settings.LOCAL_SETS  # local (student) prototype sets; inference uses the global set only
    bands: list[int] | None = None  # 1-based band numbers used in training (None: default choice)

    @property
    def n_clusters(self) -> int:
        return self.classes + self.extra_clusters


@dataclasses.dataclass
class ModelConfig(HeadConfig):
    backbone: str = DEFAULT_BACKBONE
    feature_dim: int = BACKBONES[DEFAULT_BACKBONE].feature_dim  # backbone channels
    patch_size: int = BACKBONES[DEFAULT_BACKBONE].patch_size
    gsd: float | None = None  # ground sampling distance of the training windows, metres


class SegUnifyModel(nn.Module):
    def __init__(self, config: ModelConfig, backbone: Backbone | None = None):
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.compressor = Compressor(config.feature_dim, config.code_dim, config.dropout,
                                     config.nonlinear, config.outer_silu)
        self.labeler = Labeler(config.code_dim, config.n_clusters, config.local_sets)
        self.metadata: dict[str, Any] = {}
        self.legend = Legend.default(config.n_clusters)  # names, colours, merges of the clusters

    @property
    def n_classes(self) -> int:
        """Classes the model labels: its clusters, after the legend's merges."""
        return self.legend.n_classes

    def head_state(self) -> dict[str, torch.Tensor]:
        """The trained tensors (Compressor and Labeler), without the frozen backbone."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    @property
    def attached_backbone(self) -> Backbone:
        """The backbone (a model loaded by `load_model` always has one)."""
        if self.backbone is None:
            raise RuntimeError("model has no backbone attached")
        return self.backbone

    def compress(self, features: torch.Tensor) -> torch.Tensor:
        """The Compressor at inference, with results independent of the thread count: oneDNN's 1x1
        convolutions split their sums by threads, so a part on a 1-thread Dask worker would differ
        from the same part in a 2-thread process in the last bits."""
        with torch.backends.mkldnn.flags(enabled=False, deterministic=None, allow_tf32=None, fp32_precision=None):
            return self.compressor(features)

    @torch.inference_mode()
    def log_probs_from_code(self, code: torch.Tensor, size: Sequence[int], merge: bool = True) -> torch.Tensor:
        """(B, K', H, W) log-probabilities of codes upsampled to `size`: the teacher's cosine logits,
        log-softmaxed over the K clusters, then summed (as probabilities) into the legend's K' classes
        (merge False: the K clusters' own).

        Same values as `labeler.teacher_logits` on the upsampled code, computed channels-last (the
        code vector of a pixel contiguous), which is 4x faster on CPU than the channels-first form.
        """
        code = F.interpolate(code.contiguous(memory_format=torch.channels_last), size=size, mode="bilinear",
                             align_corners=False).permute(0, 2, 3, 1)
        prototypes = F.normalize(self.labeler.global_prototypes, dim=1).T * LOGIT_SCALE
        norms = torch.linalg.vector_norm(code, dim=-1, keepdim=True).clamp_min_(1e-12)
        logits = (code @ prototypes).div_(norms)
        log_probs = torch.log_softmax(logits, dim=-1)
        if merge and not self.legend.is_identity:  # merged clusters: their probabilities add up
            log_probs = torch.log(log_probs.exp() @ self.legend.merge_matrix(log_probs.device, log_probs.dtype))
        return log_probs.permute(0, 3, 1, 2).contiguous()
