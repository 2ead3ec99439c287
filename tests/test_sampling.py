"""Epoch-wise sampling (the reference's DataLoader(shuffle=True, drop_last=True)) against step-wise
sampling: which windows each training step takes, and that a resumed run takes the same ones."""

import pytest
import torch

from segunify_core import settings
from segunify_core.training.trainer import TrainConfig, Trainer, batch_windows, new_model, steps_per_epoch


class RecordingCache:
    """A feature cache of `n` random windows that records the windows each batch reads."""

    def __init__(self, n: int, channels: int, grid: int = 4, views: int = 2):
        self.features = torch.randn(n, views, channels, grid, grid, generator=torch.Generator().manual_seed(0))
        self.views = views
        self.batches: list[list[int]] = []

    def __len__(self) -> int:
        return self.features.shape[0]

    def batch(self, indices: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        self.batches.append(indices.tolist())
        return self.features[indices, views]


def config(**kw) -> TrainConfig:
    return TrainConfig(**{"classes": 3, "steps": 12, "batch_size": 3, "seed": 5, **kw})


def run(backbone, cache: RecordingCache, cfg: TrainConfig, steps: int) -> Trainer:
    trainer = Trainer(new_model(backbone, cfg, None), cache, cfg)  # type: ignore[arg-type]
    for _ in range(steps):
        trainer.train_step()
    return trainer


def test_epoch_sampling_is_the_default_and_the_presets_setting():
    from segunify_core.training.presets import SEGUNIFY_POTSDAM

    assert TrainConfig().sampling == settings.SAMPLING == "epoch"
    assert SEGUNIFY_POTSDAM.values()["sampling"] == "epoch"


def test_every_window_once_per_epoch_in_a_new_order(tiny_backbone):
    """10 windows at batch 3: 3 steps per epoch take 9 distinct windows, the 10th (the last
    incomplete batch) is dropped; each epoch is another permutation."""
    cache = RecordingCache(10, tiny_backbone.feature_dim)
    run(tiny_backbone, cache, config(sampling="epoch"), 12)
    per_epoch = steps_per_epoch(10, 3)
    assert per_epoch == 3
    epochs = [sum(cache.batches[e * per_epoch:(e + 1) * per_epoch], []) for e in range(4)]
    assert all(len(batch) == 3 for batch in cache.batches)
    for order in epochs:
        assert len(order) == 9 and len(set(order)) == 9 and set(order) <= set(range(10)), order
    assert len({tuple(order) for order in epochs}) == 4, "every epoch has its own order"
    assert len({frozenset(order) for order in epochs}) > 1, "the dropped window changes with the order"


def test_step_sampling_draws_each_batch_independently(tiny_backbone):
    """The other option: batches are drawn afresh, so over an epoch's worth of steps some window
    repeats (and another is skipped)."""
    cache = RecordingCache(10, tiny_backbone.feature_dim)
    run(tiny_backbone, cache, config(sampling="step"), 12)
    assert all(len(set(batch)) == 3 for batch in cache.batches), "a batch still has distinct windows"
    orders = [sum(cache.batches[e * 3:(e + 1) * 3], []) for e in range(4)]
    assert any(len(set(order)) < 9 for order in orders)


def test_a_batch_larger_than_the_data_takes_every_window_each_step():
    for step in range(4):
        indices = batch_windows("epoch", 0, step, 5, 32, torch.Generator().manual_seed(step))
        assert sorted(indices.tolist()) == list(range(5))
    with pytest.raises(ValueError, match="sampling"):
        batch_windows("epochs", 0, 0, 5, 2, torch.Generator())


@pytest.mark.parametrize("sampling", settings.SAMPLINGS)
def test_resume_mid_epoch_takes_the_same_batches_and_gives_the_same_model(tiny_backbone, tmp_path, sampling):
    """Stopped after step 4 (the middle of epoch 1: 3 steps per epoch), saved, loaded into a new
    trainer and continued: the same batches as an uninterrupted run, and the same model."""
    cfg = config(sampling=sampling)
    full_cache = RecordingCache(10, tiny_backbone.feature_dim)
    full = run(tiny_backbone, full_cache, cfg, 8)
    first_cache = RecordingCache(10, tiny_backbone.feature_dim)
    first = run(tiny_backbone, first_cache, cfg, 4)
    first.save_state(tmp_path / "state.safetensors", {})
    second_cache = RecordingCache(10, tiny_backbone.feature_dim)
    second = Trainer(new_model(tiny_backbone, cfg, None), second_cache, cfg)  # type: ignore[arg-type]
    second.load_state(tmp_path / "state.safetensors")
    assert second.step == 4
    for _ in range(4):
        second.train_step()
    assert first_cache.batches + second_cache.batches == full_cache.batches
    for name, tensor in full.model.head_state().items():
        assert torch.equal(tensor, second.model.head_state()[name]), name


def test_unknown_sampling_is_refused_naming_the_flag():
    from segunify_core.errors import SegUnifyError

    with pytest.raises(SegUnifyError, match=r"--sampling"):
        config(sampling="shuffle").check()
