"""`segunify train DATA... -o MODEL`."""

from __future__ import annotations

import dataclasses

import click

from segunify_core.raster_io import parse_bands
from segunify_core.training import TrainConfig, train

from .common import prepare
from .options import (
    backbone_option,
    backbone_weights_option,
    bands_option,
    dask_client,
    device_option,
    engine_options,
    guarded,
    precision_option,
    progress_for,
    quiet_option,
    setup_logging,
)

D = TrainConfig()


@click.command("train")
@click.argument("data", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Model file to write (.safetensors).")
@click.option("--classes", default=D.classes, show_default=True, help="Number of classes K.")
@click.option("--extra-clusters", default=D.extra_clusters, show_default=True, help="Prototypes beyond K.")
@click.option("--local-sets", default=D.local_sets, show_default=True, type=click.IntRange(min=1),
              help="Local (student) prototype sets learning against the one global set; 1 is the published model.")
@click.option("--window", default=D.window, show_default=True, help="Training window size in px.")
@click.option("--steps", default=D.steps, show_default=True)
@click.option("--batch-size", default=D.batch_size, show_default=True)
@click.option("--lr-compressor", default=D.lr_compressor, show_default=True)
@click.option("--lr-labeler", default=D.lr_labeler, show_default=True)
@click.option("--weight-decay", default=D.weight_decay, show_default=True)
@click.option("--alpha", default=D.alpha, show_default=True, help="EMA momentum of the global prototypes.")
@click.option("--temperature", default=D.temperature, show_default=True, help="Soft-assignment temperature tau.")
@click.option("--shift-intra", default=D.shift_intra, show_default=True, help="Closeness smoothness shift b1.")
@click.option("--shift-inter", default=D.shift_inter, show_default=True, help="Cross-image smoothness shift b2.")
@click.option("--code-dim", default=D.code_dim, show_default=True, help="Code dimension D.")
@click.option("--dropout", default=D.dropout, show_default=True)
@click.option("--nonlinear/--linear-only", default=D.nonlinear, show_default=True,
              help="Use the Compressor's nonlinear branch.")
@click.option("--outer-silu", is_flag=True, help="Apply an outer SiLU to the code (the slides' variant).")
@click.option("--no-pointwise", is_flag=True, help="Do not centre the feature affinities pointwise.")
@click.option("--seed", default=D.seed, show_default=True)
@click.option("--max-windows", default=D.max_windows, show_default=True,
              help="Windows sampled from the data (their features are cached on disk).")
@click.option("--five-crop", is_flag=True, help="Cut each image into four corners and the centre instead of random windows.")
@click.option("--crop-ratio", default=D.crop_ratio, show_default=True, help="Five-crop side as a fraction of the shorter side.")
@click.option("--no-flip", is_flag=True, help="Do not cache horizontally flipped views.")
@click.option("--checkpoint-every", default=D.checkpoint_every, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint beside the model file.")
@click.option("--gsd", type=float, default=None, help="Ground sampling distance (m) to train at; default: the data's median.")
@click.option("--split", default="all_train", show_default=True, help="Potsdam split used when DATA is a Potsdam folder.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Feature cache folder (default ~/.cache/segunify/features or $SEGUNIFY_CACHE).")
@engine_options
@bands_option
@backbone_option
@backbone_weights_option
@device_option
@precision_option
@quiet_option
@click.pass_context
@guarded
def command(ctx, data, output, classes, extra_clusters, local_sets, window, steps, batch_size, lr_compressor, lr_labeler,
            weight_decay, alpha, temperature, shift_intra, shift_inter, code_dim, dropout, nonlinear,
            outer_silu, no_pointwise, seed, max_windows, five_crop, crop_ratio, no_flip, checkpoint_every,
            resume, gsd, split, cache_dir, cluster, scheduler, scheduler_file, bands, backbone, backbone_weights, device, precision, quiet):
    """Train a model on folders or files of orthophotos (GeoTIFF/PNG/JPEG) or a Potsdam folder."""
    setup_logging(quiet)
    parsed = parse_bands(bands)
    config = TrainConfig(
        classes=classes, extra_clusters=extra_clusters, window=window, steps=steps, batch_size=batch_size,
        lr_compressor=lr_compressor, lr_labeler=lr_labeler, weight_decay=weight_decay, alpha=alpha,
        temperature=temperature, shift_intra=shift_intra, shift_inter=shift_inter, pointwise=not no_pointwise,
        code_dim=code_dim, dropout=dropout, nonlinear=nonlinear, outer_silu=outer_silu, seed=seed,
        max_windows=max_windows, five_crop=five_crop, crop_ratio=crop_ratio, flip=not no_flip,
        checkpoint_every=checkpoint_every, bands=list(parsed) if parsed else None, gsd=gsd,
        local_sets=local_sets)
    _, bb, dev = prepare(None, backbone, backbone_weights, device, precision, quiet)
    if not quiet:
        click.echo("configuration: " + ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(config).items()), err=True)
    progress = progress_for(ctx, quiet)
    try:
        with dask_client(cluster, scheduler, scheduler_file, quiet) as client:
            model = train(data, output, config, backbone=bb, backbone_weights=backbone_weights, cache_dir=cache_dir,
                          resume=resume, device=dev.type, potsdam_split=split, on_progress=progress, client=client)
    finally:
        progress.close()
    if not quiet:
        summary = model.metadata["training"]["data"]
        click.echo(f"wrote {output}: {classes} classes (+{extra_clusters} extra), {summary['images']} images, "
                   f"{summary['windows']} windows, GSD {summary['gsd_m']}", err=True)
