"""Training speed: per-step time of 200 steps on cached features against the first pass that
computes them (ViT-S/8 with random weights, 224 px windows, batch 32, flips cached).

    python bench/train_cache.py [--steps 200] [--windows 128]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import generated_raster, random_checkpoint, report

from segunify_core import settings
from segunify_core.method.backbone import choose_precision, create_backbone
from segunify_core.training.trainer import TrainConfig, train


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--windows", type=int, default=128)
    parser.add_argument("--backbone", default=settings.BACKBONE)
    args = parser.parse_args()
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = random_checkpoint(create_backbone(args.backbone, pretrained=False).spec.timm_name, tmp)
        backbone = create_backbone(args.backbone, weights, precision=choose_precision(settings.PRECISION, torch.device("cpu")))
        data = generated_raster(tmp / "train.tif", 2048)
        times: dict[str, float] = {}
        marks: dict[str, float] = {}

        def on_progress(phase, done, total, stats=None):
            now = time.perf_counter()
            marks.setdefault(f"{phase}_start", marks.get("last", now))
            marks[f"{phase}_end"] = now
            marks["last"] = now

        config = TrainConfig(classes=5, steps=args.steps, max_windows=args.windows)
        start = time.perf_counter()
        marks["last"] = start
        train([data], tmp / "model.safetensors", config, backbone=backbone, cache_dir=tmp / "cache",
              on_progress=on_progress)
        times["features"] = marks["features_end"] - start
        times["train"] = marks["train_end"] - marks["features_end"]
        batches = args.windows / config.batch_size  # the first pass, counted in batches of 32 windows
        first_pass_per_batch = times["features"] / batches
        step = times["train"] / args.steps
        report("first_pass_seconds_per_batch", first_pass_per_batch, "s", backbone=args.backbone,
               precision=backbone.precision, windows=args.windows, views_per_window=2)
        report("cached_step_seconds", step, "s", steps=args.steps)
        ratio = first_pass_per_batch / step
        report("training_cached_speedup", ratio, "x", target=">= 10", ok=ratio >= 10)


if __name__ == "__main__":
    main()
