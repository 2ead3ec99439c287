"""The training procedures the reference ran (METHOD.md, "What the reference run actually did"),
each pinned on small inputs, the preset that combines them, and validation that never reads the
test split."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from segunify_core.errors import SegUnifyError
from segunify_core.files.model_file import load_model
from segunify_core.method.compressor import Compressor, dropout2d_mask
from segunify_core.method.labeler import Labeler
from segunify_core.method.losses import energy, move_fixed_points, reference_pairing, smoothness
from segunify_core.method.model import ModelConfig, SegUnifyModel
from segunify_core.synthetic import make_blobs, write_geotiff
from segunify_core.training.datasets import ArrayImage, plan_windows, potsdam_ids, resize_image
from segunify_core.training.evaluation import evaluate
from segunify_core.training.presets import BACKBONE, PRESETS, _cli_value, markdown_table, resolve
from segunify_core.training.trainer import TrainConfig, Trainer, lr_factor, steps_per_epoch, train
from tests.conftest import REPO, TINY_VIT
from tests.test_potsdam import fabricate


class MemoryCache:
    """A feature cache in memory with FeatureCache's interface: (N, V, C, h, w) features."""

    def __init__(self, n: int = 7, views: int = 1, width: int = 16, grid: int = 4, seed: int = 0):
        self.features = torch.randn(n, views, width, grid, grid, generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return self.features.shape[0]

    @property
    def views(self) -> int:
        return self.features.shape[1]

    def batch(self, indices: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        return self.features[indices, views].clone()


def small_trainer(**kw) -> Trainer:
    config = TrainConfig(**{"classes": 3, "code_dim": 8, "batch_size": 2, "steps": 10, "seed": 1, **kw})
    torch.manual_seed(config.seed)
    model = SegUnifyModel(ModelConfig(classes=3, code_dim=8, feature_dim=16, dropout=config.dropout))
    return Trainer(model, MemoryCache(), config)


# --- learning-rate schedules ------------------------------------------------------------------

def test_lr_factors_by_hand():
    # 10 steps, power 2, 3 steps per epoch: the epoch index e = step // 3, factor (1 - e/10)^2.
    assert [lr_factor("poly-epoch", s, 10, 2.0, 3) for s in range(10)] == pytest.approx(
        [1, 1, 1, 0.81, 0.81, 0.81, 0.64, 0.64, 0.64, 0.49])
    assert [lr_factor("poly-step", s, 10, 2.0, 3) for s in (0, 1, 5, 9)] == pytest.approx([1, 0.81, 0.25, 0.01])
    assert {lr_factor("constant", s, 10, 2.0, 3) for s in range(10)} == {1.0}
    with pytest.raises(ValueError):
        lr_factor("cosine", 0, 10, 2.0, 3)


def test_potsdam_schedule_figures():
    """4545 images at batch 32: 142 steps per epoch; over 3000 steps the per-epoch factor stays
    between 1.0 and (1 - 21/3000)^2 = 0.98605 (mean 0.993), the per-step one averages 0.3335."""
    epoch = steps_per_epoch(4545, 32)
    assert epoch == 142
    per_epoch = [lr_factor("poly-epoch", s, 3000, 2.0, epoch) for s in range(3000)]
    assert max(per_epoch) == 1.0 and min(per_epoch) == pytest.approx(0.986049)
    assert np.mean(per_epoch) == pytest.approx(0.9933, abs=1e-4)
    assert np.mean([lr_factor("poly-step", s, 3000, 2.0, epoch) for s in range(3000)]) == pytest.approx(0.3335, abs=1e-4)
    assert steps_per_epoch(5, 32) == 1  # fewer windows than a batch: one step per epoch


def test_trainer_applies_the_schedule_per_epoch():
    trainer = small_trainer(lr_schedule="poly-epoch", lr_compressor=1e-3, lr_labeler=5e-3)
    assert trainer.epoch_steps == 3  # 7 windows at batch 2
    lrs = []
    for _ in range(5):
        trainer.train_step()
        lrs.append([g["lr"] for g in trainer.optimizer.param_groups])
    assert [a for a, _ in lrs] == pytest.approx([1e-3, 1e-3, 1e-3, 0.81e-3, 0.81e-3])
    assert [b for _, b in lrs] == pytest.approx([5e-3, 5e-3, 5e-3, 4.05e-3, 4.05e-3])
    step = small_trainer(lr_schedule="poly-step", lr_compressor=1e-3)
    for _ in range(2):
        step.train_step()
    assert step.optimizer.param_groups[0]["lr"] == pytest.approx(0.81e-3)


# --- dropout masks ----------------------------------------------------------------------------

def test_three_masks_are_drawn_independently():
    comp = Compressor(32, 4, dropout=0.5).train()
    x = torch.ones(2, 32, 3, 3)
    a, b, c = comp.perturbed_inputs(x, torch.Generator().manual_seed(0), "independent")
    for m in (a, b, c):  # Dropout2d: whole channels zeroed, the rest scaled by 1 / (1 - p)
        assert set(m.unique().tolist()) == {0.0, 2.0}
        assert (m == m[..., :1, :1]).all()
    assert not torch.equal(a, b) and not torch.equal(b, c) and not torch.equal(a, c)
    # The masks are the step generator's first three draws, in the order linear, nonlinear, affinity.
    g = torch.Generator().manual_seed(0)
    expected = [x * dropout2d_mask(x.shape, 0.5, g) for _ in range(3)]
    for got, want in zip((a, b, c), expected, strict=True):
        assert torch.equal(got, want)
    shared = comp.perturbed_inputs(x, torch.Generator().manual_seed(0), "shared")
    assert torch.equal(shared[0], expected[0]) and shared[0] is shared[1] is shared[2]
    comp.eval()
    assert all(v is x for v in comp.perturbed_inputs(x, torch.Generator().manual_seed(0)))


def test_code_uses_one_mask_per_branch():
    torch.manual_seed(0)
    comp = Compressor(16, 4, dropout=0.3).train()
    x = torch.randn(3, 16, 2, 2)
    lin, nonlin, _ = comp.perturbed_inputs(x, torch.Generator().manual_seed(5))
    assert torch.allclose(comp.encode_branches(lin, nonlin), comp.linear(lin) + comp.nonlinear(nonlin))


@pytest.mark.parametrize("masks", ["independent", "shared"])
def test_trainer_feeds_each_mask_to_its_place(masks, monkeypatch):
    """In a training step the linear branch, the nonlinear branch and the affinities get the
    three masks (independent) or one (shared)."""
    import segunify_core.training.trainer as training

    trainer = small_trainer(dropout=0.5, dropout_masks=masks)
    seen = {}
    encode = trainer.model.compressor.encode_branches

    def spy_encode(linear_in, nonlinear_in):
        seen["linear"], seen["nonlinear"] = linear_in, nonlinear_in
        return encode(linear_in, nonlinear_in)

    def spy_energy(features, *args, **kw):
        seen["affinity"] = features
        return energy(features, *args, **kw)

    monkeypatch.setattr(trainer.model.compressor, "encode_branches", spy_encode)
    monkeypatch.setattr(training, "energy", spy_energy)
    trainer.train_step()
    pairs = [("linear", "nonlinear"), ("nonlinear", "affinity"), ("linear", "affinity")]
    same = [torch.equal(seen[a], seen[b]) for a, b in pairs]
    assert same == ([False] * 3 if masks == "independent" else [True] * 3)


@pytest.mark.parametrize("masks", ["independent", "shared"])
def test_gradient_flow_with_dropout_masks(masks):
    """With dropout on, the compressor still learns only from smoothness, the local prototypes
    only from the data term, and the global prototypes never get gradients."""
    torch.manual_seed(0)
    comp, lab = Compressor(16, 8, dropout=0.2).train(), Labeler(8, 4)
    feats = torch.randn(4, 16, 5, 5)

    def grads(term):
        comp.zero_grad()
        lab.zero_grad()
        lin, nonlin, aff = comp.perturbed_inputs(feats, torch.Generator().manual_seed(3), masks)
        z = comp.encode_branches(lin, nonlin)
        getattr(energy(aff, lab.teacher_logits(z), lab.student_logits(z),
                       generator=torch.Generator().manual_seed(0)), term).backward()
        compressor = sum(p.grad.abs().sum().item() for p in comp.parameters() if p.grad is not None)
        local = lab.local_prototypes.grad
        return compressor, 0.0 if local is None else local.abs().sum().item()

    assert grads("data")[0] == 0 and grads("data")[1] > 0
    for term in ("closeness", "cross_image"):
        compressor, local = grads(term)
        assert compressor > 0 and local == 0
    assert not lab.global_prototypes.requires_grad


# --- EMA order --------------------------------------------------------------------------------

@pytest.mark.parametrize("order", ["before", "after"])
def test_ema_order(order):
    trainer = small_trainer(ema_order=order, alpha=0.9)
    lab = trainer.model.labeler
    for _ in range(2):  # global and local prototypes differ after a step
        trainer.train_step()
    local_before, global_before = lab.local_prototypes.detach().clone(), lab.global_prototypes.clone()
    trainer.train_step()
    local_after = lab.local_prototypes.detach().clone()
    assert not torch.allclose(local_before, local_after)
    source = local_before if order == "before" else local_after
    torch.testing.assert_close(lab.global_prototypes, 0.9 * global_before + 0.1 * source)


# --- cross-image pairing ----------------------------------------------------------------------

def test_reference_pairing_rule():
    # Fixed points 0 and 3 move to the next index (mod 4): image 1 becomes the partner of two images.
    assert move_fixed_points(torch.tensor([0, 2, 1, 3])).tolist() == [1, 2, 1, 0]
    assert move_fixed_points(torch.tensor([1, 0, 3, 2])).tolist() == [1, 0, 3, 2]  # no fixed point: kept
    repeats = 0
    for seed in range(200):
        perm = reference_pairing(4, torch.Generator().manual_seed(seed))
        expected = move_fixed_points(torch.randperm(4, generator=torch.Generator().manual_seed(seed)))
        assert torch.equal(perm, expected)
        assert (perm != torch.arange(4)).all()
        repeats += len(set(perm.tolist())) < 4
    assert repeats > 0, "the reference's rule is not a derangement: a partner can repeat"
    with pytest.raises(ValueError):
        reference_pairing(1)


def test_energy_pairs_by_the_chosen_rule():
    torch.manual_seed(0)
    feats = torch.randn(5, 8, 3, 3)
    teacher = torch.randn(5, 3, 3, 3)
    p = torch.softmax(teacher / 0.1, dim=1)
    for seed in range(10):
        perm = reference_pairing(5, torch.Generator().manual_seed(seed))
        terms = energy(feats, teacher, teacher, generator=torch.Generator().manual_seed(seed), pairing="reference")
        assert terms.cross_image.item() == pytest.approx(smoothness(feats, feats[perm], p, p[perm], 0.5).item())


# --- training windows -------------------------------------------------------------------------

def test_nearest_resize_follows_pil():
    from PIL import Image

    rgb = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    pil = np.asarray(Image.fromarray(rgb).resize((224, 224), Image.NEAREST)).transpose(2, 0, 1)
    ours = resize_image(rgb.transpose(2, 0, 1).astype(np.float32), (224, 224), "nearest")
    assert np.array_equal(ours, pil)
    from rasterio.enums import Resampling
    from rasterio.windows import Window

    image = ArrayImage(rgb.transpose(2, 0, 1), "x")
    near, _ = image.read(Window(0, 0, 200, 200), out_shape=(224, 224), resampling=Resampling.nearest)
    smooth, _ = image.read(Window(0, 0, 200, 200), out_shape=(224, 224))
    assert np.array_equal(near, pil) and not np.array_equal(smooth, pil)


def test_square_images_used_whole_get_one_window():
    windows = plan_windows([(200, 200)] * 3 + [(500, 300)], [1.0] * 4, 224, 40, seed=0)
    assert [w.image for w in windows].count(0) == 1 and len(windows) == 40
    assert len(plan_windows([(200, 200)] * 3, [1.0] * 3, 224, 8550, seed=0)) == 3


# --- presets ----------------------------------------------------------------------------------

def test_segunify_potsdam_preset_resolves_to_the_reference_values():
    config, backbone = resolve("segunify-potsdam", {})
    assert backbone == "dino_vitb8"
    expected = dict(window=224, steps=3000, batch_size=32, lr_compressor=1e-4, lr_labeler=5e-4, weight_decay=1e-5,
                    shift_intra=0.1, shift_inter=0.5, lr_schedule="poly-epoch", dropout_masks="independent",
                    ema_order="before", pairing="reference", resize="nearest", potsdam_split="train",
                    flip=False, amp=True, alpha=0.998, temperature=0.1, classes=3, code_dim=64, dropout=0.2,
                    poly_power=2.0, val_every=400, checkpoint_every=400)
    assert {k: getattr(config, k) for k in expected} == expected
    assert config.preset == "segunify-potsdam" and config.preset_overrides == []
    for field, value in PRESETS["segunify-potsdam"].values().items():
        assert (backbone if field == BACKBONE else getattr(config, field)) == value, field


def test_explicit_values_override_the_preset():
    config, backbone = resolve("segunify-potsdam", {"steps": 10, "pairing": "derangement", "window": 224},
                               backbone="dino_vits8")
    assert (config.steps, config.pairing, config.window, backbone) == (10, "derangement", 224, "dino_vits8")
    assert config.lr_schedule == "poly-epoch"
    assert config.preset_overrides == ["pairing", "steps", BACKBONE]  # an equal value overrides nothing
    plain, default_backbone = resolve(None, {"steps": 5}, default_backbone="dino_vits8")
    assert plain == TrainConfig(steps=5) and default_backbone == "dino_vits8"
    with pytest.raises(SegUnifyError, match="Unknown preset"):
        resolve("stego-cocostuff", {})


def test_readme_shows_the_preset_table():
    readme = (REPO / "README.md").read_text()
    for name in PRESETS:
        assert f"--preset {name}" in readme
        assert markdown_table(name) in readme, (
            "README's preset table is out of date; paste `python -m segunify_core.training.presets` into it")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_flag_sets_its_value(name):
    """Each row's flag, given to `segunify train`, sets the value the table shows."""
    from cli.train import command

    for field, value in PRESETS[name].values().items():
        ctx = command.make_context("train", ["data", "-o", "m.safetensors", *_cli_value(field, value).split()])
        assert ctx.params[field] == value, field


@pytest.fixture(scope="module")
def potsdam(tmp_path_factory) -> Path:
    return fabricate(tmp_path_factory.mktemp("potsdam"), n_train=21, n_unlabelled=3, n_test=4)


def test_potsdam_validation_subset_is_fixed(potsdam):
    train_ids = potsdam_ids(potsdam, "train")
    assert potsdam_ids(potsdam, "val") == [train_ids[0], train_ids[20]]


def test_cli_preset_with_explicit_flags_is_recorded(potsdam, tiny_weights, tmp_path):
    """--preset plus flags: an explicit flag wins even when it repeats the command's default
    (click's parameter source, not a comparison with the default)."""
    from cli.main import cli

    out = tmp_path / "m.safetensors"
    result = CliRunner().invoke(cli, [
        "train", str(potsdam), "-o", str(out), "--preset", "segunify-potsdam", "--backbone", TINY_VIT,
        "--backbone-weights", str(tiny_weights), "--steps", "3", "--batch-size", "4", "--pairing", "derangement",
        "--device", "cpu", "--quiet", "--cache-dir", str(tmp_path / "cache")], obj={}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    meta = load_model(out, backbone_weights=tiny_weights).metadata["training"]
    config = meta["config"]
    assert config["preset"] == "segunify-potsdam"
    assert config["preset_overrides"] == ["batch_size", "pairing", "steps", BACKBONE]
    assert (config["steps"], config["batch_size"], config["pairing"]) == (3, 4, "derangement")
    for field, value in PRESETS["segunify-potsdam"].values().items():
        if field not in config["preset_overrides"]:
            assert config[field] == value, field
    assert meta["data"]["images"] == 21  # labelled_train only: the unlabelled split is not read
    assert meta["data"]["windows"] == 21 and meta["data"]["steps_per_epoch"] == 5
    assert meta["amp"] is False  # --amp on CPU trains in float32


def test_amp_on_cpu_trains_in_float32(caplog):
    caplog.set_level("INFO", logger="segunify")
    amp, plain = small_trainer(amp=True), small_trainer()
    assert amp.scaler is None and not amp.amp and "CUDA GPUs only" in caplog.text
    for _ in range(3):
        amp.train_step()
        plain.train_step()
    for k, v in plain.model.head_state().items():
        assert torch.equal(v, amp.model.head_state()[k]), k


# --- validation, never the test split ---------------------------------------------------------

_BLOCKED: set[str] = set()
_OPENED: list[str] = []


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _BLOCKED and isinstance(args[0], (str, Path)):
        path = str(Path(args[0]).resolve())
        _OPENED.append(path)
        if path in _BLOCKED:
            raise PermissionError(13, "Permission denied (test split)", path)


@pytest.fixture
def unreadable_test_split(potsdam):
    """Every file of the test split (its list, images and labels) made unreadable: any open() of
    one fails, for root too (an audit hook; chmod 000 does not stop root)."""
    if not getattr(sys, "_segunify_audit", False):
        sys.addaudithook(_audit)
        sys._segunify_audit = True  # type: ignore[attr-defined]
    ids = potsdam_ids(potsdam, "test")
    files = [potsdam / "labelled_test.txt"] + [potsdam / d / f"{i}.mat" for i in ids for d in ("imgs", "gt")]
    _BLOCKED.update(str(f.resolve()) for f in files)
    with pytest.raises(PermissionError):
        open(files[0])  # noqa: SIM115 - the hook works
    _OPENED.clear()
    try:
        yield files
    finally:
        _BLOCKED.clear()


def test_validation_never_reads_the_test_split(potsdam, tiny_backbone, tmp_path, unreadable_test_split):
    config = TrainConfig(classes=3, steps=4, batch_size=4, window=64, val_every=2, max_windows=30,
                         potsdam_split="all_train", lr_schedule="poly-epoch")
    model = train([potsdam], tmp_path / "m.safetensors", config, backbone=tiny_backbone, cache_dir=tmp_path / "c",
                  val=potsdam)
    blocked = {str(f.resolve()) for f in unreadable_test_split}
    assert not blocked & set(_OPENED)
    assert any(p.endswith("labelled_train.txt") for p in _OPENED), "the hook saw the files training opened"
    meta = model.metadata["training"]
    assert meta["data"]["images"] == 24 - 2  # 21 labelled + 3 unlabelled train images, minus the 2 validation ones
    assert meta["validation"]["images"] == [f"potsdam:{i}" for i in potsdam_ids(potsdam, "val")]
    assert [h["step"] for h in meta["validation"]["history"]] == [2, 4]
    assert meta["validation"]["split"] == "val"


def labelled_folder(folder: Path, seeds: list[int]) -> Path:
    """folder/images and folder/labels with one generated 96 px scene per seed."""
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    for seed in seeds:
        img, labels = make_blobs(96, 96, seed=seed)
        write_geotiff(folder / "images" / f"s{seed}.tif", img)
        write_geotiff(folder / "labels" / f"s{seed}.tif", labels[None].astype(np.uint8))
    return folder


def test_best_validation_checkpoint_is_kept(scene_tif, tiny_backbone, tmp_path):
    """The written model is the one of the step with the best validation mIoU: the same as a run
    stopped at that step (constant learning rate, so the first steps of both runs are equal)."""
    path, _ = scene_tif
    val = labelled_folder(tmp_path / "val", [10, 11])
    base = dict(classes=3, batch_size=4, max_windows=8, window=64, seed=3, lr_schedule="constant",
                lr_compressor=3e-3, lr_labeler=3e-2, val_every=2)
    model = train([path], tmp_path / "m.safetensors", TrainConfig(steps=8, **base), backbone=tiny_backbone,
                  cache_dir=tmp_path / "c", val=val)
    validation = model.metadata["training"]["validation"]
    history = validation["history"]
    assert [h["step"] for h in history] == [2, 4, 6, 8]
    best = max(history, key=lambda h: h["miou"])
    assert validation["best_step"] == best["step"] and validation["best_miou"] == best["miou"]
    print("validation history:", json.dumps(history))
    stopped = train([path], tmp_path / "s.safetensors", TrainConfig(steps=best["step"], **base),
                    backbone=tiny_backbone, cache_dir=tmp_path / "c")
    for k, v in stopped.head_state().items():
        assert torch.equal(v, model.head_state()[k]), k
    # Evaluating on the images the checkpoint was picked on is refused; other data is scored.
    loaded = load_model(tmp_path / "m.safetensors", backbone=tiny_backbone)
    with pytest.raises(SegUnifyError, match="picked its checkpoint on 2 of these images"):
        evaluate(loaded, val)
    scores, protocol = evaluate(loaded, labelled_folder(tmp_path / "other", [20]))
    assert protocol["images"] == 1 and 0 <= scores.miou <= 1


def test_resume_with_validation_keeps_history_and_best(scene_tif, tiny_backbone, tmp_path):
    from segunify_core.training.trainer import state_path

    path, _ = scene_tif
    val = labelled_folder(tmp_path / "val", [10, 11])
    config = TrainConfig(classes=3, batch_size=4, max_windows=8, window=64, seed=3, steps=6, val_every=2,
                         checkpoint_every=2, lr_compressor=3e-3, lr_labeler=3e-2)
    full = train([path], tmp_path / "full.safetensors", config, backbone=tiny_backbone, cache_dir=tmp_path / "c",
                 val=val)
    out = tmp_path / "resumed.safetensors"

    def interrupt(phase, done, total, stats):
        if phase == "train" and done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train([path], out, config, backbone=tiny_backbone, cache_dir=tmp_path / "c", val=val, on_progress=interrupt)
    assert state_path(out).exists()
    resumed = train([path], out, config, backbone=tiny_backbone, cache_dir=tmp_path / "c", val=val, resume=True)
    assert resumed.metadata["training"]["validation"] == full.metadata["training"]["validation"]
    for k, v in full.head_state().items():
        assert torch.equal(v, resumed.head_state()[k]), k


def test_evaluate_refuses_the_test_split_it_validated_on(potsdam, tiny_model, tiny_backbone):
    model = load_model(tiny_model, backbone=tiny_backbone)
    model.metadata["training"]["validation"] = {"images": [f"potsdam:{potsdam_ids(potsdam, 'test')[0]}"]}
    with pytest.raises(SegUnifyError, match="picked its checkpoint on 1 of these images"):
        evaluate(model, potsdam, "test")
    _, protocol = evaluate(model, potsdam, "val")  # not test data: scored
    assert protocol["images"] == 2
    model.metadata["training"]["validation"] = {"images": [f"potsdam:{i}" for i in potsdam_ids(potsdam, "val")]}
    _, protocol = evaluate(model, potsdam, "test")  # validated on labelled_train images only
    assert protocol["images"] == 4


def test_evaluate_prints_its_protocol(potsdam, tiny_model, tiny_weights):
    from cli.main import cli

    result = CliRunner().invoke(cli, ["evaluate", str(tiny_model), str(potsdam), "--backbone-weights",
                                      str(tiny_weights), "--precision", "fp32", "--crf", "none", "--device", "cpu",
                                      "--quiet"], obj={}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("protocol: "))
    assert re.fullmatch(r"protocol: potsdam-3 split test \(4 images\), 224 px \(shorter side resized, centre crop\), "
                        rf"backbone {TINY_VIT} in fp32, flip averaging on, CRF none; checkpoint: last step",
                        line), line
