"""Creates SegUnify's own Python environment: the work behind Processing > SegUnify > Install environment.

Nothing is ever installed into QGIS's Python. A virtual environment is made from a base Python
(QGIS's own on Linux/macOS; on Windows the one beside QGIS or on PATH) in a temporary folder
beside the target, torch + torchvision (the CPU build, or the registry's CUDA build when
`nvidia-smi` reports a GPU), then the SegUnify wheel shipped inside the plugin (which brings timm
and the rest) are pip-installed into it, `segunify check --json` verifies it, and only then is
the folder renamed onto the target. Cancel or any error removes the temporary folder, so the
target either holds a verified environment or nothing. This module imports nothing from QGIS:
`feedback` is any object with QgsProcessingFeedback's isCanceled, setProgress,
setProgressText, pushInfo and pushConsoleInfo; scripts/build_offline_bundle.py uses it too.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .child import OUT, Child
from .runner import PARTIAL_MARK, child_environment, installed_version, partial_glob, plugin_version

# Where torch comes from: one setting, read by the algorithm (TORCH_SOURCE), the environment
# variable below and scripts/build_offline_bundle.py (--torch-source).
ENV_TORCH_SOURCE = "SEGUNIFY_TORCH_INDEX"
ENV_TARGET = "SEGUNIFY_ENV_DIR"
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
TORCH_SOURCES = ("auto", "cpu", "registry")  # or an index URL, or a folder of wheels
TORCH_PACKAGES = ("torch", "torchvision")  # timm imports torchvision; both must be the same build
WHEEL_DIR = Path(__file__).resolve().parent / "wheels"  # build_plugin.py puts SegUnify's wheel here
PIP_QUIET = ["--disable-pip-version-check", "--no-input", "--progress-bar", "off"]


class InstallError(Exception):
    """The install cannot go on; the message says what to do."""


def default_target() -> str:
    """The per-user folder of the environment (SEGUNIFY_ENV_DIR moves it)."""
    if os.environ.get(ENV_TARGET, "").strip():
        return os.environ[ENV_TARGET].strip()
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or os.path.expanduser(r"~\AppData\Local")
        return os.path.join(base, "SegUnify", "env")
    if sys.platform == "darwin":
        return os.path.expanduser("~/Library/Application Support/SegUnify/env")
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(base, "segunify", "env")


def env_python(target: str | os.PathLike) -> str:
    return str(Path(target) / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python"))


def find_base_python() -> tuple[str, str]:
    """A Python that can make a virtual environment, and how it was found.

    QGIS embeds Python, so sys.executable is QGIS itself (qgis, qgis_process.bin, qgis-bin.exe);
    the interpreter lives under sys.base_exec_prefix (Linux, macOS, OSGeo4W), else on PATH."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    names = (["python.exe", "python3.exe"] if sys.platform == "win32"
             else [f"python{version}", "python3", "python"])
    roots = [sys.base_exec_prefix] if sys.platform == "win32" else [os.path.join(sys.base_exec_prefix, "bin")]
    if os.path.basename(sys.executable).lower().startswith("python"):
        return sys.executable, "the Python running QGIS"
    for root in roots:
        for name in names:
            path = os.path.join(root, name)
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return path, f"QGIS's Python {version} ({root})"
    for name in names:
        path = shutil.which(name)
        if path:
            return path, "the Python on PATH"
    raise InstallError(f"No Python {version} found beside QGIS ({sys.base_exec_prefix}) or on PATH; install "
                       "Python (python.org) or set 'Base Python' (PYTHON) to a python executable.")


