"""`segunify distill`: a fast model distilled from the tiny random-weight model, used like any model
(in-process and on a Dask cluster with identical output, legend carried), resumed after a kill, and
refused inputs that cannot work (one sentence, no file)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

from segunify_core.files.model_file import load_model, read_model_file, rewrite_model_legend, write_safetensors
from segunify_core.files.outputs import raster_class_names
from segunify_core.method.student import FastModel
from segunify_core.settings import DistillOptions
from segunify_core.synthetic import make_blobs, write_geotiff
from segunify_core.training.distill import distill, state_path
from tests.helpers import interrupt_when_paused, paused_cli, require_module

CLI = [sys.executable, "-m", "segunify_cli"]
CHEAP = ["--steps", "6", "--batch-size", "2", "--max-windows", "4", "--crop", "96", "--student", "resnet18"]


def cli(*args, check: bool = True) -> subprocess.CompletedProcess:
    run = subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, timeout=600)
    if check:
        assert run.returncode == 0, f"segunify {' '.join(map(str, args))}\n{run.stderr}"
    return run


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("distil-data")
    write_geotiff(folder / "a.tif", make_blobs(400, 360, seed=21)[0])
    write_geotiff(folder / "b.tif", make_blobs(300, 300, seed=22)[0])
    return folder


@pytest.fixture(scope="module")
def teacher(tiny_model, tmp_path_factory) -> Path:
    """The tiny model with a named legend (two clusters merged), as an analyst leaves it."""
    path = tmp_path_factory.mktemp("teacher") / "named.safetensors"
    rewrite_model_legend(tiny_model, path, {"names": {1: "red roofs"}, "merges": [((2, 3), "green")]})
    return path


@pytest.fixture(scope="module")
def fast(teacher, data, tiny_weights, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fast")
    out = folder / "fast.safetensors"
    options = DistillOptions(student="resnet18", steps=8, batch_size=2, max_windows=6, crop=128,
                             cache_dir=str(folder / "cache"))
    distill(teacher, [data], out, options, device="cpu", backbone_weights=tiny_weights)
    return out


def test_fast_model_file_records_teacher_legend_and_inputs(fast, teacher):
    meta, _ = read_model_file(fast)
    teacher_meta, _ = read_model_file(teacher)
    assert meta["kind"] == "fast" and meta["teacher"]["file"] == teacher.name
    import hashlib
    assert meta["teacher"]["sha256"] == hashlib.sha256(teacher.read_bytes()).hexdigest()
    assert meta["legend"] == teacher_meta["legend"]
    assert meta["config"]["gsd"] == teacher_meta["config"]["gsd"] and meta["config"]["bands"] == teacher_meta["config"]["bands"]
    assert len(meta["normalisation"]["mean"]) == 3
    model = load_model(fast)
    assert isinstance(model, FastModel) and model.legend.names == ["red roofs", "green"]
    assert not state_path(fast).exists(), "the resumable state goes once the model is written"


def test_fast_model_segments_the_same_in_process_and_on_a_cluster(fast, tmp_path):
    require_module("distributed", 'the distributed extra is not installed: pip install "segunify[distributed]"')
    src = write_geotiff(tmp_path / "big.tif", make_blobs(1300, 700, seed=5)[0])
    common = ["--model", fast, "--block", "1024", "--quiet"]
    cli("tile-segment", src, tmp_path / "local.tif", "--probabilities", tmp_path / "local_p.tif", *common)
    cli("tile-segment", src, tmp_path / "dask.tif", "--probabilities", tmp_path / "dask_p.tif", "--cluster", "local:2",
        *common)
    with rasterio.open(tmp_path / "local.tif") as a, rasterio.open(tmp_path / "dask.tif") as b, rasterio.open(src) as s:
        assert a.shape == s.shape and a.transform == s.transform, "exactly the input's grid"
        local, dask = a.read(1), b.read(1)
    assert np.array_equal(local, dask), "pixel-identical labels"
    with rasterio.open(tmp_path / "local_p.tif") as a, rasterio.open(tmp_path / "dask_p.tif") as b:
        assert np.array_equal(a.read(), b.read()), "identical probabilities"
    assert set(np.unique(local)) <= {1, 2} and (local > 0).all(), "two classes: the teacher's merge applies"
    assert raster_class_names(tmp_path / "local.tif")[1] == "red roofs", "the teacher's legend is carried"


def test_distill_killed_then_resumed_continues(teacher, data, tiny_weights, tmp_path):
    out = tmp_path / "fast.safetensors"
    args = ["distill", teacher, data, "-o", out, "--backbone-weights", tiny_weights, "--cache-dir", tmp_path / "cache",
            "--checkpoint-every", "2", *CHEAP]
    proc = paused_cli(args, "distill", 60)
    interrupt_when_paused(proc, signal.SIGINT)
    proc.wait(timeout=120)
    assert proc.returncode == 130 and not out.exists() and state_path(out).is_file()
    resumed = cli("--progress", "json", *args, "--resume")
    events = [json.loads(line) for line in resumed.stdout.splitlines() if line.startswith("{")]
    assert "resuming from step 2" in resumed.stderr
    assert not [e for e in events if e.get("phase") == "teacher"], "the teacher's cached probabilities are reused"
    assert [e["done"] for e in events if e.get("phase") == "distill"][0] == 3, "continues at the step after the state"
    assert isinstance(load_model(out), FastModel) and not state_path(out).exists()


def _one_error(run: subprocess.CompletedProcess) -> str:
    assert run.returncode == 1
    lines = [line for line in run.stderr.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, run.stderr
    return lines[0]


def test_bad_inputs_give_one_sentence_and_no_file(teacher, fast, data, tiny_weights, tmp_path):
    out = tmp_path / "fast.safetensors"
    common = ["-o", out, "--backbone-weights", tiny_weights, "--cache-dir", tmp_path / "cache", *CHEAP]
    (tmp_path / "empty").mkdir()
    empty = write_geotiff(tmp_path / "empty" / "nodata.tif", np.zeros((3, 200, 200), np.uint8), nodata=0)
    assert "No valid pixels" in _one_error(cli("distill", teacher, empty, *common, check=False))
    assert "not a teacher" in _one_error(cli("distill", fast, data, *common, check=False))
    assert "not a SegUnify model" in _one_error(cli("distill", data / "a.tif", data, *common, check=False))
    meta, tensors = read_model_file(teacher)
    meta["config"]["bands"] = [1, 2, 4]
    four = tmp_path / "four_bands.safetensors"
    write_safetensors(four, tensors, meta)
    assert "bands 1,2,4" in _one_error(cli("distill", four, data, *common, check=False))
    assert not out.exists() and not state_path(out).exists()
