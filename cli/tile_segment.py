"""`segunify tile-segment INPUT OUTPUT`."""

from __future__ import annotations

import click

from segunify_core import settings
from segunify_core.files.model_file import save_model
from segunify_core.files.raster_io import parse_bands
from segunify_core.job.planning import DEFAULT_BLOCK
from segunify_core.job.segment import SegmentOptions, SelfFitOptions, segment_raster
from segunify_core.method.crf import open_crf

from .common import prepare
from .options import (
    backbone_option,
    bands_option,
    classes_range,
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

F = SelfFitOptions(classes=0)


@click.command("tile-segment")
@click.argument("input_path", metavar="INPUT", type=click.Path())
@click.argument("output_path", metavar="OUTPUT", type=click.Path(dir_okay=False))
@click.option("--model", "model_path", type=click.Path(), default=None, help="Model file from `segunify train`.")
@click.option("--classes", type=classes_range, default=None, help="Without --model: fit K classes on the input itself.")
@click.option("--extra-clusters", default=F.extra_clusters, show_default=True, type=click.IntRange(min=0),
              help="Self-fit: prototypes beyond K.")
@click.option("--local-sets", default=F.local_sets, show_default=True, type=click.IntRange(min=1),
              help="Self-fit: local prototype sets learning against the one global set.")
@click.option("--fit-steps", default=F.steps, show_default=True, type=click.IntRange(min=settings.MIN_STEPS),
              help="Self-fit: training steps.")
@click.option("--fit-windows", default=F.max_windows, show_default=True,
              type=click.IntRange(min=settings.MIN_FIT_WINDOWS), help="Self-fit: windows sampled from the input.")
@click.option("--shift-intra", default=F.shift_intra, show_default=True, help="Self-fit: closeness shift b1.")
@click.option("--shift-inter", default=F.shift_inter, show_default=True, help="Self-fit: cross-image shift b2.")
@click.option("--seed", default=F.seed, show_default=True, type=click.IntRange(min=0), help="Self-fit: random seed.")
@click.option("--save-model", "save_model_path", type=click.Path(dir_okay=False), default=None, help="Self-fit: keep the fitted model.")
@window_option
@stride_option
@segment_batch_option
@click.option("--native-resolution", is_flag=True, help="Do not resample the input to the model's GSD.")
@click.option("--probabilities", type=click.Path(dir_okay=False), default=None,
              help="Also write the blended class probabilities to this GeoTIFF.")
@click.option("--probabilities-dtype", type=click.Choice(settings.PROBABILITIES_DTYPES),
              default=settings.PROBABILITIES_DTYPES[0], show_default=True)
@click.option("--cog", is_flag=True, help="Write a Cloud Optimized GeoTIFF (NEAREST/MODE overviews).")
@click.option("--preview", type=click.Path(dir_okay=False), default=None, help="Write a PNG of image, classes and overlay.")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUTPUT.")
@click.option("--resume", is_flag=True,
              help="Keep the finished parts of an interrupted run (beside OUTPUT) and compute only the missing ones.")
@click.option("--block", default=DEFAULT_BLOCK, show_default=True, help="Side of one part in source pixels.")
@engine_options
@bands_option
@backbone_option
@run_options
@click.pass_context
@guarded
def command(ctx, input_path, output_path, model_path, classes, extra_clusters, local_sets, fit_steps, fit_windows,
            shift_intra, shift_inter, seed, save_model_path, window, stride, batch_size, native_resolution,
            probabilities, probabilities_dtype, cog, preview, overwrite, resume, block, cluster, scheduler,
            scheduler_file, bands, crf, flip, backbone, backbone_weights, device, precision, quiet):
    """Segment a raster of any size into a class raster on exactly the input's grid.

    With --model the labels come from the model's global prototypes; with --classes K (no model)
    a model is first fitted on windows of the input itself (self-fit).
    """
    setup_logging(quiet)
    if model_path is None and classes is None:
        raise click.UsageError("pass a model file (--model MODEL), or a number of classes (--classes K) to fit a model "
                               "on the input itself.")
    if model_path is not None and classes is not None:
        raise click.UsageError("The number of classes (--classes) is for self-fit; a model file (--model) already fixes "
                               "the classes.")
    model, bb, dev = prepare(model_path, backbone, backbone_weights, device, precision, quiet)
    fit = None
    if model is None:
        fit = SelfFitOptions(classes=classes, extra_clusters=extra_clusters, steps=fit_steps,
                             max_windows=fit_windows, shift_intra=shift_intra, shift_inter=shift_inter, seed=seed,
                             local_sets=local_sets)
    options = SegmentOptions(window=window, stride=stride, batch_size=batch_size, flip=flip,
                             native_resolution=native_resolution, bands=parse_bands(bands),
                             probabilities=probabilities, probabilities_dtype=probabilities_dtype, cog=cog,
                             overwrite=overwrite, preview=preview, device=dev.type, block=block, resume=resume)
    progress = progress_for(ctx, quiet)
    try:
        with open_crf(crf) as refiner, dask_client(cluster, scheduler, scheduler_file, quiet) as client:
            if refiner is not None and not quiet:
                click.echo(f"CRF: {refiner.name}", err=True)
            report = segment_raster(input_path, output_path, model, options, crf=refiner, fit=fit, backbone=bb,
                                    progress=progress, client=client, backbone_weights=backbone_weights,
                                    model_file=model_path)
    finally:
        progress.close()
    if save_model_path:
        save_model(report.model, save_model_path)
    if not quiet:
        note = f", resampled x{1 / report.scale:.3g} to the model's GSD" if report.scale != 1.0 else ""
        reused = f", {report.reused} reused from the interrupted run" if report.reused else ""
        click.echo(f"wrote {report.output}: {report.width} x {report.height} px, {report.classes} classes, "
                   f"{report.windows} windows{note}; parts: {report.computed} computed{reused}", err=True)
