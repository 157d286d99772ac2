"""Classification metrics, macro-averaged first (ABO's classes are extremely long-tailed).

The trainer, `abo_tf.evaluate` and the scikit-learn baselines all report through
these functions, so their numbers are comparable.
"""

import functools
import math

import numpy as np
from sklearn import metrics as sk_metrics

from abo_tf.common import options
from abo_tf.common.errors import UserInputError
from abo_tf.records import shards
from abo_tf.reports import figures

STRATA = ("head", "torso", "tail")
# Class frequency strata, in training examples: head >= HEAD_MIN, tail < TAIL_BELOW. Every report (analyze,
# evaluate, the trainer's metrics, the baselines, the model card) counts them with `train_counts`.
HEAD_MIN, TAIL_BELOW = 1000, 100
STRATA_GROUP = "frequency strata (training examples per class, as the build's train split holds them)"


def head_min_option():
    """The `--head-min` option of every command that reports strata."""
    return options.option(
        HEAD_MIN, help="head: at least this many", minimum=1, maximum=options.MAX_COUNT, group=STRATA_GROUP
    )


def tail_below_option():
    """The `--tail-below` option of every command that reports strata."""
    return options.option(
        TAIL_BELOW, help="tail: fewer than this many", minimum=0, maximum=options.MAX_COUNT, group=STRATA_GROUP
    )


def check_strata_options(head_min, tail_below):
    """The one-line error of thresholds out of order (`__post_init__` of the commands above)."""
    if tail_below > head_min:
        raise UserInputError(
            f"--tail-below {tail_below} is above --head-min {head_min}: the torso would be empty and inverted"
        )


def train_counts(manifest, class_names=None):
    """Training examples of each class (default: the build's classes, in label order): what the strata count."""
    return np.array(shards.examples_per_class(manifest, "train", class_names), dtype=np.int64)


CALIBRATION_BINS = 15  # equal-width confidence bins, as in Guo et al. 2017


def top_k_hits(labels, probabilities, k=5):
    """Whether each example's label is among its k highest scores: bool [N]."""
    probabilities = np.asarray(probabilities)
    if len(labels) == 0:
        return np.zeros(0, bool)
    k = min(k, probabilities.shape[1])
    top = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return np.any(top == np.asarray(labels)[:, None], axis=1)


def top_k_accuracy(labels, probabilities, k=5):
    """Fraction of examples whose label is among the k highest scores."""
    return float(np.mean(top_k_hits(labels, probabilities, k))) if len(labels) else float("nan")


def classification_metrics(labels, predictions, probabilities=None, num_classes=None):
    """Accuracy, macro and weighted precision/recall/F1 (and top-5 with probabilities).

    Macro averages are over the declared classes present in `labels` (those
    with support), never over labels and predictions together: a class the
    split lacks has no recall to average. A prediction of such a class is a
    mistake all the same: it costs the true class its recall, and the
    predicted class's precision (0, in `per_class_metrics`) shows it.

    Args:
      labels: true labels, ints.
      predictions: predicted labels, ints.
      probabilities: optional [N, C] scores, for top-5 accuracy.
      num_classes: size of the label space, to validate the inputs.

    Returns:
      A dict of floats, with "macro_classes" (the classes averaged) and
      "predicted_without_support" (classes predicted that the labels lack).
    """
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    if (
        num_classes is not None
        and len(labels)
        and (max(labels.max(), predictions.max()) >= num_classes or min(labels.min(), predictions.min()) < 0)
    ):
        raise ValueError(f"labels must be in [0, {num_classes})")
    present = np.unique(labels)
    result = {
        "num_examples": int(len(labels)),
        "macro_classes": int(len(present)),
        "predicted_without_support": int(len(np.setdiff1d(predictions, present))),
        "accuracy": float(np.mean(labels == predictions)) if len(labels) else float("nan"),
    }
    for average in ("macro", "weighted"):
        precision, recall, f1, _ = sk_metrics.precision_recall_fscore_support(
            labels, predictions, labels=present, average=average, zero_division=0
        )
        result.update(
            {f"{average}_precision": float(precision), f"{average}_recall": float(recall), f"{average}_f1": float(f1)}
        )
    if probabilities is not None:
        result["top5_accuracy"] = top_k_accuracy(labels, probabilities, 5)
    return result


