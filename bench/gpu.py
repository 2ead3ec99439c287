"""The GPU family of the speed suite (python bench/run.py --device cuda, or run this file).

Figures, per backbone (ViT-S/8 and ViT-B/8, random weights of the same shape: speed does not
depend on the values), in the precision tile-segment picks on the device (--precision auto:
bf16 where the GPU runs it, else fp16):
1. end to end: megapixels per second of tile-segment on an 8192 px generated raster (320 px
   windows, stride 256, model given, flip averaging), without CRF and with the torch CRF. One
   warm-up run on a 640 px raster first (kernel choice, first allocations), not counted.
2. backbone share: FLOP/s of the backbone on one batch (the windows and their mirrors, as the
   pipeline calls it) / FLOP/s of an n x n torch.matmul in the same precision on the device
   (n = 8192), each the median of several timed calls after a warm-up, synchronised.
3. the batch size and precision used, and GPU memory at peak of each end-to-end run
   (torch.cuda.max_memory_allocated).
The batch size is chosen from free GPU memory (torch.cuda.mem_get_info): the backbone's peak
memory per window is measured on a probe batch, and the batch takes half of the free memory
(at most 128 windows). Without CUDA (--dry-run) it is a fixed small batch.

`--dry-run` runs the same code on the CPU with tiny sizes (a 320 px raster, ViT-Ti/16, a 256 px
matrix product): it checks the path, its figures mean nothing.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from common import generated_raster, random_checkpoint, report, vit_flops

WINDOW, STRIDE = 320, 256
MAX_BATCH = 128  # windows per call; beyond this a GPU gains nothing and the host buffers grow
MEMORY_SHARE = 0.5  # of the free GPU memory, for the backbone's activations
TARGET_MPX_S = 100.0  # ViT-S/8 with flip, no CRF, on one H100 (issue 24)

FULL = dict(side=8192, backbones=("dino_vits8", "dino_vitb8"), matmul_n=8192, warm_side=640)
DRY_RUN = dict(side=320, backbones=("vit_tiny_patch16_224",), matmul_n=256, warm_side=320)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn: Callable[[], object], device: torch.device, repeat: int) -> float:
    fn()  # warm-up
    _sync(device)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_rate(precision: str, device: torch.device, n: int) -> float:
    """FLOP/s of an n x n x n torch.matmul in the precision's dtype on the device."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    c = torch.empty(n, n, dtype=dtype, device=device)
    products = 10

    def run() -> None:
        for _ in range(products):
            torch.matmul(a, b, out=c)

    return products * 2 * n ** 3 / _median_seconds(run, device, 5)


