"""The scale family of the speed suite (python bench/run.py --family scale, or run this file).

Figures, each measured in this run:
1. speed-up of a LocalCluster of 2 worker processes over the in-process engine on a 4096 px
   raster cut into parts of --block px (the same parts for both engines, so the cluster has parts
   to share; on a 2-core machine expect about 1x: both engines use both cores).
2. halo overhead: windows computed over all parts / windows of the raster's plan, minus 1, per
   axis, against the W / B estimate (W window, B part side), for that block and the default one.
3. scheduler overhead per task: wall time of 200 empty Dask tasks / 200.
4. worker cold start: LocalCluster start-up, and the first part's extra time on a fresh worker
   (loading torch, the backbone and the model) over a later part of the same size.
5. assembly time (VRT -> tiled GeoTIFF, QML) as a share of the total.
6. peak RSS per worker process on 4k, 8k and 16k rasters (one fresh cluster each): flat when
   memory depends on the part size, not the raster's.
The backbone is a random ViT-Ti/16 without flip averaging (as in the suite's scaling section):
ViT-S/8 on these rasters takes hours on 2 cores; a light model makes planning, reading, blending,
writing and scheduling a larger share, so their overheads show more, not less.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

from common import generated_raster, random_checkpoint, report

from segunify_core import settings

BACKBONE = "vit_tiny_patch16_224"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _model(tmp: Path):
    import torch

    from segunify_core.files.model_file import save_model
    from segunify_core.method.backbone import create_backbone
    from segunify_core.method.model import ModelConfig, SegUnifyModel

    weights = random_checkpoint(BACKBONE, tmp)
    backbone = create_backbone(BACKBONE, weights)
    torch.manual_seed(0)
    model = SegUnifyModel(ModelConfig(backbone=BACKBONE, classes=5, feature_dim=backbone.feature_dim,
                                      patch_size=backbone.patch_size, gsd=0.5), backbone).eval()
    path = tmp / "model.safetensors"
    save_model(model, path)
    return model, path, weights


def _options(**kw):
    from segunify_core.job.segment import SegmentOptions

    return SegmentOptions(**{"flip": False, "overwrite": True, **kw})


def halo_overhead(src: Path, patch_size: int, block: int) -> None:
    """Windows computed over all parts against the windows of the whole raster's plan."""
    from segunify_core.job.planning import Geometry, plan

    parts = plan([src], [src.with_name("halo.tif")], Geometry(settings.WINDOW, settings.STRIDE, patch_size, 0.5), block=block)
    computed = sum(len(p.tiles()) for p in parts)
    windows = len(parts[0].raster.window_plan())
    report("scale_halo_overhead_per_axis", (computed / windows) ** 0.5 - 1, "fraction",
           estimate_w_over_b=round(settings.WINDOW / block, 4), block=block, windows=windows, computed=computed,
           parts=len(parts))


def _cluster(workers: int = 2):
    import distributed

    start = time.perf_counter()
    cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                       dashboard_address=None, death_timeout=120)
    client = distributed.Client(cluster, timeout=120)
    return cluster, client, time.perf_counter() - start


def speedup_and_overheads(tmp: Path, side: int, block: int) -> None:
    from segunify_core.job.planning import DEFAULT_BLOCK
    from segunify_core.job.segment import segment

    model, path, weights = _model(tmp)
    src = generated_raster(tmp / f"r{side}.tif", side)
    start = time.perf_counter()
    local = segment([src], [tmp / "local.tif"], model, _options(block=block))
    local_s = time.perf_counter() - start
    cluster, client, startup_s = _cluster()
    try:
        start = time.perf_counter()
        dask = segment([src], [tmp / "dask.tif"], model, _options(block=block), client=client, model_file=path,
                       backbone_weights=weights)
        dask_s = time.perf_counter() - start
        empty = time.perf_counter()
        client.gather(client.map(lambda i: i, range(200), pure=False))
        per_task_ms = (time.perf_counter() - empty) / 200 * 1000
    finally:
        client.close()
        cluster.close()
    report("scale_speedup_local2", local_s / dask_s, "x", in_process_s=round(local_s, 2),
           cluster_s=round(dask_s, 2), raster_px=side, block=block, parts=local.parts,
           identical=_same_labels(tmp / "local.tif", tmp / "dask.tif"), note="2 cores: about 1x expected")
    for size in sorted({block, DEFAULT_BLOCK}):
        halo_overhead(src, model.config.patch_size, size)
    report("scale_scheduler_overhead_per_task", per_task_ms, "ms", tasks=200)
    report("scale_cluster_startup", startup_s, "s", workers=2)
    report("scale_assembly_share", local.seconds["assemble"] / local_s, "fraction",
           assemble_s=round(local.seconds["assemble"], 2), total_s=round(local_s, 2), engine="in-process",
           cluster_share=round(dask.seconds["assemble"] / dask_s, 4))


