"""QGIS tests: Debian's QGIS 3.22 in a headless QgsApplication (run with the system python3, see
scripts/test.sh). The SegUnify child runs in the project's .venv (SEGUNIFY_PYTHON)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_PYTHON = Path(os.environ.get("SEGUNIFY_TEST_PYTHON", REPO / ".venv" / "bin" / "python"))
PROFILE = tempfile.mkdtemp(prefix="segunify-qgis-profile-")
os.environ.update(QT_QPA_PLATFORM="offscreen", QGIS_CUSTOM_CONFIG_PATH=PROFILE, SEGUNIFY_PYTHON=str(VENV_PYTHON))
sys.path.insert(0, "/usr/share/qgis/python/plugins")
sys.path.insert(0, str(REPO))

from qgis.core import QgsApplication  # noqa: E402

_app = QgsApplication([], True)
_app.initQgis()

import processing  # noqa: E402,F401
from processing.core.Processing import Processing  # noqa: E402

Processing.initialize()

from qgis_plugin.provider import SegUnifyProvider  # noqa: E402

_provider = SegUnifyProvider()
QgsApplication.processingRegistry().addProvider(_provider)


from qgis.core import QgsProcessingFeedback  # noqa: E402

from tests.helpers import samples, samples_stay_untouched  # noqa: E402,F401 - shared fixtures


def pytest_collection_modifyitems(items):
    """Every test here needs Debian's QGIS: marked `qgis` (pyproject.toml's marker)."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.qgis)


class CancelAt(QgsProcessingFeedback):
    """Cancels the run once its progress bar reaches `at` percent; records where."""

    def __init__(self, at: float):
        super().__init__()
        self.at, self.cancelled_at, self.infos = at, None, []

    def pushInfo(self, info):  # noqa: N802 - QGIS API
        super().pushInfo(info)
        self.infos.append(info)

    def child_pid(self) -> int:
        """The SegUnify child's process id, as the runner logged it."""
        found = [re.search(r"runs as process (\d+)", line) for line in self.infos]
        return next(int(m.group(1)) for m in found if m)

    def setProgress(self, value):  # noqa: N802 - QGIS API
        super().setProgress(value)
        if value >= self.at and self.cancelled_at is None:
            self.cancelled_at = value
            self.cancel()


@pytest.fixture
def sample_copy(request, tmp_path_factory):
    """copy("rasterio/cogeo.tif"): that sample raster copied into a folder of the test's own. QGIS and
    GDAL write statistics (.aux.xml) beside the rasters they open: never into the samples."""
    source = request.getfixturevalue("samples")  # skipped (failed in CI) without them
    folder = tmp_path_factory.mktemp("inputs")

    def copy(name: str) -> Path:
        dest = folder / Path(name).name
        shutil.copy(source / name, dest)
        return dest

    return copy


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """Random-weight timm checkpoint of a small ViT, written by the SegUnify environment."""
    path = tmp_path_factory.mktemp("weights") / "vit_tiny_random.safetensors"
    code = ("import sys, timm, torch\nfrom safetensors.torch import save_file\ntorch.manual_seed(0)\n"
            "m = timm.create_model('deit_tiny_patch16_224', pretrained=False, num_classes=0)\n"
            "save_file({k: v.contiguous() for k, v in m.state_dict().items()}, sys.argv[1])\n")
    subprocess.run([str(VENV_PYTHON), "-c", code, str(path)], check=True, timeout=300)
    return path


@pytest.fixture(scope="session")
def plugin_dir(tmp_path_factory) -> Path:
    """The assembled plugin (scripts/build_plugin.py), as QGIS_PLUGINPATH for qgis_process."""
    sys.path.insert(0, str(REPO / "scripts"))
    from build_plugin import build_plugin

    dest = tmp_path_factory.mktemp("plugins")
    build_plugin(dest)
    return dest


@pytest.fixture
def set_python():
    """Point the provider setting at a Python for one test, then restore it."""
    from processing.core.ProcessingConfig import ProcessingConfig

    from qgis_plugin.runner import SETTING_PYTHON

    old = ProcessingConfig.getSetting(SETTING_PYTHON)

    def set_value(value):
        ProcessingConfig.setSettingValue(SETTING_PYTHON, value)

    yield set_value
    ProcessingConfig.setSettingValue(SETTING_PYTHON, old or "")
