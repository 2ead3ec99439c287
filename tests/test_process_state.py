"""A command or a job leaves no process-wide state behind: the SIGTERM handler is restored, the
CRF's worker processes are shut down, and environment switches are read through settings."""

from __future__ import annotations

import multiprocessing
import signal

import numpy as np
import pytest
import torch

from segunify_core import settings
from segunify_core.method.crf import PyDenseCRF, open_crf, pydensecrf_available


def test_a_command_restores_the_sigterm_handler():
    import segunify_cli.main as main
    from click.testing import CliRunner

    def mine(signum, frame):
        pass

    before = signal.signal(signal.SIGTERM, mine)
    try:
        assert CliRunner().invoke(main.cli, ["backbones"], obj={}).exit_code == 0
        assert signal.getsignal(signal.SIGTERM) is mine
        result = CliRunner().invoke(main.cli, ["classes", "missing.safetensors"], obj={})
        assert result.exit_code == 1  # a failed command restores it too
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, before)


@pytest.mark.skipif(not pydensecrf_available(), reason="pydensecrf2 (the crf extra) is not installed")
def test_open_crf_shuts_its_process_pool_down():
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 255, (2, 3, 16, 16)).astype(np.float32))
    log_probs = torch.log_softmax(torch.from_numpy(rng.normal(size=(2, 3, 16, 16)).astype(np.float32)), 1)
    before = set(multiprocessing.active_children())
    with open_crf("pydensecrf", workers=2) as crf:
        assert isinstance(crf, PyDenseCRF)
        crf(images, log_probs)  # two windows: they run in the pool's worker processes
        started = set(multiprocessing.active_children()) - before
        assert started, "the CRF started worker processes"
    for process in started:
        process.join(timeout=30)
    assert not set(multiprocessing.active_children()) & started


def test_environment_switches_are_read_through_settings(monkeypatch, tmp_path):
    from segunify_cli.common import eager_switch

    from segunify_core.training.feature_cache import default_cache_dir

    monkeypatch.setenv(settings.ENV_EAGER, "1")
    monkeypatch.setenv(settings.ENV_CACHE, str(tmp_path))
    assert settings.environment().eager and eager_switch() is False
    assert default_cache_dir() == tmp_path / "features"
    monkeypatch.setenv(settings.ENV_EAGER, "0")
    monkeypatch.delenv(settings.ENV_CACHE)
    assert not settings.environment().eager and eager_switch() == "auto"
    assert settings.environment().cache_dir is None
