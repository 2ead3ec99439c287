"""`segunify check`: what SegUnify will run with, and how to fix what is missing."""

from __future__ import annotations

import json
import platform
import sys

import click


def environment_report() -> dict:
    import torch

    import segunify_core
    from segunify_core.backbone import BACKBONES, cpu_has_native_bf16, weights_cached
    from segunify_core.crf import pydensecrf_available

    cuda = torch.cuda.is_available()
    return {
        "python": sys.executable,
        "python_version": platform.python_version(),
        "segunify": segunify_core.__version__,
        "torch": torch.__version__,
        "device": f"cuda ({torch.cuda.get_device_name(0)})" if cuda else f"cpu ({torch.get_num_threads()} threads)",
        "cpu_native_bf16": cpu_has_native_bf16(),
        "crf_backend": "pydensecrf" if pydensecrf_available() else "torch",
        "weights_cached": {name: weights_cached(name) for name in BACKBONES},
    }


@click.command("check")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def command(as_json: bool) -> None:
    """Report the Python, SegUnify, torch, device, CRF backend and cached backbone weights."""
    report = environment_report()
    if as_json:
        click.echo(json.dumps(report))
        return
    for key, value in report.items():
        if key != "weights_cached":
            click.echo(f"{key:<16} {value}")
    cached = [n for n, ok in report["weights_cached"].items() if ok]
    click.echo(f"{'weights cached':<16} {', '.join(cached) or 'none'}")
    if not cached:
        click.echo("  (weights download on first use; without internet pass --backbone-weights FILE)")
    if report["crf_backend"] == "torch":
        click.echo("  (install the reference CRF: pip install cython==0.29.36 && "
                   "pip install --no-build-isolation pydensecrf2)")
