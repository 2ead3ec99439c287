"""DINOv3 (timm's Eva: RoPE, 4 registers; web and satellite weights) and DINOv2 with registers:
SegUnify's features are timm's own patch tokens, from weights in timm's layout and in Meta's
official DINOv3 layout, normalised as the weights were trained; and every command runs on them."""

import json
import subprocess
import sys

import numpy as np
import pytest
import rasterio
import timm
import torch
from safetensors.torch import save_file

from segunify_core.errors import SegUnifyError
from segunify_core.files.manifest import file_sha256
from segunify_core.files.model_file import load_model, read_model_file, write_safetensors
from segunify_core.method.backbone import create_backbone
from segunify_core.method.checkpoints import load_weights
from segunify_core.method.registry import IMAGENET, Normalization, registered_normalization, resolve_backbone
from segunify_core.synthetic import make_blobs, write_geotiff
from tests.test_potsdam import fabricate

CLI = [sys.executable, "-m", "segunify_cli"]
SAT = Normalization((0.430, 0.411, 0.296), (0.213, 0.156, 0.143))  # SAT-493M's pretrained config in timm
# short name -> (timm name, patch, writes Meta's layout too)
CASES = {
    "dinov3_vits16": ("vit_small_patch16_dinov3.lvd1689m", 16, True),
    "dinov3_vitl16_sat": ("vit_large_patch16_dinov3.sat493m", 16, True),
    "dinov2_vits14_reg": ("vit_small_patch14_reg4_dinov2.lvd142m", 14, False),
}


def random_timm(timm_name: str, seed: int = 0) -> torch.nn.Module:
    """timm's model with random weights; the layer scales (1e-5 at init) raised so that every
    block changes the features."""
    torch.manual_seed(seed)
    model = timm.create_model(timm_name, pretrained=False, num_classes=0, dynamic_img_size=True).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "gamma" in name:
                param.uniform_(0.5, 1.0)
    return model


