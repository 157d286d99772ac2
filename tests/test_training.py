"""Input pipeline and the training loop: outputs, resume, strategies, bad input.

Runs use the small backbone at 32 px and a few steps: the loop, not the model, is under test.
"""

import csv
import dataclasses
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from abo_tf import train
from abo_tf.common.errors import UserInputError
from abo_tf.records import schema, shards
from abo_tf.training import input_pipeline, loop, run_folder
from tests.conftest import TINY_TRAIN_ARGS, TRAINED_RUN_ARGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = TINY_TRAIN_ARGS


def _train_args(records_dir, output, *extra):
    return ["--records", records_dir, "--output", str(output), *TINY, *extra]


def _history(run_dir):
    with open(os.path.join(run_dir, "history.csv")) as handle:
        return list(csv.DictReader(handle))


def _subprocess_env(**extra):
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    env.update(extra)
    return env


# --- input pipeline ----------------------------------------------------------


def test_training_batches_are_uint8_with_int_labels(built_records):
    records_dir, manifest = built_records
    dataset = input_pipeline.make_dataset(records_dir, "train", 40, 8, training=True)
    batch = next(iter(dataset))
    assert batch["image"].dtype == tf.uint8 and batch["image"].shape == (8, 40, 40, 3)
    assert batch["label"].dtype == tf.int32 and int(tf.reduce_max(batch["label"])) < len(manifest["classes"])


def test_evaluation_is_one_deterministic_pass(built_records):
    records_dir, manifest = built_records
    first = [
        batch["label"].numpy()
        for batch in input_pipeline.make_dataset(records_dir, "validation", 32, 16, training=False)
    ]
    second = [
        batch["label"].numpy()
        for batch in input_pipeline.make_dataset(records_dir, "validation", 32, 16, training=False)
    ]
    assert np.array_equal(np.concatenate(first), np.concatenate(second))
    assert len(np.concatenate(first)) == manifest["splits"]["validation"]["num_examples"]


def test_a_resumed_training_stream_goes_on_where_it_stopped(built_records):
    records_dir, _ = built_records

    def batches(skip):
        dataset = input_pipeline.make_dataset(
            records_dir, "train", 32, 4, training=True, seed=5, deterministic=True, skip_batches=skip
        )
        return [(batch["label"].numpy(), batch["image"].numpy()) for batch in dataset.take(4)]

    # The same labels and the same crops: the order and the positions that seed the augmentation continue.
    for (labels, images), (skipped_labels, skipped_images) in zip(batches(0)[2:], batches(2)):
        assert np.array_equal(labels, skipped_labels) and np.array_equal(images, skipped_images)


def test_input_pipelines_read_disjoint_shares(built_records):
    records_dir, manifest = built_records
    images = []
    for pipeline_id in range(2):
        context = tf.distribute.InputContext(
            num_input_pipelines=2, input_pipeline_id=pipeline_id, num_replicas_in_sync=2
        )
        dataset = input_pipeline.make_dataset(records_dir, "train", 32, 4, training=False, input_context=context)
        images.append([bytes(image.tobytes()) for batch in dataset for image in batch["image"].numpy()])
    assert len(images[0]) + len(images[1]) == manifest["splits"]["train"]["num_examples"]
    assert abs(len(images[0]) - len(images[1])) <= 1


def test_missing_split_is_a_clear_error(built_records):
    records_dir, _ = built_records
    with pytest.raises(ValueError, match="no examples in split 'holdout'"):
        input_pipeline.make_dataset(records_dir, "holdout", 32, 4, training=False)


# --- one run, everything it writes ------------------------------------------


def test_run_folder_has_every_output(trained_run, built_records):
    _, manifest = built_records
    for name in (
        "config.toml",
        "history.csv",
        "training_curves.png",
        "metrics.json",
        "test_predictions.csv",
        "labels.txt",
        "model.keras",
        "saved_model/saved_model.pb",
    ):
        assert os.path.getsize(os.path.join(trained_run, name)) > 0, name
    history = _history(trained_run)
    assert [row["phase"] for row in history] == ["head", "from_scratch"]  # --weights none: nothing to fine-tune
    assert [int(row["step"]) for row in history] == [2, 4]
    metrics = json.load(open(os.path.join(trained_run, "metrics.json")))
    assert set(metrics) == {"validation", "test"}
    assert metrics["test"]["num_examples"] == manifest["splits"]["test"]["num_examples"]
    assert 0.0 <= metrics["test"]["macro_f1"] <= 1.0
    calibrated = metrics["validation"]["calibration"]  # the fitted temperature is never worse than T = 1 on validation
    assert calibrated["nll_after"] <= calibrated["nll_before"] + 1e-9
    assert metrics["validation"]["expected_calibration_error"] == pytest.approx(calibrated["ece_after"], abs=1e-6)
    events = [
        name for root, _, names in os.walk(os.path.join(trained_run, "logs")) for name in names if "tfevents" in name
    ]
    assert events


def test_the_epoch_line_names_each_figure():
    row = run_folder.HistoryRow(2, 20, "fine_tune", 1.5, 0.5, 1.25, 0.75, 1e-4, 120.0, 2.5, 0.6578)
    assert loop._epoch_line(4, row) == (
        "epoch 2/4 (fine_tune): train loss 1.5000 accuracy 0.5000, "
        "validation loss 1.2500 accuracy 0.7500 macro_f1 0.6578"
    )
    assert "macro_f1" not in loop._epoch_line(4, dataclasses.replace(row, val_macro_f1=math.nan))


