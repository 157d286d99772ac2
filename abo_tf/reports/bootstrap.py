"""95% confidence intervals of the headline figures by a cluster bootstrap over items, and of paired differences.

The views of one product are correlated (same object, same background, often
the same mistake), so the resampled unit is the item, not the image: each
resample draws as many items as the split has, with replacement, and keeps all
the images of every item drawn. The item of an image is the records'
`item_id` (`schema.ITEM_ID`: the smallest item id among the listings showing
the image). Resampling images instead would treat five views of one chair as
five independent trials and give intervals too narrow.

Every figure of a resample is computed from per-class counts (support, true
positives, predictions, top-5 hits) summed over the items drawn: one sparse
[items, classes] matrix per count, multiplied by the [resamples, items]
matrix of how often each item was drawn. No metric is recomputed image by
image, so 1,000 resamples at 576 classes and 100k images take seconds.

The resampling is stratified by class: each resample draws, for every class,
as many items as the split has of that class, with replacement among them
(an item's class is the label most of its images carry, ties to the smaller
class index). This is how the split was drawn (`records.split` deals each
class's groups to the splits, a group counting as the class of most of its
images), and every class of the split is in every resample, so a macro
average is always over the same classes as the figure it brackets. Drawn
freely, a resample misses about a third of the classes held by one test item,
and those, mostly scored 0 at ABO's tail, drop out of its macro average: at
hundreds of such classes the whole interval came to lie above its own figure.
A one-item class adds no spread this way, as it added none before (its one
item is right or wrong in every resample that has it); what varies is the
items of the larger classes and every class's precision.

Intervals are percentile intervals (2.5th and 97.5th percentiles), the
resamples drawn by a `numpy.random.Generator` seeded with `seed`: the same
inputs and seed give the same intervals.
"""

from typing import NamedTuple

import numpy as np
from scipy import sparse

from abo_tf.common import options
from abo_tf.reports import metrics

DEFAULT_SAMPLES = 1000
CONFIDENCE = 0.95
UNIT = "item_id"  # the resampled unit, as metrics.json names it
STRATA = "class"  # items are resampled within their class
# Resamples drawn at once: the [chunk, items] weight matrix is 80 MB of float64 at 100k items.
_CHUNK = 100
FIGURES = ("accuracy", "macro_precision", "macro_recall", "macro_f1", "top5_accuracy")
_COUNTS = ("support", "true_positives", "predicted", "top5_hits")


def samples_option(group):
    """The `--bootstrap-samples` option of a command that writes a report."""
    return options.option(
        DEFAULT_SAMPLES,
        minimum=0,
        # 100,000 resamples at 100k items take about 13 minutes; the percentiles stop moving long before.
        maximum=100_000,
        group=group,
        help="bootstrap resamples of items behind each confidence interval; 0 = no intervals",
    )


class Scored(NamedTuple):
    """One system's results on a split, image by image."""

    labels: np.ndarray  # int [N], true classes
    predictions: np.ndarray  # int [N]
    top5_hits: np.ndarray | None  # bool [N]: the label is among the 5 best scores; None without scores
    groups: np.ndarray  # [N] the item of each image (any hashable ids, e.g. item_id strings)


def _check(scored):
    count = len(scored.labels)
    lengths = {len(scored.predictions), len(scored.groups)} | (
        {len(scored.top5_hits)} if scored.top5_hits is not None else set()
    )
    if lengths != {count}:
        raise ValueError(f"labels, predictions, top-5 hits and groups differ in length ({count} labels, {lengths})")


def _class_counts(scored, codes, num_clusters, num_classes):
    """Sparse float [clusters, 4 x classes]: support, true positives, predictions and top-5 hits per item and class."""
    labels, predictions = np.asarray(scored.labels, np.int64), np.asarray(scored.predictions, np.int64)
    correct = (labels == predictions).astype(np.float64)
    hits = np.zeros(len(labels)) if scored.top5_hits is None else np.asarray(scored.top5_hits, np.float64)
    columns = (labels, labels, predictions, labels)
    values = (np.ones(len(labels)), correct, np.ones(len(labels)), hits)
    rows = np.concatenate([codes] * len(_COUNTS))
    offset_columns = np.concatenate([column + index * num_classes for index, column in enumerate(columns)])
    shape = (num_clusters, len(_COUNTS) * num_classes)
    # Duplicate (item, class) entries are summed when the matrix is built: the per-item counts.
    return sparse.csr_matrix((np.concatenate(values), (rows, offset_columns)), shape=shape)