def detect_gpu() -> str | None:
    """'NAME, MEMORY' of the first NVIDIA GPU that nvidia-smi reports, or None."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=name,memory.total", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    return lines[0] if out.returncode == 0 and lines else None


def torch_source(choice: str = "", gpu: str | None = None) -> tuple[str, list[str]]:
    """Where torch comes from, as (description, pip arguments).

    choice: empty = SEGUNIFY_TORCH_INDEX, else auto. auto = the registry's CUDA build when a GPU is
    found, the CPU build otherwise; cpu; registry (pip's configured index: on Linux PyPI's torch is
    the CUDA build); an index URL; or a folder of wheels (installed with no index at all)."""
    choice = (choice or os.environ.get(ENV_TORCH_SOURCE, "") or "auto").strip()
    if choice == "auto":
        if gpu:
            return f"the CUDA build from the package registry (GPU found: {gpu})", []
        return f"the CPU build from {CPU_TORCH_INDEX} (no NVIDIA GPU found)", ["--index-url", CPU_TORCH_INDEX]
    if choice == "cpu":
        return f"the CPU build from {CPU_TORCH_INDEX}", ["--index-url", CPU_TORCH_INDEX]
    if choice in ("registry", "pypi"):
        return "the package registry pip is configured with", []
    if re.match(r"^(https?|file)://", choice):
        return f"the index {choice}", ["--index-url", choice]
    if os.path.isdir(choice):
        return f"the wheel folder {choice}", ["--no-index", "--find-links", choice]
    raise InstallError(f"Torch source '{choice}' is neither auto, cpu, registry, an index URL nor an existing folder; "
                       f"fix 'Torch source' (TORCH_SOURCE) or the {ENV_TORCH_SOURCE} variable.")


def segunify_wheel(wheels: str = "") -> Path:
    """The SegUnify wheel matching this plugin: shipped in the plugin, else in the wheel folder."""
    version = plugin_version()
    for folder in (WHEEL_DIR, Path(wheels) if wheels else None):
        if folder is not None:
            found = sorted(folder.glob(f"segunify-{version}-*.whl"))
            if found:
                return found[-1]
    raise InstallError(f"The SegUnify {version} wheel is missing from the plugin ({WHEEL_DIR}); reinstall the plugin "
                       "from a zip made by scripts/build_plugin.py, or give a wheel folder that holds it (WHEELS).")


class Installer:
    """One run of Install environment. mode: install (skip when the target already works) or
    upgrade (SegUnify only, in place). wheels: a folder of wheels to install from offline."""

    def __init__(self, target: str, feedback, mode: str = "install", wheels: str = "", torch_choice: str = "",
                 base_python: str = "", extra_env: dict | None = None):
        if not target.strip():
            raise InstallError("No environment folder given; choose one (TARGET).")
        self.target = Path(os.path.abspath(os.path.expanduser(target.strip())))
        self.feedback, self.mode, self.wheels = feedback, mode, wheels.strip()
        self.torch_choice, self.base_python = torch_choice, base_python.strip()
        self.env = {**child_environment(), **(extra_env or {})}  # e.g. QGIS's proxy for pip
        if self.wheels and not os.path.isdir(self.wheels):
            raise InstallError(f"The wheel folder '{self.wheels}' does not exist; choose the folder made by "
                               "scripts/build_offline_bundle.py (WHEELS).")

    # -- the steps -----------------------------------------------------------------------------
    def run(self) -> str:
        """Install (or upgrade, or find done); return the environment's Python."""
        fb = self.feedback
        wheel = segunify_wheel(self.wheels)
        self._remove_stale_temps()
        python = env_python(self.target)
        if self.target.exists():
            have = installed_version(python) if os.path.isfile(python) else None
            if have is None:
                if any(self.target.iterdir()):
                    raise InstallError(f"'{self.target}' exists and is not a SegUnify environment; choose a new or empty "
                                       "folder (TARGET).")
                self.target.rmdir()
            elif self.mode == "upgrade":
                return self._upgrade(python, wheel, have)
            elif have == plugin_version():
                fb.pushInfo(f"SegUnify {have} is already installed in {self.target}; nothing to do.")
                self._verify(python, 0.0, 100.0)
                return python
            else:
                raise InstallError(f"The environment in {self.target} has SegUnify {have} but this plugin needs "
                                   f"{plugin_version()}; run Install environment with Mode 'Upgrade SegUnify' "
                                   "(MODE=1).")
        return self._create(wheel)

    def _create(self, wheel: Path) -> str:
        fb = self.feedback
        base, found = (self.base_python, "the Python you set") if self.base_python else find_base_python()
        fb.pushInfo(f"Base Python: {base} ({found})")
        gpu = None if self.wheels else detect_gpu()
        if self.wheels:
            torch_label, torch_args = f"the wheel folder {self.wheels} (offline)", []
        else:
            fb.pushInfo(f"GPU: {gpu or 'none found (nvidia-smi)'}")
            torch_label, torch_args = torch_source(self.torch_choice, gpu)
        fb.pushInfo(f"PyTorch from {torch_label}")
        self.target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.stem}.", suffix=PARTIAL_MARK, dir=self.target.parent))
        try:
            fb.setProgressText("Creating the environment")
            self._call([base, "-m", "venv", str(tmp)], 0.0, 5.0)
            python = env_python(tmp)
            self._pip(python, list(TORCH_PACKAGES), torch_args, 5.0, 60.0, "Installing PyTorch")
            self._pip(python, [str(wheel)], [], 60.0, 90.0, "Installing SegUnify")
            self._verify(python, 90.0, 99.0)
            _retarget_scripts(tmp, self.target)
            if self.target.exists():
                raise InstallError(f"'{self.target}' appeared while installing; run Install environment again.")
            os.replace(tmp, self.target)
        finally:
            if tmp.exists():
                fb.pushInfo(f"Removing the unfinished environment {tmp}")
                shutil.rmtree(tmp, ignore_errors=True)
        fb.setProgress(100.0)
        fb.pushInfo(f"SegUnify environment ready: {self.target}")
        return env_python(self.target)

    def _upgrade(self, python: str, wheel: Path, have: str) -> str:
        self.feedback.pushInfo(f"Upgrading SegUnify {have} -> {plugin_version()} in {self.target} (other packages kept)")
        self._pip(python, [str(wheel)], ["--no-deps", "--force-reinstall"], 0.0, 50.0, "Upgrading SegUnify")
        self._pip(python, [str(wheel)], [], 50.0, 80.0, "Adding new dependencies")  # only what is missing
        self._verify(python, 80.0, 100.0)
        return python

    def _verify(self, python: str, start: float, end: float) -> dict:
        self.feedback.setProgressText("Verifying (segunify check --json)")
        lines = self._call([python, "-m", "segunify_cli", "check", "--json"], start, end, echo=False)
        try:
            report = json.loads(lines[-1])
        except (IndexError, ValueError):
            raise InstallError("The new environment did not answer `segunify check --json`; see the log above.") from None
        if report.get("segunify") != plugin_version():
            raise InstallError(f"The environment has SegUnify {report.get('segunify')} instead of {plugin_version()}; "
                               "run Install environment with Mode 'Upgrade SegUnify' (MODE=1).")
        for key in ("segunify", "torch", "timm", "device", "crf_backend", "backbone_weights"):
            self.feedback.pushInfo(f"{key}: {report.get(key)}")
        return report

    def _pip(self, python: str, packages: list[str], extra: list[str], start: float, end: float, text: str) -> None:
        args = [python, "-m", "pip", "install", *PIP_QUIET]
        if self.wheels:
            args += ["--no-index", "--find-links", self.wheels]
        self.feedback.setProgressText(text)
        self._call(args + extra + packages, start, end, pip=True)

    def _remove_stale_temps(self) -> None:
        """Temporary folders a killed QGIS left beside the target (Cancel removes its own)."""
        for stale in glob.glob(partial_glob(self.target)):
            self.feedback.pushInfo(f"Removing an unfinished environment left by an earlier run: {stale}")
            shutil.rmtree(stale, ignore_errors=True)

    # -- running children ----------------------------------------------------------------------
    def _call(self, argv: list[str], start: float, end: float, echo: bool = True, pip: bool = False) -> list[str]:
        """Run argv, streaming its output to the log and moving the progress bar from start to end;
        Cancel kills it (and its children). Returns stdout's lines."""
        fb = self.feedback
        fb.pushCommandInfo(" ".join(f'"{a}"' if " " in a else a for a in argv))
        fb.setProgress(start)
        out, err, progress = [], [], PipProgress(start, end) if pip else None
        with Child(argv, self.env, merge_stderr=echo, own_group=True) as child:
            idle = (lambda: fb.setProgress(progress.tick())) if progress else None
            for tag, line in child.lines(fb.isCanceled, poll=0.2, on_idle=idle):
                (out if tag == OUT else err).append(line)
                if echo and line.strip():
                    fb.pushConsoleInfo(line)
                if progress:
                    fb.setProgress(progress.line(line))
            code = child.close()
        if code != 0:
            tail = "\n".join((err or out)[-15:])
            if not echo and tail:
                fb.pushConsoleInfo(tail)
            raise InstallError(f"'{os.path.basename(argv[0])} {' '.join(argv[1:3])}' failed (exit {code}); see the log "
                               "above. Behind a proxy set HTTPS_PROXY (or QGIS's proxy in Settings > Options > Network); "
                               "offline, give the wheel folder from scripts/build_offline_bundle.py (WHEELS).")
        fb.setProgress(end)
        return out


