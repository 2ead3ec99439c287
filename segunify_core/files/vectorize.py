"""Class raster -> GeoPackage polygons: sieve, polygonise block by block, dissolve across blocks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio import features
from rasterio.windows import Window

from .. import settings
from ..errors import SegUnifyError, write_failure
from .atomic import atomic_path
from .outputs import raster_class_names

BLOCK = 4096
HALO = 64  # context read around each block so sieving sees regions that cross block edges


def vectorize(classes_path: str | Path, output_path: str | Path, min_area: float = settings.MIN_AREA,
              simplify: float = settings.SIMPLIFY, overwrite: bool = False, block: int = BLOCK) -> dict:
    """Write polygons with `class_id`, `class_name` (the raster's GDAL category names, else "class
    i") and `area_m2` (or pixel units without a CRS) to a GeoPackage."""
    import geopandas as gpd
    import shapely
    from shapely.geometry import box, shape

    classes_path, output_path = Path(classes_path), Path(output_path)
    if output_path.exists() and not overwrite:
        raise SegUnifyError(f"Output '{output_path}' already exists; choose another output or allow replacing it (--overwrite).")
    if not classes_path.is_file():
        raise SegUnifyError(f"Class raster '{classes_path}' does not exist; check the path.")
    try:
        ds = rasterio.open(classes_path)
    except rasterio.errors.RasterioIOError:
        raise SegUnifyError(f"'{classes_path}' is not a raster; pass a class raster written by "
                            "`segunify tile-segment`.") from None
    with ds:
        if ds.dtypes[0] not in ("uint8", "uint16", "int16", "int32"):
            raise SegUnifyError(f"'{classes_path}' has {ds.dtypes[0]} pixels; a class raster must be "
                                "uint8, uint16, int16 or int32.")
        pixel_area = abs(ds.transform.a * ds.transform.e - ds.transform.b * ds.transform.d)
        min_pixels = int(np.ceil(min_area / pixel_area)) if min_area > 0 else 0
        inner: list[tuple[int, object]] = []
        edge: dict[int, list] = {}
        for row in range(0, ds.height, block):
            for col in range(0, ds.width, block):
                h, w = min(block, ds.height - row), min(block, ds.width - col)
                r0, c0 = max(0, row - HALO), max(0, col - HALO)
                r1, c1 = min(ds.height, row + h + HALO), min(ds.width, col + w + HALO)
                data = ds.read(1, window=Window(c0, r0, c1 - c0, r1 - r0))
                if min_pixels > 1:
                    data = features.sieve(data, size=min_pixels, mask=data > 0, connectivity=4)
                data = np.ascontiguousarray(data[row - r0:row - r0 + h, col - c0:col - c0 + w])
                transform = ds.window_transform(Window(col, row, w, h))
                bounds = box(*rasterio.windows.bounds(Window(col, row, w, h), ds.transform))
                interior = bounds.buffer(-abs(ds.transform.a) / 2)
                for geom, value in features.shapes(data, mask=data > 0, transform=transform, connectivity=4):
                    poly = shape(geom)
                    touches_block_edge = not interior.contains(poly) and (
                        row > 0 or col > 0 or row + h < ds.height or col + w < ds.width)
                    if touches_block_edge:
                        edge.setdefault(int(value), []).append(poly)
                    else:
                        inner.append((int(value), poly))
        for value, polys in edge.items():
            merged = shapely.union_all(polys)
            inner.extend((value, part) for part in getattr(merged, "geoms", [merged]))
        crs = ds.crs
    names = raster_class_names(classes_path)
    frame = gpd.GeoDataFrame({"class_id": [v for v, _ in inner],
                              "class_name": [names.get(v, f"class {v}") for v, _ in inner]},
                             geometry=[g for _, g in inner], crs=crs)
    if simplify > 0:
        frame["geometry"] = frame.geometry.simplify(simplify, preserve_topology=True)
    if crs is not None and crs.is_geographic:
        frame["area_m2"] = frame.to_crs(frame.estimate_utm_crs()).area
    else:
        frame["area_m2"] = frame.area
    with atomic_path(output_path, empty=True) as tmp:  # GeoPackage refuses an existing file
        try:
            frame.to_file(tmp, driver="GPKG", layer="classes")
        except (OSError, RuntimeError, ValueError) as exc:  # pyogrio reports a full disk as DataSourceError
            raise write_failure(output_path, exc) from None
    return {"polygons": len(frame), "area": float(frame["area_m2"].sum()), "min_pixels": min_pixels}
