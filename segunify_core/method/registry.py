"""The backbone registry: the DINO short names users know, mapped to timm's ViTs (VisionTransformer)
and DINOv3's Eva models, the resolution of any other timm ViT or Eva name, and the input
normalisation each set of weights was trained with."""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, TypeAlias, cast

from .. import settings
from ..errors import SegUnifyError

if TYPE_CHECKING:
    from timm.models.eva import Eva
    from timm.models.vision_transformer import VisionTransformer

TimmViT: TypeAlias = "VisionTransformer | Eva"  # the timm model classes SegUnify runs

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    name: str
    timm_name: str
    patch_size: int
    feature_dim: int  # channels of the patch-token grid
    description: str
    licence: str = "see the weights' model card"  # licence of the weights


@dataclasses.dataclass(frozen=True)
class Normalization:
    """Per-channel mean and std (of RGB in 0..1) the backbone's weights were trained with: the input
    is (rgb / 255 - mean) / std. A model file records it; a model refuses a backbone with another."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def of(cls, mean: object, std: object) -> Normalization:
        """From any three-number sequences (a timm config, a model file's JSON lists)."""
        try:
            m = tuple(float(v) for v in mean)  # type: ignore[attr-defined]
            s = tuple(float(v) for v in std)  # type: ignore[attr-defined]
        except (TypeError, ValueError):
            raise ValueError(f"normalisation needs three numbers each for mean and std, not {mean!r}, {std!r}") from None
        if len(m) != 3 or len(s) != 3 or min(s) <= 0:
            raise ValueError(f"normalisation needs three means and three positive stds, not {mean!r}, {std!r}")
        return cls((m[0], m[1], m[2]), (s[0], s[1], s[2]))

    @classmethod
    def from_metadata(cls, record: object) -> Normalization:
        if not isinstance(record, dict):
            raise ValueError(f"not a normalisation record: {record!r}")
        return cls.of(record.get("mean"), record.get("std"))

    def to_metadata(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}

    def describe(self) -> str:
        name = " (ImageNet)" if self == IMAGENET else ""
        return (f"mean {', '.join(f'{v:.3f}' for v in self.mean)} std {', '.join(f'{v:.3f}' for v in self.std)}"
                f"{name}")


IMAGENET = Normalization(IMAGENET_MEAN, IMAGENET_STD)  # what model files without a record were trained with


# Short names users know from the DINO papers, mapped to timm's published copies of the weights.
BACKBONES: dict[str, BackboneSpec] = {row[0]: BackboneSpec(*row) for row in settings.BACKBONES}
DEFAULT_BACKBONE = settings.BACKBONE


def resolve_backbone(name: str) -> BackboneSpec:
    """Return the spec of a registered short name or of any timm ViT or Eva model name."""
    if name in BACKBONES:
        return BACKBONES[name]
    import timm

    base = name.split(".")[0]
    if not timm.is_model(base):
        known = ", ".join(BACKBONES)
        raise SegUnifyError(
            f"Unknown backbone '{name}': choose one of {known} or a timm ViT or Eva model name "
            "(--backbone; `segunify backbones` lists them)."
        )
    model = create_timm(name, pretrained=False)
    licence = str(getattr(model, "pretrained_cfg", {}).get("license") or BackboneSpec.licence)
    return BackboneSpec(name, name, patch_size(model), int(model.num_features), "timm model", licence)


def create_timm(timm_name: str, pretrained: bool) -> TimmViT:
    """A timm ViT (VisionTransformer) or Eva (DINOv3: RoPE, registers) for any window size."""
    import timm

    try:
        model = timm.create_model(timm_name, pretrained=pretrained, num_classes=0, dynamic_img_size=True)
    except TypeError:  # architectures without dynamic_img_size are not ViTs
        model = None
    if not isinstance(model, vit_classes()):
        raise SegUnifyError(
            f"Backbone '{timm_name}' is not a Vision Transformer; choose a timm ViT or Eva model "
            "(--backbone, names starting with vit_ or eva)."
        )
    return cast("TimmViT", model)


def vit_classes() -> tuple[type, ...]:
    """The timm model classes SegUnify runs: VisionTransformer and Eva (DINOv3, EVA-02)."""
    from timm.models.eva import Eva
    from timm.models.vision_transformer import VisionTransformer

    return (VisionTransformer, Eva)


def is_eva(model: object) -> bool:
    from timm.models.eva import Eva

    return isinstance(model, Eva)


def patch_size(model: TimmViT) -> int:
    size = model.patch_embed.patch_size
    return int(size[0] if isinstance(size, tuple | list) else size)


def normalization_of(model: TimmViT) -> Normalization:
    """The normalisation of the weights a timm model was created for: its pretrained config (the
    config of the tag after the dot in the timm name, e.g. `.sat493m`); ImageNet when it has none."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if cfg.get("mean") is None or cfg.get("std") is None:
        return IMAGENET
    return Normalization.of(cfg["mean"], cfg["std"])


@functools.cache
def registered_normalization(name: str) -> Normalization:
    """The normalisation of a registered backbone's weights, from timm's pretrained config alone
    (no model is built)."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(BACKBONES[name].timm_name)
    if cfg is None or cfg.mean is None or cfg.std is None:
        return IMAGENET
    return Normalization.of(cfg.mean, cfg.std)


def parameter_count(timm_name: str) -> int:
    """Parameters of a timm model, counted on the meta device (no memory, no initialisation)."""
    import timm
    import torch

    with torch.device("meta"):
        model = timm.create_model(timm_name, pretrained=False, num_classes=0)
    return sum(p.numel() for p in model.parameters())


def weights_cached(name: str) -> bool:
    """True when timm's hub download of this backbone is already in the local cache."""
    try:
        from huggingface_hub import try_to_load_from_cache
        from timm.models import get_pretrained_cfg

        spec = resolve_backbone(name)
        cfg = get_pretrained_cfg(spec.timm_name)
        hub_id = getattr(cfg, "hf_hub_id", None) if cfg else None
        if not hub_id:
            return False
        hit = try_to_load_from_cache(hub_id, "model.safetensors")
        return isinstance(hit, str)
    except Exception:
        return False