def test_saved_model_serves_bytes_and_pixels(trained_run, built_records):
    records_dir, manifest = built_records
    loaded = tf.saved_model.load(os.path.join(trained_run, "saved_model"))
    record = next(iter(tf.data.TFRecordDataset(shards.shard_paths(records_dir, manifest, "test"))))
    image_bytes = schema.parse_records(record)[schema.IMAGE]
    outputs = loaded.signatures["serving_default"](image_bytes=tf.reshape(image_bytes, [1]))
    assert outputs["probabilities"].shape == (1, len(manifest["classes"]))
    assert abs(float(tf.reduce_sum(outputs["probabilities"])) - 1.0) < 1e-4
    assert outputs["top_k_labels"].numpy()[0, 0].decode() in manifest["classes"]


@pytest.mark.slow
def test_same_command_on_a_finished_run_resumes_without_training(trained_run, built_records, tmp_path, capsys):
    records_dir, _ = built_records
    run = str(tmp_path / "run")  # the run finishes again, exporting anew: not in the folder other tests read
    shutil.copytree(trained_run, run)
    checkpoints = _checkpoint_files(run)
    assert train.main(_train_args(records_dir, run, *TRAINED_RUN_ARGS)) == 0
    assert [int(row["step"]) for row in _history(run)] == [2, 4]
    assert _checkpoint_files(run) == checkpoints  # no step trained, so no checkpoint saved
    out = capsys.readouterr().out  # the summary: the sample's head stratum is empty
    heads = [line for line in out.splitlines() if line.strip().startswith("head")]
    assert len(heads) == 2 and all("macro F1 n/a" in line for line in heads) and "nan" not in out.lower()


def _checkpoint_files(run_dir):
    """{file name: modification time} of a run's resume checkpoints (copytree keeps the times)."""
    folder = os.path.join(run_dir, "checkpoints")
    return {name: os.stat(os.path.join(folder, name)).st_mtime_ns for name in os.listdir(folder)}


def test_another_config_in_the_same_folder_is_refused(trained_run, built_records, capsys):
    records_dir, _ = built_records
    assert train.main(_train_args(records_dir, trained_run, "--epochs", "3")) == 2
    assert "--resume" in capsys.readouterr().err


def test_a_run_that_never_finished_a_step_is_taken_over_by_the_corrected_command(built_records, tmp_path, capsys):
    records_dir, _ = built_records
    broken = tmp_path / "not_weights.h5"
    broken.write_bytes(b"not an HDF5 file")
    output = tmp_path / "run"
    assert train.main(_train_args(records_dir, output, "--weights", str(broken))) == 2
    assert (output / run_folder.CONFIG).is_file() and not run_folder.has_finished_step(str(output))
    capsys.readouterr()
    corrected = train.resolve_config(_train_args(records_dir, output, "--weights", "none"))
    assert corrected.weights == "none"
    assert "never finished a step" in capsys.readouterr().err


_TIMING_COLUMNS = ("images_per_second", "seconds")


def _served(run_dir, image_bytes):
    loaded = tf.saved_model.load(os.path.join(run_dir, "saved_model"))
    return loaded.signatures["serving_default"](image_bytes=image_bytes)["probabilities"].numpy()


# The second run stops after its first epoch, as if killed then (its checkpoints and history row saved: the hook runs
# after them), and resumes in the same process (a third TensorFlow start-up cost more than the resumed epoch). It is
# compared with the first run, uninterrupted: so one run checks both that a seed fixes a run and that the resumed
# run is that run (an uninterrupted second run, kept aside, and its own finish made the test 128 CPU s, not 108).
_STOP_THEN_RESUME = """
import sys
from abo_tf import train
from abo_tf.training import loop
class Stopped(Exception):
    pass
def stop(epoch, values):
    raise Stopped(epoch)
train_loop = loop.train
loop.train = lambda config: train_loop(config, on_epoch_end=stop)
try:
    train.main(sys.argv[1:])
    sys.exit("the run did not stop after its first epoch")
except Stopped:
    pass
loop.train = train_loop
sys.exit(train.main(sys.argv[1:]))
"""


def _rows_without_timing(run_dir):
    return [{k: v for k, v in row.items() if k not in _TIMING_COLUMNS} for row in _history(run_dir)]


