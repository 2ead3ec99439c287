"""`segunify distill MODEL DATA... -o FAST_MODEL`."""

from __future__ import annotations

import click

from segunify_core import settings
from segunify_core.settings import DistillOptions
from segunify_core.training.distill import distill

from .common import eager_switch
from .options import dask_client, declared_options, device_options, engine_options, guarded, progress_for, setup_logging


@click.command("distill")
@click.argument("model_path", metavar="MODEL", type=click.Path())
@click.argument("data", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Fast model file to write (.safetensors).")
@declared_options(DistillOptions, settings.DISTILL, "chosen")
@click.option("--resume", is_flag=True, help="Continue from the last state beside the fast model file.")
@engine_options
@device_options
@click.pass_context
@guarded
def command(ctx, model_path, data, output, resume, cluster, scheduler, scheduler_file, backbone_weights, device,
            precision, quiet, chosen: dict):
    """Distil MODEL into a fast convolutional model on rasters or folders DATA (as for train).

    The teacher is MODEL's whole pipeline (backbone, flip averaging, optional CRF); its probabilities
    on windows sampled across DATA are cached once. The fast model file is an ordinary model file:
    tile-segment, batch, evaluate and the QGIS plugin take it like any other.
    """
    setup_logging(quiet)
    options = DistillOptions(**chosen)
    progress = progress_for(ctx, quiet)
    try:
        with dask_client(cluster, scheduler, scheduler_file, quiet) as client:
            model = distill(model_path, data, output, options, client=client, resume=resume, device=device,
                            precision=precision, fuse=eager_switch(), backbone_weights=backbone_weights,
                            progress=progress)
    finally:
        progress.close()
    if not quiet:
        summary = model.metadata["distillation"]
        click.echo(f"wrote {output}: fast model ({options.student}), {model.n_classes} classes, distilled on "
                   f"{summary['windows']} windows of {summary['images']} image(s); agreement with the teacher on "
                   f"them {100 * summary['agreement_on_training_windows']:.1f} %", err=True)

