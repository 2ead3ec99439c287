"""Several local prototype sets (`--local-sets M`): recovery and cost against the single set.

    python bench/local_sets.py [--scenes 5] [--seeds 5] [--sets 1,2,4] [--steps 60] [--batch-size 8]

Each scene is a generated raster of Voronoi regions in three distinct colours (384 px, a new
layout per scene). The features of 24 random 224 px windows of a scene (and their flips) from a
random-weight ViT-Ti/16 are cached once; for every seed and M a 3-class model is trained on them
(the seed sets initialisation, batches and dropout; 60 steps of batch 8 at the published learning
rates and EMA), then labels the whole scene (flip
averaging, no CRF); recovery is the Hungarian mIoU against the scene's true regions. Printed:
one JSON line per run, then per M the mean mIoU over all runs, the spread across seeds (the
standard deviation over seeds of each scene, averaged over scenes), the worst run, and the
median time per training step of those runs. On a shared machine those times drift with the load,
so the cost is also measured paired: the M trainers (cached features of the same shape, batch 8)
take turns for several rounds of a few steps each, and the figure is the median per-step time of
each M and its ratio to M = 1 (`--cost-only` runs just this part).
Training runs on the CPU, as `segunify train` does. On a CPU shared with other jobs, run it with
OMP_NUM_THREADS=1 (one thread per process spins less than two fighting for busy cores).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import random_checkpoint, report

from segunify_core import settings
from segunify_core.method.backbone import create_backbone
from segunify_core.method.inference import predict_labels
from segunify_core.training.metrics import confusion_matrix, hungarian_scores
from segunify_core.training.trainer import TrainConfig, Trainer, new_model

BACKBONE = "vit_tiny_patch16_224"
WINDOW = settings.TRAIN_WINDOW


def scene_cache(scene: Path, size: int, backbone, folder: Path, windows: int):
    """Features of `windows` random 224 px windows of the scene and their flips, computed once."""
    from segunify_core.training.datasets import TrainWindowReader, plan_windows, training_images
    from segunify_core.training.feature_cache import build_cache

    images = training_images([scene])
    plan = plan_windows([(size, size)], [1.0], WINDOW, windows, seed=0)
    reader = TrainWindowReader(images, plan, WINDOW, None)
    try:
        return build_cache(folder, len(plan), reader, WINDOW, backbone, True)
    finally:
        reader.close()


def run_once(cache, image, labels, backbone, sets: int, seed: int, steps: int, batch: int):
    """Train a 3-class model (seed: initialisation, batches, dropout) and score its labelling."""
    import torch

    config = TrainConfig(classes=3, steps=steps, batch_size=batch, window=WINDOW, seed=seed, local_sets=sets)
    model = new_model(backbone, config, None)
    trainer = Trainer(model, cache, config)
    start = time.perf_counter()
    while trainer.step < config.steps:
        trainer.train_step()
    per_step = (time.perf_counter() - start) / steps
    model.backbone = backbone
    pred = predict_labels(model.eval(), torch.from_numpy(image[None].astype("float32")))[0].numpy()
    return hungarian_scores(confusion_matrix(pred, labels, 3, 3)).miou, per_step


def paired_cost(sets_list: list[int], batch: int, rounds: int = 7, steps: int = 5) -> dict[int, float]:
    """Median seconds per training step of each M, the trainers taking turns round by round."""
    import json

    import numpy as np

    from segunify_core.method.model import ModelConfig, SegUnifyModel
    from segunify_core.training.feature_cache import FeatureCache
    from segunify_core.training.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        shape = (32, 2, 192, 14, 14)  # ViT-Ti/16 features of 32 windows of 224 px and their flips
        np.random.default_rng(0).standard_normal(shape).astype(np.float16).tofile(folder / "features.f16")
        (folder / "meta.json").write_text(json.dumps({"shape": list(shape)}))
        cache = FeatureCache(folder)
        trainers = {}
        for m in sets_list:
            config = TrainConfig(classes=3, steps=rounds * steps + 1, batch_size=batch, local_sets=m)
            trainers[m] = Trainer(SegUnifyModel(ModelConfig(classes=3, feature_dim=192, local_sets=m)), cache, config)
            trainers[m].train_step()  # warm-up
        times: dict[int, list[float]] = {m: [] for m in sets_list}
        for _ in range(rounds):
            for m, trainer in trainers.items():
                start = time.perf_counter()
                for _ in range(steps):
                    trainer.train_step()
                times[m].append((time.perf_counter() - start) / steps)
    return {m: statistics.median(t) for m, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scenes", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--sets", default="1,2,4")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--windows", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--cost-only", action="store_true", help="Only the paired per-step cost.")
    args = parser.parse_args()
    sets_list = [int(s) for s in args.sets.split(",")]
    if not args.cost_only:
        recovery(args, sets_list)
    cost = paired_cost(sets_list, args.batch_size)
    for m in sets_list:
        report("local_sets_step_cost", 1000 * cost[m], "ms", sets=m, ratio_to_one_set=round(cost[m] / cost[sets_list[0]], 3))


def recovery(args, sets_list: list[int]) -> None:
    from segunify_core.synthetic import make_blobs, write_geotiff

    results: dict[int, dict[int, list[float]]] = {m: {} for m in sets_list}
    costs: dict[int, list[float]] = {m: [] for m in sets_list}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        backbone = create_backbone(BACKBONE, random_checkpoint(BACKBONE, tmp))
        for scene_id in range(args.scenes):
            image, labels = make_blobs(args.size, args.size, seed=100 + scene_id, cells=16)
            scene = write_geotiff(tmp / f"scene{scene_id}.tif", image)
            cache = scene_cache(scene, args.size, backbone, tmp / f"cache{scene_id}", args.windows)
            for seed in range(args.seeds):
                for m in sets_list:
                    miou, per_step = run_once(cache, image, labels, backbone, m, seed, args.steps, args.batch_size)
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
