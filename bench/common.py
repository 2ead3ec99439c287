"""Helpers for the benchmark scripts: random-weight checkpoints, generated rasters, JSON lines."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def report(name: str, value: float, unit: str, target: str | None = None, ok: bool | None = None, **extra) -> None:
    line = {"name": name, "value": round(value, 4) if isinstance(value, float) else value, "unit": unit}
    if target is not None:
        line.update(target=target, ok=bool(ok))
    line.update(extra)
    print(json.dumps(line), flush=True)


def vit_flops(backbone, size: int) -> float:
    """FLOPs of one size x size window through the backbone (counted analytically; see run.py): every
    linear layer of the blocks (2 N in out: qkv, projection, MLP or SwiGLU), QK^T and AV (2 x 2 N^2 C
    per block), the patch embedding (2 N C 3 p^2)."""
    import torch

    n = (size // backbone.patch_size) ** 2 + backbone.num_prefix_tokens
    c = backbone.feature_dim
    blocks = backbone.model.blocks
    linear = sum(m.in_features * m.out_features for m in blocks.modules() if isinstance(m, torch.nn.Linear))
    return 2 * n * linear + len(blocks) * 4 * n * n * c + 2 * n * c * 3 * backbone.patch_size ** 2


def random_checkpoint(timm_name: str, folder: Path) -> Path:
    """timm-layout safetensors with random weights, standing in for downloaded weights."""
    import timm
    import torch
    from safetensors.torch import save_file

    path = folder / f"{timm_name.replace('.', '_')}_random.safetensors"
    if not path.exists():
        torch.manual_seed(0)
        model = timm.create_model(timm_name, pretrained=False, num_classes=0)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def blob_tile(size: int = 1024, seed: int = 0, cells: int = 40) -> np.ndarray:
    from segunify_core.synthetic import make_blobs

    return make_blobs(size, size, seed=seed, cells=cells)[0]


def generated_raster(path: Path, side: int, tile: np.ndarray | None = None, gsd: float = 0.5) -> Path:
    """A side x side RGB GeoTIFF written block by block from a repeated generated tile."""
    tile = blob_tile() if tile is None else tile
    t = tile.shape[1]
    profile = dict(driver="GTiff", width=side, height=side, count=3, dtype="uint8", crs="EPSG:32618",
                   transform=from_origin(500000, 4000000, gsd, gsd), tiled=True, blockxsize=512, blockysize=512,
                   compress="deflate", BIGTIFF="IF_SAFER")
    with rasterio.open(path, "w", **profile) as ds:
        for row in range(0, side, t):
            for col in range(0, side, t):
                h, w = min(t, side - row), min(t, side - col)
                ds.write(tile[:, :h, :w], window=Window(col, row, w, h))
    return path


def segment_in_child(model: Path, weights: Path, src: Path, dst: Path, *, precision: str | None = None,
                     flip: bool | None = None, warm: Path | None = None, repeat: int = 1) -> dict:
    """tile-segment `src` in a fresh process, as the CLI runs it: the best of `repeat` runs in seconds,
    the one-off start (`warm`, a small raster segmented first) and the process's own peak RSS."""
    job = {"model": str(model), "weights": str(weights), "src": str(src), "dst": str(dst), "precision": precision,
           "flip": flip, "warm": str(warm) if warm else None, "repeat": repeat}
    out = subprocess.run([sys.executable, __file__, "--segment-child", json.dumps(job)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _segment_child(job: dict) -> None:
    from segunify_core.files.model_file import load_model
    from segunify_core.job.segment import SegmentOptions, segment_raster
    from segunify_core.method.backbone import reuse_freed_memory

    reuse_freed_memory()  # as the CLI does
    precision = {"precision": job["precision"]} if job["precision"] else {}
    model = load_model(job["model"], backbone_weights=job["weights"], **precision)
    options = SegmentOptions(overwrite=True, **({} if job["flip"] is None else {"flip": job["flip"]}))
    warmup = 0.0
    if job["warm"]:
        start = time.perf_counter()
        segment_raster(job["warm"], str(Path(job["dst"]).with_suffix(".warm.tif")), model, options)
        warmup = time.perf_counter() - start
    seconds = float("inf")
    for _ in range(job["repeat"]):
        start = time.perf_counter()
        segment_raster(job["src"], job["dst"], model, options)
        seconds = min(seconds, time.perf_counter() - start)
    # VmHWM: this process's own peak (ru_maxrss would start from the parent's RSS at fork)
    peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
    print(json.dumps({"seconds": seconds, "warmup_seconds": warmup, "peak_rss_mb": peak / 1024}))


if __name__ == "__main__" and sys.argv[1:2] == ["--segment-child"]:
    _segment_child(json.loads(sys.argv[2]))
