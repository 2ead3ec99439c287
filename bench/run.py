"""The speed suite: every figure as a ratio measured within one run (absolute times on shared
machines do not compare across runs). Prints one JSON object per line.

    python bench/run.py [--quick] [--family speed|backbone|backbones|scale|realtime] [--device cpu|cuda [--dry-run]]

1. backbone efficiency: achieved FLOP/s of the backbone, run as the pipeline runs it (320 px
   windows with their mirrors in one call; in bfloat16 a fused oneDNN graph, in float32 eager
   PyTorch one window at a time), divided by the FLOP/s of a 4096 x 4096 matrix product in the
   same precision. The two are timed in turn, in stretches of equal FLOPs, for several rounds;
   the figure is the median over rounds of the backbone's rate against the product's rate right
   after it (a shared VM's speed drifts by 20 % over minutes; adjacent pairs cancel the drift).
   Model FLOPs are counted analytically: per block 2 * (12 N C^2 + 2 N^2 C) (qkv, projection, 4x MLP, QK^T and
   AV with N tokens of width C), plus the patch embedding 2 N C 3 p^2; norms, softmax and GELU
   are not counted. ViT-S/8: 2 windows and their mirrors per call, 5 rounds; ViT-B/8: 1 window
   and its mirror, 3 rounds.
2. pipeline overhead: tile-segment wall time (800 px generated raster, 12 windows, model given,
   no CRF) / backbone-only time for the same windows in the same batches (4 windows and their
   mirrors), timed in turn, best of two each, after one warm-up call of the backbone.
3. CRF cost: CRF time per window / backbone time per window (one forward pass, no mirror), for
   both backends; pydensecrf runs the windows of a batch in parallel worker processes.
4. scaling: time and peak RSS of tile-segment on 2k, 4k, 8k rasters, each in its own process.
   The backbone is a random ViT-Ti/16 (--scaling-backbone): ViT-S/8 would take 20-45 minutes on
   the 8k raster alone on 2 cores, and a light backbone makes reading, blending and writing a
   larger share of the time, so any growth faster than the pixels shows more, not less (for
   the same reason without flip averaging). Each process first segments a 640 px raster: that
   one-off start is reported as warmup_s. 2k and 4k: best of two runs; 8k: one run.
5. training: time per step on cached features against the first pass (bench/train_cache.py).

`--family realtime` runs bench/realtime.py instead: megapixels per second end to end of the ViT-S/8
teacher at defaults and of each distilled fast model on a 4096 px raster, their peak memory, and the
students' label agreement with the teacher on rasters distillation never saw.
`--family backbone` runs only item 1 (both backbones; about 3 minutes on 2 cores).
`--family backbones` runs item 1's measure for every registered backbone (random weights, no
file) at its default window (WINDOW rounded to a multiple of its patch size: 320 px for /8 and
/16, 322 px for /14) with 2 windows and their mirrors per call, 3 rounds, and adds its cost per
megapixel: seconds per window pass x 2 (flip averaging) x windows per megapixel at the default
stride (1e6 / stride^2, stride rounded likewise), in model pixels (at the model's GSD).
`--family scale` runs the Dask engine's figures instead (bench/scale.py: speed-up, halo,
scheduler overhead, cold start, assembly share, peak RSS per worker). `--device cuda` runs the
GPU figures instead (bench/gpu.py: end to end on an 8k raster, the backbone's share of the
matmul rate, batch size, precision, peak GPU memory); with `--dry-run` on the CPU, tiny sizes.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import rasterio
import torch
from common import generated_raster, random_checkpoint, report, segment_in_child, vit_flops

from segunify_core import settings
from segunify_core.method.backbone import choose_precision, create_backbone, reuse_freed_memory

TARGETS = {"efficiency": 0.75, "overhead": 1.10, "crf_torch": 0.5}


def timed(fn, repeat: int = 3) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def in_turn(fns: dict, rounds: int) -> dict[str, list[float]]:
    """Times of each function over `rounds` rounds that run them in turn, so that a noisy neighbour
    or a change of clock speed slows the functions of one round alike."""
    times: dict[str, list[float]] = {key: [] for key in fns}
    for _ in range(rounds):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return times


def matmul(precision: str, n: int = 4096):
    """A dense n x n matrix product in the given precision (into a preallocated result), and its FLOPs."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b, c = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype), torch.empty(n, n, dtype=dtype)
    return (lambda: torch.mm(a, b, out=c)), 2 * n ** 3


