"""Memory: peak RSS of tile-segment on generated 4k x 4k and 16k x 16k rasters with the same model.

Each run is a separate process that reports its own peak RSS. The model is a small random-weight
ViT (ViT-Ti/16) so the 16k run (about 4000 windows) finishes in minutes on 2 cores; the memory
that scales with the raster (blend buffers, I/O) does not depend on the backbone.

    python bench/memory.py [--sizes 4096 16384]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, generated_raster, random_checkpoint, report, segment_in_child


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384])
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from segunify_core.method.backbone import create_backbone
    from segunify_core.training.trainer import TrainConfig, train

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = random_checkpoint("vit_tiny_patch16_224", tmp)
        model = tmp / "model.safetensors"
        small = generated_raster(tmp / "train.tif", 1024)
        train([small], model, TrainConfig(classes=4, steps=50, batch_size=16, max_windows=32),
              backbone=create_backbone("vit_tiny_patch16_224", weights), cache_dir=tmp / "cache")
        results = {}
        for side in args.sizes:
            src = generated_raster(tmp / f"in_{side}.tif", side)
            t0 = time.perf_counter()
            results[side] = segment_in_child(model, weights, src, tmp / f"out_{side}.tif")
            report(f"peak_rss_{side}", results[side]["peak_rss_mb"], "MB", seconds=round(results[side]["seconds"], 1),
                   wall=round(time.perf_counter() - t0, 1))
            src.unlink()
        lo, hi = min(args.sizes), max(args.sizes)
        ratio = results[hi]["peak_rss_mb"] / results[lo]["peak_rss_mb"]
        report(f"peak_rss_ratio_{hi}_vs_{lo}", ratio, "x", target="<= 1.25", ok=ratio <= 1.25)


if __name__ == "__main__":
    main()