def _same_labels(a: Path, b: Path) -> bool:
    import numpy as np
    import rasterio

    with rasterio.open(a) as x, rasterio.open(b) as y:
        return bool(np.array_equal(x.read(), y.read()))


def cold_start(tmp: Path) -> None:
    """First part on a fresh worker against a later part of the same size."""
    from segunify_core.job.planning import Geometry, plan
    from segunify_core.job.spec import JobSpec, RunFacts
    from segunify_core.job.worker import run_part_task
    from segunify_core.settings import SegmentOptions

    model, path, weights = _model(tmp)
    src = generated_raster(tmp / "cold.tif", 1024)
    parts = plan([src], [tmp / "o.tif"], Geometry(settings.WINDOW, settings.STRIDE, 16, 0.5), block=512)
    job = JobSpec.build([src], [tmp / "o.tif"], SegmentOptions(flip=False), model_file=path).to_json()
    facts = RunFacts(str(tmp), model_file=str(path), model_sha256="bench", backbone_weights=str(weights)).to_dict()
    cluster, client, _ = _cluster(1)
    try:
        times = []
        for part in (parts[0], parts[0]):
            start = time.perf_counter()
            client.submit(run_part_task, part.to_dict(), job, facts, pure=False).result()
            times.append(time.perf_counter() - start)
    finally:
        client.close()
        cluster.close()
    report("scale_worker_cold_start", times[0] - times[1], "s", first_part_s=round(times[0], 2),
           warm_part_s=round(times[1], 2))


def worker_rss(tmp: Path, sides: list[int]) -> None:
    from segunify_core.job.segment import segment

    model, path, weights = _model(tmp)
    peaks = {}
    for side in sides:
        src = generated_raster(tmp / f"rss{side}.tif", side)
        cluster, client, _ = _cluster()
        try:
            start = time.perf_counter()
            segment([src], [tmp / f"rss{side}_out.tif"], model, _options(), client=client, model_file=path,
                    backbone_weights=weights)
            seconds = time.perf_counter() - start
            peaks[side] = max(client.run(_peak_rss_mb).values())
        finally:
            client.close()
            cluster.close()
        report("scale_worker_peak_rss", peaks[side], "MB", raster_px=side, seconds=round(seconds, 1))
        os.remove(src)
    first, last = sides[0], sides[-1]
    report("scale_worker_rss_ratio", peaks[last] / peaks[first], "x", sizes=f"{last} vs {first}",
           target="<= 1.25", ok=peaks[last] / peaks[first] <= 1.25)


def run(sides: list[int] | None = None, side: int = 4096, block: int = 1024) -> None:
    with tempfile.TemporaryDirectory(prefix="segunify-scale-") as tmp:
        speedup_and_overheads(Path(tmp), side, block)
        cold_start(Path(tmp))
        worker_rss(Path(tmp), sides or [4096, 8192, 16384])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=4096)
    parser.add_argument("--block", type=int, default=1024, help="part side for the speed-up run")
    parser.add_argument("--rss-sides", default="4096,8192,16384")
    args = parser.parse_args()
    run([int(s) for s in args.rss_sides.split(",")], args.side, args.block)
