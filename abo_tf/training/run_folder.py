"""The run folder a training run writes, declared once (as records/schema.py is for records).

    RUN_DIR/
      config.toml          the resolved train options: `--config RUN_DIR/config.toml` reproduces the run
      checkpoints/         every epoch (and every --checkpoint-every-steps): a killed run resumes here
      checkpoints/best/    the model of the epoch of best validation macro F1 (`--keep best`)
      logs/                TensorBoard
      history.csv          one row per epoch, `HistoryRow`'s fields
      training_curves.png  loss and accuracy per epoch
      parity.json          the export against the trained model on validation (abo_tf.training.parity)
      metrics.json         validation and test metrics (abo_tf.reports.metrics), with 95% intervals by item
      test_predictions.csv the test split image by image (abo_tf.reports.predictions_file), for paired comparisons
      labels.txt           class names, label order
      model.keras          the Keras model (Grad-CAM, features, fine-tuning)
      saved_model/         the SavedModel users ship (abo_tf.training.export)
      model_card.md        data, config, test metrics, limits, licence (abo_tf.reports.model_card)
      exports/FORMAT/      LiteRT and ONNX exports, written later by `python -m abo_tf.export`
      not_exported.txt     instead of saved_model/, model.keras and parity.json: a tune trial, a search point
                           trained without an export (the commands that need a model refuse it, saying how to get one)

The run exports into saved_model.partial/ and checks it; only when the check
passes does it write model.keras and metrics.json and rename the export to
saved_model/. A failed check leaves none of the three (parity.json says why).

Every command that reads a run (evaluate, features, baselines, tune) goes
through the names and loaders here.
"""

import csv
import dataclasses
import os
import typing

from abo_tf.common import config, files
from abo_tf.common.errors import InputNotFoundError, UserInputError, first_line
from abo_tf.reports import predictions_file

CONFIG = config.RUN_CONFIG
CHECKPOINTS = "checkpoints"
BEST_CHECKPOINT = os.path.join(CHECKPOINTS, "best")
LOGS = "logs"
HISTORY = "history.csv"
CURVES = "training_curves.png"
METRICS = "metrics.json"
TEST_PREDICTIONS = predictions_file.TEST_PREDICTIONS
LABELS = "labels.txt"
KERAS_MODEL = "model.keras"
SAVED_MODEL = "saved_model"
MODEL_CARD = "model_card.md"
SAVED_MODEL_STAGING = "saved_model.partial"  # the export until its parity check passes
PARITY = "parity.json"
NOT_EXPORTED = "not_exported.txt"
POOL_LAYER = "pool"  # the pooled backbone features, input of the classification head
# What a run writes at its top level: what `train --output` may replace in its own folder.
FILES = (
    CONFIG,
    CHECKPOINTS,
    LOGS,
    HISTORY,
    CURVES,
    METRICS,
    TEST_PREDICTIONS,
    LABELS,
    KERAS_MODEL,
    SAVED_MODEL,
    SAVED_MODEL_STAGING,
    PARITY,
    MODEL_CARD,
    NOT_EXPORTED,
)
# What a finished run exports; removed when a run finishes again, so a failed parity check leaves none of them.
EXPORTS = (SAVED_MODEL, SAVED_MODEL_STAGING, KERAS_MODEL, METRICS, TEST_PREDICTIONS, PARITY, MODEL_CARD, NOT_EXPORTED)
# What not_exported.txt says; {run} is the run folder.
NOT_EXPORTED_NOTE = (
    "a trial of `python -m abo_tf.tune`, trained without an export (a search point): for a SavedModel, train its "
    "config with `python -m abo_tf.train --config {run}/config.toml --output NEW_FOLDER` (or the study's best.toml)"
)


@dataclasses.dataclass(frozen=True)
class HistoryRow:
    """One epoch of history.csv; the field order is the column order."""

    epoch: int
    step: int
    phase: str
    loss: float
    accuracy: float
    val_loss: float
    val_accuracy: float
    learning_rate: float
    images_per_second: float
    seconds: float
    val_macro_f1: float = float("nan")  # computed with --keep best or a tuning hook; absent from older files


HISTORY_FIELDS = tuple(field.name for field in dataclasses.fields(HistoryRow))
# Columns added after history files were written: an older file lacks them and its rows get the default.
_LATER_COLUMNS = ("val_macro_f1",)


def path(run_dir, name):
    """`run_dir/name` for one of this module's names."""
    return os.path.join(run_dir, name)


def check_run(run_dir, needs=KERAS_MODEL, flag="--run"):
    """Raises a one-line error unless `run_dir` is a run folder holding `needs`."""
    if not os.path.isdir(run_dir):
        what = "is not a folder" if os.path.lexists(run_dir) else "does not exist"  # a file said "does not exist"
        raise InputNotFoundError(f"{flag} {run_dir!r} {what}: give the --output folder of `python -m abo_tf.train`")
    if not os.path.exists(path(run_dir, needs)):
        check_exported(run_dir, flag)  # a trial's folder: say how to get the model
        raise InputNotFoundError(
            f"{flag} {run_dir!r} has no {needs}: give a finished training run (its --output folder)"
        )
    return run_dir


def mark_not_exported(run_dir):
    """Writes not_exported.txt: this finished run has metrics but, by design, no model to ship."""
    with open(path(run_dir, NOT_EXPORTED), "w", encoding="utf-8") as handle:
        handle.write(NOT_EXPORTED_NOTE.format(run=run_dir) + "\n")


