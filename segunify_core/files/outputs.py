"""Writing output rasters: the GeoTIFF profile of class and probability rasters, how probabilities
are stored, the COG conversion, the read-back check, and the legend's sidecars beside a class raster
(QGIS style, GDAL category names; their text is `method.legend`'s). The preview PNG is `preview.py`'s."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio

from .atomic import atomic_path, write_text_atomic
from .remote import Location, is_object_store, name_of, parent_of, with_suffix

if TYPE_CHECKING:
    from ..method.legend import Legend

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


def copy_raster(src: str | Path, dst: Location, cog: bool, nbits: int | None = None) -> None:
    """Copy a raster (a VRT of parts) to a tiled GeoTIFF or a COG at `dst`, atomically, read back
    (an s3:// `dst`: written locally, read back, then streamed to the bucket as one object)."""
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


def pam_path(raster: Location) -> Location:
    if is_object_store(raster):
        return f"{parent_of(raster)}/{name_of(raster)}.aux.xml"
    raster = Path(raster)
    return raster.with_name(raster.name + ".aux.xml")


def write_class_style(raster: Location, legend: Legend) -> None:
    """The legend beside a class raster: `<name>.qml` for QGIS and `<name>.tif.aux.xml` (category
    names and attribute table) for GDAL, which reads that sidecar with the GeoTIFF."""
    raster = raster if is_object_store(raster) else Path(raster)
    write_text_atomic(with_suffix(raster, ".qml"), legend.qml())
    write_text_atomic(pam_path(raster), legend.pam_xml())


def raster_class_names(raster: str | Path) -> dict[int, str]:
    """Class names of a class raster by pixel value, from GDAL's category names in its PAM sidecar
    (written by `write_class_style`); empty when it has none."""
    path = Path(pam_path(Path(raster)))
    if not path.is_file():
        return {}
    try:
        band = ET.parse(path).getroot().find("PAMRasterBand[@band='1']")
    except ET.ParseError:
        return {}
    categories = band.find("CategoryNames") if band is not None else None
    if categories is None:
        return {}
    return {value: category.text for value, category in enumerate(categories) if value > 0 and category.text}
