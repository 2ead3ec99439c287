"""`segunify`: train, tile-segment, evaluate, vectorize, classes, batch, backbones, distill."""

from __future__ import annotations

import click

from segunify_core.method.backbone import reuse_freed_memory

from . import backbones, batch, check, classes, distill, evaluate, tile_segment, train, vectorize


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.option("--progress", type=click.Choice(["bar", "json", "none"]), default="bar", hidden=True,
              help="Progress output (json: one JSON object per line, for the QGIS plugin).")
@click.version_option(package_name="segunify")
@click.pass_context
def cli(ctx: click.Context, debug: bool, progress: str) -> None:
    """Unsupervised segmentation of aerial and satellite imagery."""
    ctx.ensure_object(dict)
    ctx.obj.update(debug=debug, progress=progress)
    reuse_freed_memory()  # this process is ours: tune its allocator for the backbone's activations


for module in (train, tile_segment, evaluate, vectorize, classes, batch, backbones, check, distill):
    cli.add_command(module.command)


def main() -> None:
    cli(obj={})