def meta_layout(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The key layout of Meta's DINOv3 .pth files, written by inverting what timm's
    eva.checkpoint_filter_fn does to them: storage_tokens for the registers, ls1/ls2.gamma for the
    layer scales, a (zero, k-masked) qkv bias with its mask, plus the mask token and the RoPE
    periods that the filter drops."""
    state = {}
    for key, value in model.state_dict().items():
        key = key.replace("reg_token", "storage_tokens").replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma")
        state[key] = value
    dim = model.embed_dim
    for i in range(len(model.blocks)):
        state[f"blocks.{i}.attn.qkv.bias"] = torch.zeros(3 * dim)
        state[f"blocks.{i}.attn.qkv.bias_mask"] = torch.cat([torch.ones(dim), torch.zeros(dim), torch.ones(dim)])
    state["mask_token"] = torch.zeros(1, dim)
    state["rope_embed.periods"] = torch.arange(1, dim // model.blocks[0].attn.num_heads // 4 + 1).float()
    assert not any(k.startswith(("reg_token", "blocks.0.gamma")) for k in state)
    return state


def timm_patch_tokens(model: torch.nn.Module, x: torch.Tensor, norm: Normalization, patch: int) -> torch.Tensor:
    """timm's own forward_features on the normalised input, window by window, prefix tokens dropped."""
    mean, std = torch.tensor(norm.mean).view(1, 3, 1, 1), torch.tensor(norm.std).view(1, 3, 1, 1)
    xn = (x.float() / 255.0 - mean) / std
    with torch.inference_mode():
        tokens = torch.cat([model.forward_features(xn[i:i + 1]) for i in range(len(xn))])
    grid = tokens[:, model.num_prefix_tokens:]
    b, _, h, w = x.shape
    return grid.transpose(1, 2).reshape(b, -1, h // patch, w // patch)


@pytest.mark.parametrize("name", list(CASES))
def test_features_are_timms_patch_tokens_in_both_layouts(name, tmp_path):
    """fp32, two window sizes, weights from timm's layout (safetensors) and, for DINOv3, Meta's (.pth).

    The ViT is built once (a random ViT-L takes about 9 s to build): its patch tokens by timm's own
    forward_features are the reference; then its weights are cleared and each file is loaded into
    it the way create_backbone loads them (the DINOv3 ViT-S/16 is also built from the file afresh)."""
    timm_name, patch, meta = CASES[name]
    backbone = create_backbone(name, pretrained=False, precision="fp32", fuse=False)
    assert backbone.spec.timm_name == timm_name and backbone.num_prefix_tokens == 5  # class + 4 registers
    norm = registered_normalization(name)
    assert backbone.normalization == norm == (SAT if name.endswith("_sat") else IMAGENET)
    reference = backbone.model
    with torch.no_grad():
        for key, param in reference.named_parameters():
            if "gamma" in key:  # layer scales start at 1e-5: raised, so that every block changes the features
                param.uniform_(0.5, 1.0)
    torch.manual_seed(1)
    windows = [torch.rand(2, 3, 2 * patch, 3 * patch) * 255, torch.rand(1, 3, 5 * patch, 4 * patch) * 255]
    expected = [timm_patch_tokens(reference, x, norm, patch) for x in windows]
    files = {"timm": tmp_path / "timm.safetensors"}
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(files["timm"]))
    if meta:  # Meta's .pth container for the ViT-S; safetensors for the ViT-L (1.2 GB: torch.save is slower)
        if name == "dinov3_vits16":
            files["meta"] = tmp_path / f"{name}_pretrain.pth"
            torch.save(meta_layout(reference), files["meta"])
        else:
            files["meta"] = tmp_path / f"{name}_pretrain.safetensors"
            save_file({k: v.contiguous() for k, v in meta_layout(reference).items()}, str(files["meta"]))
    for layout, path in files.items():
        with torch.no_grad():
            for param in reference.parameters():
                param.zero_()
        load_weights(reference, path)
        for x, want in zip(windows, expected, strict=True):
            got = backbone(x)
            assert got.shape == want.shape
            diff = (got - want).abs().max().item()
            assert diff <= 1e-6, f"{name} ({layout} layout), {tuple(x.shape[-2:])} px: max difference {diff}"
    if name == "dinov3_vits16":  # built from Meta's file as the CLI does
        fresh = create_backbone(name, files["meta"], precision="fp32")
        assert (fresh(windows[1]) - expected[1]).abs().max() <= 1e-6
    if name.endswith("_sat"):  # the satellite statistics are applied: ImageNet's give other features
        other = timm_patch_tokens(reference, windows[0], IMAGENET, patch)
        assert (other - expected[0]).abs().max() > 1e-2


@pytest.mark.parametrize("name", ["dinov3_vits16", "dinov2_vits14_reg"])
def test_fused_graph_runs_layer_scaled_vits(name):
    """The fused CPU graph folds the layer scales (DINOv2, DINOv3) into the linear layer before them,
    on its own copy: float32 gives eager's features, bfloat16 (where the CPU runs it natively)
    stays within cosine 0.995 of float32, and the shared ViT keeps its layer scales."""
    from segunify_core.method.backbone import cpu_has_native_bf16

    torch.manual_seed(0)
    eager = create_backbone(name, pretrained=False, precision="fp32", fuse=False)
    with torch.no_grad():
        for key, param in eager.model.named_parameters():
            if "gamma" in key:
                param.uniform_(0.5, 1.0)
    scales = {k: v.clone() for k, v in eager.model.named_parameters() if "gamma" in k}
    p = eager.patch_size
    x = torch.rand(2, 3, 6 * p, 5 * p) * 255
    reference = eager(x)
    fused = eager.with_settings(fuse=True)
    torch.testing.assert_close(fused(x), reference, atol=2e-4, rtol=1e-4)
    assert fused.fused_graphs == [(6 * p, 5 * p, 2)]
    if cpu_has_native_bf16():
        half = eager.with_settings(precision="bf16", fuse=True)
        cosine = torch.nn.functional.cosine_similarity(half(x), reference, dim=1)
        assert half.fused_graphs == [(6 * p, 5 * p, 2)] and cosine.min() >= 0.995
    assert len(scales) == 2 * len(eager.model.blocks)
    assert all(torch.equal(v, dict(eager.model.named_parameters())[k]) for k, v in scales.items())


def test_non_zero_qkv_bias_is_refused_for_a_model_without_one(tmp_path):
    reference = random_timm("vit_small_patch16_dinov3")
    state = meta_layout(reference)
    state["blocks.3.attn.qkv.bias"][:5] = 0.1
    path = tmp_path / "biased.pth"
    torch.save(state, path)
    with pytest.raises(SegUnifyError, match="_qkvb"):
        create_backbone("dinov3_vits16", path)


def test_registry_rows_and_any_eva_name():
    for name, (timm_name, patch, _) in CASES.items():
        spec = resolve_backbone(name)
        assert (spec.timm_name, spec.patch_size) == (timm_name, patch)
    assert resolve_backbone("dinov3_vitl16_sat").feature_dim == 1024
    assert resolve_backbone("dinov3_vits16").licence == "DINOv3 License"
    assert resolve_backbone("dinov2_vitb14_reg").licence == "Apache-2.0"
    spec = resolve_backbone("vit_small_patch16_dinov3_qkvb")  # any timm Eva by name
    assert (spec.patch_size, spec.feature_dim) == (16, 384)
    assert timm.list_pretrained("vit_large_patch16_dinov3.sat493m") == ["vit_large_patch16_dinov3.sat493m"]


def test_normalisation_follows_the_weights_and_old_model_files_keep_imagenet(tiny_weights, tmp_path):
    """A timm ViT whose weights were trained with mean/std 0.5 normalises with them; a model file
    written before normalisations were recorded was trained with ImageNet's and still loads with
    them; a backbone with another normalisation is refused in one sentence naming both."""
    from segunify_core.files.model_file import save_model
    from segunify_core.method.model import ModelConfig, SegUnifyModel

    half = "vit_tiny_patch16_224"  # ViT-Ti/16 weights trained on inputs normalised with 0.5 (tiny_weights fit it)
    backbone = create_backbone(half, tiny_weights)
    assert backbone.normalization == Normalization((0.5,) * 3, (0.5,) * 3)
    model = SegUnifyModel(ModelConfig(backbone=half, classes=2, feature_dim=192, patch_size=16), backbone)
    path = tmp_path / "m.safetensors"
    save_model(model, path)
    meta, tensors = read_model_file(path)
    assert meta["normalization"] == {"mean": [0.5] * 3, "std": [0.5] * 3}
    old = tmp_path / "old.safetensors"
    write_safetensors(old, tensors, {k: v for k, v in meta.items() if k != "normalization"})
    assert load_model(old).backbone.normalization == IMAGENET
    with pytest.raises(SegUnifyError, match=r"mean 0\.485.*but the backbone given .*mean 0\.500"):
        load_model(old, backbone=backbone)


@pytest.fixture(scope="module")
def dinov3_weights(tmp_path_factory):
    """Random DINOv3 ViT-S/16 weights in Meta's layout, as a user passes a downloaded file."""
    path = tmp_path_factory.mktemp("dinov3") / "dinov3_vits16_pretrain_random.pth"
    torch.save(meta_layout(random_timm("vit_small_patch16_dinov3")), path)
    return path


def _run(args, timeout=600):
    run = subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


@pytest.mark.slow
def test_self_fit_train_cluster_and_evaluate_with_dinov3(dinov3_weights, tmp_path):
    """tile-segment self-fit; train on a fabricated Potsdam folder; tile-segment with the trained
    model on a local Dask cluster; evaluate: all on DINOv3 ViT-S/16. The model files record the
    backbone, the weights' SHA-256 and the normalisation; a mismatching backbone is refused."""
    # float32: eager, no fused graph to build per window size in each process (the graphs are tested above)
    common = ["--backbone-weights", dinov3_weights, "--device", "cpu", "--precision", "fp32", "--quiet"]
    img, _ = make_blobs(144, 144, seed=4, cells=6)
    src = write_geotiff(tmp_path / "scene.tif", img)
    fitted = tmp_path / "fit.safetensors"
    _run(["tile-segment", src, tmp_path / "fit.tif", "--backbone", "dinov3_vits16", "--classes", "3",
          "--fit-steps", "10", "--fit-windows", "4", "--window", "64", "--stride", "48", "--save-model", fitted] + common)
    with rasterio.open(tmp_path / "fit.tif") as ds:
        labels = ds.read(1)
    assert labels.shape == (144, 144) and set(np.unique(labels)) <= {1, 2, 3}

    potsdam = fabricate(tmp_path / "data", n_train=6, n_unlabelled=1, n_test=2, size=96)
    trained = tmp_path / "potsdam.safetensors"
    _run(["train", potsdam.parent, "-o", trained, "--backbone", "dinov3_vits16", "--classes", "3", "--steps", "10",
          "--batch-size", "4", "--max-windows", "6", "--window", "64", "--cache-dir", tmp_path / "cache"] + common)
    for path in (fitted, trained):
        meta, _ = read_model_file(path)
        assert meta["config"]["backbone"] == "dinov3_vits16" and meta["config"]["patch_size"] == 16
        assert meta["backbone_weights"]["sha256"] == file_sha256(dinov3_weights)
        assert meta["normalization"] == registered_normalization("dinov3_vits16").to_metadata()

    _run(["tile-segment", src, tmp_path / "cluster.tif", "--model", trained, "--window", "64", "--stride", "48",
          "--block", "80", "--cluster", "local:2", "--precision", "fp32", "--quiet"], timeout=900)  # weights: recorded
    with rasterio.open(tmp_path / "cluster.tif") as ds:
        assert ds.read(1).shape == (144, 144) and ds.read(1).min() >= 1
    scores = json.loads(_run(["evaluate", trained, potsdam.parent, "--json"] + common[:-1]).stdout)
    assert scores["protocol"]["backbone"] == "dinov3_vits16" and scores["protocol"]["images"] == 2
    assert 0.0 <= scores["miou"] <= 1.0

    other = create_backbone("dinov3_vits16", dinov3_weights, normalization=SAT)
    with pytest.raises(SegUnifyError, match="normalisation|mean"):
        load_model(trained, backbone=other)
