"""Baselines and CNN runs side by side on the test split: comparison.csv and comparison.md.

Figures carry their 95% interval by item (from each folder's metrics.json), and every CNN run is compared with
every baseline by the paired bootstrap of the difference (from both folders' test_predictions.csv).
"""

import glob
import math
import os
import time

from abo_tf.classical import persistence, report
from abo_tf.common import files
from abo_tf.common.errors import UserInputError
from abo_tf.reports import bootstrap, markdown, metrics, predictions_file
from abo_tf.training import run_folder

COMPARISON_FIELDS = (
    "name",
    "kind",
    "features",
    "class_weights",
    "accuracy",
    "macro_f1",
    "top5_accuracy",
    "accuracy_low",
    "accuracy_high",
    "macro_f1_low",
    "macro_f1_high",
    "top5_accuracy_low",
    "top5_accuracy_high",
    "training_seconds",
    "inference_images_per_second",
    "train_examples",
    "test_examples",
    "folder",
)
_HEADLINE = ("accuracy", "macro_f1", "top5_accuracy")  # with their intervals
# The Markdown table's columns: header, the row's field, digits of a float (None: as is; "interval": with it).
MARKDOWN_COLUMNS = (
    ("model", "name", None),
    ("kind", "kind", None),
    ("features", "features", None),
    ("class weights", "class_weights", None),
    ("accuracy", "accuracy", "interval"),
    ("macro F1", "macro_f1", "interval"),
    ("top-5", "top5_accuracy", "interval"),
    ("training (s)", "training_seconds", 1),
    ("inference (img/s)", "inference_images_per_second", 0),
    ("training rows", "train_examples", 0),
    ("test images", "test_examples", 0),
)
# The notes on each kind of row, said only when the table has such rows.
BASELINE_NOTES = (
    "Baselines: training time includes the whole hyperparameter search (feature extraction excluded); "
    "inference is end to end from the records (decode, features, classifier); training rows: those the final model "
    "was fitted on (a subsample where its model caps them: knn, exact rbf_svm, and logreg where --logreg-all-rows-iter "
    "is 0 or --in-memory-gb cannot hold every row). "
)
CNN_NOTES = (
    "CNN runs: training time is the sum of history.csv; "
    "inference is the SavedModel's serve_pixels fed by the evaluation pipeline (n/a: no saved_model/ or not measured). "
)
INTERVAL_NOTES = (
    "In brackets: 95% intervals by a bootstrap over items (item_id: the views of a product resampled together)."
)


def _notes(rows):
    """The table's notes: those on baselines and on CNN runs only where it has such rows."""
    cnn = [row["kind"] == "cnn" for row in rows]
    baselines, runs = BASELINE_NOTES if not all(cnn) else "", CNN_NOTES if any(cnn) else ""
    return "Test split. " + baselines + runs + INTERVAL_NOTES


def _test_metric_fields(metrics_path):
    """The comparison fields of a metrics.json's "test" entry (None where it has none)."""
    saved = files.read_json(metrics_path, what="metrics file", missing={})
    test = saved.get("test", {}) if isinstance(saved, dict) else {}
    intervals = test.get("intervals") or {}
    fields = {key: test.get(key) for key in _HEADLINE} | {"test_examples": test.get("num_examples")}
    for key in _HEADLINE:
        low, high = intervals.get(key) or (None, None)
        fields |= {f"{key}_low": low, f"{key}_high": high}
    return fields


def collect_baselines(output):
    """One comparison row per baseline folder under `output` (any features, any earlier command).

    Args:
      output: a baselines --output folder.

    Returns:
      A list of dicts with COMPARISON_FIELDS.
    """
    rows = []
    for path in sorted(glob.glob(os.path.join(output, "*", persistence.RESULT_FILE))):
        folder = os.path.dirname(path)
        record = persistence.read_record(folder)
        try:  # a record edited or cut by hand was a KeyError once every model had trained
            fields = {
                "kind": f"baseline ({record['model']})",
                "features": record["features"],
                "class_weights": record.get("class_weights", "balanced"),  # before the option: always balanced
                "training_seconds": record["training_seconds"],
                "inference_images_per_second": record["inference_images_per_second"],
                "train_examples": record["search"]["final_fit"]["train_examples"],
            }
        except (KeyError, TypeError) as error:
            raise UserInputError(
                f"{path!r} lacks {error} (not a baseline record of this version): move the folder away or train "
                "the baseline again"
            ) from error
        rows.append(
            {
                "name": os.path.basename(folder),
                **fields,
                "folder": folder,
                **_test_metric_fields(os.path.join(folder, "metrics.json")),
            }
        )
    return rows


def measure_run_inference(run, records_dir, max_images=512, batch_size=64):
    """Images/s of a run's SavedModel `serve_pixels` on the test split's evaluation pipeline (decode included).

    The first batch (tracing, warm-up) is not timed.

    Args:
      run: a training run folder.
      records_dir: the records to read the test split from.
      max_images: images timed, about (whole batches).
      batch_size: images per call.

    Returns:
      Images per second, or None when the run has no saved_model/ or the records have no test split.
    """
    import tensorflow as tf

    from abo_tf.training import export, input_pipeline

    saved_model = run_folder.path(run, run_folder.SAVED_MODEL)
    if not tf.saved_model.contains_saved_model(saved_model) or not input_pipeline.num_examples(records_dir, "test"):
        return None
    loaded = export.load_exported(saved_model)
    serve = loaded.signatures[export.PIXELS_ENDPOINT]
    dataset = input_pipeline.make_dataset(
        records_dir, "test", export.exported_image_size(loaded), batch_size, training=False
    )
    batches = iter(dataset.repeat().take(1 + max(1, math.ceil(max_images / batch_size))))
    serve(pixels=next(batches)["image"])
    started, count = time.perf_counter(), 0
    for batch in batches:
        outputs = serve(pixels=batch["image"])
        count += int(outputs["probabilities"].shape[0])
    return count / (time.perf_counter() - started)


