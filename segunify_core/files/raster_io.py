"""Reading rasters as model input: band choice, palettes, masks, one global stretch per raster."""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.windows import Window

from ..errors import SegUnifyError, error_detail
from . import remote

IMAGE_SUFFIXES = {".tif", ".tiff", ".png", ".jpg", ".jpeg", ".jp2", ".vrt", ".img"}
STRETCH_PERCENTILES = (2.0, 98.0)
STATS_MAX_SIDE = 1024  # the stretch is estimated on a decimated read (overviews when present)


def open_raster(path: str | Path) -> rasterio.io.DatasetReader:
    """Open a raster for reading, with one clear sentence for each way that can fail. A URL
    (https://, s3://, /vsi...) is opened by GDAL with range requests, in `remote.gdal_env`."""
    if remote.is_url(str(path)):
        return _checked(_open_url(str(path)), str(path))
    path = Path(path)
    if not path.exists():
        raise SegUnifyError(f"Input '{path}' does not exist; check the path.")
    if path.is_dir():
        raise SegUnifyError(f"Input '{path}' is a folder; pass a raster file (for a folder use "
                            "`segunify batch`).")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            ds = rasterio.open(path)
    except RasterioIOError:
        raise SegUnifyError(f"Input '{path}' is not a raster GDAL can read; pass a GeoTIFF, PNG, "
                            "JPEG or another GDAL raster.") from None
    return _checked(ds, path)


def _open_url(url: str) -> rasterio.io.DatasetReader:
    try:
        with remote.gdal_env(), warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(remote.gdal_path(url))
    except RasterioIOError:
        raise remote.describe_open_failure(url) from None


def _checked(ds: rasterio.io.DatasetReader, path: str | Path) -> rasterio.io.DatasetReader:
    if ds.width < 2 or ds.height < 2 or ds.count < 1:
        ds.close()
        raise SegUnifyError(f"Input '{path}' is {ds.width} x {ds.height} px with {ds.count} bands; "
                            "SegUnify needs a raster of at least 2 x 2 px with one band.")
    if any(np.dtype(d).kind == "c" for d in ds.dtypes):
        ds.close()
        raise SegUnifyError(f"Input '{path}' holds complex values; convert it to a real-valued "
                            "image (e.g. amplitude) first.")
    return ds


def default_bands(ds: rasterio.io.DatasetReader) -> tuple[int, int, int]:
    """The first three non-alpha bands, or the single band repeated."""
    colour = [i + 1 for i, ci in enumerate(ds.colorinterp) if ci != ColorInterp.alpha]
    if len(colour) >= 3:
        return (colour[0], colour[1], colour[2])
    if len(colour) == 1:
        return (colour[0],) * 3
    raise SegUnifyError(f"Input '{ds.name}' has {len(colour)} image bands; choose three "
                        "bands (--bands), e.g. 1,2,2, or one, e.g. 1.")


def parse_bands(text: str | Sequence[int] | None) -> tuple[int, ...] | None:
    if text is None or text == "":
        return None
    if isinstance(text, str):
        try:
            values = tuple(int(v) for v in text.replace(" ", "").split(",") if v)
        except ValueError:
            raise SegUnifyError(f"Bands (--bands) '{text}' is not a list of band numbers; write e.g. "
                                "1,2,3.") from None
    else:
        values = tuple(int(v) for v in text)
    if not values:
        raise SegUnifyError("No band selected; choose one or three bands (--bands), e.g. 1,2,3.")
    return values


def choose_bands(ds: rasterio.io.DatasetReader, bands: Sequence[int] | None) -> tuple[int, int, int]:
    if bands is None:
        return default_bands(ds)
    bands = tuple(bands)
    if len(bands) not in (1, 3):
        raise SegUnifyError(f"{len(bands)} bands selected; choose one band (repeated as grey) or three "
                            "in bands (--bands), e.g. 1,2,3.")
    for b in bands:
        if not 1 <= b <= ds.count:
            raise SegUnifyError(f"Band {b} is out of range: '{ds.name}' has bands 1..{ds.count}; "
                                "fix the bands (--bands).")
    return (bands[0],) * 3 if len(bands) == 1 else (bands[0], bands[1], bands[2])


