"""Plan / part / assemble, and the Dask engine: same output in-process and on a LocalCluster,
killed workers and drivers, resume, batch, training on a cluster, the blender in the real loop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from segunify_core.files.model_file import load_model
from segunify_core.job.parts import run_part
from segunify_core.job.planning import Geometry, parts_from_json, parts_to_json, plan
from segunify_core.job.segment import SegmentOptions, segment, segment_raster
from segunify_core.job.spec import JobSpec, RunFacts
from segunify_core.synthetic import make_blobs, write_geotiff
from tests.helpers import interrupt_when_paused, paused_cli, require_module

CLI = [sys.executable, "-m", "segunify_cli"]
distributed = require_module("distributed", 'the distributed extra is not installed: pip install "segunify[distributed]"')


@pytest.fixture(scope="module")
def model(tiny_model, tiny_backbone):
    return load_model(tiny_model, backbone=tiny_backbone)


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                       death_timeout=120)
    with distributed.Client(cluster, timeout=120) as c:
        yield c
    cluster.close()


def read(path: Path):
    with rasterio.open(path) as ds:
        return ds.read(), ds.profile


def opts(**kw) -> SegmentOptions:
    return SegmentOptions(**{"window": 224, "stride": 160, "block": 320, **kw})


def test_plan_is_deterministic_json_and_covers_the_raster(tmp_path):
    img, _ = make_blobs(1000, 700, seed=3)
    src = write_geotiff(tmp_path / "in.tif", img, offset=(37, 91))
    geometry = Geometry(224, 160, 16, None)
    parts = plan([src], [tmp_path / "out.tif"], geometry, block=480)
    again = plan([src], [tmp_path / "out.tif"], geometry, block=480)
    assert parts_to_json(parts) == parts_to_json(again)
    assert parts_from_json(parts_to_json(parts)) == parts
    cover = np.zeros((700, 1000), int)
    for part in parts:
        cover[part.row0:part.row1, part.col0:part.col1] += 1
        offsets = part.raster.window_plan()
        assert part.row0 in [*offsets.row_offsets, 0] and part.col0 in [*offsets.col_offsets, 0]
        ids = [(t.row, t.col) for t in part.tiles()]
        assert ids == sorted(ids), "row-major"
    assert (cover == 1).all(), "parts tile the raster exactly once"
    assert len(parts) > 2


class _WindowNoiseModel(torch.nn.Module):
    """A stand-in model whose probabilities differ per window (noise seeded by the window's
    pixels), so blending errors would show; its code is the RGB itself."""

    def __init__(self, k: int = 3):
        super().__init__()
        self.config = type("C", (), {"n_clusters": k, "patch_size": 16, "bands": None, "gsd": None})()
        self.n_classes = k

    attached_backbone = torch.nn.Identity()  # features = codes = the RGB itself

    def compress(self, features: torch.Tensor) -> torch.Tensor:
        return features

    def log_probs_from_code(self, code: torch.Tensor, size) -> torch.Tensor:
        out = []
        for window in code:
            gen = torch.Generator().manual_seed(int(window.sum().item()) % (2**31))
            logits = window / 60 + torch.randn(window.shape, generator=gen) * 0.5
            out.append(torch.log_softmax(logits[:3], dim=0))
        return torch.stack(out)


def test_blender_in_the_real_label_loop_equals_whole_raster_accumulation(tmp_path):
    """run_part (the real loop: reads, batches, skipped nodata windows, strips) blends exactly like
    a whole-raster accumulation of every window's probabilities, for any part layout."""
    from segunify_core.job.windows import TileSource

    img, _ = make_blobs(610, 470, seed=4)
    img[:, :200, :230] = 0  # a nodata corner: windows inside it are never blended
    src = write_geotiff(tmp_path / "in.tif", img, offset=(13, 29), nodata=0)
    stub = _WindowNoiseModel()
    results = {}
    for block in (100, 320, 10_000):
        folder = tmp_path / f"parts{block}"
        folder.mkdir()
        parts = plan([src], [tmp_path / "o.tif"], Geometry(96, 64, 16, None), probabilities=[tmp_path / "p.tif"],
                     block=block)
        job = JobSpec.build([src], [tmp_path / "o.tif"], SegmentOptions(flip=False, batch_size=3))
        facts = RunFacts(str(folder))
        probs = np.zeros((3, 470, 610), np.float32)
        for part in parts:
            run_part(part, job, facts, stub)
            with rasterio.open(folder / f"{part.id}.probabilities.tif") as ds:
                probs[:, part.row0:part.row1, part.col0:part.col1] = ds.read()
        results[block] = probs
    raster = parts[0].raster
    window_plan = raster.window_plan()
    from segunify_core.files.raster_io import RasterReader

    total, weight = np.zeros((3, 470, 610)), np.zeros((470, 610))
    with RasterReader.open(src) as reader:
        source = TileSource(reader, window_plan, 96, 1.0, 16)
        valid_all = reader.valid_mask(rasterio.windows.Window(0, 0, 610, 470))
        for tile in window_plan.tiles():
            rgb, valid = source.read(tile)
            if not valid.any():
                continue
            p = stub.log_probs_from_code(torch.from_numpy(rgb)[None], None).exp()[0, :, :tile.height, :tile.width]
            w = window_plan.weights(tile)
            rows, cols = slice(tile.row_off, tile.row_off + tile.height), slice(tile.col_off, tile.col_off + tile.width)
            total[:, rows, cols] += p.numpy() * w
            weight[rows, cols] += w
    expected = np.where(valid_all & (weight > 0), total / np.maximum(weight, 1e-12), 0)
    for block, probs in results.items():  # stored as half floats: one half-float step apart at most
        np.testing.assert_allclose(probs, expected, rtol=1e-3, atol=1e-6, err_msg=f"block {block}")
    assert np.array_equal(results[100], results[10_000]), "the part layout does not change a bit"


