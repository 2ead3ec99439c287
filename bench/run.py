"""The speed suite: every figure as a ratio measured within one run (absolute times on shared
machines do not compare across runs). Prints one JSON object per line.

    python bench/run.py [--quick]

1. backbone efficiency: achieved FLOP/s of the backbone on batches of 320 px windows divided by
   the FLOP/s of a 4096 x 4096 matrix product in the same precision, same run. Model FLOPs are
   counted analytically: per block 2 * (12 N C^2 + 2 N^2 C) (qkv, projection, 4x MLP, QK^T and AV
   with N tokens of width C), plus the patch embedding 2 N C 3 p^2; norms and softmax are not
   counted (they are work the hardware does beyond the count).
2. pipeline overhead: tile-segment wall time (model given, no CRF) / backbone-only time for the
   same windows.
3. CRF cost: CRF time per window / backbone time per window, for both backends.
4. scaling: time and peak RSS for 2k, 4k, 8k rasters (ViT-Ti/16, so the suite stays short).
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


def backbone_section(name: str, tmp: Path, batch: int, precision: str) -> float:
    spec_model = create_backbone(name, pretrained=False)
    backbone = create_backbone(name, random_checkpoint(spec_model.spec.timm_name, tmp))
    backbone.precision = precision
    x = torch.rand(batch, 3, 320, 320) * 255
    seconds = timed(lambda: backbone(x), repeat=2)
    achieved = vit_flops(backbone, 320) * batch / seconds
    peak = matmul_rate(precision)
    ratio = achieved / peak
    report(f"backbone_efficiency_{name}", ratio, "fraction of matmul FLOP/s", target=f">= {TARGETS['efficiency']}",
           ok=ratio >= TARGETS["efficiency"], precision=precision, batch=batch,
           gflops_per_window=round(vit_flops(backbone, 320) / 1e9, 1), achieved_gflops=round(achieved / 1e9, 1),
           matmul_gflops=round(peak / 1e9, 1), seconds_per_window=round(seconds / batch, 3))
    return seconds / batch


def crf_section(seconds_per_window: float, name: str) -> None:
    from segunify_core.crf import PyDenseCRF, TorchDenseCRF, pydensecrf_available

    image = torch.rand(1, 3, 320, 320) * 255
    log_probs = torch.log_softmax(torch.randn(1, 5, 320, 320), 1)
    backends = [("torch", TorchDenseCRF())] + ([("pydensecrf", PyDenseCRF())] if pydensecrf_available() else [])
    for label, crf in backends:
        ratio = timed(lambda crf=crf: crf(image, log_probs), repeat=2) / seconds_per_window
        extra = {"target": f"<= {TARGETS['crf_torch']}", "ok": ratio <= TARGETS["crf_torch"]} if label == "torch" else {}
        report(f"crf_cost_{label}_{name}", ratio, "x backbone time per window", **extra)


def pipeline_section(tmp: Path, precision: str, side: int) -> None:
    """tile-segment wall time against backbone-only time on the same windows (flip on)."""
    from segunify_core.model import load_model
    from segunify_core.segment import SegmentOptions, segment_raster
    from segunify_core.tiling import WindowPlan
    from segunify_core.training import TrainConfig, train

    weights = random_checkpoint("vit_small_patch8_224.dino", tmp)
    backbone = create_backbone("dino_vits8", weights)
    backbone.precision = precision
    src = generated_raster(tmp / "pipeline.tif", side)
    model_path = tmp / "vits8.safetensors"
    train([src], model_path, TrainConfig(classes=5, steps=20, batch_size=8, max_windows=8),
          backbone=backbone, cache_dir=tmp / "cache")
    model = load_model(model_path, backbone=backbone)
    options = SegmentOptions(window=320, stride=256, batch_size=4, overwrite=True)
    start = time.perf_counter()
    segment_raster(src, tmp / "pipeline_out.tif", model, options)
    pipeline = time.perf_counter() - start
    with __import__("rasterio").open(src) as ds:
        from segunify_core.segment import grid_phase

        plan = WindowPlan(side, side, 320, 256, *grid_phase(ds.transform))
    windows = len(plan)
    x = torch.rand(4, 3, 320, 320) * 255
    start = time.perf_counter()
    for _ in range(0, windows, 4):
        backbone(x)
        backbone(x.flip(-1))
    backbone_only = time.perf_counter() - start
    ratio = pipeline / backbone_only
    report("pipeline_overhead", ratio, "x backbone-only time", target=f"<= {TARGETS['overhead']}",
           ok=ratio <= TARGETS["overhead"], windows=windows, raster=side, pipeline_s=round(pipeline, 1),
           backbone_s=round(backbone_only, 1))


CHILD = """
import json, resource, sys, time
sys.path.insert(0, {repo!r})
from segunify_core.model import load_model
from segunify_core.segment import SegmentOptions, segment_raster
model = load_model({model!r}, backbone_weights={weights!r})
model.backbone.precision = {precision!r}
start = time.perf_counter()
segment_raster({src!r}, {dst!r}, model, SegmentOptions(window=320, stride=256, overwrite=True))
print(json.dumps({{"seconds": time.perf_counter() - start,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def scaling_section(tmp: Path, precision: str, sides: list[int]) -> None:
    from segunify_core.training import TrainConfig, train

    weights = random_checkpoint("vit_tiny_patch16_224", tmp)
    model = tmp / "tiny.safetensors"
    train([generated_raster(tmp / "t.tif", 1024)], model, TrainConfig(classes=4, steps=20, batch_size=8, max_windows=8),
          backbone=create_backbone("vit_tiny_patch16_224", weights), cache_dir=tmp / "cache")
    results = {}
    for side in sides:
        src = generated_raster(tmp / f"s{side}.tif", side)
        out = subprocess.run([sys.executable, "-c", CHILD.format(repo=str(REPO), model=str(model), weights=str(weights),
                                                                 precision=precision, src=str(src),
                                                                 dst=str(tmp / f"o{side}.tif"))],
                             capture_output=True, text=True, check=True)
        results[side] = json.loads(out.stdout.strip().splitlines()[-1])
        src.unlink()
    for a, b in zip(sides, sides[1:], strict=False):
        ratio = results[b]["seconds"] / results[a]["seconds"]
        pixels = (b / a) ** 2
        report(f"scaling_time_{b}_vs_{a}", ratio, "x", target=f"{0.9 * pixels:.1f} to {1.1 * pixels:.1f}",
               ok=0.9 * pixels <= ratio <= 1.1 * pixels, pixel_ratio=pixels)
    rss = results[sides[-1]]["rss_mb"] / results[sides[0]]["rss_mb"]
    report(f"scaling_rss_{sides[-1]}_vs_{sides[0]}", rss, "x", target="<= 1.25", ok=rss <= 1.25,
           rss_mb={k: round(v["rss_mb"], 1) for k, v in results.items()})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller rasters, ViT-S/8 only")
    args = parser.parse_args()
    precision = choose_precision("auto", torch.device("cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        names = ["dino_vits8"] if args.quick else ["dino_vits8", "dino_vitb8"]
        for name in names:
            per_window = backbone_section(name, tmp, 4, precision)
            crf_section(per_window, name)
        pipeline_section(tmp, precision, 1024 if args.quick else 2048)
        scaling_section(tmp, precision, [1024, 2048, 4096] if args.quick else [2048, 4096, 8192])
    subprocess.run([sys.executable, str(Path(__file__).with_name("train_cache.py")), "--steps", "100",
                    "--windows", "64"], check=True)


if __name__ == "__main__":
    main()