@dataclasses.dataclass(frozen=True)
class RasterStats:
    """A raster's one global stretch and fill colour, per selected band (computed once, shipped
    with every part of the raster so that all parts read it identically)."""

    low: tuple[float, ...]
    high: tuple[float, ...]
    fill: tuple[float, ...]


@dataclasses.dataclass
class RasterReader:
    """Reads windows of one raster as uint8-range RGB plus a validity mask.

    Palette rasters are expanded through their colour table; non-8-bit data is scaled by one
    percentile stretch computed once for the whole raster, so every window sees the same mapping.
    """

    ds: rasterio.io.DatasetReader
    bands: tuple[int, int, int]
    low: np.ndarray  # per selected band, value mapped to 0
    high: np.ndarray  # per selected band, value mapped to 255
    palette: np.ndarray | None = None  # (256, 3) lookup for palette rasters
    fill: np.ndarray = dataclasses.field(default_factory=lambda: np.full(3, 127.5))  # band means

    @classmethod
    def open(cls, path: str | Path, bands: Sequence[int] | None = None,
             stats: RasterStats | None = None) -> RasterReader:
        """Open a raster; its stretch is computed here unless `stats` (from `stats()`) are given."""
        ds = open_raster(path)
        try:
            palette = None
            if ds.colorinterp[0] == ColorInterp.palette and ds.dtypes[0] == "uint8" and bands is None:
                cmap = ds.colormap(1)
                palette = np.zeros((256, 3), np.uint8)
                for value, rgba in cmap.items():
                    palette[value] = rgba[:3]
                chosen: tuple[int, int, int] = (1, 1, 1)
            else:
                chosen = choose_bands(ds, bands)
            reader = cls(ds, chosen, np.zeros(3), np.full(3, 255.0), palette)
            if stats is None:
                reader._statistics()
            else:
                reader.low, reader.high = np.array(stats.low, float), np.array(stats.high, float)
                reader.fill = np.array(stats.fill, float)
            return reader
        except Exception:
            ds.close()
            raise

    def close(self) -> None:
        self.ds.close()

    def stats(self) -> RasterStats:
        return RasterStats(tuple(map(float, self.low)), tuple(map(float, self.high)), tuple(map(float, self.fill)))

    def __enter__(self) -> RasterReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def width(self) -> int:
        return self.ds.width

    @property
    def gsd(self) -> float | None:
        """Ground sampling distance in metres (None when the CRS does not say)."""
        return ground_sampling_distance(self.ds)

    @property
    def height(self) -> int:
        return self.ds.height

    @property
    def is_8bit(self) -> bool:
        return self.palette is not None or all(self.ds.dtypes[b - 1] == "uint8" for b in self.bands)

    def _statistics(self) -> None:
        """One global stretch (non-8-bit data) and the band means used to fill invalid pixels,
        from a decimated read of the whole raster."""
        scale = max(1.0, max(self.ds.width, self.ds.height) / STATS_MAX_SIDE)
        shape = (max(1, round(self.ds.height / scale)), max(1, round(self.ds.width / scale)))
        window = Window(0, 0, self.ds.width, self.ds.height)
        if not self.is_8bit:
            unique = sorted(set(self.bands))
            try:
                data = self.ds.read(unique, out_shape=(len(unique), *shape), resampling=Resampling.nearest)
                mask = self.ds.dataset_mask(out_shape=shape, resampling=Resampling.nearest) > 0
            except RasterioIOError:
                raise SegUnifyError(f"Input '{self.ds.name}' could not be read; the file is damaged or "
                                    "truncated: copy or export it again.") from None
            for i, band in enumerate(self.bands):
                values = data[unique.index(band)][mask].astype(np.float64)
                values = values[np.isfinite(values)]
                if values.size == 0:
                    break
                lo, hi = np.percentile(values, STRETCH_PERCENTILES)
                self.low[i], self.high[i] = lo, (hi if hi > lo else lo + 1.0)
        rgb, valid = self.read(window, out_shape=shape, resampling=Resampling.nearest)
        if not valid.any():
            raise SegUnifyError(f"Input '{self.ds.name}' has no valid pixels (all nodata); check its "
                                "nodata value and mask.")
        self.fill = rgb[:, valid].mean(axis=1)

    def read(self, window: Window, out_shape: tuple[int, int] | None = None,
             resampling: Resampling = Resampling.bilinear) -> tuple[np.ndarray, np.ndarray]:
        """RGB float32 (3, h, w) in 0..255 and a bool validity mask (h, w) for a window.

        The window may extend beyond the raster: outside pixels are invalid.
        """
        try:
            return self._read(window, out_shape, resampling)
        except RasterioIOError as exc:
            raise SegUnifyError(f"Input '{self.ds.name}' could not be read{error_detail(exc)}; the file is damaged "
                                "or truncated: copy or export it again.") from None

    def valid_mask(self, window: Window) -> np.ndarray:
        """Validity (nodata, alpha, internal masks) of a window inside the raster."""
        try:
            return self.ds.dataset_mask(window=window) > 0
        except RasterioIOError:
            raise SegUnifyError(f"Input '{self.ds.name}' could not be read; the file is damaged or truncated: "
                                "copy or export it again.") from None

    def _read(self, window: Window, out_shape: tuple[int, int] | None,
              resampling: Resampling) -> tuple[np.ndarray, np.ndarray]:
        shape = out_shape or (int(window.height), int(window.width))
        unique = sorted(set(self.bands))
        outside = (window.col_off < 0 or window.row_off < 0 or window.col_off + window.width > self.width
                   or window.row_off + window.height > self.height)
        data = self.ds.read(unique, window=window, out_shape=(len(unique), *shape),
                            resampling=resampling, boundless=outside, fill_value=0)
        mask = self.ds.dataset_mask(window=window, out_shape=shape, resampling=Resampling.nearest,
                                    boundless=outside) > 0
        if self.palette is not None:
            rgb = self.palette[data[0]].transpose(2, 0, 1).astype(np.float32)
        else:
            rgb = np.stack([data[unique.index(b)] for b in self.bands]).astype(np.float32)
            if not self.is_8bit:
                finite = np.isfinite(rgb).all(axis=0)
                mask &= finite
                rgb = np.nan_to_num(rgb, nan=0.0, posinf=0.0, neginf=0.0)
                rgb = (rgb - self.low[:, None, None]) / (self.high - self.low)[:, None, None] * 255.0
                np.clip(rgb, 0.0, 255.0, out=rgb)
        return rgb, mask


