"""`segunify batch INPUT_DIR OUTPUT_DIR --model MODEL`."""

from __future__ import annotations

import time
from pathlib import Path

import click

from segunify_core import settings
from segunify_core.errors import SegUnifyError
from segunify_core.files.raster_io import IMAGE_SUFFIXES, list_prefix, open_raster, read_list
from segunify_core.files.remote import Location, exists, gdal_env, is_url, join, location, make_folder, name_of, stem_of
from segunify_core.files.stac import collection_rasters, is_stac
from segunify_core.job.segment import SegmentOptions, run_job
from segunify_core.job.spec import JobSpec
from segunify_core.method.crf import open_crf

from .common import prepare
from .options import (
    asset_option,
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
@click.argument("input_dir", type=click.Path())
@click.argument("output_dir", type=click.Path(file_okay=False))
@asset_option
@click.option("--model", "model_path", required=True, type=click.Path(), help="Model file from `segunify train`.")
@segment_options(settings.BATCH)
@resume_option
@engine_options
@crf_option
@device_options
@click.pass_context
@guarded
def command(ctx, input_dir, output_dir, asset, model_path, resume, cluster, scheduler, scheduler_file, crf, backbone_weights,
            device, precision, quiet, segment):
    """Segment every raster of a folder as one job; finished outputs are skipped, failures reported at the end.

    INPUT_DIR may also be an s3:// prefix, a text file listing paths or URLs (one a line), or a STAC
    ItemCollection (a search result saved as .json; each item's asset by --asset). OUTPUT_DIR may be
    an s3:// prefix.
    """
    setup_logging(quiet)
    named = batch_inputs(input_dir, asset)
    if not named:
        raise SegUnifyError(f"No rasters in '{input_dir}'; it must hold GeoTIFF/PNG/JPEG files.")
    output_dir = location(output_dir)
    make_folder(output_dir)
    model, _, dev = prepare(model_path, "", backbone_weights, device, precision, quiet)
    options = SegmentOptions(**segment, device=dev.type, resume=resume)
    rows: list[tuple[str, str, str, float]] = []
    todo: list[tuple[Location, Location]] = []
    names: dict[str, str] = {}
    for stem, path in named:
        label = name_of(path)
        out = join(output_dir, stem + "_classes.tif")
        if exists(out) and not options.overwrite:
            rows.append((label, "skipped", "output exists", 0.0))
            click.echo(f"{label}: skipped (output exists)", err=True)
            continue
        try:  # unreadable files are reported, not planned
            with gdal_env():
                open_raster(path).close()
        except SegUnifyError as exc:
            rows.append((label, "failed", str(exc), 0.0))
            continue
        todo.append((path, out))
        names[str(path)] = label
    if todo:
        start = time.perf_counter()
        progress = progress_for(ctx, quiet)
        try:
            with open_crf(crf) as refiner, dask_client(cluster, scheduler, scheduler_file, quiet) as client:
                job = JobSpec.build([p for p, _ in todo], [o for _, o in todo], options, model_file=model_path,
                                    backbone_weights=backbone_weights,
                                    crf=refiner.name if refiner is not None else "none", cluster=cluster,
                                    scheduler=scheduler, scheduler_file=scheduler_file,
                                    job_folder=join(output_dir, ".segunify-parts"), keep_going=True)
                report = run_job(job, model, crf=refiner, client=client, progress=progress)
        finally:
            progress.close()
        seconds = time.perf_counter() - start
        for result in report.rasters:
            name = names.get(result.input, name_of(result.input))
            if result.error:
                rows.append((name, "failed", result.error, seconds))
            else:
                rows.append((name, "ok", f"{result.width} x {result.height} px -> {name_of(result.output)}", seconds))
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


def batch_inputs(given: str, asset: str | None) -> list[tuple[str, Location]]:
    """(output stem, raster) of every input: a folder's rasters, an s3:// prefix's, a list file's, or
    the items of a STAC ItemCollection (stem: the item's id)."""
    if asset is not None and not is_stac(given):
        raise SegUnifyError("An asset (--asset) chooses among STAC items' assets; the input is not a STAC item "
                            "collection (.json), so leave --asset out.")
    if is_stac(given):
        return [(r.item, r.href) for r in collection_rasters(given, asset)]
    if is_url(given):
        return [(stem_of(url), url) for url in list_prefix(given)]
    path = Path(given)
    if path.is_file() and path.suffix.lower() == ".txt":
        return [(stem_of(entry), location(entry)) for entry in read_list(path)]
    if not path.is_dir():
        raise SegUnifyError(f"Input folder '{given}' does not exist; check the path.")
    return [(p.stem, p) for p in sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)]
