"""Helpers the commands share: building the backbone/model on the chosen device."""

from __future__ import annotations

from typing import overload

import click
import torch

from segunify_core import settings
from segunify_core.device import resolve_device
from segunify_core.files.model_file import load_model
from segunify_core.method.backbone import Backbone, choose_precision, create_backbone
from segunify_core.method.model import SegUnifyModel


@overload
def prepare(model_path: str, backbone: str, backbone_weights: str | None, device_name: str,
            precision: str, quiet: bool) -> tuple[SegUnifyModel, Backbone | None, torch.device]: ...
@overload
def prepare(model_path: str | None, backbone: str, backbone_weights: str | None, device_name: str,
            precision: str, quiet: bool) -> tuple[SegUnifyModel | None, Backbone | None, torch.device]: ...
def prepare(model_path: str | None, backbone: str, backbone_weights: str | None, device_name: str,
            precision: str, quiet: bool) -> tuple[SegUnifyModel | None, Backbone | None, torch.device]:
    """The model (when a model file is given) and its backbone (None for a fast model), or a backbone by
    name, on the device."""
    device = resolve_device(device_name)
    chosen, fuse = choose_precision(precision, device), eager_switch()
    bb: Backbone | None
    if model_path:
        model = load_model(model_path, backbone_weights=backbone_weights, precision=chosen, fuse=fuse)
        bb = model.backbone  # None for a fast (distilled) model: its network is all in the file
    else:
        model, bb = None, create_backbone(backbone, backbone_weights, precision=chosen, fuse=fuse)
    if bb is not None:
        bb.to(device)
    if not quiet:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
        what = f"backbone {bb.spec.name} in {bb.precision}" if bb is not None else \
            f"fast model ({getattr(getattr(model, 'config', None), 'encoder', '')})"
        click.echo(f"device: {device.type} ({name}), {what}", err=True)
    return model, bb, device


def eager_switch() -> bool | str:
    """The backbone's fusion setting: SEGUNIFY_EAGER=1 turns the fused CPU graph off (debugging)."""
    return False if settings.environment().eager else "auto"
