"""`python -m abo_tf.evaluate` on a tiny trained run: every report file, consistency, bad input."""

import json
import os

import numpy as np
import pandas as pd
import pytest

from abo_tf import evaluate
from abo_tf.records import build as records_build
from abo_tf.reports import evaluation
from tests.conftest import build_options

REPORT_FILES = (
    "metrics.json",
    "per_class.csv",
    "per_class_f1.png",
    "confusion_matrix.png",
    "confusion_matrix.csv",
    "mistakes.csv",
    "mistakes.png",
    "gradcam.png",
    "reliability.png",
    "calibration.csv",
    "confused_pairs.csv",
    "report.md",
)


@pytest.fixture(scope="module")
def report(trained_run, built_records, tmp_path_factory):
    records_dir, _ = built_records
    folder = str(tmp_path_factory.mktemp("eval") / "report")
    args = [
        "--model",
        os.path.join(trained_run, "saved_model"),
        "--records",
        records_dir,
        "--report",
        folder,
        "--gallery-size",
        "6",
        "--gradcam-examples",
        "2",
        "--no-progress",
    ]
    assert evaluate.main(args) == 0
    return folder


def test_every_report_file_is_written(report):
    for name in REPORT_FILES:
        assert os.path.getsize(os.path.join(report, name)) > 0, name
    markdown = open(os.path.join(report, "report.md")).read()
    for name in REPORT_FILES:
        if name.endswith(".png"):
            assert f"({name})" in markdown, name
    # MobileNetV3 at 32 px ends in a 1 x 1 feature map: the report says its heat map cannot locate anything.
    assert "The feature map is only 1 x 1 cells" in markdown


def test_metrics_match_the_training_runs_own_evaluation(report, trained_run, built_records):
    """The SavedModel through evaluate and the Keras model in training give the same test figures."""
    _, manifest = built_records
    result = json.load(open(os.path.join(report, "metrics.json")))
    trained = json.load(open(os.path.join(trained_run, "metrics.json")))["test"]
    assert result["num_examples"] == manifest["splits"]["test"]["num_examples"]
    for key in ("accuracy", "macro_f1", "macro_precision", "macro_recall", "top5_accuracy", "weighted_f1"):
        assert result[key] == pytest.approx(trained[key], abs=1e-6), key
    assert 0 <= result["expected_calibration_error"] <= 1
    # The run folded a temperature into its export: the report undoes it to show the figures before and after.
    temperature = json.load(open(os.path.join(trained_run, "metrics.json")))["validation"]["calibration"]["temperature"]
    assert result["calibration"]["temperature"] == temperature
    assert result["calibration"]["ece_after"] == pytest.approx(result["expected_calibration_error"], abs=1e-6)
    assert "NLL" in open(os.path.join(report, "report.md")).read()
    assert set(result["strata"]) == {"head", "torso", "tail"}
    # The sample's classes all have fewer than 1000 training images: the head is empty (null, not 0).
    assert result["strata"]["head"]["num_examples"] == 0 and result["strata"]["head"]["macro_f1"] is None
    assert sum(entry["num_examples"] for entry in result["strata"].values()) == result["num_examples"]
    # Both resample the same items (the records' item_id) with the same seed: the same intervals.
    assert result["bootstrap"] == trained["bootstrap"] and result["bootstrap"]["unit"] == "item_id"
    assert result["bootstrap"]["clusters"] < result["num_examples"]  # the sample's items have several views
    for key, interval in trained["intervals"].items():
        assert result["intervals"][key] == pytest.approx(interval, abs=1e-6), key
        # Items are resampled within their class, so a macro average is over the same classes in every resample
        # as in its figure (drawn freely, a one-class model's macro recall 1/15 read 1/13 in a resample missing
        # two classes, and its interval lay above the figure).
        assert 0 <= interval[0] <= trained[key] <= interval[1] <= 1, key


