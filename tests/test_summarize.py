"""The end-of-pipeline summary reads what the commands wrote and says who won, with intervals."""

import json
import os

import numpy as np
import pandas as pd
import pytest

from abo_tf import summarize
from abo_tf.classical import comparison
from abo_tf.reports import demo_summary, predictions_file

CLASSES = ("CHAIR", "LAMP", "SOFA")


def _folder_with_predictions(root, name, labels, predictions):
    folder = root / name
    folder.mkdir(parents=True)
    count = len(labels)
    items = [f"item{index // 2}" for index in range(count)]  # two views per item
    ids = [f"image{index:04d}" for index in range(count)]
    predictions_file.write(str(folder), ids, items, labels, predictions, np.ones(count, bool), CLASSES)
    return str(folder)


def _row(name, kind, folder, macro_f1, interval):
    row = dict.fromkeys(comparison.COMPARISON_FIELDS)
    row.update(name=name, kind=kind, folder=folder, macro_f1=macro_f1)
    row.update(macro_f1_low=interval[0], macro_f1_high=interval[1])
    return row


@pytest.fixture
def pipeline(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 400)
    cnn_predictions = np.where(rng.random(400) < 0.9, labels, (labels + 1) % 3)  # about 90% right
    weak_predictions = np.where(rng.random(400) < 0.5, labels, (labels + 1) % 3)  # about 50% right
    cnn = _folder_with_predictions(tmp_path, "run", labels, cnn_predictions)
    weak = _folder_with_predictions(tmp_path / "baselines", "handcrafted-logreg", labels, weak_predictions)
    rows = [
        _row("run", "cnn", cnn, 0.9, (0.87, 0.93)),
        _row("handcrafted-logreg", "baseline (logreg)", weak, 0.5, (0.45, 0.55)),
    ]
    pd.DataFrame(rows, columns=comparison.COMPARISON_FIELDS).to_csv(tmp_path / demo_summary.COMPARISON, index=False)
    (tmp_path / "audit").mkdir()
    audit = {"near_duplicate_groups": 3, "near_duplicate_images": 7, "groups_across_splits": 2, "test_images": 400}
    (tmp_path / demo_summary.AUDIT_SUMMARY).write_text(json.dumps(audit))
    return tmp_path


def test_the_summary_names_the_winner_with_a_paired_interval(pipeline, capsys):
    assert summarize.main([str(pipeline), "--bootstrap-samples", "200"]) == 0
    printed = capsys.readouterr().out
    assert "run (cnn), 0.900 [0.870, 0.930]" in printed
    assert "handcrafted-logreg (baseline (logreg)), 0.500 [0.450, 0.550]" in printed
    assert "the CNN is better" in printed
    assert "3 near-duplicate groups (7 images), 2 across splits" in printed
    for path in demo_summary.REPORTS.values():
        assert os.path.join(str(pipeline), path) in printed
    written = json.loads((pipeline / demo_summary.SUMMARY).read_text())
    difference = written["cnn_minus_best_baseline"]
    assert difference["difference"] > 0.3 and difference["includes_zero"] is False
    assert difference["interval"][0] > 0


def test_equal_models_are_said_to_be_indistinguishable(pipeline, capsys):
    frame = pd.read_csv(pipeline / demo_summary.COMPARISON)
    frame.loc[1, "folder"] = frame.loc[0, "folder"]  # the baseline's predictions are the CNN's
    frame.to_csv(pipeline / demo_summary.COMPARISON, index=False)
    assert summarize.main([str(pipeline), "--bootstrap-samples", "200"]) == 0
    assert "the test split cannot tell them apart" in capsys.readouterr().out


def test_a_folder_without_baselines_is_one_line(tmp_path, capsys):
    assert summarize.main([str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert "comparison.csv' does not exist" in error and len(error.splitlines()) == 1


def test_a_file_for_the_folder_is_one_line(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert summarize.main([str(tmp_path / "notes.txt")]) == 2
    error = capsys.readouterr().err.strip()
    assert "notes.txt' is not a folder: give the folder" in error and len(error.splitlines()) == 1, error


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "is not a comparison.csv"),
        (b"\xff\xfe\x00garbage", "is not a comparison.csv"),
        (b"name,kind\nrun,cnn\n", "lacks the columns"),
        (b"garbage\n", "lacks the columns"),
        (b"name,kind,macro_f1,macro_f1_low,macro_f1_high,folder\nrun,cnn,abc,,,run\n", "line 2: macro_f1 'abc'"),
        (b"name,kind,macro_f1,macro_f1_low,macro_f1_high,folder\nrun,cnn,inf,,,run\n", "'inf' is not a macro F1"),
    ],
)
def test_a_damaged_comparison_is_one_line(tmp_path, capsys, content, expected):
    (tmp_path / "baselines").mkdir()
    (tmp_path / demo_summary.COMPARISON).write_bytes(content)
    assert summarize.main([str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert expected in error and len(error.splitlines()) == 1, error


def test_an_audit_summary_that_is_not_an_object_is_one_line(pipeline, capsys):
    (pipeline / demo_summary.AUDIT_SUMMARY).write_text("[1, 2]")
    assert summarize.main([str(pipeline), "--bootstrap-samples", "0"]) == 2
    assert "is not an audit's summary.json" in capsys.readouterr().err


def test_planted_kinds_of_another_shape_leave_their_line_out():
    audit = {"label_issues": 3, "planted_label_errors": {"kinds": {"image flip": 5}, "precision": 0.5}}
    assert demo_summary._audit_lines(audit) == demo_summary._audit_lines({"label_issues": 3})


@pytest.mark.parametrize("hit, label", [("yes", "LAMP"), ("2", "LAMP"), ("", "LAMP"), ("1", "")])
def test_predictions_with_a_bad_top5_hit_or_a_missing_label_are_one_line(pipeline, capsys, hit, label):
    """Any text in top5_hit was read as a hit."""
    path = os.path.join(pd.read_csv(pipeline / demo_summary.COMPARISON).folder[1], predictions_file.TEST_PREDICTIONS)
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.loc[7, ["top5_hit", "label"]] = hit, label
    frame.to_csv(path, index=False)
    assert summarize.main([str(pipeline), "--bootstrap-samples", "20"]) == 2
    error = capsys.readouterr().err.strip()
    assert "line 9" in error and "top5_hit of 0 or 1" in error and len(error.splitlines()) == 1, error
