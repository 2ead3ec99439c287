"""Options no other test runs, each through the real CLI (`python -m segunify_cli`) in a subprocess,
each checked by its effect on the files written: tiny rasters, the tiny random-weight ViT."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

from segunify_core.synthetic import make_blobs, write_geotiff
from tests.conftest import REPO, TINY_VIT
from tests.helpers import interrupt_when_paused, paused_cli, require_module

CLI = [sys.executable, "-m", "segunify_cli"]


def cli(*args, timeout: int = 900, **kwargs) -> subprocess.CompletedProcess:
    run = subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, timeout=timeout, **kwargs)
    assert run.returncode == 0, f"segunify {' '.join(map(str, args))}\n{run.stderr}"
    return run


def labels(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("scene")
    return write_geotiff(folder / "scene.tif", make_blobs(300, 260, seed=11)[0])


@pytest.fixture
def seg(tiny_model, tiny_weights):
    """tile-segment SRC OUT with the tiny model and cheap geometry, plus extra flags."""

    def run(src: Path, out: Path, *extra) -> subprocess.CompletedProcess:
        return cli("tile-segment", src, out, "--model", tiny_model, "--backbone-weights", tiny_weights, "--window",
                   "224", "--stride", "160", "--no-flip", "--quiet", *extra)

    return run


@pytest.fixture(scope="module")
def classes_tif(tmp_path_factory, scene, tiny_model, tiny_weights) -> Path:
    out = tmp_path_factory.mktemp("classes") / "classes.tif"
    cli("tile-segment", scene, out, "--model", tiny_model, "--backbone-weights", tiny_weights, "--window", "224",
        "--stride", "160", "--quiet")
    return out


# ---------------------------------------------------------------- outputs replaced and simplified
def test_vectorize_simplify_drops_vertices_not_polygons(classes_tif, tmp_path):
    import geopandas as gpd

    cli("vectorize", classes_tif, tmp_path / "exact.gpkg", "--quiet")
    cli("vectorize", classes_tif, tmp_path / "simple.gpkg", "--simplify", "2.0", "--quiet")
    exact, simple = gpd.read_file(tmp_path / "exact.gpkg"), gpd.read_file(tmp_path / "simple.gpkg")
    vertices = [int(frame.geometry.count_coordinates().sum()) for frame in (exact, simple)]
    assert vertices[1] < 0.8 * vertices[0], vertices
    assert sorted(simple["class_id"].unique()) == sorted(exact["class_id"].unique())
    assert simple.area.sum() == pytest.approx(exact.area.sum(), rel=0.05)


def test_tile_segment_overwrite_replaces_the_file(seg, scene, tmp_path):
    out = tmp_path / "classes.tif"
    out.write_text("an older file")
    seg(scene, out, "--overwrite")
    with rasterio.open(out) as ds, rasterio.open(scene) as src:
        assert (ds.width, ds.height, ds.transform) == (src.width, src.height, src.transform)
        assert ds.read(1).max() >= 1
    assert {"classes.tif", "classes.qml"} <= {p.name for p in tmp_path.iterdir()} <= {
        "classes.tif", "classes.qml", "classes.tif.aux.xml"}, "replaced in place, nothing left beside it"


def test_classes_overwrite_replaces_the_model(tiny_model, tmp_path):
    from segunify_core.files.model_file import read_model_file

    out = tmp_path / "named.safetensors"
    cli("classes", tiny_model, "-o", out, "--name", "1=road")
    first = out.read_bytes()
    refused = subprocess.run(CLI + ["classes", str(tiny_model), "-o", str(out), "--name", "1=roof"],
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "--overwrite" in refused.stderr and out.read_bytes() == first
    cli("classes", tiny_model, "-o", out, "--name", "1=roof", "--overwrite")
    listed = json.loads(cli("classes", out, "--json").stdout)
    assert "roof" in json.dumps(listed) and "road" not in json.dumps(listed)
    read_model_file(out)  # a whole model file, not a partial one
    assert [p.name for p in tmp_path.iterdir()] == ["named.safetensors"]


# ---------------------------------------------------------------- CRF and precision
@pytest.mark.parametrize("backend", ["torch", "pydensecrf"])
def test_explicit_crf_changes_the_labels(request, seg, scene, tmp_path, backend):
    if backend == "pydensecrf":
        request.getfixturevalue("pydensecrf")
    seg(scene, tmp_path / "none.tif", "--crf", "none")
    seg(scene, tmp_path / "crf.tif", "--crf", backend)
    plain, refined = labels(tmp_path / "none.tif"), labels(tmp_path / "crf.tif")
    changed = (plain != refined).mean()
    assert 0 < changed < 0.5, f"{backend}: {changed:.1%} of the labels changed"


def test_precision_bf16_against_fp32(seg, scene, tmp_path):
    for precision in ("fp32", "bf16"):
        seg(scene, tmp_path / f"{precision}.tif", "--precision", precision, "--crf", "none",
            "--probabilities", tmp_path / f"{precision}_p.tif", "--probabilities-dtype", "float16")
    with rasterio.open(tmp_path / "fp32_p.tif") as a, rasterio.open(tmp_path / "bf16_p.tif") as b:
        pa, pb = a.read().astype(np.float32), b.read().astype(np.float32)
    assert not np.array_equal(pa, pb), "bfloat16 ran (its probabilities are not float32's)"
    assert np.abs(pa - pb).mean() < 0.05
    assert (labels(tmp_path / "fp32.tif") == labels(tmp_path / "bf16.tif")).mean() > 0.9


# ---------------------------------------------------------------- batch
@pytest.fixture
def tiles(tmp_path) -> Path:
    folder = tmp_path / "tiles"
    folder.mkdir()
    for i in range(2):  # at 1 m (the model was trained at 0.5 m): resampled unless --native-resolution
        write_geotiff(folder / f"t{i}.tif", make_blobs(200, 180, seed=30 + i)[0], gsd=1.0)
    return folder


def batch(folder, out, model, weights, *extra):
    return cli("batch", folder, out, "--model", model, "--backbone-weights", weights, "--window", "224", "--stride",
               "160", "--no-flip", "--quiet", *extra)


def test_batch_cog(tiles, tiny_model, tiny_weights, tmp_path):
    batch(tiles, tmp_path / "cog", tiny_model, tiny_weights, "--cog")
    batch(tiles, tmp_path / "plain", tiny_model, tiny_weights)
    for i in range(2):
        with rasterio.open(tmp_path / "cog" / f"t{i}_classes.tif") as ds:
            assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG", "GDAL reads it as a COG"
            assert ds.block_shapes == [(512, 512)], "tiled as a COG is"
            # (GDAL adds overviews only to rasters larger than one tile: these are 200 x 180)
            cog = ds.read(1)
        with rasterio.open(tmp_path / "plain" / f"t{i}_classes.tif") as ds:
            assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") != "COG"
            assert np.array_equal(cog, ds.read(1)), "the same labels"


def test_batch_native_resolution(tiles, tiny_model, tiny_weights, tmp_path):
    batch(tiles, tmp_path / "resampled", tiny_model, tiny_weights)
    batch(tiles, tmp_path / "native", tiny_model, tiny_weights, "--native-resolution")
    for i in range(2):
        a, b = tmp_path / "resampled" / f"t{i}_classes.tif", tmp_path / "native" / f"t{i}_classes.tif"
        with rasterio.open(a) as ra, rasterio.open(b) as rb:
            assert (ra.width, ra.height, ra.transform) == (rb.width, rb.height, rb.transform) == (200, 180,
                                                                                                   ra.transform)
        assert not np.array_equal(labels(a), labels(b)), "the model saw other pixels"


def test_batch_no_resume_recomputes_every_part(tiles, tiny_model, tiny_weights, tmp_path):
    """Parts left by an interrupted job (run with --resume) are recomputed with --no-resume: a
    finished part file made wrong on purpose shows which."""
    out = tmp_path / "out"
    batch(tiles, tmp_path / "ref", tiny_model, tiny_weights)
    # an interrupted job: its finished parts, as the paused run of test_reliability leaves them
    proc = paused_cli(["batch", tiles, out, "--model", tiny_model, "--backbone-weights", tiny_weights, "--window",
                       "224", "--stride", "160", "--no-flip", "--batch-size", "1", "--resume"], "segment", 0,
                      ready=out / "t0_classes.tif")
    interrupt_when_paused(proc, signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    parts = out / ".segunify-parts"
    assert [p for p in parts.iterdir() if p.name.endswith(".labels.tif")], "finished parts to reuse"
    (out / "t0_classes.tif").unlink()
    rerun = cli("batch", tiles, out, "--model", tiny_model, "--backbone-weights", tiny_weights, "--window", "224",
                "--stride", "160", "--no-flip", "--no-resume")
    counts = re.search(r"parts: (\d+) computed, (\d+) reused", rerun.stderr)
    assert counts and int(counts.group(1)) >= 2 and int(counts.group(2)) == 0, rerun.stderr
    for i in range(2):
        assert np.array_equal(labels(out / f"t{i}_classes.tif"), labels(tmp_path / "ref" / f"t{i}_classes.tif"))
    assert not parts.exists()


# ---------------------------------------------------------------- evaluate
@pytest.fixture(scope="module")
def potsdam(tmp_path_factory) -> Path:
    from tests.test_potsdam import fabricate

    return fabricate(tmp_path_factory.mktemp("potsdam"), n_train=2, n_unlabelled=0, n_test=2, size=340)


def test_evaluate_resolution_and_no_flip(potsdam, tiny_model, tiny_weights):
    results = {}
    for resolution, flip in (("224", "--flip"), ("320", "--flip"), ("320", "--no-flip")):
        run = cli("evaluate", tiny_model, potsdam, "--resolution", resolution, flip, "--json", "--backbone-weights",
                  tiny_weights, "--crf", "none", "--quiet")
        results[resolution, flip] = json.loads(run.stdout)
    for (resolution, flip), result in results.items():
        assert result["protocol"]["resolution"] == int(resolution)
        assert result["protocol"]["flip"] is (flip == "--flip")
        pixels = int(np.sum(result["confusion_matrix"]))
        assert 0 < pixels <= 2 * int(resolution) ** 2, "centre crops of the test images at that resolution"
    small, large = (int(np.sum(results[r, "--flip"]["confusion_matrix"])) for r in ("224", "320"))
    assert large > small
    assert results["320", "--flip"]["confusion_matrix"] != results["320", "--no-flip"]["confusion_matrix"], \
        "without the mirrored view the codes, and so some labels, differ"


# ---------------------------------------------------------------- self-fit
def test_self_fit_seed_and_local_sets(scene, tiny_weights, tmp_path):
    from segunify_core.files.model_file import read_model_file

    def fit(name: str, *extra) -> tuple[np.ndarray, dict]:
        out, model = tmp_path / f"{name}.tif", tmp_path / f"{name}.safetensors"
        cli("tile-segment", scene, out, "--classes", "3", "--fit-steps", "5", "--fit-windows", "8", "--backbone",
            TINY_VIT, "--backbone-weights", tiny_weights, "--window", "224", "--stride", "160", "--no-flip",
            "--crf", "none", "--save-model", model, "--quiet", *extra)
        return labels(out), read_model_file(model)[0]

    def recorded(meta: dict, key: str):
        """`key` of the self-fit's training configuration, as the model file records it."""
        return meta["training"]["config"][key]

    a, meta_a = fit("a", "--seed", "1")
    b, meta_b = fit("b", "--seed", "1")
    c, meta_c = fit("c", "--seed", "2")
    sets, meta_sets = fit("sets", "--seed", "1", "--local-sets", "2")
    assert np.array_equal(a, b), "the same seed, the same output"
    assert recorded(meta_a, "seed") == 1 and recorded(meta_c, "seed") == 2, "the seed is recorded"
    assert recorded(meta_a, "local_sets") != 2 and recorded(meta_sets, "local_sets") == 2


