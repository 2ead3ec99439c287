"""Data where it lives: inputs over HTTP (nginx, range requests) and S3 (moto's standalone server),
outputs and job folders in a bucket, STAC items, and one clear sentence for each way a URL fails.
Both servers run on 127.0.0.1, started by these tests."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from rasterio.windows import Window

from segunify_core.errors import SegUnifyError
from segunify_core.files.atomic import write_text_atomic
from segunify_core.files.model_file import load_model
from segunify_core.files.raster_io import list_images, open_raster
from segunify_core.files.remote import gdal_env
from segunify_core.job.segment import SegmentOptions, segment_raster
from segunify_core.synthetic import make_blobs, write_geotiff
from tests.helpers import interrupt_when_paused, paused_cli, require_module
from tests.servers import free_port, moto_server, nginx

CLI = [sys.executable, "-m", "segunify_cli"]
WHEN = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
pystac = require_module("pystac", 'pystac is not installed: pip install "segunify[cloud]"')


@pytest.fixture(scope="module")
def http(tmp_path_factory, samples):
    """nginx serving the samples (a symlink, nothing copied) and files the tests put in its root."""
    root = tmp_path_factory.mktemp("www")
    (root / "rasterio").symlink_to(samples / "rasterio")
    with nginx(root, tmp_path_factory.mktemp("nginx")) as server:
        yield server


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server, with its endpoint and fake credentials in this process's environment (and so
    in the CLI children and their Dask workers)."""
    with moto_server(tmp_path_factory.mktemp("moto")) as server, pytest.MonkeyPatch.context() as mp:
        for key, value in server.env.items():
            mp.setenv(key, value)
        yield server


@pytest.fixture(scope="module")
def model(tiny_model, tiny_backbone):
    return load_model(tiny_model, backbone=tiny_backbone)


@pytest.fixture(scope="module")
def small(http):
    """A small generated GeoTIFF served over HTTP (the distributed and STAC runs stay quick)."""
    img, _ = make_blobs(560, 400, seed=12)
    return write_geotiff(http.root / "small.tif", img, tiled=True, blockxsize=256, blockysize=256, compress="deflate")


def read(path) -> tuple[np.ndarray, dict]:
    with gdal_env(), rasterio.open(path) as ds:
        return ds.read(), ds.profile


def opts(**kw) -> SegmentOptions:
    return SegmentOptions(**{"window": 224, "stride": 192, "block": 512, "flip": False, **kw})


def one_error_line(run: subprocess.CompletedProcess) -> str:
    """The CLI failed with one sentence and no traceback."""
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, run.stderr
    return errors[0]


def test_http_and_s3_inputs_give_the_local_output_pixel_for_pixel(model, http, s3, samples, tmp_path):
    src = samples / "rasterio" / "cogeo.tif"
    bucket = s3.bucket("equal")
    s3.fs().put_file(str(src), f"{bucket}/ortho/cogeo.tif")
    options = opts(stride=224, native_resolution=True)  # 25 windows in 4 parts: quick, blended across parts
    segment_raster(src, tmp_path / "local.tif", model, options)
    mark = http.mark()
    segment_raster(f"{http.url}/rasterio/cogeo.tif", tmp_path / "http.tif", model, options)
    requests = http.requests_since(mark)
    out = f"s3://{bucket}/out/cogeo_classes.tif"
    segment_raster(f"s3://{bucket}/ortho/cogeo.tif", out, model, options)
    (a, pa), (b, pb), (c, pc) = read(tmp_path / "local.tif"), read(tmp_path / "http.tif"), read(out)
    assert np.array_equal(a, b) and np.array_equal(a, c), "the same labels from a URL as from the file"
    assert a.max() > 1, "a real segmentation, not an empty raster"
    for key in ("crs", "transform", "width", "height", "dtype", "nodata"):
        assert pa[key] == pb[key] == pc[key]
    assert requests and all(r[2] in (200, 206) for r in requests)
    assert all(r[4].startswith("bytes=") for r in requests if r[0] == "GET"), "GDAL read by range requests only"
    assert s3.keys(bucket) == ["ortho/cogeo.tif", "out/cogeo_classes.qml", "out/cogeo_classes.tif",
                               "out/cogeo_classes.tif.aux.xml"], "no job folder or temporary object left"


