"""Training: sample windows, cache their features once, minimise the energy with Adam.

Every random choice of step s (batch, flip view, derangement, dropout) is drawn from generators
seeded by (seed, s), so a run resumed from a checkpoint continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .backbone import Backbone, create_backbone
from .datasets import TrainingImage, training_images
from .errors import SegUnifyError
from .features import (
    FeatureCache,
    WindowReader,
    build_cache,
    build_cache_on_cluster,
    cache_key,
    default_cache_dir,
    plan_windows,
)
from .legend import cluster_shares
from .losses import energy
from .model import ModelConfig, SegUnifyModel, save_model, write_safetensors

log = logging.getLogger("segunify")
STATE_FORMAT = "segunify-train-state"


@dataclasses.dataclass
class TrainConfig:
    classes: int = 3
    extra_clusters: int = 0
    window: int = 224
    steps: int = 3000
    batch_size: int = 32
    lr_compressor: float = 1e-4
    lr_labeler: float = 5e-4
    weight_decay: float = 1e-5
    poly_power: float = 2.0
    alpha: float = 0.998
    temperature: float = 0.1
    shift_intra: float = 0.1
    shift_inter: float = 0.5
    pointwise: bool = True
    code_dim: int = 64
    dropout: float = 0.2
    nonlinear: bool = True
    outer_silu: bool = False
    seed: int = 0
    max_windows: int = 2000
    five_crop: bool = False
    crop_ratio: float = 0.5
    flip: bool = True
    checkpoint_every: int = 400
    feature_crop: int | None = None  # train on random crops of this many patches of the cached grids
    bands: list[int] | None = None
    gsd: float | None = None  # target GSD in metres; default: the median GSD of the data
    local_sets: int = 1  # local prototype sets learning against the one global set (1: the published model)


def _step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def learning_rate(base: float, step: int, steps: int, power: float) -> float:
    """Polynomial decay lr * (1 - step/steps)^power."""
    return base * (1.0 - step / steps) ** power


class Trainer:
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

    def train_step(self) -> dict[str, float]:
        c = self.config
        gen = _step_generator(c.seed, self.step)
        torch.manual_seed(c.seed * 1_000_003 + self.step)  # dropout
        n = len(self.cache)
        batch = min(c.batch_size, n)
        indices = torch.randperm(n, generator=gen)[:batch]
        views = torch.randint(0, self.cache.views, (batch,), generator=gen)
        feats = self.cache.batch(indices, views)
        crop = c.feature_crop
        if crop and crop < min(feats.shape[-2:]):
            top = int(torch.randint(0, feats.shape[-2] - crop + 1, (1,), generator=gen))
            left = int(torch.randint(0, feats.shape[-1] - crop + 1, (1,), generator=gen))
            feats = feats[..., top:top + crop, left:left + crop]
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(group["base_lr"], self.step, c.steps, c.poly_power)
        self.model.compressor.train()
        perturbed = self.model.compressor.perturb(feats)
        code = self.model.compressor.encode(perturbed)
        terms = energy(perturbed, self.model.labeler.teacher_logits(code),
                       self.model.labeler.student_logits(code), c.temperature, c.shift_intra,
                       c.shift_inter, c.pointwise, gen)
        self.optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        self.optimizer.step()
        self.model.labeler.ema_update(c.alpha)
        self.step += 1
        return {"loss": terms.total.item(), "closeness": terms.closeness.item(),
                "cross": terms.cross_image.item(), "data": terms.data.item(),
                "lr": self.optimizer.param_groups[0]["lr"]}

    # Training state: safetensors tensors + JSON, like the model file (never pickled).
    def save_state(self, path: Path, extra: dict[str, Any]) -> None:
        tensors = {f"model.{k}": v.detach().contiguous() for k, v in self.model.head_state().items()}
        opt = self.optimizer.state_dict()
        for idx, state in opt["state"].items():
            for name, value in state.items():
                tensors[f"optim.{idx}.{name}"] = torch.as_tensor(value).detach().clone().contiguous()
        meta = {"format": STATE_FORMAT, "step": self.step, "config": dataclasses.asdict(self.config), **extra}
        write_safetensors(path, tensors, meta)

    def load_state(self, path: Path) -> dict[str, Any]:
        from safetensors import safe_open
        from safetensors.torch import load_file

        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = json.loads((handle.metadata() or {})["segunify"])
            tensors = load_file(str(path))
            assert meta["format"] == STATE_FORMAT
        except Exception:
            raise SegUnifyError(f"Training checkpoint '{path}' is damaged or not a SegUnify "
                                "checkpoint; delete it and train without --resume.") from None
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")},
                                   strict=False)
        opt = self.optimizer.state_dict()
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, idx, name = key.split(".", 2)
                state.setdefault(int(idx), {})[name] = value
        opt["state"] = state
        self.optimizer.load_state_dict(opt)
        self.step = int(meta["step"])
        return meta


def new_model(backbone: Backbone, config: TrainConfig, gsd: float | None) -> SegUnifyModel:
    """A freshly initialised (seeded) Compressor and Labeler for this backbone and configuration."""
    model_config = ModelConfig(
        backbone=backbone.spec.name, classes=config.classes, extra_clusters=config.extra_clusters,
        code_dim=config.code_dim, dropout=config.dropout, nonlinear=config.nonlinear,
        outer_silu=config.outer_silu, feature_width=backbone.width, patch_size=backbone.patch_size,
        bands=config.bands, gsd=gsd, local_sets=config.local_sets)
    torch.manual_seed(config.seed)  # prototype and layer initialisation
    return SegUnifyModel(model_config)


def state_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.stem + ".train-state.safetensors")


def train(data: Sequence[str | Path], output: str | Path, config: TrainConfig,
          backbone_name: str = "dino_vits8", backbone_weights: str | None = None,
          backbone: Backbone | None = None, cache_dir: str | Path | None = None,
          resume: bool = False, device: str = "cpu", potsdam_split: str = "all_train",
          on_progress: Callable[[str, int, int, dict[str, float]], None] | None = None,
          client: Any = None) -> SegUnifyModel:
    """Train a model on orthophotos and write it to `output` (safetensors + JSON metadata).

    With a Dask `client`, the feature cache is computed on its workers (which must see the data
    and the backbone weights at the same paths); the head trains here either way."""
    output = Path(output)
    torch_device = torch.device(device)
    if config.local_sets < 1:
        raise SegUnifyError("--local-sets must be at least 1 (1 is the published single set).")
    if config.steps < 1 or config.batch_size < 2:
        raise SegUnifyError("Training needs --steps >= 1 and --batch-size >= 2 (cross-image "
                            "smoothness pairs different images).")
    if backbone is None:
        backbone = create_backbone(backbone_name, backbone_weights)
    backbone = backbone.to(torch_device)
    if config.window % backbone.patch_size:
        raise SegUnifyError(f"--window {config.window} is not a multiple of the backbone's patch size "
                            f"{backbone.patch_size}; pick e.g. {config.window // backbone.patch_size * backbone.patch_size}.")

    images, sizes, gsds = _usable_images(training_images(data, potsdam_split), config.bands)
    known = [g for g in gsds if g]
    target_gsd = config.gsd or (statistics.median(known) if known else None)
    scales = [(target_gsd / g) if (target_gsd and g) else 1.0 for g in gsds]
    windows = plan_windows(sizes, scales, config.window, config.max_windows, config.seed,
                           config.five_crop, config.crop_ratio)
    windows.sort(key=lambda w: w.image)  # the reader opens each image once
    key = cache_key(images, windows, config.window, backbone, backbone_weights, config.flip, config.bands)
    folder = Path(cache_dir or default_cache_dir()) / key
    cache_progress = (lambda d, t: on_progress("features", d, t, {})) if on_progress else None
    if client is not None:
        cache = build_cache_on_cluster(folder, client, images, windows, config.window, config.bands, backbone,
                                       backbone_weights, config.flip, torch_device.type, cache_progress)
    else:
        reader = WindowReader(images, windows, config.window, config.bands)
        try:
            cache = build_cache(folder, len(windows), reader, config.window, backbone, config.flip,
                                device=torch_device, progress=cache_progress)
        finally:
            reader.close()

    model = new_model(backbone, config, target_gsd)
    trainer = Trainer(model, cache, config)
    checkpoint = state_path(output)
    if resume and checkpoint.is_file():
        meta = trainer.load_state(checkpoint)
        if meta.get("cache_key") != key or meta["config"] != dataclasses.asdict(config):
            raise SegUnifyError(f"Checkpoint '{checkpoint}' was made with other data or settings; "
                                "rerun with the same ones or drop --resume.")
        log.info("resuming from step %d", trainer.step)
    summary = {
        "images": len(images), "windows": len(windows), "pixels": int(sum(w * h for w, h in sizes)),
        "gsd_m": target_gsd, "files": [im.label for im in images[:20]],
    }
    while trainer.step < config.steps:
        stats = trainer.train_step()
        if on_progress:
            on_progress("train", trainer.step, config.steps, stats)
        if trainer.step % config.checkpoint_every == 0 and trainer.step < config.steps:
            trainer.save_state(checkpoint, {"cache_key": key})
    model.backbone = backbone
    model.eval()
    model.metadata = {"training": {"config": dataclasses.asdict(config), "data": summary,
                                   "backbone_weights": str(backbone_weights) if backbone_weights else "hub",
                                   "cluster_shares": cluster_shares(model, cache)}}
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
        gsds.append(getattr(source, "gsd", None))
        source.close()
    if skipped:
        log.warning("skipped %d unreadable training image(s), e.g. %s", len(skipped), skipped[0][1])
    if not usable:
        raise SegUnifyError("None of the training images could be read; check the data paths.")
    return usable, sizes, gsds