def ground_sampling_distance(ds: rasterio.io.DatasetReader) -> float | None:
    """Pixel size in metres (mean of x and y), or None for rasters without a usable transform."""
    transform = ds.transform
    if transform.is_identity or ds.crs is None:
        return None
    px = math.hypot(transform.a, transform.d)
    py = math.hypot(transform.b, transform.e)
    crs = ds.crs
    if crs.is_geographic:
        lat = (ds.bounds.top + ds.bounds.bottom) / 2.0
        metres_per_degree = 111_320.0
        px *= metres_per_degree * math.cos(math.radians(lat))
        py *= metres_per_degree
    else:
        try:
            px *= crs.linear_units_factor[1]
            py *= crs.linear_units_factor[1]
        except Exception:
            pass
    return float((px + py) / 2.0)


def list_images(paths: Sequence[str | Path]) -> list[remote.Location]:
    """Expand folders (recursively) and s3:// prefixes into image files, and text files (.txt) into
    the rasters they list, one path or URL a line; keep files and URLs as given."""
    found: list[remote.Location] = []
    for given in paths:
        if remote.is_url(str(given)):
            found.extend(list_prefix(str(given)))
            continue
        entry = Path(given)
        if entry.is_file() and entry.suffix.lower() == ".txt":
            found.extend(remote.location(line) for line in read_list(entry))
        elif entry.is_dir():
            found.extend(sorted(p for p in entry.rglob("*")
                                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        elif entry.is_file():
            found.append(entry)
        else:
            raise SegUnifyError(f"Training data '{entry}' does not exist; pass folders or image files.")
    return found


def list_prefix(url: str) -> list[remote.Location]:
    """An s3:// URL that names a prefix (ends in / or has no image suffix): the rasters under it;
    any other URL: itself."""
    if remote.is_object_store(url) and (url.endswith("/") or Path(url).suffix.lower() not in IMAGE_SUFFIXES):
        found = remote.list_objects(url, IMAGE_SUFFIXES)
        if not found:
            raise SegUnifyError(f"No rasters under '{url}'; it must hold GeoTIFF/PNG/JPEG objects.")
        return list(found)
    return [url]


def read_list(path: Path) -> list[str]:
    """The paths or URLs of a list file: one a line; blank lines and # comments are skipped."""
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]
