"""Install environment: the plugin makes SegUnify's own environment from inside QGIS.

The full install runs once, headless through qgis_process.bin, from a wheel folder made by
scripts/build_offline_bundle.py with every registry blocked (the offline path); torch then comes
from the registry pip is configured with (SEGUNIFY_TORCH_INDEX=registry): the CPU index the
installer picks without a GPU is not reachable here. The folders live in a temporary folder
whose name has a space and a non-ASCII letter, and are deleted afterwards (several GB)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import processing
import pytest
from conftest import REPO, CancelAt
from qgis.core import QgsProcessingException, QgsProcessingFeedback, QgsRasterLayer

from qgis_plugin import installer, runner

QGIS_PROCESS = shutil.which("qgis_process.bin") or "/usr/bin/qgis_process.bin"
PARTIAL = runner.PARTIAL_MARK
BLOCKED = {"PIP_NO_INDEX": "1", "PIP_INDEX_URL": "http://127.0.0.1:9/nowhere", "PIP_EXTRA_INDEX_URL": ""}


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _pip_freeze() -> str:
    return subprocess.run(["/usr/bin/python3", "-m", "pip", "freeze"], capture_output=True, text=True,
                          check=True, timeout=120).stdout


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if not p.is_symlink()}


@pytest.fixture(scope="module")
def workspace():
    folder = Path(tempfile.mkdtemp(prefix="segunify install ä "))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def qgis_env(plugin_dir, workspace):
    """A clean environment for qgis_process: its own profile, no SegUnify Python anywhere, and a
    PATH that starts with no virtual environment (Debian's QGIS would run its Python from it)."""
    profile = workspace / "profile"
    profile.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("SEGUNIFY_PYTHON", "VIRTUAL_ENV", "PYTHONPATH")}
    env.update(PATH="/usr/bin:/bin", QT_QPA_PLATFORM="offscreen", QGIS_CUSTOM_CONFIG_PATH=str(profile),
               QGIS_PLUGINPATH=str(plugin_dir))
    subprocess.run([QGIS_PROCESS, "plugins", "enable", "segunify"], env=env, capture_output=True, timeout=300)
    return env


def test_torch_source_follows_gpu_and_override(monkeypatch, tmp_path):
    monkeypatch.delenv(installer.ENV_TORCH_SOURCE, raising=False)
    assert installer.torch_source("", None)[1] == ["--index-url", installer.CPU_TORCH_INDEX]
    assert installer.torch_source("", "NVIDIA H200, 143771 MiB")[1] == []  # the registry's CUDA build
    assert "GPU found: NVIDIA H200" in installer.torch_source("auto", "NVIDIA H200, 143771 MiB")[0]
    monkeypatch.setenv(installer.ENV_TORCH_SOURCE, str(tmp_path))
    assert installer.torch_source("", None)[1] == ["--no-index", "--find-links", str(tmp_path)]
    assert installer.torch_source("https://example.org/whl/cu126", None)[1] == ["--index-url",
                                                                                 "https://example.org/whl/cu126"]
    assert installer.torch_source("registry", None)[1] == []
    with pytest.raises(installer.InstallError, match="TORCH_SOURCE"):
        installer.torch_source("/no/such/folder", None)


def test_gpu_found_with_nvidia_smi(monkeypatch, tmp_path):
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'NVIDIA H200, 143771 MiB'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert installer.detect_gpu() == "NVIDIA H200, 143771 MiB"
    monkeypatch.setenv("PATH", "/nonexistent")
    assert installer.detect_gpu() is None


def test_base_python_is_qgis_own(monkeypatch):
    """Inside QGIS sys.executable is QGIS itself: the interpreter found is the one under QGIS's own
    prefix, of QGIS's Python version, able to make a venv; not merely the first python on PATH."""
    monkeypatch.setattr(sys, "executable", "/usr/bin/qgis")
    monkeypatch.setenv("PATH", "/nonexistent")  # the PATH fallback cannot answer
    python, how = installer.find_base_python()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert python == os.path.join(sys.base_exec_prefix, "bin", f"python{version}")
    assert how.startswith(f"QGIS's Python {version}")
    out = subprocess.run([python, "-c", "import sys, venv; print(sys.version_info[:2])"], capture_output=True,
                         text=True, check=True, timeout=60)
    assert out.stdout.strip() == str(tuple(sys.version_info[:2]))


def test_base_python_when_qgis_runs_a_python(monkeypatch):
    monkeypatch.setattr(sys, "executable", "/opt/somewhere/python3")
    assert installer.find_base_python() == ("/opt/somewhere/python3", "the Python running QGIS")


