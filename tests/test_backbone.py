"""Backbone checkpoints in the official DINO layout and in timm's layout load to the same features."""

import os
import subprocess
import sys

import pytest
import timm
import torch
from safetensors.torch import save_file

from segunify_core.errors import SegUnifyError
from segunify_core.method.backbone import create_backbone
from segunify_core.method.registry import BACKBONES, resolve_backbone
from tests.helpers import exploit_pickle_in_dict


@pytest.fixture(scope="module")
def reference():
    """A random-weight DINO ViT-S/16 (the dino_vits16 short name) and its float32 features."""
    torch.manual_seed(0)
    model = create_backbone("dino_vits16", pretrained=False, precision="fp32")
    x = torch.rand(2, 3, 64, 96) * 255
    return model, x, model(x)


def official_dino_state(model) -> dict:
    """The key layout of facebookresearch/dino's *_pretrain.pth files (the teacher backbone)."""
    state = {k: v.clone() for k, v in model.model.state_dict().items()}
    expected = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight",
                "norm.bias", "blocks.0.norm1.weight", "blocks.0.attn.qkv.weight", "blocks.0.attn.proj.weight",
                "blocks.0.mlp.fc1.weight", "blocks.11.mlp.fc2.bias"}
    assert expected <= set(state), "timm's DINO ViT keys follow the official layout"
    return state


def test_features_shape_and_frozen(reference):
    model, x, feats = reference
    assert feats.shape == (2, 384, 4, 6)
    assert not any(p.requires_grad for p in model.parameters())
    model.train()
    assert not model.training and not model.model.training


def test_official_dino_pth(reference, tmp_path):
    model, x, feats = reference
    path = tmp_path / "dino_deitsmall16_pretrain.pth"
    torch.save(official_dino_state(model), path)
    loaded = create_backbone("dino_vits16", path, precision="fp32")
    assert torch.allclose(loaded(x), feats, atol=1e-5)


def test_official_dino_training_checkpoint(reference, tmp_path):
    """Full DINO training checkpoints: teacher/student with module./backbone. prefixes and heads."""
    model, x, feats = reference
    state = official_dino_state(model)
    ckpt = {
        "student": {f"module.backbone.{k}": v + 1.0 for k, v in state.items()},
        "teacher": {**{f"backbone.{k}": v for k, v in state.items()},
                    "head.mlp.0.weight": torch.zeros(4, 384), "head.last_layer.weight_g": torch.ones(1, 4)},
        "epoch": 100,
    }
    path = tmp_path / "checkpoint.pth"
    torch.save(ckpt, path)
    loaded = create_backbone("dino_vits16", path, precision="fp32")
    assert torch.allclose(loaded(x), feats, atol=1e-5)  # the teacher is used


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_checkpoint(reference, tmp_path, suffix):
    model, x, feats = reference
    state = {k: v.contiguous() for k, v in model.model.state_dict().items()}
    path = tmp_path / f"model{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    loaded = create_backbone("vit_small_patch16_224.dino", path, precision="fp32")
    assert torch.allclose(loaded(x), feats, atol=1e-5)


def test_wrong_checkpoint_is_a_clear_error(tmp_path):
    torch.manual_seed(0)
    other = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    with pytest.raises(SegUnifyError, match="do not fit this backbone"):
        create_backbone("dino_vits16", path)


def test_pickled_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    path.write_bytes(exploit_pickle_in_dict("pos_embed"))
    with pytest.raises(SegUnifyError, match="Cannot read backbone weights"):
        create_backbone("dino_vits16", path)
    assert not (tmp_path / "EXPLOITED").exists()


def test_missing_weights_file():
    with pytest.raises(SegUnifyError, match="does not exist"):
        create_backbone("dino_vits16", "/nonexistent/weights.pth")


def test_offline_without_weights_says_how_to_pass_a_file():
    code = ("from segunify_core.method.backbone import create_backbone\n"
            "try:\n    create_backbone('dino_vits8')\nexcept Exception as e:\n    print(type(e).__name__, e)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": "/nonexistent-hf-home"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120).stdout
    assert "SegUnifyError" in out and "--backbone-weights" in out


def test_registry_and_timm_names():
    assert BACKBONES["dino_vitb8"].feature_dim == 768 and BACKBONES["dino_vitb8"].patch_size == 8
    assert BACKBONES["dinov2_vits14"].patch_size == 14
    spec = resolve_backbone("vit_tiny_patch16_224")
    assert (spec.patch_size, spec.feature_dim) == (16, 192)
    with pytest.raises(SegUnifyError, match="Unknown backbone"):
        resolve_backbone("not_a_model")
    with pytest.raises(SegUnifyError, match="not a Vision Transformer"):
        resolve_backbone("resnet18")


