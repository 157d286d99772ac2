"""A baseline on validation and test: the metrics `abo_tf.evaluate` reports for a CNN, its reports, its speed."""

import os
from typing import NamedTuple

import numpy as np

from abo_tf.auditing import leakage
from abo_tf.classical import classifiers, report
from abo_tf.common import files
from abo_tf.reports import metrics, predictions_file

EVALUATED_SPLITS = ("validation", "test")


class SplitEvaluation(NamedTuple):
    """A baseline's results on one split."""

    metrics: dict  # `metrics.evaluation_metrics`
    predictions: np.ndarray  # int32 [N]
    top5_hits: np.ndarray  # bool [N]: the label among the 5 best scores (the scores, [N, C], are not kept)
    images_per_second: float  # the classifier alone, on cached features


def train_counts(splits):
    """Training examples of each class."""
    return np.bincount(splits["train"].labels, minlength=len(splits["train"].classes))


def evaluate(pipeline, splits, exclude=None, bootstrap_samples=None, seed=0, scored=None):
    """Metrics of validation and test, their predictions, and the classifier's images/s.

    The metrics are `abo_tf.evaluate`'s (`metrics.evaluation_metrics`: strata by
    training examples, ECE when the classifier gives probabilities, 95%
    intervals by item), so a baseline's metrics.json reads like a CNN's evaluation.

    Args:
      pipeline: a fitted Pipeline.
      splits: dict split -> `SplitFeatures`, with train, validation and test.
      exclude: an audit's near_duplicate_groups.csv (`--exclude`): each split's metrics then also hold
        "without_near_duplicates", the same metrics without its images that have a near-duplicate in train.
      bootstrap_samples: resamples behind the intervals (None: the default; 0: none).
      seed: seeds the resamples.
      scored: split -> `classifiers.Timed` of this pipeline computed before (the search's), not computed again.

    Returns:
      Dict split -> `SplitEvaluation`, for EVALUATED_SPLITS.
    """
    results, counts = {}, train_counts(splits)
    calibrated = classifiers.has_probabilities(pipeline)
    for name in EVALUATED_SPLITS:
        data = splits[name]
        (predictions, scores), seconds = (scored or {}).get(name) or classifiers.timed_scores(pipeline, data)
        common = {"groups": data.item_ids, "bootstrap_samples": bootstrap_samples, "seed": seed}
        result = metrics.evaluation_metrics(data.labels, predictions, scores, counts, calibrated=calibrated, **common)
        if exclude is not None:
            keep = leakage.kept_mask(data.image_ids, leakage.leaked_ids(exclude, name), name)
            result["without_near_duplicates"] = metrics.metrics_without(
                data.labels, predictions, scores, counts, keep, calibrated=calibrated, **common
            )
        hits = metrics.top_k_hits(data.labels, scores, 5)
        results[name] = SplitEvaluation(result, predictions, hits, len(data.labels) / max(seconds, 1e-9))
    return results


def metrics_by_split(evaluation):
    """{"validation": metrics, "test": metrics}: the contents of metrics.json."""
    return {name: result.metrics for name, result in evaluation.items()}


def end_to_end_rate(feature_rate, classifier_rate):
    """Images/s of features then classifier, one after the other."""
    return 1.0 / (1.0 / feature_rate + 1.0 / classifier_rate)


def write_reports(folder, splits, evaluation):
    """metrics.json, per_class.csv, test_predictions.csv, per_class_f1.png and confusion_matrix.png (test) into a
    baseline folder."""
    test, predictions = splits["test"], evaluation["test"].predictions
    files.write_json(os.path.join(folder, "metrics.json"), metrics_by_split(evaluation))
    hits = evaluation["test"].top5_hits
    predictions_file.write(folder, test.image_ids, test.item_ids, test.labels, predictions, hits, test.classes)
    counts = train_counts(splits)
    per_class = metrics.per_class_metrics(test.labels, predictions, test.classes, counts)
    files.write_csv(per_class, os.path.join(folder, "per_class.csv"))
    metrics.plot_per_class_f1(per_class, os.path.join(folder, report.PER_CLASS_F1_FIGURE))
    matrix, names = metrics.confusion_matrix_top(test.labels, predictions, test.classes, train_counts=counts)
    metrics.plot_confusion_matrix(matrix, names, os.path.join(folder, "confusion_matrix.png"))
