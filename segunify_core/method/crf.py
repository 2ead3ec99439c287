"""Dense CRF refinement (Kraehenbuehl and Koltun 2011) behind one interface, two backends.

- ``pydensecrf``: the reference implementation (permutohedral lattice), from the optional
  ``pydensecrf2`` package; CPU only.
- ``torch``: a bilateral mean-field CRF in plain PyTorch that runs on CPU and GPU. Written by hand
  because the PyTorch CRFs on PyPI lack the RGB (bilateral) kernel. The smoothness kernel is exact
  (a separable 7x7 Gaussian). The bilateral kernel sum over all pixels of the window is estimated
  from a regular sample of its pixels (every ``stride``-th row and column), scaled by the sampling
  density: the weights between every pixel and every sample are one (samples x pixels) matrix,
  built once per window, and each mean-field step is a single matrix product with it. Both kernels
  use the reference's symmetric normalisation.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from .. import settings
from ..errors import SegUnifyError
from .backbone import cpu_has_native_bf16
from .densecrf_window import CRFParams, refine_window, worker_init

CRF_CHOICES = settings.CRF_BACKENDS
MAX_BILATERAL_WEIGHTS = 1 << 26  # per window: 128 MB in half floats, 256 MB in float32


class CRF(Protocol):
    """What the pipeline needs of a CRF backend (`make_crf` gives one of this module's two)."""

    name: str  # the backend's name, as --crf takes it; recorded in a job's settings

    def __call__(self, images: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in 0..255, log_probs (B, K, H, W) -> probabilities (B, K, H, W)
        on the device of log_probs."""
        ...

    def close(self) -> None:
        """Release what the backend holds (pydensecrf's worker processes); it may be used again after."""
        ...


def pydensecrf_available() -> bool:
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        return False
    return True


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


class PyDenseCRF:
    """The reference dense CRF through pydensecrf (from the pydensecrf2 package), one window per
    CPU core in worker processes (started on first use, reused for every later batch)."""

    name = "pydensecrf"

    def __init__(self, params: CRFParams = CRFParams(), workers: int | None = None):
        if not pydensecrf_available():
            raise SegUnifyError("The pydensecrf CRF backend is not installed; install it with "
                                "`pip install segunify[crf]` or choose the torch CRF backend (--crf torch).")
        self.params = params
        self.workers = available_cores() if workers is None else workers
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # Linux forks (as PyTorch's DataLoader does; workers run only numpy and pydensecrf);
            # elsewhere workers are spawned.
            method = "fork" if sys.platform.startswith("linux") else "spawn"
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context(method),
                                             initializer=worker_init)
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def refine_one(self, image: np.ndarray, log_probs: np.ndarray) -> np.ndarray:
        """image: uint8 (H, W, 3); log_probs: (K, H, W). Returns probabilities (K, H, W)."""
        return refine_window(image, log_probs, self.params)

    def __call__(self, images: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in 0..255; log_probs (B, K, H, W). Returns probabilities."""
        rgb = images.detach().round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        lp = log_probs.detach().float().cpu().numpy()
        n = lp.shape[0]
        if self.workers > 1 and n > 1:
            out = list(self._executor().map(refine_window, list(rgb), list(lp), [self.params] * n))
        else:
            out = [refine_window(rgb[i], lp[i], self.params) for i in range(n)]
        return torch.from_numpy(np.stack(out)).to(log_probs.device)


class TorchDenseCRF:
    """Mean-field dense CRF in PyTorch with a sampled bilateral kernel (see module docstring)."""

    name = "torch"

    def __init__(self, params: CRFParams = CRFParams(), stride: int = 24):
        self.params = params
        self.stride = stride

    def _smooth(self, t: torch.Tensor) -> torch.Tensor:
        """The smoothness kernel on (C, H, W), zero outside: a separable Gaussian applied as
        shifted in-place adds, 4x faster on CPU than a 2-D convolution with one input channel."""
        sxy = self.params.gaussian_sxy
        r = max(1, math.ceil(3 * sxy))
        taps = [math.exp(-(i * i) / (2 * sxy * sxy)) for i in range(-r, r + 1)]
        h, w = t.shape[-2:]
        padded = F.pad(t, (r, r, r, r))
        rows = torch.mul(padded[..., :, 0:w], taps[0])
        for i in range(1, 2 * r + 1):
            rows.add_(padded[..., :, i:i + w], alpha=taps[i])
        out = torch.mul(rows[..., 0:h, :], taps[0])
        for i in range(1, 2 * r + 1):
            out.add_(rows[..., i:i + h, :], alpha=taps[i])
        return out

    def _bilateral_weights(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Kernel weights (S, H*W) between every pixel and the samples, and the samples' pixel indices.

        The kernel is exp(-|f_i - f_j|^2 / 2) over f = (y / sxy, x / sxy, rgb / srgb); the squared
        distance comes from one matrix product of [f, -|f|^2/2, 1] with [f, 1, -|f|^2/2].
        """
        p = self.params
        _, h, w = image.shape
        # Weights grow with pixels^2 / stride^2: sample more sparsely on large windows.
        s = max(self.stride, math.ceil(h * w / math.sqrt(MAX_BILATERAL_WEIGHTS)))
        dev = image.device
        colour = image.float().reshape(3, -1)
        colour = (colour - colour.mean(1, keepdim=True)) / p.bilateral_srgb  # centred: smaller products
        ys = (torch.arange(h, device=dev, dtype=torch.float32) - h / 2) / p.bilateral_sxy
        xs = (torch.arange(w, device=dev, dtype=torch.float32) - w / 2) / p.bilateral_sxy
        feats = torch.cat([ys[:, None].expand(h, w).reshape(1, -1), xs[None, :].expand(h, w).reshape(1, -1), colour])
        sy = torch.arange(min(s // 2, h - 1), h, s, device=dev)
        sx = torch.arange(min(s // 2, w - 1), w, s, device=dev)
        samples = (sy[:, None] * w + sx[None, :]).reshape(-1)
        half_sq = 0.5 * (feats * feats).sum(0, keepdim=True)
        pixels = torch.cat([feats, -half_sq, torch.ones_like(half_sq)])  # (7, P)
        chosen = torch.cat([feats[:, samples], torch.ones_like(half_sq[:, samples]), -half_sq[:, samples]]).T
        dtype = _weight_dtype(dev)
        weights = torch.empty(len(samples), h * w, device=dev, dtype=dtype)
        rows = max(1, (1 << 22) // (h * w))  # blocks of ~4M entries stay in cache between the steps
        for r0 in range(0, len(samples), rows):
            # exponents below -60 are cut: exp would give denormals (slow on CPU) of no weight anyway
            weights[r0:r0 + rows] = (chosen[r0:r0 + rows] @ pixels).clamp_(-60.0, 0.0).exp_()
        return weights, samples

    @torch.inference_mode()
    def close(self) -> None:
        """Nothing to release (no worker processes)."""

    def refine_one(self, image: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
        """image (3, H, W) in 0..255; log_probs (K, H, W). Returns probabilities (K, H, W)."""
        p = self.params
        k, h, w = log_probs.shape
        weights, samples = self._bilateral_weights(image)
        density = h * w / len(samples)  # each sample stands for this many pixels
        ones = torch.ones(1, len(samples), device=weights.device, dtype=weights.dtype)
        # Symmetric normalisation of both kernels, the self term included (as the reference).
        b_norm = (ones @ weights).float().mul_(density).add_(1.0).rsqrt_()  # (1, P)
        g_norm = self._smooth(torch.ones(1, h, w, device=log_probs.device)).reshape(1, -1).rsqrt_()
        unary = log_probs.float().reshape(k, -1)
        q = torch.softmax(unary, 0)
        for _ in range(p.iterations):
            qb = q * b_norm
            message = (qb[:, samples].to(weights.dtype) @ weights).float().mul_(density).add_(qb)
            message.mul_(b_norm * p.bilateral_compat)
            smooth = self._smooth((q * g_norm).reshape(k, h, w)).reshape(k, -1)
            message.addcmul_(smooth, g_norm, value=p.gaussian_compat)
            q = torch.softmax(message.add_(unary), 0)
        return q.reshape(k, h, w)

    def __call__(self, images: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.refine_one(images[i], log_probs[i]) for i in range(log_probs.shape[0])])


def _weight_dtype(device: torch.device) -> torch.dtype:
    """Half-size kernel weights where half-precision products are native (half the memory traffic
    per mean-field step); float32 on CPUs without bfloat16, where bfloat16 products are emulated
    and 30x slower."""
    if device.type != "cpu":
        return torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def make_crf(name: str = settings.CRF, params: CRFParams = CRFParams(),
             workers: int | None = None) -> CRF | None:
    """``auto`` prefers pydensecrf when installed, else the torch backend; ``none`` gives None.
    workers: pydensecrf's worker processes (default one per core; 1 runs in this process)."""
    if name == "none":
        return None
    if name == "pydensecrf" or (name == "auto" and pydensecrf_available()):
        return PyDenseCRF(params, workers)
    if name in ("torch", "auto"):
        return TorchDenseCRF(params)
    raise SegUnifyError(f"Unknown CRF backend '{name}'; use one of {', '.join(CRF_CHOICES)} (--crf).")


@contextlib.contextmanager
def open_crf(name: str = settings.CRF, params: CRFParams = CRFParams(),
             workers: int | None = None) -> Iterator[CRF | None]:
    """`make_crf` for the length of a `with` block: the backend is closed (pydensecrf's process pool
    shut down) when the block ends, so a job leaves no worker processes behind."""
    crf = make_crf(name, params, workers)
    try:
        yield crf
    finally:
        if crf is not None:
            crf.close()