def per_class_metrics(labels, predictions, class_names, train_counts=None, head_min=HEAD_MIN, tail_below=TAIL_BELOW):
    """Support, precision, recall and F1 of every class, as a DataFrame (one row per class).

    `in_macro_average` says which classes have support in the split (the
    others, even when predicted, are outside the macro averages). With
    `train_counts` (training examples per class) the frame also has
    `train_examples` and `stratum` columns.
    """
    import pandas as pd

    indices = list(range(len(class_names)))
    precision, recall, f1, support = sk_metrics.precision_recall_fscore_support(
        labels, predictions, labels=indices, zero_division=0
    )
    frame = pd.DataFrame(
        {
            "class": list(class_names),
            "support": support,
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "in_macro_average": support > 0,
        }
    )
    if train_counts is not None:
        frame["train_examples"] = np.asarray(train_counts, dtype=np.int64)
        frame["stratum"] = frequency_strata(train_counts, head_min, tail_below)
    return frame


def frequency_strata(train_counts, head_min=HEAD_MIN, tail_below=TAIL_BELOW):
    """The stratum of each class: "head" (>= head_min training examples), "torso", or "tail" (< tail_below).

    Raises:
      ValueError: thresholds out of order.
    """
    if not 0 <= tail_below <= head_min:
        raise ValueError(
            f"stratum thresholds need 0 <= tail_below <= head_min, got tail_below={tail_below}, head_min={head_min}"
        )
    counts = np.asarray(train_counts)
    return np.where(counts >= head_min, "head", np.where(counts >= tail_below, "torso", "tail"))


def strata_metrics(labels, predictions, strata, probabilities=None):
    """Accuracy and macro precision/recall/F1 within each frequency stratum.

    Accuracy (and top-5) is over the examples whose true class is in the
    stratum. Precision, recall and F1 are each class's, computed on the whole
    split (so a tail example predicted as a head class costs that head class
    precision), then averaged over the stratum's classes present in labels,
    like `classification_metrics`.

    Args:
      labels, predictions: ints.
      strata: the stratum name of every class, from `frequency_strata`.
      probabilities: optional [N, C] scores, for top-5 accuracy.

    Returns:
      Dict stratum -> {"num_classes", "num_examples", "accuracy", "macro_precision", ...};
      a stratum without classes in the split has num_examples 0 and NaN figures.
    """
    labels, predictions, strata = np.asarray(labels), np.asarray(predictions), np.asarray(strata)
    present = np.unique(labels)
    precision, recall, f1, _ = sk_metrics.precision_recall_fscore_support(
        labels, predictions, labels=present, zero_division=0
    )
    result = {}
    for stratum in STRATA:
        in_stratum = strata[present] == stratum
        examples = strata[labels] == stratum if len(labels) else np.zeros(0, bool)
        entry = {
            "num_classes": int(np.sum(strata == stratum)),
            "num_examples": int(examples.sum()),
            "accuracy": float(np.mean(labels[examples] == predictions[examples])) if examples.any() else float("nan"),
        }
        for name, values in (("precision", precision), ("recall", recall), ("f1", f1)):
            entry[f"macro_{name}"] = float(np.mean(values[in_stratum])) if in_stratum.any() else float("nan")
        if probabilities is not None:
            entry["top5_accuracy"] = top_k_accuracy(labels[examples], np.asarray(probabilities)[examples], 5)
        result[stratum] = entry
    return result


