"""Distilling a fast model: a small CNN (`method.student`) trained on a SegUnify model's outputs.

The teacher is the model file's whole pipeline (backbone, flip averaging, optional CRF) run on
windows sampled across the data as `train` samples them. Each window's RGB and the teacher's
cluster probabilities are cached once, in atomic shards (the feature cache's machinery:
`feature_cache.build_sharded_cache`, on Dask workers with a client), so an interrupted run keeps
them and later runs with the same teacher and data reuse them. The student then trains on random
crops of those windows, with flips, 90-degree rotations and mild colour jitter, against the
teacher's probabilities (KL divergence) and labels (cross-entropy).

Every random choice of step s is drawn from a generator seeded by (seed, s), and the state (student,
optimiser, step) is written every `checkpoint_every` steps, so a resumed run continues as an
uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import settings
from ..device import api_device
from ..errors import SegUnifyError
from ..files.manifest import file_sha256
from ..files.model_file import read_model_file, recorded_weights, save_model
from ..files.raster_io import open_raster
from ..files.training_state import read_training_state, write_training_state
from ..method.backbone import choose_precision
from ..method.legend import Legend
from ..method.student import FAST_KIND, FastConfig, FastModel, new_fast_model
from ..progress import Progress
from ..settings import DistillOptions
from .datasets import TrainingImage, plan_windows, training_images
from .feature_cache import FeatureCache, _file_fingerprint, build_sharded_cache, default_cache_dir

log = logging.getLogger("segunify")
STATE_FORMAT = "segunify-distill-state"
TEACHER_SHARD = 16  # windows per cache shard: what an interrupted teacher pass loses at most
AGREEMENT_WINDOWS = 32  # cached windows the final student-teacher agreement is measured on


def state_path(output: Path) -> Path:
    return output.with_name(output.stem + ".distill-state.safetensors")


def teacher_cache_dir(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir) if cache_dir else default_cache_dir().parent / "teacher"


def read_teacher(path: str | Path) -> dict[str, Any]:
    """A teacher model file's metadata; a fast model or another file is refused in one sentence."""
    meta, _ = read_model_file(path)
    if meta.get("kind") == FAST_KIND:
        raise SegUnifyError(f"'{path}' is a fast (distilled) model, not a teacher; distil from a model written by "
                            "`segunify train` or `tile-segment --save-model` (MODEL).")
    return meta


def _has_pixels(image: TrainingImage) -> bool:
    """Whether a raster has any valid pixel (judged on a decimated mask read)."""
    if image.potsdam_id is not None:
        return True
    with open_raster(image.path) as ds:
        shape = (min(ds.height, 512), min(ds.width, 512))
        return bool((ds.dataset_mask(out_shape=shape) > 0).any())


def _check_bands(images: Sequence[TrainingImage], bands: Sequence[int] | None) -> None:
    if not bands:
        return
    for image in images:
        if image.potsdam_id is not None:
            continue
        with open_raster(image.path) as ds:
            if max(bands) > ds.count:
                raise SegUnifyError(
                    f"The teacher was trained on bands {','.join(map(str, bands))} but '{image.path}' has {ds.count} "
                    "band(s); distil on rasters with those bands (DATA).")


def _usable(images: list[TrainingImage], bands: Sequence[int] | None):
    from .trainer import _usable_images

    _check_bands(images, bands)
    with_pixels = [im for im in images if _has_pixels(im)]
    if not with_pixels:
        raise SegUnifyError(f"No valid pixels in {', '.join(im.label for im in images[:3])} (every pixel is nodata "
                            "or masked); distil on rasters with image data (DATA).")
    return _usable_images(with_pixels, bands)


def _cache_key(teacher_sha: str, images, windows, window: int, options: DistillOptions, bands,
               weights: str | None, precision: str) -> str:
    payload = {"format": 1, "teacher": teacher_sha, "weights": _file_fingerprint(Path(weights)) if weights else None,
               "images": [(_file_fingerprint(im.path), im.potsdam_id) for im in images],
               "windows": [dataclasses.astuple(w) for w in windows], "window": window, "flip": options.flip,
               "crf": options.crf, "bands": list(bands) if bands else None, "precision": precision}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def _step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step + 7)


