"""The reference dense CRF (pydensecrf) on one window, numpy in and out.

Worker processes run windows in parallel (pydensecrf holds the GIL, so threads would run one
window at a time); this module is all they use, and it does not touch torch.
"""

from __future__ import annotations

import dataclasses
import signal
import sys

import numpy as np


@dataclasses.dataclass(frozen=True)
class CRFParams:
    iterations: int = 10
    gaussian_sxy: float = 1.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 67.0
    bilateral_srgb: float = 3.0
    bilateral_compat: float = 4.0


def refine_window(image: np.ndarray, log_probs: np.ndarray, params: CRFParams) -> np.ndarray:
    """image: uint8 (H, W, 3); log_probs: (K, H, W). Returns probabilities (K, H, W) float32."""
    import pydensecrf.densecrf as dcrf

    k, h, w = log_probs.shape
    crf = dcrf.DenseCRF2D(w, h, k)
    crf.setUnaryEnergy(np.ascontiguousarray(-log_probs.reshape(k, -1), dtype=np.float32))
    crf.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
    crf.addPairwiseBilateral(sxy=params.bilateral_sxy, srgb=params.bilateral_srgb,
                             rgbim=np.ascontiguousarray(image), compat=params.bilateral_compat)
    return np.asarray(crf.inference(params.iterations), dtype=np.float32).reshape(k, h, w)


def worker_init() -> None:
    """In a CRF worker: leave Ctrl-C to the parent (which cleans up), and die with the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