def calibration_table(labels, probabilities, num_bins=CALIBRATION_BINS):
    """Reliability of the top-1 confidence in equal-width bins (lower, upper].

    Returns:
      DataFrame with bin_lower, bin_upper, count, confidence (mean top-1
      probability) and accuracy per bin; empty bins have NaN means.
    """
    import pandas as pd

    probabilities = np.asarray(probabilities, dtype=np.float64)
    confidence = probabilities.max(axis=1) if len(probabilities) else np.zeros(0)
    correct = probabilities.argmax(axis=1) == np.asarray(labels) if len(probabilities) else np.zeros(0, bool)
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    bins = np.searchsorted(edges[1:-1], confidence, side="left")
    count = np.bincount(bins, minlength=num_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(bins, confidence, num_bins) / count
        accuracy = np.bincount(bins, correct.astype(np.float64), num_bins) / count
    return pd.DataFrame(
        {
            "bin_lower": edges[:-1],
            "bin_upper": edges[1:],
            "count": count,
            "confidence": mean_confidence,
            "accuracy": accuracy,
        }
    )


def expected_calibration_error(labels, probabilities, num_bins=CALIBRATION_BINS):
    """ECE: sum over bins of (bin share of examples) x |accuracy - mean confidence|."""
    table = calibration_table(labels, probabilities, num_bins)
    total = table["count"].sum()
    if total == 0:
        return float("nan")
    filled = table[table["count"] > 0]
    return float(np.sum(filled["count"] / total * np.abs(filled["accuracy"] - filled["confidence"])))


def format_figure(value, digits=3):
    """A figure for a report table: floats to `digits` places, None or NaN as "n/a", anything else as is."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def figure_with_interval(entry, name):
    """`entry[name]` with its interval from `entry["intervals"]`, when there is one."""
    from abo_tf.reports import bootstrap

    return bootstrap.format_interval(entry.get(name), (entry.get("intervals") or {}).get(name))


def format_summary(result, name):
    """A few console lines for one split's `evaluation_metrics`: the main figures, then each stratum ("n/a" when empty).

    Figures with a bootstrap interval read `0.812 [0.790, 0.833]`.

    Args:
      result: an `evaluation_metrics` dict (NaN or None for figures without examples).
      name: what was measured, e.g. the split.

    Returns:
      A string of 1 + len(STRATA) lines, and one naming the bootstrap when there are intervals.
    """
    figure = functools.partial(figure_with_interval, result)
    lines = [
        f"{name}: {result['num_examples']} images, macro F1 {figure('macro_f1')}, "
        f"accuracy {figure('accuracy')}, top-5 {figure('top5_accuracy')}, "
        f"ECE {format_figure(result.get('expected_calibration_error'))}"
    ]
    for stratum in STRATA:
        entry = result["strata"][stratum]
        lines.append(
            f"  {stratum:<5} {entry['num_classes']:>4} classes {entry['num_examples']:>7} images: "
            f"macro F1 {figure_with_interval(entry, 'macro_f1')}, accuracy {figure_with_interval(entry, 'accuracy')}"
        )
    if result.get("bootstrap"):
        lines.append(f"  [95% intervals: {interval_note(result['bootstrap'])}]")
    return "\n".join(lines)


def interval_note(settings):
    """How the intervals of a metrics dict were drawn, from its "bootstrap" entry, in a few words."""
    return (
        f"bootstrap over {settings['clusters']} items ({settings['unit']}), "
        f"{settings['samples']} resamples, seed {settings['seed']}"
        # Runs written before the resampling was stratified have no "strata": say nothing rather than guess.
        + (f", stratified by {settings['strata']}" if settings.get("strata") else "")
    )


def evaluation_metrics(
    labels,
    predictions,
    scores,
    train_counts,
    head_min=HEAD_MIN,
    tail_below=TAIL_BELOW,
    calibrated=True,
    num_bins=CALIBRATION_BINS,
    groups=None,
    bootstrap_samples=None,
    seed=0,
):
    """Everything `abo_tf.evaluate` reports, in one dict; the baselines report the same.

    Args:
      labels, predictions: ints.
      scores: [N, C] class scores (probabilities, or any ranking for top-5).
      train_counts: training examples of each class, for the strata.
      head_min, tail_below: stratum thresholds.
      calibrated: whether `scores` are probabilities; if not, no ECE.
      num_bins: calibration bins.
      groups: the item of every image (`schema.ITEM_ID`), the bootstrap's unit; None: no intervals.
      bootstrap_samples: resamples behind the intervals (None: `bootstrap.DEFAULT_SAMPLES`; 0: no intervals).
      seed: seeds the resamples.

    Returns:
      `classification_metrics` plus "expected_calibration_error" (or None),
      "strata" and "strata_thresholds"; with intervals also "intervals"
      ({figure: [low, high]}, in every stratum's entry too) and "bootstrap"
      (how they were drawn, `bootstrap.settings`).
    """
    from abo_tf.reports import bootstrap

    strata = frequency_strata(train_counts, head_min, tail_below)
    result = classification_metrics(labels, predictions, scores, len(train_counts))
    result["expected_calibration_error"] = expected_calibration_error(labels, scores, num_bins) if calibrated else None
    result["strata"] = strata_metrics(labels, predictions, strata, scores)
    result["strata_thresholds"] = {"head_min": head_min, "tail_below": tail_below}
    samples = bootstrap.DEFAULT_SAMPLES if bootstrap_samples is None else bootstrap_samples
    if groups is not None and samples and len(labels):
        scored = bootstrap.Scored(labels, predictions, top_k_hits(labels, scores, 5), groups)
        overall, by_stratum, settings = bootstrap.intervals(scored, len(train_counts), strata, samples, seed)
        result["intervals"], result["bootstrap"] = overall, settings
        for stratum, entry in result["strata"].items():
            entry["intervals"] = by_stratum.get(stratum, {})
    return result


def metrics_without(
    labels, predictions, scores, train_counts, keep, groups=None, bootstrap_samples=None, seed=0, **options
):
    """`evaluation_metrics` of the images in `keep` (e.g. without near-duplicates of training images), compared.

    Args:
      labels, predictions, scores, train_counts, groups, bootstrap_samples, seed: as `evaluation_metrics`, for
        every image of the split.
      keep: bool [N], the images kept.
      **options: the other options of `evaluation_metrics`.

    Returns:
      The kept images' metrics, with "num_excluded" and, with intervals,
      "difference_with_excluded": all images minus the kept ones, per figure,
      with its paired interval (`bootstrap.paired_differences`, the same items
      drawn for both).
    """
    from abo_tf.reports import bootstrap

    labels, predictions, scores, keep = (np.asarray(value) for value in (labels, predictions, scores, keep))
    kept_groups = None if groups is None else np.asarray(groups)[keep]
    result = evaluation_metrics(
        labels[keep],
        predictions[keep],
        scores[keep],
        train_counts,
        groups=kept_groups,
        bootstrap_samples=bootstrap_samples,
        seed=seed,
        **options,
    )
    result["num_excluded"] = int((~keep).sum())
    if "bootstrap" in result:
        hits = top_k_hits(labels, scores, 5)
        every = bootstrap.Scored(labels, predictions, hits, np.asarray(groups))
        kept = bootstrap.Scored(labels[keep], predictions[keep], hits[keep], kept_groups)
        result["difference_with_excluded"] = bootstrap.paired_differences(
            every, kept, len(train_counts), result["bootstrap"]["samples"], seed
        )
    return result


ALL_OTHERS = "all others"


def f1_chart_order(class_names, support, train_counts=None):
    """Class indices in the per-class F1 chart's order: most training examples first (else most support), by name."""
    counts = support if train_counts is None else np.asarray(train_counts)
    return sorted(range(len(class_names)), key=lambda index: (-counts[index], class_names[index]))


def confusion_matrix_top(labels, predictions, class_names, top_n=20, train_counts=None):
    """Confusion counts over at most `top_n` classes, in the per-class F1 chart's order (`f1_chart_order`).

    When every class of the split (true or predicted) fits, they are all shown and there is no "all others".
    Otherwise the classes of the most frequent mistakes (`confused_pairs`, in order) are shown, topped up with
    the most frequent classes, and the rest is pooled as "all others": at 576 classes the matrix shows where
    the mistakes are, not the 20 largest classes being right.

    Returns:
      `(matrix, names)`: int64 counts [K, K] (rows: true class, columns: predicted), their class names (the
      last "all others" when classes were pooled).
    """
    labels, predictions = np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)
    support = np.bincount(labels, minlength=len(class_names))
    present = np.union1d(np.flatnonzero(support), predictions)
    if len(present) <= top_n:
        shown = present.tolist()
    else:
        pairs = confused_pairs(labels, predictions, class_names)
        index = {name: position for position, name in enumerate(class_names)}
        candidates = [index[name] for pair in zip(pairs["true_class"], pairs["predicted_class"]) for name in pair]
        candidates += np.argsort(-support, kind="stable").tolist()
        shown = list(dict.fromkeys(candidates))[:top_n]
    shown = [index for index in f1_chart_order(class_names, support, train_counts) if index in set(shown)]
    pooled = len(shown) < len(present)
    position = np.full(len(class_names), len(shown))
    position[shown] = np.arange(len(shown))
    size = len(shown) + pooled
    matrix = np.zeros((size, size), dtype=np.int64)
    np.add.at(matrix, (position[labels], position[predictions]), 1)
    return matrix, [class_names[index] for index in shown] + ([ALL_OTHERS] if pooled else [])


def confused_pairs(labels, predictions, class_names):
    """Every (true class, predicted class) pair of mistakes, most frequent first.

    What scales to hundreds of classes, where a full confusion matrix is unreadable.

    Returns:
      DataFrame with true_class, predicted_class, count and share (of the true
      class's examples), sorted by count (descending), then by the two names.
    """
    import pandas as pd

    labels, predictions = np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)
    support = np.bincount(labels, minlength=len(class_names))
    wrong = labels != predictions
    pairs, counts = np.unique(np.stack([labels[wrong], predictions[wrong]], axis=1), axis=0, return_counts=True)
    pairs = pairs.reshape(-1, 2)
    frame = pd.DataFrame(
        {
            "true_class": [class_names[index] for index in pairs[:, 0]],
            "predicted_class": [class_names[index] for index in pairs[:, 1]],
            "count": counts.astype(np.int64),
            "share": counts / np.maximum(support[pairs[:, 0]], 1),
        }
    )
    ordered = frame.sort_values(
        ["count", "true_class", "predicted_class"], ascending=[False, True, True], kind="stable"
    )
    return ordered.reset_index(drop=True)


