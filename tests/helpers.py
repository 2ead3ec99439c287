"""Test helpers with no heavy imports, shared by tests/ and tests/qgis/ (which runs under QGIS's
own Python, without torch or rasterio)."""

from __future__ import annotations

import importlib
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

REPO = Path(__file__).resolve().parents[1]


def samples_dir() -> Path | None:
    env = os.environ.get("SEGUNIFY_SAMPLES")
    path = Path(env) if env else REPO.parent / "shared" / "samples"
    return path if path.is_dir() else None


def in_ci() -> bool:
    """CI sets CI=true (.ci/run): there every optional part must be present."""
    return os.environ.get("CI", "").lower() == "true"


def missing(reason: str) -> NoReturn:
    """A test's optional part (pydensecrf, Dask, the samples, QGIS) is missing: skip it, but fail in CI,
    where a skip would hide that the part was never tested."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: every optional part is required)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def require_module(name: str, reason: str) -> ModuleType:
    """`name` imported, or `missing(reason)` (pytest.importorskip that fails in CI)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        missing(reason)


@pytest.fixture(scope="session")
def samples() -> Path:
    path = samples_dir()
    if path is None:
        missing("sample rasters not found: set SEGUNIFY_SAMPLES or put them in ../shared/samples")
    return path


def tree_listing(folder: Path) -> set[str]:
    """Every file and folder under `folder`, as paths relative to it."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture(scope="session", autouse=True)
def samples_stay_untouched():
    """Tests never write beside their inputs: nothing may appear under the samples (GDAL's .aux.xml
    statistics, say) during the run."""
    folder = samples_dir()
    before = tree_listing(folder) if folder else set()
    yield
    if folder:
        added = sorted(tree_listing(folder) - before)
        assert not added, f"the tests wrote into the samples folder {folder}: {added}"


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch EXPLOITED",))


def exploit_pickle() -> bytes:
    """A pickle that creates ./EXPLOITED when unpickled: loading it must never run it."""
    return pickle.dumps(_Exploit())


def exploit_pickle_in_dict(key: str) -> bytes:
    return pickle.dumps({key: _Exploit()})


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    """True once process `pid` no longer exists (within `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def _default_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def paused_cli(args: list[str], phase: str, percent: int, ready: Path | None = None) -> subprocess.Popen:
    """`segunify --progress json ARGS`, held inside its progress callback at `phase` >= `percent`
    (once `ready` exists): see tests/paused_cli.py. Signal it with interrupt_when_paused."""
    command = [sys.executable, "-m", "tests.paused_cli", phase, str(percent), str(ready or "-"), "--progress", "json"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen(command + [str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, preexec_fn=_default_signals)


def interrupt_when_paused(proc: subprocess.Popen, sig: int) -> dict:
    """Read the child's progress until it says it is paused, signal it there; the paused event."""
    assert proc.stdout is not None and proc.stderr is not None
    for line in proc.stdout:
        event = json.loads(line)
        if event.get("type") == "paused":
            proc.send_signal(sig)
            return event
    proc.wait(timeout=60)
    raise AssertionError(f"the run ended (exit {proc.returncode}) without reaching the pause: {proc.stderr.read()}")


def with_made_up_setting(settings) -> type:
    """settings.SegmentOptions plus one made-up boolean setting, declared like the others: what a
    contributor adding a setting writes in segunify_core/settings.py, and nothing else."""
    import dataclasses

    extra = ("made_up", bool, settings.option(False, "A made-up setting.", label="Made up", result=True))
    fields = [(f.name, f.type, dataclasses.field(default=f.default, metadata=f.metadata))
              for f in dataclasses.fields(settings.SegmentOptions)]
    return dataclasses.make_dataclass("SegmentOptions", [*fields, extra], bases=(settings.Declared,), frozen=True)