def _training_seconds(run):
    """The run's training time; None, said in one line, when its history.csv cannot be read."""
    try:
        return run_folder.training_seconds(run)
    except UserInputError as error:
        print(f"comparison: training time of {os.path.basename(run)} n/a: {error}", flush=True)
        return None


def collect_runs(runs_dir, records_dir=None, measure=True, max_images=512):
    """One comparison row per CNN training run directly under `runs_dir` (`run_folder.is_run`).

    Args:
      runs_dir: a folder of training runs.
      records_dir: the records to time the runs' SavedModels on; None: not timed.
      measure: time each run's SavedModel (`measure_run_inference`).
      max_images: test images timed per run.

    Returns:
      A list of dicts with COMPARISON_FIELDS.
    """
    rows = []
    for run in sorted(os.path.dirname(path) for path in glob.glob(os.path.join(runs_dir, "*", run_folder.METRICS))):
        if not run_folder.is_run(run):  # baseline folders and evaluation reports hold a metrics.json too
            continue
        saved = run_folder.load_config(run) or {}
        rate = measure_run_inference(run, records_dir, max_images) if measure and records_dir else None
        rows.append(
            {
                "name": os.path.basename(run),
                "kind": "cnn",
                "features": f"{saved.get('model', '?')} @ {saved.get('image_size', '?')} px",
                "class_weights": saved.get("class_weights", "?"),
                "training_seconds": _training_seconds(run),
                "inference_images_per_second": rate,
                "train_examples": None,  # the run's own train split: its records say how many
                "folder": run,
                **_test_metric_fields(run_folder.path(run, run_folder.METRICS)),
            }
        )
    return rows


def _cell(row, field, digits):
    if digits == "interval":
        low, high = row.get(f"{field}_low"), row.get(f"{field}_high")
        return bootstrap.format_interval(row[field], None if low is None or high is None else (low, high))
    return row[field] if digits is None else metrics.format_figure(row[field], digits)


def _markdown_cells(row):
    return [_cell(row, field, digits) for _, field, digits in MARKDOWN_COLUMNS]


def paired_markdown(rows, samples, seed):
    """The section comparing every CNN run with every baseline: paired differences on the test split ("" if none)."""
    runs = [row for row in rows if row["kind"] == "cnn"]
    baselines = [row for row in rows if row["kind"] != "cnn"]
    if not runs or not baselines or not samples:
        return ""
    table = []
    for run in runs:
        for baseline in baselines:
            differences = predictions_file.compare(run["folder"], baseline["folder"], samples, seed, _HEADLINE) or {}
            cells = [bootstrap.format_difference(differences.get(key)) for key in _HEADLINE]
            table.append([run["name"], baseline["name"], *cells])
    return "\n".join(
        [
            "## CNN minus each baseline",
            "",
            f"Test split, paired bootstrap over items ({samples} resamples, seed {seed}): both models are scored on "
            'the same resampled items, and "(includes 0)" marks a difference this test split cannot tell from none. '
            f"n/a: a folder without {predictions_file.TEST_PREDICTIONS} (older runs) or models scored on other images.",
            "",
            markdown.table(table, ["CNN run", "baseline", "accuracy", "macro F1", "top-5"]),
            "",
        ]
    )


def _report_links(rows, output):
    """A line linking each row's report.md (baselines), relative to `output`; "" when none has one."""
    links = [
        report.link(row["name"], os.path.relpath(os.path.join(row["folder"], report.REPORT_FILE), output))
        for row in rows
        if row.get("folder") and os.path.isfile(os.path.join(row["folder"], report.REPORT_FILE))
    ]
    return "\nReports: " + ", ".join(links) + ".\n" if links else ""


def write_comparison(rows, output, samples=bootstrap.DEFAULT_SAMPLES, seed=0):
    """Writes comparison.csv and comparison.md, best test macro-F1 first, then CNN runs minus baselines.

    Args:
      rows: dicts with COMPARISON_FIELDS (`collect_baselines`, `collect_runs`).
      output: the folder to write into.
      samples: bootstrap resamples of the paired differences (0: none).
      seed: seeds them.

    Returns:
      The Markdown (table, notes and the paired differences).
    """
    import pandas as pd

    rows = sorted(rows, key=lambda row: -(row["macro_f1"] if row["macro_f1"] is not None else -1))
    files.write_csv(pd.DataFrame(rows, columns=COMPARISON_FIELDS), os.path.join(output, "comparison.csv"))
    table = markdown.table([_markdown_cells(row) for row in rows], [header for header, _, _ in MARKDOWN_COLUMNS])
    paired = paired_markdown(rows, samples, seed)
    text = table + "\n\n" + _notes(rows) + "\n" + _report_links(rows, output) + ("\n" + paired if paired else "")
    with open(os.path.join(output, "comparison.md"), "w", encoding="utf-8") as handle:
        handle.write(text)
    return text
