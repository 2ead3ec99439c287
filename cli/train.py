"""`segunify train DATA... -o MODEL`."""

from __future__ import annotations

import dataclasses

import click
from click.core import ParameterSource

from segunify_core import settings
from segunify_core.files.raster_io import parse_bands
from segunify_core.training.presets import PRESETS, resolve
from segunify_core.training.trainer import TrainConfig, train

from .common import prepare
from .options import (
    backbone_option,
    bands_option,
    classes_range,
    dask_client,
    device_options,
    engine_options,
    guarded,
    progress_for,
    setup_logging,
)

D = TrainConfig()
@click.command("train")
@click.argument("data", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Model file to write (.safetensors).")
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default=None,
              help="Start from every value a published run used (see the README's table); flags given "
                   "explicitly override it.")
@click.option("--classes", default=D.classes, show_default=True, type=classes_range, help="Number of classes K.")
@click.option("--extra-clusters", default=D.extra_clusters, show_default=True, type=click.IntRange(min=0),
              help="Prototypes beyond K.")
@click.option("--local-sets", default=D.local_sets, show_default=True, type=click.IntRange(min=1),
              help="Independent local prototype sets learning against the one global set (1: the published model).")
@click.option("--window", default=D.window, show_default=True, type=click.IntRange(min=settings.MIN_TRAIN_WINDOW),
              help="Training window size in px.")
@click.option("--steps", default=D.steps, show_default=True, type=click.IntRange(min=settings.MIN_STEPS))
@click.option("--batch-size", default=D.batch_size, show_default=True, type=click.IntRange(min=settings.MIN_BATCH_SIZE))
@click.option("--lr-compressor", default=D.lr_compressor, show_default=True)
@click.option("--lr-labeler", default=D.lr_labeler, show_default=True)
@click.option("--weight-decay", default=D.weight_decay, show_default=True)
@click.option("--lr-schedule", type=click.Choice(settings.LR_SCHEDULES), default=D.lr_schedule, show_default=True,
              help="poly-step: lr x (1 - step/steps)^power each step; poly-epoch: the same factor advanced once "
                   "per pass over the windows (the reference run); constant.")
@click.option("--poly-power", default=D.poly_power, show_default=True, help="Power of the polynomial decay.")
@click.option("--alpha", default=D.alpha, show_default=True, help="EMA momentum of the global prototypes.")
@click.option("--ema-order", type=click.Choice(settings.EMA_ORDERS), default=D.ema_order, show_default=True,
              help="Update the global prototypes after the optimiser step, or before backward (the reference run).")
@click.option("--temperature", default=D.temperature, show_default=True, help="Soft-assignment temperature tau.")
@click.option("--shift-intra", default=D.shift_intra, show_default=True, help="Closeness smoothness shift b1.")
@click.option("--shift-inter", default=D.shift_inter, show_default=True, help="Cross-image smoothness shift b2.")
@click.option("--pairing", type=click.Choice(settings.PAIRINGS), default=D.pairing, show_default=True,
              help="Cross-image partners: a derangement, or the reference's permutation with fixed points "
                   "moved to the next image.")
@click.option("--sampling", type=click.Choice(settings.SAMPLINGS), default=D.sampling, show_default=True,
              help="epoch: every window once per epoch, in a new order each epoch, the last incomplete batch "
                   "dropped (the reference run); step: each step draws its batch independently.")
@click.option("--code-dim", default=D.code_dim, show_default=True, help="Code dimension D.")
@click.option("--dropout", default=D.dropout, show_default=True)
@click.option("--dropout-masks", type=click.Choice(settings.DROPOUT_MASKS_CHOICES), default=D.dropout_masks, show_default=True,
              help="independent: three Dropout2d masks per step (linear branch, nonlinear branch, affinities); "
                   "shared: one for all three.")
@click.option("--nonlinear/--no-nonlinear", " /--linear-only", default=D.nonlinear, show_default=True,
              help="Use the Compressor's nonlinear branch.")
@click.option("--outer-silu/--no-outer-silu", default=D.outer_silu, show_default=True,
              help="Apply an outer SiLU to the code (the slides' variant).")
@click.option("--pointwise/--no-pointwise", default=D.pointwise, show_default=True,
              help="Centre the feature affinities pointwise.")
