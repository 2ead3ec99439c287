"""Unsupervised segmentation metrics: one confusion matrix, one Hungarian assignment."""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.optimize import linear_sum_assignment


def confusion_matrix(clusters: np.ndarray, labels: np.ndarray, n_clusters: int, n_classes: int) -> np.ndarray:
    """Counts (n_clusters, n_classes) of predicted clusters against labels; labels < 0 ignored."""
    clusters = np.asarray(clusters).ravel()
    labels = np.asarray(labels).ravel()
    valid = (labels >= 0) & (labels < n_classes)
    idx = clusters[valid].astype(np.int64) * n_classes + labels[valid].astype(np.int64)
    return np.bincount(idx, minlength=n_clusters * n_classes).reshape(n_clusters, n_classes)


@dataclasses.dataclass
class Scores:
    accuracy: float
    miou: float
    per_class_iou: list[float]
    confusion_matrix: list[list[int]]  # clusters x classes, as accumulated
    assignment: dict[int, int]  # cluster -> class for the matched clusters
    unmatched_clusters: list[int]

    def as_dict(self) -> dict:
        return {
            "accuracy": self.accuracy, "miou": self.miou, "per_class_iou": self.per_class_iou,
            "confusion_matrix": self.confusion_matrix,
            "assignment": {str(k): v for k, v in self.assignment.items()},
            "unmatched_clusters": self.unmatched_clusters,
        }


def hungarian_scores(confusion: np.ndarray) -> Scores:
    """Match clusters to classes one-to-one maximising matched pixels (scipy's Hungarian solver).

    Accuracy = matched diagonal / valid pixels; IoU per class = TP / (TP + FP + FN) under the
    matching. With more clusters than classes, pixels of unmatched clusters count as errors
    (false negatives of their true class, false positives of no class). A class with no pixels
    and no prediction has IoU NaN and is left out of the mean.
    """
    confusion = np.asarray(confusion, dtype=np.int64)
    n_clusters, n_classes = confusion.shape
    rows, cols = linear_sum_assignment(confusion, maximize=True)
    assignment = {int(r): int(c) for r, c in zip(rows, cols, strict=True)}
    matched = np.zeros((n_classes, n_classes), np.int64)  # predicted class x true class
    for r, c in assignment.items():
        matched[c] = confusion[r]
    total = confusion.sum()
    tp = np.diag(matched).astype(np.float64)
    fp = matched.sum(1) - tp
    fn = confusion.sum(0) - tp  # includes pixels of unmatched clusters
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (tp + fp + fn)
    return Scores(
        accuracy=float(tp.sum() / total) if total else float("nan"),
        miou=float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        per_class_iou=[float(v) for v in iou],
        confusion_matrix=confusion.tolist(),
        assignment=assignment,
        unmatched_clusters=sorted(set(range(n_clusters)) - set(assignment)),
    )
