"""`segunify vectorize CLASSES OUT.gpkg`."""

from __future__ import annotations

import click

from segunify_core import settings
from segunify_core.files.vectorize import vectorize

from .options import guarded, quiet_option


@click.command("vectorize")
@click.argument("classes", type=click.Path())
@click.argument("output", type=click.Path(dir_okay=False))
@click.option("--min-area", default=settings.MIN_AREA, show_default=True, type=click.FloatRange(min=0.0),
              help="Minimum mapping unit in square metres (CRS units).")
@click.option("--simplify", default=settings.SIMPLIFY, show_default=True, type=click.FloatRange(min=0.0),
              help="Simplification tolerance in CRS units.")
@click.option("--overwrite", is_flag=True)
@quiet_option
@guarded
def command(classes, output, min_area, simplify, overwrite, quiet):
    """Polygonise a class raster into a GeoPackage (class_id, class_name and area_m2 per polygon)."""
    stats = vectorize(classes, output, min_area, simplify, overwrite)
    if not quiet:
        click.echo(f"wrote {output}: {stats['polygons']} polygons, {stats['area']:.1f} m2", err=True)
