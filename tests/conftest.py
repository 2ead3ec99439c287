"""Shared fixtures: small random-weight backbones, generated scenes (segunify_core.synthetic), the real
sample rasters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from segunify_core.synthetic import make_blobs, make_scene, write_geotiff

REPO = Path(__file__).resolve().parents[1]
# A timm ViT name: 5.7M parameters, fast on CPU. DeiT-Ti is ViT-Ti/16 (same layers, same random weights for a
# seed) whose weights are ImageNet-normalised, as the quality thresholds of the tests were set with; vit_tiny's
# weights normalise with 0.5 (backbones normalise as their weights say).
TINY_VIT = "deit_tiny_patch16_224"


from tests.helpers import missing, samples, samples_dir, samples_stay_untouched  # noqa: E402,F401 - shared with tests/qgis


@pytest.fixture
def pydensecrf() -> None:
    """For tests of the pydensecrf CRF backend (the crf extra): skipped without it, failed in CI."""
    from segunify_core.method.crf import pydensecrf_available

    if not pydensecrf_available():
        missing("pydensecrf2 (the crf extra) is not installed: pip install \"segunify[crf]\"")


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A random-weight timm checkpoint (safetensors) of the tiny ViT, as a user would pass it."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model(TINY_VIT, pretrained=False, num_classes=0)
    path = tmp_path_factory.mktemp("weights") / "vit_tiny_random.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="session")
def tiny_backbone(tiny_weights):
    from segunify_core.method.backbone import create_backbone

    return create_backbone(TINY_VIT, tiny_weights)


@pytest.fixture
def scene_tif(tmp_path) -> tuple[Path, np.ndarray]:
    img, labels = make_scene()
    return write_geotiff(tmp_path / "scene.tif", img), labels


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, tiny_backbone):
    """A 3-class model of the tiny ViT trained on a generated scene (GSD 0.5 m)."""
    from segunify_core.files.model_file import load_model
    from segunify_core.training.trainer import TrainConfig, train

    folder = tmp_path_factory.mktemp("model")
    img, _ = make_blobs(640, 640, seed=1)
    tif = write_geotiff(folder / "train.tif", img)
    path = folder / "tiny.safetensors"
    train([tif], path, TrainConfig(classes=3, steps=150, batch_size=16, max_windows=48, window=224, seed=0),
          backbone=tiny_backbone, cache_dir=folder / "cache")
    load_model(path, backbone=tiny_backbone)
    return path