def test_plugin_zip_carries_the_matching_wheel(plugin_dir):
    import zipfile

    names = zipfile.ZipFile(plugin_dir / "segunify.zip").namelist()
    wheels = [n for n in names if n.startswith("segunify/wheels/") and n.endswith(".whl")]
    assert wheels == [f"segunify/wheels/segunify-{runner.plugin_version()}-py3-none-any.whl"]
    meta = (plugin_dir / "segunify" / "metadata.txt").read_text()
    assert float(re.search(r"^qgisMaximumVersion=(\S+)", meta, re.M).group(1)) >= 4.0
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'version = "{runner.plugin_version()}"' in pyproject


def _fake_env(folder: Path, version: str) -> str:
    """A virtual environment whose only 'package' is SegUnify's metadata at `version`."""
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120)
    site = next(folder.glob("lib/python3*/site-packages"))
    info = site / f"segunify-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: segunify\nVersion: {version}\n")
    return str(folder / "bin" / "python")


def test_mismatched_segunify_version_is_refused_with_the_fix(set_python, tmp_path, samples, plugin_dir, monkeypatch):
    monkeypatch.setattr(installer, "WHEEL_DIR", plugin_dir / "segunify" / "wheels")
    python = _fake_env(tmp_path / "old env", "0.0.9")
    set_python(python)
    with pytest.raises(QgsProcessingException) as err:
        processing.run("segunify:segment", {"INPUT": str(samples / "rasterio/rgb1.tif"), "CLASSES": 3,
                                            "OUTPUT": str(tmp_path / "c.tif")})
    message = str(err.value)
    assert f"has SegUnify 0.0.9 but this plugin is {runner.plugin_version()}" in message
    assert "Install environment with Mode 'Upgrade SegUnify'" in message and "MODE=1" in message
    assert len(message.splitlines()) == 1 and not (tmp_path / "c.tif").exists()
    report = processing.run("segunify:check_environment", {})
    assert report["OK"] is False and "Upgrade SegUnify" in report["REPORT"]
    # Install (not upgrade) on that folder says the same instead of touching it.
    with pytest.raises(installer.InstallError, match="Upgrade SegUnify"):
        installer.Installer(str(tmp_path / "old env"), QgsProcessingFeedback()).run()


def test_install_refuses_a_folder_that_is_not_an_environment(tmp_path, plugin_dir, monkeypatch):
    monkeypatch.setattr(installer, "WHEEL_DIR", plugin_dir / "segunify" / "wheels")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(QgsProcessingException, match="is not a SegUnify environment"):
        processing.run("segunify:install_environment", {"TARGET": str(tmp_path / "mine")})
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_cancel_at_30_percent_leaves_nothing(workspace, plugin_dir, monkeypatch):
    """Online install (torch from the registry), cancelled at 30 % while PyTorch is being fetched."""
    monkeypatch.setattr(installer, "WHEEL_DIR", plugin_dir / "segunify" / "wheels")
    monkeypatch.setenv(installer.ENV_TORCH_SOURCE, "registry")
    before = _pip_freeze()
    target = workspace / "cancelled env ü"
    feedback = CancelAt(30.0)
    with pytest.raises(QgsProcessingException, match="Cancelled"):
        processing.run("segunify:install_environment", {"TARGET": str(target)}, feedback=feedback)
    assert feedback.cancelled_at is not None and feedback.cancelled_at < 60
    assert not target.exists()
    assert [p.name for p in workspace.iterdir() if "cancelled env" in p.name] == [], "no temporary folder left"
    assert _pip_freeze() == before, "QGIS's own Python is unchanged"


@pytest.fixture(scope="module")
def bundle(workspace):
    """scripts/build_offline_bundle.py with torch from the configured registry (the CI's source)."""
    folder = workspace / "wheels ö"
    start = time.monotonic()
    subprocess.run(["/usr/bin/python3", str(REPO / "scripts" / "build_offline_bundle.py"), str(folder),
                    "--torch-source", "registry"], check=True, timeout=1200, capture_output=True)
    print(f"\nbundle: {len(list(folder.glob('*.whl')))} wheels, {_du(folder) / 2**20:.0f} MiB, "
          f"{time.monotonic() - start:.0f} s")
    return folder


