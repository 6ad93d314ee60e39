"""Classification metrics, written the same way by every classifier: top-1 accuracy overall and
class-balanced (the mean of per-class accuracies), per-class accuracy and the confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confusion_matrix(targets: Sequence[int], predictions: Sequence[int], num_classes: int) -> np.ndarray:
    """counts[t, p] = number of images of true class t predicted as p."""
    targets = np.asarray(targets, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    if targets.shape != predictions.shape:
        raise ValueError(f"{targets.shape[0]} targets but {predictions.shape[0]} predictions")
    for what, values in (("target", targets), ("prediction", predictions)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"a {what} label is outside 0..{num_classes - 1}")
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (targets, predictions), 1)
    return counts


def classification_metrics(
    targets: Sequence[int], predictions: Sequence[int], class_names: Sequence[str]
) -> dict:
    """Metrics as a JSON-ready dict.

    `top1` is the fraction of images classified correctly; `balanced_top1` averages the per-class
    accuracies over the classes that have test images (so a large class does not dominate);
    `per_class[name]` is None for a class with no test image.
    """
    counts = confusion_matrix(targets, predictions, len(class_names))
    support = counts.sum(axis=1)
    correct = np.diag(counts)
    total = int(support.sum())
    per_class = {
        name: (float(correct[i] / support[i]) if support[i] else None) for i, name in enumerate(class_names)
    }
    present = [acc for acc in per_class.values() if acc is not None]
    return {
        "num_images": total,
        "top1": float(correct.sum() / total) if total else 0.0,
        "balanced_top1": float(np.mean(present)) if present else 0.0,
        "per_class": per_class,
        "support": {name: int(support[i]) for i, name in enumerate(class_names)},
        "classes": list(class_names),
        "confusion": counts.tolist(),
    }
