"""The model file: safetensors + JSON, round trip, and clear refusals of bad files."""

import json

import pytest
import torch
from safetensors.torch import save_file

from segunify_core.errors import SegUnifyError
from segunify_core.files.model_file import FORMAT_VERSION, load_model, read_model_file, save_model, write_safetensors
from segunify_core.method.inference import window_log_probs
from segunify_core.method.model import ModelConfig, SegUnifyModel
from tests.helpers import exploit_pickle


@pytest.fixture
def saved(tmp_path, tiny_backbone):
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="vit_tiny_patch16_224", classes=3, extra_clusters=1, feature_dim=192, patch_size=16,
                      bands=[1, 2, 3], gsd=0.5)
    model = SegUnifyModel(cfg, tiny_backbone)
    with torch.no_grad():
        model.labeler.global_prototypes.normal_()
        model.compressor.linear[1].running_mean.normal_()
    path = tmp_path / "model.safetensors"
    save_model(model, path, {"training": {"data": {"images": 1}}})
    return model, path


def test_round_trip(saved, tiny_backbone):
    model, path = saved
    loaded = load_model(path, backbone=tiny_backbone)
    assert loaded.config == model.config
    for k, v in model.head_state().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert loaded.metadata["training"]["data"]["images"] == 1
    x = torch.rand(1, 3, 64, 64) * 255
    model.eval()
    assert torch.allclose(window_log_probs(loaded, x), window_log_probs(model, x))


def test_metadata_is_plain_json(saved):
    _, path = saved
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8:8 + header_len])
    meta = json.loads(header["__metadata__"]["segunify"])
    assert meta["format"] == "segunify-model" and meta["format_version"] == FORMAT_VERSION
    assert meta["config"]["backbone"] == "vit_tiny_patch16_224" and meta["config"]["gsd"] == 0.5


def test_metadata_names_feature_channels_and_reads_the_old_key(saved, tmp_path, tiny_backbone):
    """Files write `feature_dim`; files written before the rename (`feature_width`) still load."""
    model, path = saved
    meta, tensors = read_model_file(path)
    assert meta["config"]["feature_dim"] == 192 and "feature_width" not in meta["config"]
    config = dict(meta["config"])
    config["feature_width"] = config.pop("feature_dim")
    old = tmp_path / "old.safetensors"
    write_safetensors(old, tensors, {**meta, "config": config})
    assert load_model(old, backbone=tiny_backbone).config == model.config


def test_missing(tmp_path):
    with pytest.raises(SegUnifyError, match="does not exist"):
        load_model(tmp_path / "nope.safetensors")


def test_truncated(saved, tmp_path):
    _, path = saved
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(SegUnifyError, match="not a SegUnify model file"):
        load_model(cut)