STRATUM_COLOURS = {"head": "tab:blue", "torso": "tab:orange", "tail": "tab:red"}
# Above this many classes a bar per class is a strip nobody can read (576 classes: 3300 x 495 px).
MAX_BAR_CHART_CLASSES = 40


def plot_confusion_matrix(matrix, names, path, title=None):
    """Saves a confusion matrix (counts, from `confusion_matrix_top`) as a PNG: each cell's count written in it,
    coloured by its share of the row (the true class), so a small class's mistakes show as much as a large one's."""
    plt = figures.pyplot()
    matrix = np.asarray(matrix)
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
    size = max(5.0, 0.4 * len(names) + 2.5)
    figure, axis = plt.subplots(figsize=(size + 1.5, size))
    image = axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fontsize = 8 if len(names) <= 15 else 6
    for (row, column), count in np.ndenumerate(matrix):
        if count:
            colour = "white" if shares[row, column] > 0.6 else "black"
            axis.text(column, row, str(count), ha="center", va="center", fontsize=fontsize, color=colour)
    axis.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    axis.set_yticks(range(len(names)), names, fontsize=7)
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class (most training examples first)")
    axis.set_title(title or f"confusion matrix: image counts ({int(matrix.sum())} images)")
    figure.colorbar(image, ax=axis, fraction=0.046, label="share of the true class's images")
    return figures.save(figure, path)


