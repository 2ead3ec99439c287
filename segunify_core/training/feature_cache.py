"""The cached backbone features of the training windows.

The backbone is frozen, so the features of the sampled windows (and of their horizontal flips)
are computed once per run and kept in a memory-mapped float16 file; training steps after the
first pass only read this file.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import settings
from ..errors import SegUnifyError
from ..files.atomic import atomic_path
from ..files.remote import Location, is_url, stat_key
from ..method.backbone import Backbone
from ..method.inference import window_features
from ..method.registry import IMAGENET, Normalization
from ..progress import Progress
from .datasets import RESIZE_MODES, TrainingImage, TrainWindow, TrainWindowReader

CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    env = settings.environment().cache_dir
    base = Path(env) if env else Path.home() / ".cache" / "segunify"
    return base / "features"


def _file_fingerprint(path: Location) -> list:
    if is_url(str(path)):  # a URL: its size and ETag/Last-Modified
        return [str(path), *stat_key(path)]
    path = Path(path)
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, int(stat.st_mtime)]


def cache_key(images: Sequence[TrainingImage], windows: Sequence[TrainWindow], window: int,
              backbone: Backbone, backbone_weights: str | None, flip: bool,
              bands: Sequence[int] | None, resize: str = RESIZE_MODES[0]) -> str:
    h = hashlib.sha256()
    payload = {
        "format": CACHE_FORMAT,
        "images": [(_file_fingerprint(im.path), im.potsdam_id) for im in images],
        "windows": [dataclasses.astuple(w) for w in windows],
        "window": window,
        "backbone": backbone.spec.timm_name,
        "weights": _file_fingerprint(Path(backbone_weights)) if backbone_weights else "hub",
        "precision": backbone.precision,
        "flip": flip,
        "bands": list(bands) if bands else None,
    }
    if resize != "bilinear":  # keeps the keys of existing bilinear caches
        payload["resize"] = resize
    if backbone.normalization != IMAGENET:  # keeps the keys of existing ImageNet-normalised caches
        payload["normalization"] = backbone.normalization.to_metadata()
    h.update(json.dumps(payload, sort_keys=True).encode())
    return h.hexdigest()[:24]


class FeatureCache:
    """A finished cache: features (N, V, C, h, w) float16, memory-mapped read-only."""

    def __init__(self, folder: Path):
        meta = json.loads((folder / "meta.json").read_text())
        self.folder = folder
        self.shape = tuple(meta["shape"])
        self.features = np.memmap(folder / "features.f16", dtype=np.float16, mode="r", shape=self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def views(self) -> int:
        return self.shape[1]

    def batch(self, indices: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        idx = indices.numpy()
        order = np.argsort(idx)  # sorted reads are kinder to the page cache
        data = self.features[idx[order], views.numpy()[order]]
        out = np.empty_like(data)
        out[order] = data
        return torch.from_numpy(out.astype(np.float32))


def build_cache(folder: Path, count: int, read_window: Callable[[int], np.ndarray] | None, window: int,
                backbone: Backbone | None, flip: bool, batch_size: int = 16, device: torch.device | None = None,
                progress: Progress | None = None, phase: str = "features",
                shards: Sequence[np.ndarray] | None = None, shape: tuple[int, ...] | None = None) -> FeatureCache:
    """Compute and store the features of `count` windows (and their flips); reuse a finished cache.

    read_window(k) returns window k as RGB (3, window, window) in 0..255. With `shards` (features
    computed elsewhere, in window order) and their joint `shape`, they are stored instead (`backbone`
    may then be None: shards of teacher probabilities, `build_sharded_cache`, are stored the same way).
    """
    if (folder / "meta.json").is_file():
        return FeatureCache(folder)
    device = device or torch.device("cpu")
    if shape is None:
        if backbone is None:
            raise ValueError("a cache without a backbone needs its shape")
        grid = window // backbone.patch_size
        shape = (count, 2 if flip else 1, backbone.feature_dim, grid, grid)
    need = math.prod(shape) * 2
    folder.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder.parent).free
    if need > free:
        raise SegUnifyError(f"The feature cache needs {need / 1e9:.1f} GB but '{folder.parent}' has "
                            f"{free / 1e9:.1f} GB free; lower the maximum windows (--max-windows) or choose another "
                            "cache folder (--cache-dir).")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SegUnifyError(f"Cannot create the feature cache in '{folder.parent}' ({exc.strerror}); choose a "
                            "writable cache folder (--cache-dir).") from None
    with atomic_path(folder, suffix="", directory=True) as tmp:
        store = np.memmap(tmp / "features.f16", dtype=np.float16, mode="w+", shape=shape)
        offset = 0
        for shard in shards or ():
            store[offset:offset + len(shard)] = shard
            offset += len(shard)
        for start in range(0, count, batch_size):
            if read_window is None or backbone is None:  # the features came as shards
                break
            chunk = list(range(start, min(count, start + batch_size)))
            x = torch.stack([torch.from_numpy(np.ascontiguousarray(read_window(k))) for k in chunk]).to(device)
            feats = window_features(backbone, x, flip)
            store[start:start + len(chunk)] = feats.to(torch.float16).cpu().numpy()
            if progress:
                progress(phase, start + len(chunk), count)
        store.flush()
        del store
        (tmp / "meta.json").write_text(json.dumps({"shape": list(shape)}))
    return FeatureCache(folder)


# --- the cache computed on a Dask cluster: one atomic shard per part of the windows ------------

SHARD_WINDOWS = 64  # windows per shard: a multiple of the backbone batch, seconds to minutes of work

@functools.lru_cache(maxsize=1)  # a worker process computes many shards of one job with one backbone
def _worker_backbone(name: str, weights: str | None, precision: str, device: str, fuse: bool | str,
                     normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None) -> Backbone:
    from ..method.backbone import create_backbone

    norm = Normalization.of(*normalization) if normalization else None
    return create_backbone(name, weights, precision=precision, fuse=fuse, normalization=norm).to(torch.device(device))


# A teacher for `compute_shard`: (model file, backbone weights, precision, device, fuse, CRF name).
TeacherSpec = tuple[str, str | None, str, str, bool | str, str]


def _shard_values(backbone: tuple[Any, ...] | None, teacher: TeacherSpec | None,
                  flip: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """What a shard stores of a batch of windows: backbone features (both views), or each window's RGB
    followed by a teacher's cluster probabilities (`inference.teacher_probabilities`), (B, 3 + K, S, S)."""
    if teacher is not None:
        from ..job.worker import process_model
        from ..method.inference import teacher_probabilities

        model_file, weights, precision, device, fuse, crf_name = teacher
        model, crf = process_model(model_file, None, weights, device, precision, fuse, crf_name)
        return lambda x: torch.cat([x, teacher_probabilities(model, x, flip, crf).float()], 1)
    assert backbone is not None
    net = _worker_backbone(*backbone)
    return lambda x: window_features(net, x, flip)


