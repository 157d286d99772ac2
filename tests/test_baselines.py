"""Classical baselines: each beats the majority class on colour-coded images; outputs, comparison, bad input.

One module-scoped run trains the four models on handcrafted features at 64 px with small grids
(BaselineConfig.grids); the default grids are exercised once, through the command line, with logreg.
"""

import concurrent.futures
import dataclasses
import json
import os
import shutil
import time
import tracemalloc
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier, NearestCentroid
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, Normalizer
from sklearn.svm import SVC

from abo_tf import baselines
from abo_tf.classical import (
    baseline,
    classifiers,
    comparison,
    evaluation,
    extraction,
    feature_cache,
    feature_spec,
    interpretation,
    lbfgs,
    persistence,
    search,
)
from abo_tf.common import config, console, files
from abo_tf.common.errors import InputNotFoundError, UserInputError
from abo_tf.reports import metrics, predictions_file
from abo_tf.testing import synthetic_features
from abo_tf.training import run_folder

IMAGE_SIZE = 64
SMALL_GRIDS = {
    "logreg": {"classifier__C": [0.1, 1.0]},
    "linear_svm": {"classifier__alpha": [1e-4, 1e-3]},
    "rbf_svm": {"classifier__C": [1.0, 10.0]},
    # 8 candidates: more than HALVING_ABOVE, so searched by successive halving.
    "sgd": {"classifier__loss": ["hinge", "log_loss"], "classifier__alpha": [1e-5, 1e-4, 1e-3, 1e-2]},
}
RUN_HISTORY_SECONDS = (2.5, 1.5)
SMALL_KNN_GRID = {"classifier__n_neighbors": [1, 5, 15]}


def _spec():
    return feature_spec.FeatureSpec(kind=feature_spec.HANDCRAFTED, image_size=IMAGE_SIZE)


def _config(records_dir, output, cache_dir, **overrides):
    values = dict(
        records=records_dir,
        output=str(output),
        features=feature_spec.HANDCRAFTED,
        image_size=IMAGE_SIZE,
        models=classifiers.MODELS,
        runs=None,
        cache_dir=cache_dir,
        workers=2,
        sgd_epochs=10,
        measure_runs=False,
        progress=False,
        grids=SMALL_GRIDS,
    )
    return baseline.BaselineConfig(**{**values, **overrides})


def _majority_metrics(splits):
    """Test metrics of always predicting train's most frequent class."""
    majority = np.bincount(splits["train"].labels).argmax()
    test = splits["test"].labels
    return metrics.classification_metrics(test, np.full_like(test, majority))


def _fake_cnn_run(runs_dir, splits):
    """A run folder as abo_tf.train leaves it, minus the model: config.toml, history.csv, metrics.json (with
    intervals), test_predictions.csv. It predicts class 0 for every image."""
    run = os.path.join(runs_dir, "tiny_cnn")
    config.save_run_config(run, {"model": "mobilenet_v3_small", "image_size": 32})
    history = [
        run_folder.HistoryRow(epoch, epoch * 2, "fine_tune", 1.0, 0.5, 1.0, 0.5, 1e-3, 10.0, seconds)
        for epoch, seconds in enumerate(RUN_HISTORY_SECONDS, start=1)
    ]
    run_folder.write_history(run, history)
    test = splits["test"]
    num_classes = len(test.classes)
    predictions = np.zeros_like(test.labels)
    scores = np.eye(num_classes)[predictions]
    counts = np.bincount(splits["train"].labels, minlength=num_classes)
    result = metrics.evaluation_metrics(test.labels, predictions, scores, counts, groups=test.item_ids)
    files.write_json(os.path.join(run, "metrics.json"), {"validation": result, "test": result})
    hits = metrics.top_k_hits(test.labels, scores)
    predictions_file.write(run, test.image_ids, test.item_ids, test.labels, predictions, hits, test.classes)
    return run


@pytest.fixture(scope="module")
def trained(built_records, tmp_path_factory):
    """Every baseline trained once; returns dict: config, splits, results (by model), runs."""
    records_dir, _ = built_records
    root = tmp_path_factory.mktemp("baselines")
    cache_dir = str(root / "cache")
    splits = extraction.extract_features(records_dir, _spec(), cache_dir=cache_dir, workers=2, progress=False)
    runs = str(root / "runs")
    _fake_cnn_run(runs, splits)
    run_config = _config(records_dir, root / "output", cache_dir, runs=runs)
    results = baseline.run_baselines(run_config)
    return {
        "config": run_config,
        "splits": splits,
        "results": {record["model"]: record for record in results["baselines"]},
        "comparison": results["comparison"],
        "runs": runs,
        "cache_dir": cache_dir,
    }


# --- every model learns ------------------------------------------------------


@pytest.mark.parametrize("model", classifiers.MODELS)
def test_baseline_beats_the_majority_class_by_a_clear_margin(trained, model):
    majority = _majority_metrics(trained["splits"])
    test = trained["results"][model]["metrics"]["test"]
    # The sample's product types differ by colour: a colour histogram separates them.
    # Observed: accuracy 0.79-0.95 vs 0.39 for the majority class, macro-F1 0.56-0.74 vs 0.08. The retrieval
    # baselines (kNN, nearest class mean) learn no weighting of the 600 columns: 0.68 accuracy vs 0.42 observed.
    retrieval = model in ("knn", "centroid")
    assert test["accuracy"] >= majority["accuracy"] + (0.2 if retrieval else 0.3), (test, majority)
    assert test["macro_f1"] >= majority["macro_f1"] + (0.25 if retrieval else 0.35), (test, majority)
    assert test["num_examples"] == len(trained["splits"]["test"].labels)


def test_each_baseline_folder_has_every_output(trained):
    classes = trained["splits"]["train"].classes
    for model, record in trained["results"].items():
        folder = record["folder"]
        expected = {
            "model.skops",
            "baseline.json",
            "metrics.json",
            "per_class.csv",
            "confusion_matrix.png",
            "importance.csv",
            "interpretation.png",
            "per_class_f1.png",
            "report.md",
        }
        assert expected <= set(os.listdir(folder)), model
        assert ("coefficients.csv" in os.listdir(folder)) == (model == "logreg")
        with open(os.path.join(folder, "metrics.json")) as handle:
            saved = json.load(handle)
        assert set(saved) == {"validation", "test"} and "top5_accuracy" in saved["test"]
        assert pd.read_csv(os.path.join(folder, "per_class.csv"))["class"].tolist() == classes
        with open(os.path.join(folder, "baseline.json")) as handle:
            written = json.load(handle)
        grid = SMALL_GRIDS.get(model, search.GRIDS[model])
        assert all(written["search"]["chosen"][key] in values for key, values in grid.items()), written["search"][
            "chosen"
        ]
        assert written["model_sha256"] == record["model_sha256"] and written["solver"] == (
            "streamed SGD (partial_fit over chunks)" if model in ("sgd", "linear_svm") else "in memory"
        )


def _named(params):
    return ", ".join(f"{key.removeprefix('classifier__')}={value}" for key, value in params.items())


def test_each_report_states_the_choice_the_search_and_the_test_figures_with_intervals(trained):
    for model, record in trained["results"].items():
        with open(os.path.join(record["folder"], "report.md")) as handle:
            text = handle.read()
        chosen = _named(record["search"]["chosen"])
        test = record["metrics"]["test"]
        low, high = test["intervals"]["macro_f1"]
        assert f"# Baseline `{model}` on handcrafted features" in text and f"- Chosen: {chosen} (" in text, model
        assert f"| test | {test['num_examples']} | {test['macro_f1']:.3f} [{low:.3f}, {high:.3f}] |" in text, model
        assert all(f"| {row['round']} | {_named(row['params'])} |" in text for row in record["search"]["candidates"])
        assert "[F1 per class](per_class_f1.png)" in text and "[confusion matrix (test)](confusion_matrix.png)" in text
    # Nothing converges in a nearest-neighbour search: its rows say n/a, not "yes".
    knn = trained["results"]["knn"]["search"]
    assert all(row["converged"] is None for row in knn["candidates"]) and knn["final_fit"]["converged"] is None