@pytest.mark.slow
def test_deterministic_runs_with_one_seed_are_identical(built_records, tmp_path):
    records_dir, manifest = built_records
    runs = [tmp_path / "first", tmp_path / "resumed"]
    # With EMA: its averages resume bit for bit too (the served model is the averaged one).
    arguments = ["--epochs", "2", "--head-epochs", "1", "--deterministic", "--seed", "3", "--ema-momentum", "0.5"]
    commands = [
        [sys.executable, "-m", "abo_tf.train", *_train_args(records_dir, runs[0], *arguments)],
        [sys.executable, "-c", _STOP_THEN_RESUME, *_train_args(records_dir, runs[1], *arguments)],
    ]
    processes = [  # side by side, each in its own process: op determinism cannot be turned off again
        subprocess.Popen(command, env=_subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for command in commands
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-2000:]
        assert not re.search(r"^[IWEF]\d{4} ", stderr, re.MULTILINE), stderr[-2000:]  # absl's format
    # Resumed after its first epoch, the second run reads the batches and draws the dropout masks of the
    # uninterrupted run's second epoch (a stream restarted from its beginning gave another history).
    first = _rows_without_timing(runs[0])
    assert _rows_without_timing(runs[1]) == first and len(first) == 2
    # What the two runs serve: their last and best checkpoints (the weights, their averages, the optimizers' and
    # the seed generators' states), and the evaluation of the kept, calibrated model, identical to the bit.
    for folder in ("checkpoints", "checkpoints/best"):
        _assert_same_checkpoint(runs[0] / folder, runs[1] / folder)
    assert run_folder.load_metrics(str(runs[0])) == run_folder.load_metrics(str(runs[1]))
    records = tf.data.TFRecordDataset(shards.shard_paths(records_dir, manifest, "test")).batch(16)
    image_bytes = schema.parse_records(next(iter(records)))[schema.IMAGE]
    assert np.array_equal(_served(runs[0], image_bytes), _served(runs[1], image_bytes))


def _assert_same_checkpoint(first_dir, second_dir):
    first, second = (tf.train.load_checkpoint(str(folder)) for folder in (first_dir, second_dir))
    names = first.get_variable_to_shape_map()
    assert names == second.get_variable_to_shape_map() and len(names) > 100
    for name in names:
        if name != "_CHECKPOINTABLE_OBJECT_GRAPH":
            np.testing.assert_array_equal(first.get_tensor(name), second.get_tensor(name), err_msg=name)


# --- kill and resume -----------------------------------------------------------


@pytest.mark.slow
def test_killed_run_resumes_with_the_same_number_of_steps(built_records, tmp_path, monkeypatch):
    records_dir, _ = built_records
    output = tmp_path / "killed"
    command = [
        sys.executable,
        "-m",
        "abo_tf.train",
        *_train_args(
            records_dir,
            output,
            "--epochs",
            "3",
            "--head-epochs",
            "1",
            "--steps-per-epoch",
            "3",
            "--checkpoint-every-steps",
            "1",
        ),
    ]
    process = subprocess.Popen(command, env=_subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while process.poll() is None and time.time() < deadline:
        if (
            tf.train.latest_checkpoint(str(output / "checkpoints"))
            and int(tf.train.latest_checkpoint(str(output / "checkpoints")).rsplit("-", 1)[1]) >= 4
        ):
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    process.wait()
    assert not (output / "metrics.json").exists(), "the run finished before it could be killed"
    # The same command again, in this process: the kill is what needs its own process, not the resume (and a
    # second TensorFlow start-up cost more than the resumed steps). Its finish exports nothing: the steps are under
    # test here, and a resumed run's export is compared with an uninterrupted one's in the determinism test.
    train_loop = loop.train
    monkeypatch.setattr(loop, "train", lambda config: train_loop(config, export_model=False))
    assert train.main(command[3:]) == 0
    history = _history(output)
    assert [int(row["step"]) for row in history] == [3, 6, 9]
    assert int(tf.train.load_checkpoint(str(output / "checkpoints")).get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE")) == 9


@pytest.mark.slow
def test_nan_loss_stops_with_the_checkpoint_intact(built_records, tmp_path, capsys, monkeypatch):
    records_dir, _ = built_records
    # A rate of 1e30 diverges at once; the option's bound (10) refuses it, so the optimizer gets it directly.
    make_optimizer = loop.make_optimizer
    monkeypatch.setattr(
        loop, "make_optimizer", lambda config, rate, steps, variables=(): make_optimizer(config, 1e30, steps, variables)
    )
    output = tmp_path / "nan"
    args = _train_args(
        records_dir,
        output,
        "--epochs",
        "2",
        "--head-epochs",
        "0",
        "--warmup-fraction",
        "0",
        "--checkpoint-every-steps",
        "1",
        "--label-smoothing",
        "0",
    )
    assert train.main(args) == 2
    error = capsys.readouterr().err
    assert "loss became" in error and "intact" in error
    reader = tf.train.load_checkpoint(str(output / "checkpoints"))
    values = [
        reader.get_tensor(name) for name in reader.get_variable_to_shape_map() if name != "_CHECKPOINTABLE_OBJECT_GRAPH"
    ]
    assert values and all(
        np.all(np.isfinite(value)) for value in values if np.issubdtype(np.asarray(value).dtype, np.floating)
    )


# --- strategies ----------------------------------------------------------------


# Two logical CPUs, then the CLI twice: a batch that does not divide across the replicas (its exit code printed),
# and a two-phase run whose epoch hook (the tuner's pruning input) records what every epoch reported.
_MIRRORED = """
import json, sys
import tensorflow as tf
cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
from abo_tf import train
from abo_tf.training import loop
odd = train.main(sys.argv[2:] + ["--output", sys.argv[1], "--batch-size", "7"])
reported, train_loop = [], loop.train
loop.train = lambda config: train_loop(config, on_epoch_end=lambda epoch, values: reported.append([epoch, values]))
code = train.main(sys.argv[2:])
print(json.dumps({"odd": odd, "code": code, "reported": reported}))
"""


@pytest.mark.slow
def test_mirrored_on_two_logical_cpus(built_records, tmp_path):
    records_dir, manifest = built_records
    validation_examples = manifest["splits"]["validation"]["num_examples"]
    assert validation_examples % 8, "the check needs a partial last validation batch"
    output = tmp_path / "mirrored"
    arguments = ["--strategy", "mirrored", "--epochs", "2", "--head-epochs", "1", "--validation-steps", "0"]
    arguments += ["--ema-momentum", "0.9"]  # the averages move replica by replica (BatchNorm statistics are local)
    result = subprocess.run(
        [sys.executable, "-c", _MIRRORED, str(tmp_path / "odd"), *_train_args(records_dir, output, *arguments)],
        env=_subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ran = json.loads(result.stdout.strip().splitlines()[-1])
    assert ran["odd"] == 2 and "does not divide across 2 replicas" in result.stderr
    assert ran["code"] == 0
    history = run_folder.load_history(str(output))
    assert [row.phase for row in history] == ["head", "from_scratch"]  # --weights none: nothing to fine-tune
    # The hook gathers every replica: each epoch's figures are the history's, over both replicas' predictions.
    assert [epoch for epoch, _ in ran["reported"]] == [1, 2]
    for (_, values), row in zip(ran["reported"], history, strict=True):
        assert values["val_accuracy"] == pytest.approx(row.val_accuracy) and 0.0 <= values["val_macro_f1"] <= 1.0
        # The whole split, the partial last batch split across both replicas (one may get none): each image once.
        assert values["val_examples"] == validation_examples


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for handle in sockets:
        handle.bind(("localhost", 0))
    ports = [handle.getsockname()[1] for handle in sockets]
    for handle in sockets:
        handle.close()
    return ports


@pytest.mark.slow
def test_multi_worker_mirrored_trains_in_lock_step(built_records, tmp_path):
    records_dir, _ = built_records
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{port}" for port in ports]}
    processes = []
    for index in range(2):
        scratch = tmp_path / f"tmp{index}"
        scratch.mkdir()
        env = _subprocess_env(
            TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}), TMPDIR=str(scratch)
        )
        command = [
            sys.executable,
            "-m",
            "abo_tf.train",
            *_train_args(
                records_dir,
                tmp_path / "run",
                "--strategy",
                "multi_worker_mirrored",
                "--epochs",
                "2",
                "--head-epochs",
                "1",
            ),
        ]
        processes.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [process.communicate(timeout=400) for process in processes]
    for process, (_, error) in zip(processes, outputs):
        assert process.returncode == 0, error[-3000:]
    chief = tf.train.load_checkpoint(str(tmp_path / "run" / "checkpoints"))
    worker_dirs = [
        os.path.join(root)
        for root, _, names in os.walk(tmp_path / "tmp1")
        # The resume checkpoint, not --keep best's model (a worker's is in a temporary folder named abo_tf_best_*).
        if any(name.endswith(".index") for name in names) and not os.path.basename(root).startswith("abo_tf_best_")
    ]
    assert worker_dirs, "the second worker saved no checkpoint"
    worker = tf.train.load_checkpoint(worker_dirs[0])
    # BatchNormalization moving statistics are local to each replica (not
    # all-reduced): only the trained variables must agree.
    # (Trained weights are stored under the optimizers, which track them first.)
    names = [
        name
        for name in chief.get_variable_to_shape_map()
        if "moving" not in name and name != "_CHECKPOINTABLE_OBJECT_GRAPH"
    ]
    assert len(names) > 100
    for name in names:
        np.testing.assert_array_equal(chief.get_tensor(name), worker.get_tensor(name))
    assert (tmp_path / "run" / "saved_model" / "saved_model.pb").exists()


# --- bad input -----------------------------------------------------------------------


@pytest.fixture
def old_records(built_records, tmp_path):
    _, manifest = built_records
    (tmp_path / "old_records").mkdir()
    (tmp_path / "old_records" / shards.MANIFEST).write_text(json.dumps({**manifest, "version": "0.0.1"}))
    return str(tmp_path / "old_records")


@pytest.mark.parametrize(
    "records, flags, expected",
    [
        ("{tmp}/empty", [], "no manifest.json"),
        ("{old}", [], "rebuild the records"),
        ("{records}", ["--image-size", "16"], "--image-size 16 must be at least 32"),
        ("{records}", ["--resume"], "holds no run"),
        ("{records}", ["--strategy", "horovod"], "--strategy 'horovod': choose one of"),
        ("{records}", ["--model", "alexnet"], "--model 'alexnet': choose one of"),
    ],
)
def test_bad_training_inputs_are_one_line_errors(
    built_records, old_records, tmp_path, capsys, records, flags, expected
):
    records = records.format(tmp=tmp_path, old=old_records, records=built_records[0])
    os.makedirs(tmp_path / "empty", exist_ok=True)
    assert train.main(_train_args(records, tmp_path / "run", *flags)) == 2, expected
    error = capsys.readouterr().err.strip()
    assert expected in error and len(error.splitlines()) == 1, (expected, error)


def test_an_output_folder_that_is_not_a_run_is_refused_and_kept(built_records, tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    mine = {"metrics.json": "my numbers", "labels.txt": "my labels", "history.csv": "my history"}
    for name, text in mine.items():
        (folder / name).write_text(text)
    assert train.main(_train_args(built_records[0], folder)) == 2
    assert "not empty and was not written by `abo_tf.train`" in capsys.readouterr().err
    assert {name: (folder / name).read_text() for name in os.listdir(folder)} == mine


@pytest.mark.parametrize(
    "overrides,expected",
    [
        ({"epochs": 0}, "--epochs 0 must be at least 1"),
        ({"epochs": -2}, "--epochs -2"),
        ({"batch_size": 0}, "--batch-size 0 must be at least 1"),
        ({"batch_size": -8}, "--batch-size -8"),
        ({"epochs": 2, "head_epochs": 3}, "--head-epochs 3: give 0 to --epochs 2"),
        ({"head_epochs": -1}, "--head-epochs -1"),
        ({"steps_per_epoch": -1}, "--steps-per-epoch -1"),
        ({"validation_steps": -1}, "--validation-steps -1"),
        ({"checkpoint_every_steps": -5}, "--checkpoint-every-steps -5"),
        ({"image_size": 31}, "--image-size 31 must be at least 32"),
        ({"eval_image_size": 16}, "--eval-image-size 16: give 0 (= --image-size) or at least 32 pixels"),
        ({"learning_rate": 0.0}, "--learning-rate 0.0"),
        ({"fine_tune_learning_rate": float("inf")}, "--fine-tune-learning-rate inf"),
        ({"warmup_fraction": 1.0}, "--warmup-fraction 1.0"),
        ({"label_smoothing": -0.1}, "--label-smoothing -0.1"),
        ({"dropout": 1.0}, "--dropout 1.0"),
        ({"ema_momentum": 1.0}, "--ema-momentum 1.0"),
        ({"crop_area_min": 0.0}, "--crop-area-min 0.0: give a share"),
        ({"loss": "focal"}, "--loss 'focal': choose one of"),
        ({"top_k": 0}, "--top-k 0"),
        ({"class_weights": "inverse"}, "--class-weights 'inverse': choose one of"),
        ({"epochs": "3"}, "--epochs '3' must be an integer"),  # a quoted number in a TOML config
        ({"batch_size": True}, "--batch-size True must be an integer"),
    ],
)
def test_train_config_refuses_bad_options(overrides, expected):
    with pytest.raises(UserInputError, match=re.escape(expected)):
        loop.TrainConfig(records="r", output="o", **overrides)


def test_another_commands_folder_as_output_is_one_line_without_a_note(built_records, capsys):
    records_dir, _ = built_records  # a build folder holds a config.toml: it was compared as a run's, 40 keys long
    assert train.main(["--records", records_dir, "--output", records_dir, *TINY_TRAIN_ARGS]) == 2
    error = capsys.readouterr().err.strip()
    assert "overlap (one holds the other)" in error and len(error.splitlines()) == 1, error


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("folder", "is a folder: give imagenet, none or the path of a Keras notop weights file (.weights.h5)"),
        ("fifo", "is not a regular file (a FIFO, a device or a broken link)"),
        ("missing", "does not exist: give imagenet, none"),
    ],
)
@pytest.mark.parametrize("command", ["train", "tune"])  # tune created its study, then every trial failed on it
def test_weights_that_are_no_file_are_one_line_before_the_run_folder(tmp_path, capsys, kind, expected, command):
    from abo_tf import tune

    weights = tmp_path / "weights"
    if kind == "folder":
        weights.mkdir()
    elif kind == "fifo":
        os.mkfifo(weights)
    (tmp_path / "search.toml").write_text("[search]\nlearning_rate = { low = 1e-3, high = 2e-3 }\n")
    arguments = ["--records", str(tmp_path / "records"), "--output", str(tmp_path / "run"), "--weights", str(weights)]
    if command == "tune":
        arguments += ["--config", str(tmp_path / "search.toml")]
    assert {"train": train, "tune": tune}[command].main(arguments) == 2
    error = capsys.readouterr().err.strip()
    assert f"{str(weights)!r} {expected}" in error and len(error.splitlines()) == 1, error
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "flags,expected",
    [
        (["--epochs", "0"], "--epochs 0"),
        (["--batch-size", "0"], "--batch-size 0"),
        (["--epochs", "1", "--head-epochs", "2"], "--head-epochs 2"),
    ],
)
def test_bad_training_options_are_one_line_errors_before_anything_is_written(
    built_records, tmp_path, capsys, flags, expected
):
    records_dir, _ = built_records
    output = tmp_path / "run"
    assert train.main(_train_args(records_dir, output, *flags)) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and expected in error and len(error.splitlines()) == 1
    assert not output.exists()  # no run folder holding an untrained model