class PipProgress:
    """Maps pip's log to a share of the progress bar: resolving and downloading ('Collecting')
    fill the first half, 'Installing collected packages' jumps to 60 %, unpacking creeps on."""

    def __init__(self, start: float, end: float):
        self.start, self.span, self.value, self.collected = start, end - start, start, 0

    def line(self, line: str) -> float:
        if line.startswith("Collecting") or line.startswith("Processing "):
            self.collected += 1
            self.value = max(self.value, self.start + self.span * 0.5 * (1 - 0.9 ** self.collected))
        elif line.startswith("Installing collected packages"):
            self.value = max(self.value, self.start + self.span * 0.6)
        return self.value

    def tick(self) -> float:
        if self.value >= self.start + self.span * 0.6:  # unpacking: no output for minutes with torch
            self.value += (self.start + self.span * 0.98 - self.value) * 0.01
        return self.value


def _retarget_scripts(tmp: Path, target: Path) -> None:
    """Point the console scripts and activate files at the final folder before the rename (a venv
    hard-codes its path in them; `python -m ...`, which the plugin uses, does not depend on it)."""
    old, new = str(tmp), str(target)
    scripts = tmp / ("Scripts" if sys.platform == "win32" else "bin")
    for path in scripts.iterdir():
        if path.is_symlink() or not path.is_file() or path.stat().st_size > 1_000_000:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # binary launchers (Windows .exe) keep their path; python -m is used instead
        if old in text:
            path.write_text(text.replace(old, new), encoding="utf-8")
    cfg = tmp / "pyvenv.cfg"
    if cfg.exists() and old in cfg.read_text(encoding="utf-8"):
        cfg.write_text(cfg.read_text(encoding="utf-8").replace(old, new), encoding="utf-8")
