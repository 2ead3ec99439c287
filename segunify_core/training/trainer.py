"""Training: sample windows, cache their features once, minimise the energy with Adam.

Every random choice of step s (flip view, crop, cross-image pairing, dropout masks, and with step
sampling the batch) is drawn from generators seeded by (seed, s); with epoch sampling the batch is
a slice of epoch e's permutation, drawn from a generator seeded by (seed, e). So a run resumed from
a checkpoint continues exactly as an uninterrupted one. The procedures the reference ran differently from the method's text (METHOD.md,
"What the reference run actually did") are options: the learning-rate schedule, the dropout masks,
the EMA order, the cross-image pairing, the resize of training windows, the Potsdam split and
mixed precision; `presets.py` names the combination the reference ran.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .. import settings
from ..device import api_device
from ..errors import SegUnifyError
from ..files.model_file import save_model
from ..files.training_state import TrainingState, read_training_state, write_training_state
from ..method.backbone import Backbone, create_backbone
from ..method.losses import energy
from ..method.model import HeadConfig, ModelConfig, SegUnifyModel
from ..progress import Progress
from .datasets import TrainingImage, TrainWindowReader, plan_windows, training_images
from .feature_cache import FeatureCache, build_cache, build_cache_on_cluster, cache_key, default_cache_dir

log = logging.getLogger("segunify")
STATE_FORMAT = "segunify-train-state"
LR_SCHEDULES = settings.LR_SCHEDULES
EMA_ORDERS = settings.EMA_ORDERS
# TrainConfig fields that take one of a list of values -> that list (settings.py)
CHOICES = {"lr_schedule": settings.LR_SCHEDULES, "dropout_masks": settings.DROPOUT_MASKS_CHOICES,
           "ema_order": settings.EMA_ORDERS, "pairing": settings.PAIRINGS, "sampling": settings.SAMPLINGS,
           "resize": settings.RESIZE_MODES, "potsdam_split": settings.POTSDAM_TRAIN_SPLITS}


@dataclasses.dataclass
class TrainConfig(HeadConfig):
    """What to train: the head (HeadConfig's fields) and how."""

    window: int = settings.TRAIN_WINDOW
    steps: int = settings.STEPS
    batch_size: int = settings.BATCH_SIZE
    lr_compressor: float = settings.LR_COMPRESSOR
    lr_labeler: float = settings.LR_LABELER
    weight_decay: float = settings.WEIGHT_DECAY
    poly_power: float = settings.POLY_POWER
    alpha: float = settings.ALPHA
    temperature: float = settings.TEMPERATURE
    shift_intra: float = settings.SHIFT_INTRA
    shift_inter: float = settings.SHIFT_INTER
    pointwise: bool = settings.POINTWISE
    seed: int = settings.SEED
    max_windows: int = settings.MAX_WINDOWS
    five_crop: bool = settings.FIVE_CROP
    crop_ratio: float = settings.CROP_RATIO
    flip: bool = settings.FLIP
    checkpoint_every: int = settings.CHECKPOINT_EVERY
    feature_crop: int | None = None  # train on random crops of this many patches of the cached grids
    gsd: float | None = None  # target GSD in metres; default: the median GSD of the data
    lr_schedule: str = settings.LR_SCHEDULE
    dropout_masks: str = settings.DROPOUT_MASKS
    ema_order: str = settings.EMA_ORDER
    pairing: str = settings.PAIRING
    sampling: str = settings.SAMPLING  # epoch: each window once per epoch; step: independent batches
    resize: str = settings.RESIZE  # how training windows are resampled
    potsdam_split: str = settings.POTSDAM_TRAIN_SPLIT  # the training split when DATA is a Potsdam folder
    amp: bool = settings.AMP  # float16 autocast + gradient scaling on CUDA (float32 elsewhere)
    val_every: int = settings.VAL_EVERY  # steps between validation scores (with validation data)
    preset: str | None = None  # the preset these values started from (presets.py)
    preset_overrides: list[str] = dataclasses.field(default_factory=list)  # fields set over the preset

    def check(self) -> None:
        """Raise SegUnifyError for a value training cannot use."""
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise SegUnifyError(f"Unknown {name.replace('_', ' ')} '{getattr(self, name)}'; use one of "
                                    f"{', '.join(allowed)} ({flag(name)}).")
        if self.steps < settings.MIN_STEPS or self.batch_size < settings.MIN_BATCH_SIZE:
            raise SegUnifyError("Training needs at least 1 step (--steps) and a batch size of at least 2 "
                                "(--batch-size): cross-image smoothness pairs different images.")
        if self.local_sets < 1:
            raise SegUnifyError("The number of local prototype sets (--local-sets) must be at least 1 (1 is the "
                                "published single set).")
        if min(self.val_every, self.checkpoint_every) < settings.MIN_INTERVAL:
            raise SegUnifyError("The validation interval (--val-every) and checkpoint interval (--checkpoint-every) "
                                "must be at least 1 step.")


def flag(field: str) -> str:
    """The `segunify train` flag that sets a TrainConfig field (or the backbone)."""
    return {"potsdam_split": "--split"}.get(field, "--" + field.replace("_", "-"))


def _step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def epoch_order(seed: int, epoch: int, n_windows: int) -> torch.Tensor:
    """Epoch `epoch`'s permutation of the training windows (epoch sampling), from a generator seeded
    by (seed, epoch) alone, so a resumed run draws the same order (and none shares a step's seed)."""
    digest = hashlib.sha256(f"segunify-epoch:{seed}:{epoch}".encode()).digest()
    return torch.randperm(n_windows, generator=torch.Generator().manual_seed(int.from_bytes(digest[:8], "little")))


def batch_windows(sampling: str, seed: int, step: int, n_windows: int, batch_size: int,
                  generator: torch.Generator) -> torch.Tensor:
    """The cache indices step `step` trains on: `min(batch_size, n_windows)` distinct windows.

    epoch: consecutive slices of each epoch's permutation, the last incomplete batch dropped (as
    DataLoader(shuffle=True, drop_last=True)); step: drawn afresh from the step's `generator`."""
    batch = min(batch_size, n_windows)
    if sampling == "step":
        return torch.randperm(n_windows, generator=generator)[:batch]
    if sampling != "epoch":
        raise ValueError(f"sampling must be one of {settings.SAMPLINGS}, not {sampling!r}")
    per_epoch = steps_per_epoch(n_windows, batch)
    epoch, position = divmod(step, per_epoch)
    return epoch_order(seed, epoch, n_windows)[position * batch:(position + 1) * batch]


def learning_rate(base: float, step: int, steps: int, power: float) -> float:
    """Polynomial decay lr * (1 - step/steps)^power."""
    return base * (1.0 - step / steps) ** power


def steps_per_epoch(n_windows: int, batch_size: int) -> int:
    """Full batches in one pass over the training windows: the reference's framework drops the
    last incomplete batch (4545 Potsdam images at batch 32: 142 steps)."""
    return max(1, n_windows // batch_size)


def lr_factor(schedule: str, step: int, steps: int, power: float, epoch_steps: int) -> float:
    """The factor on the base learning rates at `step` (0-based) under `schedule`."""
    if schedule == "constant":
        return 1.0
    if schedule == "poly-epoch":  # the polynomial stepped once per epoch, over `steps` epochs
        return (1.0 - (step // epoch_steps) / steps) ** power
    if schedule == "poly-step":
        return (1.0 - step / steps) ** power
    raise ValueError(f"lr schedule must be one of {LR_SCHEDULES}, not {schedule!r}")


def read_train_state(path: Path) -> TrainingState:
    """A training checkpoint; SegUnifyError for anything else."""
    return read_training_state(path, STATE_FORMAT, f"Training checkpoint '{path}' is damaged or not a SegUnify "
                               "checkpoint; delete it and train without resuming (--resume).")


class Trainer:
    """Trains the model's Compressor and Labeler on a feature cache, on the model's device."""

    def __init__(self, model: SegUnifyModel, cache: FeatureCache, config: TrainConfig):
        self.model, self.cache, self.config = model, cache, config
        self.optimizer = torch.optim.Adam(
            [
                {"params": list(model.compressor.parameters()), "lr": config.lr_compressor,
                 "base_lr": config.lr_compressor},
                {"params": list(model.labeler.parameters()), "lr": config.lr_labeler,
                 "base_lr": config.lr_labeler},
            ],
            weight_decay=config.weight_decay,
        )
        self.step = 0
        self.extra_tensors: dict[str, torch.Tensor] = {}
        self.epoch_steps = steps_per_epoch(len(cache), config.batch_size)
        self.device = model.labeler.local_prototypes.device
        self.amp = config.amp and self.device.type == "cuda"
        if config.amp and not self.amp:
            log.info("--amp: mixed precision runs on CUDA GPUs only; training in float32 on %s.", self.device.type)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp else None

    def train_step(self) -> dict[str, float]:
        c = self.config
        gen = _step_generator(c.seed, self.step)
        feats = (self._batch(gen) if len(self.cache) > 1 else self._one_window_batch(gen)).to(self.device)
        factor = lr_factor(c.lr_schedule, self.step, c.steps, c.poly_power, self.epoch_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        compressor, labeler = self.model.compressor, self.model.labeler
        compressor.train()
        # The masks come from the step's own generator (CPU), drawn before the pairing.
        linear_in, nonlinear_in, affinity = compressor.perturbed_inputs(feats, gen, c.dropout_masks)
        autocast = (torch.autocast("cuda", dtype=torch.float16) if self.amp else contextlib.nullcontext())
        with autocast:
            code = compressor.encode_branches(linear_in, nonlinear_in)
            terms = energy(affinity, labeler.teacher_logits(code), labeler.student_logits(code), c.temperature,
                           c.shift_intra, c.shift_inter, c.pointwise, gen, c.pairing)
        if c.ema_order == "before":  # the reference: inside the step, from the local prototypes before it
            labeler.ema_update(c.alpha)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(terms.total).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            terms.total.backward()
            self.optimizer.step()
        if c.ema_order == "after":
            labeler.ema_update(c.alpha)
        self.step += 1
        return {"loss": terms.total.item(), "closeness": terms.closeness.item(),
                "cross": terms.cross_image.item(), "data": terms.data.item(),
                "lr": self.optimizer.param_groups[0]["lr"]}

    def _batch(self, gen: torch.Generator) -> torch.Tensor:
        """Distinct windows (a random view of each), all cropped at one random place of the grid."""
        c = self.config
        indices = batch_windows(c.sampling, c.seed, self.step, len(self.cache), c.batch_size, gen)
        views = torch.randint(0, self.cache.views, (len(indices),), generator=gen)
        feats = self.cache.batch(indices, views)
        crop = c.feature_crop
        if crop and crop < min(feats.shape[-2:]):
            top = int(torch.randint(0, feats.shape[-2] - crop + 1, (1,), generator=gen))
            left = int(torch.randint(0, feats.shape[-1] - crop + 1, (1,), generator=gen))
            feats = feats[..., top:top + crop, left:left + crop]
        return feats

    def _one_window_batch(self, gen: torch.Generator) -> torch.Tensor:
        """A cache of one window (a raster smaller than two windows) has no second image to pair
        with: the batch is its views, drawn with replacement, each cropped at its own random place
        (three quarters of the grid, or `feature_crop` if smaller), so the pairs are different
        regions."""
        c = self.config
        views = torch.randint(0, self.cache.views, (c.batch_size,), generator=gen)
        if self.cache.views > 1:  # the window and its mirror both take part
            views[:2] = torch.randperm(2, generator=gen)
        grid = self.cache.batch(torch.zeros(c.batch_size, dtype=torch.long), views)
        h, w = grid.shape[-2:]
        crop = max(1, min(c.feature_crop or h, h, w, (3 * min(h, w)) // 4))
        tops = torch.randint(0, h - crop + 1, (c.batch_size,), generator=gen).tolist()
        lefts = torch.randint(0, w - crop + 1, (c.batch_size,), generator=gen).tolist()
        return torch.stack([g[:, t:t + crop, x:x + crop] for g, t, x in zip(grid, tops, lefts, strict=True)])

    # Training state: safetensors tensors + JSON, like the model file (never pickled).
    def save_state(self, path: Path, extra: dict[str, Any],
                   extra_tensors: dict[str, torch.Tensor] | None = None) -> None:
        """extra: JSON-able values; extra_tensors: more tensors (read back as `self.extra_tensors`)."""
        meta = {"format": STATE_FORMAT, "step": self.step, "config": dataclasses.asdict(self.config), **extra}
        if self.scaler is not None:
            meta["scaler"] = self.scaler.state_dict()
        write_training_state(path, self.model.head_state(), self.optimizer, meta, extra_tensors)

    def load_state(self, path: Path) -> dict[str, Any]:
        state = read_train_state(path)
        state.restore(self.model, self.optimizer, strict=False)  # the backbone is not in the state
        self.extra_tensors = state.extra
        if self.scaler is not None and "scaler" in state.meta:
            self.scaler.load_state_dict(state.meta["scaler"])
        self.step = state.step
        return state.meta


def new_model(backbone: Backbone, config: TrainConfig, gsd: float | None) -> SegUnifyModel:
    """A freshly initialised (seeded) Compressor and Labeler for this backbone and configuration."""
    head = {f.name: getattr(config, f.name) for f in dataclasses.fields(HeadConfig)}
    model_config = ModelConfig(**head, backbone=backbone.spec.name, feature_dim=backbone.feature_dim,
                               patch_size=backbone.patch_size, gsd=gsd)
    # Seeded initialisation (on the CPU) that leaves the caller's generators as they were: only the CPU
    # generator is saved and reseeded (torch.manual_seed would reseed every GPU's generator too).
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(config.seed)
        return SegUnifyModel(model_config)


@torch.no_grad()
def cluster_shares(model: SegUnifyModel, cache: FeatureCache, batch_size: int = 32) -> list[float]:
    """Share of the cached training windows' patches that the global prototypes give each cluster
    (the first view of every window; the Compressor in evaluation mode, as at inference)."""
    was_training = model.compressor.training
    model.compressor.eval()
    counts = torch.zeros(model.config.n_clusters, dtype=torch.float64)
    try:
        for start in range(0, len(cache), batch_size):
            idx = torch.arange(start, min(start + batch_size, len(cache)))
            code = model.compressor(cache.batch(idx, torch.zeros_like(idx)))
            labels = model.labeler.teacher_logits(code).argmax(1)
            counts += torch.bincount(labels.flatten(), minlength=counts.numel()).double()
    finally:
        model.compressor.train(was_training)
    return (counts / counts.sum().clamp_min(1)).tolist()


def state_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.stem + ".train-state.safetensors")


def train(data: Sequence[str | Path], output: str | Path, config: TrainConfig,
          backbone_name: str = settings.BACKBONE, backbone_weights: str | None = None,
          backbone: Backbone | None = None, cache_dir: str | Path | None = None,
          resume: bool = False, device: str = settings.DEVICE, potsdam_split: str | None = None,
          on_progress: Progress | None = None,
          client: Any = None, val: str | Path | None = None) -> SegUnifyModel:
    """Train a model on orthophotos and write it to `output` (safetensors + JSON metadata).

    With `val` (labelled data: a Potsdam folder, whose fixed validation subset of labelled_train is
    used, or a folder with images/ and labels/), the model is scored every `config.val_every` steps
    and at the end, and the one with the best validation mIoU is written; validation images are
    kept out of the training data. No test split is ever read.

    With a Dask `client`, the feature cache is computed on its workers (which must see the data
    and the backbone weights at the same paths); the head trains here either way.
    `potsdam_split` (older callers) overrides `config.potsdam_split`."""
    from .evaluation import ValidationData, Validator

    output = Path(output)
    torch_device = api_device(device)
    if potsdam_split is not None:
        config = dataclasses.replace(config, potsdam_split=potsdam_split)
    config.check()
    if backbone is None:
        backbone = create_backbone(backbone_name, backbone_weights)
    if backbone_weights is None and backbone.weights is not None:  # cache key and cluster workers name the file
        backbone_weights = backbone.weights.path
    backbone = backbone.to(torch_device)
    if config.window % backbone.patch_size:
        raise SegUnifyError(f"The training window ({config.window} px, --window) is not a multiple of the backbone's patch size "
                            f"{backbone.patch_size}; pick e.g. {config.window // backbone.patch_size * backbone.patch_size}.")

    validation = ValidationData.open(val, bands=config.bands) if val is not None else None
    exclude = validation.training_keys if validation else frozenset()
    images, sizes, gsds = _usable_images(training_images(data, config.potsdam_split, exclude), config.bands)
    known = [g for g in gsds if g]
    target_gsd = config.gsd or (statistics.median(known) if known else None)
    scales = [(target_gsd / g) if (target_gsd and g) else 1.0 for g in gsds]
    windows = plan_windows(sizes, scales, config.window, config.max_windows, config.seed,
                           config.five_crop, config.crop_ratio)
    windows.sort(key=lambda w: w.image)  # the reader opens each image once
    # on_progress always gets stats (empty outside "train"), as callers written for train() expect
    phases = (lambda phase, done, total, stats=None: on_progress(phase, done, total, stats or {})) if on_progress else None
    key = cache_key(images, windows, config.window, backbone, backbone_weights, config.flip, config.bands,
                    config.resize)
    cache_root = Path(cache_dir or default_cache_dir())
    folder = cache_root / key
    if client is not None:
        cache = build_cache_on_cluster(folder, client, images, windows, config.window, config.bands, backbone,
                                       backbone_weights, config.flip, torch_device.type, phases,
                                       resize=config.resize)
    else:
        reader = TrainWindowReader(images, windows, config.window, config.bands, config.resize)
        try:
            cache = build_cache(folder, len(windows), reader, config.window, backbone, config.flip,
                                device=torch_device, progress=phases)
        finally:
            reader.close()
    validator = None
    if validation is not None:
        validator = Validator(validation, backbone, backbone_weights, cache_root, torch_device, phases)

    model = new_model(backbone, config, target_gsd).to(torch_device)
    trainer = Trainer(model, cache, config)
    checkpoint = state_path(output)
    history: list[dict[str, float]] = []
    best: dict[str, torch.Tensor] | None = None
    if resume and checkpoint.is_file():
        meta = trainer.load_state(checkpoint)
        if meta.get("cache_key") != key or meta.get("config") != dataclasses.asdict(config) \
                or meta.get("validation") != (validation.description if validation else None):
            raise SegUnifyError(f"Checkpoint '{checkpoint}' was made with other data or settings; "
                                "rerun with the same ones or start over without resuming (drop --resume).")
        history = meta.get("history", [])
        best = {k[5:]: v for k, v in trainer.extra_tensors.items() if k.startswith("best.")} or None
        log.info("resuming from step %d", trainer.step)
    summary = {
        "images": len(images), "windows": len(windows), "pixels": int(sum(w * h for w, h in sizes)),
        "gsd_m": target_gsd, "files": [im.label for im in images[:20]],
        "steps_per_epoch": trainer.epoch_steps,
    }
    while trainer.step < config.steps:
        stats = trainer.train_step()
        if on_progress:
            on_progress("train", trainer.step, config.steps, stats)
        if validator is not None and (trainer.step % config.val_every == 0 or trainer.step == config.steps):
            scores = validator.score(model)
            history.append({"step": trainer.step, "accuracy": scores.accuracy, "miou": scores.miou})
            if best is None or scores.miou > max(h["miou"] for h in history[:-1]):
                best = {k: v.detach().clone() for k, v in model.head_state().items()}
            log.info("step %d: validation accuracy %.4f, mIoU %.4f", trainer.step, scores.accuracy, scores.miou)
        if trainer.step % config.checkpoint_every == 0 and trainer.step < config.steps:
            extra = {"cache_key": key, "validation": validation.description if validation else None,
                     "history": history}
            trainer.save_state(checkpoint, extra, {f"best.{k}": v for k, v in (best or {}).items()})
    training: dict[str, Any] = {"config": dataclasses.asdict(config), "data": summary,
                                "backbone_weights": str(backbone_weights) if backbone_weights else "hub",
                                "amp": trainer.amp}
    if validation is not None and best is not None:
        model.load_state_dict(best, strict=False)
        top = max(history, key=lambda h: h["miou"])
        training["validation"] = {**validation.description, "every": config.val_every, "history": history,
                                  "best_step": top["step"], "best_miou": top["miou"],
                                  "best_accuracy": top["accuracy"]}
        log.info("kept the model of step %d (validation mIoU %.4f)", top["step"], top["miou"])
    model.backbone = backbone
    model.eval()
    training["cluster_shares"] = cluster_shares(model, cache)
    model.metadata = {"training": training}
    save_model(model, output)
    checkpoint.unlink(missing_ok=True)
    return model


def _usable_images(images: list[TrainingImage], bands) -> tuple[list[TrainingImage], list, list]:
    """Open each image once for its size and GSD; skip unreadable ones with a warning."""
    usable, sizes, gsds, skipped = [], [], [], []
    for image in images:
        try:
            source = image.open(bands)
        except SegUnifyError as exc:
            skipped.append((image.label, str(exc)))
            continue
        usable.append(image)
        sizes.append((source.width, source.height))
        gsds.append(source.gsd)
        source.close()
    if skipped:
        log.warning("skipped %d unreadable training image(s), e.g. %s", len(skipped), skipped[0][1])
    if not usable:
        raise SegUnifyError("None of the training images could be read; check the data paths.")
    return usable, sizes, gsds
