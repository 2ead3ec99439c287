"""The energy's terms on small inputs, and which parameters each term trains."""

import math

import pytest
import torch

from segunify_core.method.compressor import Compressor
from segunify_core.method.labeler import Labeler
from segunify_core.method.losses import (
    assignment_disagreement,
    data_term,
    derangement,
    energy,
    feature_affinity,
    smoothness,
    smoothness_dense,
)


def test_feature_affinity_by_hand():
    # Two patches: orthogonal features. F = [[1, 0], [0, 1]] before centring.
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).T.reshape(1, 2, 1, 2)  # (B=1, C=2, h=1, w=2)
    raw = feature_affinity(f, f, pointwise=False)
    assert torch.allclose(raw, torch.eye(2)[None])
    # Pointwise: each row minus its mean (0.5) plus the global mean (0.5): unchanged here.
    centred = feature_affinity(f, f, pointwise=True)
    assert torch.allclose(centred, torch.eye(2)[None])
    # Unequal rows: F = [[1, c], [c, 1]] with c = cos(45 deg).
    g = torch.tensor([[1.0, 0.0], [1.0, 1.0]]).T.reshape(1, 2, 1, 2)
    c = 1 / math.sqrt(2)
    centred = feature_affinity(g, g, pointwise=True)[0]
    row_mean = (1 + c) / 2
    expected = torch.tensor([[1 - row_mean, c - row_mean], [c - row_mean, 1 - row_mean]]) + row_mean
    assert torch.allclose(centred, expected, atol=1e-6)


def test_disagreement_by_hand():
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).T.reshape(1, 2, 1, 2)  # patch 0 -> cluster 0, patch 1 -> 1
    a = assignment_disagreement(p, p)[0]
    assert torch.allclose(a, torch.tensor([[0.0, 1.0], [1.0, 0.0]]))


def test_smoothness_by_hand():
    # Orthogonal features, opposite assignments: pairs (0,1),(1,0) have F=0, A=1; diagonal A=0.
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).T.reshape(1, 2, 1, 2)
    p = f.clone()
    # mean over the 4 pairs of (F - b) * A = 2 * (0 - b) * 1 / 4 = -b / 2
    for fn in (smoothness, smoothness_dense):
        assert fn(f, f, p, p, shift=0.2, pointwise=False).item() == pytest.approx(-0.1)


@pytest.mark.parametrize("pointwise", [True, False])
def test_factorised_smoothness_equals_dense(pointwise):
    torch.manual_seed(1)
    f1, f2 = torch.randn(3, 16, 5, 6), torch.randn(3, 16, 5, 6)
    p1 = torch.softmax(torch.randn(3, 4, 5, 6), 1).requires_grad_()
    p2 = torch.softmax(torch.randn(3, 4, 5, 6), 1).requires_grad_()
    fast = smoothness(f1, f2, p1, p2, 0.3, pointwise)
    dense = smoothness_dense(f1, f2, p1, p2, 0.3, pointwise)
    assert fast.item() == pytest.approx(dense.item(), abs=1e-6)
    for a, b in zip(torch.autograd.grad(fast, [p1, p2]), torch.autograd.grad(dense, [p1, p2]), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_data_term_is_cross_entropy_against_teacher_argmax():
    student = torch.tensor([[2.0, 0.0, -1.0]]).reshape(1, 3, 1, 1)
    teacher = torch.tensor([[0.1, 0.9, 0.0]]).reshape(1, 3, 1, 1)  # argmax = 1
    expected = -torch.log_softmax(student.flatten(), 0)[1]
    assert data_term(student, teacher).item() == pytest.approx(expected.item())


def test_derangement_has_no_fixed_point():
    g = torch.Generator().manual_seed(0)
    for n in range(2, 12):
        for _ in range(20):
            perm = derangement(n, g)
            assert sorted(perm.tolist()) == list(range(n))
            assert (perm != torch.arange(n)).all()
    with pytest.raises(ValueError):
        derangement(1)


def _grads(loss, module):
    return [p.grad.abs().sum().item() if p.grad is not None else 0.0 for p in module.parameters()]


def test_gradient_flow():
    """The compressor learns only from smoothness; local prototypes only from the data term;
    global prototypes never receive gradients."""
    torch.manual_seed(0)
    comp, lab = Compressor(16, 8, dropout=0.0), Labeler(8, 4)
    feats = torch.randn(4, 16, 5, 5)

    def run(term):
        comp.zero_grad()
        lab.zero_grad()
        z = comp(feats)
        terms = energy(feats, lab.teacher_logits(z), lab.student_logits(z), generator=torch.Generator().manual_seed(0))
        getattr(terms, term).backward()

    run("data")
    assert all(g == 0 for g in _grads(None, comp)), "data term must not train the compressor"
    assert lab.local_prototypes.grad.abs().sum() > 0
    run("closeness")
    assert any(g > 0 for g in _grads(None, comp))
    assert lab.local_prototypes.grad is None or lab.local_prototypes.grad.abs().sum() == 0
    run("cross_image")
    assert any(g > 0 for g in _grads(None, comp))
    assert lab.local_prototypes.grad is None or lab.local_prototypes.grad.abs().sum() == 0
    assert not lab.global_prototypes.requires_grad


def test_energy_total_is_the_sum():
    torch.manual_seed(0)
    comp, lab = Compressor(16, 8), Labeler(8, 3)
    feats = torch.randn(4, 16, 4, 4)
    z = comp(feats)
    t = energy(feats, lab.teacher_logits(z), lab.student_logits(z), generator=torch.Generator().manual_seed(0))
    assert t.total.item() == pytest.approx((t.closeness + t.cross_image + t.data).item())


def test_smoothness_prefers_grouping_similar_features():
    """Lower energy when patches with similar features share a cluster."""
    f = torch.tensor([[1.0, 0.0]] * 2 + [[0.0, 1.0]] * 2).T.reshape(1, 2, 1, 4)
    good = torch.tensor([[1.0, 0.0]] * 2 + [[0.0, 1.0]] * 2).T.reshape(1, 2, 1, 4)
    bad = torch.tensor([[1.0, 0.0], [0.0, 1.0]] * 2).T.reshape(1, 2, 1, 4)
    assert smoothness(f, f, good, good, 0.1) < smoothness(f, f, bad, bad, 0.1)