def test_run_part_is_idempotent(model, tmp_path):
    img, _ = make_blobs(300, 260, seed=5)
    src = write_geotiff(tmp_path / "in.tif", img)
    part = plan([src], [tmp_path / "o.tif"], Geometry(224, 160, 16, model.config.gsd))[0]
    job, facts = JobSpec.build([src], [tmp_path / "o.tif"], SegmentOptions()), RunFacts(str(tmp_path))
    first = run_part(part, job, facts, model)
    second = run_part(part, job, facts, model)
    assert first == second
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in.tif", f"{part.id}.labels.tif"])


def test_cluster_equals_in_process_and_survives_a_killed_worker(client, tiny_model, tiny_weights, model, tmp_path):
    img, _ = make_blobs(900, 700, seed=7)
    src = write_geotiff(tmp_path / "in.tif", img, offset=(5, 11))
    local = segment_raster(src, tmp_path / "local.tif", model, opts(probabilities=tmp_path / "local_p.tif"))
    assert local.parts >= 6

    marker = tmp_path / "killed.json"

    class KillOnFirstPart(distributed.WorkerPlugin):
        """Kills its worker as the first part of the job starts executing there (once in the
        cluster: the marker file is created exclusively), so the scheduler must rerun that part."""

        def transition(self, key, start, finish, **kwargs):
            if finish == "executing" and str(key).startswith("segunify-"):
                try:
                    with open(marker, "x") as handle:
                        json.dump({"pid": os.getpid(), "key": str(key)}, handle)
                except FileExistsError:
                    return
                os.kill(os.getpid(), signal.SIGKILL)

    client.register_plugin(KillOnFirstPart(), name="kill-on-first-part")
    try:
        report = segment([src], [tmp_path / "dask.tif"], model, opts(probabilities=tmp_path / "dask_p.tif"),
                         client=client, model_file=tiny_model, backbone_weights=tiny_weights)
    finally:
        client.unregister_worker_plugin("kill-on-first-part")
    killed = json.loads(marker.read_text())
    assert killed["key"].startswith("segunify-"), "a worker was killed as it started a part"
    assert killed["pid"] not in client.run(os.getpid).values(), "that worker is gone (the nanny started another)"
    (a, pa), (b, pb) = read(tmp_path / "local.tif"), read(tmp_path / "dask.tif")
    assert np.array_equal(a, b), "pixel-identical labels"
    assert np.array_equal(read(tmp_path / "local_p.tif")[0], read(tmp_path / "dask_p.tif")[0])
    for key in ("crs", "transform", "dtype", "nodata", "width", "height"):
        assert pa[key] == pb[key]
    assert sorted(report.computed) == sorted(report.manifest) and len(report.computed) == report.parts
    assert not [p for p in tmp_path.rglob("*") if ".partial" in p.name or p.name.endswith(".parts")]


