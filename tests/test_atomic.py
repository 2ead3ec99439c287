"""One helper writes every file atomically; the QGIS plugin's clean-up knows its temporary names."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from qgis_plugin import runner
from segunify_core.files.atomic import atomic_path, partial_glob
from tests.helpers import REPO


def test_file_appears_only_when_the_writer_finished(tmp_path):
    target = tmp_path / "out.tif"
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"data")
        assert tmp.parent == tmp_path and tmp.suffix == ".tif" and not target.exists()
    assert target.read_bytes() == b"data"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer failed")
    assert target.read_bytes() == b"data", "a failed rewrite leaves the old file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif"]


def test_folder_target_is_replaced_whole(tmp_path):
    target = tmp_path / "cache"
    for value in (b"1", b"2"):
        with atomic_path(target, suffix="", directory=True) as tmp:
            (tmp / "f").write_bytes(value)
    assert (target / "f").read_bytes() == b"2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


@pytest.mark.parametrize("name", ["classes.tif", "model.safetensors", "polygons.gpkg", "preview.png"])
def test_plugin_cleanup_removes_what_a_hard_kill_leaves(tmp_path, name):
    """A process killed with SIGKILL inside `atomic_path` leaves its temporary file; the plugin's
    clean-up (run after it killed the CLI) removes exactly those, nothing else."""
    target = tmp_path / name
    (tmp_path / "keep.tif").write_bytes(b"x")
    code = (f"import os, signal; from segunify_core.files.atomic import atomic_path\n"
            f"with atomic_path({str(target)!r}) as tmp:\n"
            f"    tmp.write_bytes(b'partial'); os.kill(os.getpid(), signal.SIGKILL)")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO)
    assert run.returncode == -signal.SIGKILL
    left = [p for p in tmp_path.iterdir() if p.name != "keep.tif"]
    assert len(left) == 1 and left[0].match(os.path.basename(partial_glob(target)))
    runner.remove_partials([str(target)])  # the plugin's modules import nothing from QGIS or torch
    assert [p.name for p in tmp_path.iterdir()] == ["keep.tif"]
