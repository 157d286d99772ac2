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


def per_class_metrics(labels, predictions, class_names):
    """Support, precision, recall and F1 of every class, as a DataFrame (one row per class)."""
    import pandas as pd

    indices = list(range(len(class_names)))
    precision, recall, f1, support = sk_metrics.precision_recall_fscore_support(labels, predictions, labels=indices, zero_division=0)
    return pd.DataFrame({"class": list(class_names), "support": support, "precision": precision, "recall": recall, "f1": f1})


def confusion_matrix_top(labels, predictions, class_names, top_n=20):
    """Row-normalised confusion matrix over the `top_n` most frequent true classes plus "all others".

    Returns:
      `(matrix, names)`: float array [K+1, K+1] (rows sum to 1 where a row has
      examples) and the K class names followed by "all others".
    """
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    counts = np.bincount(labels, minlength=len(class_names))
    top = [index for index in np.argsort(-counts, kind="stable")[:top_n] if counts[index] > 0]
    position = np.full(len(class_names), len(top))
    position[top] = np.arange(len(top))
    matrix = np.zeros((len(top) + 1, len(top) + 1))
    np.add.at(matrix, (position[labels], position[predictions]), 1)
    totals = matrix.sum(axis=1, keepdims=True)
    matrix = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
    return matrix, [class_names[index] for index in top] + ["all others"]


def plot_confusion_matrix(matrix, names, path, title="confusion matrix (rows: true class, normalised)"):
    """Saves a confusion-matrix heatmap as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(5.0, 0.35 * len(names) + 2)
    figure, axis = plt.subplots(figsize=(size + 1, size))
    image = axis.imshow(matrix, cmap="viridis", vmin=0, vmax=1)
    axis.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    axis.set_yticks(range(len(names)), names, fontsize=7)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title)
    figure.colorbar(image, ax=axis, fraction=0.046)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
