"""The backbone registry: the DINO short names users know, mapped to timm's ViTs, and the
resolution of any other timm ViT name."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from .. import settings
from ..errors import SegUnifyError

if TYPE_CHECKING:
    from timm.models.vision_transformer import VisionTransformer


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    name: str
    timm_name: str
    patch_size: int
    feature_dim: int  # channels of the patch-token grid
    description: str


# Short names users know from the DINO papers, mapped to timm's published copies of the weights.
BACKBONES: dict[str, BackboneSpec] = {row[0]: BackboneSpec(*row) for row in settings.BACKBONES}
DEFAULT_BACKBONE = settings.BACKBONE


def resolve_backbone(name: str) -> BackboneSpec:
    """Return the spec of a registered short name or of any timm ViT model name."""
    if name in BACKBONES:
        return BACKBONES[name]
    import timm

    base = name.split(".")[0]
    if not timm.is_model(base):
        known = ", ".join(BACKBONES)
        raise SegUnifyError(
            f"Unknown backbone '{name}': choose one of {known} or a timm ViT model name "
            "(--backbone; `segunify backbones` lists them)."
        )
    model = create_timm(name, pretrained=False)
    return BackboneSpec(name, name, patch_size(model), int(model.num_features), "timm model")


def create_timm(timm_name: str, pretrained: bool) -> VisionTransformer:
    import timm
    from timm.models.vision_transformer import VisionTransformer

    try:
        model = timm.create_model(timm_name, pretrained=pretrained, num_classes=0, dynamic_img_size=True)
    except TypeError:  # architectures without dynamic_img_size are not ViTs
        model = None
    if not isinstance(model, VisionTransformer):
        raise SegUnifyError(
            f"Backbone '{timm_name}' is not a Vision Transformer; choose a timm ViT model "
            "(--backbone, names starting with vit_)."
        )
    return model


def patch_size(model: VisionTransformer) -> int:
    size = model.patch_embed.patch_size
    return int(size[0] if isinstance(size, tuple | list) else size)


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
