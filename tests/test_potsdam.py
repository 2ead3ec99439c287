"""Potsdam-3 in the exact STEGO/IIC layout, fabricated small: loading, merge, protocol, end to end."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.io import savemat

from segunify_core.errors import SegUnifyError
from segunify_core.training.datasets import (
    centre_crop_resize,
    potsdam_eval_samples,
    potsdam_ids,
    potsdam_image,
    potsdam_labels,
    potsdam_root,
    training_images,
)
from tests.conftest import TINY_VIT

# Appearance per coarse class; each coarse class is labelled with both of its fine ISPRS classes.
COLOURS = {0: (128, 128, 128), 1: (200, 60, 50), 2: (40, 150, 60)}
FINE = {0: (0, 4), 1: (1, 5), 2: (2, 3)}


def fabricate(root: Path, n_train=10, n_unlabelled=4, n_test=6, size=200, seed=0) -> Path:
    """root/potsdam with imgs/*.mat (key img: H x W x 4 RGBIR uint8), gt/*.mat (key gt: fine labels,
    255 = unlabelled) and the IIC split lists."""
    rng = np.random.default_rng(seed)
    base = root / "potsdam"
    (base / "imgs").mkdir(parents=True)
    (base / "gt").mkdir()
    splits = {"labelled_train.txt": [], "unlabelled_train.txt": [], "labelled_test.txt": []}
    names = ([("labelled_train.txt", f"{i}_0") for i in range(n_train)]
             + [("unlabelled_train.txt", f"{i}_1") for i in range(n_unlabelled)]
             + [("labelled_test.txt", f"{i}_2") for i in range(n_test)])
    yy, xx = np.mgrid[:size, :size]
    for split, name in names:
        cut_x, cut_y = rng.integers(size // 4, 3 * size // 4, 2)
        coarse = np.where(xx < cut_x, 0, 1)
        coarse[(yy > cut_y) & (xx > size // 5)] = 2
        img = np.zeros((size, size, 4), np.uint8)
        colours = np.array([COLOURS[c] for c in range(3)], float)
        img[..., :3] = np.clip(colours[coarse] + rng.normal(0, 10, (size, size, 3)), 0, 255)
        img[..., 3] = rng.integers(0, 255, (size, size))  # IR, dropped by the loader
        savemat(base / "imgs" / f"{name}.mat", {"img": img})
        if split != "unlabelled_train.txt":
            fine = np.zeros((size, size), np.uint8)
            for c, (a, b) in FINE.items():
                fine[coarse == c] = np.where(yy[coarse == c] % 40 < 20, a, b)
            fine[:3, :] = 255  # unlabelled strip
            savemat(base / "gt" / f"{name}.mat", {"gt": fine})
        splits[split].append(name)
    for split, ids in splits.items():
        (base / split).write_text("\n".join(ids) + "\n")
    (base / "all.txt").write_text("\n".join(i for ids in splits.values() for i in ids) + "\n")
    return base


@pytest.fixture(scope="module")
def potsdam(tmp_path_factory) -> Path:
    return fabricate(tmp_path_factory.mktemp("data"))


def test_layout_detection_and_splits(potsdam):
    assert potsdam_root(potsdam.parent) == potsdam and potsdam_root(potsdam) == potsdam
    assert potsdam_ids(potsdam, "test") == [f"{i}_2" for i in range(6)]
    assert len(potsdam_ids(potsdam, "all_train")) == 14
    with pytest.raises(SegUnifyError, match="Unknown Potsdam split"):
        potsdam_ids(potsdam, "val2")


def test_image_drops_ir_and_labels_merge_six_to_three(potsdam):
    rgb = potsdam_image(potsdam, "0_0")
    assert rgb.shape == (3, 200, 200) and rgb.dtype == np.float32
    fine = potsdam_labels(potsdam, "0_0", coarse=False)
    coarse = potsdam_labels(potsdam, "0_0")
    assert set(np.unique(fine)) <= {-1, 0, 1, 2, 3, 4, 5}
    for f, c in {0: 0, 4: 0, 1: 1, 5: 1, 2: 2, 3: 2}.items():
        assert (coarse[fine == f] == c).all()
    assert (coarse[:3] == -1).all()
    assert potsdam_labels(potsdam, "0_1") is None  # unlabelled image


def test_centre_crop_resize():
    rgb = np.arange(3 * 4 * 6, dtype=np.float32).reshape(3, 4, 6)
    labels = np.array([[0, 0, 1, 1, 2, 2]] * 4)
    r, lab = centre_crop_resize(rgb, labels, 8)
    assert r.shape == (3, 8, 8) and lab.shape == (8, 8)
    # 4x6 -> 8x12 (nearest for labels), centre 8 columns: 2 px of class 0, 4 of class 1, 2 of class 2
    assert lab[0].tolist() == [0, 0, 1, 1, 1, 1, 2, 2]


def test_eval_samples_skip_unlabelled(potsdam):
    samples = list(potsdam_eval_samples(potsdam, "all", 224))
    assert len(samples) == 16  # 10 labelled train + 6 test; the 4 unlabelled are skipped
    assert all(s.rgb.shape == (3, 224, 224) and s.labels.shape == (224, 224) for s in samples)


def test_training_images_use_train_splits(potsdam):
    images = training_images([potsdam.parent])
    assert len(images) == 14 and all(im.potsdam_id.endswith(("_0", "_1")) for im in images)


@pytest.mark.slow
def test_train_and_evaluate_potsdam_end_to_end(potsdam, tiny_weights, tmp_path):
    cli = [sys.executable, "-m", "segunify_cli"]
    common = ["--backbone-weights", str(tiny_weights), "--device", "cpu", "--quiet"]
    model = tmp_path / "potsdam.safetensors"
    subprocess.run(cli + ["train", str(potsdam.parent), "-o", str(model), "--backbone", TINY_VIT, "--classes", "3",
                          "--steps", "120", "--batch-size", "8", "--max-windows", "28", "--cache-dir",
                          str(tmp_path / "cache"), "--shift-intra", "0.1"] + common, check=True, timeout=600)
    out = subprocess.run(cli + ["evaluate", str(model), str(potsdam.parent), "--json"] + common[:-1],
                         capture_output=True, text=True, check=True, timeout=600)
    result = json.loads(out.stdout)
    assert set(result) >= {"accuracy", "miou", "per_class_iou", "confusion_matrix", "assignment"}
    assert result["protocol"]["split"] == "test" and result["protocol"]["images"] == 6
    assert np.array(result["confusion_matrix"]).sum() == 6 * (224 * 224 - 224 * 4)  # strip of 3 px -> 4 rows
    print(f"fabricated Potsdam-3: accuracy {result['accuracy']:.4f}, mIoU {result['miou']:.4f}")
    assert result["miou"] >= 0.8, result