def augmented_batch(cache: FeatureCache, step: int, options: DistillOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """Step `step`'s crops: RGB (B, 3, c, c) 0..255 and teacher probabilities (B, K, c, c), each crop
    at a random place of a random window, flipped, rotated by a multiple of 90 degrees, and its RGB
    jittered (brightness, contrast, per-band gain within 10 %)."""
    gen = _step_generator(options.seed, step)
    n, _, size, _ = cache.shape
    crop = min(options.crop, size)
    idx = torch.randint(0, n, (options.batch_size,), generator=gen)
    tops = torch.randint(0, size - crop + 1, (options.batch_size,), generator=gen).tolist()
    lefts = torch.randint(0, size - crop + 1, (options.batch_size,), generator=gen).tolist()
    turns = torch.randint(0, 4, (options.batch_size,), generator=gen).tolist()
    flips = torch.randint(0, 2, (options.batch_size,), generator=gen).tolist()
    jitter = 1.0 + (torch.rand(options.batch_size, 5, generator=gen) - 0.5) * 0.2
    rgbs, probs = [], []
    for b, k in enumerate(idx.tolist()):
        window = torch.from_numpy(np.asarray(cache.features[k, :, tops[b]:tops[b] + crop,
                                                            lefts[b]:lefts[b] + crop], np.float32))
        window = torch.rot90(window, turns[b], (1, 2))
        if flips[b]:
            window = window.flip(2)
        rgb = window[:3]
        mean = rgb.mean()
        rgb = (rgb - mean) * jitter[b, 0] + mean * jitter[b, 1]  # contrast, brightness
        rgb = (rgb * jitter[b, 2:, None, None]).clamp(0, 255)  # per-band gain
        rgbs.append(rgb)
        probs.append(window[3:])
    return torch.stack(rgbs), torch.stack(probs)


def distillation_loss(logits: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """KL divergence to the teacher's probabilities and cross-entropy to its labels (per pixel, mean)."""
    log_probs = torch.log_softmax(logits, dim=1)
    teacher = teacher.clamp_min(1e-6)
    teacher = teacher / teacher.sum(1, keepdim=True)
    kl = (teacher * (teacher.log() - log_probs)).sum(1).mean()
    ce = F.nll_loss(log_probs, teacher.argmax(1))
    return kl, ce


def _learning_rate(options: DistillOptions, step: int) -> float:
    warm = min(1.0, (step + 1) / 20)  # a short warm-up: random BatchNorm statistics settle first
    return options.lr * warm * 0.5 * (1 + math.cos(math.pi * step / options.steps))


def _load_state(path: Path, model: FastModel, optimizer: torch.optim.Optimizer, identity: dict[str, Any]) -> int:
    state = read_training_state(path, STATE_FORMAT, f"Distillation state '{path}' is damaged; delete it and distil "
                                "without resuming (--resume).")
    if any(state.meta.get(k) != v for k, v in identity.items()):
        raise SegUnifyError(f"The distillation state '{path}' was made with another teacher, data or settings; rerun "
                            "with the same ones or start over without resuming (drop --resume).")
    state.restore(model, optimizer)
    return state.step


@torch.inference_mode()
def cache_agreement(model: FastModel, cache: FeatureCache, device: torch.device, count: int = AGREEMENT_WINDOWS) -> float:
    """Share of pixels where the student's label is the teacher's, on cached windows (seen in training)."""
    model.eval()
    same = total = 0
    multiple = model.config.patch_size
    for k in range(min(count, len(cache))):
        window = torch.from_numpy(np.asarray(cache.features[k], np.float32))
        size = window.shape[-1] // multiple * multiple
        rgb, probs = window[None, :3, :size, :size].to(device), window[3:, :size, :size].to(device)
        labels = model(rgb.contiguous(memory_format=torch.channels_last)).argmax(1)[0]
        same += int((labels == probs.argmax(0)).sum())
        total += labels.numel()
    return same / max(total, 1)


def distill(model_path: str | Path, data: Sequence[str | Path], output: str | Path,
            options: DistillOptions = DistillOptions(), client: Any = None, resume: bool = False,
            device: str = settings.DEVICE, precision: str = settings.PRECISION, fuse: bool | str = "auto",
            backbone_weights: str | Path | None = None, progress: Progress | None = None) -> FastModel:
    """Distil the model file `model_path` into a fast model written to `output` (atomically).

    Progress: ("teacher", windows done, windows) while the teacher's outputs are cached, then
    ("distill", step, steps, {"loss", "lr"}). With a Dask `client` the teacher runs on its workers
    (which must see the model, its backbone weights and the data at the same paths); the student
    trains here either way."""
    output, model_path = Path(output), Path(model_path)
    meta = read_teacher(model_path)
    if output.exists() and output.resolve() == model_path.resolve():
        raise SegUnifyError("The fast model would replace its teacher; give another file name (-o).")
    if options.crop % settings.STUDENT_MULTIPLE:
        raise SegUnifyError(f"The crop ({options.crop} px, --crop) must be a multiple of {settings.STUDENT_MULTIPLE}.")
    from ..files.model_file import model_config

    config = model_config(meta["config"])
    legend = Legend.of_model_file(meta)
    torch_device = api_device(device)
    chosen = choose_precision(precision, torch_device)
    recorded = recorded_weights(meta)
    weights = str(backbone_weights) if backbone_weights else (recorded.path if recorded else None)
    window = max(config.patch_size, settings.WINDOW // config.patch_size * config.patch_size)

    images, sizes, gsds = _usable(training_images(data), config.bands)
    scales = [(config.gsd / g) if (config.gsd and g) else 1.0 for g in gsds]
    windows = plan_windows(sizes, scales, window, options.max_windows, options.seed)
    windows.sort(key=lambda w: w.image)
    teacher_sha = file_sha256(model_path)
    key = _cache_key(teacher_sha, images, windows, window, options, config.bands, weights, chosen)
    teacher = (str(model_path.resolve()), weights, chosen, torch_device.type, fuse, options.crf)
    cache = build_sharded_cache(teacher_cache_dir(options.cache_dir) / key, client, images, windows, window,
                                config.bands, options.flip, None, teacher, torch_device.type, progress, "teacher",
                                shard_windows=TEACHER_SHARD)

    student_config = FastConfig(encoder=options.student, classes=config.classes, extra_clusters=config.extra_clusters,
                                gsd=config.gsd, bands=config.bands, backbone=config.backbone)
    model = new_fast_model(student_config, options.seed, options.student_weights).to(torch_device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.lr, weight_decay=1e-4)
    checkpoint = state_path(output)
    recorded_options = settings.as_json_dict(options)
    identity = {"cache_key": key, "options": {k: v for k, v in recorded_options.items()
                                              if k not in ("checkpoint_every", "cache_dir")}}
    step = 0
    if resume and checkpoint.is_file():
        step = _load_state(checkpoint, model, optimizer, identity)
        log.info("resuming from step %d", step)
    loss = float("nan")
    while step < options.steps:
        model.train()
        rgb, target = augmented_batch(cache, step, options)
        rgb, target = rgb.to(torch_device).contiguous(memory_format=torch.channels_last), target.to(torch_device)
        lr = _learning_rate(options, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        kl, ce = distillation_loss(model(rgb), target)
        optimizer.zero_grad(set_to_none=True)
        (kl + ce).backward()
        optimizer.step()
        step += 1
        loss = (kl + ce).item()
        if progress:
            progress("distill", step, options.steps, {"loss": loss, "kl": kl.item(), "ce": ce.item(), "lr": lr})
        if step % options.checkpoint_every == 0 and step < options.steps:
            write_training_state(checkpoint, model.state_dict(), optimizer,
                                 {"format": STATE_FORMAT, "step": step, **identity})
    model.eval()
    agreement = cache_agreement(model, cache, torch_device)
    model.legend = legend
    model.metadata = {
        "kind": FAST_KIND,
        "teacher": {"file": model_path.name, "sha256": teacher_sha, "backbone": config.backbone,
                    "backbone_weights": weights or "hub", "precision": chosen, "flip": options.flip,
                    "crf": options.crf},
        "normalisation": model.normalisation,
        "distillation": {"options": recorded_options, "images": len(images), "windows": len(windows),
                         "window": window, "files": [im.label for im in images[:20]], "final_loss": loss,
                         "agreement_on_training_windows": agreement},
    }
    save_model(model, output)  # type: ignore[arg-type]  # the same container: config, legend, metadata, tensors
    checkpoint.unlink(missing_ok=True)
    return model
