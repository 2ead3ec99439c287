#!/usr/bin/env python3
"""Assemble the installable QGIS plugin: a folder `segunify/` (qgis_plugin/ + metadata.txt + the
matching SegUnify wheel in wheels/) and its zip, ready for Plugins > Manage and Install Plugins >
Install from ZIP. The plugin's Install environment installs exactly that wheel.

    python3 scripts/build_plugin.py [DEST]      # default DEST: dist/
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from qgis_plugin.core_settings import SETTINGS_COPY  # noqa: E402 - stdlib only, no QGIS needed

PLUGIN_NAME = "segunify"


def versions() -> dict[str, str]:
    """The version as pyproject.toml, segunify_core and metadata.txt state it (must agree)."""
    found = {}
    for name, path, pattern in (("pyproject.toml", "pyproject.toml", r'^version\s*=\s*"([^"]+)"'),
                                ("segunify_core/__init__.py", "segunify_core/__init__.py", r'^__version__\s*=\s*"([^"]+)"'),
                                ("metadata.txt", "metadata.txt", r"^version=(\S+)")):
        match = re.search(pattern, (REPO / path).read_text(encoding="utf-8"), re.M)
        found[name] = match.group(1) if match else "?"
    return found


def build_wheel(dest: Path) -> Path:
    """Build SegUnify's wheel (no dependencies) into dest with the running Python's pip."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="segunify-wheel-") as tmp:
        # A copy, so that the build leaves no build/ or egg-info in the checkout.
        src = Path(tmp) / "src"
        shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv", "dist", "build", "tests", "bench",
                                                                 "docs", "*.egg-info", "__pycache__", ".*cache"))
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "--disable-pip-version-check", "--wheel-dir", str(dest), str(src)], check=True)
    wheels = sorted(dest.glob("segunify-*.whl"))
    if not wheels:
        raise SystemExit("build_plugin: pip built no SegUnify wheel")
    return wheels[-1]


def build_plugin(dest: Path) -> Path:
    """Write DEST/segunify/ and DEST/segunify.zip; return the plugin folder."""
    found = versions()
    if len(set(found.values())) != 1:
        raise SystemExit(f"build_plugin: the versions disagree ({found}); make them equal.")
    dest = Path(dest)
    folder = dest / PLUGIN_NAME
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(REPO / "qgis_plugin", folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "wheels"))
    shutil.copy2(REPO / "metadata.txt", folder / "metadata.txt")
    # The plugin's parameters read their defaults and choices from the core's one settings file.
    shutil.copy2(REPO / "segunify_core" / "settings.py", folder / SETTINGS_COPY)
    wheel = build_wheel(folder / "wheels")
    if not wheel.name.startswith(f"segunify-{found['metadata.txt']}-"):
        raise SystemExit(f"build_plugin: built {wheel.name}, expected version {found['metadata.txt']}")
    zip_path = dest / f"{PLUGIN_NAME}.zip"
    tmp_zip = zip_path.with_name(f".{zip_path.stem}.partial.zip")
    with zipfile.ZipFile(tmp_zip, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(dest))
    tmp_zip.replace(zip_path)
    return folder


if __name__ == "__main__":
    out = build_plugin(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "dist")
    print(f"plugin folder: {out}\nzip: {out.parent / (PLUGIN_NAME + '.zip')}")
