"""Planning a segmentation job: rasters in, a deterministic list of parts out.

A part is a rectangle of one raster's output pixels, bounded by window-lattice offsets, plus
everything needed to compute it anywhere (the raster's window geometry and its one global
stretch). Its windows are all windows of the raster's plan that touch the rectangle: the ones
across its edges are its halo, computed again by the neighbouring part. Parts serialise to
JSON, so a plan can be stored, resumed and run by any engine. Planning reads only raster
headers and one decimated read per raster; it never runs the model.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import settings
from ..files.raster_io import RasterReader, RasterStats
from .tiling import Tile, WindowPlan
from .windows import choose_scale, source_window_plan

log = logging.getLogger("segunify")
DEFAULT_BLOCK = settings.BLOCK  # source px per part side


@dataclasses.dataclass(frozen=True)
class RasterJob:
    """One input raster of a job: where it goes, and how its windows lie."""

    index: int
    input: str
    output: str
    probabilities: str | None
    width: int
    height: int
    src_window: int  # source px: model_window model px resampled at `scale`
    src_stride: int  # source px
    col_phase: int
    row_phase: int
    scale: float  # source px per model px
    model_window: int  # model px
    patch: int
    bands: tuple[int, ...] | None  # as the user chose them (None: the raster's default choice)
    stats: RasterStats

    def window_plan(self) -> WindowPlan:
        return WindowPlan(self.width, self.height, self.src_window, self.src_stride, self.col_phase, self.row_phase)


@dataclasses.dataclass(frozen=True)
class Part:
    """Output pixels rows [row0, row1) x columns [col0, col1) of one raster."""

    id: str
    raster: RasterJob
    row0: int
    row1: int
    col0: int
    col1: int

    @property
    def width(self) -> int:
        return self.col1 - self.col0

    @property
    def height(self) -> int:
        return self.row1 - self.row0

    def tiles(self) -> list[Tile]:
        """The plan's windows that touch this part, in row-major order (halo included)."""
        return [t for t in self.raster.window_plan().tiles()
                if t.row_off < self.row1 and t.row_off + t.height > self.row0
                and t.col_off < self.col1 and t.col_off + t.width > self.col0]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Part:
        raster = dict(data["raster"])
        raster["stats"] = RasterStats(**{k: tuple(v) for k, v in raster["stats"].items()})
        raster["bands"] = tuple(raster["bands"]) if raster["bands"] is not None else None
        return cls(**{**data, "raster": RasterJob(**raster)})


@dataclasses.dataclass(frozen=True)
class Geometry:
    """What planning needs from the model: its window, stride, patch and training GSD."""

    model_window: int  # model px (the window setting)
    model_stride: int  # model px
    patch: int
    model_gsd: float | None
    native_resolution: bool = False


def _cuts(offsets: list[int], length: int, per_block: int) -> list[int]:
    """Block boundaries along one axis: every `per_block`-th window offset, then the raster's end."""
    cuts = offsets[::per_block]
    return [*cuts, length] if cuts[-1] != length else cuts


def raster_parts(raster: RasterJob, block: int) -> list[Part]:
    """Blocks of about `block` source px per side on the window lattice, row-major."""
    plan = raster.window_plan()
    per_block = max(1, round(block / plan.stride))
    rows = _cuts(plan.row_offsets, raster.height, per_block)
    cols = _cuts(plan.col_offsets, raster.width, per_block)
    return [Part(f"{raster.index:05d}-r{r0}-c{c0}", raster, r0, r1, c0, c1)
            for r0, r1 in zip(rows, rows[1:], strict=False) for c0, c1 in zip(cols, cols[1:], strict=False)]


def plan_raster(index: int, input_path: str | Path, output: str | Path, geometry: Geometry,
                bands: Sequence[int] | None, probabilities: str | Path | None = None) -> RasterJob:
    """Open one raster, settle its window geometry and its global stretch."""
    with RasterReader.open(input_path, bands) as reader:
        if reader.ds.crs is None:
            log.warning("'%s' has no CRS: the output keeps its pixel grid without georeferencing.", input_path)
        scale = choose_scale(reader, geometry.model_gsd, geometry.native_resolution)
        plan = source_window_plan(reader, geometry.model_window, geometry.model_stride, scale, geometry.patch)
        return RasterJob(index, str(input_path), str(output), str(probabilities) if probabilities else None,
                         reader.width, reader.height, plan.window, plan.stride, plan.col_phase, plan.row_phase,
                         scale, geometry.model_window, geometry.patch, tuple(bands) if bands else None,
                         reader.stats())


def plan(inputs: Sequence[str | Path], outputs: Sequence[str | Path], geometry: Geometry,
         bands: Sequence[int] | None = None, probabilities: Sequence[str | Path | None] | None = None,
         block: int = DEFAULT_BLOCK) -> list[Part]:
    """The job's parts: each raster cut into blocks (one part when it is smaller than a block)."""
    probabilities = probabilities or [None] * len(inputs)
    parts: list[Part] = []
    for index, (src, dst, prob) in enumerate(zip(inputs, outputs, probabilities, strict=True)):
        parts.extend(raster_parts(plan_raster(index, src, dst, geometry, bands, prob), block))
    return parts


def parts_to_json(parts: Sequence[Part]) -> str:
    return json.dumps([p.to_dict() for p in parts], indent=1)


def parts_from_json(text: str) -> list[Part]:
    return [Part.from_dict(d) for d in json.loads(text)]
