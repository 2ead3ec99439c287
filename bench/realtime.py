"""Real-time inference: the teacher (ViT-S/8 at defaults) against the fast models distilled from it.

One run, side by side: end-to-end megapixels per second of tile-segment on a generated raster
(--side, 4096 px by default) for the teacher at its defaults and for each student, the peak RSS of
each run (its own process), and the label agreement of each student with its teacher on rasters
that distillation never saw: generated scenes (other seeds) and the shared sample rasters (each
reported, with whether distillation saw it).

The backbone has random weights (benchmarks and tests are offline), so the teacher is what a user
would have on their data: a model trained on that data. Generated scenes: teacher and students on
three scenes, compared on three other seeds. Samples: the teacher trained on cogeo.tif and
atlanta_pan_0.5m.tif (the two aerial images, 0.5-0.6 m), the students distilled on cogeo.tif
only, compared on every sample raster (the others run at native resolution, as the teacher does
beyond 8x its GSD).

    python bench/realtime.py [--quick] [--side 4096] [--steps 300 1000] [--students mobilenetv3_large_100 resnet18]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from common import REPO, generated_raster, random_checkpoint, report, segment_in_child

SAMPLES = ["rasterio/cogeo.tif", "spacenet/atlanta_pan_0.5m.tif", "rasterio/RGB.byte.tif", "rasterio/world.rgb.tif"]
SAMPLE_TEACHER = ["rasterio/cogeo.tif", "spacenet/atlanta_pan_0.5m.tif"]  # the teacher's training data (0.5-0.6 m)
SAMPLE_DISTIL = ["rasterio/cogeo.tif"]  # what distillation sees

def labels_of(model, weights, src: Path, dst: Path, reuse: bool = False) -> np.ndarray:
    from segunify_core.job.segment import SegmentOptions, segment_raster

    if not (reuse and dst.exists()):  # reuse: the teacher's labels of an earlier run in --workdir
        segment_raster(src, dst, model, SegmentOptions(overwrite=True))
    with rasterio.open(dst) as ds:
        return ds.read(1)


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    valid = (a > 0) & (b > 0)
    return float((a[valid] == b[valid]).mean())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small raster, few steps (a smoke run)")
    parser.add_argument("--side", type=int, default=4096)
    parser.add_argument("--steps", type=int, nargs="+", default=[300, 1000])
    parser.add_argument("--students", nargs="+", default=None)
    parser.add_argument("--windows", type=int, default=96, help="teacher windows per data set (distillation)")
    parser.add_argument("--teacher-steps", type=int, default=300, help="training steps of the teachers")
    parser.add_argument("--teacher-windows", type=int, default=96, help="training windows of the teachers")
    parser.add_argument("--no-samples", action="store_true")
    parser.add_argument("--no-generated", action="store_true", help="only the sample rasters (and no speed figures)")
    parser.add_argument("--no-speed", action="store_true")
    parser.add_argument("--workdir", type=Path, default=None, help="keep models and rasters here")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from segunify_core import settings
    from segunify_core.files.model_file import load_model
    from segunify_core.method.backbone import create_backbone
    from segunify_core.settings import DistillOptions
    from segunify_core.synthetic import make_blobs, write_geotiff
    from segunify_core.training.distill import distill
    from segunify_core.training.trainer import TrainConfig, train
    from tests.helpers import samples_dir

    students = args.students or list(settings.STUDENTS)
    steps = [20] if args.quick else args.steps
    side = 1024 if args.quick else args.side
    windows = 8 if args.quick else args.windows
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.workdir or Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        weights = random_checkpoint("vit_small_patch8_224.dino", tmp)
        backbone = create_backbone("dino_vits8", weights)
        sets: dict[str, dict] = {}
        gen_train, gen_test = tmp / "gen_train", tmp / "gen_test"
        gen_train.mkdir(exist_ok=True)
        gen_test.mkdir(exist_ok=True)
        for seed in (100, 101, 102):
            write_geotiff(gen_train / f"scene{seed}.tif", make_blobs(768, 768, seed=seed, cells=40)[0])
        for seed in (200, 201, 202):
            write_geotiff(gen_test / f"scene{seed}.tif", make_blobs(640, 640, seed=seed, cells=40)[0])
        sets["generated"] = {"teacher": [gen_train], "train": [gen_train], "test": sorted(gen_test.glob("*.tif")),
                             "classes": 3, "seen": set()}
        if args.no_generated:
            del sets["generated"]
            args.no_speed = True
        folder = samples_dir()
        if folder is not None and not args.no_samples:
            sets["samples"] = {"teacher": [folder / n for n in SAMPLE_TEACHER], "train": [folder / n for n in SAMPLE_DISTIL],
                               "test": [folder / n for n in SAMPLES], "classes": 4,
                               "seen": {str(folder / n) for n in SAMPLE_DISTIL}}
        teachers: dict[str, Path] = {}
        for name, data in sets.items():
            if name == "samples" and not args.no_speed:  # the speed figures first: they need the generated set only
                speed(args, tmp, teachers, weights, students, steps, side)
            teacher = tmp / f"teacher_{name}.safetensors"
            if not teacher.exists():
                clock = time.perf_counter()
                train(data["teacher"], teacher, TrainConfig(classes=data["classes"],
                                                            steps=20 if args.quick else args.teacher_steps, batch_size=16,
                                                            max_windows=16 if args.quick else args.teacher_windows,
                                                          window=224, seed=0),
                      backbone=backbone, backbone_weights=str(weights), cache_dir=tmp / "cache")
                report(f"teacher_train_{name}", time.perf_counter() - clock, "s")
            teachers[name] = teacher
            teacher_model = load_model(teacher, backbone=backbone)
            teacher_labels = {src: labels_of(teacher_model, weights, src, tmp / f"t_{name}_{src.stem}.tif", reuse=True)
                              for src in data["test"]}
            runs = [(s, n) for s in students for n in (steps if s == students[0] else steps[-1:])]
            report(f"teacher_{name}_labels_done", 0, "", rasters=[p.name for p in data["test"]])
            for student, count in runs:
                fast = tmp / f"fast_{name}_{student}_{count}.safetensors"
                if not fast.exists():
                    clock = time.perf_counter()
                    distill(teacher, data["train"], fast,
                            DistillOptions(student=student, steps=count, max_windows=windows,
                                           cache_dir=str(tmp / "teacher-cache")),
                            backbone_weights=weights)
                    report(f"distill_{name}_{student}_{count}", time.perf_counter() - clock, "s")
                model = load_model(fast)
                scores = []
                for src in data["test"]:
                    score = agreement(teacher_labels[src], labels_of(model, weights, src, tmp / f"s_{src.stem}.tif"))
                    scores.append(score)
                    report(f"agreement_{name}_{student}_{count}_{src.stem}", score, "share",
                           seen_in_distillation=str(src) in data["seen"])
                unseen = [s for s, src in zip(scores, data["test"], strict=True) if str(src) not in data["seen"]]
                report(f"agreement_{name}_{student}_{count}_unseen_mean", float(np.mean(unseen)), "share",
                       target=">= 0.95", ok=min(unseen) >= 0.95, minimum=round(min(unseen), 4))
        if "samples" not in sets and not args.no_speed:
            speed(args, tmp, teachers, weights, students, steps, side)


def speed(args, tmp: Path, teachers: dict, weights: Path, students: list, steps: list, side: int) -> None:
    """Megapixels per second end to end and peak RSS of the teacher and each student, each in its own process."""
    src = generated_raster(tmp / f"speed_{side}.tif", side)
    mp = side * side / 1e6
    teacher_run = segment_in_child(teachers["generated"], weights, src, tmp / "speed_teacher.tif")
    teacher_rate = mp / teacher_run["seconds"]
    report("realtime_teacher_mp_per_s", teacher_rate, "MP/s", side=side, seconds=round(teacher_run["seconds"], 1),
           peak_rss_mb=round(teacher_run["peak_rss_mb"]))
    for student in students:
        fast = tmp / f"fast_generated_{student}_{steps[-1]}.safetensors"
        run = segment_in_child(fast, weights, src, tmp / f"speed_{student}.tif")
        rate = mp / run["seconds"]
        report(f"realtime_{student}_mp_per_s", rate, "MP/s", side=side, seconds=round(run["seconds"], 1),
               peak_rss_mb=round(run["peak_rss_mb"]))
        report(f"realtime_{student}_speedup", rate / teacher_rate, "x", target=">= 20", ok=rate / teacher_rate >= 20)


if __name__ == "__main__":
    main()
