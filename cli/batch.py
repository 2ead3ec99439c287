"""`segunify batch INPUT_DIR OUTPUT_DIR --model MODEL`."""

from __future__ import annotations

import time
from pathlib import Path

import click

from segunify_core.crf import make_crf
from segunify_core.errors import SegUnifyError
from segunify_core.raster_io import IMAGE_SUFFIXES, parse_bands
from segunify_core.segment import SegmentOptions, segment_raster

from .common import prepare
from .options import (
    bands_option,
    guarded,
    progress_for,
    run_options,
    setup_logging,
)


@click.command("batch")
@click.argument("input_dir", type=click.Path(file_okay=False))
@click.argument("output_dir", type=click.Path(file_okay=False))
@click.option("--model", "model_path", required=True, type=click.Path(), help="Model file from `segunify train`.")
@click.option("--window", default=320, show_default=True)
@click.option("--stride", default=256, show_default=True)
@click.option("--batch-size", default=4, show_default=True)
@click.option("--native-resolution", is_flag=True)
@click.option("--cog", is_flag=True)
@click.option("--overwrite", is_flag=True, help="Redo files whose output exists (default: skip them).")
@bands_option
@run_options
@click.pass_context
@guarded
def command(ctx, input_dir, output_dir, model_path, window, stride, batch_size, native_resolution, cog, overwrite,
            bands, crf, flip, backbone_weights, device, precision, quiet):
    """Segment every raster of a folder; finished outputs are skipped, failures reported at the end."""
    setup_logging(quiet)
    inputs = sorted(p for p in Path(input_dir).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES) \
        if Path(input_dir).is_dir() else None
    if inputs is None:
        raise SegUnifyError(f"Input folder '{input_dir}' does not exist; check the path.")
    if not inputs:
        raise SegUnifyError(f"No rasters in '{input_dir}'; it must hold GeoTIFF/PNG/JPEG files.")
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    model, _, dev = prepare(model_path, "", backbone_weights, device, precision, quiet)
    refiner = make_crf(crf)
    rows = []
    for path in inputs:
        out = Path(output_dir) / (path.stem + "_classes.tif")
        if out.exists() and not overwrite:
            rows.append((path.name, "skipped", "output exists", 0.0))
            click.echo(f"{path.name}: skipped (output exists)", err=True)
            continue
        start = time.perf_counter()
        options = SegmentOptions(window=window, stride=stride, batch_size=batch_size, flip=flip,
                                 native_resolution=native_resolution, bands=parse_bands(bands), cog=cog,
                                 overwrite=overwrite, device=dev.type)
        progress = progress_for(ctx, quiet)
        try:
            report = segment_raster(path, out, model, options, crf=refiner, progress=progress)
            detail = f"{report.width} x {report.height} px -> {out.name}"
            rows.append((path.name, "ok", detail, time.perf_counter() - start))
        except SegUnifyError as exc:
            rows.append((path.name, "failed", str(exc), time.perf_counter() - start))
        finally:
            progress.close()
        name, status, detail, secs = rows[-1]
        click.echo(f"{name}: {status} ({secs:.1f} s) {detail}", err=True)
    width = max(len(r[0]) for r in rows)
    click.echo(f"{'file':<{width}}  {'status':<7} {'seconds':>8}  detail")
    for name, status, detail, secs in rows:
        click.echo(f"{name:<{width}}  {status:<7} {secs:>8.1f}  {detail}")
    failed = sum(r[1] == "failed" for r in rows)
    if failed:
        raise SegUnifyError(f"{failed} of {len(rows)} files failed (see the table above); fix them and rerun "
                            "(finished files are skipped).")