def check_exported(model_path, flag="--model"):
    """Raises a one-line error when `model_path` (a run folder or a path in it) is a run trained without an export."""
    # `or os.curdir`: `--model saved_model` inside a trial has no dirname, and the note's "--config /config.toml"
    # named the root folder.
    for run_dir in (model_path, os.path.dirname(os.path.normpath(model_path)) or os.curdir):
        if os.path.isfile(path(run_dir, NOT_EXPORTED)):
            note = NOT_EXPORTED_NOTE.format(run=os.path.normpath(run_dir))
            raise InputNotFoundError(f"{flag} {model_path!r} has no exported model: it is {note}")


def is_run(folder):
    """True for a finished training run; baselines and evaluation reports (with metrics.json, config.toml) are not."""
    return all(os.path.isfile(path(folder, name)) for name in (CONFIG, METRICS, HISTORY))


def is_started_run(folder):
    """True for a run folder written before output markers existed (it has the resolved config.toml)."""
    return os.path.isfile(path(folder, CONFIG))


def has_finished_step(run_dir):
    """True when the run saved a checkpoint or an epoch's history: only then is there work a new config would lose.

    A run that failed before its first step (e.g. `--weights imagenet` offline) holds its config.toml and nothing
    else of value, so the corrected command may take the folder over.
    """
    checkpoints = path(run_dir, CHECKPOINTS)
    saved = os.path.isdir(checkpoints) and any(name.startswith("checkpoint") for name in os.listdir(checkpoints))
    return saved or os.path.isfile(path(run_dir, HISTORY))


def load_keras_model(model_path):
    """Loads a run's `model.keras` (a file path), with the project's custom layers registered."""
    import keras

    from abo_tf.training import models  # noqa: F401  registers BackbonePreprocess for load_model

    if not os.path.isfile(model_path):
        raise InputNotFoundError(f"{model_path!r} does not exist: give the {KERAS_MODEL} of a training run")
    try:
        return keras.models.load_model(model_path)
    except (ValueError, OSError, KeyError, TypeError) as error:  # garbage bytes, another format, a foreign config
        raise UserInputError(
            f"{model_path!r} is not a Keras model from abo_tf.train ({first_line(error)}): give the run's {KERAS_MODEL}"
        ) from error


# Train options added after runs were written, with the value that reproduces such a run: a config.toml that lacks
# them gets these, so an older run still compares equal to its own config and resumes with --resume.
ADDED_OPTIONS = {
    "decay_norm_and_bias": True,
    "calibrate": False,
    "keep": "last",
    "ema_momentum": 0.0,
    "loss": "cross_entropy",
    "logit_adjustment_tau": 1.0,
    "crop_area_min": 0.08,
    "randaugment": False,
    "mixup_alpha": 0.0,
    "cutmix_alpha": 0.0,
    "eval_image_size": 0,
    "sampling": "instance",
}


def load_config(run_dir):
    """The resolved train options a run folder holds (a flat dict, `ADDED_OPTIONS` filled in), or None."""
    saved = config.load_run_config(run_dir)
    return None if saved is None else {**ADDED_OPTIONS, **saved}


def served_image_size(saved_config):
    """The side of the images a run's model.keras and SavedModel take: --eval-image-size, else --image-size."""
    return int(saved_config.get("eval_image_size") or saved_config["image_size"])


def load_metrics(run_dir):
    """The run's metrics.json (validation and test), or None before the run finished."""
    return files.read_json(path(run_dir, METRICS), what="metrics file")


def load_parity(run_dir):
    """The run's parity.json (`parity.to_json`), or None for a run finished before the check existed."""
    return files.read_json(path(run_dir, PARITY), what="parity file")


def load_history(run_dir, up_to_step=None):
    """The rows of history.csv as `HistoryRow`s (up to a step, for a resumed run); [] when there are none.

    Raises:
      UserInputError: a row lacks a column or holds a value of the wrong type.
    """
    history_path = path(run_dir, HISTORY)
    if not os.path.isfile(history_path):
        return []
    with open(history_path, newline="", encoding="utf-8") as handle:
        try:
            rows = [_history_row(row) for row in csv.DictReader(handle)]
        except (KeyError, ValueError, TypeError) as error:
            raise UserInputError(
                f"{history_path!r} is not a history.csv of abo_tf.train ({type(error).__name__}: {error}): "
                f"it needs the columns {', '.join(HISTORY_FIELDS)}"
            ) from error
    return [row for row in rows if up_to_step is None or row.step <= up_to_step]


def _history_row(row):
    # get_type_hints gives the classes whether or not the annotations are strings (`dataclasses.Field.type` is
    # the class int here, not "int", so a lookup by name failed on every row).
    types = typing.get_type_hints(HistoryRow)
    return HistoryRow(
        **{name: types[name](row[name]) for name in HISTORY_FIELDS if name in row or name not in _LATER_COLUMNS}
    )


def write_history(run_dir, rows):
    """Writes history.csv from `HistoryRow`s (all of them: the file is rewritten after each epoch)."""
    with open(path(run_dir, HISTORY), "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, HISTORY_FIELDS)
        writer.writeheader()
        writer.writerows(dataclasses.asdict(row) for row in rows)


def training_seconds(run_dir):
    """Wall time of the run's epochs (the sum of history.csv), or None without history."""
    rows = load_history(run_dir)
    return float(sum(row.seconds for row in rows)) if rows else None


def read_class_names(run_dir):
    """labels.txt of a run: class names in label order."""
    with open(path(run_dir, LABELS), encoding="utf-8") as handle:
        return [line.rstrip("\n") for line in handle if line.strip()]


def write_class_names(run_dir, class_names):
    with open(path(run_dir, LABELS), "w", encoding="utf-8") as handle:
        handle.write("".join(f"{name}\n" for name in class_names))
