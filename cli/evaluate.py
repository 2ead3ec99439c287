"""`segunify evaluate MODEL DATA`."""

from __future__ import annotations

import json

import click

from segunify_core import settings
from segunify_core.method.crf import open_crf
from segunify_core.training.evaluation import evaluate

from .common import prepare
from .options import (
    guarded,
    progress_for,
    run_options,
    setup_logging,
)


@click.command("evaluate")
@click.argument("model_path", metavar="MODEL", type=click.Path())
@click.argument("data", type=click.Path())
@click.option("--split", type=click.Choice(settings.POTSDAM_SPLITS), default=settings.EVAL_SPLIT, show_default=True,
              help="Potsdam split: test (labelled_test.txt), val (the validation subset of labelled_train that "
                   "`train --val` uses), train, unlabelled_train, all_train, all.")
@click.option("--resolution", type=click.Choice([str(r) for r in settings.EVAL_RESOLUTIONS]),
              default=str(settings.EVAL_RESOLUTION), show_default=True,
              help="Potsdam evaluation resolution (resize shorter side, centre crop).")
@click.option("--batch-size", type=click.IntRange(1), default=settings.EVAL_BATCH_SIZE, show_default=True,
              help="Images per backbone call.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@run_options
@click.pass_context
@guarded
def command(ctx, model_path, data, split, resolution, batch_size, as_json, crf, flip, backbone_weights, device,
            precision, quiet):
    """Score a model on labelled data: a Potsdam folder (STEGO/IIC layout) or images/ + labels/.

    One confusion matrix over the whole set, one Hungarian assignment of clusters to classes, then
    accuracy, mIoU and per-class IoU. With extra clusters, pixels of clusters left unmatched count
    as errors. Prints the protocol it ran (data, split, resolution, precision, flip, CRF); refuses
    test data the model picked its checkpoint on (`train --val`).
    """
    setup_logging(quiet or as_json)
    model, _, dev = prepare(model_path, "", backbone_weights, device, precision, quiet or as_json)
    progress = progress_for(ctx, quiet or as_json)
    try:
        with open_crf(crf) as crf_backend:
            scores, protocol = evaluate(model, data, split, int(resolution), crf_backend, flip, batch_size, dev.type,
                                        progress)
    finally:
        progress.close()
    training = model.metadata.get("training") or {}
    validation = training.get("validation")
    protocol = {**protocol, "precision": getattr(model.backbone, "precision", "fp32"), "crf": crf_backend.name if crf_backend else "none",
                "flip": flip, "model": str(model_path), "backbone": model.config.backbone,
                "preset": (training.get("config") or {}).get("preset"),
                "checkpoint": (f"step {validation['best_step']} (best validation mIoU)" if validation
                               else "last step")}
    result = {**scores.as_dict(), "protocol": protocol}
    if as_json:
        click.echo(json.dumps(result))
        return
    size = (f"{protocol['resolution']} px (shorter side resized, centre crop)" if protocol["dataset"] == "potsdam-3"
            else "native size")
    click.echo(f"protocol: {protocol['dataset']} split {protocol['split']} ({protocol['images']} images), {size}, "
               f"backbone {protocol['backbone']} in {protocol['precision']}, flip averaging "
               f"{'on' if flip else 'off'}, CRF {protocol['crf']}; checkpoint: {protocol['checkpoint']}")
    click.echo(f"protocol (JSON): {json.dumps(protocol)}")
    click.echo(f"Accuracy {100 * scores.accuracy:6.2f}   mIoU {100 * scores.miou:6.2f}")
    for c, iou in enumerate(scores.per_class_iou):
        click.echo(f"  class {c}: IoU {100 * iou:6.2f}")
    click.echo("confusion matrix (rows: clusters, columns: classes):")
    for r, row in enumerate(scores.confusion_matrix):
        mapped = scores.assignment.get(r)
        click.echo(f"  cluster {r:>2} ({model.legend.names[r]}) -> "
                   f"{('class ' + str(mapped)) if mapped is not None else 'unmatched'}: "
                   + " ".join(f"{v:>10d}" for v in row))
    if scores.unmatched_clusters:
        click.echo(f"unmatched clusters {scores.unmatched_clusters}: their pixels count as errors.")
