"""Generated scenes with known labels: regions of three distinct colours plus noise, and writing
them as GeoTIFFs. The test suite and the benchmarks use them where real imagery with labels is
not at hand (and where a scene of any size is wanted)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.transform import from_origin

from .files.atomic import atomic_path

COLOURS = np.array([[200, 60, 50], [40, 150, 60], [60, 70, 200]], float)  # one per label 0, 1, 2


def _render(labels: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    """uint8 RGB (3, H, W) of a label map: each label's colour plus Gaussian noise."""
    img = COLOURS[labels].transpose(2, 0, 1) + rng.normal(0, noise, (3, *labels.shape))
    return np.clip(img, 0, 255).astype(np.uint8)


def make_scene(size: int = 448, seed: int = 0, noise: float = 12.0) -> tuple[np.ndarray, np.ndarray]:
    """An RGB scene (3, H, W) uint8 of three large regions of distinct colour, and its labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((size, size), np.int64)
    labels[xx > size * 0.45] = 1
    labels[(yy > size * 0.58) & (xx < size * 0.67)] = 2
    return _render(labels, rng, noise), labels


def make_blobs(width: int, height: int, seed: int = 0, cells: int = 24,
               noise: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
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
    return _render(classes[nearest], rng, noise), classes[nearest]


def write_geotiff(path: str | Path, data: np.ndarray, crs: str | None = "EPSG:32618", gsd: float = 0.5,
                  offset: tuple[int, int] = (0, 0), **profile: Any) -> Path:
    """A GeoTIFF in UTM 18N; `offset` (row, col) places it as a crop of a larger raster."""
    path = Path(path)
    count, h, w = data.shape
    kwargs: dict[str, Any] = dict(driver="GTiff", width=w, height=h, count=count, dtype=data.dtype.name)
    if crs:
        kwargs.update(crs=crs, transform=from_origin(500000 + offset[1] * gsd, 4000000 - offset[0] * gsd, gsd, gsd))
    kwargs.update(profile)
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **kwargs) as ds:
        ds.write(data)
    return path