def test_a_1mp_window_of_a_large_cog_fetches_its_blocks_not_the_file(http, tmp_path):
    """Bytes counted by the server (nginx's log) for one 1024 x 1024 window of a 4096 x 4096 COG."""
    rng = np.random.default_rng(0)
    side, tile = 4096, 512
    base = (rng.integers(0, 16, (3, side // 8, side // 8), dtype=np.uint8) * 16).repeat(8, 1).repeat(8, 2)
    data = base + rng.integers(0, 2, base.shape, dtype=np.uint8)  # compresses about 4:1, as imagery does
    plain = write_geotiff(tmp_path / "plain.tif", data)
    big = http.root / "big.tif"
    rasterio.shutil.copy(plain, big, driver="COG", BLOCKSIZE=tile, COMPRESS="DEFLATE")
    window = Window(2000, 2300, 1024, 1024)  # not on the block grid: 3 x 3 blocks touched
    mark = http.mark()
    with gdal_env(), open_raster(f"{http.url}/big.tif") as ds:
        remote = ds.read(window=window)
        cols = range(int(window.col_off) // tile, (int(window.col_off) + 1023) // tile + 1)
        rows = range(int(window.row_off) // tile, (int(window.row_off) + 1023) // tile + 1)
        blocks = sum(ds.block_size(1, r, c) for r in rows for c in cols)
    fetched = http.bytes_since(mark, "/big.tif")
    with rasterio.open(big) as ds:
        assert np.array_equal(remote, ds.read(window=window)), "the window's pixels, exactly"
    size = big.stat().st_size
    print(f"1 MP window of a {side} x {side} COG ({size / 1e6:.1f} MB): fetched {fetched / 1e6:.3f} MB over HTTP "
          f"for {len(rows) * len(cols)} blocks of {blocks / 1e6:.3f} MB compressed ({fetched / blocks:.2f} x), "
          f"{100 * fetched / size:.1f} % of the file")
    assert blocks <= fetched <= blocks + 256 * 1024, "the window's compressed blocks plus the header"
    assert fetched < size / 4, "9 of the 64 full-resolution blocks, no overview"


def test_cluster_job_over_http_into_s3_killed_and_resumed_ends_as_the_local_run(model, tiny_model, tiny_weights,
                                                                                 http, s3, small, tmp_path):
    """Workers read the input over HTTP and put parts in the bucket; the driver is killed (SIGTERM) while
    the job runs, then resumed against the bucket: the output equals an uninterrupted local run."""
    segment_raster(small, tmp_path / "local.tif", model, opts(stride=160, block=160, flip=True))
    bucket = s3.bucket("cluster")
    out = f"s3://{bucket}/results/small_classes.tif"
    args = ["tile-segment", f"{http.url}/small.tif", out, "--model", tiny_model, "--backbone-weights", tiny_weights,
            "--window", "224", "--stride", "160", "--block", "160", "--resume", "--cluster", "local:2"]
    proc = paused_cli(args, "segment", 40)
    paused = interrupt_when_paused(proc, signal.SIGTERM)
    proc.wait(timeout=900)  # a hang guard: closing the LocalCluster is slow on a loaded machine
    assert proc.returncode == 130, proc.stderr.read() if proc.stderr else ""
    assert paused["done"] < paused["total"]
    left = s3.keys(bucket)
    assert "results/.small_classes.tif.parts/manifest.json" in left and "results/small_classes.tif" not in left
    assert not [k for k in left if ".partial" in k], "only whole objects"
    manifest = json.loads(s3.fs().cat_file(f"{bucket}/results/.small_classes.tif.parts/manifest.json"))
    again = subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    counts = next(line for line in again.stderr.splitlines() if "parts:" in line)
    print(f"killed with {len(manifest['parts'])} parts recorded; resumed: {counts.strip()}")
    assert f"{len(manifest['parts'])} reused" in counts
    assert np.array_equal(read(out)[0], read(tmp_path / "local.tif")[0]), "identical to the local run"
    assert s3.keys(bucket) == ["results/small_classes.qml", "results/small_classes.tif",
                               "results/small_classes.tif.aux.xml"], "no stray objects"


def test_cancelled_run_into_a_bucket_leaves_nothing_there(model, s3, small):
    """Ctrl-C (or the plugin's Cancel) halfway through a run whose output and job folder are in the bucket."""
    bucket = s3.bucket("cancel")

    def cancel(phase, done, total, stats=None):
        if phase == "segment" and 0 < done < total:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        segment_raster(small, f"s3://{bucket}/out.tif", model, opts(block=160), progress=cancel)
    assert s3.keys(bucket) == [], "no part, manifest or output object left"


def test_stac_collection_in_bucket_out(tiny_model, tiny_weights, model, http, s3, small, tmp_path):
    """`segunify batch` on a saved STAC search (ItemCollection): each item's visual asset, read over
    HTTP, segmented into the bucket, named by the item id, on the asset's grid."""
    with rasterio.open(small) as ds:
        bbox, transform, shape = list(ds.bounds), list(ds.transform)[:6], [ds.height, ds.width]
    items = []
    for name in ("scene-a", "scene-b"):
        item = pystac.Item(name, None, bbox, WHEN,
                           {"proj:transform": transform, "proj:shape": shape})
        item.add_asset("visual", pystac.Asset(f"{http.url}/small.tif", media_type=pystac.MediaType.COG,
                                              roles=["visual"]))
        item.add_asset("thumbnail", pystac.Asset(f"{http.url}/thumb.png", roles=["thumbnail"]))
        items.append(item)
    collection = tmp_path / "search.json"
    pystac.ItemCollection(items).save_object(str(collection))
    bucket = s3.bucket("stac")
    run = subprocess.run(CLI + ["batch", str(collection), f"s3://{bucket}/maps", "--model", str(tiny_model),
                                "--backbone-weights", str(tiny_weights), "--window", "224", "--stride", "192",
                                "--no-flip", "--quiet"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    segment_raster(small, tmp_path / "local.tif", model, opts())
    expected, profile = read(tmp_path / "local.tif")
    for name in ("scene-a", "scene-b"):
        labels, got = read(f"s3://{bucket}/maps/{name}_classes.tif")
        assert np.array_equal(labels, expected)
        assert list(got["transform"])[:6] == transform and [got["height"], got["width"]] == shape, "the item's grid"
    assert s3.keys(bucket) == sorted(f"maps/{n}_classes{s}" for n in ("scene-a", "scene-b")
                                     for s in (".qml", ".tif", ".tif.aux.xml"))
    from segunify_core.files.stac import item_raster

    with pytest.raises(SegUnifyError, match=r"is a STAC item collection, not an item; .*`segunify batch`"):
        item_raster(str(collection))  # what tile-segment does with its input


def test_stac_item_asset_choice(http, tmp_path):
    from segunify_core.files.stac import item_raster

    item = pystac.Item("x", None, [0, 0, 1, 1], WHEN, {})
    item.add_asset("B04", pystac.Asset("https://example.com/B04.tif", media_type=pystac.MediaType.COG, roles=["data"]))
    item.add_asset("B08", pystac.Asset("B08.tif", media_type=pystac.MediaType.COG, roles=["data"]))
    path = tmp_path / "item.json"
    item.save_object(dest_href=str(path), include_self_link=False)
    with pytest.raises(SegUnifyError, match=r"no visual \(RGB\) asset; choose one of B04, B08 \(--asset\)"):
        item_raster(str(path))
    assert item_raster(str(path), "B08").href == str(tmp_path / "B08.tif"), "relative hrefs resolved"
    item.add_asset("visual", pystac.Asset("https://example.com/tci.tif", roles=["visual"]))
    item.save_object(dest_href=str(path), include_self_link=False)
    assert item_raster(str(path)).href == "https://example.com/tci.tif"
    with pytest.raises(SegUnifyError, match=r"no asset 'red'"):
        item_raster(str(path), "red")


def test_bad_urls_say_what_is_wrong_in_one_sentence(http, s3, tmp_path):
    (http.root / "notes.txt").write_text("not a raster\n" * 100)
    bucket = s3.bucket("errors")
    closed = free_port()
    cases = {
        f"{http.url}/missing.tif": r"was not found on the server \(HTTP 404\); check the URL",
        f"{http.url}/forbidden/a.tif": r"was refused by the server \(HTTP 403\)",
        f"http://127.0.0.1:{closed}/a.tif": r"Cannot reach the host of .*; check the address",
        f"{http.url}/notes.txt": r"is not a raster GDAL can read; give the URL of a GeoTIFF/COG",
        f"s3://{bucket}/missing.tif": r"was not found \(no such bucket or key\)",
        "s3://no-such-bucket/a.tif": r"was not found \(no such bucket or key\)",
    }
    for url, message in cases.items():
        with pytest.raises(SegUnifyError, match=message):
            open_raster(url)
    with pytest.raises(SegUnifyError, match=r"its bucket does not exist"):
        write_text_atomic("s3://no-such-bucket/out/manifest.json", "{}")
    assert s3.keys(bucket) == []


def test_cli_bad_url_and_missing_credentials_write_nothing(tiny_model, tiny_weights, http, s3, samples, tmp_path):
    bucket = s3.bucket("creds")
    s3.fs().put_file(str(samples / "rasterio" / "cogeo.tif"), f"{bucket}/in.tif")
    base = ["--model", str(tiny_model), "--backbone-weights", str(tiny_weights), "--window", "224", "--quiet"]
    missing = subprocess.run(CLI + ["tile-segment", f"{http.url}/missing.tif", str(tmp_path / "o.tif"), *base],
                             capture_output=True, text=True, timeout=300)
    assert "HTTP 404" in one_error_line(missing)
    no_keys = {k: v for k, v in os.environ.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    no_keys.update(AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_CONFIG_FILE=str(tmp_path / "none"))
    for args in ([f"s3://{bucket}/in.tif", str(tmp_path / "o.tif")],
                 [str(samples / "rasterio" / "cogeo.tif"), f"s3://{bucket}/out.tif"]):
        run = subprocess.run(CLI + ["tile-segment", *args, *base], capture_output=True, text=True, timeout=300,
                             env=no_keys)
        line = one_error_line(run)
        assert "No AWS credentials" in line and "AWS_ACCESS_KEY_ID" in line and "testing" not in run.stderr
    assert not list(tmp_path.glob("o*")), "nothing written locally"
    assert s3.keys(bucket) == ["in.tif"], "nothing written to the bucket"


def test_inputs_listed_from_a_prefix_and_a_list_file(http, s3, small, tmp_path):
    bucket = s3.bucket("listing")
    for key in ("tiles/a.tif", "tiles/b.TIF", "tiles/readme.txt", "tiles/.hidden.tif", "other/c.tif"):
        s3.fs().put_file(str(small), f"{bucket}/{key}")
    assert list_images([f"s3://{bucket}/tiles/"]) == [f"s3://{bucket}/tiles/a.tif", f"s3://{bucket}/tiles/b.TIF"]
    listing = tmp_path / "inputs.txt"
    listing.write_text(f"# rasters\n{http.url}/small.tif\n\n{small}\n")
    assert list_images([listing]) == [f"{http.url}/small.tif", small]
    with pytest.raises(SegUnifyError, match="No rasters under"):
        list_images([f"s3://{bucket}/nothing/"])


def test_evaluate_on_an_s3_prefix_scores_as_the_local_folder(model, s3, tmp_path):
    from segunify_core.training.evaluation import evaluate

    img, labels = make_blobs(288, 256, seed=5)
    folder = tmp_path / "eval"
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    write_geotiff(folder / "images" / "a.tif", img)
    write_geotiff(folder / "labels" / "a.tif", labels[None].astype(np.uint8))
    bucket = s3.bucket("evaluate")
    for sub in ("images", "labels"):
        s3.fs().put_file(str(folder / sub / "a.tif"), f"{bucket}/set/{sub}/a.tif")
    local, _ = evaluate(model, folder, flip=False)
    remote, protocol = evaluate(model, f"s3://{bucket}/set", flip=False)
    assert sum(map(sum, local.confusion_matrix)) > 0
    assert remote == local and protocol["root"] == f"s3://{bucket}/set"


def test_missing_scheduler_file_waits_a_bounded_time_then_says_how_to_fix(tmp_path):
    from segunify_core import settings
    from segunify_core.job.engines import wait_for_scheduler_file

    assert 0 < settings.SCHEDULER_FILE_WAIT_S < 3600
    path = tmp_path / "scheduler.json"
    with pytest.raises(SegUnifyError, match=r"did not appear within 0.3 s; start the scheduler with `dask scheduler "
                                            r"--scheduler-file .*` first, or fix the path \(--scheduler-file\)"):
        wait_for_scheduler_file(str(path), wait_s=0.3)
    writer = threading.Timer(0.2, lambda: path.write_text("{}"))
    writer.start()
    with contextlib.ExitStack() as stack:
        stack.callback(writer.cancel)
        start = time.monotonic()
        wait_for_scheduler_file(str(path), wait_s=120)  # returns once the file is there
        assert time.monotonic() - start < 120 and path.exists()


def test_urls_are_not_local_paths():
    from segunify_core.files import remote

    assert remote.gdal_path("s3://b/k/x.tif") == "/vsis3/b/k/x.tif"
    assert remote.gdal_path("https://h/x.tif") == "/vsicurl/https://h/x.tif"
    assert remote.join("s3://b/k", "m.json") == "s3://b/k/m.json" and remote.parent_of("s3://b/k/x.tif") == "s3://b/k"
    assert remote.location("s3://b/x") == "s3://b/x" and remote.location("x.tif") == Path("x.tif")
