"""Helpers for the benchmark scripts: random-weight checkpoints, generated rasters, JSON lines."""

from __future__ import annotations

import json
import sys
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
