"""Bad input, interruptions and untrusted files: one clear sentence, non-zero exit, no partial
output, inputs unchanged. Each case runs the real CLI in a subprocess."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rasterio.windows import Window

from segunify_core.errors import SegUnifyError
from segunify_core.files.raster_io import RasterReader, choose_bands
from segunify_core.job.tiling import WindowPlan
from segunify_core.synthetic import make_blobs, write_geotiff
from tests.conftest import TINY_VIT
from tests.helpers import exploit_pickle

CLI = [sys.executable, "-m", "segunify_cli"]


def _default_signals():
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def run_fail(case: str, args: list[str], expect: str, workdir: Path, inputs: Path | None = None, **popen) -> str:
    """Run the CLI expecting a clean failure; return its one-line message."""
    before = digest(inputs) if inputs else None
    listing = set(os.listdir(workdir))
    run = subprocess.run(CLI + args, capture_output=True, text=True, timeout=600, **popen)
    errors = [line for line in run.stderr.splitlines() if line.startswith("Error: ")]
    assert run.returncode != 0, f"{case}: exit 0\n{run.stderr}"
    assert "Traceback" not in run.stderr, f"{case}: traceback\n{run.stderr}"
    assert len(errors) == 1, f"{case}: {run.stderr}"
    message = errors[0][len("Error: "):]
    assert expect in message, f"{case}: {message}"
    assert message.count(". ") == 0 or ";" in message, f"{case}: not one sentence: {message}"
    assert set(os.listdir(workdir)) == listing, f"{case}: left files {set(os.listdir(workdir)) - listing}"
    if inputs:
        assert digest(inputs) == before, f"{case}: input changed"
    return message


@pytest.fixture
def env(tmp_path, tiny_model, tiny_weights):
    inputs, out = tmp_path / "inputs", tmp_path / "out"
    inputs.mkdir()
    out.mkdir()
    img, _ = make_blobs(300, 260, seed=1)
    good = write_geotiff(inputs / "good.tif", img)
    seg = ["tile-segment", "--model", str(tiny_model), "--backbone-weights", str(tiny_weights), "--window", "224",
           "--stride", "160"]
    return {"inputs": inputs, "out": out, "good": good, "seg": seg, "model": tiny_model, "weights": tiny_weights}


def seg_args(env, src, *extra, out_name="classes.tif"):
    return env["seg"][:1] + [str(src), str(env["out"] / out_name)] + env["seg"][1:] + list(extra)


# ---------------------------------------------------------------- raster input
def test_missing_path(env):
    run_fail("missing input", seg_args(env, env["inputs"] / "nope.tif"), "does not exist", env["out"], env["inputs"])


def test_directory(env):
    run_fail("input is a folder", seg_args(env, env["inputs"]), "is a folder", env["out"], env["inputs"])


def test_text_file_named_tif(env):
    (env["inputs"] / "notes.tif").write_text("hello\n")
    run_fail("non-raster .tif", seg_args(env, env["inputs"] / "notes.tif"), "not a raster GDAL can read",
             env["out"], env["inputs"])


def test_truncated_geotiff(env):
    img, _ = make_blobs(600, 600, seed=2)
    full = write_geotiff(env["out"] / "whole.tif", img, tiled=True, blockxsize=256, blockysize=256)
    data = full.read_bytes()
    (env["inputs"] / "cut.tif").write_bytes(data[: len(data) // 2])
    full.unlink()
    run_fail("truncated GeoTIFF", seg_args(env, env["inputs"] / "cut.tif"), "damaged or truncated", env["out"],
             env["inputs"])


def test_zero_bands(env):
    message = run_fail("zero bands selected", seg_args(env, env["good"], "--bands", ","), "No band selected",
                       env["out"], env["inputs"])
    assert "bands (--bands)" in message  # the setting in words (QGIS users never typed a flag), then the flag


def test_band_out_of_range(env):
    message = run_fail("band index out of range", seg_args(env, env["good"], "--bands", "1,2,7"), "out of range",
                       env["out"], env["inputs"])
    assert "bands (--bands)" in message


@pytest.mark.parametrize("shape", [(1, 50), (50, 1)])
def test_one_pixel_wide(env, shape):
    src = write_geotiff(env["inputs"] / "thin.tif", np.zeros((3, *shape), np.uint8))
    run_fail(f"raster {shape[1]} x {shape[0]} px", seg_args(env, src), "at least 2 x 2", env["out"], env["inputs"])


def test_zero_size_raster_cannot_exist_but_empty_file_is_refused(env):
    (env["inputs"] / "empty.tif").write_bytes(b"")
    run_fail("empty (0-byte) file", seg_args(env, env["inputs"] / "empty.tif"), "not a raster", env["out"],
             env["inputs"])


def test_all_nodata(env):
    src = write_geotiff(env["inputs"] / "void.tif", np.zeros((3, 64, 64), np.uint8), nodata=0)
    run_fail("all pixels nodata", seg_args(env, src), "no valid pixels", env["out"], env["inputs"])


def test_two_bands(env):
    src = write_geotiff(env["inputs"] / "two.tif", np.zeros((2, 64, 64), np.uint8) + 7)
    assert "bands (--bands)" in run_fail("2-band raster", seg_args(env, src), "2 image bands", env["out"], env["inputs"])


def test_complex_raster(env):
    src = write_geotiff(env["inputs"] / "cplx.tif", (np.ones((1, 64, 64)) * (1 + 2j)).astype(np.complex64))
    run_fail("complex-valued raster", seg_args(env, src), "complex values", env["out"], env["inputs"])


def test_palette_raster_is_expanded(env):
    img, _ = make_blobs(200, 200, seed=3)
    index = (img[0] // 64).astype(np.uint8)
    src = env["inputs"] / "palette.tif"
    with rasterio.open(src, "w", driver="GTiff", width=200, height=200, count=1, dtype="uint8", crs="EPSG:32618",
                       transform=rasterio.transform.from_origin(500000, 4000000, 0.5, 0.5)) as ds:
        ds.write(index, 1)
        ds.write_colormap(1, {0: (255, 0, 0, 255), 1: (0, 255, 0, 255), 2: (0, 0, 255, 255), 3: (9, 9, 9, 255)})
    with RasterReader.open(src) as reader:
        rgb, valid = reader.read(Window(0, 0, 4, 4))
        assert reader.palette is not None and valid.all()
        assert rgb[:, 0, 0].tolist() == [[255, 0, 0], [0, 255, 0], [0, 0, 255], [9, 9, 9]][index[0, 0]]
    run = subprocess.run(CLI + seg_args(env, src), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr


def test_path_with_spaces_quotes_unicode(env):
    weird = env["inputs"] / "my 'ortho' \"v2\" – Zürich ü.tif"
    weird.write_bytes(env["good"].read_bytes())
    out = env["out"] / "sortie 'classée' ü.tif"
    run = subprocess.run(CLI + env["seg"][:1] + [str(weird), str(out)] + env["seg"][1:], capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    with rasterio.open(out) as ds:
        assert ds.width == 300


def test_larger_than_4gb_streams(env, tmp_path):
    """A 40000 x 40000 x 3 BigTIFF (4.8 GB of pixels, sparse on disk: nodata except one block)."""
    src = tmp_path / "huge.tif"
    with rasterio.open(src, "w", driver="GTiff", width=40000, height=40000, count=3, dtype="uint8", nodata=0,
                       crs="EPSG:32618", transform=rasterio.transform.from_origin(500000, 4000000, 0.5, 0.5),
                       tiled=True, blockxsize=512, blockysize=512, BIGTIFF="YES", SPARSE_OK="TRUE") as ds:
        img, _ = make_blobs(512, 512, seed=4)
        ds.write(img, window=Window(20480, 20480, 512, 512))
    assert 40000 * 40000 * 3 > 4 * 2**30
    out = env["out"] / "huge_classes.tif"
    run = subprocess.run(CLI + env["seg"][:1] + [str(src), str(out)] + env["seg"][1:] + ["--quiet"],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr
    with rasterio.open(out) as ds:
        assert (ds.width, ds.height) == (40000, 40000)
        block = ds.read(1, window=Window(20480, 20480, 512, 512))
        assert (block > 0).all()
        assert ds.read(1, window=Window(0, 0, 512, 512)).max() == 0


# ---------------------------------------------------------------- model file
def test_model_missing(env):
    args = seg_args(env, env["good"])
    args[args.index("--model") + 1] = str(env["inputs"] / "none.safetensors")
    run_fail("model missing", args, "does not exist", env["out"], env["inputs"])


def test_model_truncated(env):
    cut = env["inputs"] / "cut.safetensors"
    data = Path(env["model"]).read_bytes()
    cut.write_bytes(data[: len(data) // 3])
    args = seg_args(env, env["good"])
    args[args.index("--model") + 1] = str(cut)
    run_fail("model truncated", args, "not a SegUnify model file", env["out"], env["inputs"])


def test_model_not_segunify(env):
    import torch
    from safetensors.torch import save_file

    other = env["inputs"] / "other.safetensors"
    save_file({"w": torch.zeros(3)}, str(other))
    args = seg_args(env, env["good"])
    args[args.index("--model") + 1] = str(other)
    run_fail("not a SegUnify file", args, "not a SegUnify model", env["out"], env["inputs"])


def test_model_newer_version(env):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(env["model"]), "pt") as handle:
        meta = json.loads(handle.metadata()["segunify"])
    meta["format_version"] = 99
    newer = env["inputs"] / "newer.safetensors"
    save_file(load_file(str(env["model"])), str(newer), metadata={"segunify": json.dumps(meta)})
    args = seg_args(env, env["good"])
    args[args.index("--model") + 1] = str(newer)
    run_fail("newer format version", args, "upgrade SegUnify", env["out"], env["inputs"])


def test_model_backbone_mismatch(env, tmp_path):
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    other = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0)
    weights = env["inputs"] / "small.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(weights))
    args = seg_args(env, env["good"])
    args[args.index("--backbone-weights") + 1] = str(weights)
    run_fail("backbone weights do not match the model", args, "do not fit this backbone", env["out"], env["inputs"])


def test_model_band_mismatch(env, tiny_backbone, tmp_path):
    from segunify_core.training.trainer import TrainConfig, train

    img = np.concatenate([make_blobs(200, 200, seed=5)[0], np.full((1, 200, 200), 9, np.uint8)])
    four = write_geotiff(tmp_path / "four.tif", img)
    model = tmp_path / "bands.safetensors"
    train([four], model, TrainConfig(classes=3, steps=2, batch_size=2, max_windows=4, window=64, bands=[4, 2, 1]),
          backbone=tiny_backbone, cache_dir=tmp_path / "c")
    args = seg_args(env, env["good"])
    args[args.index("--model") + 1] = str(model)
    run_fail("model bands vs input bands", args, "trained on bands 4,2,1", env["out"], env["inputs"])


OFFLINE = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": "/nonexistent-hf-home"}


def test_model_uses_its_recorded_backbone_weights_offline(env):
    """A model trained with --backbone-weights FILE finds FILE again: no flag, no download."""
    args = seg_args(env, env["good"])
    at = args.index("--backbone-weights")
    del args[at:at + 2]
    run = subprocess.run(CLI + args, capture_output=True, text=True, timeout=600, env=OFFLINE)
    assert run.returncode == 0, run.stderr
    assert (env["out"] / "classes.tif").is_file()


def test_model_refuses_backbone_weights_of_another_hash(env):
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(1)
    other = timm.create_model(TINY_VIT, pretrained=False, num_classes=0)
    weights = env["inputs"] / "other_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(weights))
    args = seg_args(env, env["good"])
    args[args.index("--backbone-weights") + 1] = str(weights)
    run_fail("backbone weights of another hash", args, "backbone weights (--backbone-weights)", env["out"],
             env["inputs"], env=OFFLINE)


def test_pickle_renamed_refused(env, tmp_path):
    evil = env["inputs"] / "model.safetensors"
    evil.write_bytes(exploit_pickle())
    args = seg_args(env, env["good"])
    args[args.index("--model") + 1] = str(evil)
    run_fail("pickle renamed to .safetensors", args, "not a SegUnify model file", env["out"], env["inputs"],
             cwd=tmp_path)
    assert not (tmp_path / "EXPLOITED").exists()


# ---------------------------------------------------------------- output
def test_existing_output(env):
    (env["out"] / "classes.tif").write_text("precious")
    run_fail("existing output without --overwrite", seg_args(env, env["good"]), "--overwrite", env["out"],
             env["inputs"])
    assert (env["out"] / "classes.tif").read_text() == "precious"


def test_unwritable_folder(env, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode != 0:
            pytest.skip("root cannot make an unwritable folder here (chattr +i refused)")
    else:
        locked.chmod(0o555)
    try:
        args = env["seg"][:1] + [str(env["good"]), str(locked / "classes.tif")] + env["seg"][1:]
        run_fail("unwritable output folder", args, "writable", locked, env["inputs"])
    finally:
        subprocess.run(["chattr", "-i", str(locked)], capture_output=True)
        locked.chmod(0o755)


def test_output_folder_missing(env):
    args = env["seg"][:1] + [str(env["good"]), str(env["out"] / "no" / "such" / "c.tif")] + env["seg"][1:]
    run_fail("output folder missing", args, "does not exist", env["out"], env["inputs"])


def _file_size_limit():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, 150_000))


def test_disk_full(env):
    """A file-size limit makes writes fail like a full disk; the partial file is removed."""
    img, _ = make_blobs(900, 900, seed=6, noise=40)
    src = write_geotiff(env["inputs"] / "big.tif", img)
    run_fail("disk full (file-size limit)", seg_args(env, src, "--probabilities", str(env["out"] / "p.tif")),
             "disk is full", env["out"], env["inputs"], preexec_fn=_file_size_limit)


def test_train_disk_full(env, tmp_path):
    run_fail("disk full while training", ["train", str(env["good"]), "-o", str(env["out"] / "m.safetensors"),
                                          "--backbone", TINY_VIT, "--backbone-weights", str(env["weights"]),
                                          "--steps", "2", "--batch-size", "2", "--max-windows", "4", "--window", "64",
                                          "--cache-dir", str(tmp_path / "cache")],
             "disk is full", env["out"], env["inputs"], preexec_fn=_file_size_limit)


# ---------------------------------------------------------------- interruptions
def _interrupt_when(proc, phase: str, percent: int, sig) -> int:
    for line in proc.stdout:
        event = json.loads(line)
        if event.get("phase") == phase and event.get("percent", 0) >= percent:
            proc.send_signal(sig)
            return event["percent"]
    return -1


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_train_interrupted_then_resumed(env, tmp_path, sig):
    img, _ = make_blobs(400, 400, seed=7)
    data = write_geotiff(env["inputs"] / "train.tif", img)
    base = ["train", str(data), "--backbone", TINY_VIT, "--backbone-weights", str(env["weights"]), "--steps", "60",
            "--batch-size", "4", "--max-windows", "8", "--window", "64", "--checkpoint-every", "10",
            "--cache-dir", str(tmp_path / "cache"), "--seed", "5"]
    ref = env["out"] / "ref.safetensors"
    subprocess.run(CLI + base + ["-o", str(ref)], check=True, capture_output=True, timeout=600)
    model = env["out"] / "model.safetensors"
    before = digest(env["inputs"])
    proc = subprocess.Popen(CLI + ["--progress", "json"] + base + ["-o", str(model)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_default_signals)
    at = _interrupt_when(proc, "train", 40, sig)
    proc.wait(timeout=120)
    assert 0 <= at < 100 and proc.returncode == 130
    assert not model.exists(), "no model file from an interrupted run"
    state = env["out"] / "model.train-state.safetensors"
    assert state.exists(), "the last complete checkpoint is kept"
    assert not [p for p in os.listdir(env["out"]) if "partial" in p or p.endswith(".tmp")]
    subprocess.run(CLI + base + ["-o", str(model), "--resume"], check=True, capture_output=True, timeout=600)
    from safetensors.torch import load_file

    a, b = load_file(str(ref)), load_file(str(model))
    assert a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    assert digest(env["inputs"]) == before


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_batch_interrupted(env, sig):
    folder = env["inputs"] / "tiles"
    folder.mkdir()
    for i in range(4):
        img, _ = make_blobs(700, 700, seed=10 + i)
        write_geotiff(folder / f"t{i}.tif", img)
    before = digest(folder)
    out = env["out"] / "batch"
    proc = subprocess.Popen(CLI + ["--progress", "json", "batch", str(folder), str(out), "--model", str(env["model"]),
                                   "--backbone-weights", str(env["weights"]), "--window", "224", "--stride", "160",
                                   "--batch-size", "1", "--resume"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_signals)
    for line in proc.stdout:  # one job over the four files; each file is assembled once its parts are in
        event = json.loads(line)
        if (out / "t0_classes.tif").exists() and event.get("phase") == "segment" and 40 <= event["percent"] < 75:
            proc.send_signal(sig)
            break
    proc.wait(timeout=120)
    assert proc.returncode == 130
    names = sorted(os.listdir(out))
    # the finished file stays, nothing partial; with --resume the job's finished parts stay for the next run
    assert names == [".segunify-parts", "t0_classes.qml", "t0_classes.tif", "t0_classes.tif.aux.xml"], names
    assert not [p for p in (out / ".segunify-parts").iterdir() if ".partial" in p.name]
    assert digest(folder) == before


# ---------------------------------------------------------------- training data
def test_empty_training_folder(env, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    run_fail("empty training folder", ["train", str(empty), "-o", str(env["out"] / "m.safetensors"), "--backbone",
                                       TINY_VIT, "--backbone-weights", str(env["weights"])], "No images found",
             env["out"])


def test_unreadable_training_files_skipped(env, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    img, _ = make_blobs(200, 200, seed=8)
    write_geotiff(folder / "a.tif", img)
    (folder / "broken.tif").write_text("nope")
    (folder / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    run = subprocess.run(CLI + ["train", str(folder), "-o", str(env["out"] / "m.safetensors"), "--backbone", TINY_VIT,
                                "--backbone-weights", str(env["weights"]), "--steps", "2", "--batch-size", "2",
                                "--max-windows", "4", "--window", "64", "--cache-dir", str(tmp_path / "c")],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "skipped 2 unreadable training image(s)" in run.stderr


def test_images_smaller_than_window(env, tmp_path):
    folder = tmp_path / "small"
    folder.mkdir()
    for i in range(2):
        write_geotiff(folder / f"s{i}.tif", make_blobs(40, 30, seed=i)[0])
    run = subprocess.run(CLI + ["train", str(folder), "-o", str(env["out"] / "m.safetensors"), "--backbone", TINY_VIT,
                                "--backbone-weights", str(env["weights"]), "--steps", "2", "--batch-size", "2",
                                "--max-windows", "4", "--cache-dir", str(tmp_path / "c")],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr


def test_debug_shows_traceback(env):
    run = subprocess.run(CLI[:3] + ["--debug"] + seg_args(env, env["inputs"] / "nope.tif"), capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 1 and "Traceback" in run.stderr


# ---------------------------------------------------------------- properties
@settings(max_examples=300, deadline=None)
@given(width=st.integers(1, 3000), height=st.integers(1, 3000), patches=st.integers(1, 48),
       stride_patches=st.integers(1, 48), col_phase=st.integers(-10**7, 10**7), row_phase=st.integers(-10**7, 10**7))
def test_window_plan_properties(width, height, patches, stride_patches, col_phase, row_phase):
    window = patches * 8
    stride = min(stride_patches, patches) * 8
    plan = WindowPlan(width, height, window, stride, col_phase, row_phase)
    cover_x, cover_y = np.zeros(width, int), np.zeros(height, int)
    for offsets, size, cover in ((plan.col_offsets, width, cover_x), (plan.row_offsets, height, cover_y)):
        assert offsets == sorted(set(offsets)) and offsets[0] == 0
        for o in offsets:
            assert 0 <= o and o + min(window, size) <= size, "windows stay inside the raster"
            cover[o:o + window] += 1
        assert (cover > 0).all(), "every pixel is covered"
    for tile in list(plan.tiles())[:50]:
        w = plan.weights(tile)
        assert w.shape == (tile.height, tile.width) and (w > 0).all() and (w <= 1).all()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(count=st.integers(1, 5), dtype=st.sampled_from(["uint8", "uint16", "float32"]),
       nodata=st.sampled_from([None, 0, 255]), seed=st.integers(0, 10**6), data=st.data())
def test_band_and_nodata_properties(tmp_path_factory, count, dtype, nodata, seed, data):
    rng = np.random.default_rng(seed)
    h, w = 17, 23
    arr = rng.integers(1, 250, (count, h, w)).astype(dtype)
    invalid = rng.random((h, w)) < 0.3
    if nodata is not None:
        arr[:, invalid] = nodata
    path = tmp_path_factory.mktemp("p") / "r.tif"
    profile = {"nodata": nodata} if nodata is not None else {}
    write_geotiff(path, arr, **profile)
    bands = data.draw(st.one_of(st.none(), st.lists(st.integers(0, count + 1), min_size=0, max_size=4)))
    with rasterio.open(path) as ds:
        expected_mask = ds.dataset_mask() > 0
        try:
            chosen = choose_bands(ds, bands)
        except SegUnifyError as exc:
            bad_default = bands is None and count == 2
            bad_choice = bands is not None and (len(bands) not in (1, 3) or any(not 1 <= b <= count for b in bands))
            assert bad_default or bad_choice, str(exc)
            return
    assert all(1 <= b <= count for b in chosen) and len(chosen) == 3
    try:
        reader = RasterReader.open(path, bands)
    except SegUnifyError as exc:
        assert "no valid pixels" in str(exc) and not expected_mask.any()
        return
    with reader:
        rgb, valid = reader.read(Window(0, 0, w, h))
    assert np.array_equal(valid, expected_mask), "mask = GDAL's dataset mask (nodata, alpha, internal)"
    assert rgb.shape == (3, h, w) and rgb.min() >= 0 and rgb.max() <= 255
    if dtype == "uint8":  # 8-bit data passes unchanged at valid pixels (invalid ones are filled later)
        for i, b in enumerate(chosen):
            assert np.array_equal(rgb[i][valid], arr[b - 1][valid].astype(np.float32))
