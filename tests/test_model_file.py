"""The model file: safetensors + JSON, round trip, and clear refusals of bad files."""

import json

import pytest
import torch
from safetensors.torch import save_file

from segunify_core.errors import SegUnifyError
from segunify_core.model import FORMAT_VERSION, ModelConfig, SegUnifyModel, load_model, read_model_file, save_model, write_safetensors
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
    assert torch.allclose(loaded.log_probs(x), model.log_probs(x))


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
    from segunify_core.backbone import create_backbone

    other = create_backbone("dino_vits16", pretrained=False)
    with pytest.raises(SegUnifyError, match="was trained on backbone"):
        load_model(path, backbone=other)
