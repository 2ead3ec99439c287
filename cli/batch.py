"""`segunify batch INPUT_DIR OUTPUT_DIR --model MODEL`."""

from __future__ import annotations

import time
from pathlib import Path

import click

from segunify_core import settings
from segunify_core.errors import SegUnifyError
from segunify_core.files.raster_io import IMAGE_SUFFIXES, open_raster
from segunify_core.job.segment import SegmentOptions, run_job
from segunify_core.job.spec import JobSpec
from segunify_core.method.crf import open_crf

from .common import prepare
from .options import (
    crf_option,
    dask_client,
    device_options,
    engine_options,
    guarded,
    progress_for,
    resume_option,
    segment_options,
    setup_logging,
)


@click.command("batch")
@click.argument("input_dir", type=click.Path(file_okay=False))
@click.argument("output_dir", type=click.Path(file_okay=False))
@click.option("--model", "model_path", required=True, type=click.Path(), help="Model file from `segunify train`.")
@segment_options(settings.BATCH)
@resume_option
@engine_options
@crf_option
@device_options
@click.pass_context
@guarded
def command(ctx, input_dir, output_dir, model_path, resume, cluster, scheduler, scheduler_file, crf, backbone_weights,
            device, precision, quiet, segment):
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
    options = SegmentOptions(**segment, device=dev.type, resume=resume)
    rows: list[tuple[str, str, str, float]] = []
    todo: list[tuple[Path, Path]] = []
    for path in inputs:
        out = Path(output_dir) / (path.stem + "_classes.tif")
        if out.exists() and not options.overwrite:
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
        progress = progress_for(ctx, quiet)
        try:
            with open_crf(crf) as refiner, dask_client(cluster, scheduler, scheduler_file, quiet) as client:
                job = JobSpec.build([p for p, _ in todo], [o for _, o in todo], options, model_file=model_path,
                                    backbone_weights=backbone_weights,
                                    crf=refiner.name if refiner is not None else "none", cluster=cluster,
                                    scheduler=scheduler, scheduler_file=scheduler_file,
                                    job_folder=Path(output_dir) / ".segunify-parts", keep_going=True)
                report = run_job(job, model, crf=refiner, client=client, progress=progress)
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