def efficiency(backbone, window: int, windows: int, precision: str, rounds: int) -> dict:
    """The backbone's FLOP rate on `windows` windows and their mirrors per call against the matrix
    product's, timed in turn (see the docstring, item 1)."""
    x = torch.rand(windows, 3, window, window) * 255
    batch = torch.cat([x, x.flip(-1)])  # the pipeline's call: windows and their mirrors
    product, product_flops = matmul(precision)
    # the product repeated to do about the backbone call's FLOPs, so both see the same stretches of time
    product_repeat = max(1, round(vit_flops(backbone, window) * len(batch) / product_flops))
    backbone(batch)  # warm-up: graph build, first allocations
    times = in_turn({"backbone": lambda: backbone(batch),
                     "matmul": lambda: [product() for _ in range(product_repeat)]}, rounds)
    flops = vit_flops(backbone, window) * len(batch)
    # each round's backbone rate against the product rate measured right after it
    pairs = zip(times["backbone"], times["matmul"], strict=True)
    ratios = [(flops / b) / (product_flops * product_repeat / m) for b, m in pairs]
    seconds = statistics.median(times["backbone"])
    return {"ratio": statistics.median(ratios), "precision": precision, "batch": len(batch),
            "execution": "fused oneDNN graph" if backbone.runs_fused else
            ("eager, one window at a time" if backbone.precision == "fp32" else "eager under autocast"),
            "gflops_per_window": round(vit_flops(backbone, window) / 1e9, 1),
            "achieved_gflops": round(flops / seconds / 1e9, 1),
            "matmul_gflops": round(product_flops * product_repeat / statistics.median(times["matmul"]) / 1e9, 1),
            "seconds_per_window": seconds / len(batch), "round_ratios": [round(r, 3) for r in ratios]}


def backbone_section(name: str, tmp: Path, windows: int, precision: str, rounds: int) -> float:
    """Returns the backbone's seconds per window (one forward pass)."""
    spec_model = create_backbone(name, pretrained=False)
    backbone = create_backbone(name, random_checkpoint(spec_model.spec.timm_name, tmp), precision=precision)
    result = efficiency(backbone, settings.WINDOW, windows, precision, rounds)
    ratio, seconds = result.pop("ratio"), result.pop("seconds_per_window")
    report(f"backbone_efficiency_{name}", ratio, "fraction of matmul FLOP/s", target=f">= {TARGETS['efficiency']}",
           ok=ratio >= TARGETS["efficiency"], seconds_per_window=round(seconds, 3), **result)
    return seconds


def backbones_section(precision: str, windows: int = 2, rounds: int = 3) -> None:
    """Every registered backbone at its default window: share of the matrix-product rate and seconds
    per megapixel (random weights, no file; see the docstring)."""
    from segunify_core.method.registry import BACKBONES

    for name, spec in BACKBONES.items():
        p = spec.patch_size
        window, stride = round(settings.WINDOW / p) * p, round(settings.STRIDE / p) * p
        started = time.perf_counter()
        backbone = create_backbone(name, pretrained=False, precision=precision)
        result = efficiency(backbone, window, windows, precision, rounds)
        ratio, seconds = result.pop("ratio"), result.pop("seconds_per_window")
        per_mp = seconds * 2 * 1e6 / stride ** 2  # window and mirror, per megapixel at the default stride
        report(f"backbone_cost_{name}", round(per_mp, 2), "s per megapixel (model px, flip averaging)",
               matmul_share=round(ratio, 3), window=window, stride=stride, patch=p, timm_name=spec.timm_name,
               seconds_per_window=round(seconds, 3), bench_seconds=round(time.perf_counter() - started, 1),
               **result)
        del backbone