def test_report_gives_intervals_and_the_classes_averaged(report, trained_run):
    result = json.load(open(os.path.join(report, "metrics.json")))
    markdown = open(os.path.join(report, "report.md")).read()
    low, high = result["intervals"]["macro_f1"]
    assert f"| {result['macro_f1']:.3f} [{low:.3f}, {high:.3f}] |" in markdown
    assert f"Macro averages are over the {result['macro_classes']} classes" in markdown
    assert f"bootstrap over {result['bootstrap']['clusters']} items (item_id), 1000 resamples, seed 0" in markdown
    per_class = pd.read_csv(os.path.join(report, "per_class.csv"))
    assert per_class["in_macro_average"].sum() == result["macro_classes"]
    assert (per_class["in_macro_average"] == (per_class["support"] > 0)).all()
    predictions = pd.read_csv(os.path.join(trained_run, "test_predictions.csv"))
    assert (
        len(predictions) == result["num_examples"]
        and predictions["item_id"].nunique() == result["bootstrap"]["clusters"]
    )
    assert predictions["top5_hit"].mean() == pytest.approx(result["top5_accuracy"])


def test_tables_agree_with_the_metrics(report, built_records):
    _, manifest = built_records
    result = json.load(open(os.path.join(report, "metrics.json")))
    per_class = pd.read_csv(os.path.join(report, "per_class.csv"))
    assert per_class["class"].tolist() == manifest["classes"]
    assert per_class["support"].sum() == result["num_examples"]
    assert per_class["train_examples"].tolist() == [
        manifest["splits"]["train"]["per_class"].get(name, 0) for name in manifest["classes"]
    ]
    mistakes = pd.read_csv(os.path.join(report, "mistakes.csv"))
    assert len(mistakes) == result["num_mistakes"] == round((1 - result["accuracy"]) * result["num_examples"])
    assert (mistakes["true_class"] != mistakes["predicted_class"]).all()
    assert np.all(np.diff(mistakes["score"]) <= 0)  # most confident first
    calibration = pd.read_csv(os.path.join(report, "calibration.csv"))
    assert calibration["count"].sum() == result["num_examples"]


def test_confused_pairs_add_up_to_the_mistakes(report):
    mistakes = pd.read_csv(os.path.join(report, "mistakes.csv"))
    pairs = pd.read_csv(os.path.join(report, "confused_pairs.csv"))
    expected = mistakes.groupby(["true_class", "predicted_class"]).size()
    assert dict(zip(zip(pairs["true_class"], pairs["predicted_class"]), pairs["count"])) == expected.to_dict()
    assert np.all(np.diff(pairs["count"]) <= 0)
    per_class = pd.read_csv(os.path.join(report, "per_class.csv")).set_index("class")
    support = per_class.loc[pairs["true_class"], "support"].to_numpy()
    np.testing.assert_allclose(pairs["share"], pairs["count"] / support)
    markdown = open(os.path.join(report, "report.md")).read()
    top = pairs.iloc[0]
    assert f"| {top['true_class']} | {top['predicted_class']} | {top['count']} | {top['share']:.3f} |" in markdown


def test_console_summary_says_n_a_for_the_empty_head(trained_run, built_records, tmp_path, capsys):
    records_dir, _ = built_records
    args = [
        "--model",
        os.path.join(trained_run, "saved_model"),
        "--records",
        records_dir,
        "--report",
        str(tmp_path / "report"),
        "--gallery-size",
        "0",
        "--gradcam-examples",
        "0",
        "--no-progress",
    ]
    assert evaluate.main(args) == 0
    out = capsys.readouterr().out
    head = next(line for line in out.splitlines() if line.strip().startswith("head"))
    assert "0 images" in head and "macro F1 n/a" in head  # the sample has no class with 1000 training images
    assert "nan" not in out.lower()


