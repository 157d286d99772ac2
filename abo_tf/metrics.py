"""Classification metrics, macro-averaged first (ABO's classes are extremely long-tailed).

The trainer, `abo_tf.evaluate` and the scikit-learn baselines all report through
these functions, so their numbers are comparable.
"""

import numpy as np
from sklearn import metrics as sk_metrics


def top_k_accuracy(labels, probabilities, k=5):
    """Fraction of examples whose label is among the k highest scores."""
    probabilities = np.asarray(probabilities)
    if len(labels) == 0:
        return float("nan")
    k = min(k, probabilities.shape[1])
    top = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == np.asarray(labels)[:, None], axis=1)))


def classification_metrics(labels, predictions, probabilities=None, num_classes=None):
    """Accuracy, macro and weighted precision/recall/F1 (and top-5 with probabilities).

    Classes absent from both `labels` and `predictions` are left out of the
    macro averages (an empty class has no recall to average).

    Args:
      labels: true labels, ints.
      predictions: predicted labels, ints.
      probabilities: optional [N, C] scores, for top-5 accuracy.
      num_classes: size of the label space, to validate the inputs.

    Returns:
      A dict of floats.
    """
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    if num_classes is not None and len(labels) and (max(labels.max(), predictions.max()) >= num_classes or min(labels.min(), predictions.min()) < 0):
        raise ValueError(f"labels must be in [0, {num_classes})")
    present = np.union1d(labels, predictions)
    result = {"num_examples": int(len(labels)), "accuracy": float(np.mean(labels == predictions)) if len(labels) else float("nan")}
    for average in ("macro", "weighted"):
        precision, recall, f1, _ = sk_metrics.precision_recall_fscore_support(labels, predictions, labels=present, average=average, zero_division=0)
        result.update({f"{average}_precision": float(precision), f"{average}_recall": float(recall), f"{average}_f1": float(f1)})
    if probabilities is not None:
        result["top5_accuracy"] = top_k_accuracy(labels, probabilities, 5)
    return result
