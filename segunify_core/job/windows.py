"""Windows in source and model pixels: where the window lattice lies on a raster, how source pixels
map to model pixels and back, and reading one planned window as a model-ready RGB array.

Units are in the names: `_px` sizes in model pixels unless named `src_`; a `Tile` is in source
pixels (the raster's own grid)."""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F
from affine import Affine
from rasterio.windows import Window

from ..files.raster_io import RasterReader, ground_sampling_distance
from .tiling import Tile, WindowPlan

log = logging.getLogger("segunify")
GSD_TOLERANCE = 0.05  # relative GSD difference below which the input is used at native resolution
MAX_RESAMPLING = 8.0  # beyond this GSD ratio the model is out of its depth anyway: stay native


def grid_phase(transform: Affine) -> tuple[int, int]:
    """Global pixel indices of the raster's first column and row on its CRS pixel lattice (0, 0
    without a north-up transform): windows are laid on this lattice, not on the raster's corner."""
    if transform.is_identity or transform.b or transform.d or not transform.a or not transform.e:
        return 0, 0
    return round(transform.c / transform.a), round(transform.f / transform.e)


def choose_scale(reader: RasterReader, model_gsd: float | None, native: bool) -> float:
    """Source pixels per model pixel: resample to the model's GSD unless asked not to."""
    if native or not model_gsd:
        return 1.0
    gsd = ground_sampling_distance(reader.ds)
    if not gsd:
        return 1.0
    scale = model_gsd / gsd
    if not 1 / MAX_RESAMPLING <= scale <= MAX_RESAMPLING:
        log.warning("The input's pixels (%.3g m) and the model's (%.3g m) differ more than %gx; segmenting "
                    "at native resolution (a model trained near this GSD will do better).",
                    gsd, model_gsd, MAX_RESAMPLING)
        return 1.0
    return 1.0 if abs(scale - 1.0) < GSD_TOLERANCE else scale


def source_window_plan(reader: RasterReader, model_window: int, model_stride: int, scale: float,
                       patch: int) -> WindowPlan:
    """The plan of source-pixel windows that become `model_window`-px model inputs at `scale`."""
    src_window = max(patch, round(model_window * scale))
    src_stride = max(1, min(src_window, round(model_stride * scale)))
    col_phase, row_phase = grid_phase(reader.ds.transform)
    return WindowPlan(reader.width, reader.height, src_window, src_stride, col_phase, row_phase)


class TileSource:
    """Reads plan tiles as model-ready windows (resampled, padded, invalid pixels filled)."""

    def __init__(self, reader: RasterReader, plan: WindowPlan, model_window: int, scale: float, patch: int):
        self.reader, self.plan, self.scale, self.patch = reader, plan, scale, patch
        self.model_window = model_window

    def model_shape_px(self, tile: Tile) -> tuple[int, int]:
        """(height, width) in model pixels of a tile given in source pixels."""
        if self.scale == 1.0:
            return tile.height, tile.width
        if tile.height == self.plan.window and tile.width == self.plan.window:
            return self.model_window, self.model_window
        return max(1, round(tile.height / self.scale)), max(1, round(tile.width / self.scale))

    def model_input_px(self, tile: Tile) -> int:
        """Side S in model pixels of the square model input: a patch multiple >= the model window."""
        return max(self.model_window, math.ceil(max(self.model_shape_px(tile)) / self.patch) * self.patch)

    def read(self, tile: Tile) -> tuple[np.ndarray, np.ndarray]:
        """RGB (3, S, S) 0..255 (S = model_input_px), and validity (h, w) of the unpadded
        model-resolution window."""
        shape = self.model_shape_px(tile)
        rgb, valid = self.reader.read(Window(tile.col_off, tile.row_off, tile.width, tile.height), shape)
        rgb = np.where(valid[None], rgb, self.reader.fill[:, None, None].astype(np.float32))
        size = self.model_input_px(tile)
        ph, pw = size - shape[0], size - shape[1]
        if ph or pw:  # small rasters: reflect-pad to a whole window; padding is cut off afterwards
            rgb = np.pad(rgb, ((0, 0), (0, ph), (0, pw)), mode="reflect" if min(shape) > 1 else "edge")
        return np.ascontiguousarray(rgb, dtype=np.float32), valid

    def to_source_px(self, tile: Tile, model_values: torch.Tensor) -> np.ndarray:
        """Per-pixel values (C, S, S) computed on `read`'s model input back on the tile's source
        pixels (C, tile.height, tile.width): the padding cut off, then resampled bilinearly when
        the model's pixels are not the source's."""
        mh, mw = self.model_shape_px(tile)
        values = model_values[None, :, :mh, :mw]
        if (mh, mw) != (tile.height, tile.width):
            values = F.interpolate(values, size=(tile.height, tile.width), mode="bilinear", align_corners=False)
        return values[0].float().cpu().numpy()
