"""The speed suite: every figure as a ratio measured within one run (absolute times on shared
machines do not compare across runs). Prints one JSON object per line.

    python bench/run.py [--quick]

1. backbone efficiency: achieved FLOP/s of the backbone (as the pipeline runs it: fused graph,
   batches of 4 windows and their mirrors, 320 px) divided by the FLOP/s of a 4096 x 4096 matrix
   product in the same precision, same run. Model FLOPs are counted analytically: per block
   2 * (12 N C^2 + 2 N^2 C) (qkv, projection, 4x MLP, QK^T and AV with N tokens of width C), plus
   the patch embedding 2 N C 3 p^2; norms, softmax and GELU are not counted.
2. pipeline overhead: tile-segment wall time (model given, no CRF) / backbone-only time for the
   same windows, both from a fresh backbone.
3. CRF cost: CRF time per window / backbone time per window (one forward pass, no mirror), for
   both backends; pydensecrf runs the windows of a batch in parallel worker processes.
4. scaling: time and peak RSS of tile-segment on 2k, 4k, 8k rasters, each in its own process
   (DINO ViT-S/16, a quarter of ViT-S/8's work per window, so that the 8k raster takes about a
   minute and a half; see --scaling-backbone). Each process first segments a 640 px raster: that
   one-off start (graph build) is reported as warmup_s, not counted in the growth with pixels.
5. training: time per step on cached features against the first pass (bench/train_cache.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import rasterio
import torch
from common import REPO, generated_raster, random_checkpoint, report

from segunify_core.backbone import choose_precision, create_backbone

TARGETS = {"efficiency": 0.75, "overhead": 1.10, "crf_torch": 0.5}


def vit_flops(backbone, size: int) -> float:
    n = (size // backbone.patch_size) ** 2 + backbone.num_prefix_tokens
    c = backbone.width
    depth = len(backbone.model.blocks)
    return depth * 2 * (12 * n * c * c + 2 * n * n * c) + 2 * n * c * 3 * backbone.patch_size ** 2


def timed(fn, repeat: int = 3) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_rate(precision: str, n: int = 4096) -> float:
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n ** 3 / timed(lambda: a @ b)


def backbone_section(name: str, tmp: Path, windows: int, precision: str) -> float:
    """Returns the backbone's seconds per window (one forward pass)."""
    spec_model = create_backbone(name, pretrained=False)
    backbone = create_backbone(name, random_checkpoint(spec_model.spec.timm_name, tmp))
    backbone.precision = precision
    x = torch.rand(windows, 3, 320, 320) * 255
    batch = torch.cat([x, x.flip(-1)])  # the pipeline's call: windows and their mirrors
    seconds = timed(lambda: backbone(batch), repeat=2)
    achieved = vit_flops(backbone, 320) * len(batch) / seconds
    peak = matmul_rate(precision)
    ratio = achieved / peak
    report(f"backbone_efficiency_{name}", ratio, "fraction of matmul FLOP/s", target=f">= {TARGETS['efficiency']}",
           ok=ratio >= TARGETS["efficiency"], precision=precision, batch=len(batch),
           fused_graph=any(g is not None for g in backbone._graphs.values()),
           gflops_per_window=round(vit_flops(backbone, 320) / 1e9, 1), achieved_gflops=round(achieved / 1e9, 1),
           matmul_gflops=round(peak / 1e9, 1), seconds_per_window=round(seconds / len(batch), 3))
    return seconds / len(batch)