def compute_shard(path: str, images: Sequence[TrainingImage], windows: Sequence[TrainWindow], window: int,
                  bands: Sequence[int] | None, backbone: tuple[Any, ...] | None,
                  flip: bool, batch_size: int = 16, resize: str = RESIZE_MODES[0],
                  teacher: TeacherSpec | None = None) -> str:
    """Features (or, with `teacher`, teacher probabilities) of some windows into one shard file
    (atomic); returns its SHA-256. A Dask task, and the in-process step of `build_sharded_cache`."""
    from ..files.manifest import file_sha256

    compute = _shard_values(backbone, teacher, flip)
    device = torch.device((teacher or backbone or ("", "", "", "cpu"))[3])
    reader = TrainWindowReader(images, windows, window, bands, resize)
    try:
        with atomic_path(Path(path)) as tmp:
            store = None
            for start in range(0, len(windows), batch_size):
                chunk = range(start, min(len(windows), start + batch_size))
                x = torch.stack([torch.from_numpy(np.ascontiguousarray(reader(k))) for k in chunk])
                x = x.to(device)
                with torch.inference_mode():
                    feats = compute(x)
                if store is None:
                    store = np.lib.format.open_memmap(tmp, "w+", np.float16, (len(windows), *feats.shape[1:]))
                store[start:start + len(chunk)] = feats.to(torch.float16).cpu().numpy()
            if store is not None:  # (no windows: an empty shard)
                store.flush()
                del store
    finally:
        reader.close()
    return file_sha256(Path(path))