def test_small_grids_are_exhaustive_large_ones_halved(trained):
    train_size = len(trained["splits"]["train"].labels)
    validation_size = len(trained["splits"]["validation"].labels)
    logreg = trained["results"]["logreg"]["search"]
    assert logreg["strategy"] == "exhaustive (GridSearchCV)" and len(logreg["candidates"]) == 2
    assert {row["train_examples"] for row in logreg["candidates"]} == {train_size}
    assert {row["validation_examples"] for row in logreg["candidates"]} == {validation_size}
    sgd = trained["results"]["sgd"]["search"]
    assert sgd["strategy"].startswith("successive halving (HalvingGridSearchCV")
    first = [row for row in sgd["candidates"] if row["round"] == 0]
    last = [row for row in sgd["candidates"] if row["round"] == max(row["round"] for row in sgd["candidates"])]
    assert len(first) == 8 and len(last) < len(first)
    assert [row["grid_index"] for row in first] == list(range(8))
    assert first[0]["train_examples"] < last[0]["train_examples"] <= train_size
    # The chosen candidate is the best of the last round, ties to the first in grid order.
    best = min(last, key=lambda row: (-row["validation_macro_f1"], row["grid_index"]))
    assert sgd["chosen"] == best["params"] and sgd["search_validation_macro_f1"] == best["validation_macro_f1"]
    for record in (logreg, sgd):
        assert record["final_fit"]["train_examples"] == train_size
        assert all(row["seconds"] > 0 for row in record["candidates"])
        assert record["seconds"] >= record["search_seconds"] + record["final_fit"]["seconds"] - 1e-6
    assert all(row["converged"] is None for row in sgd["candidates"]) and sgd["final_fit"]["epochs"] == 10


def test_the_recorded_validation_score_is_the_saved_models(trained):
    for model, record in trained["results"].items():
        pipeline = persistence.load_model(record["folder"])
        expected = classifiers.macro_f1(pipeline, trained["splits"]["validation"])
        assert record["search"]["validation_macro_f1"] == pytest.approx(expected), model
        assert record["metrics"]["validation"]["macro_f1"] == pytest.approx(expected), model


def test_ties_go_to_the_first_candidate_in_grid_order():
    rows = [
        {"round": 0, "grid_index": 0, "validation_macro_f1": 0.9},
        {"round": 1, "grid_index": 3, "validation_macro_f1": 0.5},
        {"round": 1, "grid_index": 2, "validation_macro_f1": 0.5},
        {"round": 1, "grid_index": 1, "validation_macro_f1": None},
    ]
    assert [row["grid_index"] for row in search._finalists(rows)] == [2, 3]
    with pytest.raises(UserInputError, match="every candidate of the search failed"):
        search._finalists([{**rows[3]}])


def test_the_search_compares_candidates_on_a_stratified_subsample(trained):
    train, validation = trained["splits"]["train"], trained["splits"]["validation"]
    rows = np.arange(len(train.labels))
    training = classifiers.Training("sgd", train, rows, epochs=5, seed=0)
    found = search.search(training, SMALL_GRIDS["sgd"], validation, max_train=120, progress=False)
    record = found.record
    assert abs(record["search_train_examples"] - 120) <= len(train.classes)
    assert max(row["train_examples"] for row in record["candidates"]) <= record["search_train_examples"]
    assert record["final_fit"]["train_examples"] == len(rows)
    assert set(found.pipeline.named_steps["classifier"].classes_) == set(np.unique(train.labels))
    # The last round's two best, fitted again on a subsample 3 times larger: the better one there is chosen.
    rescored = record["rescored"]
    assert abs(rescored["train_examples"] - 3 * record["search_train_examples"]) <= len(train.classes)
    assert len(rescored["finalists"]) == search.RESCORED
    best = max(rescored["finalists"], key=lambda row: row["validation_macro_f1"])
    assert record["chosen"] == best["params"]
    again = search.search(training, SMALL_GRIDS["sgd"], validation, max_train=120, progress=False).record
    assert [row["validation_macro_f1"] for row in again["candidates"]] == [
        row["validation_macro_f1"] for row in record["candidates"]
    ]


def test_in_memory_fit_scales_its_own_copy_and_leaves_the_callers_features(trained):
    train = trained["splits"]["train"]
    before = np.array(train.features[:50])
    training = classifiers.Training("logreg", train, np.arange(len(train.labels)), 10, 0)
    fitted = classifiers.fit(training, {"classifier__C": 1.0}, training.rows)
    assert fitted.pipeline.named_steps["scaler"].copy is True and fitted.converged is not None
    chunk = np.array(train.features[:50])
    fitted.pipeline.predict(chunk)
    np.testing.assert_array_equal(chunk, before)
    np.testing.assert_array_equal(train.features[:50], before)


def test_read_rows_copies_rows_of_a_memory_map_and_keeps_it_readable(tmp_path):
    values = np.arange(40, dtype=np.float32).reshape(10, 4)
    np.save(tmp_path / "features.npy", values)
    mapped = np.load(tmp_path / "features.npy", mmap_mode="r")
    rows = np.array([7, 2, 2])
    copied = classifiers.read_rows(mapped, rows)
    assert type(copied) is np.ndarray and copied.flags.writeable
    np.testing.assert_array_equal(copied, values[rows])
    np.testing.assert_array_equal(mapped, values)  # pages dropped from memory are read again from the file
    np.testing.assert_array_equal(classifiers.read_rows(values, rows), values[rows])


def test_an_svc_with_abo_many_classes_is_scored_in_small_chunks():
    # 576 classes: 165,600 one-vs-one decision values a row; 8192 rows at once would take 10.8 GB.
    svc, logreg = SVC(), LogisticRegression()
    svc.classes_ = logreg.classes_ = np.arange(576)
    svc_rows = classifiers.score_chunk_rows(Pipeline([("classifier", svc)]))
    assert svc_rows * 8 * 165_600 <= classifiers.SCORE_BYTES and svc_rows >= 100
    assert classifiers.score_chunk_rows(Pipeline([("classifier", logreg)])) == classifiers.CHUNK_ROWS


@pytest.mark.parametrize("num_classes", [3, 20, 40])
def test_svc_scores_are_scikit_learns_decision_function(num_classes):
    rng = np.random.default_rng(num_classes)
    labels = np.concatenate([np.arange(num_classes), rng.integers(0, num_classes, 300)])
    features = rng.standard_normal((len(labels), 8)) + np.eye(num_classes, 8)[labels] * 3
    pipeline = classifiers.make_pipeline("rbf_svm").fit(features, labels)
    unseen = rng.standard_normal((50, 8)) * 2
    scores = classifiers.predict_scores(pipeline, unseen, num_classes)
    np.testing.assert_array_equal(scores.scores, pipeline.decision_function(unseen).astype(np.float32))
    np.testing.assert_array_equal(scores.predictions, pipeline.predict(unseen))


def _fitted(model, features, labels):
    return classifiers.make_pipeline(model).fit(np.asarray(features, float), np.asarray(labels))


def _exact_ties(num_classes):
    """Every class at the same points: one-vs-one decision values of exactly 0 (SVC) and tied votes."""
    features = np.tile([[0.0, 0.0], [1.0, 1.0]], (num_classes, 1))
    return features, np.repeat(np.arange(num_classes), 2)


@pytest.mark.parametrize(
    "features, labels",
    [
        ([[0.0], [1.0], [0.0], [1.0]], [0, 1, 1, 0]),  # binary, XOR on duplicates: decision values of -0.0
        _exact_ties(2),
        _exact_ties(3),
        _exact_ties(5),
    ],
)
def test_svc_predictions_are_scikit_learns_at_exact_ties(features, labels):
    pipeline = _fitted("rbf_svm", features, labels)
    expected = pipeline.predict(np.asarray(features, float))
    num_classes = len(np.unique(labels))
    np.testing.assert_array_equal(classifiers.predict_labels(pipeline, features), expected)
    np.testing.assert_array_equal(classifiers.predict_scores(pipeline, features, num_classes).predictions, expected)


@pytest.mark.parametrize("model", ["logreg", "linear_svm", "rbf_svm", "sgd"])
@pytest.mark.parametrize("num_classes", [2, 3])
def test_zero_rows_score_to_empty_arrays(model, num_classes):
    rng = np.random.default_rng(num_classes)
    pipeline = _fitted(model, rng.standard_normal((30, 4)), np.arange(30) % num_classes)
    empty = np.zeros((0, 4), np.float32)
    predictions, scores = classifiers.predict_scores(pipeline, empty, num_classes)
    assert (predictions.shape, predictions.dtype, scores.shape, scores.dtype) == (
        (0,),
        np.int32,
        (0, num_classes),
        np.float32,
    )
    labels = classifiers.predict_labels(pipeline, empty)
    assert labels.shape == (0,) and labels.dtype == np.int32


def test_svc_scoring_stays_within_its_chunk_budget(monkeypatch):
    import tracemalloc

    # 100 classes, 4,950 pairs: the one-vs-one values of a chunk dominate what scoring holds.
    monkeypatch.setattr(classifiers, "SCORE_BYTES", 8 * 2**20)
    rng = np.random.default_rng(0)
    pipeline = _fitted("rbf_svm", rng.standard_normal((200, 4)), np.arange(200) % 100)
    unseen = rng.standard_normal((3 * classifiers.score_chunk_rows(pipeline), 4)).astype(np.float32)
    classifiers.predict_labels(pipeline, unseen[:1])  # the pair matrix is built once, outside the measure
    for score in (
        lambda: classifiers.predict_labels(pipeline, unseen),
        lambda: classifiers.predict_scores(pipeline, unseen, 100),
    ):
        tracemalloc.start()
        score()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        # Counting the decision values alone, a chunk peaked at 3x its budget.
        assert peak <= 1.15 * classifiers.SCORE_BYTES, peak / 2**20


