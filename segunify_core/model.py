"""The SegUnify model (backbone + Compressor + Labeler), its inference, and its model file.

A model file is one safetensors file: the Compressor and Labeler tensors, and JSON metadata
(format version, backbone, hyper-parameters, bands, GSD, training data summary). The backbone is
not stored: it is frozen and named, and comes from timm's hub or a local checkpoint. A model
trained on a local checkpoint records its path and SHA-256 ("backbone_weights"); loading uses
that file when no other is given, and refuses weights with another hash.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import settings
from .atomic import atomic_path
from .backbone import BACKBONES, DEFAULT_BACKBONE, Backbone, WeightsFile, create_backbone
from .compressor import Compressor
from .errors import SegUnifyError, write_failure
from .labeler import Labeler
from .legend import Legend

FORMAT_NAME = "segunify-model"
FORMAT_VERSION = 1
WEIGHTS_KEY = "backbone_weights"  # metadata: {"path", "sha256"} of the local backbone checkpoint
LOGIT_SCALE = 2.0  # teacher logits are doubled before the log-softmax at inference (reference)
# Config keys renamed since files were first written: old key -> current field (read, never written).
RENAMED_CONFIG_KEYS = {"feature_width": "feature_dim"}


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

    @torch.inference_mode()
    def code(self, rgb: torch.Tensor, flip: bool = settings.FLIP) -> torch.Tensor:
        """Codes (B, D, h, w) of 0..255 RGB windows, averaged with the horizontal flip."""
        if not flip:
            return self.compress(self.attached_backbone(rgb))
        # One backbone call for windows and mirrors (the backbone batches or loops, as runs fastest).
        feats, mirrored = self.attached_backbone(torch.cat([rgb, rgb.flip(-1)])).chunk(2)
        return (self.compress(feats) + self.compress(mirrored).flip(-1)) / 2.0

    def compress(self, features: torch.Tensor) -> torch.Tensor:
        """The Compressor at inference, with results independent of the thread count: oneDNN's 1x1
        convolutions split their sums by threads, so a part on a 1-thread Dask worker would differ
        from the same part in a 2-thread process in the last bits."""
        with torch.backends.mkldnn.flags(enabled=False, deterministic=None, allow_tf32=None, fp32_precision=None):
            return self.compressor(features)

    @torch.inference_mode()
    def log_probs_from_code(self, code: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """(B, K', H, W) log-probabilities of codes upsampled to `size`: the teacher's cosine logits,
        log-softmaxed over the K clusters, then summed (as probabilities) into the legend's K' classes.

        Same values as `labeler.teacher_logits` on the upsampled code, computed channels-last (the
        code vector of a pixel contiguous), which is 4x faster on CPU than the channels-first form.
        """
        code = F.interpolate(code.contiguous(memory_format=torch.channels_last), size=size, mode="bilinear",
                             align_corners=False).permute(0, 2, 3, 1)
        prototypes = F.normalize(self.labeler.global_prototypes, dim=1).T * LOGIT_SCALE
        norms = torch.linalg.vector_norm(code, dim=-1, keepdim=True).clamp_min_(1e-12)
        logits = (code @ prototypes).div_(norms)
        log_probs = torch.log_softmax(logits, dim=-1)
        if not self.legend.is_identity:  # merged clusters: their probabilities add up
            log_probs = torch.log(log_probs.exp() @ self.legend.merge_matrix(log_probs.device, log_probs.dtype))
        return log_probs.permute(0, 3, 1, 2).contiguous()

    @torch.inference_mode()
    def log_probs(self, rgb: torch.Tensor, flip: bool = settings.FLIP) -> torch.Tensor:
        """Per-pixel log-probabilities (B, K, H, W) from the global prototypes."""
        return self.log_probs_from_code(self.code(rgb, flip), rgb.shape[-2:])


def save_model(model: SegUnifyModel, path: str | Path, extra: dict[str, Any] | None = None) -> None:
    """Write the model atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": dataclasses.asdict(model.config),
        **model.metadata,
        **(extra or {}),
    }
    if model.backbone is not None and model.backbone.weights is not None:
        meta[WEIGHTS_KEY] = model.backbone.weights.to_metadata()
    if model.legend.to_metadata() is not None:
        meta["legend"] = model.legend.to_metadata()
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.head_state().items()}
    write_safetensors(path, tensors, meta)


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Tensors + JSON metadata, written atomically: a crash, a full disk or Ctrl-C never leaves a
    half-written file at `path`."""
    from safetensors.torch import save_file

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SegUnifyError(f"Cannot write '{path.name}' to '{path.parent}' ({exc.strerror}); choose a writable "
                            "folder.") from None
    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata={"segunify": json.dumps(meta)})
        except Exception as exc:  # safetensors reports a full disk in its own error type
            raise write_failure(path, exc) from None


def read_model_file(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Metadata and tensors of a model file; never unpickles."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise SegUnifyError(f"Model file '{path}' does not exist; check the model file (--model).")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
        tensors = load_file(str(path))
    except Exception:
        raise SegUnifyError(f"'{path}' is not a SegUnify model file (not a readable safetensors "
                            "file, or truncated); pass a model written by `segunify train`.") from None
    not_a_model = SegUnifyError(f"'{path}' is a safetensors file but not a SegUnify model; pass a model "
                                "written by `segunify train`.")
    try:
        meta = json.loads(header["segunify"])
        version = int(meta["format_version"])
    except (KeyError, TypeError, ValueError):
        raise not_a_model from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME or not isinstance(meta.get("config"), dict):
        raise not_a_model
    recorded = meta.get(WEIGHTS_KEY)
    if recorded is not None and not (isinstance(recorded, dict) and isinstance(recorded.get("path"), str)
                                     and isinstance(recorded.get("sha256"), str)):
        raise SegUnifyError(f"Model file '{path}' has a damaged backbone weights record; retrain or copy it again.")
    if version > FORMAT_VERSION:
        raise SegUnifyError(f"Model file '{path}' has format version {version}, newer than this "
                            f"SegUnify reads ({FORMAT_VERSION}); upgrade SegUnify.")
    return meta, tensors


def recorded_weights(meta: dict[str, Any]) -> WeightsFile | None:
    """The local backbone checkpoint a model file records (None: hub or unrecorded weights)."""
    record = meta.get(WEIGHTS_KEY)
    return WeightsFile(record["path"], record["sha256"]) if record else None


def _backbone_weights(path: Path, recorded: WeightsFile | None, given: str | Path | None,
                      pretrained: bool) -> str | Path | None:
    """The checkpoint to load: the one given, else (pretrained) the one the model records."""
    if given is not None or recorded is None or not pretrained:
        return given
    if not Path(recorded.path).is_file():
        raise SegUnifyError(f"Model '{path}' was trained with the backbone weights '{recorded.path}', which are not "
                            "there; point the backbone weights (--backbone-weights) to a copy of that file.")
    return recorded.path


def check_weights(path: str | Path, recorded: WeightsFile | None, used: WeightsFile | None) -> None:
    """Refuse a local checkpoint other than the one the model was trained with (by SHA-256)."""
    if recorded is not None and used is not None and used.sha256 != recorded.sha256:
        raise SegUnifyError(
            f"The backbone weights (--backbone-weights) '{used.path}' are not the file model '{path}' was trained "
            f"with (SHA-256 {used.sha256[:12]}… instead of {recorded.sha256[:12]}…); pass that file "
            f"('{recorded.path}') or a copy of it.")


def model_config(stored: dict[str, Any]) -> ModelConfig:
    """The ModelConfig of a model file's "config" metadata, older key names included."""
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    renamed = {RENAMED_CONFIG_KEYS.get(k, k): v for k, v in stored.items()}
    return ModelConfig(**{k: v for k, v in renamed.items() if k in fields})


