"""How closely the two CRF backends agree on real images from ../shared/samples.

For each sample raster a 5-cluster model is self-fitted (random-weight ViT-S/8, standing in for
the real weights), and for 320 px windows the same log-probabilities go through both CRFs.
Reported per raster: share of pixels where the two CRFs' labels agree, share of pixels each CRF
changed relative to no CRF, and the time per window of each backend.

    python bench/crf_agreement.py [--samples ../shared/samples] [--windows 6]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import REPO, random_checkpoint, report

from segunify_core import settings
from segunify_core.files.raster_io import RasterReader
from segunify_core.job.planning import Geometry, plan_raster
from segunify_core.job.selffit import SelfFitOptions, self_fit
from segunify_core.job.windows import TileSource
from segunify_core.method.backbone import choose_precision, create_backbone
from segunify_core.method.crf import PyDenseCRF, TorchDenseCRF, pydensecrf_available
from segunify_core.method.inference import window_log_probs

RASTERS = ["rasterio/cogeo.tif", "rasterio/RGB.byte.tif", "rasterio/world.rgb.tif", "rasterio/shade.tif",
           "spacenet/atlanta_pan_0.5m.tif"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", default=os.environ.get("SEGUNIFY_SAMPLES", str(REPO.parent / "shared" / "samples")))
    parser.add_argument("--windows", type=int, default=6)
    args = parser.parse_args()
    if not pydensecrf_available():
        raise SystemExit("pydensecrf (pydensecrf2) is not installed; nothing to compare")
    with tempfile.TemporaryDirectory() as tmp:
        weights = random_checkpoint("vit_small_patch8_224.dino", Path(tmp))
        backbone = create_backbone("dino_vits8", weights, precision=choose_precision(settings.PRECISION, torch.device("cpu")))
        ref, fast = PyDenseCRF(), TorchDenseCRF(stride=int(os.environ.get("CRF_STRIDE", 16)))
        totals = []
        for name in RASTERS:
            # native resolution: 320 source px windows, as the figures in the README were measured
            job = plan_raster(0, Path(args.samples) / name, Path(tmp) / "unused.tif",
                              Geometry(320, 256, backbone.patch_size, None, native_resolution=True), None)
            model = self_fit([job], backbone, SelfFitOptions(classes=5, steps=100, max_windows=8,
                                                             cache_dir=tmp), torch.device("cpu"))
            reader = RasterReader.open(job.input, job.bands, job.stats)
            plan = job.window_plan()
            source = TileSource(reader, plan, job.model_window, job.scale, job.patch)
            tiles = [t for t in plan.tiles()]
            picks = np.random.default_rng(0).choice(len(tiles), min(args.windows, len(tiles)), replace=False)
            agree, changed_ref, changed_fast, t_ref, t_fast = [], [], [], 0.0, 0.0
            for k in picks:
                rgb, valid = source.read(tiles[k])
                x = torch.from_numpy(rgb)[None]
                log_probs = window_log_probs(model, x)
                t0 = time.perf_counter()
                a = ref(x, log_probs).argmax(1)
                t1 = time.perf_counter()
                b = fast(x, log_probs).argmax(1)
                t2 = time.perf_counter()
                t_ref, t_fast = t_ref + t1 - t0, t_fast + t2 - t1
                none = log_probs.argmax(1)
                agree.append((a == b).float().mean().item())
                changed_ref.append((a != none).float().mean().item())
                changed_fast.append((b != none).float().mean().item())
            reader.close()
            n = len(picks)
            totals.append(np.mean(agree))
            report(f"crf_agreement_{Path(name).stem}", float(np.mean(agree)), "fraction of pixels",
                   changed_by_pydensecrf=round(float(np.mean(changed_ref)), 4),
                   changed_by_torch=round(float(np.mean(changed_fast)), 4),
                   pydensecrf_s_per_window=round(t_ref / n, 3), torch_s_per_window=round(t_fast / n, 3), windows=n)
        report("crf_agreement_mean", float(np.mean(totals)), "fraction of pixels")


if __name__ == "__main__":
    main()
