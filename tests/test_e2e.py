"""End to end through the CLI: train on a generated scene with a random-weight ViT, recover it."""

import json
import subprocess
import sys

import pytest

from segunify_core.synthetic import make_scene, write_geotiff
from tests.conftest import TINY_VIT

CLI = [sys.executable, "-m", "segunify_cli"]


@pytest.mark.slow
def test_train_recovers_regions(tmp_path, tiny_weights):
    img, _ = make_scene(448, seed=0)
    train_tif = write_geotiff(tmp_path / "train.tif", img)
    (tmp_path / "eval" / "images").mkdir(parents=True)
    (tmp_path / "eval" / "labels").mkdir()
    test_img, test_labels = make_scene(384, seed=1)
    write_geotiff(tmp_path / "eval" / "images" / "scene.tif", test_img)
    write_geotiff(tmp_path / "eval" / "labels" / "scene.tif", test_labels[None].astype("uint8"))
    model = tmp_path / "scene.safetensors"
    common = ["--backbone-weights", str(tiny_weights), "--device", "cpu"]
    run = subprocess.run(CLI + ["train", str(train_tif), "-o", str(model), "--backbone", TINY_VIT, "--classes", "3",
                                "--steps", "150", "--batch-size", "16", "--max-windows", "48",
                                "--cache-dir", str(tmp_path / "cache")] + common,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "configuration:" in run.stderr and "wrote" in run.stderr
    out = subprocess.run(CLI + ["evaluate", str(model), str(tmp_path / "eval"), "--json"] + common,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    scores = json.loads(out.stdout)
    print(f"generated scene: accuracy {scores['accuracy']:.4f}, mIoU {scores['miou']:.4f}")
    assert scores["miou"] >= 0.8, scores
    table = subprocess.run(CLI + ["evaluate", str(model), str(tmp_path / "eval")] + common,
                           capture_output=True, text=True, timeout=600)
    assert "mIoU" in table.stdout and "cluster" in table.stdout


def test_cli_errors_are_one_line(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_text("not a model")
    run = subprocess.run(CLI + ["evaluate", str(bad), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert run.stderr.strip().count("\n") == 0 and run.stderr.startswith("Error: ")
    assert "Traceback" not in run.stderr


def test_backbones_command():
    run = subprocess.run(CLI + ["backbones"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0
    for name in ("dino_vits8", "dino_vits16", "dino_vitb8", "dino_vitb16", "dinov2_vits14", "dinov2_vitb14"):
        assert name in run.stdout
