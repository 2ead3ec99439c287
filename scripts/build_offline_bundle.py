#!/usr/bin/env python3
"""Make a folder of wheels from which the QGIS plugin's Install environment works offline
(its 'Offline: folder of wheels' parameter, WHEELS): SegUnify's wheel, PyTorch + torchvision
from the chosen source, and every other dependency, for one platform and Python version.

    python3 scripts/build_offline_bundle.py DIR [--torch-source auto|cpu|registry|URL|FOLDER]
                                                [--platform TAG ... --python-version X.Y]

Run it on a machine with internet that matches the offline machine (same OS, CPU architecture
and Python as QGIS's), or give --platform (e.g. manylinux_2_28_x86_64, win_amd64,
macosx_11_0_arm64) and --python-version (QGIS's Python, e.g. 3.12). --torch-source is the
installer's setting (the SEGUNIFY_TORCH_INDEX variable sets it too): auto picks the CUDA build
when this machine has an NVIDIA GPU and the CPU build otherwise.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from build_plugin import build_wheel  # noqa: E402

from qgis_plugin.installer import TORCH_PACKAGES, detect_gpu, torch_source  # noqa: E402


def pip_download(dest: Path, requirements: list[str], extra: list[str], platform_args: list[str]) -> None:
    subprocess.run([sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-input",
                    "--progress-bar", "off", "--dest", str(dest), *platform_args, *extra, *requirements], check=True)


def build_bundle(dest: Path, torch_choice: str = "", platforms: list[str] | None = None,
                 python_version: str = "") -> list[Path]:
    """Fill dest with the wheels; return them."""
    dest.mkdir(parents=True, exist_ok=True)
    platform_args = []
    for tag in platforms or []:
        platform_args += ["--platform", tag]
    if python_version:
        platform_args += ["--python-version", python_version]
    if platform_args:
        platform_args += ["--only-binary=:all:"]
    wheel = build_wheel(dest)
    label, torch_args = torch_source(torch_choice, None if platforms else detect_gpu())
    print(f"build_offline_bundle: PyTorch from {label}", flush=True)
    pip_download(dest, list(TORCH_PACKAGES), torch_args, platform_args)
    # The torch wheels just fetched are named as requirements, so the rest resolves against them
    # and no second torch build is fetched.
    pinned = [str(p) for name in TORCH_PACKAGES for p in sorted(dest.glob(f"{name}-*.whl"))]
    pip_download(dest, [str(wheel), *pinned], ["--find-links", str(dest)], platform_args)
    return sorted(dest.glob("*.whl"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", type=Path, help="folder to fill with wheels")
    parser.add_argument("--torch-source", default="", help="auto (default), cpu, registry, an index URL or a folder")
    parser.add_argument("--platform", action="append", default=[], help="pip platform tag of the offline machine")
    parser.add_argument("--python-version", default="", help="the offline QGIS's Python version, e.g. 3.12")
    args = parser.parse_args()
    wheels = build_bundle(args.dest, args.torch_source, args.platform, args.python_version)
    size = sum(p.stat().st_size for p in wheels)
    print(f"build_offline_bundle: {len(wheels)} wheels, {size / 2**20:.0f} MiB in {args.dest}")


if __name__ == "__main__":
    main()
