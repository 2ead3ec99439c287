"""Dense CRF refinement (Kraehenbuehl and Koltun 2011) behind one interface, two backends.

- ``pydensecrf``: the reference implementation (permutohedral lattice), from the optional
  ``pydensecrf2`` package; CPU only.
- ``torch``: a bilateral mean-field CRF in plain PyTorch that runs on CPU and GPU. Written by hand
  because the PyTorch CRFs on PyPI lack the RGB (bilateral) kernel. The smoothness kernel is exact
  (a 7x7 convolution). The bilateral kernel sum over all pixels is estimated from a regular sample
  of pixels (every ``stride``-th) within a window of ``radius`` samples, scaled by the sampling
  density; both kernels use the reference's symmetric normalisation.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F

from .errors import SegUnifyError

CRF_CHOICES = ("auto", "pydensecrf", "torch", "none")


@dataclasses.dataclass(frozen=True)
class CRFParams:
    iterations: int = 10
    gaussian_sxy: float = 1.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 67.0
    bilateral_srgb: float = 3.0
    bilateral_compat: float = 4.0


def pydensecrf_available() -> bool:
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        return False
    return True


class PyDenseCRF:
    """The reference dense CRF through pydensecrf (from the pydensecrf2 package)."""

    name = "pydensecrf"

    def __init__(self, params: CRFParams = CRFParams()):
        if not pydensecrf_available():
            raise SegUnifyError("The pydensecrf CRF backend is not installed; install it with "
                                "`pip install segunify[crf]` or use --crf torch.")
        self.params = params

    def refine_one(self, image: np.ndarray, log_probs: np.ndarray) -> np.ndarray:
        """image: uint8 (H, W, 3); log_probs: (K, H, W). Returns probabilities (K, H, W)."""
        import pydensecrf.densecrf as dcrf

        k, h, w = log_probs.shape
        p = self.params
        crf = dcrf.DenseCRF2D(w, h, k)
        crf.setUnaryEnergy(np.ascontiguousarray(-log_probs.reshape(k, -1), dtype=np.float32))
        crf.addPairwiseGaussian(sxy=p.gaussian_sxy, compat=p.gaussian_compat)
        crf.addPairwiseBilateral(sxy=p.bilateral_sxy, srgb=p.bilateral_srgb,
                                 rgbim=np.ascontiguousarray(image), compat=p.bilateral_compat)
        return np.asarray(crf.inference(p.iterations), dtype=np.float32).reshape(k, h, w)

    def __call__(self, images: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in 0..255; log_probs (B, K, H, W). Returns probabilities."""
        rgb = images.detach().round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        lp = log_probs.detach().float().cpu().numpy()
        out = np.stack([self.refine_one(rgb[i], lp[i]) for i in range(lp.shape[0])])
        return torch.from_numpy(out).to(log_probs.device)


