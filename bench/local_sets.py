"""Several local prototype sets (`--local-sets M`): recovery and cost against the single set.

    python bench/local_sets.py [--scenes 5] [--seeds 5] [--sets 1,2,4] [--steps 100] [--batch-size 8]

Each scene is a generated raster of Voronoi regions in three distinct colours (384 px, a new
layout per scene). For every scene, seed and M a 3-class model is trained on the scene with a
random-weight ViT-Ti/16 (32 windows of 224 px), then labels the whole scene (flip
averaging, no CRF); recovery is the Hungarian mIoU against the scene's true regions. Printed:
one JSON line per run, then per M the mean mIoU over all runs, the spread across seeds (the
standard deviation over seeds of each scene, averaged over scenes), the worst run, and the
median time per training step. Training runs on the CPU, as `segunify train` does.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import random_checkpoint, report

from segunify_core.backbone import create_backbone
from segunify_core.inference import predict_labels
from segunify_core.metrics import confusion_matrix, hungarian_scores
from segunify_core.training import TrainConfig, train

BACKBONE = "vit_tiny_patch16_224"


def run_once(scene: Path, image, labels, backbone, sets: int, seed: int, steps: int, batch: int, folder: Path):
    import torch

    times: list[float] = []

    def progress(phase, done, total, stats):
        if phase == "train":
            times.append(time.perf_counter())

    config = TrainConfig(classes=3, steps=steps, batch_size=batch, max_windows=32, window=224, seed=seed,
                         local_sets=sets)
    model = train([scene], folder / f"m{sets}_{seed}.safetensors", config, backbone=backbone,
                  cache_dir=folder / "cache", on_progress=progress)
    model.backbone = backbone
    pred = predict_labels(model.eval(), torch.from_numpy(image[None].astype("float32")))[0].numpy()
    scores = hungarian_scores(confusion_matrix(pred, labels, 3, 3))
    per_step = (times[-1] - times[0]) / max(1, len(times) - 1)
    return scores.miou, per_step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scenes", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--sets", default="1,2,4")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=384)
    args = parser.parse_args()
    sets_list = [int(s) for s in args.sets.split(",")]

    from tests.conftest import make_blobs, write_geotiff

    results: dict[int, dict[int, list[float]]] = {m: {} for m in sets_list}
    costs: dict[int, list[float]] = {m: [] for m in sets_list}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        backbone = create_backbone(BACKBONE, random_checkpoint(BACKBONE, tmp))
        for scene_id in range(args.scenes):
            image, labels = make_blobs(args.size, args.size, seed=100 + scene_id, cells=16)
            scene = write_geotiff(tmp / f"scene{scene_id}.tif", image)
            for seed in range(args.seeds):
                for m in sets_list:
                    miou, per_step = run_once(scene, image, labels, backbone, m, seed, args.steps, args.batch_size, tmp)
                    results[m].setdefault(scene_id, []).append(miou)
                    costs[m].append(per_step)
                    report("local_sets_run", miou, "mIoU", sets=m, scene=scene_id, seed=seed,
                           step_ms=round(1000 * per_step, 2))
    print(f"\n{'M':>2}  {'mean mIoU':>9}  {'spread (sd over seeds)':>22}  {'worst':>6}  {'ms/step':>8}")
    for m in sets_list:
        every = [v for runs in results[m].values() for v in runs]
        spread = statistics.mean(statistics.stdev(runs) if len(runs) > 1 else 0.0 for runs in results[m].values())
        cost = statistics.median(costs[m])
        report("local_sets_summary", statistics.mean(every), "mIoU", sets=m, spread=round(spread, 4),
               worst=round(min(every), 4), step_ms=round(1000 * cost, 2), runs=len(every))
        print(f"{m:>2}  {100 * statistics.mean(every):9.2f}  {100 * spread:22.2f}  {100 * min(every):6.2f}  "
              f"{1000 * cost:8.2f}", file=sys.stderr)


if __name__ == "__main__":
    main()
