"""Writing output rasters: the GeoTIFF profile of class and probability rasters, how probabilities
are stored, the COG conversion and the read-back check. (The class legend, its colour table, QGIS
style and GDAL category names, is `legend.py`'s; the preview PNG is `preview.py`'s.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from .atomic import atomic_path

BLOCK = 512  # tile side of written GeoTIFFs


def creation_options(width: int, height: int, n_bands: int, dtype: str, nbits: int | None = None,
                     block: int = BLOCK) -> dict[str, Any]:
    """GTiff creation options: tiled and deflated; rasters smaller than a tile are stored in strips."""
    options: dict[str, Any] = {"driver": "GTiff", "compress": "deflate", "BIGTIFF": "IF_SAFER"}
    if width >= block and height >= block:
        options.update(tiled=True, blockxsize=block, blockysize=block)
    if nbits:
        options["NBITS"] = nbits
    return options


def probability_storage(dtype: str) -> tuple[str, int | None]:
    """(GDAL data type, NBITS) of the probability raster: half floats are Float32 with NBITS=16."""
    return ("uint8", None) if dtype == "uint8" else ("float32", 16)


def encode_probabilities(probs: np.ndarray, valid: np.ndarray, dtype: str) -> np.ndarray:
    """Probabilities (K, h, w) as stored: 0..255 for uint8, else float32; 0 where invalid."""
    data = np.round(probs * 255).astype(np.uint8) if dtype == "uint8" else probs.astype(np.float32)
    data[:, ~valid] = 0
    return data


def read_back(path: Path) -> None:
    """Read every block of a closed output. GDAL flushes cached blocks at close and reports a failed
    flush (full disk, quota) only on stderr, so a truncated file would otherwise pass as finished."""
    with rasterio.open(path) as ds:
        for _, window in ds.block_windows(1):
            ds.read(window=window)


def copy_raster(src: str | Path, dst: Path, cog: bool, nbits: int | None = None) -> None:
    """Copy a raster (a VRT of parts) to a tiled GeoTIFF or a COG at `dst`, atomically, read back."""
    from rasterio.shutil import copy

    with rasterio.open(src) as ds:
        width, height, count, dtype = ds.width, ds.height, ds.count, ds.dtypes[0]
    if cog:
        options: dict[str, Any] = {"driver": "COG", "COMPRESS": "DEFLATE", "BIGTIFF": "IF_SAFER",
                                   "OVERVIEW_RESAMPLING": "MODE" if count == 1 and dtype == "uint8" else "AVERAGE"}
        if nbits:
            options["NBITS"] = nbits
    else:
        options = {k.upper(): ("YES" if v is True else v)
                   for k, v in creation_options(width, height, count, dtype, nbits).items()}
        options["driver"] = options.pop("DRIVER")
    with atomic_path(dst) as tmp:
        copy(str(src), str(tmp), **options)
        read_back(tmp)