def crf_section(seconds_per_window: float, name: str, windows: int) -> None:
    from segunify_core.method.crf import PyDenseCRF, TorchDenseCRF, pydensecrf_available
    from segunify_core.synthetic import make_blobs

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


def pipeline_section(tmp: Path, precision: str, side: int, batch: int, repeat: int = 2) -> None:
    """tile-segment wall time (model given, no CRF) against backbone-only time for the same windows
    in the same batches: the ratio is what reading, scaling, the head, blending and writing add.

    One backbone serves both; its one-off start (graph build, first allocations) is taken by a
    first call and reported as warmup_s. The two are then timed in turn, best of `repeat` each.
    """
    from segunify_core.files.model_file import load_model
    from segunify_core.job.segment import SegmentOptions, segment_raster
    from segunify_core.job.tiling import WindowPlan
    from segunify_core.job.windows import grid_phase
    from segunify_core.training.trainer import TrainConfig, train

    weights = random_checkpoint("vit_small_patch8_224.dino", tmp)
    src = generated_raster(tmp / "pipeline.tif", side)
    model_path = tmp / "vits8.safetensors"
    trainer_backbone = create_backbone("dino_vits8", weights, precision=precision)
    train([src], model_path, TrainConfig(classes=5, steps=20, batch_size=8, max_windows=8),
          backbone=trainer_backbone, cache_dir=tmp / "cache")
    del trainer_backbone

    model = load_model(model_path, backbone_weights=weights, precision=precision)
    backbone = model.attached_backbone
    with rasterio.open(src) as ds:
        windows = len(WindowPlan(side, side, settings.WINDOW, settings.STRIDE, *grid_phase(ds.transform)))
    x = torch.rand(batch, 3, settings.WINDOW, settings.WINDOW) * 255
    sizes = [min(batch, windows - first) for first in range(0, windows, batch)]  # the pipeline's batches
    first = time.perf_counter()
    backbone(torch.cat([x, x.flip(-1)]))
    first = time.perf_counter() - first

    def backbone_only():
        for n in sizes:
            backbone(torch.cat([x[:n], x[:n].flip(-1)]))

    def pipeline():
        segment_raster(src, tmp / "pipeline_out.tif", model,
                       SegmentOptions(batch_size=batch, overwrite=True))

    best = {key: min(values) for key, values in in_turn({"pipeline": pipeline, "backbone": backbone_only},
                                                        repeat).items()}
    ratio = best["pipeline"] / best["backbone"]
    report("pipeline_overhead", ratio, "x backbone-only time", target=f"<= {TARGETS['overhead']}",
           ok=ratio <= TARGETS["overhead"], windows=windows, raster=side, batch=batch, flip=True,
           pipeline_s=round(best["pipeline"], 1), backbone_s=round(best["backbone"], 1),
           warmup_s=round(first - best["backbone"] / len(sizes), 1),
           megapixels_per_s=round(side * side / best["pipeline"] / 1e6, 3))