def _cluster_classes(labels, codes, num_clusters):
    """int [clusters]: the class of each item, the label most of its images carry (ties to the smaller class)."""
    pairs = np.unique(np.stack([codes, labels]), axis=1, return_counts=True)
    (cluster, label), count = pairs
    # Sorted by item, then by count descending, then by class: the first row of each item is its class.
    order = np.lexsort((label, -count, cluster))
    first = np.unique(cluster[order], return_index=True)[1]
    classes = np.zeros(num_clusters, np.int64)
    classes[cluster[order][first]] = label[order][first]
    return classes


def _first_views(systems, codes):
    """(labels, item codes) of the images that set each item's class: those of the first system holding the item.

    A paired comparison's second system may score a subset of the first's images: counted twice, they could
    outvote the rest of an item of mixed labels.
    """
    labels, kept_codes, seen = [], [], np.zeros(0, np.int64)
    for system, code in zip(systems, codes):
        new = ~np.isin(code, seen)
        labels.append(np.asarray(system.labels, np.int64)[new])
        kept_codes.append(code[new])
        seen = np.union1d(seen, code)
    return np.concatenate(labels), np.concatenate(kept_codes)


def _weight_chunks(cluster_classes, samples, seed):
    """[chunk, clusters] float arrays: how many times each item is drawn, `samples` rows in all.

    Each class's items are drawn as many times as the class has items, among themselves (the stratified
    bootstrap): a position of a class's block of the sorted items draws uniformly within that block.
    """
    num_clusters = len(cluster_classes)
    by_class = np.argsort(cluster_classes, kind="stable")
    _, starts, sizes = np.unique(cluster_classes[by_class], return_index=True, return_counts=True)
    block_start, block_size = np.repeat(starts, sizes), np.repeat(sizes, sizes)
    generator = np.random.default_rng(seed)
    for start in range(0, samples, _CHUNK):
        size = min(_CHUNK, samples - start)
        positions = block_start + (generator.random((size, num_clusters)) * block_size).astype(np.int64)
        draws = by_class[positions] + np.arange(size)[:, None] * num_clusters
        yield np.bincount(draws.ravel(), minlength=size * num_clusters).reshape(size, num_clusters).astype(np.float64)


def _ratio(numerator, denominator, empty):
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), empty)


def figures_from_counts(counts, num_classes, class_mask=None):
    """The headline figures of each row of summed counts.

    Args:
      counts: float [R, 4 x classes], support, true positives, predictions and top-5 hits per class (`_class_counts`
        summed over the items of each resample).
      num_classes: classes in the label space.
      class_mask: bool [classes], the classes of a stratum; None for all.

    Returns:
      Dict figure name (FIGURES) -> float [R]; NaN where the rows have no example (of the stratum).
    """
    support, true_positives, predicted, top5 = (
        counts[:, index * num_classes : (index + 1) * num_classes] for index in range(len(_COUNTS))
    )
    if class_mask is not None:
        support, true_positives, predicted, top5 = (
            part[:, class_mask] for part in (support, true_positives, predicted, top5)
        )
    present = support > 0
    examples, classes_present = support.sum(axis=1), present.sum(axis=1)
    per_class = {
        "macro_precision": _ratio(true_positives, predicted, 0.0),
        "macro_recall": _ratio(true_positives, support, 0.0),
        "macro_f1": _ratio(2 * true_positives, predicted + support, 0.0),
    }
    result = {
        "accuracy": _ratio(true_positives.sum(axis=1), examples, np.nan),
        "top5_accuracy": _ratio(top5.sum(axis=1), examples, np.nan),
    }
    for name, values in per_class.items():
        result[name] = _ratio((values * present).sum(axis=1), classes_present, np.nan)
    return result


def _cluster_codes(*group_arrays):
    """Integer codes of the items, shared by every array (for paired systems)."""
    sizes = [len(groups) for groups in group_arrays]
    unique, codes = np.unique(np.concatenate([np.asarray(groups) for groups in group_arrays]), return_inverse=True)
    return len(unique), np.split(codes.ravel(), np.cumsum(sizes)[:-1])


class _Resampled(NamedTuple):
    point: list  # per system: {scope: {figure: float}}
    samples: list  # per system: {scope: {figure: float [R]}}


def _scopes(strata):
    """Scope name -> class mask: None (all classes) for "all", then each stratum."""
    scopes = {"all": None}
    if strata is not None:
        strata = np.asarray(strata)
        scopes.update({name: strata == name for name in dict.fromkeys(strata.tolist())})
    return scopes