def test_other_safetensors(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(SegUnifyError, match="not a SegUnify model"):
        load_model(path)


def test_newer_version(tmp_path, saved):
    _, path = saved
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as h:
        meta = json.loads(h.metadata()["segunify"])
    meta["format_version"] = FORMAT_VERSION + 1
    newer = tmp_path / "newer.safetensors"
    save_file(load_file(str(path)), str(newer), metadata={"segunify": json.dumps(meta)})
    with pytest.raises(SegUnifyError, match="upgrade SegUnify"):
        load_model(newer)


def test_pickle_renamed_is_refused_and_never_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(exploit_pickle())
    with pytest.raises(SegUnifyError, match="not a SegUnify model file"):
        load_model(path)
    assert not (tmp_path / "EXPLOITED").exists()


def test_backbone_mismatch(saved):
    _, path = saved
    from segunify_core.method.backbone import create_backbone

    other = create_backbone("dino_vits16", pretrained=False)
    with pytest.raises(SegUnifyError, match="was trained on backbone"):
        load_model(path, backbone=other)


# ---------------------------------------------------------------- the backbone weights a model records
@pytest.fixture
def other_weights(tmp_path):
    """A checkpoint of the same tiny ViT with other values (another SHA-256)."""
    import timm

    torch.manual_seed(1)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    path = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture
def offline(monkeypatch):
    """No hub downloads: a load that falls back to the hub fails, as it does without internet."""
    import segunify_core.method.registry as registry

    create = registry.create_timm

    def no_download(name, pretrained):
        if pretrained:
            raise SegUnifyError("no internet in this test")
        return create(name, pretrained)

    monkeypatch.setattr(registry, "create_timm", no_download)


def test_model_records_its_backbone_weights_file(saved, tiny_weights):
    from segunify_core.files.manifest import file_sha256
    from segunify_core.files.model_file import read_model_file

    meta, _ = read_model_file(saved[1])
    assert meta["backbone_weights"] == {"path": str(tiny_weights.resolve()), "sha256": file_sha256(tiny_weights)}


def test_recorded_weights_are_used_without_the_flag(saved, tiny_backbone, offline, tmp_path):
    """tile-segment, evaluate and batch load through load_model; Dask workers through worker_model."""
    from segunify_core.job.spec import JobSpec, RunFacts
    from segunify_core.job.worker import worker_model
    from segunify_core.settings import SegmentOptions

    _, path = saved
    x = torch.rand(1, 3, 64, 64) * 255
    expected = tiny_backbone.with_settings(precision="fp32")(x)  # the workers' precision below
    loaded = load_model(path, precision="fp32")
    assert loaded.backbone.weights == tiny_backbone.weights
    torch.testing.assert_close(loaded.backbone(x), expected)
    job = JobSpec.build([tmp_path / "in.tif"], [tmp_path / "out.tif"], SegmentOptions(), model_file=path)
    on_worker, _ = worker_model(job, RunFacts(str(tmp_path), model_file=str(path), model_sha256="test-recorded",
                                              precision="fp32"))
    torch.testing.assert_close(on_worker.backbone(x), expected)


def test_weights_with_another_hash_are_refused(saved, other_weights, tiny_backbone):
    from segunify_core.method.backbone import create_backbone

    _, path = saved
    with pytest.raises(SegUnifyError, match=r"backbone weights \(--backbone-weights\) .* not the file model"):
        load_model(path, backbone_weights=other_weights)
    with pytest.raises(SegUnifyError, match=r"backbone weights \(--backbone-weights\)"):
        load_model(path, backbone=create_backbone("vit_tiny_patch16_224", other_weights))


def test_weights_may_point_to_a_copy_elsewhere(saved, tiny_weights, tmp_path, offline):
    import shutil

    from safetensors import safe_open
    from safetensors.torch import load_file

    _, path = saved
    copy = shutil.copy(tiny_weights, tmp_path / "moved.safetensors")
    assert load_model(path, backbone_weights=copy).backbone.weights.path == str(copy.resolve())
    with safe_open(str(path), "pt") as handle:  # a model whose recorded file is gone
        meta = json.loads(handle.metadata()["segunify"])
    meta["backbone_weights"]["path"] = str(tmp_path / "gone.safetensors")
    moved = tmp_path / "moved-model.safetensors"
    save_file(load_file(str(path)), str(moved), metadata={"segunify": json.dumps(meta)})
    with pytest.raises(SegUnifyError, match=r"not there; point the backbone weights \(--backbone-weights\)"):
        load_model(moved)
    assert load_model(moved, backbone_weights=copy).backbone.weights.sha256 == meta["backbone_weights"]["sha256"]


def test_models_without_a_recorded_file_behave_as_before(tmp_path):
    from segunify_core.files.model_file import read_model_file
    from segunify_core.method.backbone import create_backbone

    backbone = create_backbone("vit_tiny_patch16_224", pretrained=False)
    cfg = ModelConfig(backbone="vit_tiny_patch16_224", classes=2, feature_dim=192, patch_size=16)
    path = tmp_path / "hub.safetensors"
    save_model(SegUnifyModel(cfg, backbone), path)
    assert "backbone_weights" not in read_model_file(path)[0]
    assert load_model(path, pretrained=False).backbone.weights is None


def test_format_checks_fire_under_python_O(tmp_path):
    """Format checks are real checks, not asserts (which `python -O` strips)."""
    import subprocess
    import sys

    from tests.conftest import REPO

    model_like = tmp_path / "other-format.safetensors"
    save_file({"w": torch.zeros(1)}, str(model_like),
              metadata={"segunify": json.dumps({"format": "other", "format_version": 1, "config": {}})})
    state_like = tmp_path / "other.train-state.safetensors"
    save_file({"w": torch.zeros(1)}, str(state_like),
              metadata={"segunify": json.dumps({"format": "segunify-model", "step": 3})})
    code = f"""
from segunify_core.errors import SegUnifyError
from segunify_core.files.model_file import read_model_file
from segunify_core.training.trainer import read_train_state
assert False, "this interpreter must run with -O"
for name, check in (("model", lambda: read_model_file({str(model_like)!r})),
                    ("state", lambda: read_train_state({str(state_like)!r}))):
    try:
        check()
        print(name, "accepted")
    except SegUnifyError as exc:
        print(name, "refused:", exc)
"""
    run = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "model refused: " in run.stdout and "not a SegUnify model" in run.stdout, run.stdout
    assert "state refused: " in run.stdout and "not a SegUnify checkpoint" in run.stdout, run.stdout