# ---------------------------------------------------------------- a running Dask scheduler
def test_scheduler_file_runs_on_that_cluster(seg, scene, tiny_model, tiny_weights, tmp_path):
    require_module("distributed", 'the distributed extra is not installed: pip install "segunify[distributed]"')
    command = [sys.executable, "-m", "dask"]  # the dask CLI of this interpreter, wherever its scripts are
    scheduler_file = tmp_path / "scheduler.json"
    started = []
    try:
        started.append(subprocess.Popen(command + ["scheduler", "--scheduler-file", str(scheduler_file),
                                                   "--no-dashboard", "--host", "127.0.0.1"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 120
        while not scheduler_file.is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert scheduler_file.is_file(), "the Dask scheduler did not start (no scheduler file)"
        started.append(subprocess.Popen(command + ["worker", "--scheduler-file", str(scheduler_file), "--nworkers",
                                                   "1", "--nthreads", "1", "--no-dashboard"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        seg(scene, tmp_path / "local.tif")
        run = cli("tile-segment", scene, tmp_path / "dask.tif", "--model", tiny_model, "--backbone-weights",
                  tiny_weights, "--window", "224", "--stride", "160", "--no-flip", "--scheduler-file",
                  scheduler_file)
        address = json.loads(scheduler_file.read_text())["address"]
        assert f"engine: Dask at {address}, 1 worker(s)" in run.stderr
        assert np.array_equal(labels(tmp_path / "local.tif"), labels(tmp_path / "dask.tif"))
    finally:
        for proc in reversed(started):
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


# ---------------------------------------------------------------- scripts/demo.sh
def test_demo_script_with_local_dino_weights(samples, tmp_path):
    """scripts/demo.sh on the sample orthophoto with a local checkpoint in the official DINO layout (a
    plain state dict in a .pth; random weights of the tiny ViT), short enough for a test."""
    import timm
    import torch

    torch.manual_seed(0)
    weights = tmp_path / "dino_vittiny16_random.pth"
    torch.save(timm.create_model(TINY_VIT, pretrained=False, num_classes=0).state_dict(), weights)
    out = tmp_path / "demo-output"
    env = {**os.environ, "SEGUNIFY_DEMO_OUTPUT": str(out), "SEGUNIFY_SAMPLES": str(samples),
           "SEGUNIFY_SETUP": "0"}
    run = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh"), "--backbone", TINY_VIT, "--backbone-weights",
                          str(weights), "--fit-steps", "5", "--fit-windows", "8", "--window", "224", "--stride",
                          "224", "--no-flip", "--crf", "torch", "--quiet"],
                         capture_output=True, text=True, timeout=1200, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    names = {p.name for p in out.iterdir()}
    assert {"cogeo_classes.tif", "cogeo_classes.qml", "cogeo_preview.png"} <= names, names
    with rasterio.open(out / "cogeo_classes.tif") as ds, rasterio.open(samples / "rasterio" / "cogeo.tif") as src:
        assert (ds.width, ds.height, ds.crs) == (src.width, src.height, src.crs)
        assert set(np.unique(ds.read(1))) <= set(range(0, 6)) and len(np.unique(ds.read(1))) >= 2
