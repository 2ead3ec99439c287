"""`segunify check`: what SegUnify will run with, and how to fix what is missing.

`--json` is what the QGIS plugin's installer verifies a new environment with and what its
Check environment algorithm shows, so the keys are stable: python, python_version, segunify,
torch, torch_cuda, timm, device (one readable line), gpu (name and memory, or null), bf16,
backbone, backbone_weights (cached or download), weights_cached (per backbone), crf_backend.
"""

from __future__ import annotations

import json
import platform
import sys

import click


def _device() -> tuple[str, dict | None, bool]:
    """The device `--device auto` picks: a readable line, the GPU (name, memory) or None, and
    whether it computes bfloat16 natively."""
    import torch

    from segunify_core.method.backbone import cpu_has_native_bf16

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = {"name": props.name, "memory_gb": round(props.total_memory / 2**30, 1), "count": torch.cuda.device_count()}
        bf16 = bool(torch.cuda.is_bf16_supported())
        return (f"cuda ({gpu['name']}, {gpu['memory_gb']} GB, {'bfloat16' if bf16 else 'float16'})", gpu, bf16)
    bf16 = cpu_has_native_bf16()
    return (f"cpu ({torch.get_num_threads()} threads, "
            f"{'native bfloat16' if bf16 else 'no native bfloat16: float32'})", None, bf16)


def environment_report() -> dict:
    import timm
    import torch

    import segunify_core
    from segunify_core.method.crf import pydensecrf_available
    from segunify_core.method.registry import BACKBONES, DEFAULT_BACKBONE, weights_cached

    device, gpu, bf16 = _device()
    cached = {name: weights_cached(name) for name in BACKBONES}
    return {
        "python": sys.executable,
        "python_version": platform.python_version(),
        "segunify": segunify_core.__version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "timm": timm.__version__,
        "device": device,
        "gpu": gpu,
        "bf16": bf16,
        "cpu_native_bf16": bf16 if gpu is None else None,
        "backbone": DEFAULT_BACKBONE,
        "backbone_weights": "cached" if cached[DEFAULT_BACKBONE] else "download",
        "weights_cached": cached,
        "crf_backend": "pydensecrf" if pydensecrf_available() else "torch",
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
        if key not in ("weights_cached", "gpu", "cpu_native_bf16"):
            click.echo(f"{key:<16} {value}")
    cached = [n for n, ok in report["weights_cached"].items() if ok]
    click.echo(f"{'weights cached':<16} {', '.join(cached) or 'none'}")
    if report["backbone_weights"] == "download":
        click.echo(f"  ({report['backbone']} weights download on first use; without internet pass --backbone-weights FILE)")
    if report["crf_backend"] == "torch":
        click.echo("  (install the reference CRF: pip install cython==0.29.36 && "
                   "pip install --no-build-isolation pydensecrf2)")