def test_dinov2_official_layout(tmp_path):
    """DINOv2 official checkpoints carry mask_token; timm's converter drops it."""
    torch.manual_seed(0)
    model = create_backbone("dinov2_vits14", pretrained=False, precision="fp32")
    state = {k: v.clone() for k, v in model.model.state_dict().items()}
    state["mask_token"] = torch.zeros(1, 384)
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(state, path)
    loaded = create_backbone("dinov2_vits14", path, precision="fp32")
    x = torch.rand(1, 3, 56, 56) * 255
    assert torch.allclose(loaded(x), model(x), atol=1e-5)


@pytest.mark.parametrize("name", ["dino_vits8", "dino_vitb8"])
def test_bf16_features_within_cosine_0995_of_fp32(name):
    """`--precision auto` picks bfloat16 on CPUs that run it natively; random-weight DINO ViTs keep
    every patch feature within cosine 0.995 of float32 (as the pipeline runs bfloat16: fused graph,
    batch of windows and mirrors)."""
    torch.manual_seed(1)
    backbone = create_backbone(name, pretrained=False)
    x = torch.rand(2, 3, 224, 224) * 255
    x = torch.cat([x, x.flip(-1)])
    reference = backbone.with_settings(precision="fp32", fuse=False)(x)
    backbone = backbone.with_settings(precision="bf16", fuse=True)
    half = backbone(x)
    assert backbone.fused_graphs == [(224, 224, 4)], "the fused graph was built"
    cosine = torch.nn.functional.cosine_similarity(half, reference, dim=1)
    print(f"{name}: bf16 vs fp32 cosine min {cosine.min():.5f} mean {cosine.mean():.5f}")
    assert cosine.min() >= 0.995