@pytest.mark.parametrize("size", [1, 13, 14, 20, 57, 200, 1999])
def test_a_stratified_subsample_has_the_size_asked_for_and_every_class(size):
    labels = np.repeat(np.arange(13), np.arange(13) ** 2 + 1)  # 1 to 145 rows a class, 663 in all
    rows = np.arange(len(labels))[::-1][3:]  # not every row (3 of the largest class left out), not sorted
    kept = classifiers.stratified_subsample(labels, rows, size, seed=0)
    assert len(kept) == min(len(rows), max(size, 13)) and len(np.unique(kept)) == len(kept)
    assert set(kept) <= set(rows) and set(labels[kept]) == set(labels[rows])
    if 13 < size < len(rows):  # in proportion: within a row of each class's share beyond its first
        counts = np.bincount(labels[rows], minlength=13)
        shares = 1 + (counts - 1) * (size - 13) / (len(rows) - 13)
        assert np.all(np.abs(np.bincount(labels[kept], minlength=13) - shares) < 1)


@pytest.mark.parametrize("size", [5, 60, 200, 900, 1999])
def test_a_capped_subsample_keeps_the_small_classes_whole_and_caps_the_others(size):
    labels = np.repeat(np.arange(8), [1000, 400, 200, 90, 40, 10, 3, 1])
    kept = classifiers.capped_subsample(labels, np.arange(len(labels)), size, seed=0)
    counts, available = np.bincount(labels[kept], minlength=8), np.bincount(labels)
    assert len(np.unique(kept)) == len(kept) <= max(size, 8) and (counts >= 1).all()
    capped = counts < available
    assert len(set(counts[capped])) <= 1 and (counts[~capped] <= counts[capped].min(initial=size)).all()
    assert len(kept) > min(size, len(labels)) - 8  # the cap's rounding leaves at most a row per capped class


@pytest.mark.parametrize("model, flag", [("knn", "knn_max_train"), ("logreg", "logreg_max_train")])
def test_knn_and_logreg_train_on_a_capped_subsample_said_and_recorded(trained, built_records, capsys, model, flag):
    records_dir, _ = built_records
    train = trained["splits"]["train"]
    run_config = _config(records_dir, "unused", trained["cache_dir"], **{flag: 60})
    plan = baseline._training_rows(baseline.make_training(model, train, run_config), run_config)
    assert plan.subsample == {"examples": len(plan.rows), "of": len(train.labels)} and len(plan.rows) <= 60
    assert f"capped per class subsample of {len(plan.rows)}" in capsys.readouterr().out


def test_logreg_capped_by_default_trains_on_every_row_at_the_end(trained, built_records):
    # Issue 21's linear probe on all rows: the search and the capped fit see --logreg-max-train rows, the model
    # kept is lbfgs continued on every one (the default --logreg-all-rows-iter).
    records_dir, _ = built_records
    splits = trained["splits"]
    run_config = _config(
        records_dir, "unused", trained["cache_dir"], logreg_max_train=60, grids={"logreg": {"classifier__C": [1.0]}}
    )
    _, plan, found = baseline._search_and_fit("logreg", splits, run_config)
    final_fit = found.record["final_fit"]
    assert plan.subsample is None and final_fit["train_examples"] == len(plan.rows) == len(splits["train"].labels)
    assert final_fit["continued_from"]["train_examples"] <= 60 < final_fit["train_examples"]
    assert 0 < final_fit["iterations"] <= classifiers.LOGREG_ALL_ROWS_ITER


def test_knn_finds_the_cosine_neighbours():
    rng = np.random.default_rng(0)
    features, labels = rng.random((300, 12)), rng.integers(0, 4, 300)
    pipeline = classifiers.make_pipeline("knn").fit(features, labels)
    found = pipeline.named_steps["classifier"].kneighbors(pipeline[:-1].transform(features[:50]), 5)[1]
    cosine = KNeighborsClassifier(5, metric="cosine", algorithm="brute").fit(features, labels)
    np.testing.assert_array_equal(found, cosine.kneighbors(features[:50])[1])


def test_at_many_classes_both_svms_train_on_every_row_and_the_kernel_is_approximated():
    # At 576 classes, as ABO, liblinear and libsvm could only see about 2,000 and 1,000 rows in 10 minutes.
    means = synthetic_features.class_means(576, 4)
    train = synthetic_features.split("train", 20_000, means, 0, synthetic_features.class_weights(576, 0.5))
    run_config = baseline.BaselineConfig(records="unused", output="unused")
    for model in ("linear_svm", "rbf_svm"):
        training = baseline.make_training(model, train, run_config)
        assert training.streamed and baseline._training_rows(training, run_config).subsample is None, model
    assert training.pipeline().named_steps["kernel"].n_components == classifiers.KERNEL_COMPONENTS
    few = dataclasses.replace(run_config, exact_kernel_max_classes=576, rbf_max_train=5_000)
    exact = baseline.make_training("rbf_svm", train, few)
    assert exact.exact_kernel and not exact.streamed
    assert baseline._training_rows(exact, few).subsample == {"examples": 5_000, "of": 20_000}


def test_sgd_epochs_shrink_once_it_has_seen_a_million_examples():
    training = classifiers.Training("sgd", None, None, epochs=20, seed=0)
    assert classifiers.sgd_passes(5_000, training) == 20
    assert classifiers.sgd_passes(313_681, training) == 4
    assert classifiers.sgd_passes(5_000_000, training) == 1


def test_the_solver_memory_estimate_keeps_full_abo_logreg_in_memory():
    # Measured: lbfgs peaked 2.5 GB on 313,681 x 622 float32 features, 576 classes.
    needs = classifiers.solver_bytes("logreg", 313_681, 622, 576)
    assert 2.0 * 2**30 < needs < baseline.IN_MEMORY_GB * 2**30
    assert classifiers.solver_bytes("logreg", 2_000, 622, 13) < 0.01 * 2**30


@pytest.mark.parametrize("options", [{}, {"priors": "empirical"}, {"shrink_threshold": 0.5}])
def test_class_means_are_scikit_learns_nearest_centroid_fitted_chunk_by_chunk(monkeypatch, options):
    monkeypatch.setattr(classifiers, "CHUNK_ROWS", 64)  # several chunks, the last one short
    rng = np.random.default_rng(0)
    features, labels = rng.random((1000, 7)), rng.integers(0, 9, 1000) * 3 + 1
    expected = NearestCentroid(**options).fit(features, labels)
    fitted = classifiers.ClassMeans(**options).fit(features, labels)
    for name in ("classes_", "centroids_", "within_class_std_dev_", "deviations_", "class_prior_"):
        np.testing.assert_allclose(getattr(fitted, name), getattr(expected, name), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fitted.decision_function(features), expected.decision_function(features), rtol=1e-9)
    np.testing.assert_allclose(fitted.predict_proba(features), expected.predict_proba(features), rtol=1e-9)


def test_class_means_of_one_row_a_class_predict_the_nearest_row():
    # No within-class spread: scikit-learn's 0 / 0 made every score NaN, and every prediction the first class.
    rng = np.random.default_rng(0)
    features, labels = rng.random((6, 5), dtype=np.float32), np.arange(6) * 2
    pipeline = classifiers.make_pipeline("centroid").fit(features, labels)
    predictions, scores = classifiers.predict_scores(pipeline, features + 0.01, 12)
    np.testing.assert_array_equal(predictions, labels)
    assert np.isfinite(scores[:, labels]).all()


def test_class_means_hold_no_float64_copy_of_the_rows(monkeypatch):
    # scikit-learn's NearestCentroid.fit peaks at 4 times the float32 rows (two float64 [rows, features] arrays):
    # 5.61 GB at full ABO size. Chunks of 1,024 rows are a 40th of these.
    monkeypatch.setattr(classifiers, "CHUNK_ROWS", 1024)
    rng = np.random.default_rng(0)
    features, labels = rng.random((40_000, 100), dtype=np.float32), rng.integers(0, 50, 40_000)
    tracemalloc.start()
    classifiers.ClassMeans().fit(features, labels)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 0.25 * features.nbytes


def test_importance_shuffles_a_stratified_subsample_of_validation(trained):
    validation = trained["splits"]["validation"]
    pipeline = persistence.load_model(trained["results"]["logreg"]["folder"])
    importance = interpretation.group_importance(pipeline, validation, repeats=1, max_rows=40)
    classes = len(np.unique(validation.labels))
    assert (importance["examples"] <= 40 + classes).all() and (importance["examples"] < len(validation.labels)).all()
    whole = interpretation.group_importance(pipeline, validation, repeats=1)
    assert (whole["examples"] == len(validation.labels)).all()


