"""`segunify batch INPUT_DIR OUTPUT_DIR --model MODEL`."""

from __future__ import annotations

import time
from pathlib import Path

import click

from segunify_core.errors import SegUnifyError
from segunify_core.files.raster_io import IMAGE_SUFFIXES, open_raster, parse_bands
from segunify_core.job.planning import DEFAULT_BLOCK
from segunify_core.job.segment import SegmentOptions, segment
from segunify_core.method.crf import open_crf

from .common import prepare
from .options import (
    bands_option,
    dask_client,
    engine_options,
    guarded,
    progress_for,
    run_options,
    segment_batch_option,
    setup_logging,
    stride_option,
    window_option,
)


@click.command("batch")
@click.argument("input_dir", type=click.Path(file_okay=False))
@click.argument("output_dir", type=click.Path(file_okay=False))
@click.option("--model", "model_path", required=True, type=click.Path(), help="Model file from `segunify train`.")
@window_option
@stride_option
@segment_batch_option
@click.option("--native-resolution", is_flag=True)
@click.option("--cog", is_flag=True)
@click.option("--overwrite", is_flag=True, help="Redo files whose output exists (default: skip them).")
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Keep the finished parts of an interrupted run and compute only the missing ones.")
@click.option("--block", default=DEFAULT_BLOCK, show_default=True, help="Side of one part in source pixels.")
@engine_options
@bands_option
@run_options
@click.pass_context
@guarded
def command(ctx, input_dir, output_dir, model_path, window, stride, batch_size, native_resolution, cog, overwrite,
            resume, block, cluster, scheduler, scheduler_file, bands, crf, flip, backbone_weights, device, precision,
            quiet):
    """Segment every raster of a folder as one job; finished outputs are skipped, failures reported at the end."""
    setup_logging(quiet)
    inputs = sorted(p for p in Path(input_dir).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES) \
        if Path(input_dir).is_dir() else None
    if inputs is None:
        raise SegUnifyError(f"Input folder '{input_dir}' does not exist; check the path.")
    if not inputs:
        raise SegUnifyError(f"No rasters in '{input_dir}'; it must hold GeoTIFF/PNG/JPEG files.")
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    model, _, dev = prepare(model_path, "", backbone_weights, device, precision, quiet)
    rows: list[tuple[str, str, str, float]] = []
    todo: list[tuple[Path, Path]] = []
    for path in inputs:
        out = Path(output_dir) / (path.stem + "_classes.tif")
        if out.exists() and not overwrite:
            rows.append((path.name, "skipped", "output exists", 0.0))
            click.echo(f"{path.name}: skipped (output exists)", err=True)
            continue
        try:  # unreadable files are reported, not planned
            open_raster(path).close()
        except SegUnifyError as exc:
            rows.append((path.name, "failed", str(exc), 0.0))
            continue
        todo.append((path, out))
    if todo:
        start = time.perf_counter()
        options = SegmentOptions(window=window, stride=stride, batch_size=batch_size, flip=flip,
                                 native_resolution=native_resolution, bands=parse_bands(bands), cog=cog,
                                 overwrite=overwrite, device=dev.type, block=block, resume=resume)
        progress = progress_for(ctx, quiet)
        try:
            with open_crf(crf) as refiner, dask_client(cluster, scheduler, scheduler_file, quiet) as client:
                report = segment([p for p, _ in todo], [o for _, o in todo], model, options, crf=refiner,
                                 backbone_weights=backbone_weights, client=client, model_file=model_path,
                                 job_folder=Path(output_dir) / ".segunify-parts", keep_going=True, progress=progress)
        finally:
            progress.close()
        seconds = time.perf_counter() - start
        for result in report.rasters:
            name = Path(result.input).name
            if result.error:
                rows.append((name, "failed", result.error, seconds))
            else:
                rows.append((name, "ok", f"{result.width} x {result.height} px -> {Path(result.output).name}", seconds))
        if not quiet:
            click.echo(f"parts: {len(report.computed)} computed, {report.reused} reused, {report.parts} in all; "
                       f"{seconds:.1f} s", err=True)
    width = max(len(r[0]) for r in rows)
    click.echo(f"{'file':<{width}}  {'status':<7} {'seconds':>8}  detail")
    for name, status, detail, secs in rows:
        click.echo(f"{name:<{width}}  {status:<7} {secs:>8.1f}  {detail}")
    failed = sum(r[1] == "failed" for r in rows)
    if failed:
        raise SegUnifyError(f"{failed} of {len(rows)} files failed (see the table above); fix them and rerun "
                            "(finished files are skipped).")