def crf_section(seconds_per_window: float, name: str, windows: int) -> None:
    from segunify_core.crf import PyDenseCRF, TorchDenseCRF, pydensecrf_available
    from tests.conftest import make_blobs

    rgb, labels = make_blobs(320, 320, seed=3, cells=12)
    images = torch.from_numpy(rgb).float()[None].repeat(windows, 1, 1, 1)
    noisy = torch.nn.functional.one_hot(torch.from_numpy(labels).long() % 5, 5).permute(2, 0, 1).float()
    log_probs = torch.log_softmax(3 * noisy[None] + torch.randn(windows, 5, 320, 320), 1)
    torch_crf = TorchDenseCRF()
    per_window = timed(lambda: torch_crf(images, log_probs), repeat=2) / windows
    ratio = per_window / seconds_per_window
    report(f"crf_cost_torch_{name}", ratio, "x backbone time per window", target=f"<= {TARGETS['crf_torch']}",
           ok=ratio <= TARGETS["crf_torch"], crf_s_per_window=round(per_window, 3),
           backbone_s_per_window=round(seconds_per_window, 3), stride=torch_crf.stride)
    if pydensecrf_available():
        parallel, serial = PyDenseCRF(), PyDenseCRF(workers=1)
        per_window = timed(lambda: parallel(images, log_probs), repeat=2) / windows
        serial_per_window = timed(lambda: serial(images, log_probs), repeat=1) / windows
        parallel.close()
        report(f"crf_cost_pydensecrf_{name}", per_window / seconds_per_window, "x backbone time per window",
               workers=parallel.workers, crf_s_per_window=round(per_window, 3),
               parallel_speedup=round(serial_per_window / per_window, 2))