def test_colour_matters_most_on_colour_coded_products(trained):
    importance = pd.read_csv(os.path.join(trained["results"]["logreg"]["folder"], "importance.csv")).set_index("group")
    assert set(importance.index) == {"colour", "shape", "texture"}
    assert importance.loc["colour", "accuracy_drop"] > max(
        importance.loc["shape", "accuracy_drop"], importance.loc["texture", "accuracy_drop"]
    )
    coefficients = pd.read_csv(os.path.join(trained["results"]["logreg"]["folder"], "coefficients.csv"))
    assert (
        set(coefficients["group"]) == {"colour", "shape", "texture"}
        and coefficients["feature"].str.startswith("hsv_").any()
    )


# --- comparison table --------------------------------------------------------


def test_comparison_lists_every_baseline_and_the_cnn_run(trained):
    output = trained["config"].output
    table = pd.read_csv(os.path.join(output, "comparison.csv"))
    expected = {f"handcrafted-{model}" for model in classifiers.MODELS} | {"tiny_cnn"}
    assert set(table["name"]) == expected and len(table) == len(expected)
    run = table.set_index("name").loc["tiny_cnn"]
    assert run["kind"] == "cnn" and run["training_seconds"] == pytest.approx(sum(RUN_HISTORY_SECONDS))
    baseline_rows = table[table["kind"].str.startswith("baseline")]
    assert (baseline_rows["inference_images_per_second"] > 0).all() and baseline_rows["macro_f1"].notna().all()
    assert list(table["macro_f1"]) == sorted(table["macro_f1"], reverse=True)
    with open(os.path.join(output, "comparison.md")) as handle:
        markdown = handle.read()
    assert markdown == trained["comparison"] and all(f"| {name} |" in markdown for name in expected)
    links = [f"[handcrafted-{model}](handcrafted-{model}/report.md)" for model in classifiers.MODELS]
    assert all(link in markdown for link in links) and "[tiny_cnn]" not in markdown
    assert (table["macro_f1_low"] <= table["macro_f1"]).all() and (table["macro_f1"] <= table["macro_f1_high"]).all()
    assert f"| {run['macro_f1']:.3f} [{run['macro_f1_low']:.3f}, {run['macro_f1_high']:.3f}] |" in markdown


def test_comparison_gives_the_paired_difference_of_the_cnn_and_each_baseline(trained):
    markdown = trained["comparison"]
    paired = markdown[markdown.index("## CNN minus each baseline") :]
    assert "paired bootstrap over items (1000 resamples, seed 0)" in paired
    run = trained["splits"]["test"]
    for model in classifiers.MODELS:
        baseline_f1 = trained["results"][model]["metrics"]["test"]["macro_f1"]
        run_f1 = metrics.classification_metrics(run.labels, np.zeros_like(run.labels))["macro_f1"]
        row = next(line for line in paired.splitlines() if line.startswith(f"| tiny_cnn | handcrafted-{model} |"))
        accuracy, macro_f1 = row.split(" | ")[2:4]
        assert macro_f1.startswith(f"{run_f1 - baseline_f1:+.3f} [") and accuracy.count("[") == 1


@pytest.mark.parametrize("record", [{}, {"model": "knn", "search": None}])
def test_comparison_of_a_damaged_baseline_record_is_one_line(tmp_path, record):
    folder = tmp_path / "handcrafted-knn"
    folder.mkdir()
    (folder / persistence.RESULT_FILE).write_text(json.dumps(record))
    with pytest.raises(UserInputError, match="lacks .*train the baseline again"):
        comparison.collect_baselines(str(tmp_path))


def test_comparison_markdown_formats_each_column_and_sorts_by_macro_f1(tmp_path):
    fields = [field for field in comparison.COMPARISON_FIELDS if not field.endswith(("_low", "_high"))]
    values = [
        ("tiny_cnn", "cnn", "mobilenet_v3_small @ 32 px", "sqrt", 0.5, 0.2, 0.9, 4.0, None, None, 10, "runs/tiny_cnn"),
        ("unfinished", "cnn", "? @ ? px", "?", None, None, None, None, None, None, None, "runs/unfinished"),
        (
            "handcrafted-logreg",
            "baseline (logreg)",
            "handcrafted",
            "balanced",
            0.96,
            0.74,
            1.0,
            1.44,
            669,
            600,
            75,
            "o",
        ),
    ]
    rows = [dict(zip(fields, row, strict=True)) for row in values]
    rows[2] |= {"macro_f1_low": 0.70119, "macro_f1_high": 0.77}  # intervals where metrics.json has them
    text = comparison.write_comparison(rows, str(tmp_path))
    assert text.splitlines()[:5] == [
        "| model | kind | features | class weights | accuracy | macro F1 | top-5 | training (s) | inference (img/s) "
        "| training rows | test images |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        "| handcrafted-logreg | baseline (logreg) | handcrafted | balanced | 0.960 | 0.740 [0.701, 0.770] | 1.000 "
        "| 1.4 | 669 | 600 | 75 |",
        "| tiny_cnn | cnn | mobilenet_v3_small @ 32 px | sqrt | 0.500 | 0.200 | 0.900 | 4.0 | n/a | n/a | 10 |",
        "| unfinished | cnn | ? @ ? px | ? | n/a | n/a | n/a | n/a | n/a | n/a | n/a |",
    ]
    # Folders without test_predictions.csv: the paired differences are n/a.
    assert "| tiny_cnn | handcrafted-logreg | n/a | n/a | n/a |" in text
    assert (tmp_path / "comparison.md").read_text() == text
    assert pd.read_csv(tmp_path / "comparison.csv")["name"].tolist() == ["handcrafted-logreg", "tiny_cnn", "unfinished"]
    assert comparison.BASELINE_NOTES in text and comparison.CNN_NOTES in text
    # Without CNN runs the notes do not describe their columns.
    alone = comparison.write_comparison(rows[2:], str(tmp_path))
    assert comparison.BASELINE_NOTES in alone and "CNN runs" not in alone


def test_a_run_whose_history_cannot_be_read_is_listed_without_training_time(tmp_path, capsys):
    run = tmp_path / "runs" / "old_run"
    config.save_run_config(str(run), {"model": "mobilenet_v3_small", "image_size": 32})
    (run / "metrics.json").write_text(json.dumps({"test": {"accuracy": 0.5, "macro_f1": 0.25, "num_examples": 4}}))
    (run / "history.csv").write_text("epoch,seconds\n1,2.5\n")  # no step, phase, ... columns
    (row,) = comparison.collect_runs(str(tmp_path / "runs"), measure=False)
    assert (row["name"], row["macro_f1"], row["test_examples"], row["training_seconds"]) == ("old_run", 0.25, 4, None)
    out = capsys.readouterr().out.strip()
    assert "training time of old_run n/a" in out and "history.csv" in out and len(out.splitlines()) == 1


# --- persistence ---------------------------------------------------------------


class _Untrusted(BaseEstimator, ClassifierMixin):
    """A type skops does not trust by default."""

    def predict(self, features):
        return np.zeros(len(features), int)


def test_saved_model_loads_with_identical_predictions(trained):
    test = trained["splits"]["test"]
    for model, record in trained["results"].items():
        loaded = persistence.load_model(record["folder"])
        reference = persistence.load_model(record["folder"])  # the saved file, twice: loading is deterministic
        loaded_predictions, loaded_scores = classifiers.predict_scores(loaded, test.features, len(test.classes))
        with open(os.path.join(record["folder"], "metrics.json")) as handle:
            saved_accuracy = json.load(handle)["test"]["accuracy"]
        assert np.mean(loaded_predictions == test.labels) == pytest.approx(saved_accuracy), model
        reference_scores = classifiers.predict_scores(reference, test.features, len(test.classes)).scores
        np.testing.assert_array_equal(loaded_scores, reference_scores)