class TorchDenseCRF:
    """Mean-field dense CRF in PyTorch with a sampled bilateral kernel (see module docstring)."""

    name = "torch"

    def __init__(self, params: CRFParams = CRFParams(), stride: int = 16, radius: int = 8):
        self.params = params
        self.stride = stride
        self.radius = radius

    def _gaussian(self, device: torch.device) -> torch.Tensor:
        r = max(1, math.ceil(3 * self.params.gaussian_sxy))
        coords = torch.arange(-r, r + 1, device=device, dtype=torch.float32)
        g = torch.exp(-(coords[:, None] ** 2 + coords[None, :] ** 2) / (2 * self.params.gaussian_sxy ** 2))
        return g[None, None]

    @torch.inference_mode()
    def refine_one(self, image: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
        """image (3, H, W) in 0..255; log_probs (K, H, W). Returns probabilities (K, H, W)."""
        p, s, r = self.params, self.stride, self.radius
        k, h, w = log_probs.shape
        dev = log_probs.device
        hc, wc = math.ceil(h / s), math.ceil(w / s)
        pad = (0, wc * s - w, 0, hc * s - h)
        unary = F.pad(log_probs.float(), pad, mode="replicate")
        img = F.pad(image.float()[None], pad, mode="replicate")[0] / p.bilateral_srgb
        inside = F.pad(torch.ones(1, h, w, device=dev), pad)  # padded pixels never send messages

        # Smoothness kernel: exact convolution, symmetric normalisation (self term included).
        gauss = self._gaussian(dev)
        gpad = gauss.shape[-1] // 2
        g_norm = F.conv2d(inside[None], gauss, padding=gpad)[0].clamp_min(1e-6).rsqrt()  # (1, H, W)

        # Bilateral kernel on the sample grid: pixel (cy*s+a, cx*s+b) <- samples of cells around (cy, cx).
        o = 2 * r + 1
        centre = s // 2

        def by_subpixel(t: torch.Tensor) -> torch.Tensor:  # (C, hc*s, wc*s) -> (C, s*s, hc*wc)
            c = t.shape[0]
            return t.reshape(c, hc, s, wc, s).permute(0, 2, 4, 1, 3).reshape(c, s * s, hc * wc)

        def around_samples(t: torch.Tensor) -> torch.Tensor:  # (C, H, W) -> (C, o*o, hc*wc)
            samples = t[:, centre::s, centre::s]
            return F.unfold(samples[None], o, padding=r)[0].reshape(t.shape[0], o * o, hc * wc)

        sub = torch.arange(s, device=dev, dtype=torch.float32)
        off = (torch.arange(o, device=dev, dtype=torch.float32) - r) * s + centre
        dy = off[None, :, None, None] - sub[:, None, None, None]  # (a, oy, 1, 1)
        dx = off[None, None, None, :] - sub[None, None, :, None]  # (1, 1, b, ox)
        spatial = ((dy ** 2 + dx ** 2) / (2 * p.bilateral_sxy ** 2))  # (a, oy, b, ox)
        spatial = spatial.permute(0, 2, 1, 3).reshape(s * s, o * o, 1)
        colour_i = by_subpixel(img)  # (3, P, N)
        colour_j = around_samples(img)  # (3, O, N)
        dist = torch.zeros(s * s, o * o, hc * wc, device=dev)
        for c in range(3):
            dist += (colour_i[c][:, None, :] - colour_j[c][None, :, :]) ** 2
        weights = torch.exp(-(spatial + dist / 2.0)) * (around_samples(inside) * float(s * s))
        del dist
        b_norm_sub = (1.0 + weights.sum(1)).rsqrt()  # (P, N), self term included
        b_norm = b_norm_sub.reshape(s, s, hc, wc).permute(2, 0, 3, 1).reshape(1, hc * s, wc * s)
        weights_bmm = weights.permute(2, 0, 1).contiguous()  # (N, P, O)
        del weights

        q = torch.softmax(unary, dim=0)
        for _ in range(p.iterations):
            qg = q * g_norm * inside
            msg_g = F.conv2d(qg[:, None], gauss, padding=gpad)[:, 0] * g_norm
            qb = q * b_norm * inside
            sampled = around_samples(qb).permute(2, 1, 0)  # (N, O, K)
            msg_b = torch.bmm(weights_bmm, sampled).permute(2, 1, 0)  # (K, P, N)
            msg_b = msg_b.reshape(k, s, s, hc, wc).permute(0, 3, 1, 4, 2).reshape(k, hc * s, wc * s)
            msg_b = (msg_b + qb) * b_norm
            q = torch.softmax(unary + p.gaussian_compat * msg_g + p.bilateral_compat * msg_b, dim=0)
        return q[:, :h, :w]

    def __call__(self, images: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.refine_one(images[i], log_probs[i]) for i in range(log_probs.shape[0])])


def make_crf(name: str = "auto", params: CRFParams = CRFParams()) -> PyDenseCRF | TorchDenseCRF | None:
    """``auto`` prefers pydensecrf when installed, else the torch backend; ``none`` gives None."""
    if name == "none":
        return None
    if name == "pydensecrf" or (name == "auto" and pydensecrf_available()):
        return PyDenseCRF(params)
    if name in ("torch", "auto"):
        return TorchDenseCRF(params)
    raise SegUnifyError(f"Unknown CRF backend '{name}'; use one of {', '.join(CRF_CHOICES)}.")
