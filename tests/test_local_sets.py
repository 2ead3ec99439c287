"""Several local prototype sets against one global set (`--local-sets M`)."""

import json

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segunify_core.files.model_file import load_model
from segunify_core.method.compressor import Compressor
from segunify_core.method.labeler import Labeler, cosine_logits
from segunify_core.method.losses import data_term
from segunify_core.method.model import ModelConfig, SegUnifyModel
from segunify_core.training.feature_cache import FeatureCache
from segunify_core.training.trainer import TrainConfig, Trainer, train

D, K, C = 16, 5, 32


class SingleSetLabeler(nn.Module):
    """The Labeler as it was before local sets (one local set, EMA of it), kept verbatim as the
    reference that M = 1 must reproduce bit for bit."""

    def __init__(self, code_dim, n_clusters):
        super().__init__()
        local = torch.empty(n_clusters, code_dim)
        nn.init.xavier_normal_(local)
        self.local_prototypes = nn.Parameter(F.normalize(local, dim=1))
        self.register_buffer("global_prototypes", self.local_prototypes.detach().clone())

    def student_logits(self, code):
        return cosine_logits(code.detach(), self.local_prototypes)

    def teacher_logits(self, code):
        return cosine_logits(code, self.global_prototypes.detach())

    @torch.no_grad()
    def ema_update(self, alpha):
        self.global_prototypes.mul_(alpha).add_(self.local_prototypes.detach(), alpha=1.0 - alpha)


def random_cache(folder, n=12, grid=7, seed=0) -> FeatureCache:
    """A finished feature cache of random features (N, 2 views, C, grid, grid)."""
    folder.mkdir()
    shape = (n, 2, C, grid, grid)
    rng = np.random.default_rng(seed)
    rng.standard_normal(shape).astype(np.float16).tofile(folder / "features.f16")
    (folder / "meta.json").write_text(json.dumps({"shape": list(shape)}))
    return FeatureCache(folder)


def config(**kw):
    return TrainConfig(**{"classes": K, "steps": 25, "batch_size": 6, "code_dim": D, "seed": 7, **kw})


def model_for(cfg: TrainConfig) -> SegUnifyModel:
    torch.manual_seed(cfg.seed)
    return SegUnifyModel(ModelConfig(classes=cfg.classes, code_dim=cfg.code_dim, feature_dim=C,
                                     local_sets=cfg.local_sets))


def test_one_local_set_trains_to_the_same_tensors_as_the_single_set_labeler(tmp_path):
    cache = random_cache(tmp_path / "cache")
    cfg = config()
    current = model_for(cfg)
    reference = model_for(cfg)
    torch.manual_seed(cfg.seed)  # the same random stream as the model's own initialisation
    Compressor(C, D)
    reference.labeler = SingleSetLabeler(D, K)
    assert sorted(current.head_state()) == sorted(reference.head_state()), "no extra tensors for M = 1"
    for model in (current, reference):
        trainer = Trainer(model, cache, cfg)
        while trainer.step < cfg.steps:
            trainer.train_step()
    ref_state = reference.head_state()
    for key, value in current.head_state().items():
        assert torch.equal(value, ref_state[key]), key
    assert not torch.equal(current.labeler.global_prototypes, model_for(cfg).labeler.global_prototypes), \
        "training moved the prototypes (the comparison is not between two untrained models)"


def test_sets_are_independent_and_the_global_set_follows_their_mean():
    torch.manual_seed(0)
    lab = Labeler(D, K, local_sets=3)
    sets = torch.cat([lab.local_prototypes[None], lab.extra_local_prototypes]).detach()
    assert sets.shape == (3, K, D) and lab.local_sets == 3
    assert torch.allclose(sets.norm(dim=2), torch.ones(3, K), atol=1e-6)
    assert not torch.allclose(sets[0], sets[1]) and not torch.allclose(sets[1], sets[2])
    torch.testing.assert_close(lab.global_prototypes, sets.mean(0))
    before = lab.global_prototypes.clone()
    with torch.no_grad():
        lab.extra_local_prototypes.add_(1.0)
    lab.ema_update(0.9)
    torch.testing.assert_close(lab.global_prototypes, 0.9 * before + 0.1 * (sets + torch.tensor([0, 1, 1.0])[:, None, None]).mean(0))


def test_every_set_learns_against_the_teacher_argmax():
    torch.manual_seed(0)
    lab = Labeler(D, K, local_sets=2)
    code = torch.randn(3, D, 4, 4)
    student, teacher = lab.student_logits(code), lab.teacher_logits(code)
    assert student.shape == (6, K, 4, 4)
    target = teacher.argmax(1)
    expected = (F.cross_entropy(student[:3], target) + F.cross_entropy(student[3:], target)) / 2
    torch.testing.assert_close(data_term(student, teacher), expected)
    data_term(student, teacher).backward()
    assert lab.local_prototypes.grad.abs().sum() > 0 and lab.extra_local_prototypes.grad.abs().sum() > 0


def test_model_file_stores_all_sets_and_infers_from_the_global_set(scene_tif, tiny_backbone, tmp_path):
    path, _ = scene_tif
    cfg = TrainConfig(classes=3, steps=4, batch_size=4, max_windows=6, window=64, local_sets=3)
    trained = train([path], tmp_path / "m.safetensors", cfg, backbone=tiny_backbone, cache_dir=tmp_path / "c")
    loaded = load_model(tmp_path / "m.safetensors", backbone=tiny_backbone)
    assert loaded.config.local_sets == 3
    assert loaded.labeler.extra_local_prototypes.shape == (2, 3, loaded.config.code_dim)
    for key, value in trained.head_state().items():
        assert torch.equal(value, loaded.head_state()[key]), key
    code = torch.randn(1, loaded.config.code_dim, 3, 3)
    single = SegUnifyModel(loaded.config.__class__(**{**loaded.config.__dict__, "local_sets": 1}))
    single.labeler.global_prototypes.copy_(loaded.labeler.global_prototypes)
    torch.testing.assert_close(loaded.log_probs_from_code(code, (6, 6)), single.log_probs_from_code(code, (6, 6)))
