"""The item bootstrap: resampled figures vs the metrics, a case worked by hand, coverage, items vs images."""

import itertools
import math

import numpy as np
import pytest

from abo_tf.reports import bootstrap, metrics


def _clustered(rng, num_items, views, num_classes=5, accuracy=0.7, concentration=1.0):
    """Views of an item share a label, and a chance of being right drawn per item (Beta with mean `accuracy`)."""
    item_labels = rng.integers(0, num_classes, num_items)
    chance = rng.beta(accuracy * concentration, (1 - accuracy) * concentration, num_items)
    labels = np.repeat(item_labels, views)
    right = rng.random(num_items * views) < np.repeat(chance, views)
    wrong = (labels + rng.integers(1, num_classes, len(labels))) % num_classes
    return labels, np.where(right, labels, wrong), np.repeat(np.arange(num_items), views)


def test_figures_of_a_resample_are_the_metrics_of_its_images():
    rng = np.random.default_rng(3)
    labels, predictions, groups = _clustered(rng, num_items=30, views=3, num_classes=6)
    hits = rng.random(len(labels)) < 0.9
    strata = np.array(["head", "head", "torso", "tail", "tail", "tail"])
    counts = bootstrap._class_counts(bootstrap.Scored(labels, predictions, hits, groups), groups, 30, 6)
    drawn = np.bincount(rng.integers(0, 30, 30), minlength=30)  # one resample of the items
    figures = bootstrap.figures_from_counts(np.asarray(counts.T @ drawn)[None, :], 6)
    tail = bootstrap.figures_from_counts(np.asarray(counts.T @ drawn)[None, :], 6, strata == "tail")
    rows = np.repeat(np.arange(len(labels)), drawn[groups])  # the resample's images, each as often as its item
    expected = metrics.classification_metrics(labels[rows], predictions[rows], num_classes=6)
    expected_tail = metrics.strata_metrics(labels[rows], predictions[rows], strata)["tail"]
    for name in ("accuracy", "macro_precision", "macro_recall", "macro_f1"):
        assert figures[name][0] == pytest.approx(expected[name])
        assert tail[name][0] == pytest.approx(expected_tail[name])
    assert figures["top5_accuracy"][0] == pytest.approx(hits[rows].mean())


def test_resampled_accuracy_follows_the_distribution_worked_by_hand():
    # Items: a (2 images, both right), b (1 right, 1 wrong), c (1 image, wrong). A resample draws 3 items with
    # replacement: 27 equally likely draws, the accuracy of each is its right images over its images.
    right, images = {"a": 2, "b": 1, "c": 0}, {"a": 2, "b": 2, "c": 1}
    exact = {}
    for draw in itertools.product("abc", repeat=3):
        value = round(sum(right[item] for item in draw) / sum(images[item] for item in draw), 6)
        exact[value] = exact.get(value, 0) + 1 / 27
    scored = bootstrap.Scored(np.zeros(5, int), np.array([0, 0, 0, 1, 1]), None, np.array(["a", "a", "b", "b", "c"]))
    resampled, clusters = bootstrap._resample([scored], 2, None, 20_000, seed=0)
    assert clusters == 3 and resampled.point[0]["all"]["accuracy"] == pytest.approx(3 / 5)
    values, counts = np.unique(np.round(resampled.samples[0]["all"]["accuracy"], 6), return_counts=True)
    assert set(values.tolist()) == set(exact)
    for value, count in zip(values, counts):
        assert count / 20_000 == pytest.approx(exact[value], abs=0.01)
    # Its 2.5th and 97.5th percentiles: accuracy 0 (c, c, c) and 1 (a, a, a) each have probability 1/27 > 2.5%.
    low, high = bootstrap.intervals(scored, 2, samples=20_000)[0]["accuracy"]
    assert (low, high) == (0.0, 1.0)


