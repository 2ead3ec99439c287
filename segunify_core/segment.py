"""tile-segment: a raster of any size in, a class raster on exactly the input's grid out.

One window flows: read (resampled to the model's GSD) -> fill invalid pixels -> backbone
features -> code -> log-probabilities from the global prototypes -> optional CRF ->
probabilities resized back to source pixels -> tapered blend into a row-band accumulator.
Finished rows are written as soon as no later window touches them, so memory depends on the
window size and the raster's width, not its height.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import rasterio
import torch
import torch.nn.functional as F
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from .backbone import Backbone
from .errors import SegUnifyError, write_failure
from .features import FeatureCache, build_cache
from .inference import write_preview
from .legend import Legend, cluster_shares, write_class_style
from .model import SegUnifyModel
from .raster_io import RasterReader, ground_sampling_distance, open_raster
from .tiling import Tile, WindowPlan
from .training import TrainConfig, Trainer, new_model

log = logging.getLogger("segunify")
# GDAL's block cache defaults to 5% of RAM and fills with the blocks of a large raster; a fixed cap
# keeps memory independent of the raster's size (GDAL_CACHEMAX in the environment still wins).
GDAL_CACHE_MB = 128
GSD_TOLERANCE = 0.05  # relative GSD difference below which the input is used at native resolution
WRITE_STRIP_VALUES = 1 << 22
MAX_RESAMPLING = 8.0  # beyond this GSD ratio the model is out of its depth anyway: stay native

Progress = Callable[[str, int, int], None]


@dataclasses.dataclass
class SegmentOptions:
    window: int = 320
    stride: int = 256
    batch_size: int = 4
    flip: bool = True
    native_resolution: bool = False
    bands: Sequence[int] | None = None
    probabilities: str | Path | None = None
    probabilities_dtype: str = "float16"  # or "uint8" (0..255 scaled)
    cog: bool = False
    overwrite: bool = False
    preview: str | Path | None = None
    device: str = "cpu"


@dataclasses.dataclass
class SelfFitOptions:
    """Fit a model on windows of the input itself (no model file given)."""

    classes: int
    extra_clusters: int = 0
    steps: int = 300
    batch_size: int = 16
    max_windows: int = 64
    feature_crop: int = 28  # patches; random crops of the cached window grids keep steps cheap
    seed: int = 0
    shift_intra: float = 0.1
    shift_inter: float = 0.5
    temperature: float = 0.1
    alpha: float = 0.998
    local_sets: int = 1
    cache_dir: str | Path | None = None


@dataclasses.dataclass
class SegmentReport:
    output: str
    width: int
    height: int
    windows: int
    classes: int
    device: str
    precision: str
    scale: float
    model: SegUnifyModel


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SegUnifyError("--device cuda was asked for but PyTorch sees no CUDA GPU; use --device cpu "
                            "or install a CUDA build of PyTorch.")
    if name not in ("cpu", "cuda"):
        raise SegUnifyError(f"Unknown device '{name}'; use auto, cpu or cuda.")
    return torch.device(name)


def _temp_beside(path: Path, suffix: str) -> Path:
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".partial{suffix}", dir=path.parent)
    except OSError as exc:
        raise SegUnifyError(f"Cannot write to the output folder '{path.parent}' ({exc.strerror}); choose a "
                            "writable folder.") from None
    os.close(fd)
    return Path(tmp)


def _output_profile(ds, n_bands: int, dtype: str, nbits: int | None = None) -> dict:
    profile = {
        "driver": "GTiff", "width": ds.width, "height": ds.height, "count": n_bands, "dtype": dtype,
        "crs": ds.crs, "transform": ds.transform, "tiled": True, "blockxsize": 512, "blockysize": 512,
        "compress": "deflate", "BIGTIFF": "IF_SAFER",
    }
    if ds.width < 512 or ds.height < 512:  # tiles must fit; small rasters are stored in strips
        profile.update(tiled=False, blockxsize=None, blockysize=None)
        profile = {k: v for k, v in profile.items() if v is not None}
    if dtype == "uint8" and n_bands == 1:
        profile["nodata"] = 0
    if nbits:
        profile["NBITS"] = nbits
    return profile


class _Blender:
    """Accumulates sum(w * p) and sum(w) over a band of full-width rows starting at raster row `top`.

    The band lives in buffers allocated once (grown only when a batch reaches further down than
    ever before): rows [offset, offset + rows) of the buffers hold raster rows [top, top + rows),
    every other buffer row is zero. Popping finished rows only advances `offset`; the rows in use
    move back to the front when a new tile would not fit. Nothing band-sized is allocated (and
    page-faulted in) per window row, whatever the raster's width.
    """

    def __init__(self, plan: WindowPlan, n_clusters: int):
        self.plan = plan
        self.acc = np.zeros((n_clusters, 0, plan.width), np.float32)
        self.weight = np.zeros((0, plan.width), np.float32)
        self.top = self.offset = self.rows = 0

    def add(self, tile: Tile, probs: np.ndarray) -> None:
        w = self.plan.weights(tile)
        end = tile.row_off - self.top + tile.height  # rows of the band this tile needs, from top
        if self.offset and self.offset + end > self.weight.shape[0]:
            self._to_front()
        grow = end - self.weight.shape[0]
        if grow > 0:
            self.acc = np.concatenate([self.acc, np.zeros((self.acc.shape[0], grow, self.plan.width), np.float32)], 1)
            self.weight = np.concatenate([self.weight, np.zeros((grow, self.plan.width), np.float32)])
        self.rows = max(self.rows, end)
        r0 = self.offset + tile.row_off - self.top
        sl = (slice(r0, r0 + tile.height), slice(tile.col_off, tile.col_off + tile.width))
        self.acc[(slice(None), *sl)] += probs * w
        self.weight[sl] += w

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
        """Return blended rows [top, new_top) (probabilities, covered) and drop them from the band."""
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


class TileSource:
    """Reads plan tiles as model-ready windows (resampled, padded, invalid pixels filled)."""

    def __init__(self, reader: RasterReader, plan: WindowPlan, model_window: int, scale: float, patch: int):
        self.reader, self.plan, self.scale, self.patch = reader, plan, scale, patch
        self.model_window = model_window

    def model_shape(self, tile: Tile) -> tuple[int, int]:
        if self.scale == 1.0:
            return tile.height, tile.width
        if tile.height == self.plan.window and tile.width == self.plan.window:
            return self.model_window, self.model_window
        return max(1, round(tile.height / self.scale)), max(1, round(tile.width / self.scale))

    def input_size(self, tile: Tile) -> int:
        """Side S of the square model input: a patch multiple >= the model window."""
        return max(self.model_window, math.ceil(max(self.model_shape(tile)) / self.patch) * self.patch)

    def read(self, tile: Tile) -> tuple[np.ndarray, np.ndarray]:
        """RGB (3, S, S) 0..255 (S = input_size), and validity (h, w) of the unpadded
        model-resolution window."""
        shape = self.model_shape(tile)
        rgb, valid = self.reader.read(Window(tile.col_off, tile.row_off, tile.width, tile.height), shape)
        rgb = np.where(valid[None], rgb, self.reader.fill[:, None, None].astype(np.float32))
        size = self.input_size(tile)
        ph, pw = size - shape[0], size - shape[1]
        if ph or pw:  # small rasters: reflect-pad to a whole window; padding is cut off afterwards
            rgb = np.pad(rgb, ((0, 0), (0, ph), (0, pw)), mode="reflect" if min(shape) > 1 else "edge")
        return np.ascontiguousarray(rgb, dtype=np.float32), valid


def grid_phase(transform) -> tuple[int, int]:
    """Global pixel indices of the raster's first column and row on its CRS pixel lattice (0, 0
    without a north-up transform): windows are laid on this lattice, not on the raster's corner."""
    if transform.is_identity or transform.b or transform.d or not transform.a or not transform.e:
        return 0, 0
    return round(transform.c / transform.a), round(transform.f / transform.e)


