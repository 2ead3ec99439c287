"""Shared fixtures: small random-weight backbones, generated scenes, the real sample rasters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

REPO = Path(__file__).resolve().parents[1]
TINY_VIT = "vit_tiny_patch16_224"  # a timm ViT name: 5.7M parameters, fast on CPU


from tests.helpers import samples, samples_dir  # noqa: E402,F401 - the fixture is shared with tests/qgis


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
                  offset: tuple[int, int] = (0, 0), **profile) -> Path:
    """A GeoTIFF in UTM 18N; `offset` (row, col) places it as a crop of a larger raster."""
    count, h, w = data.shape
    kwargs = dict(driver="GTiff", width=w, height=h, count=count, dtype=data.dtype.name)
    if crs:
        kwargs.update(crs=crs, transform=from_origin(500000 + offset[1] * gsd, 4000000 - offset[0] * gsd, gsd, gsd))
    kwargs.update(profile)
    with rasterio.open(path, "w", **kwargs) as ds:
        ds.write(data)
    return path


@pytest.fixture
def scene_tif(tmp_path) -> tuple[Path, np.ndarray]:
    img, labels = make_scene()
    return write_geotiff(tmp_path / "scene.tif", img), labels


def make_blobs(width: int, height: int, seed: int = 0, cells: int = 24, noise: float = 10.0):
    """A scene of Voronoi regions, each one of three colours plus noise, and its labels."""
    rng = np.random.default_rng(seed)
    points = rng.uniform(0, 1, (cells, 2)) * [height, width]
    classes = rng.integers(0, 3, cells)
    yy, xx = np.mgrid[:height, :width]
    nearest = np.zeros((height, width), np.int64)
    best = np.full((height, width), np.inf)
    for i, (py, px) in enumerate(points):
        d = (yy - py) ** 2 + (xx - px) ** 2
        closer = d < best
        nearest[closer], best[closer] = i, d[closer]
    labels = classes[nearest]
    colours = np.array([[200, 60, 50], [40, 150, 60], [60, 70, 200]], float)
    img = colours[labels].transpose(2, 0, 1) + rng.normal(0, noise, (3, height, width))
    return np.clip(img, 0, 255).astype(np.uint8), labels


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, tiny_backbone):
    """A 3-class model of the tiny ViT trained on a generated scene (GSD 0.5 m)."""
    from segunify_core.model import load_model
    from segunify_core.training import TrainConfig, train

    folder = tmp_path_factory.mktemp("model")
    img, _ = make_blobs(640, 640, seed=1)
    tif = write_geotiff(folder / "train.tif", img)
    path = folder / "tiny.safetensors"
    train([tif], path, TrainConfig(classes=3, steps=150, batch_size=16, max_windows=48, window=224, seed=0),
          backbone=tiny_backbone, cache_dir=folder / "cache")
    load_model(path, backbone=tiny_backbone)
    return path
