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


def test_plugin_loads_the_one_settings_file_without_torch(tmp_path):
    """The QGIS plugin reads segunify_core/settings.py by path (checkout) or its copy (built plugin),
    and neither imports torch or the rest of segunify_core into QGIS's Python."""
    import ast
    import shutil
    from pathlib import Path

    from segunify_core import settings

    repo = Path(__file__).resolve().parents[1]
    tree = ast.parse((repo / "segunify_core" / "settings.py").read_text())
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    imported += [n.module or "." for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert all(name.split(".")[0] in sys.stdlib_module_names for name in imported), f"settings.py imports {imported}"
    probe = ("import json, sys\nfrom {pkg}.core_settings import settings\n"
             "print(json.dumps([settings.__file__, settings.MAP_CLASSES, list(settings.CRF_BACKENDS), "
             "sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'segunify_core', 'numpy'))]))")
    checkout = subprocess.run([sys.executable, "-c", probe.format(pkg="qgis_plugin")], cwd=repo, capture_output=True,
                              text=True, timeout=60)
    assert checkout.returncode == 0, checkout.stderr
    built = tmp_path / "segunify"  # the layout scripts/build_plugin.py writes
    built.mkdir()
    shutil.copy2(repo / "qgis_plugin" / "core_settings.py", built)
    (built / "__init__.py").write_text("")
    shutil.copy2(repo / "segunify_core" / "settings.py", built / "segunify_settings.py")
    plugin = subprocess.run([sys.executable, "-c", probe.format(pkg="segunify")], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    assert plugin.returncode == 0, plugin.stderr
    for run, path in ((checkout, repo / "segunify_core" / "settings.py"), (plugin, built / "segunify_settings.py")):
        file, map_classes, crf, heavy = json.loads(run.stdout)
        assert Path(file) == path and heavy == []
        assert (map_classes, crf) == (settings.MAP_CLASSES, list(settings.CRF_BACKENDS))


def test_api_cli_and_self_fit_defaults_come_from_settings():
    """The dataclasses and the CLI show the settings' values (no retyped copies)."""
    from click.testing import CliRunner
    from segunify_cli.main import cli

    from segunify_core import SegmentOptions, SelfFitOptions, TrainConfig, settings
    from segunify_core.method.model import ModelConfig

    train, model, fit, seg = TrainConfig(), ModelConfig(), SelfFitOptions(classes=4), SegmentOptions()
    assert train.classes == model.classes == settings.CLASSES and model.backbone == settings.BACKBONE
    for name in ("extra_clusters", "code_dim", "dropout", "nonlinear", "outer_silu", "local_sets"):
        assert getattr(train, name) == getattr(model, name) == getattr(settings, name.upper()), name
    for name in ("seed", "shift_intra", "shift_inter", "temperature", "alpha", "local_sets", "extra_clusters"):
        assert getattr(fit, name) == getattr(train, name) == getattr(settings, name.upper()), name
    assert (seg.window, seg.stride, seg.batch_size, seg.flip) == (settings.WINDOW, settings.STRIDE,
                                                                  settings.SEGMENT_BATCH_SIZE, settings.FLIP)
    for command in ("tile-segment", "batch"):
        text = " ".join(CliRunner().invoke(cli, [command, "--help"], terminal_width=200).output.split())
        assert f"[default: {settings.WINDOW}; {settings.MIN_WINDOW}<=x<={settings.MAX_WINDOW}]" in text, command
        assert f"--crf [{'|'.join(settings.CRF_BACKENDS)}]" in text and f"[default: {settings.CRF}]" in text