def plot_per_class_f1(per_class, path):
    """F1 per class: a bar per class up to `MAX_BAR_CHART_CLASSES`, else F1 against training examples.

    Args:
      per_class: a `per_class_metrics` frame with train_examples and stratum.
      path: the PNG to write.
    """
    if len(per_class) > MAX_BAR_CHART_CLASSES:
        return _plot_f1_against_training_examples(per_class, path)
    plt = figures.pyplot()
    order = f1_chart_order(per_class["class"].tolist(), per_class["support"].to_numpy(), per_class["train_examples"])
    frame = per_class.iloc[order]
    figure, axis = plt.subplots(figsize=(max(6.0, 0.22 * len(frame) + 2), 4.5))
    axis.bar(range(len(frame)), frame["f1"], color=[STRATUM_COLOURS[name] for name in frame["stratum"]], width=0.85)
    for position, support in enumerate(frame["support"]):  # how many images each F1 stands on
        axis.text(position, 1.02, str(support), ha="center", va="bottom", fontsize=6, rotation=90)
    axis.set_xticks(range(len(frame)), frame["class"], rotation=90, fontsize=7)
    axis.legend(*_stratum_legend(plt, frame["stratum"]), title="stratum", fontsize=8, ncol=3, loc="upper right")
    axis.set_ylim(0, 1.35)  # room for the support labels and the legend above the bars
    axis.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    axis.set_ylabel("F1")
    axis.set_xlabel("class, most training examples first (number above a bar: its images in the split)")
    axis.set_title("F1 per class")
    return figures.save(figure, path)


