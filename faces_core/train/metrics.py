"""Classification metrics from confusion matrices (no scikit-learn needed).

Macro-F1 follows scikit-learn's default: the mean F1 over the classes that occur in the
labels or the predictions, so a class that is predicted but never present counts as 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from faces_core.train.dataset import IGNORE_INDEX


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, classes: int) -> np.ndarray:
    """Counts ``[true, predicted]`` over faces whose label is not IGNORE_INDEX (int64 ``[C, C]``)."""
    keep = labels != IGNORE_INDEX
    flat = labels[keep].astype(np.int64) * classes + predictions[keep].astype(np.int64)
    return np.bincount(flat, minlength=classes * classes).reshape(classes, classes)


def per_class(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F1 and support per class (0 where undefined)."""
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    support = cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return precision, recall, f1, support


def accuracy(cm: np.ndarray) -> float:
    """Share of labelled faces predicted right (nan when there are none)."""
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


def macro_f1(cm: np.ndarray) -> float:
    """Mean F1 over classes present in labels or predictions (nan when there are none)."""
    _, _, f1, support = per_class(cm)
    present = (support > 0) | (cm.sum(axis=0) > 0)
    return float(f1[present].mean()) if present.any() else float("nan")


def head_report(cm: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class precision/recall/F1/support of one attribute."""
    precision, recall, f1, support = per_class(cm)
    return {
        "labelled": int(cm.sum()),
        "accuracy": accuracy(cm),
        "macro_f1": macro_f1(cm),
        "classes": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(classes)
        },
    }


def majority_floor(cm: np.ndarray) -> tuple[float, float]:
    """(accuracy, macro-F1) of always answering the most frequent true class of ``cm``.

    A head is only worth publishing when it beats this: a collapsed head that calls every
    face "male" scores exactly the floor, however high its accuracy looks on a lopsided set.
    """
    support = cm.sum(axis=1)
    if not support.sum():
        return float("nan"), float("nan")
    constant = np.zeros_like(cm)
    constant[:, int(np.argmax(support))] = support
    return accuracy(constant), macro_f1(constant)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """ECE of the top-class probability: the share-weighted gap between confidence and accuracy.

    Faces are put in ``bins`` equal-width confidence bins; a well calibrated head is right
    about 90 % of the time on the faces it gives 0.9. nan when there are no faces.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if confidence.size == 0:
        return float("nan")
    index = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    total = 0.0
    for b in np.unique(index):
        mask = index == b
        total += mask.sum() * abs(float(correct[mask].mean()) - float(confidence[mask].mean()))
    return total / confidence.size
