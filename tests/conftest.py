"""Shared fixtures: small random-weight backbones, generated scenes, the real sample rasters."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

REPO = Path(__file__).resolve().parents[1]
TINY_VIT = "vit_tiny_patch16_224"  # a timm ViT name: 5.7M parameters, fast on CPU


def samples_dir() -> Path | None:
    env = os.environ.get("SEGUNIFY_SAMPLES")
    path = Path(env) if env else REPO.parent / "shared" / "samples"
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def samples() -> Path:
    path = samples_dir()
    if path is None:
        pytest.skip("sample rasters not found: set SEGUNIFY_SAMPLES or put them in ../shared/samples")
    return path


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A random-weight timm checkpoint (safetensors) of the tiny ViT, as a user would pass it."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model(TINY_VIT, pretrained=False, num_classes=0)
    path = tmp_path_factory.mktemp("weights") / "vit_tiny_random.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="session")
def tiny_backbone(tiny_weights):
    from segunify_core.backbone import create_backbone

    return create_backbone(TINY_VIT, tiny_weights)


def make_scene(size: int = 448, seed: int = 0, noise: float = 12.0) -> tuple[np.ndarray, np.ndarray]:
    """An RGB scene (3, H, W) uint8 of three large regions of distinct colour, and its labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((size, size), np.int64)
    labels[xx > size * 0.45] = 1
    labels[(yy > size * 0.58) & (xx < size * 0.67)] = 2
    colours = np.array([[200, 60, 50], [40, 150, 60], [60, 70, 200]], float)
    img = colours[labels].transpose(2, 0, 1) + rng.normal(0, noise, (3, size, size))
    return np.clip(img, 0, 255).astype(np.uint8), labels


def write_geotiff(path: Path, data: np.ndarray, crs: str | None = "EPSG:32618", gsd: float = 0.5,
                  **profile) -> Path:
    count, h, w = data.shape
    kwargs = dict(driver="GTiff", width=w, height=h, count=count, dtype=data.dtype.name)
    if crs:
        kwargs.update(crs=crs, transform=from_origin(500000, 4000000, gsd, gsd))
    kwargs.update(profile)
    with rasterio.open(path, "w", **kwargs) as ds:
        ds.write(data)
    return path


@pytest.fixture
def scene_tif(tmp_path) -> tuple[Path, np.ndarray]:
    img, labels = make_scene()
    return write_geotiff(tmp_path / "scene.tif", img), labels
