"""Running one part: read its windows, segment them, blend, and write the part's files.

`run_part` is the whole per-part pipeline (windows -> features -> codes -> probabilities ->
blended labels -> part file) and is the same function in-process and on a Dask worker. It is
idempotent: a part computed twice writes the same bytes, so a task that Dask runs again (a lost
worker, a retry) changes nothing. Each file appears atomically.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import rasterio
import torch
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from ..files.atomic import atomic_path
from ..files.manifest import file_sha256
from ..files.outputs import creation_options, encode_probabilities, probability_storage, read_back
from ..files.raster_io import RasterReader
from ..files.remote import Location, gdal_env, join, location
from ..method.inference import window_log_probs
from ..method.model import SegUnifyModel
from ..progress import Progress
from .blending import Blender
from .planning import Part
from .spec import JobSpec, RunFacts
from .windows import TileSource

if TYPE_CHECKING:
    from ..method.crf import CRF

WRITE_STRIP_VALUES = 1 << 22  # probabilities written at a time: glibc serves them from its reusable heap
PART_BLOCK = 256  # tile side inside part files


__all__ = ["gdal_env", "part_files", "run_part"]


def part_files(parts_dir: Location, part: Part) -> dict[str, Location]:
    """The files a part writes: its labels, and its probabilities when the job asks for them. In an
    object store they are objects under the job's prefix (write-once keys: a part computed twice
    puts the same bytes under the same key)."""
    folder = location(parts_dir)
    files = {"labels": join(folder, f"{part.id}.labels.tif")}
    if part.raster.probabilities:
        files["probabilities"] = join(folder, f"{part.id}.probabilities.tif")
    return files


class _PartWriter:
    """The part's open GeoTIFFs (temporary names), written strip by strip."""

    def __init__(self, stack: contextlib.ExitStack, reader: RasterReader, part: Part, files: dict[str, Location],
                 n_classes: int, prob_dtype: str):
        self.reader, self.part, self.prob_dtype = reader, part, prob_dtype
        window = Window(part.col0, part.row0, part.width, part.height)
        base = {"width": part.width, "height": part.height, "crs": reader.ds.crs,
                "transform": reader.ds.window_transform(window)}
        self.temps = {kind: stack.enter_context(atomic_path(path)) for kind, path in files.items()}
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # rasters without CRS keep their pixel grid
        self.labels = rasterio.open(self.temps["labels"], "w", count=1, dtype="uint8", nodata=0, **base,
                                    **creation_options(part.width, part.height, 1, "uint8", block=PART_BLOCK))
        stack.callback(self.labels.close)
        self.probs = None
        if "probabilities" in files:
            dtype, nbits = probability_storage(prob_dtype)
            self.probs = rasterio.open(self.temps["probabilities"], "w", count=n_classes, dtype=dtype, **base,
                                       **creation_options(part.width, part.height, n_classes, dtype, nbits,
                                                          block=PART_BLOCK))
            stack.callback(self.probs.close)

    def write(self, row: int, col: int, probs: np.ndarray, covered: np.ndarray) -> None:
        """Blended rows starting at raster row `row`, columns from raster column `col`: the part keeps
        what lies inside its own rectangle."""
        p = self.part
        r0, r1 = max(row, p.row0), min(row + probs.shape[1], p.row1)
        if r0 >= r1:
            return
        rows, cols = slice(r0 - row, r1 - row), slice(p.col0 - col, p.col1 - col)
        probs, covered = probs[:, rows, cols], covered[rows, cols]
        valid = self.reader.valid_mask(Window(p.col0, r0, p.width, r1 - r0)) & covered
        labels = (probs.argmax(0) + 1).astype(np.uint8)
        labels[~valid] = 0
        window = Window(0, r0 - p.row0, p.width, r1 - r0)
        self.labels.write(labels, 1, window=window)
        if self.probs is not None:
            self.probs.write(encode_probabilities(probs, valid, self.prob_dtype), window=window)

    def finish(self) -> dict[str, str]:
        """Close and read back every file (a failed flush shows only then); their SHA-256 (of the
        finished temporary files: the bytes that become the part's files or objects)."""
        self.labels.close()
        if self.probs is not None:
            self.probs.close()
        for tmp in self.temps.values():
            read_back(tmp)
        return {kind: file_sha256(tmp) for kind, tmp in self.temps.items()}


def _batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


@torch.inference_mode()
def run_part(part: Part, job: JobSpec, facts: RunFacts, model: SegUnifyModel, crf: CRF | None = None,
             progress: Progress | None = None) -> dict[str, str]:
    """Compute one part and write its files atomically; returns {file kind: SHA-256}. Progress:
    ("segment", windows of this part done, the part's windows)."""
    raster = part.raster
    plan = raster.window_plan()
    device = torch.device(facts.device)
    n = model.n_classes
    files = part_files(facts.parts_dir, part)
    options = job.options
    tiles = part.tiles()
    with gdal_env(), RasterReader.open(raster.input, raster.bands, raster.stats) as reader:
        source = TileSource(reader, plan, raster.model_window, raster.scale, raster.patch)
        blender = Blender(plan, tiles, n)
        strip = max(1, WRITE_STRIP_VALUES // (n * blender.width))
        with contextlib.ExitStack() as stack:
            writer = _PartWriter(stack, reader, part, files, n, options.probabilities_dtype)
            done = 0
            for batch in _batches(tiles, options.batch_size):
                reads = [source.read(t) for t in batch]
                keep = [i for i, (_, valid) in enumerate(reads) if valid.any()]
                probs = None
                if keep:
                    rgb = torch.from_numpy(np.stack([reads[i][0] for i in keep])).to(device)
                    log_probs = window_log_probs(model, rgb, options.flip)
                    probs = crf(rgb, log_probs) if crf is not None else log_probs.exp()
                final = blender.top
                for i, tile in enumerate(batch):
                    if probs is not None and i in keep:
                        final = blender.add(tile, source.to_source_px(tile, probs[keep.index(i)]))
                    else:  # nothing valid: not blended, but its row may still close
                        final = blender.final_row(tile)
                    for row, rows_probs, covered in blender.strips(final, strip):
                        writer.write(row, blender.col0, rows_probs, covered)
                done += len(batch)
                if progress:
                    progress("segment", done, len(tiles))
            hashes = writer.finish()
    return hashes