@click.option("--seed", default=D.seed, show_default=True, type=click.IntRange(min=0))
@click.option("--max-windows", default=D.max_windows, show_default=True, type=click.IntRange(min=settings.MIN_MAX_WINDOWS),
              help="Windows sampled from the data (their features are cached on disk).")
@click.option("--five-crop/--no-five-crop", default=D.five_crop, show_default=True,
              help="Cut each image into four corners and the centre instead of random windows.")
@click.option("--crop-ratio", default=D.crop_ratio, show_default=True, help="Five-crop side as a fraction of the shorter side.")
@click.option("--resize", type=click.Choice(settings.RESIZE_MODES), default=D.resize, show_default=True,
              help="How windows are resampled to --window px.")
@click.option("--flip/--no-flip", default=D.flip, show_default=True, help="Also cache horizontally flipped views.")
@click.option("--amp/--no-amp", default=D.amp, show_default=True,
              help="Mixed precision (float16) training on a CUDA GPU; float32 on CPU.")
@click.option("--checkpoint-every", default=D.checkpoint_every, show_default=True,
              type=click.IntRange(min=settings.MIN_INTERVAL), help="Steps between resumable training states.")
@click.option("--val", type=click.Path(exists=True, file_okay=False), default=None,
              help="Labelled validation data (a Potsdam folder: its fixed validation subset of labelled_train; or "
                   "images/ + labels/): keep the model with the best validation mIoU. Never the test split.")
@click.option("--val-every", default=D.val_every, show_default=True, type=click.IntRange(min=settings.MIN_INTERVAL),
              help="Steps between validation scores.")
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint beside the model file.")
@click.option("--gsd", type=float, default=None, help="Ground sampling distance (m) to train at; default: the data's median.")
@click.option("--split", "potsdam_split", type=click.Choice(settings.POTSDAM_TRAIN_SPLITS),
              default=D.potsdam_split, show_default=True,
              help="Potsdam split used when DATA is a Potsdam folder (train = labelled_train.txt).")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Feature cache folder (default ~/.cache/segunify/features or $SEGUNIFY_CACHE).")
@engine_options
@bands_option
@backbone_option
@device_options
@click.pass_context
@guarded
def command(ctx, data, output, preset, val, resume, cache_dir, cluster, scheduler, scheduler_file, bands, backbone,
            backbone_weights, device, precision, quiet, **fields):
    """Train a model on folders or files of orthophotos (GeoTIFF/PNG/JPEG) or a Potsdam folder."""
    setup_logging(quiet)
    explicit = {name: value for name, value in fields.items()
                if ctx.get_parameter_source(name) is not ParameterSource.DEFAULT}
    parsed = parse_bands(bands)
    if parsed:
        explicit["bands"] = list(parsed)
    given_backbone = backbone if ctx.get_parameter_source("backbone") is not ParameterSource.DEFAULT else None
    config, backbone = resolve(preset, explicit, given_backbone, settings.BACKBONE)
    _, bb, dev = prepare(None, backbone, backbone_weights, device, precision, quiet)
    if not quiet:
        if preset:
            overrides = ", ".join(config.preset_overrides) or "none"
            click.echo(f"preset: {preset} (overridden: {overrides})", err=True)
        click.echo("configuration: " + ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(config).items()), err=True)
    progress = progress_for(ctx, quiet)
    try:
        with dask_client(cluster, scheduler, scheduler_file, quiet) as client:
            model = train(data, output, config, backbone=bb, backbone_weights=backbone_weights, cache_dir=cache_dir,
                          resume=resume, device=dev.type, on_progress=progress, client=client, val=val)
    finally:
        progress.close()
    if not quiet:
        summary = model.metadata["training"]["data"]
        click.echo(f"wrote {output}: {config.classes} classes (+{config.extra_clusters} extra), {summary['images']} "
                   f"images, {summary['windows']} windows, GSD {summary['gsd_m']}", err=True)
        validation = model.metadata["training"].get("validation")
        if validation:
            click.echo(f"kept the model of step {validation['best_step']}: validation mIoU "
                       f"{100 * validation['best_miou']:.2f}, accuracy {100 * validation['best_accuracy']:.2f} "
                       f"({len(validation['images'])} images)", err=True)