def test_a_batch_that_does_not_fit_in_memory_is_a_one_line_error(built_records, tmp_path, capsys, monkeypatch):
    records_dir, _ = built_records

    def exhausted(*_):
        message = "{{function_node __wrapped__Conv2D}} OOM when allocating tensor with shape[8,32,32,16]\nmore lines"
        raise tf.errors.ResourceExhaustedError(None, None, message)

    # A real OOM would take the shared test machine's memory: the error is raised where a step would raise it.
    monkeypatch.setattr(loop, "_train_phases", exhausted)
    assert train.main(_train_args(records_dir, tmp_path / "oom", "--epochs", "1", "--head-epochs", "0")) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "a batch of 8 images of 32 px does not fit in memory" in error
    assert "(OOM when allocating tensor with shape[8,32,32,16])" in error
    assert error.endswith("lower --batch-size or --image-size")


def test_config_file_sets_defaults_and_flags_override(built_records, tmp_path):
    records_dir, _ = built_records
    config = tmp_path / "tiny.toml"
    config.write_text('[schedule]\nepochs = 7\nbatch_size = 8\n[model]\nmodel = "mobilenet_v3_small"\n')
    resolved = train.resolve_config(
        ["--config", str(config), "--records", records_dir, "--output", str(tmp_path / "r"), "--epochs", "3"]
    )
    assert (resolved.epochs, resolved.batch_size) == (3, 8)
    bad = tmp_path / "bad.toml"
    bad.write_text("epochz = 3\n")
    with pytest.raises(ValueError, match="unknown keys"):
        train.resolve_config(["--config", str(bad), "--records", records_dir, "--output", str(tmp_path / "r")])


