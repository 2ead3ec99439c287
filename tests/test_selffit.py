"""Self-fit (tile-segment --classes K without a model) on rasters of any size, through the CLI."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import rasterio

from segunify_core.files.model_file import read_model_file
from tests.conftest import TINY_VIT, make_blobs, write_geotiff

CLI = [sys.executable, "-m", "segunify_cli"]


@pytest.mark.parametrize("flip", ["--flip", "--no-flip"])
@pytest.mark.parametrize("count", [4, 3])
def test_self_fit_on_a_raster_of_one_window(tiny_weights, tmp_path, count, flip):
    """A 300 x 300 px float raster is one window (320 px, stride 256): its flipped view and random
    crops of its feature grid give the cross-image pairs, with and without flip."""
    img, _ = make_blobs(300, 300, seed=3)
    data = img.astype(np.float32) / 255.0 * 3000.0  # reflectance-like floats
    if count == 4:
        data = np.concatenate([data, data[:1] * 0.5 + 100.0])
    src = write_geotiff(tmp_path / "one_window.tif", data)
    out, saved = tmp_path / "classes.tif", tmp_path / "fitted.safetensors"
    run = subprocess.run(CLI + ["tile-segment", str(src), str(out), "--classes", "3", "--backbone", TINY_VIT,
                                "--backbone-weights", str(tiny_weights), "--fit-steps", "5", flip,
                                "--save-model", str(saved), "--quiet"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    with rasterio.open(out) as ds:
        assert (ds.width, ds.height, ds.count) == (300, 300, 1)
        labels = ds.read(1)
    assert labels.min() >= 1 and labels.max() <= 3
    training = read_model_file(saved)[0]["training"]
    assert training["data"]["windows"] == 1
    assert training["config"]["flip"] is (flip == "--flip")  # the metadata states what ran
