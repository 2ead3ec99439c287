"""Named training presets: every value a published run used, in one table.

The CLI (`segunify train --preset NAME`), the README's table and the tests read this registry;
explicit flags override a preset's values and the model file records the preset, the overridden
fields and every resolved value.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ..errors import SegUnifyError
from .trainer import TrainConfig, flag

BACKBONE = "backbone"  # the one preset value that is not a TrainConfig field


@dataclasses.dataclass(frozen=True)
class Setting:
    value: Any
    why: str  # where the value comes from, for the README table


@dataclasses.dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    settings: Mapping[str, Setting]  # TrainConfig field (or "backbone") -> value

    def values(self) -> dict[str, Any]:
        return {name: setting.value for name, setting in self.settings.items()}


SEGUNIFY_POTSDAM = Preset(
    "segunify-potsdam",
    "SegUnify on Potsdam-3 as the reference run trained it (METHOD.md, 'What the reference run actually did'): "
    "DINO ViT-B/8 on labelled_train, every image once per epoch in a new order each epoch.",
    {
        BACKBONE: Setting("dino_vitb8", "DINO ViT-B/8"),
        "potsdam_split": Setting("train", "labelled_train.txt only (4545 images, labels unused)"),
        "max_windows": Setting(8550, "every image once per epoch: here each 200 px image is one whole window"),
        "window": Setting(224, "training resolution"),
        "resize": Setting("nearest", "200 px images resized to 224 with nearest neighbour"),
        "flip": Setting(False, "no flipped views"),
        "five_crop": Setting(False, "Potsdam images are used whole"),
        "classes": Setting(3, "Potsdam-3"),
        "extra_clusters": Setting(0, "K = 3 prototypes"),
        "code_dim": Setting(64, "code dimension D"),
        "dropout": Setting(0.2, "Dropout2d p"),
        "dropout_masks": Setting("independent", "three masks per step: linear, nonlinear, affinity"),
        "nonlinear": Setting(True, "linear + nonlinear branch"),
        "outer_silu": Setting(False, "no outer SiLU"),
        "steps": Setting(3000, "optimiser steps"),
        "batch_size": Setting(32, "images per step"),
        "sampling": Setting("epoch", "DataLoader(shuffle=True, drop_last=True): each window once per epoch, "
                                     "a new order each epoch, the last incomplete batch dropped"),
        "lr_compressor": Setting(1e-4, "Adam, Compressor"),
        "lr_labeler": Setting(5e-4, "Adam, prototypes"),
        "weight_decay": Setting(1e-5, "Adam weight decay"),
        "lr_schedule": Setting("poly-epoch", "(1 - epoch/3000)^2, stepped once per epoch: factor 1.0 to 0.986"),
        "poly_power": Setting(2.0, "polynomial power"),
        "alpha": Setting(0.998, "EMA momentum of the global prototypes"),
        "ema_order": Setting("before", "EMA inside the step, before backward and the optimiser step"),
        "temperature": Setting(0.1, "soft-assignment temperature tau"),
        "shift_intra": Setting(0.1, "closeness shift b1 (ViT-B/8)"),
        "shift_inter": Setting(0.5, "cross-image shift b2"),
        "pointwise": Setting(True, "pointwise centring of the affinities"),
        "pairing": Setting("reference", "random permutation, fixed points moved to the next index"),
        "amp": Setting(True, "float16 mixed precision on GPU (float32 on CPU)"),
        "checkpoint_every": Setting(400, "resumable state every 400 steps"),
        "val_every": Setting(400, "checkpoint chosen every 400 steps (the reference chose on the test split; here on --val data)"),
        "seed": Setting(0, "random seed"),
    },
)

PRESETS: dict[str, Preset] = {p.name: p for p in (SEGUNIFY_POTSDAM,)}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise SegUnifyError(f"Unknown preset '{name}'; use one of {', '.join(PRESETS)} (--preset).")
    return PRESETS[name]


def resolve(name: str | None, explicit: Mapping[str, Any], backbone: str | None = None,
            default_backbone: str | None = None) -> tuple[TrainConfig, str | None]:
    """The TrainConfig and backbone of preset `name` (None: the defaults) with the `explicit`
    TrainConfig fields (given by the user) and an explicit `backbone` taking precedence."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(explicit) - fields
    if unknown:
        raise ValueError(f"not TrainConfig fields: {sorted(unknown)}")
    values: dict[str, Any] = {}
    chosen_backbone = default_backbone
    if name is not None:
        preset = get_preset(name).values()
        chosen_backbone = preset.pop(BACKBONE, default_backbone)
        values.update(preset)
        overridden = sorted(k for k, v in explicit.items() if k in preset and preset[k] != v)
        if backbone is not None and backbone != chosen_backbone:
            overridden.append(BACKBONE)
        values.update(preset=name, preset_overrides=overridden)
    values.update(explicit)
    if backbone is not None:
        chosen_backbone = backbone
    return TrainConfig(**values), chosen_backbone


def _cli_value(field: str, value: Any) -> str:
    if isinstance(value, bool):
        return flag(field) if value else "--no-" + flag(field)[2:]
    return f"{flag(field)} {value}"


def markdown_table(name: str) -> str:
    """The README's table of every value preset `name` sets."""
    preset = get_preset(name)
    rows = ["| setting | flag | value | reference run |", "| --- | --- | --- | --- |"]
    for field, setting in preset.settings.items():
        rows.append(f"| {field} | `{_cli_value(field, setting.value)}` | {setting.value} | {setting.why} |")
    return "\n".join(rows)


if __name__ == "__main__":  # print the README tables: python -m segunify_core.training.presets
    for preset_name in PRESETS:
        print(f"`--preset {preset_name}`: {PRESETS[preset_name].summary}\n\n{markdown_table(preset_name)}\n")