@pytest.mark.slow
def test_mixed_precision_run_exports_float32_probabilities(built_records, tmp_path):
    import keras

    records_dir, manifest = built_records
    output = tmp_path / "mixed"
    # In this process (a TensorFlow start-up saved): train sets the global dtype policy, put back for the next tests.
    arguments = _train_args(records_dir, output, "--epochs", "1", "--head-epochs", "0", "--mixed-precision")
    try:
        assert train.main(arguments) == 0
    finally:
        keras.mixed_precision.set_global_policy("float32")
    loaded = tf.saved_model.load(str(output / "saved_model"))
    pixels = tf.zeros([2, 32, 32, 3], tf.uint8)
    probabilities = loaded.signatures["serve_pixels"](pixels=pixels)["probabilities"]
    assert probabilities.dtype == tf.float32 and probabilities.shape == (2, len(manifest["classes"]))


def test_tpu_strategy_without_a_tpu_is_a_clear_error():
    from abo_tf.training import distribute

    with pytest.raises(ValueError, match="no TPU found"):
        distribute.make_strategy("tpu", "")


# --- the recipe: weight decay, calibration, best checkpoint ------------------


@pytest.mark.parametrize("decay_norm_and_bias", [False, True])
def test_weight_decay_shrinks_weights_at_its_rate_and_spares_vectors_unless_asked(decay_norm_and_bias):
    import keras

    config = loop.TrainConfig(
        records="r", output="o", weight_decay=0.05, warmup_fraction=0.0, decay_norm_and_bias=decay_norm_and_bias
    )
    kernel, bias = keras.Variable(np.ones((3, 2), np.float32)), keras.Variable(np.ones(2, np.float32))
    optimizer = loop.make_optimizer(config, 1e-2, 10**6, [kernel, bias])  # a constant rate over 5 steps
    optimizer.build([kernel, bias])
    for _ in range(5):  # zero gradients: Adam moves nothing, only the decay acts
        optimizer.apply_gradients([(tf.zeros_like(kernel), kernel), (tf.zeros_like(bias), bias)])
    expected = (1 - 0.05 * 1e-2) ** 5
    np.testing.assert_allclose(kernel.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(bias.numpy(), expected if decay_norm_and_bias else 1.0, rtol=1e-6)


def test_temperature_lowers_the_nll_of_an_overconfident_model_and_folds_into_its_logits():
    import keras

    from abo_tf.training import calibration

    rng = np.random.default_rng(0)
    true_logits = rng.normal(size=(400, 5)) * 2
    labels = np.array([rng.choice(5, p=np.exp(row) / np.exp(row).sum()) for row in true_logits])
    overconfident = true_logits * 4  # calibrated at T = 4
    temperature = calibration.fit_temperature(overconfident, labels)
    assert 2.5 < temperature < 6
    record = calibration.calibration_record(overconfident, labels, temperature)
    assert record["nll_after"] < record["nll_before"] - 0.5 and record["ece_after"] < record["ece_before"]
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(5, name=calibration.LOGITS_LAYER, bias_initializer="ones")(inputs))
    pixels = rng.normal(size=(4, 3)).astype(np.float32)
    before = model(pixels).numpy()
    calibration.fold_temperature(model, temperature)
    np.testing.assert_allclose(model(pixels).numpy(), before / temperature, rtol=1e-5, atol=1e-6)