def test_fused_graph_matches_eager_and_never_depends_on_earlier_batches(reference):
    """The fused graphs give eager's features in float32 for batches of any size (chunks of
    FUSED_BATCH windows, the last one through a graph of its own size), and a window's features
    are bit for bit the same whatever ran before it: the first call after building, after a
    larger batch, after a smaller."""
    from segunify_core.method.fused import FUSED_BATCH

    model, x, _ = reference
    eager = model.with_settings(precision="fp32", fuse=False)(x)
    model = model.with_settings(precision="fp32", fuse=True)
    first = model(x)
    big = torch.cat([x, x.flip(-1), x] * 3)  # more than one chunk
    assert big.shape[0] > FUSED_BATCH
    fused_big = model(big)
    after_big = model(x)
    after_one = (model(x[:1]), model(x))[1]
    assert first.shape == eager.shape
    torch.testing.assert_close(first, eager, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(fused_big[:2], eager, atol=2e-4, rtol=1e-4)
    assert torch.equal(first, after_big) and torch.equal(first, after_one)
    # 18 windows: chunks of 8, 8 and 2, each through the graph of its own size, nothing padded
    assert model.fused_graphs == [(64, 96, 2), (64, 96, 8), (64, 96, 1)]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_calls_features_never_depend_on_earlier_calls_or_graphs(reference, precision):
    """What the fused path guarantees: a call's features are a function of its input alone. Each
    chunk (FUSED_BATCH windows, the last one shorter) runs through a graph traced, warmed up and
    only ever run for its own number of windows, so neither earlier calls nor the graphs built
    before, in any order, change a bit. A window's bits may depend on the size of the chunk it
    runs in (oneDNN picks kernels per shape: in bfloat16 on these small windows they differ in the
    last bits), as a part's chunks follow from its windows and the batch size alone.
    Float32 forces the fused path on every CPU; bfloat16 runs where the CPU has it natively."""
    from segunify_core.method.backbone import cpu_has_native_bf16

    if precision == "bf16" and not cpu_has_native_bf16():
        pytest.skip("no native bfloat16 on this CPU (AVX-512 BF16/AMX): the float32 case covers the fused path")
    backbone, _, _ = reference
    calls = {n: slice(0, n) for n in (1, 3, 4, 8)} | {"last 3": slice(8, 11), "11 (8 + 3)": slice(0, 11)}
    torch.manual_seed(3)
    x = torch.rand(11, 3, 64, 96) * 255
    first: dict = {}
    orders = {(8, 4, 3, 1): [8, 4, 3, 1, "last 3", "11 (8 + 3)"], (8, 3, 1, 4): ["11 (8 + 3)", "last 3", 3, 1, 4, 8]}
    for built, order in orders.items():
        model = _fused(backbone, precision)  # no graph built yet; then graphs built in this order
        for key in order + order[::-1]:  # each call once while graphs are being built, once after
            out = model(x[calls[key]])
            first.setdefault(key, out)
            assert torch.equal(out, first[key]), f"call {key} after graphs {model.fused_graphs}"
        assert model.fused_graphs == [(64, 96, n) for n in built]
    assert torch.equal(first["11 (8 + 3)"], torch.cat([first[8], first["last 3"]])), "the chunks are the calls of 8 and 3"


def _fused(backbone, precision: str):
    """A fused backbone of the same ViT with no graph built yet."""
    return backbone.with_settings(precision="fp32", fuse=False).with_settings(precision=precision, fuse=True)


def test_fewer_windows_do_less_work(reference):
    """The regression check of issue 22: 4 windows cost at most 0.7 of 8 windows (padding to 8 made
    it 1.0). Work is counted, not timed: the rows of every tensor that enters a TorchScript graph,
    seen by a PyTorch module hook outside the backbone's code, and the backbone's own count
    (fused_rows). A graph is traced for one shape and computes exactly the rows it gets, so rows
    are its work; no load on the machine changes them."""
    backbone, _, _ = reference
    model = _fused(backbone, "fp32")
    x = torch.rand(8, 3, 64, 96) * 255
    fed: list[int] = []

    def count(module, args):
        if isinstance(module, torch.jit.ScriptModule):
            fed.append(args[0].shape[0])

    def cost(n: int) -> tuple[int, int]:
        fed.clear()
        before = model.fused_rows
        out = model(x[:n])
        assert out.shape[0] == n
        return sum(fed), model.fused_rows - before

    hook = torch.nn.modules.module.register_module_forward_pre_hook(count)
    try:
        model(x[:4]), model(x)  # build both graphs first: their warm-up runs are not a call's work
        seen_8, counted_8 = cost(8)
        seen_4, counted_4 = cost(4)
    finally:
        hook.remove()
    assert seen_8 == counted_8 == 8 and seen_4 == counted_4
    assert seen_4 / seen_8 <= 0.7, f"4 windows fed {seen_4} rows to the graphs, 8 windows {seen_8}"
    assert model.runs_fused


def test_auto_fuses_bf16_and_runs_fp32_one_window_at_a_time(reference):
    """By default float32 runs eagerly, window by window, with the batched forward's features;
    bfloat16 runs as a fused graph."""
    model, x, feats = reference
    model = model.with_settings(precision="fp32", fuse="auto")
    out = model(x)
    assert not model.runs_fused and not model.fused_graphs, "no fused graph in float32"
    batched = model.model.forward_features(model.normalize(x))[:, model.num_prefix_tokens:]
    torch.testing.assert_close(out.flatten(2).transpose(1, 2), batched, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, feats)
    model = model.with_settings(precision="bf16")
    model(x)
    assert model.fused_graphs == [(64, 96, 2)]


def test_eager_switch(monkeypatch):
    """SEGUNIFY_EAGER=1 is read by the CLI (never by the core) and becomes the backbone's fuse=False."""
    from segunify_cli.common import eager_switch

    monkeypatch.setenv("SEGUNIFY_EAGER", "1")
    model = create_backbone("vit_tiny_patch16_224", pretrained=False, precision="bf16", fuse=eager_switch())
    model(torch.rand(1, 3, 32, 32) * 255)
    assert not model.fuse and not model.fused_graphs
    monkeypatch.delenv("SEGUNIFY_EAGER")
    assert eager_switch() == "auto"


def test_settings_are_fixed_at_construction(reference):
    model, x, feats = reference
    with pytest.raises(AttributeError):
        model.precision = "bf16"
    with pytest.raises(SegUnifyError, match="precision"):
        create_backbone("vit_tiny_patch16_224", pretrained=False, precision="fp8")
    other = model.with_settings(precision="bf16", fuse=False)
    assert (model.precision, model.fuse) == ("fp32", "auto") and (other.precision, other.fuse) == ("bf16", False)
    assert other.model is model.model  # the frozen ViT is shared, not copied


def test_forward_leaves_process_settings_alone(reference, monkeypatch):
    """The backbone changes no process-wide state: oneDNN fusion is on only while its fused graph
    is traced and run, and the allocator is tuned only by an explicit call (CLI, Dask workers)."""
    import segunify_core.method.backbone as backbone_module

    calls = []
    monkeypatch.setattr(backbone_module, "reuse_freed_memory", lambda: calls.append(1))
    model, x, _ = reference
    torch.jit.enable_onednn_fusion(False)
    for fuse in (True, False, "auto"):
        model.with_settings(precision="bf16", fuse=fuse)(x)
        assert not torch.jit.onednn_fusion_enabled()
    assert not calls


def test_cli_entry_point_tunes_the_allocator(monkeypatch):
    import segunify_cli.main as main
    from click.testing import CliRunner

    calls = []
    monkeypatch.setattr(main, "reuse_freed_memory", lambda: calls.append(1))
    assert CliRunner().invoke(main.cli, ["backbones"], obj={}).exit_code == 0
    assert calls == [1]
