"""Evaluation on labelled data: the Potsdam-3 protocol or a folder of images and label rasters."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from .datasets import EvalSample, folder_pairs, potsdam_eval_samples, potsdam_root, read_label_raster
from .errors import SegUnifyError
from .inference import predict_labels
from .metrics import Scores, confusion_matrix, hungarian_scores
from .model import SegUnifyModel
from .raster_io import RasterReader


def _folder_samples(root: Path, bands) -> tuple[Iterable[EvalSample], int]:
    pairs = folder_pairs(root)
    classes = 0
    for _, label in pairs:
        labels = read_label_raster(label)
        classes = max(classes, int(labels.max()) + 1)

    def samples():
        for image, label in pairs:
            with RasterReader.open(image, bands) as reader:
                from rasterio.windows import Window

                rgb, valid = reader.read(Window(0, 0, reader.width, reader.height))
            labels = read_label_raster(label)
            if labels.shape != valid.shape:
                raise SegUnifyError(f"Label raster '{label}' is {labels.shape[1]} x {labels.shape[0]} px "
                                    f"but its image is {valid.shape[1]} x {valid.shape[0]}; they must match.")
            labels[~valid] = -1
            yield EvalSample(image.name, rgb, labels)

    return samples(), classes


def evaluate(model: SegUnifyModel, data: str | Path, split: str = "test", resolution: int = 224,
             crf=None, flip: bool = True, batch_size: int = 8, device: str = "cpu",
             progress: Callable[[int], None] | None = None) -> tuple[Scores, dict]:
    """Accumulate one confusion matrix over the data set, then score it with one assignment."""
    data = Path(data)
    root = potsdam_root(data)
    if root is not None:
        samples: Iterable[EvalSample] = potsdam_eval_samples(root, split, resolution)
        n_classes = 3
        protocol = {"dataset": "potsdam-3", "root": str(root), "split": split, "resolution": resolution}
    elif (data / "images").is_dir() and (data / "labels").is_dir():
        samples, n_classes = _folder_samples(data, model.config.bands)
        protocol = {"dataset": "folder", "root": str(data), "resolution": "native"}
    else:
        raise SegUnifyError(f"'{data}' is neither a Potsdam folder (imgs/, gt/, split lists) nor a "
                            "folder with images/ and labels/; point evaluate at one of those.")
    n_clusters = model.n_classes  # the legend's classes: merged clusters are scored as one
    confusion = np.zeros((n_clusters, n_classes), np.int64)
    model = model.to(device).eval()
    count = 0

    def flush(batch: list[EvalSample]) -> None:
        nonlocal confusion, count
        rgb = torch.from_numpy(np.stack([s.rgb for s in batch])).to(device)
        pred = predict_labels(model, rgb, flip, crf).cpu().numpy()
        for s, p in zip(batch, pred, strict=True):
            confusion += confusion_matrix(p, s.labels, n_clusters, n_classes)
        count += len(batch)
        if progress:
            progress(len(batch))

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
        raise SegUnifyError(f"No labelled images found in '{data}' for split '{split}'.")
    protocol["images"] = count
    return hungarian_scores(confusion), protocol