def _choose_scale(reader: RasterReader, model: SegUnifyModel | None, native: bool) -> float:
    """Source pixels per model pixel: resample to the model's GSD unless asked not to."""
    if native or model is None or not model.config.gsd:
        return 1.0
    gsd = ground_sampling_distance(reader.ds)
    if not gsd:
        return 1.0
    scale = model.config.gsd / gsd
    if not 1 / MAX_RESAMPLING <= scale <= MAX_RESAMPLING:
        log.warning("The input's pixels (%.3g m) and the model's (%.3g m) differ more than %gx; segmenting "
                    "at native resolution (a model trained near this GSD will do better).",
                    gsd, model.config.gsd, MAX_RESAMPLING)
        return 1.0
    return 1.0 if abs(scale - 1.0) < GSD_TOLERANCE else scale


def self_fit(reader: RasterReader, plan: WindowPlan, source: TileSource, backbone: Backbone,
             fit: SelfFitOptions, device: torch.device, progress: Progress | None,
             flip: bool = True) -> tuple[SegUnifyModel, dict[tuple[int, int], int], FeatureCache, Path]:
    """Fit Compressor and Labeler on cached features of (a sample of) the input's own windows."""
    tiles = [t for t in plan.tiles()]
    rng = np.random.default_rng(fit.seed)
    chosen = sorted(rng.choice(len(tiles), min(fit.max_windows, len(tiles)), replace=False).tolist())
    fit_tiles = [tiles[i] for i in chosen]
    folder = Path(tempfile.mkdtemp(prefix="segunify-selffit-", dir=fit.cache_dir))
    try:
        cache = build_cache(folder / "features", len(fit_tiles), lambda k: source.read(fit_tiles[k])[0],
                            source.input_size(fit_tiles[0]), backbone, flip, batch_size=4,
                            device=device,
                            progress=(lambda d, t: progress("features", d, t)) if progress else None)
        config = TrainConfig(
            classes=fit.classes, extra_clusters=fit.extra_clusters, steps=fit.steps,
            batch_size=max(2, min(fit.batch_size, len(cache) * cache.views)), seed=fit.seed,
            shift_intra=fit.shift_intra, shift_inter=fit.shift_inter, temperature=fit.temperature,
            alpha=fit.alpha, local_sets=fit.local_sets, feature_crop=fit.feature_crop, window=source.model_window,
            max_windows=fit.max_windows, bands=list(reader.bands))
        model = new_model(backbone, config, ground_sampling_distance(reader.ds))
        trainer = Trainer(model, cache, config)
        while trainer.step < config.steps:
            trainer.train_step()
            if progress:
                progress("fit", trainer.step, config.steps)
        model.backbone = backbone
        model.metadata = {"training": {"config": dataclasses.asdict(config), "self_fit": True,
                                       "data": {"files": [str(reader.ds.name)], "windows": len(fit_tiles),
                                                "gsd_m": model.config.gsd},
                                       "cluster_shares": cluster_shares(model, cache)}}
        index = {(t.row, t.col): k for k, t in enumerate(fit_tiles)}
        return model.eval(), index, cache, folder
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def segment_raster(input_path: str | Path, output_path: str | Path, model: SegUnifyModel | None,
                   options: SegmentOptions, crf=None, fit: SelfFitOptions | None = None,
                   backbone: Backbone | None = None, progress: Progress | None = None) -> SegmentReport:
    """Segment a raster into a class raster; see `_segment_raster`. GDAL's block cache is capped."""
    # rasterio hands an integer GDAL_CACHEMAX to GDALSetCacheMax, which takes bytes, not megabytes.
    cache = {} if "GDAL_CACHEMAX" in os.environ else {"GDAL_CACHEMAX": GDAL_CACHE_MB * 1024 * 1024}
    with rasterio.Env(**cache):
        return _segment_raster(input_path, output_path, model, options, crf, fit, backbone, progress)