def scaling_section(tmp: Path, precision: str, sides: list[int], backbone: str) -> None:
    from segunify_core.training.trainer import TrainConfig, train

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
        results[side] = segment_in_child(model, weights, src, tmp / f"o{side}.tif", precision=precision, flip=False,
                                         warm=warm, repeat=1 if side == sides[-1] else 2)
        src.unlink()
        (tmp / f"o{side}.tif").unlink()
    for a, b in zip(sides, sides[1:], strict=False):
        ratio = results[b]["seconds"] / results[a]["seconds"]
        pixels = (b / a) ** 2
        report(f"scaling_time_{b}_vs_{a}", ratio, "x", target=f"{0.9 * pixels:.1f} to {1.1 * pixels:.1f}",
               ok=0.9 * pixels <= ratio <= 1.1 * pixels, pixel_ratio=pixels, backbone=backbone, flip=False,
               seconds={k: round(v["seconds"], 1) for k, v in results.items() if k in (a, b)},
               warmup_s={k: round(v["warmup_seconds"], 1) for k, v in results.items() if k in (a, b)})
    rss = results[sides[-1]]["peak_rss_mb"] / results[sides[0]]["peak_rss_mb"]
    report(f"scaling_rss_{sides[-1]}_vs_{sides[0]}", rss, "x", target="<= 1.25", ok=rss <= 1.25,
           rss_mb={k: round(v["peak_rss_mb"], 1) for k, v in results.items()})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="ViT-S/8 only, 1k/2k/4k scaling")
    parser.add_argument("--precision", default=settings.PRECISION, choices=settings.PRECISIONS,
                        help="as tile-segment's --precision (auto: bf16 on CPUs with native bfloat16)")
    parser.add_argument("--scaling-backbone", default="vit_tiny_patch16_224",
                        help="backbone of the scaling runs (dino_vits8 makes the 8k run take 20-45 min)")
    parser.add_argument("--family", default="speed", choices=["speed", "backbone", "backbones", "scale", "realtime"],
                        help="speed: the figures above; backbone: item 1 only; backbones: item 1 and the cost "
                             "per megapixel of every registered backbone; scale: the Dask engine's figures "
                             "(bench/scale.py); realtime: teacher against distilled fast models (bench/realtime.py)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="cuda: the GPU figures instead (bench/gpu.py: end to end on 8k, backbone share, memory)")
    parser.add_argument("--dry-run", action="store_true",
                        help="with --device cuda: the same code on the CPU with tiny sizes (checks the path)")
    args = parser.parse_args()
    reuse_freed_memory()  # as the CLI does: the measured processes run with the CLI's allocator settings
    if args.device == "cuda":
        import gpu

        if args.dry_run:
            gpu.run("cpu", **gpu.DRY_RUN)
        elif not torch.cuda.is_available():
            sys.exit("bench: --device cuda needs a CUDA GPU that PyTorch sees; add --dry-run to check the path on CPU.")
        else:
            gpu.run("cuda", **gpu.FULL)
        return
    if args.family == "realtime":  # speed, memory and agreement of fast models against their teacher
        subprocess.run([sys.executable, str(Path(__file__).with_name("realtime.py")),
                        *(["--quick"] if args.quick else [])], check=True)
        return
    if args.family == "scale":
        import scale

        scale.run([1024, 2048, 4096] if args.quick else [4096, 8192, 16384], 2048 if args.quick else 4096)
        return
    precision = choose_precision(args.precision, torch.device("cpu"))
    if args.family == "backbones":
        backbones_section(precision)
        return
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # (backbone, windows per call, rounds): ViT-B/8 takes 3x ViT-S/8's time per window
        runs = [("dino_vits8", 2, 5)] if args.quick else [("dino_vits8", 2, 5), ("dino_vitb8", 1, 3)]
        for name, windows, rounds in runs:
            per_window = backbone_section(name, tmp, windows, precision, rounds)
            if args.family != "backbone":
                crf_section(per_window, name, 4)
        if args.family == "backbone":
            return
        pipeline_section(tmp, precision, 800, 4)
        scaling_section(tmp, precision, [1024, 2048, 4096] if args.quick else [2048, 4096, 8192],
                        args.scaling_backbone)
    subprocess.run([sys.executable, str(Path(__file__).with_name("train_cache.py")), "--steps", "20",
                    "--windows", "32"], check=True)
    report("suite_seconds", time.perf_counter() - started, "s", target="< 600",
           ok=time.perf_counter() - started < 600)


if __name__ == "__main__":
    main()
