"""`segunify classes MODEL [-o NEW --name ID=NAME --merge IDS=NAME --colour ID=#RRGGBB]`."""

from __future__ import annotations

import json

import click

from segunify_core.errors import SegUnifyError
from segunify_core.files.model_file import read_model_file, rewrite_model_legend
from segunify_core.method.legend import Legend, hex_colour, parse_edits

from .options import guarded


def _edits(kind: str):
    """A click callback: --name/--merge/--colour texts parsed into `Legend.edit` arguments."""

    def parse(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]):
        try:
            named, merged, coloured = parse_edits(**{kind: values})
        except SegUnifyError as exc:
            raise click.BadParameter(str(exc), ctx, param) from None
        return {"names": named, "merges": merged, "colours": coloured}[kind]

    return parse


def _table(legend: Legend, shares: list[float | None]) -> list[dict]:
    return [{"id": i, "name": c.name, "colour": hex_colour(c.colour), "share": share,
             "clusters": [k + 1 for k in c.clusters]}
            for i, (c, share) in enumerate(zip(legend.classes, shares, strict=True), start=1)]


@click.command("classes")
@click.argument("model_path", metavar="MODEL", type=click.Path())
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Write a new model file with the edited legend (MODEL is never modified).")
@click.option("--name", "names", multiple=True, metavar="ID=NAME", callback=_edits("names"), help="Name a class, e.g. --name 3=roof.")
@click.option("--merge", "merges", multiple=True, metavar="IDS=NAME", callback=_edits("merges"),
              help="Merge classes into one, e.g. --merge 4,5=vegetation (their probabilities add up); without "
                   "=NAME the first listed class's name is kept.")
@click.option("--colour", "--color", "colours", multiple=True, metavar="ID=#RRGGBB", callback=_edits("colours"),
              help="Colour a class, e.g. --colour 3=#c0392b.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
@click.option("--json", "as_json", is_flag=True, help='Print the classes as one JSON object {"classes": [...]}.')
@guarded
def command(model_path, output, names, merges, colours, overwrite, as_json):
    """List a model's classes (id, name, colour, share of the training pixels), or write a copy
    with classes named, coloured and merged.

    Ids are the ones this command lists for MODEL. After merging, classes are numbered 1..K' in
    the order of their lowest original cluster: a merged class takes the place of its lowest
    member. Outputs of the new model (class raster, QGIS style, polygons, preview, evaluation)
    use the names, colours and merged classes.
    """
    meta, _ = read_model_file(model_path)
    if output is None:
        if names or merges or colours:
            raise click.UsageError("Class names (--name), merges (--merge) and colours (--colour) need a new model file "
                                   "(-o NEW); the original model is kept.")
        legend = Legend.of_model_file(meta)
    else:
        legend = rewrite_model_legend(model_path, output, {"names": names, "merges": merges, "colours": colours},
                                      overwrite)
    shares = legend.shares((meta.get("training") or {}).get("cluster_shares"))
    rows = _table(legend, shares)
    if as_json:
        click.echo(json.dumps({"classes": rows}))
        return
    if output is not None:
        click.echo(f"wrote {output}:", err=True)
    width = max(4, *(len(r["name"]) for r in rows))
    click.echo(f"{'id':>3}  {'name':<{width}}  colour   share     clusters")
    for r in rows:
        share = "unknown" if r["share"] is None else f"{100 * r['share']:5.1f} %"
        click.echo(f"{r['id']:>3}  {r['name']:<{width}}  {r['colour']}  {share:<8}  "
                   + ",".join(map(str, r["clusters"])))
