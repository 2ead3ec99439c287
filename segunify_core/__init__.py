"""SegUnify: unsupervised semantic segmentation of aerial and satellite imagery.

The public API is small; see README.md for what each piece does.
"""

from .backbone import BACKBONES, create_backbone
from .crf import make_crf
from .errors import SegUnifyError
from .evaluation import evaluate
from .model import ModelConfig, SegUnifyModel, load_model, save_model
from .segment import SegmentOptions, SelfFitOptions, segment_raster
from .training import TrainConfig, train
from .vectorize import vectorize

__version__ = "0.1.0"

__all__ = [
    "BACKBONES", "ModelConfig", "SegUnifyError", "SegUnifyModel", "SegmentOptions",
    "SelfFitOptions", "TrainConfig", "create_backbone", "evaluate", "load_model", "make_crf", "save_model",
    "segment_raster", "train", "vectorize",
]