def test_tampered_or_untrusted_model_files_are_refused(trained, tmp_path):
    folder = str(tmp_path / "copy")
    shutil.copytree(trained["results"]["logreg"]["folder"], folder)
    model_path = os.path.join(folder, persistence.MODEL_FILE)
    with open(model_path, "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(UserInputError, match="does not match the SHA-256"):
        persistence.load_model(folder)
    # A file whose hash was updated too still may not ask for types outside skops' defaults.
    sha256 = persistence.save_model(Pipeline([("classifier", _Untrusted())]), model_path)
    with open(os.path.join(folder, persistence.RESULT_FILE), "r+") as handle:
        record = json.load(handle)
        handle.seek(0)
        handle.truncate()
        json.dump({**record, "model_sha256": sha256}, handle)
    with pytest.raises(UserInputError, match="untrusted types"):
        persistence.load_model(folder)
    os.remove(model_path)
    with pytest.raises(InputNotFoundError):
        persistence.load_model(folder)


# --- large data paths: linear models and RBF on subsamples their solver holds -----


def test_logreg_and_rbf_train_on_the_subsample_their_memory_holds(trained, built_records, tmp_path, capsys):
    records_dir, _ = built_records
    train = trained["splits"]["train"]
    per_row = classifiers.solver_bytes("logreg", 1, train.features.shape[1], len(train.classes))
    run_config = _config(
        records_dir,
        tmp_path / "large",
        trained["cache_dir"],
        models=("logreg", "rbf_svm"),
        in_memory_gb=300 * per_row / 2**30,
        rbf_max_train=200,
    )
    results = {record["model"]: record for record in baseline.run_baselines(run_config)["baselines"]}
    out = capsys.readouterr().out
    assert "(--in-memory-gb)" in out and "(--rbf-max-train)" in out
    for model, size in (("logreg", 300), ("rbf_svm", 200)):
        record = results[model]
        assert record["solver"] == "in memory" and record["subsample"]["of"] == len(train.labels)
        assert abs(record["subsample"]["examples"] - size) <= len(train.classes), model
        assert record["search"]["final_fit"]["train_examples"] == record["subsample"]["examples"]
    majority = _majority_metrics(trained["splits"])
    for model, record in results.items():
        assert record["metrics"]["test"]["accuracy"] >= majority["accuracy"] + 0.2, (model, record["metrics"]["test"])


def test_a_memory_budget_below_one_row_per_class_is_a_one_line_error(trained, built_records, tmp_path):
    records_dir, _ = built_records
    run_config = _config(records_dir, tmp_path / "tiny", trained["cache_dir"], models=("logreg",), in_memory_gb=1e-6)
    with pytest.raises(UserInputError, match=r"--in-memory-gb 1e-06 holds 0 training rows for logreg"):
        baseline.run_baselines(run_config)


# --- bad input and the command line -------------------------------------------


def _tampered_cache(trained, tmp_path, split, change):
    """A copy of the module's feature cache with one split changed by `change(split_folder)`."""
    cache_dir = tmp_path / "cache"
    shutil.copytree(trained["cache_dir"], cache_dir)
    (folder,) = [name for name in os.listdir(cache_dir) if not name.startswith(".")]  # not the output marker and lock
    change(os.path.join(cache_dir, folder, split))
    return str(cache_dir)


def _narrow_features(path):
    np.save(
        os.path.join(path, "features.npy"), np.zeros((len(np.load(os.path.join(path, "labels.npy"))), 5), np.float32)
    )


def _fewer_classes(path):
    with open(os.path.join(path, feature_cache.METADATA), "r+") as handle:
        info = json.load(handle)
        handle.seek(0)
        handle.truncate()
        json.dump({**info, "classes": info["classes"][:3]}, handle)


def _one_class(path):
    np.save(os.path.join(path, "labels.npy"), np.zeros_like(np.load(os.path.join(path, "labels.npy"))))


def _non_finite(value, row):
    def change(path):
        features = np.load(os.path.join(path, "features.npy"))
        features[row, 3] = value
        np.save(os.path.join(path, "features.npy"), features)

    return change


def _emptied(path):
    for name in os.listdir(path):
        os.remove(os.path.join(path, name))


@pytest.mark.parametrize(
    "expected, split, change",
    [
        ("columns, train's", "validation", _narrow_features),
        ("label space of validation", "validation", _fewer_classes),
        ("single class", "train", _one_class),
        ("empty or incomplete", "test", _emptied),
        ("features of train hold NaN or infinite values (row 7", "train", _non_finite(np.nan, 7)),
        ("features of validation hold NaN or infinite values (row 0", "validation", _non_finite(np.inf, 0)),
        ("features of test hold NaN or infinite values", "test", _non_finite(-np.inf, 2)),
    ],
)
def test_a_damaged_feature_cache_is_a_one_line_error(trained, built_records, tmp_path, capsys, expected, split, change):
    records_dir, _ = built_records
    cache_dir = _tampered_cache(trained, tmp_path, split, change)
    args = [
        "--records",
        records_dir,
        "--image-size",
        str(IMAGE_SIZE),
        "--output",
        str(tmp_path / "out"),
        "--cache-dir",
        cache_dir,
        "--no-progress",
    ]
    assert baselines.main(args) == 2, expected
    error = capsys.readouterr().err.strip()
    assert expected in error and len(error.splitlines()) == 1, (expected, error)
    assert not os.path.exists(tmp_path / "out" / "handcrafted-logreg")  # nothing trained on bad input


@pytest.mark.parametrize(
    "expected, extra",
    [
        ("has no model.keras", ["--features", "cnn", "--run", "{empty_run}"]),
        ("--sgd-epochs 0 must be at least 1", ["--sgd-epochs", "0"]),
        ("--runs '/nonexistent' is not a folder", ["--runs", "/nonexistent"]),
        ("--run chooses CNN features", ["--run", "{empty_run}"]),
        ("not empty and was not written by `abo_tf.baselines`", ["--output", "{foreign}"]),
        ("models = []: give at least one value, from ('logreg', 'linear_svm'", ["--config", "{no_models}"]),
    ],
)
def test_bad_baseline_options_are_one_line_errors(built_records, tmp_path, capsys, expected, extra):
    records_dir, _ = built_records
    (tmp_path / "empty_run").mkdir()
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    (tmp_path / "no_models.toml").write_text("models = []\n")
    names = {
        "empty_run": tmp_path / "empty_run",
        "foreign": tmp_path / "foreign",
        "no_models": tmp_path / "no_models.toml",
    }
    extra = [arg.format(**names) for arg in extra]
    assert baselines.main(["--records", records_dir, "--output", str(tmp_path / "out"), *extra]) == 2, expected
    error = capsys.readouterr().err.strip()
    assert expected in error and len(error.splitlines()) == 1, (expected, error)
    assert os.listdir(tmp_path / "foreign") == ["notes.txt"]


def test_check_splits_accepts_the_extracted_splits(trained):
    baseline.check_splits(trained["splits"])


@pytest.mark.slow
def test_command_line_trains_with_the_default_grid_and_writes_the_comparison(trained, built_records, tmp_path, capsys):
    records_dir, _ = built_records
    output = tmp_path / "cli"
    args = [
        "--records",
        records_dir,
        "--image-size",
        str(IMAGE_SIZE),
        "--model",
        "logreg",
        "--output",
        str(output),
        "--cache-dir",
        trained["cache_dir"],
        "--runs",
        trained["runs"],
        "--no-measure-runs",
        "--no-progress",
    ]
    assert baselines.main(args) == 0
    out = capsys.readouterr().out
    assert "handcrafted-logreg: test accuracy" in out and "| tiny_cnn |" in out
    with open(output / "handcrafted-logreg" / "baseline.json") as handle:
        recorded = json.load(handle)["search"]
    assert recorded["grid"] == search.GRIDS["logreg"]
    assert len(recorded["candidates"]) == len(search.GRIDS["logreg"]["classifier__C"])


def test_help_groups_flags_with_defaults(capsys):
    with pytest.raises(SystemExit):
        baselines.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for heading in ("data:", "features:", "models:", "comparison:", "output:"):
        assert heading in text
    assert f"(default: {classifiers.SGD_EPOCHS})" in text
    assert "--rbf-max-train RBF_MAX_TRAIN exact rbf_svm (SVC) trains on a stratified subsample" in text
    assert f"(default: {baseline.RBF_MAX_TRAIN})" in text and "--exact-kernel-max-classes" in text


@pytest.mark.parametrize("model", ["logreg", "rbf_svm"])
def test_a_memory_budget_beyond_any_float_trains_on_every_row(trained, built_records, model):
    records_dir, _ = built_records
    train = trained["splits"]["train"]
    run_config = _config(records_dir, "unused", trained["cache_dir"], in_memory_gb=1e300)  # 1e300 * 2**30 is inf
    plan = baseline._training_rows(baseline.make_training(model, train, run_config), run_config)
    assert plan.subsample is None and len(plan.rows) == len(train.labels)


def test_a_kernel_limit_below_one_row_per_class_names_its_flag(trained, built_records):
    records_dir, _ = built_records
    run_config = _config(records_dir, "unused", trained["cache_dir"], rbf_max_train=2)
    with pytest.raises(UserInputError, match=r"^--rbf-max-train 2 holds 2 training rows for rbf_svm"):
        baseline._training_rows(baseline.make_training("rbf_svm", trained["splits"]["train"], run_config), run_config)


@pytest.mark.parametrize("model, flag", [("rbf_svm", "--rbf-max-train")])
def test_an_svm_limit_below_one_row_per_class_fails_before_any_model_trains(
    trained, built_records, tmp_path, capsys, model, flag
):
    records_dir, _ = built_records
    output = tmp_path / "out"
    args = ["--records", records_dir, "--image-size", str(IMAGE_SIZE), "--output", str(output)]
    args += ["--cache-dir", trained["cache_dir"], "--no-progress", "--model", "logreg", model, flag, "3"]
    assert baselines.main(args) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"error: {flag} 3 holds 3 training rows for {model}") and len(error.splitlines()) == 1
    assert not os.path.exists(output / "handcrafted-logreg")  # refused before logreg, listed first, trained