def _stratum_legend(plt, strata):
    """Legend handles and names of the strata present in `strata`, in STRATA order."""
    present = [name for name in STRATA if name in set(strata)]
    return [plt.Rectangle((0, 0), 1, 1, color=STRATUM_COLOURS[name]) for name in present], present


def _plot_f1_against_training_examples(per_class, path):
    """One point per class present in the split: does F1 follow the number of training examples?"""
    plt = figures.pyplot()
    frame = per_class[per_class["support"] > 0]
    figure, axis = plt.subplots(figsize=(7.5, 4.5))
    colours = [STRATUM_COLOURS[name] for name in frame["stratum"]]
    # The point's area follows its support: an F1 on 2 images is a small dot, one on 200 a large one.
    sizes = 6 + 60 * np.sqrt(frame["support"] / max(frame["support"].max(), 1))
    axis.scatter(frame["train_examples"], frame["f1"], s=sizes, alpha=0.6, c=colours)
    # symlog: log above 1 training example, linear below, so classes with none still show (at 0).
    axis.set_xscale("symlog", linthresh=1)
    axis.set_xlim(left=0)
    axis.set_ylim(-0.03, 1.03)
    axis.set_xlabel("training examples (log scale)")
    axis.set_ylabel("F1")
    axis.set_title(
        f"F1 of the {len(frame)} classes in the split (of {len(per_class)}) against training examples\n"
        f"point area: the class's images in the split (1 to {frame['support'].max() if len(frame) else 0})",
        fontsize=10,
    )
    axis.legend(*_stratum_legend(plt, frame["stratum"]), title="stratum", fontsize=8, loc="lower right")
    axis.grid(alpha=0.3)
    return figures.save(figure, path)


def plot_reliability_diagram(table, ece, path, before=None):
    """Accuracy against confidence per bin (a `calibration_table`), with the diagonal and the ECE.

    `before`: (table, ece) of the same predictions before temperature scaling, drawn as a line over the bars.
    """
    plt = figures.pyplot()
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    centres = (table["bin_lower"] + table["bin_upper"]) / 2
    widths = table["bin_upper"] - table["bin_lower"]
    top.bar(centres, table["accuracy"].fillna(0), width=widths, edgecolor="black", alpha=0.8, label="accuracy")
    top.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    title = f"reliability (ECE {ece:.3f})"
    if before is not None:
        before_table, before_ece = before
        filled = before_table[before_table["count"] > 0]
        top.plot(filled["confidence"], filled["accuracy"], "o-", color="tab:red", label="before temperature")
        title = f"reliability (ECE {before_ece:.3f} before temperature, {ece:.3f} after)"
    top.set_ylabel("accuracy")
    top.set_title(title, fontsize=9 if before is not None else None)
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(centres, table["count"], width=widths, color="gray", edgecolor="black")
    bottom.set_xlabel("confidence (top-1 probability)")
    bottom.set_ylabel("examples")
    bottom.set_xlim(0, 1)
    return figures.save(figure, path)
