"""The README's main job: self-fit on ../shared/samples/rasterio/cogeo.tif (1024 x 1024) with the
default ViT-S/8, timed end to end as a user runs it (CLI process included). Weights are random
here (same shapes and cost as the real ones), passed as a local timm checkpoint.

    python bench/main_job.py [--samples ../shared/samples]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, random_checkpoint, report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", default=os.environ.get("SEGUNIFY_SAMPLES", str(REPO.parent / "shared" / "samples")))
    args = parser.parse_args()
    src = Path(args.samples) / "rasterio" / "cogeo.tif"
    if not src.exists():
        sys.exit(f"sample raster not found at {src}; pass --samples")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = random_checkpoint("vit_small_patch8_224.dino", tmp)
        cmd = [str(Path(sys.executable).parent / "segunify"), "tile-segment", str(src), str(tmp / "classes.tif"),
               "--classes", "5", "--crf", "auto", "--preview", str(tmp / "preview.png"),
               "--backbone-weights", str(weights), "--quiet"]
        start = time.perf_counter()
        subprocess.run(cmd, check=True)
        seconds = time.perf_counter() - start
        report("main_job_seconds", seconds, "s", target="< 180", ok=seconds < 180,
               command="segunify tile-segment cogeo.tif OUT --classes 5 --crf auto --preview PNG")


if __name__ == "__main__":
    main()