def test_identical_items_give_a_point_interval_and_a_system_against_itself_a_zero_difference():
    # Every item: a view of class 0 predicted 0, a view of class 1 predicted 0. Per class (P, R, F1): 0 (1/2, 1, 2/3),
    # 1 (0, 0, 0); every resample holds the same mix, so every figure is the same in all of them.
    labels, predictions, groups = np.array([0, 1] * 20), np.zeros(40, int), np.repeat(np.arange(20), 2)
    scored = bootstrap.Scored(labels, predictions, np.ones(40, bool), groups)
    overall, by_stratum, settings = bootstrap.intervals(scored, 2, np.array(["head", "tail"]), samples=200, seed=1)
    assert overall["accuracy"] == [0.5, 0.5] and overall["top5_accuracy"] == [1.0, 1.0]
    assert overall["macro_f1"] == pytest.approx([1 / 3, 1 / 3]) and overall["macro_precision"] == [0.25, 0.25]
    assert by_stratum["tail"]["accuracy"] == [0.0, 0.0] and by_stratum["head"]["macro_f1"] == pytest.approx([2 / 3] * 2)
    assert settings == {
        "samples": 200,
        "seed": 1,
        "confidence": 0.95,
        "unit": "item_id",
        "strata": "class",
        "clusters": 20,
    }
    same = bootstrap.paired_differences(scored, scored, 2, samples=200)
    assert same["macro_f1"] == {"difference": 0.0, "interval": [0.0, 0.0], "includes_zero": True}
    worse = scored._replace(predictions=np.where(np.arange(40) < 20, predictions, 1 - labels))  # 10 items all wrong
    better = bootstrap.paired_differences(scored, worse, 2, samples=200)["accuracy"]
    assert better["difference"] == pytest.approx(0.25) and better["interval"][0] > 0 and not better["includes_zero"]
    assert bootstrap.format_difference(better).startswith("+0.250 [+")
    assert bootstrap.intervals(scored, 2, samples=0) is None


def test_a_difference_with_a_system_of_no_image_is_none_not_nan():
    # Two empty test splits (split fraction 0): the difference read "+nan" in comparison.md.
    empty = bootstrap.Scored(np.zeros(0, int), np.zeros(0, int), np.zeros(0, bool), np.zeros(0, str))
    entry = bootstrap.paired_differences(empty, empty, 3, samples=20)["macro_f1"]
    assert entry == {"difference": None, "interval": None, "includes_zero": None}
    assert bootstrap.format_difference(entry) == "n/a"


def test_macro_intervals_hold_their_figure_with_many_one_item_classes():
    # ABO's tail: class 0 has 200 items, all right; classes 1-99 one item each, all predicted 0. Macro F1 is
    # F1(class 0) / 100. Drawn freely, a resample missed about 36 of the one-item classes and averaged over ~64,
    # so every resample scored above the figure; drawn within their class, every resample has all 100.
    labels = np.concatenate([np.zeros(200, int), np.arange(1, 100)])
    scored = bootstrap.Scored(labels, np.zeros(299, int), None, np.arange(299))
    overall = bootstrap.intervals(scored, 100, samples=300, seed=0)[0]
    point = metrics.classification_metrics(labels, np.zeros(299, int), num_classes=100)
    for name in ("macro_f1", "macro_recall", "macro_precision", "accuracy"):
        low, high = overall[name]
        assert low <= point[name] <= high, name
    assert overall["macro_recall"] == pytest.approx([0.01, 0.01])  # recall 1 for class 0, 0 for the 99 others


def test_each_resample_keeps_every_class_item_count():
    # Items of mixed views: the class of an item is the label most of its images carry (ties to the smaller).
    labels = np.array([2, 2, 1, 1, 0, 1, 1, 3, 3, 3, 0])
    codes = np.array([0, 0, 0, 1, 1, 1, 2, 3, 3, 4, 4])
    classes = bootstrap._cluster_classes(labels, codes, 5)
    assert classes.tolist() == [2, 1, 1, 3, 0]
    weights = np.concatenate(list(bootstrap._weight_chunks(classes, 250, seed=0)))
    assert weights.shape == (250, 5) and (weights[:, [0, 3, 4]] == 1).all()
    assert (weights[:, 1] + weights[:, 2] == 2).all() and set(weights[:, 1].tolist()) == {0, 1, 2}