def test_a_candidate_that_fails_to_fit_is_recorded_without_shifting_the_others(trained):
    train, validation = trained["splits"]["train"], trained["splits"]["validation"]
    training = classifiers.Training("logreg", train, np.arange(len(train.labels)), 10, 0)
    grid = {"classifier__C": [-1.0, 0.1, 1.0]}  # a negative C fails scikit-learn's parameter check
    record = search.search(training, grid, validation, progress=False).record
    failed, *fitted = record["candidates"]
    assert failed["validation_macro_f1"] is None and failed["converged"] is None
    assert all(row["validation_macro_f1"] is not None and isinstance(row["converged"], bool) for row in fitted)
    assert record["chosen"]["classifier__C"] in (0.1, 1.0)
    with pytest.raises(UserInputError, match=r"every candidate of the logreg search failed to fit \(.*C"):
        search.search(training, {"classifier__C": [-1.0, -2.0]}, validation, progress=False)


def test_the_same_fit_saves_the_same_model_bytes(trained, tmp_path):
    train, validation = trained["splits"]["train"], trained["splits"]["validation"]
    training = classifiers.Training("rbf_svm", train, np.arange(len(train.labels)), 10, 0)
    params = {"classifier__C": 1.0, "pca": search.GRIDS["rbf_svm"]["pca"][1]}
    hashes = []
    for name in ("first", "second"):
        pipeline = classifiers.fit(training, params, training.rows).pipeline
        (tmp_path / name).mkdir()
        hashes.append(persistence.save_model(pipeline, str(tmp_path / name / persistence.MODEL_FILE)))
        persistence.write_record(str(tmp_path / name), {"model_sha256": hashes[-1]})
    assert hashes[0] == hashes[1]
    loaded = persistence.load_model(str(tmp_path / "second"))
    np.testing.assert_array_equal(loaded.predict(validation.features), pipeline.predict(validation.features))


def test_the_search_writes_no_line_per_candidate_in_a_log(trained, capsys):
    train, validation = trained["splits"]["train"], trained["splits"]["validation"]
    training = classifiers.Training("sgd", train, np.arange(len(train.labels)), 2, 0)
    search.search(training, SMALL_GRIDS["sgd"], validation, progress=True)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sgd search")]
    assert len(lines) <= 2 and "\r" not in "".join(lines)  # opened and closed: 8+ candidates in well under 30 s


def test_a_bar_in_a_log_writes_a_line_per_interval_while_nothing_advances(capsys):
    # One candidate of a 576-class search can take minutes: the log still gets a line every interval.
    with console.progress_bar(total=1, desc="slow search") as bar, classifiers.heartbeat(bar, interval=0.05):
        time.sleep(0.3)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("slow search")]
    assert len(lines) >= 3


@pytest.mark.parametrize(
    "kind, shift, hellinger, expected",
    [
        ("cnn", 0, True, "l2"),
        ("handcrafted", 10, True, "hellinger"),
        ("handcrafted", 10, False, "none"),
        ("handcrafted", 0, True, "none"),
    ],
)
def test_each_kind_of_features_gets_its_normalisation(kind, shift, hellinger, expected):
    # Square roots only of histograms (never negative); CNN embeddings L2-normalised, the linear probe's input.
    means = synthetic_features.class_means(3, 4) + shift
    info = {"name": kind, "spec": {"kind": kind}}
    train = synthetic_features.split("train", 60, means, 0, info=info)
    run_config = baseline.BaselineConfig(records="unused", output="unused", hellinger=hellinger)
    training = baseline.make_training("logreg", train, run_config)
    assert training.normalisation == expected
    step = training.pipeline().named_steps["normalise"]
    assert {"l2": Normalizer, "hellinger": FunctionTransformer}.get(expected, str) is type(step)


