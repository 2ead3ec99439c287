"""`segunify backbones`: the registered backbones with patch size, feature channels, parameters,
input normalisation and the licence of their weights."""

from __future__ import annotations

import click

from segunify_core.method.registry import BACKBONES, parameter_count, registered_normalization


@click.command("backbones")
def command() -> None:
    """List the backbone short names (any timm ViT or Eva name works too)."""
    click.echo(f"{'name':<18} {'patch':>5} {'dim':>5} {'params':>7}  {'normalisation (mean / std)':<37} "
               f"{'licence':<15} {'timm model':<40} description")
    for spec in BACKBONES.values():
        norm = registered_normalization(spec.name)
        values = f"{'/'.join(f'{v:.3f}' for v in norm.mean)} / {'/'.join(f'{v:.3f}' for v in norm.std)}"
        params = f"{parameter_count(spec.timm_name) / 1e6:.1f}M"
        click.echo(f"{spec.name:<18} {spec.patch_size:>5} {spec.feature_dim:>5} {params:>7}  {values:<37} "
                   f"{spec.licence:<15} {spec.timm_name:<40} {spec.description}")
    click.echo("Any timm ViT or Eva model name (e.g. vit_base_patch16_dinov3_qkvb.lvd1689m) is accepted too. "
               "DINOv3 weights are under the DINOv3 License: accept it to download them (SegUnify never "
               "redistributes them); a downloaded file is used with --backbone NAME --backbone-weights FILE.")
