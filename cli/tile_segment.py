"""`segunify tile-segment INPUT OUTPUT`."""

from __future__ import annotations

import click

from segunify_core import settings
from segunify_core.errors import SegUnifyError
from segunify_core.files.model_file import save_model
from segunify_core.files.stac import is_stac, item_raster
from segunify_core.job.segment import SegmentOptions, SelfFitOptions, run_job
from segunify_core.job.spec import JobSpec
from segunify_core.method.crf import open_crf

from .common import prepare
from .options import (
    asset_option,
    backbone_option,
    crf_option,
    dask_client,
    device_options,
    engine_options,
    guarded,
    progress_for,
    resume_option,
    segment_options,
    self_fit_options,
    setup_logging,
)


@click.command("tile-segment")
@click.argument("input_path", metavar="INPUT", type=click.Path())
@click.argument("output_path", metavar="OUTPUT", type=click.Path(dir_okay=False))
@asset_option
@click.option("--model", "model_path", type=click.Path(), default=None, help="Model file from `segunify train`.")
@self_fit_options(settings.TILE_SEGMENT)
@click.option("--save-model", "save_model_path", type=click.Path(dir_okay=False), default=None, help="Self-fit: keep the fitted model.")
@segment_options(settings.TILE_SEGMENT)
@resume_option
@engine_options
@backbone_option
@crf_option
@device_options
@click.pass_context
@guarded
def command(ctx, input_path, output_path, asset, model_path, save_model_path, resume, cluster, scheduler, scheduler_file,
            backbone, crf, backbone_weights, device, precision, quiet, segment, fit):
    """Segment a raster of any size into a class raster on exactly the input's grid.

    With --model the labels come from the model's global prototypes; without it a model is first
    fitted on windows of the input itself (self-fit) with --classes K classes.

    INPUT may be a URL (https://, s3://, GDAL /vsi... path) or a STAC item (.json file or URL; its
    asset by --asset); OUTPUT may be an s3:// URL.
    """
    setup_logging(quiet)
    if is_stac(input_path):
        stac = item_raster(input_path, asset)
        if not quiet:
            click.echo(f"STAC item {stac.item}: {stac.href}", err=True)
        input_path = stac.href
    elif asset is not None:
        raise SegUnifyError("An asset (--asset) chooses among a STAC item's assets; the input is not a STAC item "
                            "(.json), so leave --asset out.")
    if model_path is not None and fit["classes"] is not None:
        raise SegUnifyError("The number of classes (--classes) is for self-fit; a model file (--model) already fixes "
                            "the classes, so leave one of them out.")
    if model_path is None and fit["classes"] is None:
        fit["classes"] = settings.MAP_CLASSES
        if not quiet:
            click.echo(f"self-fit: {settings.MAP_CLASSES} classes (the default); choose another number with --classes "
                       "K, or a trained model with --model MODEL.", err=True)
    model, bb, dev = prepare(model_path, backbone, backbone_weights, device, precision, quiet)
    fit_backbone = bb if model is None else None
    progress = progress_for(ctx, quiet)
    try:
        with open_crf(crf) as refiner, dask_client(cluster, scheduler, scheduler_file, quiet) as client:
            if refiner is not None and not quiet:
                click.echo(f"CRF: {refiner.name}", err=True)
            job = JobSpec.build([input_path], [output_path], SegmentOptions(**segment, device=dev.type, resume=resume),
                                model_file=model_path, fit=SelfFitOptions(**fit) if model is None else None,
                                backbone=fit_backbone.spec.name if fit_backbone is not None else None,
                                backbone_weights=backbone_weights,
                                crf=refiner.name if refiner is not None else "none", cluster=cluster,
                                scheduler=scheduler, scheduler_file=scheduler_file)
            report = run_job(job, model, fit_backbone, refiner, client, progress)
    finally:
        progress.close()
    raster = report.rasters[0]
    if save_model_path:
        save_model(report.model, save_model_path)
    if not quiet:
        note = f", resampled x{1 / raster.scale:.3g} to the model's GSD" if raster.scale != 1.0 else ""
        reused = f", {report.reused} reused from the interrupted run" if report.reused else ""
        click.echo(f"wrote {raster.output}: {raster.width} x {raster.height} px, {report.classes} classes, "
                   f"{raster.windows} windows{note}; parts: {len(report.computed)} computed{reused}", err=True)