def test_a_subset_system_does_not_vote_twice_on_an_item_class():
    # Item 0: labels 1, 1, 2, 2, 2 (class 2); a second system scores only its two images of class 1.
    first = bootstrap.Scored(np.array([1, 1, 2, 2, 2]), np.zeros(5, int), None, np.zeros(5, int))
    second = bootstrap.Scored(np.array([1, 1]), np.zeros(2, int), None, np.zeros(2, int))
    _, codes = bootstrap._cluster_codes(first.groups, second.groups)
    assert bootstrap._cluster_classes(*bootstrap._first_views([first, second], codes), 1).tolist() == [2]


def test_intervals_are_deterministic_given_the_seed():
    labels, predictions, groups = _clustered(np.random.default_rng(0), num_items=50, views=2)
    scored = bootstrap.Scored(labels, predictions, None, groups.astype(str))
    first = bootstrap.intervals(scored, 5, samples=300, seed=7)
    assert bootstrap.intervals(scored, 5, samples=300, seed=7) == first
    assert bootstrap.intervals(scored, 5, samples=300, seed=8) != first
    assert "top5_accuracy" not in first[0]  # no scores, no top-5


def _coverage(rng, repetitions, group_by_item):
    covered = 0
    for _ in range(repetitions):
        labels, predictions, groups = _clustered(rng, num_items=100, views=4, concentration=2.0)
        units = groups if group_by_item else np.arange(len(groups))
        low, high = bootstrap.intervals(
            bootstrap.Scored(labels, predictions, None, units), 5, samples=400, seed=int(rng.integers(1 << 30))
        )[0]["accuracy"]
        covered += low <= 0.7 <= high  # the population's accuracy: the mean chance of an item (all equal in size)
    return covered / repetitions


def test_item_intervals_cover_the_true_accuracy_95_percent_of_the_time():
    # 200 simulated test splits of 100 items x 4 correlated views. The item bootstrap's intervals hold the true
    # accuracy 95% +- 3% of the time; resampling the images ignores the correlation and covers far less often.
    assert _coverage(np.random.default_rng(2024), 200, group_by_item=True) == pytest.approx(0.95, abs=0.03)
    assert _coverage(np.random.default_rng(2024), 200, group_by_item=False) < 0.85


def test_items_with_five_identical_views_widen_the_interval():
    rng = np.random.default_rng(5)
    labels, predictions, items = _clustered(rng, num_items=200, views=1)
    five = bootstrap.Scored(*(np.repeat(values, 5) for values in (labels, predictions)), None, np.repeat(items, 5))
    by_item = bootstrap.intervals(five, 5, samples=1000)[0]
    by_image = bootstrap.intervals(five._replace(groups=np.arange(1000)), 5, samples=1000)[0]
    for name in ("accuracy", "macro_f1"):
        item_width, image_width = np.diff(by_item[name])[0], np.diff(by_image[name])[0]
        # The 1,000 images carry the information of 200: the interval is about sqrt(5) times wider.
        assert item_width / image_width == pytest.approx(math.sqrt(5), rel=0.25)


def test_evaluation_metrics_and_the_summary_carry_the_intervals():
    labels, predictions, groups = _clustered(np.random.default_rng(1), num_items=40, views=3, num_classes=4)
    scores = np.eye(4)[predictions]
    result = metrics.evaluation_metrics(
        labels, predictions, scores, [1500, 200, 5, 50], groups=groups, bootstrap_samples=200, seed=3
    )
    low, high = result["intervals"]["macro_f1"]
    assert low <= result["macro_f1"] <= high and result["bootstrap"]["clusters"] == 40
    assert set(result["strata"]["tail"]["intervals"]) == set(bootstrap.FIGURES)
    summary = metrics.format_summary(result, "test")
    assert f"macro F1 {result['macro_f1']:.3f} [{low:.3f}, {high:.3f}]" in summary
    assert "bootstrap over 40 items (item_id), 200 resamples, seed 3" in summary
    keep = np.arange(len(labels)) >= 30
    without = metrics.metrics_without(labels, predictions, scores, [1500, 200, 5, 50], keep, groups, 200, 3)
    assert without["num_excluded"] == 30 and without["bootstrap"]["clusters"] == 30
    difference = without["difference_with_excluded"]["accuracy"]
    assert difference["difference"] == pytest.approx(result["accuracy"] - without["accuracy"])
    assert "intervals" not in metrics.evaluation_metrics(labels, predictions, scores, [1, 1, 1, 1])  # no groups