def test_headless_offline_install_then_segment(workspace, bundle, qgis_env, tiny_weights, samples):
    before = _pip_freeze()
    target = workspace / "SegUnify env é"
    start = time.monotonic()
    run = subprocess.run([QGIS_PROCESS, "run", "segunify:install_environment", "--", f"TARGET={target}",
                          f"WHEELS={bundle}"], env={**qgis_env, **BLOCKED}, capture_output=True, text=True,
                         timeout=1800)
    took = time.monotonic() - start
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    print(f"\ninstall: {took:.0f} s, environment {_du(target) / 2**30:.2f} GiB")
    python = installer.env_python(target)
    assert f"PYTHON:\t{python}" in run.stdout
    assert _pip_freeze() == before, "nothing was installed into QGIS's own Python"
    assert not [p for p in workspace.iterdir() if p.name.startswith(".SegUnify env")], "no temporary folder left"
    script = Path(target / "bin" / "segunify").read_text()
    assert python in script.splitlines()[0] + script.splitlines()[1] and PARTIAL not in script, \
        "console scripts point at the final folder"

    # Segment with no other setting: the install stored the Python in the provider setting.
    data = workspace / "data é"
    data.mkdir()
    shutil.copy(samples / "rasterio" / "rgb1.tif", data / "ortho 1.tif")
    seg = subprocess.run([QGIS_PROCESS, "run", "segunify:segment", "--", f"INPUT={data / 'ortho 1.tif'}", "CLASSES=3",
                          "BACKBONE=deit_tiny_patch16_224", f"BACKBONE_WEIGHTS={tiny_weights}", "WINDOW=224",
                          "STRIDE=176"], env=qgis_env, capture_output=True, text=True, timeout=1800)
    assert seg.returncode == 0, seg.stdout[-4000:] + seg.stderr[-4000:]
    out = data / "ortho 1_segunify.tif"
    assert f"OUTPUT:\t{out}" in seg.stdout, "Segment writes beside the input by default"
    assert QgsRasterLayer(str(out), "c").isValid()
    assert "device: cpu" in seg.stdout + seg.stderr, "the run logs its device at the start"

    # A rerun on the working environment is quick and changes nothing.
    snap = _snapshot(target)
    again = subprocess.run([QGIS_PROCESS, "run", "segunify:install_environment", "--", f"TARGET={target}"],
                           env={**qgis_env, **BLOCKED}, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "already installed" in again.stdout and "pip install" not in again.stdout
    assert _snapshot(target) == snap

    # Upgrade replaces SegUnify only (offline, from the same folder).
    up = subprocess.run([QGIS_PROCESS, "run", "segunify:install_environment", "--", f"TARGET={target}", "MODE=1",
                         f"WHEELS={bundle}"], env={**qgis_env, **BLOCKED}, capture_output=True, text=True, timeout=600)
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    assert "Successfully installed segunify-" in up.stdout and "torch-" not in up.stdout.split("Upgrading")[-1]



def test_plugin_menu_opens_each_dialog(monkeypatch):
    """The plugin's menu entries open their algorithm's dialog through processing.execAlgorithmDialog
    (the real one, with a main window and a map canvas as QGIS has); each dialog is closed as it opens."""
    import processing.tools.general as general
    from qgis.gui import QgsMapCanvas
    from qgis.PyQt.QtCore import QTimer
    from qgis.PyQt.QtWidgets import QApplication, QDialog, QMainWindow

    from qgis_plugin.plugin import ACTIONS, MENU, SegUnifyPlugin

    class Iface:
        def __init__(self):
            self.menu, self.window, self.canvas = [], QMainWindow(), QgsMapCanvas()

        def mainWindow(self):  # noqa: N802 - QGIS API
            return self.window

        def mapCanvas(self):  # noqa: N802 - QGIS API
            return self.canvas

        def addPluginToMenu(self, menu, action):  # noqa: N802 - QGIS API
            self.menu.append((menu, action))

        def removePluginMenu(self, menu, action):  # noqa: N802 - QGIS API
            self.menu.remove((menu, action))

    iface = Iface()
    monkeypatch.setattr(general, "iface", iface)  # QGIS's own iface; None in a headless QgsApplication
    monkeypatch.setattr(SegUnifyPlugin, "initProcessing", lambda self: None)  # the provider is registered already
    opened = []

    def close_the_dialog(tries=200):
        dialogs = [w for w in QApplication.topLevelWidgets() if isinstance(w, QDialog) and w.isVisible()]
        if not dialogs and tries:  # not open yet
            QTimer.singleShot(50, lambda: close_the_dialog(tries - 1))
            return
        for dialog in dialogs:  # never leave one open: exec_() would wait for it forever
            opened.append((dialog.algorithm().id() if hasattr(dialog, "algorithm") else None, dialog.windowTitle()))
            dialog.reject()

    plugin = SegUnifyPlugin(iface)
    plugin.initGui()
    assert [(menu, action.text()) for menu, action in iface.menu] == [(MENU, label) for label, _ in ACTIONS]
    for _, action in iface.menu:
        QTimer.singleShot(50, close_the_dialog)
        action.trigger()  # returns once the dialog is closed
    assert [alg for alg, _ in opened] == [alg for _, alg in ACTIONS]
    assert opened[0][1].startswith("Install environment")
    plugin.unload()
    assert iface.menu == []