def _segment_raster(input_path: str | Path, output_path: str | Path, model: SegUnifyModel | None,
                    options: SegmentOptions, crf=None, fit: SelfFitOptions | None = None,
                    backbone: Backbone | None = None, progress: Progress | None = None) -> SegmentReport:
    """Segment a raster into a class raster (uint8, 1..K, 0 = nodata) on the input's grid.

    Without a model, `fit` and `backbone` are required: the model is fitted on the input itself.
    The output is written to a temporary file beside OUTPUT and renamed at the end; on any error
    or interruption nothing is left at OUTPUT.
    """
    output_path = Path(output_path)
    if output_path.exists() and not options.overwrite:
        raise SegUnifyError(f"Output '{output_path}' already exists; pass --overwrite to replace it.")
    if not output_path.parent.is_dir():
        raise SegUnifyError(f"Output folder '{output_path.parent}' does not exist; create it first.")
    if not os.access(output_path.parent, os.W_OK):
        raise SegUnifyError(f"Output folder '{output_path.parent}' is not writable; choose another "
                            "output path.")
    if Path(input_path).resolve() == output_path.resolve():
        raise SegUnifyError("Output path equals the input path; inputs are never modified, choose "
                            "another output.")
    device = torch.device(options.device)
    bands = options.bands if options.bands is not None else (model.config.bands if model else None)
    if options.bands is None and model is not None and model.config.bands:
        with open_raster(input_path) as ds:
            if max(model.config.bands) > ds.count:
                raise SegUnifyError(f"The model was trained on bands {','.join(map(str, model.config.bands))} but "
                                    f"'{input_path}' has {ds.count} band(s); choose its bands with --bands.")
    reader = RasterReader.open(input_path, bands)
    temps: list[Path] = []
    fit_folder: Path | None = None
    try:
        if reader.ds.crs is None:
            log.warning("'%s' has no CRS: the output keeps its pixel grid without georeferencing.",
                        input_path)
        if model is None:
            if fit is None or backbone is None:
                raise SegUnifyError("No model given; pass --model MODEL or --classes K to fit one on "
                                    "the input.")
            patch = backbone.patch_size
        else:
            patch = model.config.patch_size
            backbone = model.backbone
        if options.window % patch or options.stride % patch:
            raise SegUnifyError(f"--window {options.window} and --stride {options.stride} must be "
                                f"multiples of the backbone's patch size {patch}.")
        scale = _choose_scale(reader, model, options.native_resolution)
        src_window = max(patch, round(options.window * scale))
        src_stride = max(1, min(src_window, round(options.stride * scale)))
        col_phase, row_phase = grid_phase(reader.ds.transform)
        plan = WindowPlan(reader.width, reader.height, src_window, src_stride, col_phase, row_phase)
        source = TileSource(reader, plan, options.window, scale, patch)
        fit_index: dict[tuple[int, int], int] = {}
        fit_cache = None
        if model is None:
            model, fit_index, fit_cache, fit_folder = self_fit(reader, plan, source, backbone, fit, device,
                                                               progress, options.flip)
        model = model.to(device).eval()
        n = model.n_classes
        if n > 255:
            raise SegUnifyError(f"The model has {n} clusters; a uint8 class raster holds at most 255.")

        tmp_out = _temp_beside(output_path, ".tif")
        temps.append(tmp_out)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            dst = rasterio.open(tmp_out, "w", **_output_profile(reader.ds, 1, "uint8"))
            prob_dst = None
            if options.probabilities:
                prob_path = Path(options.probabilities)
                tmp_prob = _temp_beside(prob_path, ".tif")
                temps.append(tmp_prob)
                if options.probabilities_dtype == "uint8":
                    prob_dst = rasterio.open(tmp_prob, "w", **_output_profile(reader.ds, n, "uint8"))
                else:  # half floats: GTiff stores Float32 with NBITS=16
                    prob_dst = rasterio.open(tmp_prob, "w", **_output_profile(reader.ds, n, "float32", 16))
        try:
            try:
                dst.write_colormap(1, model.legend.colormap())
                _label_pass(model, plan, source, options, crf, dst, prob_dst, fit_index, fit_cache, device,
                            progress)
            finally:
                dst.close()
                if prob_dst is not None:
                    prob_dst.close()
            for written in temps:
                _read_back(written)
            if options.cog:
                tmp_cog = _temp_beside(output_path, ".tif")
                temps.append(tmp_cog)
                _to_cog(tmp_out, tmp_cog)
                _read_back(tmp_cog)
                tmp_out = tmp_cog
            os.replace(tmp_out, output_path)
            if options.probabilities:
                os.replace(temps[1], Path(options.probabilities))
            write_class_style(output_path, model.legend)
        except (rasterio.errors.RasterioIOError, OSError) as exc:  # reads raise SegUnifyError instead
            raise write_failure(output_path, exc) from None
        if options.preview:
            _preview(reader, output_path, Path(options.preview), model.legend)
        return SegmentReport(str(output_path), reader.width, reader.height, len(plan), n,
                             device.type, getattr(model.backbone, "precision", "fp32"), scale, model)
    finally:
        reader.close()
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        if fit_folder is not None:
            shutil.rmtree(fit_folder, ignore_errors=True)


