"""The job spec and the one declaration of each setting (segunify_core/settings.py).

A made-up boolean segmentation setting, added to the declaration alone, must show in both
commands' --help, the API's spec, what the workers receive and the resume fingerprint; and
`tile-segment INPUT OUTPUT` with neither --model nor --classes self-fits the default classes.
"""

from __future__ import annotations

import json
import subprocess
import sys

import rasterio

from segunify_core import settings
from segunify_core.job.spec import JobSpec, RunFacts
from segunify_core.settings import SegmentOptions, SelfFitOptions
from segunify_core.synthetic import make_blobs, write_geotiff
from tests.conftest import REPO, TINY_VIT

CLI = [sys.executable, "-m", "segunify_cli"]

# Runs in a fresh interpreter: the extra field must be in the declaration before anything reads it.
WITH_MADE_UP = r'''
import dataclasses, json, sys
from pathlib import Path

sys.path.insert(0, sys.argv[5])
from segunify_core import settings
from tests.helpers import with_made_up_setting

settings.SegmentOptions = with_made_up_setting(settings)

from click.testing import CliRunner
import segunify_core.job.engines as engines
import segunify_core.job.worker as worker
from segunify_cli.main import cli
from segunify_core import JobSpec, SegmentOptions
from segunify_core.job.planning import Geometry, plan
from segunify_core.job.segment import fingerprint
from segunify_core.job.spec import RunFacts

src, model, weights, folder = map(Path, sys.argv[1:5])
seen = {}
received = []
real_run_part = engines.run_part

def recording_run_part(part, job, facts, *args, **kwargs):
    received.append(job.options.made_up)
    return real_run_part(part, job, facts, *args, **kwargs)

engines.run_part = worker.run_part = recording_run_part
runner = CliRunner()
for command in ("tile-segment", "batch"):
    seen[command + " --help"] = runner.invoke(cli, [command, "--help"]).output
run = runner.invoke(cli, ["tile-segment", str(src), str(folder / "out.tif"), "--model", str(model), "--backbone-weights",
                          str(weights), "--window", "224", "--stride", "160", "--made-up", "--quiet"])
seen["cli exit"], seen["cli output"] = run.exit_code, run.output
seen["in-process worker"] = list(received)
job = JobSpec.build([src], [folder / "o.tif"], SegmentOptions(window=224, stride=160, made_up=True), model_file=model)
seen["api json"] = json.loads(job.to_json())["options"]
parts = plan([src], [folder / "o.tif"], Geometry(224, 160, 16, None))
facts = RunFacts(str(folder), model_file=str(model), model_sha256="test", backbone_weights=str(weights))
received.clear()
worker.run_part_task(parts[0].to_dict(), job.to_json(), facts.to_dict())  # what a Dask worker runs
seen["dask worker"] = list(received)
off = dataclasses.replace(job, options=dataclasses.replace(job.options, made_up=False))
seen["fingerprints differ"] = fingerprint(parts, job, None) != fingerprint(parts, off, None)
print(json.dumps(seen))
'''


def test_a_setting_declared_once_reaches_cli_api_workers_and_fingerprint(tiny_model, tiny_weights, tmp_path):
    img, _ = make_blobs(300, 260, seed=2)
    src = write_geotiff(tmp_path / "in.tif", img)
    run = subprocess.run([sys.executable, "-c", WITH_MADE_UP, str(src), str(tiny_model), str(tiny_weights),
                          str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout.splitlines()[-1])
    for command in ("tile-segment", "batch"):
        assert "--made-up" in seen[command + " --help"] and "A made-up setting." in seen[command + " --help"]
    assert seen["cli exit"] == 0, seen["cli output"]
    assert seen["in-process worker"] and all(seen["in-process worker"]), "the CLI's --made-up reaches run_part"
    assert seen["api json"]["made_up"] is True
    assert seen["dask worker"] == [True], "the worker's spec, read back from JSON, has the setting"
    assert seen["fingerprints differ"], "a result setting changes the resume fingerprint"
    assert (tmp_path / "out.tif").is_file()


def test_spec_round_trips_through_json(tmp_path):
    options = SegmentOptions(window=224, bands=[3, 2, 1], preview=tmp_path / "p.png", cog=True)
    job = JobSpec.build([tmp_path / "a.tif"], [tmp_path / "b.tif"], options, fit=SelfFitOptions(classes=7),
                        backbone=TINY_VIT, crf="torch", cluster="local:2")
    again = JobSpec.from_json(job.to_json())
    assert again == job
    assert again.options.bands == (3, 2, 1) and again.options.preview == str(tmp_path / "p.png")
    assert RunFacts(**RunFacts(str(tmp_path), model_file="m").to_dict()) == RunFacts(str(tmp_path), model_file="m")


def test_fingerprint_covers_result_settings_only():
    """The fingerprint's settings are the declared `result` ones: run-only settings stay out."""
    job = JobSpec.build(["a.tif"], ["b.tif"], SegmentOptions())
    covered = set(job.result()["options"])
    assert {"window", "stride", "flip", "bands", "native_resolution", "block"} <= covered
    assert not covered & {"batch_size", "overwrite", "resume", "preview"}
    assert set(settings.result_values(SelfFitOptions())) >= {"classes", "steps", "seed"}


def test_bands_are_parsed_by_the_option(tmp_path):
    img, _ = make_blobs(100, 100, seed=1)
    src = write_geotiff(tmp_path / "in.tif", img)
    run = subprocess.run([*CLI, "tile-segment", str(src), str(tmp_path / "o.tif"), "--bands", "1,x"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "--bands" in run.stderr and "is not a list of band numbers" in run.stderr
    assert not (tmp_path / "o.tif").exists()


def test_tile_segment_without_model_or_classes_self_fits_the_default(tiny_weights, tmp_path):
    """`segunify tile-segment in.tif out.tif`: self-fit with settings.MAP_CLASSES, said in one line."""
    img, _ = make_blobs(400, 360, seed=3)
    src = write_geotiff(tmp_path / "in.tif", img)
    out, saved = tmp_path / "out.tif", tmp_path / "fit.safetensors"
    run = subprocess.run([*CLI, "tile-segment", str(src), str(out), "--backbone", TINY_VIT, "--backbone-weights",
                          str(tiny_weights), "--fit-steps", "5", "--fit-windows", "4", "--save-model", str(saved)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    said = [line for line in run.stderr.splitlines() if line.startswith("self-fit:")]
    assert len(said) == 1, run.stderr
    assert f"{settings.MAP_CLASSES} classes" in said[0] and "--classes K" in said[0] and "--model" in said[0]
    from segunify_core.files.model_file import read_model_file

    meta, _ = read_model_file(saved)
    assert meta["training"]["config"]["classes"] == settings.MAP_CLASSES
    with rasterio.open(out) as ds:
        labels = ds.read(1)
    assert labels.max() <= settings.MAP_CLASSES and labels.min() >= 0 and (labels > 0).any()
    given = subprocess.run([*CLI, "tile-segment", str(src), str(tmp_path / "o2.tif"), "--model", str(saved),
                            "--classes", "3"], capture_output=True, text=True, timeout=300)
    assert given.returncode == 1 and given.stderr.startswith("Error: The number of classes (--classes) is for self-fit")