def test_a_solver_that_stopped_early_with_a_convergence_warning_did_not_converge():
    """lbfgs stops before max_iter when its line search fails; scikit-learn says so only by a ConvergenceWarning."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    rng = np.random.default_rng(0)
    features, labels = rng.normal(size=(40, 3)), np.repeat([0, 1], 20)
    pipeline = Pipeline([("classifier", LogisticRegression(max_iter=100))]).fit(features, labels)
    bar = console.progress_bar(enabled=False, total=2)
    scorer = search._Scorer(bar, ["classifier__C"])
    scorer(pipeline, features, labels)  # stopped well before 100 iterations, no warning: converged
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        scorer.caught = caught
        warnings.warn("lbfgs failed to converge (status=2)", ConvergenceWarning, stacklevel=1)
        scorer(pipeline, features, labels)
    assert [converged for _, converged in scorer.converged] == [True, False]


def _synthetic_splits(rows, num_classes=5):
    means = synthetic_features.class_means(num_classes, 8)
    return {
        name: synthetic_features.split(name, size, means, seed)
        for seed, (name, size) in enumerate((("train", rows), ("validation", 300), ("test", 300)))
    }


def test_sgd_candidates_and_finalists_see_the_search_budget_and_the_final_fit_every_row(monkeypatch):
    # At full size a candidate seeing 1M examples cost 300 CPU s: the search compares, the final fit is kept.
    splits = _synthetic_splits(3_000)
    monkeypatch.setattr(classifiers, "SEARCH_SGD_EXAMPLES", 3_000)
    monkeypatch.setattr(classifiers, "SGD_EXAMPLES", 30_000)
    fits, fit = [], classifiers.fit
    monkeypatch.setattr(classifiers, "fit", lambda *args, **kwargs: fits.append(fit(*args, **kwargs)) or fits[-1])
    training = classifiers.Training("linear_svm", splits["train"], np.arange(3_000), epochs=100, seed=0)
    grid = {"classifier__alpha": [1e-4, 1e-3]}
    record = search.search(training, grid, splits["validation"], max_train=300, progress=False).record
    searcher = search._searcher(training, grid, None, None, record["search_train_examples"])
    assert searcher.estimator.named_steps["classifier"].max_iter == 10  # 3,000 examples over 300 rows
    # The finalists: 3,000 examples over 900 rows; the final fit: 30,000 over every row.
    assert record["rescored"]["train_examples"] == 900 and [fitted.epochs for fitted in fits] == [4, 4, 10]
    assert record["final_fit"] == {**record["final_fit"], "train_examples": 3_000, "epochs": 10}


def test_logreg_is_ranked_at_fewer_iterations_and_the_chosen_finalist_continues(monkeypatch):
    # At full size an lbfgs iteration over 40,000 rows costs 1.6 CPU s: candidates and finalists are compared
    # after SEARCH_LOGREG_MAX_ITER iterations, and the chosen finalist continues from its coefficients.
    splits = _synthetic_splits(600)
    training = classifiers.Training("logreg", splits["train"], np.arange(600), epochs=1, seed=0)
    searcher = search._searcher(training, {"classifier__C": [1.0]}, None, None, 200)
    assert searcher.estimator.named_steps["classifier"].max_iter == classifiers.SEARCH_LOGREG_MAX_ITER
    monkeypatch.setattr(classifiers, "SEARCH_LOGREG_MAX_ITER", 2)  # far from converged: the continuation shows
    iterations, fit = [], classifiers.fit
    monkeypatch.setattr(
        classifiers, "fit", lambda *args, **kwargs: iterations.append(args[1]["classifier__max_iter"]) or fit(*args)
    )
    found = search.search(training, {"classifier__C": [0.1, 1.0]}, splits["validation"], max_train=200, progress=False)
    assert iterations == [2, 2] and found.record["rescored"]["train_examples"] == 600
    classifier = found.pipeline.named_steps["classifier"]
    assert classifier.max_iter == classifiers.LOGREG_MAX_ITER and classifier.n_iter_[0] > 2
    again = classifiers.predict_scores(found.pipeline, splits["validation"].features, 5)
    np.testing.assert_array_equal(found.validation.scores.scores, again.scores)


def test_validation_is_scored_once_when_the_finalists_fit_every_row(monkeypatch):
    # kNN at full size: each scoring of validation is 42,000 queries; the chosen finalist's scores are the evaluation's.
    # The candidates differ in k alone: validation's neighbours are found once by the search, once for the finalists.
    splits = _synthetic_splits(600)
    validation = splits["validation"]
    scored, chunk_scores, searched, neighbours = [], classifiers._chunk_scores, [], classifiers.neighbour_scores

    def counted(pipeline, features):
        scored.append(features is validation.features)
        return chunk_scores(pipeline, features)

    monkeypatch.setattr(classifiers, "_chunk_scores", counted)
    monkeypatch.setattr(classifiers, "neighbour_scores", lambda *args: searched.append(args[2]) or neighbours(*args))
    training = classifiers.Training("knn", splits["train"], np.arange(600), epochs=1, seed=0, weighting="none")
    found = search.search(training, SMALL_KNN_GRID, validation, max_train=200, progress=False)
    assert found.record["rescored"]["train_examples"] == 600 and found.validation is not None
    assert scored.count(True) == 0 and searched[0] == [1, 5, 15] and len(searched) == 2 and len(searched[1]) == 2
    assert found.record["strategy"] == search.NEIGHBOUR_STRATEGY
    results = evaluation.evaluate(found.pipeline, splits, bootstrap_samples=0, scored={"validation": found.validation})
    assert scored.count(True) == 0
    fresh = evaluation.evaluate(found.pipeline, splits, bootstrap_samples=0)
    same = [json.dumps(result["validation"].metrics, sort_keys=True) for result in (results, fresh)]  # NaN != NaN
    assert same[0] == same[1]


def test_the_halving_search_scores_each_candidate_on_validation_only(monkeypatch):
    # HalvingGridSearchCV also scored every candidate's training fold by default: twice the scoring, the bar counted
    # each candidate twice.
    splits = _synthetic_splits(600)
    calls, score = [], search._Scorer.__call__
    monkeypatch.setattr(
        search._Scorer, "__call__", lambda self, *args: calls.append(len(args[-1])) or score(self, *args)
    )
    training = classifiers.Training("sgd", splits["train"], np.arange(600), epochs=2, seed=0)
    record = search.search(training, SMALL_GRIDS["sgd"], splits["validation"], max_train=300, progress=False).record
    assert record["strategy"].startswith("successive halving")
    # One call a candidate, on its round's share of validation (halving subsamples both folds).
    assert calls == [row["validation_examples"] for row in record["candidates"]], (calls, record["candidates"])


def test_a_large_grid_on_fewer_rows_than_halving_starts_on_is_searched_exhaustively():
    # 5 classes, a row each, and 2 validation rows: successive halving's first round needs 10 rows (a traceback).
    means = synthetic_features.class_means(5, 4)
    train = synthetic_features.split("train", 5, means, 0)
    validation = synthetic_features.split("validation", 5, means, 1)
    validation.features, validation.labels = validation.features[:2], validation.labels[:2]
    training = classifiers.Training("sgd", train, np.arange(5), epochs=1, seed=0)
    found = search.search(training, search.GRIDS["sgd"], validation, progress=False)
    assert found.record["strategy"] == "exhaustive (GridSearchCV)" and len(found.record["candidates"]) == 12


def test_each_k_voting_from_one_neighbour_search_scores_as_scikit_learns_knn():
    # Validation rows that repeat training rows: their neighbours at distance 0 take every vote.
    splits = _synthetic_splits(600)
    validation = splits["validation"]
    validation.features[:20] = splits["train"].features[:20]
    training = classifiers.Training("knn", splits["train"], np.arange(600), epochs=1, seed=0, weighting="none")
    fitted = classifiers.fit(training, {"classifier__n_neighbors": 1}, training.rows)
    timed = classifiers.neighbour_scores(fitted.pipeline, validation, [15, 1, 5])
    for k in (1, 5, 15):
        expected = classifiers.predict_scores(
            fitted.pipeline.set_params(classifier__n_neighbors=k), validation.features, 5
        )
        np.testing.assert_array_equal(timed[k].scores.predictions, expected.predictions)
        np.testing.assert_array_equal(timed[k].scores.scores, expected.scores)


def test_the_knn_search_over_k_chooses_and_scores_as_a_grid_search_of_each_k(monkeypatch):
    splits = _synthetic_splits(600, num_classes=12)
    training = classifiers.Training("knn", splits["train"], np.arange(600), epochs=1, seed=0, weighting="none")
    shared = search.search(training, SMALL_KNN_GRID, splits["validation"], max_train=200, progress=False)
    monkeypatch.setattr(search, "_over_k", lambda *args: False)
    each = search.search(training, SMALL_KNN_GRID, splits["validation"], max_train=200, progress=False)
    assert each.record["strategy"] == "exhaustive (GridSearchCV)"
    scores = [[row["validation_macro_f1"] for row in found.record["candidates"]] for found in (shared, each)]
    assert scores[0] == scores[1] and len(set(scores[0])) == 3
    assert shared.record["rescored"]["finalists"] == each.record["rescored"]["finalists"]
    assert shared.record["chosen"] == each.record["chosen"]
    np.testing.assert_array_equal(shared.validation.scores.scores, each.validation.scores.scores)


def test_logreg_fitted_on_its_cap_continues_on_every_row_from_its_coefficients(capsys):
    # At full size lbfgs from scratch on every row would take over 1,000 CPU s: a few iterations continue the cap's.
    splits = _synthetic_splits(600)
    train, every = splits["train"], np.arange(600)
    capped = classifiers.capped_subsample(train.labels, every, 100, 0)
    training = classifiers.Training("logreg", train, capped, epochs=1, seed=0)
    found = search.search(training, {"classifier__C": [1.0]}, splits["validation"], max_train=100, progress=False)
    start = found.pipeline.named_steps["classifier"].coef_.copy()
    continued = search.continue_on(training, found, every, 3, progress=False)
    fit, classifier = continued.record["final_fit"], continued.pipeline.named_steps["classifier"]
    assert fit["train_examples"] == 600 and fit["continued_from"]["train_examples"] == len(capped)
    assert fit["iterations"] == 3 and fit["converged"] is False and continued.validation is None
    assert classifier.class_weight == classifiers.class_weights(train.labels, "balanced")
    features = classifiers._transformed(continued.pipeline, train.features, every)
    with pytest.warns(ConvergenceWarning):
        fresh = LogisticRegression(max_iter=3, class_weight=classifier.class_weight).fit(features, train.labels)
    assert 0 < np.linalg.norm(classifier.coef_ - start) < np.linalg.norm(fresh.coef_ - start)  # not from zero
    # By default, where lbfgs holds every row in --in-memory-gb, and not when told 0 iterations.
    plan = baseline.TrainingRows(capped, {"examples": len(capped), "of": 600})
    needed = lbfgs.memory_bytes(600, train.features.shape[1], len(train.classes))
    held = [
        baseline._continues_on_every_row(training, plan, baseline.BaselineConfig(output="unused", **options))
        for options in ({}, {"logreg_all_rows_iter": 0}, {"in_memory_gb": (needed - 1) / 2**30})
    ]
    assert held == [True, False, False]
    said = capsys.readouterr().out  # the budget's refusal is said, not silent
    assert said.count("logreg: stays on its 100 capped rows") == 1 and "over --in-memory-gb" in said, said


@pytest.mark.parametrize("iterations", [0, 2])
def test_logreg_s_capped_fit_scores_validation_only_when_it_is_the_model_kept(monkeypatch, iterations):
    # A full scoring of validation is 42,442 x 575 scores at full size: the evaluation's when the capped fit is the
    # model kept, another model's when lbfgs continues it on every row.
    splits = _synthetic_splits(600)
    scored, timed_scores = [], classifiers.timed_scores
    monkeypatch.setattr(
        classifiers, "timed_scores", lambda pipeline, data: scored.append(data) or timed_scores(pipeline, data)
    )
    grids = {"logreg": {"classifier__C": [0.1, 1.0]}}
    run_config = baseline.BaselineConfig(
        output="unused", logreg_max_train=150, search_max_train=60, logreg_all_rows_iter=iterations, grids=grids
    )
    _, plan, found = baseline._search_and_fit("logreg", splits, run_config)
    final_fit = found.record["final_fit"]
    capped = final_fit["continued_from"]["train_examples"] if iterations else plan.subsample["examples"]
    # The finalists were fitted on every capped row: the chosen one's fit is the capped fit.
    assert found.record["rescored"]["train_examples"] == capped <= 150
    if iterations:
        assert scored == [] and found.validation is None and final_fit["train_examples"] == 600
    else:
        assert scored == [splits["validation"]] and found.validation is not None


def _multinomial_problem(rows=300, columns=6, num_classes=5):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, num_classes, rows) * 2 + 1  # classes 1, 3, ...: not their indices
    features = rng.standard_normal((rows, columns)) + labels[:, None] * 0.1
    return features, labels


def _scikit_learns_objective(num_classes):
    """What LogisticRegression's lbfgs minimises (scikit-learn 1.9), given float64 features: the tests' oracle."""
    from sklearn._loss.loss import HalfMultinomialLoss
    from sklearn.linear_model._linear_loss import LinearModelLoss

    return LinearModelLoss(HalfMultinomialLoss(n_classes=num_classes), fit_intercept=True)


# Scale 30: most rows' probabilities of the other classes are subnormal or zero in float32, as in a weakly
# regularised fit on the linear probe's embeddings; flushed to zero, they leave the objective scikit-learn's.
@pytest.mark.parametrize("threads, scale", [(1, 0.3), (2, 0.3), (2, 30.0)])
def test_the_chunked_lbfgs_objective_is_scikit_learns(monkeypatch, threads, scale):
    monkeypatch.setattr(lbfgs, "CHUNK_ROWS", 64)  # several chunks, the last one short
    features, labels = _multinomial_problem()
    encoded = np.unique(labels, return_inverse=True)[1]
    rng = np.random.default_rng(1)
    flat = rng.standard_normal(5 * 7) * scale
    sample_weight = rng.uniform(0.5, 2.0, len(labels)).astype(np.float32)
    expected = _scikit_learns_objective(5).loss_gradient(
        flat, features, encoded.astype(float), sample_weight.astype(float), 0.01
    )
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        loss, gradient = lbfgs.loss_gradient(
            flat, features.astype(np.float32), encoded, sample_weight, 0.01, pool if threads > 1 else None
        )
    np.testing.assert_allclose(loss, expected[0], rtol=1e-6)
    np.testing.assert_allclose(gradient, expected[1], rtol=1e-5, atol=1e-6)


def test_lbfgs_flushes_subnormal_probabilities_only():
    tiny = np.finfo(np.float32).tiny
    values = np.array([0.0, tiny / 2**20, tiny / 2, tiny, 1e-30, 0.5], np.float32)
    flushed = lbfgs.flush_subnormals(values.copy())
    np.testing.assert_array_equal(flushed, np.array([0.0, 0.0, 0.0, tiny, 1e-30, 0.5], np.float32))


def test_lbfgs_continued_chunk_by_chunk_reaches_scikit_learns_fit():
    features, labels = _multinomial_problem()
    weights = classifiers.class_weights(labels, "balanced")
    expected = LogisticRegression(C=0.5, class_weight=weights, tol=1e-8, max_iter=1000).fit(features, labels)
    with pytest.warns(ConvergenceWarning):  # stopped at 2 iterations
        started = LogisticRegression(C=0.5, class_weight=weights, max_iter=2).fit(features[:100], labels[:100])
    with pytest.warns(ConvergenceWarning):
        lbfgs.fit_further(started, features.astype(np.float32), labels, 3)
    assert started.n_iter_.tolist() == [3]
    started.set_params(tol=1e-8)
    with warnings.catch_warnings():  # float32 sums: the line search may stop at their rounding, as scikit-learn's
        warnings.simplefilter("ignore", ConvergenceWarning)
        lbfgs.fit_further(started, features.astype(np.float32), labels, 1000)  # from where it stopped
    assert started.coef_.dtype == np.float32 and 3 < started.n_iter_[0] < 1000
    np.testing.assert_allclose(started.coef_, expected.coef_, atol=1e-3)
    np.testing.assert_allclose(started.intercept_, expected.intercept_, atol=1e-3)
    # The same minimum of scikit-learn's objective (its class weights as sample weights, its scaling of C).
    sample_weight = np.array([weights[label] for label in labels])
    objective = _scikit_learns_objective(5)

    def value(fitted):
        flat = np.hstack([fitted.coef_, fitted.intercept_[:, None]]).astype(float).ravel(order="F")
        encoded = np.unique(labels, return_inverse=True)[1].astype(float)
        return objective.loss(flat, features, encoded, sample_weight, 1 / (0.5 * sample_weight.sum()))

    assert value(started) <= value(expected) * (1 + 1e-6)


# Issue 21: the search's candidates and finalists are fitted on the chunked objective with subnormal probabilities
# flushed (`lbfgs.ChunkedLogisticRegression`), scikit-learn's loss computed them (75 CPU s a candidate at full size).
@pytest.mark.parametrize(
    "dtype, weighting, atol",
    [(np.float64, "balanced", 1e-6), (np.float64, "sqrt", 1e-6), (np.float64, None, 1e-6), (np.float32, "sqrt", 2e-3)],
)
def test_the_chunked_logistic_regression_fits_as_scikit_learns(monkeypatch, dtype, weighting, atol):
    monkeypatch.setattr(lbfgs, "CHUNK_ROWS", 64)  # several chunks
    features, labels = _multinomial_problem()
    # "balanced" as scikit-learn reads it (make_pipeline's default); a dict as `Training.pipeline` gives it.
    weights = weighting if weighting in ("balanced", None) else classifiers.class_weights(labels, weighting)
    options = dict(C=0.5, class_weight=weights, tol=1e-8, max_iter=1000)
    with warnings.catch_warnings():  # float32 sums: the line search may stop at their rounding, as scikit-learn's
        warnings.simplefilter("ignore", ConvergenceWarning)
        expected = LogisticRegression(**options).fit(features.astype(dtype), labels)
        fitted = lbfgs.ChunkedLogisticRegression(**options).fit(features.astype(dtype), labels)
    assert fitted.coef_.dtype == fitted.intercept_.dtype == expected.coef_.dtype == dtype
    assert fitted.coef_.shape == expected.coef_.shape == (5, 6) and fitted.classes_.tolist() == [1, 3, 5, 7, 9]
    np.testing.assert_allclose(fitted.coef_, expected.coef_, atol=atol)
    np.testing.assert_allclose(fitted.intercept_, expected.intercept_, atol=atol)
    if dtype == np.float64:  # the same path to the minimum, iteration by iteration
        assert fitted.n_iter_.tolist() == expected.n_iter_.tolist()
    np.testing.assert_array_equal(fitted.predict(features), expected.predict(features))


def test_the_chunked_logistic_regression_stops_and_warm_starts_as_scikit_learns():
    features, labels = _multinomial_problem()
    steps = []
    for estimator in (LogisticRegression, lbfgs.ChunkedLogisticRegression):
        classifier = estimator(C=0.5, max_iter=3, warm_start=True)
        with pytest.warns(ConvergenceWarning):  # stopped at max_iter, said as scikit-learn says it
            first = classifier.fit(features, labels).coef_.copy()
        with pytest.warns(ConvergenceWarning):
            classifier.fit(features, labels)  # from `first`
        steps.append((first, classifier.coef_, classifier.n_iter_.tolist()))
    np.testing.assert_allclose(steps[1][0], steps[0][0], atol=1e-9)
    np.testing.assert_allclose(steps[1][1], steps[0][1], atol=1e-9)
    assert steps[1][2] == steps[0][2] == [3] and not np.allclose(steps[0][0], steps[0][1])


@pytest.mark.parametrize("case", ["two classes", "sample weights", "no intercept"])
def test_the_fits_the_chunked_objective_does_not_compute_are_scikit_learns(case):
    features, labels = _multinomial_problem()
    if case == "two classes":
        labels = np.where(labels > 5, 9, 1)
    options = {"fit_intercept": False} if case == "no intercept" else {}
    fit = {"sample_weight": np.linspace(0.5, 2.0, len(labels))} if case == "sample weights" else {}
    expected = LogisticRegression(**options).fit(features, labels, **fit)
    fitted = lbfgs.ChunkedLogisticRegression(**options).fit(features, labels, **fit)
    np.testing.assert_array_equal(fitted.coef_, expected.coef_)
    np.testing.assert_array_equal(fitted.intercept_, expected.intercept_)


def test_the_logreg_search_scores_and_chooses_as_with_scikit_learns_fit(monkeypatch):
    splits = _synthetic_splits(600, num_classes=8)
    training = classifiers.Training("logreg", splits["train"], np.arange(600), epochs=1, seed=0)
    grid = {"classifier__C": [0.001, 0.01, 0.1, 10.0]}
    ours = search.search(training, grid, splits["validation"], max_train=200, progress=False)
    assert isinstance(ours.pipeline.named_steps["classifier"], lbfgs.ChunkedLogisticRegression)
    monkeypatch.setattr(lbfgs, "ChunkedLogisticRegression", LogisticRegression)  # make_pipeline's classifier
    theirs = search.search(training, grid, splits["validation"], max_train=200, progress=False)
    assert type(theirs.pipeline.named_steps["classifier"]) is LogisticRegression
    scores = [[row["validation_macro_f1"] for row in found.record["candidates"]] for found in (ours, theirs)]
    assert len(set(scores[1])) > 2, scores  # the choice is a choice
    np.testing.assert_allclose(scores[0], scores[1], atol=0.01)
    assert ours.record["chosen"] == theirs.record["chosen"]
    finalists = [
        [row["validation_macro_f1"] for row in found.record["rescored"]["finalists"]] for found in (ours, theirs)
    ]
    np.testing.assert_allclose(finalists[0], finalists[1], atol=0.01)