@torch.inference_mode()
def _label_pass(model: SegUnifyModel, plan: WindowPlan, source: TileSource, options: SegmentOptions,
                crf, dst, prob_dst, fit_index: dict, fit_cache: FeatureCache | None,
                device: torch.device, progress: Progress | None) -> None:
    """Windows in row-major order, in batches that run on across window rows (a batch never waits
    for a row to fill up); a window row's finished raster rows are written once its last tile is in."""
    blender = _Blender(plan, model.n_classes)
    # rows written at a time: about 4M probabilities, which glibc serves from its reusable heap
    strip = max(1, WRITE_STRIP_VALUES // (model.n_classes * plan.width))
    tiles = list(plan.tiles())
    n_cols = len(plan.col_offsets)
    done_rows = 0
    for start in range(0, len(tiles), options.batch_size):
        batch = tiles[start:start + options.batch_size]
        reads = [source.read(t) for t in batch]
        keep = [i for i, (_, valid) in enumerate(reads) if valid.any()]
        if keep:
            rgb = torch.from_numpy(np.stack([reads[i][0] for i in keep])).to(device)
            codes = _codes(model, rgb, [batch[i] for i in keep], fit_index, fit_cache, options.flip)
            log_probs = model.log_probs_from_code(codes, rgb.shape[-2:])
            probs = crf(rgb, log_probs) if crf is not None else log_probs.exp()
            for j, i in enumerate(keep):
                tile = batch[i]
                mh, mw = source.model_shape(tile)
                p = probs[j:j + 1, :, :mh, :mw]
                if (mh, mw) != (tile.height, tile.width):
                    p = F.interpolate(p, size=(tile.height, tile.width), mode="bilinear", align_corners=False)
                blender.add(tile, p[0].float().cpu().numpy())
        if progress:
            progress("segment", start + len(batch), len(tiles))
        last = batch[-1]
        finished_rows = last.row + 1 if last.col == n_cols - 1 else last.row
        for r in range(done_rows, finished_rows):
            final = plan.rows_final_after(r)
            while blender.top < final:  # in strips: no array per write grows with the raster's width
                top = blender.top
                probs_rows, covered = blender.pop(min(final, top + strip))
                _write_rows(source.reader, dst, prob_dst, probs_rows, covered, top, options.probabilities_dtype)
        done_rows = finished_rows


def _codes(model: SegUnifyModel, rgb: torch.Tensor, tiles: list[Tile], fit_index: dict,
           fit_cache: FeatureCache | None, flip: bool) -> torch.Tensor:
    """Codes of a batch; windows whose features were cached by self-fit skip the backbone."""
    cached = [fit_index.get((t.row, t.col)) for t in tiles]
    if fit_cache is None or any(c is None for c in cached):
        return model.code(rgb, flip)
    idx = torch.tensor(cached)
    code = model.compressor(fit_cache.batch(idx, torch.zeros_like(idx)).to(rgb.device))
    if flip and fit_cache.views > 1:
        flipped = model.compressor(fit_cache.batch(idx, torch.ones_like(idx)).to(rgb.device))
        code = (code + flipped.flip(-1)) / 2.0
    return code


def _write_rows(reader: RasterReader, dst, prob_dst, probs: np.ndarray, covered: np.ndarray, row0: int,
                prob_dtype: str) -> None:
    n_rows = probs.shape[1]
    window = Window(0, row0, reader.width, n_rows)
    valid = reader.valid_mask(window) & covered
    labels = (probs.argmax(0) + 1).astype(np.uint8)
    labels[~valid] = 0
    dst.write(labels, 1, window=window)
    if prob_dst is not None:
        if prob_dtype == "uint8":
            data = np.round(probs * 255).astype(np.uint8)
        else:
            data = probs.astype(np.float32)
        data[:, ~valid] = 0
        prob_dst.write(data, window=window)


def _read_back(path: Path) -> None:
    """Read every block of a closed output. GDAL flushes cached blocks at close and reports a failed
    flush (full disk, quota) only on stderr, so a truncated file would otherwise pass as finished."""
    with rasterio.open(path) as ds:
        for _, window in ds.block_windows(1):
            ds.read(window=window)


def _to_cog(src: Path, dst: Path) -> None:
    from rasterio.shutil import copy

    copy(str(src), str(dst), driver="COG", COMPRESS="DEFLATE", OVERVIEW_RESAMPLING="MODE",
         BIGTIFF="IF_SAFER")


def _preview(reader: RasterReader, output: Path, path: Path, legend: Legend, max_side: int = 1024) -> None:
    scale = max(1.0, max(reader.width, reader.height) / max_side)
    shape = (max(1, round(reader.height / scale)), max(1, round(reader.width / scale)))
    rgb, valid = reader.read(Window(0, 0, reader.width, reader.height), out_shape=shape,
                             resampling=Resampling.average)
    with rasterio.open(output) as ds:
        labels = ds.read(1, out_shape=shape, resampling=Resampling.nearest)
    write_preview(path, rgb, labels, valid, max_side, legend)