def load_model(path: str | Path, backbone_weights: str | Path | None = None,
               backbone: Backbone | None = None, pretrained: bool = True, precision: str = settings.PRECISION,
               fuse: bool | str = "auto") -> SegUnifyModel:
    """Load a model file and attach its backbone: the one given, or one built (with `precision`
    and `fuse`) from `backbone_weights`, else from the checkpoint the model records, else the hub.
    Weights whose SHA-256 differs from the recorded checkpoint's are refused."""
    meta, tensors = read_model_file(path)
    config = model_config(meta["config"])
    recorded = recorded_weights(meta)
    if backbone is None:
        weights = _backbone_weights(Path(path), recorded, backbone_weights, pretrained)
        backbone = create_backbone(config.backbone, weights, pretrained=pretrained, precision=precision, fuse=fuse)
    check_weights(path, recorded, backbone.weights)  # after loading: weights of another shape say so first
    if backbone.feature_dim != config.feature_dim or backbone.patch_size != config.patch_size:
        raise SegUnifyError(
            f"Model '{path}' was trained on backbone '{config.backbone}' ({config.feature_dim} feature "
            f"channels, patch {config.patch_size}) but the backbone given has {backbone.feature_dim}, patch "
            f"{backbone.patch_size}; choose that backbone's weights file (--backbone-weights)."
        )
    model = SegUnifyModel(config, backbone)
    try:
        model.load_state_dict({f"{k}": v for k, v in tensors.items()}, strict=False)
        missing = [k for k in model.head_state() if k not in tensors]
        if missing:
            raise RuntimeError(f"missing {missing[:3]}")
    except RuntimeError:
        raise SegUnifyError(f"Model file '{path}' is damaged (its tensors do not match its "
                            "configuration); retrain or copy it again.") from None
    model.metadata = {k: v for k, v in meta.items()
                      if k not in ("format", "format_version", "config", "legend", WEIGHTS_KEY)}
    model.legend = Legend.from_metadata(meta.get("legend"), config.n_clusters)
    return model.eval()
