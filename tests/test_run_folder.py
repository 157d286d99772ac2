"""abo_tf.training.run_folder: the run folder's contract, without training."""

import pytest

from abo_tf.common import config
from abo_tf.common.errors import UserInputError
from abo_tf.training import run_folder

ROWS = [
    run_folder.HistoryRow(1, 10, "head", 2.5, 0.25, 2.0, 0.5, 1e-3, 100.0, 3.5, 0.3),
    run_folder.HistoryRow(2, 20, "fine_tune", 1.5, 0.5, 1.25, 0.75, 1e-4, 120.0, 2.5, 0.6),
]


def test_history_round_trips_and_stops_at_a_step(tmp_path):
    run_folder.write_history(str(tmp_path), ROWS)
    assert run_folder.load_history(str(tmp_path)) == ROWS
    assert run_folder.load_history(str(tmp_path), up_to_step=15) == ROWS[:1]
    assert run_folder.training_seconds(str(tmp_path)) == 6.0


def test_an_older_run_folder_reads_as_its_own_config_and_history(tmp_path):
    """Files written before val_macro_f1 and the recipe's options existed: NaN F1, the options' old behaviour."""
    columns = run_folder.HISTORY_FIELDS[:-1]
    (tmp_path / run_folder.HISTORY).write_text(",".join(columns) + "\n1,10,head,2.5,0.25,2.0,0.5,0.001,100.0,3.5\n")
    (row,) = run_folder.load_history(str(tmp_path))
    assert row.seconds == 3.5 and row.val_macro_f1 != row.val_macro_f1
    (tmp_path / run_folder.CONFIG).write_text("[schedule]\nweight_decay = 0.0001\n")
    assert run_folder.load_config(str(tmp_path)) == {"weight_decay": 0.0001, **run_folder.ADDED_OPTIONS}


@pytest.mark.parametrize(
    "names, expected",
    [
        ((run_folder.CONFIG, run_folder.METRICS, run_folder.HISTORY), True),
        ((run_folder.CONFIG, run_folder.METRICS), False),  # an evaluation report, or a baseline
        ((run_folder.METRICS, run_folder.HISTORY), False),
    ],
)
def test_only_a_finished_training_run_is_a_run(tmp_path, names, expected):
    for name in names:
        (tmp_path / name).write_text("")
    assert run_folder.is_run(str(tmp_path)) is expected


def test_a_damaged_history_is_a_named_error(tmp_path):
    (tmp_path / run_folder.HISTORY).write_text("epoch,seconds\n1,2.5\n")
    with pytest.raises(UserInputError, match="history.csv"):
        run_folder.load_history(str(tmp_path))


def test_config_and_class_names(tmp_path):
    config.save_run_config(str(tmp_path), {"model": "vgg16", "image_size": 64, "tpu": None})
    assert run_folder.load_config(str(tmp_path)) == {"model": "vgg16", "image_size": 64, **run_folder.ADDED_OPTIONS}
    run_folder.write_class_names(str(tmp_path), ["A", "B_C"])
    assert run_folder.read_class_names(str(tmp_path)) == ["A", "B_C"]


def test_a_file_that_is_no_keras_model_is_one_line(tmp_path):
    path = tmp_path / "model.txt"
    path.write_text("hello")
    with pytest.raises(UserInputError, match="is not a Keras model from abo_tf.train \\(File format not") as error:
        run_folder.load_keras_model(str(path))
    assert "\n" not in str(error.value)  # Keras' message runs over three lines


@pytest.mark.parametrize("kind, expected", [("file", "is not a folder"), ("missing", "does not exist")])
def test_a_run_that_is_no_folder_says_which(tmp_path, kind, expected):
    run = tmp_path / "run"
    if kind == "file":
        run.write_text("mine")
    with pytest.raises(UserInputError, match=f"--run '{run}' {expected}: give the --output folder"):
        run_folder.check_run(str(run))