def test_a_batch_that_does_not_fit_in_memory_is_a_one_line_error(
    trained_run, built_records, tmp_path, capsys, monkeypatch
):
    import tensorflow as tf

    def exhausted(*args):
        raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor with shape[64,224,224,3]")

    monkeypatch.setattr(evaluation, "_predict_batches", exhausted)  # a real OOM would take the shared machine's memory
    model = os.path.join(trained_run, "saved_model")
    code, err = _run(capsys, "--model", model, "--records", built_records[0], "--report", str(tmp_path / "r"))
    assert code == 2 and len(err.splitlines()) == 1
    assert err.endswith(
        "does not fit in memory (OOM when allocating tensor with shape[64,224,224,3]): lower --batch-size"
    )


def test_best_keeps_the_highest_priorities():
    best = evaluation._Best(2)
    for priority, name in ((0.5, "a"), (0.9, "b"), (0.1, "c"), (0.7, "d")):
        best.offer(priority, name, lambda name=name: name)
    assert best.items() == ["b", "d"]


def test_label_mapping_by_name():
    mapping = evaluation.label_mapping(["A", "B", "C"], ["C", "A", "B"], {"A": 1, "C": 2})
    assert mapping.tolist() == [1, 2, 0]
    # A class the model lacks is fine while the split has no example of it.
    assert evaluation.label_mapping(["A", "X"], ["A"], {"A": 3, "X": 0}).tolist() == [0, -1]
    with pytest.raises(ValueError, match=r"1 classes the model does not know \(X\)"):
        evaluation.label_mapping(["A", "X"], ["A"], {"A": 3, "X": 2})


def _run(capsys, *args):
    code = evaluate.main([*args, "--no-progress"])
    return code, capsys.readouterr().err.strip()


@pytest.fixture(scope="module")
def odd_records(abo_sample, tmp_path_factory):
    """Builds the tiny run cannot be evaluated on: no test split; training classes the run never saw."""
    root = tmp_path_factory.mktemp("odd_records")
    records_build.build(build_options(abo_sample, root / "no_test", split_fractions=(0.9, 0.1, 0.0)))
    # Every type of a single image kept, in train only (no group floor in validation and test).
    more = build_options(abo_sample, root / "more_classes", min_examples_per_class=1, min_groups_per_split=(1, 0, 0))
    records_build.build(more)
    return root


@pytest.mark.parametrize(
    "arguments, expected",
    [
        (["--model", "{tmp}"], "is not a SavedModel"),
        (["--model", "{tmp}/a_file"], "is a file, not a folder"),  # said "does not exist"
        (["--model", "{tmp}/a_link"], "is a link to nothing"),  # said "is a file"
        (["--split", "holdout"], "no split 'holdout'"),
        (["--report", "{tmp}/a_file/r"], "cannot create --report"),
        (["--report", "{tmp}/foreign"], "not empty and was not written by `abo_tf.evaluate`"),
        (["--tail-below", "50", "--head-min", "10"], "--tail-below 50"),
        (["--batch-size", "0"], "--batch-size 0 must be at least 1"),
        (["--records", "{odd}/no_test"], "split 'test' of"),
        (["--records", "{odd}/more_classes", "--split", "train"], "classes the model does not know"),
    ],
)
def test_bad_inputs_are_one_line_errors(trained_run, built_records, odd_records, tmp_path, capsys, arguments, expected):
    records_dir, _ = built_records
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_link").symlink_to(tmp_path / "nowhere")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    defaults = {
        "--model": os.path.join(trained_run, "saved_model"),
        "--records": records_dir,
        "--report": str(tmp_path / "r"),
    }
    arguments = [argument.format(tmp=tmp_path, odd=odd_records) for argument in arguments]
    given = dict(zip(arguments[::2], arguments[1::2]))
    code, err = _run(capsys, *[item for flag, value in {**defaults, **given}.items() for item in (flag, value)])
    assert code == 2
    assert err.startswith("error: ") and expected in err and "\n" not in err, err
    assert os.listdir(tmp_path / "foreign") == ["notes.txt"]