def auto_batch_size(backbone, device: torch.device, fixed: int = 4) -> tuple[int, str]:
    """Windows per backbone call from the free GPU memory (see the module docstring), and how it
    was chosen."""
    if device.type != "cuda":
        return fixed, "fixed (no CUDA)"
    probe = 2
    _sync(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    x = torch.rand(probe, 3, WINDOW, WINDOW, device=device) * 255
    backbone(torch.cat([x, x.flip(-1)]))
    _sync(device)
    per_window = max(1, torch.cuda.max_memory_allocated(device) - base) / probe
    del x
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info(device)
    batch = max(1, min(MAX_BATCH, int(MEMORY_SHARE * free / per_window)))
    return batch, (f"{MEMORY_SHARE:.0%} of free memory ({free / 2**30:.1f} GiB) / {per_window / 2**20:.0f} MiB per "
                   f"window with its mirror, at most {MAX_BATCH}")


def _model_file(name: str, tmp: Path) -> tuple[Path, Path]:
    """A model file of the backbone with a random head, and the backbone's random checkpoint."""
    from segunify_core import ModelConfig, SegUnifyModel, create_backbone, save_model

    spec = create_backbone(name, pretrained=False).spec
    weights = random_checkpoint(spec.timm_name, tmp)
    backbone = create_backbone(name, weights)
    torch.manual_seed(0)
    model = SegUnifyModel(ModelConfig(backbone=name, classes=5, feature_dim=backbone.feature_dim,
                                      patch_size=backbone.patch_size, gsd=0.5), backbone).eval()
    path = tmp / f"{name}.safetensors"
    save_model(model, path)
    return path, weights


def backbone_share(backbone, device: torch.device, precision: str, batch: int, matmul_n: int) -> dict:
    x = torch.rand(batch, 3, WINDOW, WINDOW, device=device) * 255
    images = torch.cat([x, x.flip(-1)])  # the pipeline's call: windows and their mirrors
    seconds = _median_seconds(lambda: backbone(images), device, 5)
    achieved = vit_flops(backbone, WINDOW) * len(images) / seconds
    peak = matmul_rate(precision, device, matmul_n)
    return {"share": achieved / peak, "achieved_tflops": round(achieved / 1e12, 2),
            "matmul_tflops": round(peak / 1e12, 2), "matmul_n": matmul_n, "images_per_call": len(images)}


def end_to_end(model, src: Path, warm: Path, tmp: Path, device: torch.device, batch: int, crf) -> dict:
    from segunify_core import SegmentOptions, segment_raster

    options = SegmentOptions(window=WINDOW, stride=STRIDE, batch_size=batch, flip=True, overwrite=True,
                             device=device.type)
    segment_raster(warm, tmp / "warm_out.tif", model, options, crf=crf)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    result = segment_raster(src, tmp / "out.tif", model, options, crf=crf)
    _sync(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"seconds": seconds, "windows": result.windows, "peak_gib": None if peak is None else round(peak, 2)}


def run(device: str = "cuda", side: int = FULL["side"], backbones: Sequence[str] = FULL["backbones"],
        matmul_n: int = FULL["matmul_n"], warm_side: int = FULL["warm_side"]) -> None:
    from segunify_core.files.model_file import load_model
    from segunify_core.method.backbone import choose_precision
    from segunify_core.method.crf import TorchDenseCRF

    dev = torch.device(device)
    precision = choose_precision("auto", dev)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu (dry run: figures mean nothing)"
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        src = generated_raster(tmp / "e2e.tif", side)
        warm = generated_raster(tmp / "warm.tif", warm_side)
        for backbone_name in backbones:
            path, weights = _model_file(backbone_name, tmp)
            model = load_model(path, backbone_weights=weights, precision=precision).to(dev).eval()
            backbone = model.attached_backbone
            batch, how = auto_batch_size(backbone, dev)
            share = backbone_share(backbone, dev, precision, batch, matmul_n)
            report(f"gpu_backbone_share_{backbone_name}", share.pop("share"), "fraction of matmul FLOP/s",
                   device=name, precision=precision, batch=batch, batch_choice=how, **share)
            for crf in (None, TorchDenseCRF()):
                figures = end_to_end(model, src, warm, tmp, dev, batch, crf)
                mpx_s = side * side / figures["seconds"] / 1e6
                crf_name = "crf_torch" if crf is not None else "no_crf"
                goal = dev.type == "cuda" and backbone_name == "dino_vits8" and crf is None
                report(f"gpu_end_to_end_{backbone_name}_{crf_name}", mpx_s, "megapixels/s",
                       **(dict(target=f">= {TARGET_MPX_S:g} on one H100", ok=mpx_s >= TARGET_MPX_S) if goal else {}),
                       device=name, precision=precision, batch=batch, flip=True, raster=side,
                       windows=figures["windows"], seconds=round(figures["seconds"], 2),
                       peak_gpu_memory_gib=figures["peak_gib"])
            del model, backbone
            if dev.type == "cuda":
                torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="on the CPU with tiny sizes (checks the code path)")
    args = parser.parse_args()
    if args.dry_run:
        run("cpu", **DRY_RUN)  # type: ignore[arg-type]
    else:
        run("cuda", **FULL)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