def test_best_row_is_the_earliest_of_highest_macro_f1():
    from abo_tf.training import run_folder

    def row(step, f1):
        return run_folder.HistoryRow(step, step, "fine_tune", 1.0, 0.5, 1.0, 0.5, 1e-3, 10.0, 1.0, f1)

    history = [row(1, 0.2), row(2, 0.5), row(3, float("nan")), row(4, 0.5), row(5, 0.4)]
    assert loop.best_row(history).step == 2
    assert loop.best_row([row(1, float("nan"))]) is None


def test_kept_epoch_is_the_best_one_and_its_weights_are_exported(trained_run):
    import keras

    from abo_tf.training import run_folder

    history = run_folder.load_history(trained_run)
    kept = json.load(open(os.path.join(trained_run, "metrics.json")))["validation"]["kept_epoch"]
    assert kept["step"] == loop.best_row(history).step and kept["val_macro_f1"] == loop.best_row(history).val_macro_f1
    exported = run_folder.load_keras_model(os.path.join(trained_run, "model.keras"))
    best = keras.models.clone_model(exported)
    best_checkpoint = tf.train.latest_checkpoint(os.path.join(trained_run, "checkpoints", "best"))
    tf.train.Checkpoint(model=best).restore(best_checkpoint).expect_partial().assert_existing_objects_matched()
    for mine, theirs in zip(exported.weights, best.weights):  # the logits differ by the folded temperature only
        scale = (
            1.0
            if "logits" not in mine.path
            else json.load(open(os.path.join(trained_run, "metrics.json")))["validation"]["calibration"]["temperature"]
        )
        np.testing.assert_allclose(mine.numpy() * scale, theirs.numpy(), rtol=1e-5, atol=1e-6, err_msg=mine.path)


@pytest.fixture(scope="module")
def averaged_run(built_records, tmp_path_factory):
    """One epoch with EMA and --keep last, trained at 32 px and evaluated and exported at 48 (--eval-image-size)."""
    records_dir, _ = built_records
    flags = ("--epochs", "1", "--head-epochs", "0", "--ema-momentum", "0.5", "--keep", "last", "--no-calibrate")
    output = str(tmp_path_factory.mktemp("averaged") / "run")
    assert train.main(_train_args(records_dir, output, *flags, "--eval-image-size", "48")) == 0
    return output


@pytest.mark.slow
def test_the_moving_averages_of_weights_and_batchnorm_statistics_are_exported(built_records, averaged_run):
    from abo_tf.training import distribute, run_folder

    _, manifest = built_records
    output = averaged_run
    # The run as its last checkpoint holds it: trained values in the model, their averages beside them.
    run = loop._set_up(
        train.resolve_config(["--output", output, "--resume"]), distribute.make_strategy("default", ""), manifest
    )
    averaged = run.phases[-1].averages
    exported = {weight.path: weight.numpy() for weight in run_folder.load_keras_model(f"{output}/model.keras").weights}
    statistics = [variable.path for variable in averaged.variables if "moving_" in variable.path]
    assert len(statistics) > 10 and len(averaged.variables) - len(statistics) == len(run.model.trainable_variables)
    pairs = list(zip(averaged.variables, averaged.averages))
    # Averages that differ from the trained values, BatchNorm statistics among them (Keras' use_ema exported the
    # raw statistics beside averaged weights).
    moved = [variable.path for variable, average in pairs if not np.allclose(variable.numpy(), average.numpy())]
    assert any("moving_" in path for path in moved) and any("moving_" not in path for path in moved)
    for variable, average in pairs:  # the export: averaged weights and statistics
        path = variable.path
        np.testing.assert_allclose(exported[path], average.numpy(), rtol=1e-6, atol=1e-7, err_msg=path)


