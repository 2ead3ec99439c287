"""Blending overlapping window probabilities into seamless rows, streamed.

The blender accumulates sum(w * p) and sum(w) over a band of rows of one column range of the
raster, for the windows of one part given in row-major order. It owns the flush policy: `add()`
returns the first raster row that a later window of the part can still touch, so every row above
it is final and `pop()` hands it out. Memory depends on the window size and the part's width,
never on the raster's height.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .tiling import Tile, WindowPlan


class Blender:
    """Row-band accumulator over columns [col0, col1) for the tiles of one part.

    The band lives in buffers allocated once (grown only when a tile reaches further down than
    ever before): rows [offset, offset + rows) of the buffers hold raster rows [top, top + rows),
    every other buffer row is zero. Popping finished rows only advances `offset`; the rows in use
    move back to the front when a new tile would not fit, so nothing band-sized is allocated (and
    page-faulted in) per window row.
    """

    def __init__(self, plan: WindowPlan, tiles: Sequence[Tile], n_clusters: int):
        if not tiles:
            raise ValueError("a blender needs at least one tile")
        self.plan = plan
        self.col0 = min(t.col_off for t in tiles)
        self.col1 = max(t.col_off + t.width for t in tiles)
        self.width = self.col1 - self.col0
        # the last tile of each window row in this part: when it is in, earlier rows are final
        self._row_ends = {t.row: t for t in tiles}
        self._last_row = max(t.row for t in tiles)
        self.acc = np.zeros((n_clusters, 0, self.width), np.float32)
        self.weight = np.zeros((0, self.width), np.float32)
        self.top = min(t.row_off for t in tiles)
        self.offset = self.rows = 0

    def add(self, tile: Tile, probs: np.ndarray) -> int:
        """Blend one tile's probabilities (K, tile.height, tile.width). Returns the raster row above
        which every row is final (no tile still to come touches it)."""
        w = self.plan.weights(tile)
        end = tile.row_off - self.top + tile.height  # rows of the band this tile needs, from top
        if self.offset and self.offset + end > self.weight.shape[0]:
            self._to_front()
        grow = end - self.weight.shape[0]
        if grow > 0:
            self.acc = np.concatenate([self.acc, np.zeros((self.acc.shape[0], grow, self.width), np.float32)], 1)
            self.weight = np.concatenate([self.weight, np.zeros((grow, self.width), np.float32)])
        self.rows = max(self.rows, end)
        r0 = self.offset + tile.row_off - self.top
        c0 = tile.col_off - self.col0
        sl = (slice(r0, r0 + tile.height), slice(c0, c0 + tile.width))
        self.acc[(slice(None), *sl)] += probs * w
        self.weight[sl] += w
        return self.final_row(tile)

    def final_row(self, tile: Tile) -> int:
        """Rows above the returned one are final once `tile` is in."""
        if self._row_ends[tile.row] != tile:
            return self.top
        if tile.row == self._last_row:
            return self.top + self.rows
        return self.plan.rows_final_after(tile.row)

    def _to_front(self) -> None:
        """Move the rows in use to the front of the buffers (in blocks of `offset` rows, so that
        source and target never overlap) and zero what they leave behind."""
        o, n = self.offset, self.rows
        for r in range(0, n, o):
            k = min(o, n - r)
            self.acc[:, r:r + k] = self.acc[:, o + r:o + r + k]
            self.weight[r:r + k] = self.weight[o + r:o + r + k]
        self.acc[:, n:o + n] = 0
        self.weight[n:o + n] = 0
        self.offset = 0

    def pop(self, new_top: int) -> tuple[np.ndarray, np.ndarray]:
        """Blended rows [top, new_top) (probabilities (K, n, width), covered (n, width)), dropped
        from the band."""
        n = new_top - self.top
        rows = slice(self.offset, self.offset + n)
        weight = self.weight[rows]
        probs = self.acc[:, rows] / np.maximum(weight, 1e-12)
        covered = weight > 0
        self.acc[:, rows] = 0
        self.weight[rows] = 0
        self.offset, self.rows = (self.offset + n, self.rows - n) if n < self.rows else (0, 0)
        self.top = new_top
        return probs, covered

    def strips(self, final: int, max_rows: int):
        """Pop every final row in strips of at most `max_rows` rows: (first row, probs, covered)."""
        while self.top < final:
            top = self.top
            probs, covered = self.pop(min(final, top + max_rows))
            yield top, probs, covered
