"""Both CRF backends refine noisy probabilities towards image edges, and agree with each other."""

import numpy as np
import pytest
import torch

from segunify_core.errors import SegUnifyError
from segunify_core.method.crf import PyDenseCRF, TorchDenseCRF, make_crf, pydensecrf_available


def noisy_two_region(seed=0, size=96):
    g = torch.Generator().manual_seed(seed)
    truth = torch.zeros(size, size, dtype=torch.long)
    truth[:, size // 2 + 7:] = 1
    image = torch.where(truth.bool(), 180.0, 60.0).expand(3, size, size).clone()
    image += torch.randn(3, size, size, generator=g) * 2
    logits = torch.stack([(truth == 0).float(), (truth == 1).float()]) * 1.0
    logits += torch.randn(2, size, size, generator=g) * 1.2
    return image[None], torch.log_softmax(logits, 0)[None], truth


def test_torch_crf_is_a_distribution_and_improves_accuracy():
    image, log_probs, truth = noisy_two_region()
    out = TorchDenseCRF()(image, log_probs)
    assert out.shape == log_probs.shape
    assert torch.allclose(out.sum(1), torch.ones(1, 96, 96), atol=1e-5)
    before = (log_probs.argmax(1)[0] == truth).float().mean()
    after = (out.argmax(1)[0] == truth).float().mean()
    assert after > before and after > 0.97


def test_torch_crf_odd_sizes():
    image, log_probs, _ = noisy_two_region(size=37)
    assert TorchDenseCRF()(image, log_probs).shape == (1, 2, 37, 37)


@pytest.mark.skipif(not pydensecrf_available(), reason="pydensecrf2 (the crf extra) is not installed")
def test_backends_agree_on_synthetic_image():
    image, log_probs, truth = noisy_two_region(seed=1)
    a = PyDenseCRF()(image, log_probs).argmax(1)
    b = TorchDenseCRF()(image, log_probs).argmax(1)
    assert (a == b).float().mean() > 0.97
    assert (a[0] == truth).float().mean() > 0.97


@pytest.mark.skipif(not pydensecrf_available(), reason="pydensecrf2 (the crf extra) is not installed")
def test_backends_agree_on_real_image(samples):
    import rasterio

    with rasterio.open(samples / "rasterio" / "cogeo.tif") as ds:
        img = torch.from_numpy(ds.read(window=((300, 460), (300, 460))).astype(np.float32))[None]
    g = torch.Generator().manual_seed(0)
    grey = img.mean(1, keepdim=True)
    logits = -(grey - torch.tensor([60.0, 140.0, 220.0]).view(1, 3, 1, 1)).abs() / 30
    log_probs = torch.log_softmax(logits + torch.randn(1, 3, 160, 160, generator=g) * 0.8, 1)
    a = PyDenseCRF()(img, log_probs).argmax(1)
    b = TorchDenseCRF()(img, log_probs).argmax(1)
    assert (a == b).float().mean() > 0.9


def test_make_crf():
    assert make_crf("none") is None
    assert isinstance(make_crf("torch"), TorchDenseCRF)
    auto = make_crf("auto")
    assert isinstance(auto, PyDenseCRF if pydensecrf_available() else TorchDenseCRF)
    with pytest.raises(SegUnifyError):
        make_crf("fancy")


@pytest.mark.skipif(not pydensecrf_available(), reason="pydensecrf2 (the crf extra) is not installed")
def test_pydensecrf_parallel_workers_give_the_serial_result():
    images, log_probs = [], []
    for seed in range(4):
        image, lp, _ = noisy_two_region(seed=seed, size=64)
        images.append(image)
        log_probs.append(lp)
    images, log_probs = torch.cat(images), torch.cat(log_probs)
    parallel = PyDenseCRF(workers=2)
    try:
        out = parallel(images, log_probs)
        assert parallel._pool is not None, "the windows went to worker processes"
    finally:
        parallel.close()
    torch.testing.assert_close(out, PyDenseCRF(workers=1)(images, log_probs), atol=0, rtol=0)


def test_torch_crf_large_window_bounds_its_weights(monkeypatch):
    """On big windows the sample grid thins out so the weight matrix stays within its budget."""
    import segunify_core.method.crf as crf_module

    monkeypatch.setattr(crf_module, "MAX_BILATERAL_WEIGHTS", 64 * 64 * 16)
    image, log_probs, truth = noisy_two_region(size=128)
    crf = TorchDenseCRF()
    weights, samples = crf._bilateral_weights(image[0])
    assert weights.numel() <= 64 * 64 * 16 and len(samples) >= 1
    out = crf(image, log_probs)
    assert (out.argmax(1)[0] == truth).float().mean() > 0.9
