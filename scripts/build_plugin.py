#!/usr/bin/env python3
"""Assemble the installable QGIS plugin: a folder `segunify/` (qgis_plugin/ + metadata.txt) and
its zip, ready for Plugins > Manage and Install Plugins > Install from ZIP.

    python3 scripts/build_plugin.py [DEST]      # default DEST: dist/
"""

from __future__ import annotations

import shutil
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLUGIN_NAME = "segunify"


def build_plugin(dest: Path) -> Path:
    """Write DEST/segunify/ and DEST/segunify.zip; return the plugin folder."""
    dest = Path(dest)
    folder = dest / PLUGIN_NAME
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(REPO / "qgis_plugin", folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy2(REPO / "metadata.txt", folder / "metadata.txt")
    with zipfile.ZipFile(dest / f"{PLUGIN_NAME}.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(dest))
    return folder


if __name__ == "__main__":
    out = build_plugin(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "dist")
    print(f"plugin folder: {out}\nzip: {out.parent / (PLUGIN_NAME + '.zip')}")
