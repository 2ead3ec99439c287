import torch
import torch.nn.functional as F

from segunify_core.method.compressor import Compressor
from segunify_core.method.labeler import Labeler, cosine_logits


def test_prototypes_initialised_normalised_and_copied():
    torch.manual_seed(0)
    lab = Labeler(8, 5)
    assert torch.allclose(lab.local_prototypes.norm(dim=1), torch.ones(5), atol=1e-6)
    assert torch.equal(lab.global_prototypes, lab.local_prototypes.detach())


def test_ema_update_by_hand():
    lab = Labeler(2, 2)
    with torch.no_grad():
        lab.global_prototypes.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        lab.local_prototypes.copy_(torch.tensor([[0.0, 2.0], [4.0, 0.0]]))
    lab.ema_update(0.75)
    assert torch.allclose(lab.global_prototypes, torch.tensor([[0.75, 0.5], [1.0, 0.75]]))


def test_cosine_logits():
    code = torch.tensor([3.0, 0.0]).reshape(1, 2, 1, 1)
    protos = torch.tensor([[1.0, 0.0], [0.0, 5.0], [1.0, 1.0]])
    out = cosine_logits(code, protos).flatten()
    assert torch.allclose(out, torch.tensor([1.0, 0.0, 2 ** -0.5]), atol=1e-6)


def test_compressor_branches():
    torch.manual_seed(0)
    c = Compressor(16, 4, dropout=0.0, nonlinear=True).eval()
    x = torch.randn(2, 16, 3, 3)
    assert torch.allclose(c(x), c.linear(x) + c.nonlinear(x))
    lin = Compressor(16, 4, dropout=0.0, nonlinear=False).eval()
    assert lin.nonlinear is None and torch.allclose(lin(x), lin.linear(x))
    assert isinstance(lin.linear[1], torch.nn.BatchNorm2d) and isinstance(lin.linear[2], torch.nn.SiLU)
    outer = Compressor(16, 4, dropout=0.0, outer_silu=True).eval()
    assert torch.allclose(outer(x), F.silu(outer.linear(x) + outer.nonlinear(x)))


def test_dropout_only_in_training():
    c = Compressor(16, 4, dropout=0.5)
    x = torch.ones(1, 16, 2, 2)
    c.eval()
    assert torch.equal(c.perturb(x), x)
    c.train()
    torch.manual_seed(0)
    dropped = c.perturb(x)
    assert (dropped == 0).any() and ((dropped == 0) | (dropped == 2)).all()


def test_fast_log_probs_equal_the_teacher_logits():
    """The channels-last inference path gives log_softmax(2 x teacher cosine logits) of the
    bilinearly upsampled code."""
    from segunify_core.method.model import LOGIT_SCALE, ModelConfig, SegUnifyModel

    torch.manual_seed(0)
    model = SegUnifyModel(ModelConfig(classes=4, extra_clusters=1, code_dim=16, feature_dim=32)).eval()
    model.labeler.global_prototypes.copy_(torch.randn(5, 16))
    code = torch.randn(2, 16, 5, 7)
    fast = model.log_probs_from_code(code, (40, 56))
    up = torch.nn.functional.interpolate(code, size=(40, 56), mode="bilinear", align_corners=False)
    expected = torch.log_softmax(model.labeler.teacher_logits(up) * LOGIT_SCALE, dim=1)
    assert fast.shape == (2, 5, 40, 56) and fast.is_contiguous()
    torch.testing.assert_close(fast, expected, atol=1e-5, rtol=1e-5)
