"""Self-fit: a model fitted on windows of the job's own rasters when no model file is given.

Windows are sampled across the whole job (every raster's window plan), their backbone features
cached once, and the Compressor and Labeler trained on the cache. It runs once, on the driver;
the labelling that follows is distributed like any other job.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .. import settings
from ..errors import SegUnifyError
from ..files.raster_io import RasterReader, ground_sampling_distance
from ..method.backbone import Backbone
from ..method.model import SegUnifyModel
from ..progress import Progress
from ..settings import SelfFitOptions
from ..training.feature_cache import build_cache
from ..training.trainer import TrainConfig, Trainer, cluster_shares, new_model
from .planning import RasterJob
from .tiling import Tile
from .windows import TileSource

_TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}  # what a self-fit passes on as is


def sample_windows(rasters: Sequence[RasterJob], count: int, seed: int) -> list[tuple[RasterJob, Tile]]:
    """`count` windows drawn without replacement from all the rasters' plans, in plan order."""
    everything = [(r, t) for r in rasters for t in r.window_plan().tiles()]
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(everything), min(count, len(everything)), replace=False).tolist())
    return [everything[i] for i in chosen]


def self_fit(rasters: Sequence[RasterJob], backbone: Backbone, fit: SelfFitOptions, device: torch.device,
             flip: bool = settings.FLIP, progress: Progress | None = None) -> SegUnifyModel:
    """Fit Compressor and Labeler on cached features of windows sampled across the job."""
    if fit.steps < settings.MIN_STEPS or fit.max_windows < settings.MIN_FIT_WINDOWS:
        raise SegUnifyError(f"Self-fit needs at least {settings.MIN_STEPS} training step (--fit-steps) and "
                            f"{settings.MIN_FIT_WINDOWS} window (--fit-windows).")
    windows = sample_windows(rasters, fit.max_windows, fit.seed)
    readers: dict[int, tuple[RasterReader, TileSource]] = {}

    def read(k: int) -> np.ndarray:
        raster, tile = windows[k]
        if raster.index not in readers:
            for reader, _ in readers.values():  # windows come raster by raster: keep one open
                reader.close()
            readers.clear()
            reader = RasterReader.open(raster.input, raster.bands, raster.stats)
            readers[raster.index] = (reader, TileSource(reader, raster.window_plan(), raster.model_window,
                                                        raster.scale, raster.patch))
        return readers[raster.index][1].read(tile)[0]

    first_raster, first_tile = windows[0]
    with RasterReader.open(first_raster.input, first_raster.bands, first_raster.stats) as reader:
        size = TileSource(reader, first_raster.window_plan(), first_raster.model_window, first_raster.scale,
                          first_raster.patch).model_input_px(first_tile)
        gsd = ground_sampling_distance(reader.ds)
        bands = list(reader.bands)
    folder = Path(tempfile.mkdtemp(prefix="segunify-selffit-", dir=fit.cache_dir))
    try:
        cache = build_cache(folder / "features", len(windows), read, size, backbone, flip,
                            batch_size=settings.SEGMENT_BATCH_SIZE,
                            device=device,
                            progress=progress)
        for reader, _ in readers.values():
            reader.close()
        shared = {f.name: getattr(fit, f.name) for f in dataclasses.fields(fit) if f.name in _TRAIN_FIELDS}
        config = TrainConfig(**{**shared, "window": first_raster.model_window, "bands": bands, "flip": flip,
                                "batch_size": max(settings.MIN_BATCH_SIZE, min(fit.batch_size, len(cache) * cache.views))})
        model = new_model(backbone, config, gsd)
        trainer = Trainer(model, cache, config)
        while trainer.step < config.steps:
            trainer.train_step()
            if progress:
                progress("fit", trainer.step, config.steps)
        model.backbone = backbone
        model.metadata = {"training": {"config": dataclasses.asdict(config), "self_fit": True,
                                       "data": {"files": [r.input for r in rasters[:20]], "windows": len(windows),
                                                "gsd_m": model.config.gsd},
                                       "cluster_shares": cluster_shares(model.eval(), cache)}}
        del cache
        return model.eval()
    finally:
        for reader, _ in readers.values():
            reader.close()
        shutil.rmtree(folder, ignore_errors=True)
