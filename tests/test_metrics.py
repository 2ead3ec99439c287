"""The metric against a brute-force search over cluster-to-class assignments."""

import itertools

import numpy as np
import pytest

from segunify_core.training.metrics import confusion_matrix, hungarian_scores


def brute_force(conf: np.ndarray) -> tuple[int, dict]:
    n_clusters, n_classes = conf.shape
    best, best_map = -1, None
    for clusters in itertools.permutations(range(n_clusters), n_classes):  # class c <- cluster clusters[c]
        matched = sum(conf[k, c] for c, k in enumerate(clusters))
        if matched > best:
            best, best_map = matched, {k: c for c, k in enumerate(clusters)}
    return best, best_map


def iou_from_map(conf, mapping):
    n_classes = conf.shape[1]
    ious = []
    for c in range(n_classes):
        k = next(k for k, v in mapping.items() if v == c)
        tp = conf[k, c]
        fp = conf[k].sum() - tp
        fn = conf[:, c].sum() - tp
        ious.append(tp / (tp + fp + fn))
    return ious


@pytest.mark.parametrize("n_clusters,n_classes", [(3, 3), (4, 4), (5, 3), (6, 4)])
def test_hungarian_matches_brute_force(n_clusters, n_classes):
    rng = np.random.default_rng(n_clusters * 10 + n_classes)
    for _ in range(25):
        conf = rng.integers(0, 1000, (n_clusters, n_classes))
        scores = hungarian_scores(conf)
        best, mapping = brute_force(conf)
        assert scores.accuracy == pytest.approx(best / conf.sum())
        assert sorted(scores.assignment.values()) == list(range(n_classes))
        # random integer matrices have a unique optimum almost surely: same assignment, same IoUs
        assert scores.assignment == mapping
        assert scores.per_class_iou == pytest.approx(iou_from_map(conf, mapping))
        assert scores.miou == pytest.approx(np.mean(iou_from_map(conf, mapping)))
        assert len(scores.unmatched_clusters) == n_clusters - n_classes


def test_hand_example():
    clusters = np.array([0, 0, 1, 1, 2, 2, 2, 0])
    labels = np.array([1, 1, 0, 0, 2, 2, -1, 0])  # -1 ignored
    conf = confusion_matrix(clusters, labels, 3, 3)
    assert conf.tolist() == [[1, 2, 0], [2, 0, 0], [0, 0, 2]]
    s = hungarian_scores(conf)
    assert s.assignment == {0: 1, 1: 0, 2: 2}
    assert s.accuracy == pytest.approx(6 / 7)
    # class 0: tp 2, fp 0, fn 1 -> 2/3; class 1: tp 2, fp 1, fn 0 -> 2/3; class 2: 1
    assert s.per_class_iou == pytest.approx([2 / 3, 2 / 3, 1.0])


def test_invariant_to_relabelling():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 5000)
    clusters = np.where(rng.random(5000) < 0.7, labels, rng.integers(0, 6, 5000))
    base = hungarian_scores(confusion_matrix(clusters, labels, 6, 4))
    for _ in range(5):
        perm = rng.permutation(6)
        other = hungarian_scores(confusion_matrix(perm[clusters], labels, 6, 4))
        assert other.accuracy == pytest.approx(base.accuracy)
        assert other.miou == pytest.approx(base.miou)
        assert other.per_class_iou == pytest.approx(base.per_class_iou)


def test_unmatched_clusters_count_as_errors():
    conf = np.array([[10, 0], [0, 10], [5, 5]])
    s = hungarian_scores(conf)
    assert s.unmatched_clusters == [2]
    assert s.accuracy == pytest.approx(20 / 30)
    assert s.per_class_iou == pytest.approx([10 / 15, 10 / 15])