def pipeline_section(tmp: Path, precision: str, side: int, batch: int) -> None:
    """tile-segment wall time (model given, no CRF) against backbone-only time for the same windows.

    Both start from a fresh backbone, so both include its one-off graph build (reported as
    warmup_s); the ratio is what reading, scaling, the head, blending and writing add.
    """
    from segunify_core.model import load_model
    from segunify_core.segment import SegmentOptions, grid_phase, segment_raster
    from segunify_core.tiling import WindowPlan
    from segunify_core.training import TrainConfig, train

    weights = random_checkpoint("vit_small_patch8_224.dino", tmp)
    src = generated_raster(tmp / "pipeline.tif", side)
    model_path = tmp / "vits8.safetensors"
    trainer_backbone = create_backbone("dino_vits8", weights)
    trainer_backbone.precision = precision
    train([src], model_path, TrainConfig(classes=5, steps=20, batch_size=8, max_windows=8),
          backbone=trainer_backbone, cache_dir=tmp / "cache")
    del trainer_backbone

    model = load_model(model_path, backbone_weights=weights)
    model.backbone.precision = precision
    start = time.perf_counter()
    segment_raster(src, tmp / "pipeline_out.tif", model, SegmentOptions(window=320, stride=256, batch_size=batch,
                                                                         overwrite=True))
    pipeline = time.perf_counter() - start
    del model

    with rasterio.open(src) as ds:
        windows = len(WindowPlan(side, side, 320, 256, *grid_phase(ds.transform)))
    backbone = create_backbone("dino_vits8", weights)
    backbone.precision = precision
    x = torch.rand(batch, 3, 320, 320) * 255
    start = time.perf_counter()
    backbone(torch.cat([x, x.flip(-1)]))
    warmup = time.perf_counter() - start
    for _ in range(batch, windows, batch):
        backbone(torch.cat([x, x.flip(-1)]))
    backbone_only = time.perf_counter() - start
    steady = (backbone_only - warmup) / max(1, (windows - 1) // batch)
    ratio = pipeline / backbone_only
    report("pipeline_overhead", ratio, "x backbone-only time", target=f"<= {TARGETS['overhead']}",
           ok=ratio <= TARGETS["overhead"], windows=windows, raster=side, batch=batch, flip=True,
           pipeline_s=round(pipeline, 1), backbone_s=round(backbone_only, 1),
           warmup_s=round(warmup - steady, 1), megapixels_per_s=round(side * side / pipeline / 1e6, 3))


CHILD = """
import json, sys, time
sys.path.insert(0, {repo!r})
from segunify_core.model import load_model
from segunify_core.segment import SegmentOptions, segment_raster
model = load_model({model!r}, backbone_weights={weights!r})
model.backbone.precision = {precision!r}
start = time.perf_counter()
segment_raster({warm!r}, {warm_out!r}, model, SegmentOptions(window=320, stride=256, overwrite=True))
warmup = time.perf_counter() - start
start = time.perf_counter()
segment_raster({src!r}, {dst!r}, model, SegmentOptions(window=320, stride=256, overwrite=True))
seconds = time.perf_counter() - start
# VmHWM: this process's own peak (ru_maxrss would start from the parent's RSS at fork)
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({{"seconds": seconds, "warmup_seconds": warmup, "rss_mb": peak / 1024}}))
"""


def scaling_section(tmp: Path, precision: str, sides: list[int], backbone: str) -> None:
    from segunify_core.training import TrainConfig, train

    spec = create_backbone(backbone, pretrained=False).spec
    weights = random_checkpoint(spec.timm_name, tmp)
    model = tmp / "scaling.safetensors"
    train([generated_raster(tmp / "t.tif", 1024)], model, TrainConfig(classes=4, steps=20, batch_size=8, max_windows=8),
          backbone=create_backbone(backbone, weights), cache_dir=tmp / "cache")
    # Each size runs in its own process, which first segments a 640 px raster: the one-off start
    # (graph build, first reads) is reported as warmup_s and is not part of the growth with pixels.
    warm = generated_raster(tmp / "warm.tif", 640)
    results = {}
    for side in sides:
        src = generated_raster(tmp / f"s{side}.tif", side)
        out = subprocess.run([sys.executable, "-c", CHILD.format(repo=str(REPO), model=str(model), weights=str(weights),
                                                                 precision=precision, src=str(src), warm=str(warm),
                                                                 warm_out=str(tmp / "warm_out.tif"),
                                                                 dst=str(tmp / f"o{side}.tif"))],
                             capture_output=True, text=True, check=True)
        results[side] = json.loads(out.stdout.strip().splitlines()[-1])
        src.unlink()
        (tmp / f"o{side}.tif").unlink()
    for a, b in zip(sides, sides[1:], strict=False):
        ratio = results[b]["seconds"] / results[a]["seconds"]
        pixels = (b / a) ** 2
        report(f"scaling_time_{b}_vs_{a}", ratio, "x", target=f"{0.9 * pixels:.1f} to {1.1 * pixels:.1f}",
               ok=0.9 * pixels <= ratio <= 1.1 * pixels, pixel_ratio=pixels, backbone=backbone,
               seconds={k: round(v["seconds"], 1) for k, v in results.items() if k in (a, b)},
               warmup_s={k: round(v["warmup_seconds"], 1) for k, v in results.items() if k in (a, b)})
    rss = results[sides[-1]]["rss_mb"] / results[sides[0]]["rss_mb"]
    report(f"scaling_rss_{sides[-1]}_vs_{sides[0]}", rss, "x", target="<= 1.25", ok=rss <= 1.25,
           rss_mb={k: round(v["rss_mb"], 1) for k, v in results.items()})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="ViT-S/8 only, 1k pipeline raster, 1k/2k/4k scaling")
    parser.add_argument("--scaling-backbone", default="dino_vits16",
                        help="backbone of the scaling runs (dino_vits8 makes the 8k run take about 6 min)")
    args = parser.parse_args()
    precision = choose_precision("auto", torch.device("cpu"))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        names = ["dino_vits8"] if args.quick else ["dino_vits8", "dino_vitb8"]
        for name in names:
            per_window = backbone_section(name, tmp, 4, precision)
            crf_section(per_window, name, 4)
        pipeline_section(tmp, precision, 1024 if args.quick else 2048, 4)
        scaling_section(tmp, precision, [1024, 2048, 4096] if args.quick else [2048, 4096, 8192],
                        args.scaling_backbone)
    subprocess.run([sys.executable, str(Path(__file__).with_name("train_cache.py")), "--steps", "100",
                    "--windows", "64"], check=True)
    report("suite_seconds", time.perf_counter() - started, "s", target="< 600",
           ok=time.perf_counter() - started < 600)


if __name__ == "__main__":
    main()