def test_the_moving_average_covers_trained_batchnorm_statistics_and_is_what_evaluation_sees():
    import keras

    from abo_tf.training import averages

    inputs = keras.Input((4,))
    hidden = keras.layers.BatchNormalization(name="trained_bn")(keras.layers.Dense(3)(inputs))
    frozen = keras.layers.BatchNormalization(name="frozen_bn")
    model = keras.Model(inputs, keras.layers.Dense(2)(frozen(hidden)))
    frozen.trainable = False  # as fine-tuning freezes BatchNorm: its statistics do not move, nothing to average
    config = loop.TrainConfig(records="r", output="o", batch_size=8, warmup_fraction=0.0)
    optimizer = loop.make_optimizer(config, 0.1, 10**6, model.trainable_variables)
    optimizer.build(model.trainable_variables)
    averaged = averages.make_averages(model, 0.2)
    statistics = ["trained_bn/moving_mean", "trained_bn/moving_variance"]
    assert [v.path for v in averaged.variables] == [v.path for v in model.trainable_variables] + statistics
    rng = np.random.default_rng(0)
    images, labels = rng.normal(2.0, 3.0, (5, 8, 4)).astype(np.float32), rng.integers(0, 2, (5, 8)).astype(np.int32)
    batches = {"image": images, "label": labels}
    step = loop.make_train_step(
        tf.distribute.get_strategy(), model, optimizer, config, np.ones(2, np.float32), 2, averaged=averaged
    )
    iterator, expected = iter(tf.data.Dataset.from_tensor_slices(batches)), None
    for updates in range(1, 6):  # the reference: TF's warm-up, the first update copying
        step(iterator)
        values = [variable.numpy() for variable in averaged.variables]
        momentum = min(0.2, (updates - 1) / (updates + 8))
        expected = values if expected is None else [momentum * e + (1 - momentum) * v for e, v in zip(expected, values)]
    trained = [variable.numpy() for variable in averaged.variables]
    probe = rng.normal(size=(6, 4)).astype(np.float32)
    averaged.swap(tf.distribute.get_strategy())
    for variable, value in zip(averaged.variables, expected):
        np.testing.assert_allclose(variable.numpy(), value, rtol=1e-5, atol=1e-6, err_msg=variable.path)
    # The evaluated model (inference mode) is the averaged one: weights and statistics together.
    kernel, bias, gamma, beta, kernel2, bias2, mean, variance = expected
    normalised = (probe @ kernel + bias - mean) / np.sqrt(variance + 1e-3) * gamma + beta
    frozen_mean, frozen_deviation = frozen.moving_mean.numpy(), np.sqrt(frozen.moving_variance.numpy() + 1e-3)
    normalised = (normalised - frozen_mean) / frozen_deviation * frozen.gamma.numpy() + frozen.beta.numpy()
    np.testing.assert_allclose(model(probe, training=False).numpy(), normalised @ kernel2 + bias2, rtol=1e-4, atol=1e-5)
    averaged.swap(tf.distribute.get_strategy())
    for variable, value in zip(averaged.variables, trained):
        np.testing.assert_array_equal(variable.numpy(), value)


def test_no_average_is_exported_before_its_first_update_and_a_run_without_best_keeps_its_averages():
    import types

    import keras

    from abo_tf.training import averages

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.BatchNormalization()(inputs)))
    strategy, averaged = tf.distribute.get_strategy(), averages.make_averages(model, 0.5)
    trained = [variable.numpy() for variable in averaged.variables]
    # A checkpoint without averages (written before they existed) restores 0 updates; resumed after its last step,
    # the run exported the averages' zeros as its model (moving_variance 0 among them).
    averaged.swap(strategy)
    for variable, value in zip(averaged.variables, trained):
        np.testing.assert_array_equal(variable.numpy(), value, err_msg=variable.path)
    # --keep best without a best checkpoint (checkpoints/best removed): the last epoch's averages, not its raw values.
    for variable, average in zip(averaged.variables, averaged.averages):
        average.assign(variable.numpy() + 1.0)
    averaged.updates.assign(3)
    phase = loop._Phase("fine_tune", None, True, 0, 6, "fine_tune", averaged)
    run = types.SimpleNamespace(
        config=types.SimpleNamespace(keep="best"),
        best_manager=types.SimpleNamespace(latest_checkpoint=None),
        phases=[phase],
        strategy=strategy,
        model=model,
    )
    assert loop.keep_weights(run, []) is None
    for variable, value in zip(averaged.variables, trained):
        np.testing.assert_array_equal(variable.numpy(), value + 1.0, err_msg=variable.path)


def test_a_trial_named_relative_to_itself_is_refused_naming_its_config(tmp_path, monkeypatch):
    from abo_tf.common.errors import InputNotFoundError

    run_folder.mark_not_exported(str(tmp_path))
    monkeypatch.chdir(tmp_path)  # `--model saved_model` from inside the trial: no dirname
    with pytest.raises(InputNotFoundError) as caught:
        run_folder.check_exported(run_folder.SAVED_MODEL)
    assert f"--config {os.path.join(os.curdir, run_folder.CONFIG)} " in str(caught.value), caught.value  # was /config


def test_a_checkpoint_that_does_not_fit_the_run_is_one_line(tmp_path):
    # An --ema-momentum run checkpointed before 4f8481c kept its averages in the optimizer: resumed, the optimizer's
    # slots restored into variables of other shapes, a ValueError traceback. The model stands in for it here.
    import keras

    def model(units):
        inputs = keras.Input((4,))
        return keras.Model(inputs, keras.layers.Dense(units)(inputs))

    step = tf.Variable(0, dtype=tf.int64)
    tf.train.Checkpoint(model=model(3), step=step).save(str(tmp_path / run_folder.CHECKPOINTS / "ckpt"))
    config = loop.TrainConfig(records="r", output=str(tmp_path))
    with pytest.raises(UserInputError, match=r"does not fit this run .* train again into a new --output"):
        loop._checkpointing(tf.distribute.get_strategy(), config, model(2), [], step)