def test_driver_killed_then_resumed_recomputes_only_missing_parts(tiny_model, tiny_weights, tmp_path):
    img, _ = make_blobs(800, 640, seed=8)
    src = write_geotiff(tmp_path / "in.tif", img)
    base = CLI + ["tile-segment", str(src), "--model", str(tiny_model), "--backbone-weights", str(tiny_weights),
                  "--window", "224", "--stride", "160", "--block", "160", "--quiet"]
    reference = subprocess.run(base + [str(tmp_path / "ref.tif")], capture_output=True, text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr
    out = tmp_path / "out.tif"
    manifest = tmp_path / ".out.tif.parts" / "manifest.json"
    # held inside its progress callback at half of the windows (some parts recorded, some not), then killed
    proc = paused_cli(base[len(CLI):] + [str(out), "--resume"], "segment", 50)
    paused = interrupt_when_paused(proc, signal.SIGKILL)
    assert paused["done"] < paused["total"]
    proc.wait(timeout=60)
    recorded = len(json.loads(manifest.read_text())["parts"])
    assert not out.exists()
    again = subprocess.run(base[:-1] + [str(out), "--resume"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    counts = [line for line in again.stderr.splitlines() if "parts:" in line][0]
    computed = int(counts.split("parts: ")[1].split(" computed")[0])
    reused = int(counts.split(", ")[-1].split(" reused")[0])
    print(f"resume: {recorded} parts recorded before the kill; rerun: {counts.strip()}")
    assert reused == recorded and computed >= 1
    assert np.array_equal(read(out)[0], read(tmp_path / "ref.tif")[0]), "the same output as an uninterrupted run"
    assert not (tmp_path / ".out.tif.parts").exists()


def test_batch_of_six_on_a_cluster_equals_in_process(tiny_model, tiny_weights, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(6):
        img, _ = make_blobs(260 + 30 * i, 240, seed=20 + i)
        write_geotiff(folder / f"tile{i}.tif", img, offset=(0, 300 * i))
    base = ["batch", str(folder), "--model", str(tiny_model), "--backbone-weights", str(tiny_weights),
            "--window", "224", "--stride", "160", "--quiet"]
    for name, extra in (("local", []), ("dask", ["--cluster", "local:2"])):
        run = subprocess.run(CLI + base[:2] + [str(tmp_path / name)] + base[2:] + extra, capture_output=True,
                             text=True, timeout=900)
        assert run.returncode == 0, run.stderr
    for i in range(6):
        a, b = read(tmp_path / "local" / f"tile{i}_classes.tif"), read(tmp_path / "dask" / f"tile{i}_classes.tif")
        assert np.array_equal(a[0], b[0]) and a[1]["transform"] == b[1]["transform"]
    assert not (tmp_path / "dask" / ".segunify-parts").exists()


def test_training_on_a_cluster_gives_the_same_model(client, tiny_backbone, tiny_weights, tmp_path):
    from safetensors.torch import load_file

    from segunify_core.training.trainer import TrainConfig, train

    img, _ = make_blobs(500, 500, seed=9)
    tif = write_geotiff(tmp_path / "train.tif", img)
    config = TrainConfig(classes=3, steps=20, batch_size=8, max_windows=80, window=224, seed=3)
    train([tif], tmp_path / "a.safetensors", config, backbone=tiny_backbone, cache_dir=tmp_path / "cache_a")
    train([tif], tmp_path / "b.safetensors", config, backbone=tiny_backbone, backbone_weights=str(tiny_weights),
          cache_dir=tmp_path / "cache_b", client=client)
    a, b = load_file(tmp_path / "a.safetensors"), load_file(tmp_path / "b.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list((tmp_path / "cache_b").glob("*.shards"))


def test_cluster_without_distributed_says_how_to_install(monkeypatch):
    import builtins

    from segunify_core.errors import SegUnifyError
    from segunify_core.job.engines import connect

    real_import = builtins.__import__

    def no_distributed(name, *args, **kwargs):
        if name == "distributed" or name.startswith("distributed."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_distributed)
    with pytest.raises(SegUnifyError, match=r'pip install "segunify\[distributed\]"'):
        connect(cluster="local:2")


def test_in_process_run_does_not_import_dask(tiny_model, tiny_weights, tmp_path):
    img, _ = make_blobs(200, 200, seed=1)
    src = write_geotiff(tmp_path / "in.tif", img)
    code = ("import sys, runpy; sys.argv = ['segunify'] + sys.argv[1:]; "
            "from segunify_cli.main import cli\n"
            "try:\n    cli(obj={})\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "assert 'distributed' not in sys.modules and 'dask' not in sys.modules, 'dask imported'")
    run = subprocess.run([sys.executable, "-c", code, "tile-segment", str(src), str(tmp_path / "o.tif"), "--model",
                          str(tiny_model), "--backbone-weights", str(tiny_weights), "--window", "224", "--quiet"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "o.tif").is_file(), "the run wrote its output"
