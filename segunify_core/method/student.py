"""The fast model: a small fully convolutional network distilled from a SegUnify model.

A timm CNN encoder (`features_only`) and a light feature-pyramid decoder that predicts the
teacher's clusters 4x below full resolution, upsampled bilinearly to the input's pixels. It reads
the same 0..255 RGB windows as the teacher (the raster's one global stretch), normalises them with
the encoder's mean and standard deviation, and gives log-probabilities merged by the teacher's
legend, so its outputs replace the teacher's. Distilling it is `training.distill`'s.

Its receptive field is bounded, so it runs on large tiles with only a halo of context on each side
(`FastConfig.window` and `stride`: the tile plan the job uses for it by default).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import settings
from ..errors import SegUnifyError
from .legend import Legend

FAST_KIND = "fast"  # the model file's "kind": a fast (distilled) model
THREAD_SPLIT_CHANNELS = 128  # 1x1 convolutions with this many input channels run outside oneDNN


@dataclasses.dataclass
class FastConfig:
    """What a fast model file records in its "config" (names shared with ModelConfig where they mean the same)."""

    encoder: str = settings.STUDENT
    classes: int = settings.CLASSES  # the teacher's K and extra clusters: the student predicts its clusters
    extra_clusters: int = settings.EXTRA_CLUSTERS
    decoder_dim: int = settings.STUDENT_DECODER_DIM
    patch_size: int = settings.STUDENT_MULTIPLE  # input sides are multiples of this (the encoder's total stride)
    window: int = settings.STUDENT_WINDOW  # model px: the tile the job runs by default
    stride: int = settings.STUDENT_STRIDE  # model px: window - stride is twice the halo
    gsd: float | None = None  # the teacher's
    bands: list[int] | None = None  # the teacher's
    backbone: str | None = None  # the teacher's backbone (for reports)

    @property
    def n_clusters(self) -> int:
        return self.classes + self.extra_clusters


def _encoder(name: str, pretrained: str | Path | None) -> nn.Module:
    import timm

    if name not in settings.STUDENTS:
        raise SegUnifyError(f"Unknown student encoder '{name}'; choose one of {', '.join(settings.STUDENTS)} "
                            "(--student).")
    kwargs: dict[str, Any] = {"features_only": True, "out_indices": (1, 2, 3, 4)}
    if pretrained is not None:
        if not Path(pretrained).is_file():
            raise SegUnifyError(f"Pretrained encoder weights '{pretrained}' do not exist; check the path "
                                "(--student-weights).")
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(pretrained)})
    try:
        return timm.create_model(name, **kwargs)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise SegUnifyError(f"'{pretrained}' is not a checkpoint of timm's {name} ({str(exc)[:80]}); pass that "
                            "encoder's weights (--student-weights) or none.") from None


class FastModel(nn.Module):
    """Encoder (strides 4..32) -> lateral 1x1 convolutions -> top-down sum -> 3x3 conv at stride 4
    -> 1x1 classifier over the clusters -> bilinear upsampling to the input's size."""

    backbone = None  # no separate frozen backbone: the whole network is in the model file

    def __init__(self, config: FastConfig, pretrained: str | Path | None = None):
        super().__init__()
        self.config = config
        self.encoder = _encoder(config.encoder, pretrained)
        encoder: Any = self.encoder  # timm's FeatureListNet: feature_info and pretrained_cfg
        channels, d = encoder.feature_info.channels(), config.decoder_dim
        self.lateral = nn.ModuleList(nn.Conv2d(c, d, 1) for c in channels)
        self.fuse = nn.Sequential(nn.Conv2d(d, d, 3, padding=1, bias=False), nn.BatchNorm2d(d), nn.ReLU(inplace=True))
        self.classifier = nn.Conv2d(d, config.n_clusters, 1)
        cfg: dict[str, Any] = dict(getattr(encoder, "pretrained_cfg", None) or {})
        mean, std = cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225))
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255.0, persistent=False)
        for module in self.modules():
            if isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1 \
                    and module.in_channels >= THREAD_SPLIT_CHANNELS:
                _thread_independent(module)
        # The classifier's few output channels make oneDNN split its sum by threads on some CPUs (seen
        # on AVX-512 EPYC): it runs at 1/4 resolution with K outputs, so float64 costs little here.
        _thread_independent(self.classifier)
        self.metadata: dict[str, Any] = {"kind": FAST_KIND}
        self.legend = Legend.default(config.n_clusters)

    @property
    def n_classes(self) -> int:
        return self.legend.n_classes

    @property
    def normalisation(self) -> dict[str, Any]:
        return {"input": "RGB 0..255 after the raster's 2-98 % stretch (as the teacher)",
                "mean": [round(float(v), 4) for v in self.mean.flatten()],
                "std": [round(float(v), 4) for v in self.std.flatten()]}

    def head_state(self) -> dict[str, torch.Tensor]:
        """Every tensor of the network (the model file holds all of it)."""
        return dict(self.state_dict())

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        """Cluster logits (B, K, H, W) of 0..255 RGB (B, 3, H, W) whose sides are `patch_size` multiples."""
        x = (rgb - self.mean) / self.std
        feats = self.encoder(x)
        top = self.lateral[-1](feats[-1])
        for lateral, feat in zip(reversed(self.lateral[:-1]), reversed(feats[:-1]), strict=True):
            top = lateral(feat) + _upsample(top, feat.shape[-2:])
        return _upsample(self.classifier(self.fuse(top)), rgb.shape[-2:])

    @torch.inference_mode()
    def window_log_probs(self, rgb: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (B, K', H, W) over the legend's classes, one window at a time (memory
        stays that of one window whatever the batch)."""
        out = []
        for window in rgb.split(1):
            log_probs = torch.log_softmax(self(window.contiguous(memory_format=torch.channels_last)).float(), dim=1)
            if not self.legend.is_identity:
                probs = log_probs.exp().permute(0, 2, 3, 1) @ self.legend.merge_matrix(log_probs.device,
                                                                                       log_probs.dtype)
                log_probs = torch.log(probs).permute(0, 3, 1, 2)
            out.append(log_probs.contiguous())
        return torch.cat(out)


def _upsample(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear upsampling computed in float64 and rounded back: in float32 its vectorised and scalar
    loops round differently, and which pixels each takes depends on the thread count."""
    return F.interpolate(x.double(), size=tuple(size), mode="bilinear", align_corners=False).to(x.dtype)


def _thread_independent(conv: nn.Conv2d) -> None:
    """Sum a 1x1 convolution with many input channels in float64: oneDNN and BLAS split such sums by
    threads, so a part on a 1-thread Dask worker would differ in the last bits from the same part in a
    2-thread process. Summed in float64 and rounded to float32, the order no longer shows. These
    convolutions run at 1/16 and 1/32 of the resolution, so this costs little."""

    def run(x: torch.Tensor) -> torch.Tensor:
        bias = conv.bias.double() if conv.bias is not None else None
        return F.conv2d(x.double(), conv.weight.double(), bias, conv.stride).to(x.dtype)

    conv.forward = run  # type: ignore[method-assign,assignment]


def new_fast_model(config: FastConfig, seed: int, pretrained: str | Path | None = None) -> FastModel:
    """A seeded student (random initialisation unless `pretrained` names a local encoder checkpoint)."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        model = FastModel(config, pretrained)
    return model.to(memory_format=torch.channels_last)


def fast_config(stored: dict[str, Any]) -> FastConfig:
    fields = {f.name for f in dataclasses.fields(FastConfig)}
    return FastConfig(**{k: v for k, v in stored.items() if k in fields})


def fast_model_from_file(path: str | Path, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> FastModel:
    """The fast model of a model file's metadata and tensors (`model_file.load_model` dispatches here)."""
    try:
        model = FastModel(fast_config(meta["config"]))
        model.load_state_dict(tensors, strict=True)
    except (RuntimeError, TypeError, SegUnifyError):
        raise SegUnifyError(f"Fast model file '{path}' is damaged (its tensors do not match its configuration); "
                            "distil it again or copy it again.") from None
    model.metadata = {k: v for k, v in meta.items() if k not in ("format", "format_version", "config", "legend")}
    model.legend = Legend.from_metadata(meta.get("legend"), model.config.n_clusters)
    return model.to(memory_format=torch.channels_last).eval()


def is_fast(model: Any) -> bool:
    return isinstance(model, FastModel)


def tile_geometry(window: int, stride: int, model: Any) -> tuple[int, int]:
    """The window and stride a job runs: a fast model's own tiles when the user left the teacher's
    defaults (settings.WINDOW, settings.STRIDE), else what was asked for."""
    if is_fast(model) and (window, stride) == (settings.WINDOW, settings.STRIDE):
        return model.config.window, model.config.stride
    return window, stride


def halo_px(config: FastConfig) -> int:
    return (config.window - config.stride) // 2


def sides_ok(sizes: Sequence[int], multiple: int) -> bool:
    return all(s % multiple == 0 for s in sizes)
