"""Window planning and blending weights for seamless tiled inference."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np


def axis_offsets(length: int, window: int, stride: int, phase: int = 0) -> list[int]:
    """Window starts along one axis: every `stride` on a lattice shifted by `-phase`, the first and
    last snapped inside the raster (0 and `length - window`) so no window leaves it; a single
    window at 0 when the raster is shorter than one window.

    The phase anchors the lattice to the georeferenced pixel grid, so a crop of a raster gets the
    same interior windows as the raster itself and labels do not depend on the extent.
    """
    if window <= 0 or stride <= 0:
        raise ValueError("window and stride must be positive")
    if length <= window:
        return [0]
    phase %= stride
    first = 0 if phase == 0 else stride - phase
    offsets = [0] + list(range(first, length - window + 1, stride))
    if offsets[-1] != length - window:
        offsets.append(length - window)
    return sorted(set(offsets))


def _ramp(t: np.ndarray) -> np.ndarray:
    """0 -> 1 over t in [0, 1] with zero slope at both ends (sin^2): two ramps crossing an overlap
    sum to 1 and the blend has no kink where a window starts."""
    return np.sin(np.clip(t, 0, 1) * np.pi / 2) ** 2


def axis_taper(offsets: list[int], index: int, window: int, length: int) -> np.ndarray:
    """1-D weights of one window: a smooth ramp across the overlap on each side that has a
    neighbour, 1 elsewhere (no taper at the raster border). Always > 0."""
    size = min(window, length)
    w = np.ones(size, np.float32)
    x = np.arange(size, dtype=np.float32) + 0.5
    start = offsets[index]
    if index > 0:
        overlap = offsets[index - 1] + window - start
        if overlap > 0:
            w = np.minimum(w, _ramp(x / overlap))
    if index < len(offsets) - 1:
        overlap = start + window - offsets[index + 1]
        if overlap > 0:
            w = np.minimum(w, _ramp((size - x) / overlap))
    return w


@dataclasses.dataclass(frozen=True)
class Tile:
    row: int  # index of the window row
    col: int
    row_off: int
    col_off: int
    height: int  # inside the raster (smaller than the window only for small rasters)
    width: int


@dataclasses.dataclass(frozen=True)
class WindowPlan:
    """Windows of `window` px every `stride` px over a width x height raster, all in the raster's
    own (source) pixels."""

    width: int
    height: int
    window: int
    stride: int
    col_phase: int = 0  # global pixel index of column 0 (mod stride); see axis_offsets
    row_phase: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.stride <= self.window:
            raise ValueError(f"stride must be in 1..window ({self.window}), got {self.stride}")

    @property
    def row_offsets(self) -> list[int]:
        return axis_offsets(self.height, self.window, self.stride, self.row_phase)

    @property
    def col_offsets(self) -> list[int]:
        return axis_offsets(self.width, self.window, self.stride, self.col_phase)

    def __len__(self) -> int:
        return len(self.row_offsets) * len(self.col_offsets)

    def tiles(self) -> Iterator[Tile]:
        rows, cols = self.row_offsets, self.col_offsets
        for r, ro in enumerate(rows):
            for c, co in enumerate(cols):
                yield Tile(r, c, ro, co, min(self.window, self.height), min(self.window, self.width))

    def weights(self, tile: Tile) -> np.ndarray:
        """2-D blending weights (height, width) of a tile: the outer product of the axis tapers."""
        wy = axis_taper(self.row_offsets, tile.row, self.window, self.height)
        wx = axis_taper(self.col_offsets, tile.col, self.window, self.width)
        return wy[:, None] * wx[None, :]

    def rows_final_after(self, row: int) -> int:
        """First raster row still touched by a window row after `row` (all rows above are final)."""
        rows = self.row_offsets
        return rows[row + 1] if row + 1 < len(rows) else self.height