def test_logit_adjusted_loss_adds_tau_log_prior_in_training_only(built_records):
    import keras

    _, manifest = built_records
    classes = manifest["classes"]
    counts = np.maximum(shards.examples_per_class(manifest, "train", classes), 1)
    log_prior = np.log(counts / counts.sum())
    assert not loop.logit_adjustment(manifest, classes, "cross_entropy", 2.0).any()
    np.testing.assert_allclose(loop.logit_adjustment(manifest, classes, "balanced_softmax", 2.0), log_prior, rtol=1e-6)
    adjustment = loop.logit_adjustment(manifest, classes, "logit_adjusted", 2.0)
    np.testing.assert_allclose(adjustment, 2 * log_prior, rtol=1e-6)
    # The step's loss is the cross-entropy of the adjusted logits (learning rate 0: the weights stay as they are).
    config = loop.TrainConfig(records="r", output="o", batch_size=4, label_smoothing=0.0, learning_rate=1e-30)
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(len(classes))(inputs))
    optimizer = loop.make_optimizer(config, 1e-30, 10, model.trainable_variables)
    images, labels = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32), np.arange(4, dtype=np.int32)
    expected = np.mean(
        keras.losses.sparse_categorical_crossentropy(labels, model(images) + adjustment, from_logits=True)
    )
    strategy = tf.distribute.get_strategy()
    step = loop.make_train_step(
        strategy, model, optimizer, config, np.ones(len(classes), np.float32), len(classes), adjustment
    )
    loss, _ = step(iter(tf.data.Dataset.from_tensors({"image": images, "label": labels})))
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    # Soft targets (MixUp/CutMix) replace the one-hot labels, and weigh the class weights by their shares.
    targets = np.full((4, len(classes)), 1 / len(classes), np.float32)
    class_weights = np.linspace(0.5, 2, len(classes)).astype(np.float32)
    step = loop.make_train_step(strategy, model, optimizer, config, class_weights, len(classes), adjustment)
    soft = keras.losses.categorical_crossentropy(targets, model(images) + adjustment, from_logits=True)
    loss, _ = step(iter(tf.data.Dataset.from_tensors({"image": images, "label": labels, "target": targets})))
    assert float(loss) == pytest.approx(float(np.mean(soft * class_weights.mean())), rel=1e-5)


@pytest.mark.slow
def test_a_deterministic_augmented_pipeline_prints_no_tensorflow_log_line(built_records):
    """train --deterministic --randaugment: TF's make_deterministic rewrite of the parallel maps printed
    "NodeDef mentions attribute use_unbounded_threadpool" (in a process of its own: op determinism stays on)."""
    records_dir, _ = built_records
    script = (
        "import sys, tensorflow as tf\n"
        "from abo_tf.training import input_pipeline\n"
        "tf.config.experimental.enable_op_determinism()\n"
        "augmentation = input_pipeline.Augmentation(randaugment=True, mixup_alpha=0.2)\n"
        "batches = input_pipeline.make_dataset(\n"
        "    sys.argv[1], 'train', 32, 8, training=True, augmentation=augmentation, deterministic=True\n"
        ")\n"
        "print(tuple(next(iter(batches))['image'].shape))\n"
    )
    command = [sys.executable, "-c", script, records_dir]
    result = subprocess.run(command, env=_subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "(8, 32, 32, 3)" in result.stdout, result.stderr[-2000:]
    assert "use_unbounded_threadpool" not in result.stderr and "Warning" not in result.stderr, result.stderr[-2000:]


def test_mixed_batches_have_soft_targets_summing_to_one_and_uint8_pixels(built_records):
    records_dir, manifest = built_records
    augmentation = input_pipeline.Augmentation(randaugment=True, mixup_alpha=0.4, cutmix_alpha=1.0)
    batches = input_pipeline.make_dataset(records_dir, "train", 32, 16, training=True, augmentation=augmentation)
    for batch in batches.take(2):
        targets = batch["target"].numpy()
        assert batch["image"].dtype == tf.uint8 and targets.shape == (16, len(manifest["classes"]))
        np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-5)
        assert (targets >= 0).all() and (targets.max(axis=1) < 1 - 1e-6).any()  # some images are mixed


@pytest.mark.slow
def test_a_run_evaluates_and_exports_at_its_eval_image_size(built_records, averaged_run):
    from abo_tf.training import export

    _, manifest = built_records
    output = averaged_run
    assert run_folder.load_config(output)["eval_image_size"] == 48
    # The parity check ran the trained 32 px model at 48 px against the 48 px export, on every validation image.
    parity = run_folder.load_parity(output)
    assert parity["passed"] and {result["num_images"] for result in parity["signatures"].values()} == {
        manifest["splits"]["validation"]["num_examples"]
    }
    assert export.exported_image_size(export.load_exported(run_folder.path(output, run_folder.SAVED_MODEL))) == 48
    assert run_folder.load_keras_model(run_folder.path(output, run_folder.KERAS_MODEL)).input.shape[1] == 48
    metrics = run_folder.load_metrics(output)
    assert all(metrics[split]["image_size"] == {"train": 32, "evaluated": 48} for split in ("validation", "test"))
    card = open(run_folder.path(output, run_folder.MODEL_CARD), encoding="utf-8").read()
    assert card.startswith("# Model card: mobilenet_v3_small at 48 px (trained at 32 px)\n")
