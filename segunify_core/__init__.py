"""SegUnify: unsupervised semantic segmentation of aerial and satellite imagery.

The public API is small; see README.md for what each piece does. Names are imported on first
use, so that importing one light module (e.g. the CRF worker's) does not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "BACKBONES": "backbone", "create_backbone": "backbone",
    "make_crf": "crf",
    "SegUnifyError": "errors",
    "evaluate": "evaluation",
    "Legend": "legend", "rewrite_model_legend": "legend",
    "ModelConfig": "model", "SegUnifyModel": "model", "load_model": "model", "save_model": "model",
    "SegmentOptions": "settings", "SelfFitOptions": "settings", "segment_raster": "segment", "segment": "segment",
    "run_job": "segment", "JobSpec": "spec",
    "TrainConfig": "training", "train": "training",
    "vectorize": "vectorize",
}

__all__ = [
    "BACKBONES", "JobSpec", "Legend", "ModelConfig", "SegUnifyError", "SegUnifyModel", "SegmentOptions", "SelfFitOptions",
    "TrainConfig", "create_backbone", "evaluate", "load_model", "make_crf", "rewrite_model_legend", "save_model",
    "run_job", "segment", "segment_raster", "train", "vectorize",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:
    from .backbone import BACKBONES, create_backbone
    from .crf import make_crf
    from .errors import SegUnifyError
    from .evaluation import evaluate
    from .legend import Legend, rewrite_model_legend
    from .model import ModelConfig, SegUnifyModel, load_model, save_model
    from .segment import run_job, segment, segment_raster
    from .settings import SegmentOptions, SelfFitOptions
    from .spec import JobSpec
    from .training import TrainConfig, train
    from .vectorize import vectorize
