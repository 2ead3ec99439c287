"""Test helpers with no heavy imports, shared by tests/ and tests/qgis/ (which runs under QGIS's
own Python, without torch or rasterio)."""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def samples_dir() -> Path | None:
    env = os.environ.get("SEGUNIFY_SAMPLES")
    path = Path(env) if env else REPO.parent / "shared" / "samples"
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def samples() -> Path:
    path = samples_dir()
    if path is None:
        pytest.skip("sample rasters not found: set SEGUNIFY_SAMPLES or put them in ../shared/samples")
    return path


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


def with_made_up_setting(settings) -> type:
    """settings.SegmentOptions plus one made-up boolean setting, declared like the others: what a
    contributor adding a setting writes in segunify_core/settings.py, and nothing else."""
    import dataclasses

    extra = ("made_up", bool, settings.option(False, "A made-up setting.", label="Made up", result=True))
    fields = [(f.name, f.type, dataclasses.field(default=f.default, metadata=f.metadata))
              for f in dataclasses.fields(settings.SegmentOptions)]
    return dataclasses.make_dataclass("SegmentOptions", [*fields, extra], bases=(settings.Declared,), frozen=True)
