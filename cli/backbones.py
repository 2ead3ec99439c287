"""`segunify backbones`: the registered backbones with patch size and feature channels."""

from __future__ import annotations

import click

from segunify_core.method.registry import BACKBONES


@click.command("backbones")
def command() -> None:
    """List the backbone short names (any timm ViT name works too)."""
    click.echo(f"{'name':<16} {'patch':>5} {'dim':>5}  {'timm model':<34} description")
    for spec in BACKBONES.values():
        click.echo(f"{spec.name:<16} {spec.patch_size:>5} {spec.feature_dim:>5}  {spec.timm_name:<34} {spec.description}")
    click.echo("Any timm ViT model name (e.g. vit_small_patch14_reg4_dinov2.lvd142m) is accepted too.")
