"""Evaluation on labelled data: the Potsdam-3 protocol or a folder of images and label rasters,
and the validation set that training picks its checkpoint on (never the test split)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .. import settings
from ..device import api_device
from ..errors import SegUnifyError
from ..files.remote import Location, is_object_store, is_url, location
from ..method.inference import codes_from_features, pad_to_patch, predict_labels
from ..method.model import SegUnifyModel
from ..method.registry import IMAGENET
from ..progress import Progress
from .datasets import (
    EvalSample,
    centre_crop_resize,
    folder_eval_sample,
    folder_pairs,
    image_key,
    potsdam_eval_sample,
    potsdam_eval_samples,
    potsdam_ids,
    potsdam_root,
    read_label_raster,
)
from .metrics import Scores, confusion_matrix, hungarian_scores

if TYPE_CHECKING:
    from ..method.crf import CRF

DEFAULT_RESOLUTION = settings.EVAL_RESOLUTION  # SegUnify's; STEGO/HP/PriMaPs use 320
POTSDAM_VAL_SPLIT = "val"  # the split --val uses on a Potsdam folder (a fixed subset of labelled_train)
TEST_SPLITS = ("test", "all")  # Potsdam splits that hold labelled_test.txt


def _folder_samples(root: Location, bands) -> tuple[Iterable[EvalSample], int]:
    pairs = folder_pairs(root)
    classes = 0
    for _, label in pairs:
        labels = read_label_raster(label)
        classes = max(classes, int(labels.max()) + 1)

    def samples():
        for image, label in pairs:
            yield folder_eval_sample(image, label, bands)

    return samples(), classes


def _file_digest(path: Location) -> str:
    from ..files.manifest import file_sha256

    return "sha256:" + file_sha256(path)[:20]


def validated_images(model: SegUnifyModel) -> set[str]:
    """Identities ('potsdam:ID' or 'sha256:...') of the images the model picked its checkpoint on."""
    validation = (model.metadata.get("training") or {}).get("validation") or {}
    return set(validation.get("images", []))


def check_not_validated(model: SegUnifyModel, data: Location, split: str) -> None:
    """Refuse to score a model on test data it picked its checkpoint on (biased scores)."""
    seen = validated_images(model)
    if not seen:
        return
    root = potsdam_root(data) if isinstance(data, Path) else None
    if not isinstance(data, Path):  # an s3:// prefix with images/ and labels/
        keys = {_file_digest(image) for image, _ in folder_pairs(data)}
    elif root is not None:
        if split not in TEST_SPLITS:
            return  # train/val scores are for diagnosis; only test numbers must be unbiased
        keys = {f"potsdam:{i}" for i in potsdam_ids(root, split)}
    elif (data / "images").is_dir() and (data / "labels").is_dir():
        keys = {_file_digest(image) for image, _ in folder_pairs(data)}
    else:
        return
    overlap = len(keys & seen)
    if overlap:
        raise SegUnifyError(f"The model picked its checkpoint on {overlap} of these images (its validation set), "
                            "so scores on them are biased; evaluate on test data it never saw, or retrain "
                            "with another validation set (--val).")


def evaluate(model: SegUnifyModel, data: str | Path, split: str = settings.EVAL_SPLIT,
             resolution: int = DEFAULT_RESOLUTION, crf: CRF | None = None, flip: bool = settings.FLIP,
             batch_size: int = settings.EVAL_BATCH_SIZE, device: str = settings.DEVICE,
             progress: Progress | None = None) -> tuple[Scores, dict]:
    """Accumulate one confusion matrix over the data set, then score it with one assignment.

    Refuses (SegUnifyError) test data the model says it validated on."""
    if is_url(str(data)) and not is_object_store(str(data)):
        raise SegUnifyError(f"Evaluation data '{data}' is a URL but not an s3:// prefix; give a local folder or an "
                            "s3:// prefix holding images/ and labels/.")
    data = location(data)
    check_not_validated(model, data, split)
    root = potsdam_root(data) if isinstance(data, Path) else None
    samples: Iterable[EvalSample]
    protocol: dict[str, Any]
    if not isinstance(data, Path):  # an s3:// prefix with images/ and labels/
        samples, n_classes = _folder_samples(data, model.config.bands)
        protocol = {"dataset": "folder", "root": data, "split": "all", "resolution": "native"}
    elif root is not None:
        samples = potsdam_eval_samples(root, split, resolution)
        n_classes = 3
        protocol = {"dataset": "potsdam-3", "root": str(root), "split": split, "resolution": resolution}
    elif (data / "images").is_dir() and (data / "labels").is_dir():
        samples, n_classes = _folder_samples(data, model.config.bands)
        protocol = {"dataset": "folder", "root": str(data), "split": "all", "resolution": "native"}
    else:
        raise SegUnifyError(f"'{data}' is neither a Potsdam folder (imgs/, gt/, split lists) nor a "
                            "folder with images/ and labels/; point evaluate at one of those.")
    n_clusters = model.n_classes  # the legend's classes: merged clusters are scored as one
    confusion = np.zeros((n_clusters, n_classes), np.int64)
    where = api_device(device)
    model = model.to(where).eval()
    count = 0

    def flush(batch: list[EvalSample]) -> None:
        nonlocal confusion, count
        rgb = torch.from_numpy(np.stack([s.rgb for s in batch])).to(where)
        pred = predict_labels(model, rgb, flip, crf).cpu().numpy()
        for s, p in zip(batch, pred, strict=True):
            confusion += confusion_matrix(p, s.labels, n_clusters, n_classes)
        count += len(batch)
        if progress:  # the number of images is not known ahead
            progress("evaluate", count, count)

    batch: list[EvalSample] = []
    for sample in samples:
        if batch and sample.rgb.shape != batch[0].rgb.shape:
            flush(batch)
            batch = []
        batch.append(sample)
        if len(batch) == batch_size:
            flush(batch)
            batch = []
    if batch:
        flush(batch)
    if count == 0:
        raise SegUnifyError(f"No labelled images found in '{data}' for split '{split}'; choose another split "
                            "(--split) or a folder with images/ and labels/.")
    protocol["images"] = count
    return hungarian_scores(confusion), protocol


# --- validation during training ---------------------------------------------------------------

@dataclasses.dataclass
class ValidationData:
    """Labelled images to pick the checkpoint on, read once: a Potsdam folder's validation subset
    (never its test split) or a folder with images/ and labels/, each image resized (shorter side)
    and centre-cropped to `resolution` like the Potsdam protocol."""

    description: dict  # dataset, root, split, resolution, images (their identities)
    load: Callable[[int], EvalSample]
    count: int
    n_classes: int
    training_keys: frozenset[str]  # TrainingImage keys of these images (kept out of training)

    @classmethod
    def open(cls, data: str | Path, resolution: int = DEFAULT_RESOLUTION, bands=None) -> ValidationData:
        data = Path(data)
        root = potsdam_root(data)
        if root is not None:
            ids = potsdam_ids(root, POTSDAM_VAL_SPLIT)

            def load_potsdam(k: int) -> EvalSample:
                sample = potsdam_eval_sample(root, ids[k], resolution)
                if sample is None:
                    raise SegUnifyError(f"Potsdam validation image '{ids[k]}' has no label file in "
                                        f"'{root / 'gt'}'; check the download.")
                return sample

            keys = [image_key(root, i) for i in ids]
            description: dict[str, Any] = {"dataset": "potsdam-3", "root": str(root), "split": POTSDAM_VAL_SPLIT}
            return cls({**description, "resolution": resolution, "images": keys}, load_potsdam, len(ids), 3,
                       frozenset(keys))
        if (data / "images").is_dir() and (data / "labels").is_dir():
            pairs = folder_pairs(data)
            n_classes = max(int(read_label_raster(label).max()) + 1 for _, label in pairs)

            def load_folder(k: int) -> EvalSample:
                sample = folder_eval_sample(*pairs[k], bands)
                rgb, labels = centre_crop_resize(sample.rgb, sample.labels, resolution)
                return EvalSample(sample.name, rgb, labels)

            description = {"dataset": "folder", "root": str(data), "split": "all", "resolution": resolution,
                           "images": [_file_digest(image) for image, _ in pairs]}
            return cls(description, load_folder, len(pairs), max(n_classes, 1),
                       frozenset(image_key(image) for image, _ in pairs))
        raise SegUnifyError(f"Validation data '{data}' is neither a Potsdam folder nor a folder with images/ and "
                            "labels/; point the validation data (--val) at one of those.")


class Validator:
    """Scores a model on cached validation features: flip-averaged codes, teacher logits,
    argmax (no CRF), one confusion matrix and one Hungarian assignment, like `evaluate`."""

    def __init__(self, data: ValidationData, backbone, backbone_weights: str | None, cache_dir: Path,
                 device: torch.device, progress: Progress | None = None):
        from .feature_cache import build_cache

        self.data, self.device = data, device
        resolution = int(data.description["resolution"])
        patch = backbone.patch_size
        self.size = resolution + (-resolution) % patch  # the window padded to whole patches
        labels: list[np.ndarray] = []

        def read(k: int) -> np.ndarray:
            sample = data.load(k)
            labels.append(sample.labels.astype(np.int16))
            padded, _ = pad_to_patch(torch.from_numpy(np.ascontiguousarray(sample.rgb))[None], patch)
            return padded[0].numpy()

        identity = {"validation": data.description, "backbone": backbone.spec.timm_name, "patch": patch,
                    "weights": str(Path(backbone_weights).resolve()) if backbone_weights else "hub",
                    "precision": backbone.precision}
        if backbone.normalization != IMAGENET:  # keeps the keys of existing ImageNet-normalised caches
            identity["normalization"] = backbone.normalization.to_metadata()
        key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]
        folder = Path(cache_dir) / f"val-{key}"
        self.cache = build_cache(folder, data.count, read, self.size, backbone, flip=True, device=device,
                                 progress=progress, phase="validation features")
        if len(labels) != data.count:  # the features came from an earlier run: read the labels only
            labels = [data.load(k).labels.astype(np.int16) for k in range(data.count)]
        self.labels = labels

    def score(self, model: SegUnifyModel, batch_size: int = 16) -> Scores:
        n_clusters, n_classes = model.config.n_clusters, self.data.n_classes
        confusion = np.zeros((n_clusters, n_classes), np.int64)
        was_training = model.training
        model.eval()
        resolution = int(self.data.description["resolution"])
        with torch.inference_mode():
            for start in range(0, len(self.cache), batch_size):
                stop = min(len(self.cache), start + batch_size)
                feats = torch.from_numpy(self.cache.features[start:stop].astype(np.float32)).to(self.device)
                code = codes_from_features(model, feats)
                log_probs = model.log_probs_from_code(code, (self.size, self.size))
                pred = log_probs[..., :resolution, :resolution].argmax(1).cpu().numpy()
                for k, p in zip(range(start, stop), pred, strict=True):
                    confusion += confusion_matrix(p, self.labels[k], n_clusters, n_classes)
        model.train(was_training)
        return hungarian_scores(confusion)
