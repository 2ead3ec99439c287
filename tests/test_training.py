"""Training: feature cache, determinism, checkpoints and resume."""

import numpy as np
import pytest
import torch

from segunify_core.files.model_file import load_model
from segunify_core.training.datasets import plan_windows
from segunify_core.training.trainer import TrainConfig, learning_rate, state_path, train


class CountingBackbone(torch.nn.Module):
    """Wraps a backbone and counts forward calls (to prove cached steps skip it)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0
        self.spec, self.patch_size, self.feature_dim, self.precision = inner.spec, inner.patch_size, inner.feature_dim, "fp32"
        self.weights, self.normalization = inner.weights, inner.normalization

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def small_config(**kw):
    base = dict(classes=3, steps=6, batch_size=4, max_windows=8, window=64, checkpoint_every=3, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def test_learning_rate_polynomial_decay():
    assert learning_rate(1e-4, 0, 100, 2) == pytest.approx(1e-4)
    assert learning_rate(1e-4, 50, 100, 2) == pytest.approx(0.25e-4)


def test_plan_windows_cover_budget_and_stay_inside():
    windows = plan_windows([(500, 300), (100, 80)], [1.0, 1.0], 64, 20, seed=0)
    assert len(windows) == 20 and {w.image for w in windows} == {0, 1}
    for w in windows:
        size = [(500, 300), (100, 80)][w.image]
        assert 0 <= w.col <= size[0] - w.size and 0 <= w.row <= size[1] - w.size
    small = plan_windows([(40, 30)], [1.0], 64, 3, seed=0)
    assert all(w.size == 30 for w in small)  # used whole (upsampled) when smaller than a window
    five = plan_windows([(400, 200)], [1.0], 64, 100, seed=0, five_crop=True, crop_ratio=0.5)
    assert [(w.col, w.row, w.size) for w in five] == [(0, 0, 100), (300, 0, 100), (0, 100, 100),
                                                       (300, 100, 100), (150, 50, 100)]


def test_cache_is_used_and_training_is_deterministic(scene_tif, tiny_backbone, tmp_path):
    path, _ = scene_tif
    counting = CountingBackbone(tiny_backbone)
    a = train([path], tmp_path / "a.safetensors", small_config(), backbone=counting, cache_dir=tmp_path / "c")
    first = counting.calls
    assert first > 0
    b = train([path], tmp_path / "b.safetensors", small_config(), backbone=counting, cache_dir=tmp_path / "c")
    assert counting.calls == first, "a second run on the same data must reuse the cached features"
    for k, v in a.head_state().items():
        assert torch.equal(v, b.head_state()[k]), k
    c = train([path], tmp_path / "c.safetensors", small_config(seed=4), backbone=counting, cache_dir=tmp_path / "c")
    assert not torch.equal(c.labeler.global_prototypes, a.labeler.global_prototypes)


def test_resume_continues_to_the_same_model(scene_tif, tiny_backbone, tmp_path):
    path, _ = scene_tif
    full = train([path], tmp_path / "full.safetensors", small_config(), backbone=tiny_backbone,
                 cache_dir=tmp_path / "c")
    out = tmp_path / "resumed.safetensors"

    def interrupt(phase, done, total, stats):
        if phase == "train" and done == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train([path], out, small_config(), backbone=tiny_backbone, cache_dir=tmp_path / "c", on_progress=interrupt)
    assert not out.exists(), "an interrupted run leaves no model file"
    assert state_path(out).exists(), "the last complete checkpoint (step 3) is kept"
    resumed = train([path], out, small_config(), backbone=tiny_backbone, cache_dir=tmp_path / "c", resume=True)
    for k, v in full.head_state().items():
        assert torch.equal(v, resumed.head_state()[k]), k
    assert not state_path(out).exists()
    loaded = load_model(out, backbone=tiny_backbone)
    assert loaded.metadata["training"]["data"]["images"] == 1


def test_gsd_is_recorded(scene_tif, tiny_backbone, tmp_path):
    path, _ = scene_tif
    model = train([path], tmp_path / "m.safetensors", small_config(steps=1), backbone=tiny_backbone,
                  cache_dir=tmp_path / "c")
    assert model.config.gsd == pytest.approx(0.5)
    forced = train([path], tmp_path / "m2.safetensors", small_config(steps=1, gsd=1.0), backbone=tiny_backbone,
                   cache_dir=tmp_path / "c")
    assert forced.config.gsd == 1.0


def test_training_on_png_and_jpeg(tmp_path, tiny_backbone):
    from PIL import Image

    from segunify_core.synthetic import make_scene

    img, _ = make_scene(160)
    Image.fromarray(img.transpose(1, 2, 0)).save(tmp_path / "a.png")
    Image.fromarray(img.transpose(1, 2, 0)).save(tmp_path / "b.jpg")
    model = train([tmp_path], tmp_path / "m.safetensors", small_config(steps=2), backbone=tiny_backbone,
                  cache_dir=tmp_path / "c")
    assert model.metadata["training"]["data"]["images"] == 2
    assert np.isfinite(model.labeler.global_prototypes.numpy()).all()


def test_training_leaves_the_callers_random_state_alone(tiny_backbone):
    """Initialisation is seeded by the config, inside a forked generator: the same seed gives the
    same model and the caller's torch generator continues as if training had not run."""
    from segunify_core.training.trainer import new_model

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = new_model(tiny_backbone, small_config(), 0.5)
    assert torch.equal(torch.rand(3), expected)
    second = new_model(tiny_backbone, small_config(), 0.5)
    for name, tensor in first.head_state().items():
        assert torch.equal(tensor, second.head_state()[name]), name
