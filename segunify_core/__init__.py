"""SegUnify: unsupervised semantic segmentation of aerial and satellite imagery.

The public API is small; see README.md for what each piece does. Names are imported on first
use, so that importing one light module (e.g. the CRF worker's) does not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "BACKBONES": "method.registry", "create_backbone": "method.backbone",
    "make_crf": "method.crf",
    "SegUnifyError": "errors",
    "evaluate": "training.evaluation",
    "Legend": "method.legend", "rewrite_model_legend": "files.model_file",
    "ModelConfig": "method.model", "SegUnifyModel": "method.model", "load_model": "files.model_file", "save_model": "files.model_file",
    "SegmentOptions": "settings", "SelfFitOptions": "settings", "segment_raster": "job.segment", "segment": "job.segment",
    "run_job": "job.segment", "JobSpec": "job.spec",
    "TrainConfig": "training.trainer", "train": "training.trainer",
    "vectorize": "files.vectorize",
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
    from .errors import SegUnifyError
    from .files.model_file import load_model, rewrite_model_legend, save_model
    from .files.vectorize import vectorize
    from .job.segment import run_job, segment, segment_raster
    from .job.spec import JobSpec
    from .method.backbone import create_backbone
    from .method.crf import make_crf
    from .method.legend import Legend
    from .method.model import ModelConfig, SegUnifyModel
    from .method.registry import BACKBONES
    from .settings import SegmentOptions, SelfFitOptions
    from .training.evaluation import evaluate
    from .training.trainer import TrainConfig, train