def build_cache_on_cluster(folder: Path, client, images: Sequence[TrainingImage], windows: Sequence[TrainWindow],
                           window: int, bands: Sequence[int] | None, backbone: Backbone,
                           backbone_weights: str | None, flip: bool, device: str,
                           progress: Progress | None = None,
                           resize: str = RESIZE_MODES[0]) -> FeatureCache:
    """The same cache as `build_cache`, its windows computed on the cluster's workers in shards
    (`build_sharded_cache`)."""
    spec = (backbone.spec.name, str(backbone_weights) if backbone_weights else None, backbone.precision, device,
            backbone.fuse, (backbone.normalization.mean, backbone.normalization.std))
    return build_sharded_cache(folder, client, images, windows, window, bands, flip, spec, None, device, progress,
                               resize=resize)


def build_sharded_cache(folder: Path, client, images: Sequence[TrainingImage], windows: Sequence[TrainWindow],
                        window: int, bands: Sequence[int] | None, flip: bool,
                        backbone: tuple[Any, ...] | None, teacher: TeacherSpec | None,
                        device: str, progress: Progress | None = None, phase: str = "features",
                        resize: str = RESIZE_MODES[0], shard_windows: int = SHARD_WINDOWS) -> FeatureCache:
    """A cache computed in shards of `shard_windows` windows (`compute_shard`: backbone features, or
    a teacher's probabilities), on the Dask client's workers, or in this process when client is None.

    Shards are recorded in a manifest (shard id -> SHA-256) as they finish; an interrupted run
    keeps the finished shards and a rerun computes only the others. The driver then joins them, in
    window order, into the cache file."""
    from ..files.manifest import Manifest

    if (folder / "meta.json").is_file():
        return FeatureCache(folder)
    shards_dir = folder.with_name(folder.name + ".shards")
    shards_dir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest.open(shards_dir, folder.name, resume=True)
    starts = list(range(0, len(windows), shard_windows))
    files = {s: shards_dir / f"shard-{s:08d}.npy" for s in starts}
    todo = [s for s in starts if not manifest.has(str(s), {"features": files[s]})]
    done = len(windows) - sum(len(windows[s:s + shard_windows]) for s in todo)

    def finished(start: int, sha256: str) -> None:
        nonlocal done
        manifest.record(str(start), {"features": sha256})
        done += len(windows[start:start + shard_windows])
        if progress:
            progress(phase, done, len(windows))

    if client is None:
        for s in todo:
            finished(s, compute_shard(str(files[s]), images, windows[s:s + shard_windows], window, bands, backbone,
                                      flip, resize=resize, teacher=teacher))
    else:
        from ..job.engines import prepare_workers
        from ..job.worker import import_distributed

        distributed = import_distributed()
        prepare_workers(client)
        resources = {"GPU": 1} if device == "cuda" else None
        futures = {client.submit(compute_shard, str(files[s]), images, windows[s:s + shard_windows], window, bands,
                                 backbone, flip, resize=resize, teacher=teacher,
                                 key=f"segunify-cache-{folder.name}-{s}", pure=False, retries=2,
                                 resources=resources): s for s in todo}
        for future in distributed.as_completed(futures):
            finished(futures[future], future.result())
    shards = [np.load(files[s], mmap_mode="r") for s in starts]
    shape = (len(windows), *shards[0].shape[1:])
    build_cache(folder, len(windows), None, window, None, flip, shards=shards, shape=shape)
    shutil.rmtree(shards_dir, ignore_errors=True)
    return FeatureCache(folder)