def _resample(systems, num_classes, strata, samples, seed):
    """Point figures and `samples` resampled figures of each system, all systems resampled by the same items."""
    for system in systems:
        _check(system)
    num_clusters, codes = _cluster_codes(*(system.groups for system in systems))
    cluster_classes = _cluster_classes(*_first_views(systems, codes), num_clusters)
    transposed = [
        _class_counts(system, code, num_clusters, num_classes).T.tocsr() for system, code in zip(systems, codes)
    ]
    scopes = _scopes(strata)

    def figures(counts):
        return {scope: figures_from_counts(counts, num_classes, mask) for scope, mask in scopes.items()}

    points = [figures(np.asarray(matrix.sum(axis=1)).T) for matrix in transposed]
    points = [
        {scope: {name: float(values[0]) for name, values in entry.items()} for scope, entry in point.items()}
        for point in points
    ]
    chunks = [[] for _ in systems]
    for weights in _weight_chunks(cluster_classes, samples, seed):
        for chunk, matrix in zip(chunks, transposed):
            chunk.append(figures(np.asarray(matrix @ weights.T).T))
    resampled = [
        {scope: {name: np.concatenate([part[scope][name] for part in chunk]) for name in FIGURES} for scope in scopes}
        for chunk in chunks
    ]
    return _Resampled(points, resampled), num_clusters


def _percentiles(values):
    """[low, high] of the central CONFIDENCE of the finite values; None when there are none."""
    finite = values[np.isfinite(values)]
    if len(finite) == 0:
        return None
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return [float(low), float(high)]


def settings(samples, seed, num_clusters):
    """What metrics.json records of a bootstrap: {"samples", "seed", "confidence", "unit", "strata", "clusters"}."""
    return {
        "samples": samples,
        "seed": seed,
        "confidence": CONFIDENCE,
        "unit": UNIT,
        "strata": STRATA,
        "clusters": int(num_clusters),
    }


def intervals(scored, num_classes, strata=None, samples=DEFAULT_SAMPLES, seed=0):
    """95% intervals of every headline figure, overall and per stratum, by resampling items.

    Args:
      scored: a `Scored`.
      num_classes: classes in the label space.
      strata: optional stratum name of every class (`metrics.frequency_strata`).
      samples: resamples; 0 for none.
      seed: seeds the resamples.

    Returns:
      `({figure: [low, high] or None}, {stratum: {figure: [low, high] or None}}, settings)`, or None when `samples`
      is 0. A figure without a value in any resample (e.g. top-5 without scores, an empty stratum) gets None.
    """
    if samples == 0:
        return None
    resampled, num_clusters = _resample([scored], num_classes, strata, samples, seed)
    names = [name for name in FIGURES if name != "top5_accuracy" or scored.top5_hits is not None]
    by_scope = {
        scope: {name: _percentiles(values[name]) for name in names} for scope, values in resampled.samples[0].items()
    }
    overall = by_scope.pop("all")
    return overall, by_scope, settings(samples, seed, num_clusters)


def paired_differences(first, second, num_classes, samples=DEFAULT_SAMPLES, seed=0, figures=FIGURES):
    """The difference first - second of each figure, with its paired 95% interval.

    Both systems are resampled with the same items in each resample, so what
    they share (which items are hard) cancels out of the difference. They need
    not score the same images: `second` may be a subset of `first` (the split
    without its near-duplicates), items being matched by their ids.

    Args:
      first, second: `Scored`, labels in the same label space.
      num_classes: classes in the label space.
      samples: resamples (at least 1).
      seed: seeds the resamples.
      figures: the figures compared (top-5 only when both have top-5 hits).

    Returns:
      Dict figure -> {"difference" (None when a system has no image), "interval" ([low, high] or None),
      "includes_zero" (bool or None)}.
    """
    resampled, _ = _resample([first, second], num_classes, None, samples, seed)
    result = {}
    for name in figures:
        if name == "top5_accuracy" and (first.top5_hits is None or second.top5_hits is None):
            continue
        difference = resampled.point[0]["all"][name] - resampled.point[1]["all"][name]
        interval = _percentiles(resampled.samples[0]["all"][name] - resampled.samples[1]["all"][name])
        result[name] = {
            # None, as `intervals` has it, when a system has no image (an empty test split): NaN read "+nan".
            "difference": float(difference) if np.isfinite(difference) else None,
            "interval": interval,
            "includes_zero": None if interval is None else bool(interval[0] <= 0 <= interval[1]),
        }
    return result


def format_interval(value, interval, digits=3):
    """`0.812 [0.790, 0.833]`; the figure alone without an interval; "n/a" without a figure."""
    text = metrics.format_figure(value, digits)
    if interval is None or text == "n/a":
        return text
    return f"{text} [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"


def format_difference(entry, digits=3):
    """`+0.021 [-0.004, 0.047] (includes 0)` for a `paired_differences` entry."""
    if entry is None or entry.get("difference") is None:
        return "n/a"
    text = f"{entry['difference']:+.{digits}f}"
    interval = entry.get("interval")
    if interval is None:
        return text
    text += f" [{interval[0]:+.{digits}f}, {interval[1]:+.{digits}f}]"
    return text + (" (includes 0)" if entry.get("includes_zero") else "")
