"""Evaluation of an exported model on a split of the records: one pass, metrics, tables, figures, report.md.

The library behind `python -m abo_tf.evaluate` (see that module for the
command and the report's files). The SavedModel is what users ship, so that is
what is measured: its `serve_pixels` endpoint runs over the split through the
evaluation input pipeline (the central crop every model is evaluated on).
Metrics come from `abo_tf.reports.metrics`, as for training and the baselines,
so numbers compare across models.
"""

import dataclasses
import functools
import heapq
import math
import os
import sys

import numpy as np

from abo_tf.common import console, outputs
from abo_tf.common import options as options_lib
from abo_tf.common.errors import InputNotFoundError, UserInputError
from abo_tf.common.files import write_csv, write_json
from abo_tf.records import schema, shards
from abo_tf.records import split as split_lib
from abo_tf.reports import bootstrap, figures, metrics
from abo_tf.training import calibration, run_folder

KERAS_MODEL = run_folder.KERAS_MODEL  # the file training writes next to saved_model/ (the run-folder contract)
CONFUSED_PAIRS = "confused_pairs.csv"


@dataclasses.dataclass(frozen=True)
class EvaluateOptions:
    """Everything an evaluation depends on; `python -m abo_tf.evaluate --help` documents each."""

    model: str = options_lib.option(
        help="a run folder of abo_tf.train (its export is checked against its model.keras) or its saved_model folder",
        group="inputs",
        required=True,
    )
    records: str = options_lib.option(help="folder of a build_records output", group="inputs", required=True)
    split: str = options_lib.option("test", help="split to evaluate", group="inputs")
    keras_model: str | None = options_lib.option(
        help="the run's model.keras for Grad-CAM (and the parity check); default: the run's", group="inputs"
    )
    exclude: str | None = options_lib.option(
        group="inputs",
        metavar="FILE",
        help="near_duplicate_groups.csv of `abo_tf.audit` (or its folder): also score the "
        "split without its images that have a near-duplicate in train",
    )
    report: str = options_lib.option(
        help="folder for report.md, metrics.json, CSVs and figures", group="report", required=True, config=False
    )
    top_n: int = options_lib.option(
        20,
        help="most classes in the confusion matrix (more: those of the most frequent mistakes, the rest pooled)",
        group="report",
        minimum=1,
        maximum=options_lib.MAX_SHOWN,
    )
    gallery_size: int = options_lib.option(
        16, help="most confident mistakes shown", group="report", minimum=0, maximum=options_lib.MAX_SHOWN
    )
    gradcam_examples: int = options_lib.option(
        4,
        help="correct predictions explained, and as many wrong ones",
        group="report",
        minimum=0,
        maximum=options_lib.MAX_SHOWN,
    )
    calibration_bins: int = options_lib.option(
        metrics.CALIBRATION_BINS,
        group="report",
        minimum=1,
        maximum=options_lib.MAX_SHOWN,
        help="equal-width confidence bins of the ECE and the reliability diagram",
    )
    head_min: int = metrics.head_min_option()
    tail_below: int = metrics.tail_below_option()
    bootstrap_samples: int = bootstrap.samples_option("report")
    batch_size: int = options_lib.option(
        64, help="images per call of the SavedModel", group="runtime", minimum=1, maximum=options_lib.MAX_BATCH_SIZE
    )
    seed: int = options_lib.option(
        0, help="draws the Grad-CAM examples and the bootstrap resamples", group="runtime", **options_lib.SEED_BOUNDS
    )
    progress: bool = options_lib.option(True, help="progress bar", group=options_lib.CONSOLE_GROUP, config=False)

    def __post_init__(self):
        options_lib.validate(self)
        metrics.check_strata_options(self.head_min, self.tail_below)


# --- checks --------------------------------------------------------------------


def label_mapping(records_classes, model_classes, split_counts):
    """Records label index -> model output index, by class name.

    Args:
      records_classes: the records' vocabulary (manifest "classes").
      model_classes: the model's output names.
      split_counts: examples per class name in the evaluated split.

    Returns:
      int array [len(records_classes)]; -1 for a records class the model does
      not know and the split does not use.

    Raises:
      UserInputError: the split has examples of classes the model does not know.
    """
    index = {name: position for position, name in enumerate(model_classes)}
    unknown = sorted(name for name in records_classes if name not in index and split_counts.get(name, 0) > 0)
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise UserInputError(
            f"the split has examples of {len(unknown)} classes the model does not know ({shown}): "
            "evaluate on records built with the model's classes"
        )
    return np.array([index.get(name, -1) for name in records_classes], dtype=np.int64)


def _split_entry(manifest, split, records):
    if split not in manifest["splits"]:
        raise UserInputError(
            f"records {records!r} have no split {split!r} (they have {sorted(manifest['splits'])}): "
            "choose one with --split"
        )
    entry = manifest["splits"][split]
    if entry["num_examples"] == 0:
        raise UserInputError(f"split {split!r} of {records!r} is empty: nothing to evaluate (choose another --split)")
    return entry


# --- one pass over the split ----------------------------------------------------


class _Best:
    """The `size` items of highest priority seen, with a tie-break, in a bounded heap."""

    def __init__(self, size):
        self.size, self.heap = size, []

    def offer(self, priority, tiebreak, make_item):
        """Keeps `make_item()` (called only if it is kept) when it ranks among the best."""
        if self.size == 0:
            return
        key = (priority, tiebreak)
        if len(self.heap) < self.size:
            heapq.heappush(self.heap, (key, make_item()))
        elif key > self.heap[0][0]:
            heapq.heapreplace(self.heap, (key, make_item()))

    def items(self):
        """Best first."""
        return [item for _, item in sorted(self.heap, key=lambda entry: entry[0], reverse=True)]


@dataclasses.dataclass
class Predictions:
    """A split through the model: labels in the model's index space, in record order."""

    labels: np.ndarray  # int64 [N]
    probabilities: np.ndarray  # float32 [N, C]
    image_ids: list
    item_ids: np.ndarray  # str [N], the bootstrap's unit (schema.ITEM_ID)
    mistakes: list  # the most confident mistakes, with pixels
    samples: dict  # "correct" / "wrong" -> seeded sample, with pixels


def _picture(pixels, image_id, label, predicted, score):
    return {
        "image": pixels.copy(),
        "image_id": image_id,
        "label": int(label),
        "predicted": int(predicted),
        "score": float(score),
    }


def _keep_pictures(batch_pixels, ids, labels, probabilities, keepers, seed):
    predicted = probabilities.argmax(axis=1)
    for row, image_id in enumerate(ids):
        score = float(probabilities[row, predicted[row]])
        make = functools.partial(_picture, batch_pixels[row], image_id, labels[row], predicted[row], score)
        correct = labels[row] == predicted[row]
        if not correct:
            keepers["mistakes"].offer(score, image_id, make)
        # A seeded sample that does not depend on batch order: the smallest hashes win.
        keepers["correct" if correct else "wrong"].offer(-split_lib.stable_fraction(seed, image_id), image_id, make)


def predict(loaded, options, manifest, mapping):
    """Runs the SavedModel's `serve_pixels` over the split (with a progress bar).

    Returns:
      `Predictions`.

    Raises:
      VerificationError: a damaged or missing shard (named), or records that do not match the manifest.
      OutOfMemory: a batch that does not fit (lower --batch-size).
    """
    import tensorflow as tf

    from abo_tf.training import export, input_pipeline, loop

    image_size = export.exported_image_size(loaded)
    dataset = _split_dataset(options, manifest, image_size, (schema.IMAGE_ID, schema.ITEM_ID))
    try:
        with input_pipeline.explain_read_errors(options.records, manifest, [options.split]):
            return _predict_batches(loaded.signatures[export.PIXELS_ENDPOINT], dataset, options, manifest, mapping)
    except tf.errors.ResourceExhaustedError as error:
        raise loop.out_of_memory(error, options.batch_size, image_size, flags="--batch-size") from error


def _split_dataset(options, manifest, image_size, extra_keys):
    """The evaluated split through the evaluation input pipeline, with the given record keys passed through."""
    from abo_tf.training import input_pipeline

    return input_pipeline.make_dataset(
        options.records,
        options.split,
        image_size,
        options.batch_size,
        training=False,
        manifest=manifest,
        extra_keys=extra_keys,
    )


def _predict_batches(serve, dataset, options, manifest, mapping):
    total = manifest["splits"][options.split]["num_examples"]
    keepers = {
        "mistakes": _Best(options.gallery_size),
        "correct": _Best(options.gradcam_examples),
        "wrong": _Best(options.gradcam_examples),
    }
    labels, probabilities, image_ids, item_ids = [], [], [], []
    with console.progress_bar(
        total=total, desc=f"evaluate {options.split}", unit="img", enabled=options.progress
    ) as bar:
        for batch in dataset:
            batch_probabilities = serve(pixels=batch["image"])["probabilities"].numpy()
            batch_labels = _model_labels(mapping, batch["label"].numpy(), manifest, options)
            ids = [value.decode("utf-8") for value in batch[schema.IMAGE_ID].numpy()]
            _keep_pictures(batch["image"].numpy(), ids, batch_labels, batch_probabilities, keepers, options.seed)
            labels.append(batch_labels)
            probabilities.append(batch_probabilities)
            image_ids += ids
            item_ids += [value.decode("utf-8") for value in batch[schema.ITEM_ID].numpy()]
            bar.update(len(ids))
    if len(image_ids) != total:
        raise UserInputError(
            f"split {options.split!r} yielded {len(image_ids)} examples, its manifest says {total}: "
            "verify the records (build_records --verify)"
        )
    return Predictions(
        np.concatenate(labels),
        np.concatenate(probabilities).astype(np.float32),
        image_ids,
        np.array(item_ids, dtype=str),
        keepers["mistakes"].items(),
        {name: keepers[name].items() for name in ("correct", "wrong")},
    )


def _model_labels(mapping, record_labels, manifest, options):
    """Record labels in the model's index space; a class the manifest says the split lacks is an error, not index -1."""
    labels = mapping[record_labels]
    if (labels < 0).any():
        name = manifest["classes"][int(record_labels[labels < 0][0])]
        raise shards.VerificationError(
            f"split {options.split!r} holds images of class {name!r}, which its manifest does not count "
            "and the model does not know: "
            f"check the build with `python -m abo_tf.build_records --verify {options.records}`"
        )
    return labels


# --- report parts ----------------------------------------------------------------


def mistakes_table(predictions, class_names):
    """Every mistake, most confident first: image id, true and predicted class, scores."""
    import pandas as pd

    predicted = predictions.probabilities.argmax(axis=1)
    rows = np.flatnonzero(predicted != predictions.labels)
    frame = pd.DataFrame(
        {
            "image_id": [predictions.image_ids[row] for row in rows],
            "true_class": [class_names[predictions.labels[row]] for row in rows],
            "predicted_class": [class_names[predicted[row]] for row in rows],
            "score": predictions.probabilities[rows, predicted[rows]],
            "true_class_score": predictions.probabilities[rows, predictions.labels[rows]],
        }
    )
    return frame.sort_values(["score", "image_id"], ascending=[False, True], kind="stable")


def plot_gallery(pictures, class_names, path, title):
    """A grid of images captioned true -> predicted (score); a note when there are none."""
    plt = figures.pyplot()
    columns = min(4, max(1, len(pictures)))
    rows = max(1, math.ceil(len(pictures) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.9 * rows), squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for axis, picture in zip(axes.ravel(), pictures):
        axis.imshow(picture["image"])
        figures.caption(
            axis,
            f"true {class_names[picture['label']]}\npred {class_names[picture['predicted']]} ({picture['score']:.2f})",
        )
    if not pictures:
        axes[0, 0].text(0.5, 0.5, "no mistakes", ha="center", va="center")
    figure.suptitle(title)
    return figures.save(figure, path, dpi=80)  # photographs: the PNGs get large


def _load_keras_model(path, num_classes, image_size):
    model = run_folder.load_keras_model(path)  # a garbage or foreign file is one line there
    if model.output.shape[-1] != num_classes or model.input.shape[1] != image_size:
        raise UserInputError(
            f"{path!r} takes {model.input.shape[1]} px and has {model.output.shape[-1]} outputs, "
            f"the SavedModel {image_size} px and {num_classes}: give the model.keras of the same run (--keras-model)"
        )
    return model


def gradcam_panels(keras_path, predictions, class_names, image_size):
    """Grad-CAM of the sampled correct and wrong predictions, each for its predicted class.

    Returns:
      `(panels, layer name, feature map grid)` for `interpret.plot_gradcam`.
    """
    from abo_tf.reports import gradcam as interpret
    from abo_tf.training import models

    model = _load_keras_model(keras_path, len(class_names), image_size)
    layer = models.find_last_conv_layer(model)
    grid = interpret.feature_map_grid(model, layer)
    pictures = predictions.samples["correct"] + predictions.samples["wrong"]
    if not pictures:
        return [], layer, grid
    heatmaps, _ = interpret.grad_cam(
        model, np.stack([picture["image"] for picture in pictures]), [picture["predicted"] for picture in pictures]
    )
    panels = []
    for picture, heatmap in zip(pictures, heatmaps):
        verdict = (
            "correct" if picture["label"] == picture["predicted"] else f"wrong (true {class_names[picture['label']]})"
        )
        panels.append(
            {
                "image": picture["image"],
                "heatmap": heatmap,
                "caption": f"{class_names[picture['predicted']]} {picture['score']:.2f}\n{verdict}",
            }
        )
    return panels, layer, grid


@dataclasses.dataclass
class _Tables:
    """The report's tables the page quotes."""

    per_class: object  # DataFrame from metrics.per_class_metrics
    confused_pairs: object  # DataFrame from metrics.confused_pairs


def _figure_row(values, keys):
    return "| " + " | ".join(metrics.figure_with_interval(values, key) for key in keys) + " |"


def _macro_note(result):
    """Which classes the macro averages are over, and how the intervals were drawn."""
    note = (
        f"Macro averages are over the {result['macro_classes']} classes of the model's labels.txt present in the "
        f"split's labels; {result['predicted_without_support']} classes predicted but absent from the split count "
        "as mistakes (their precision is in `per_class.csv`, `in_macro_average` false)."
    )
    if result.get("bootstrap"):
        note += (
            f" In brackets: 95% intervals, {metrics.interval_note(result['bootstrap'])}; "
            "the views of one product are resampled together."
        )
    return note


def _summary_lines(options, result):
    lines = [
        f"# Evaluation of `{options.model}` on the {options.split} split",
        "",
        f"{result['num_examples']} images from `{options.records}`, {result['num_classes']} classes. "
        "Macro averages first: ABO's classes are extremely long-tailed, "
        "so accuracy mostly measures the largest classes.",
        "",
        _macro_note(result),
        "",
        "| macro F1 | macro precision | macro recall | accuracy | top-5 | weighted F1 | ECE |",
        "|---|---|---|---|---|---|---|",
        _figure_row(
            result,
            (
                "macro_f1",
                "macro_precision",
                "macro_recall",
                "accuracy",
                "top5_accuracy",
                "weighted_f1",
                "expected_calibration_error",
            ),
        ),
        "",
        *_calibration_lines(result),
        f"## By class frequency (training examples: head >= {options.head_min}, tail < {options.tail_below})",
        "",
        f"| stratum | classes | {options.split} images | macro F1 | macro recall | accuracy | top-5 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in metrics.STRATA:
        entry = result["strata"][name]
        lines.append(
            f"| {name} | {entry['num_classes']} | {entry['num_examples']} "
            + _figure_row(entry, ("macro_f1", "macro_recall", "accuracy", "top5_accuracy"))
        )
    return lines


def _calibration_lines(result):
    entry = result.get("calibration")
    if entry is None:
        return []
    return [
        f"Probabilities are temperature-scaled (T = {entry['temperature']:.3f}, fitted on validation at training): "
        f"on this split NLL {entry['nll_before']:.4f} -> {entry['nll_after']:.4f}, "
        f"ECE {entry['ece_before']:.4f} -> {entry['ece_after']:.4f}.",
        "",
    ]


def _per_class_lines(per_class, files):
    many = len(per_class) > metrics.MAX_BAR_CHART_CLASSES
    caption = (
        "F1 against training examples, one point per class in the split"
        if many
        else "F1 per class, most frequent in training first"
    )
    worst = per_class[per_class["support"] > 0].sort_values(["f1", "support"], ascending=[True, False]).head(10)
    lines = [
        "",
        "## Per class",
        "",
        f"{caption}:",
        "",
        f"![F1 per class]({files['per_class_f1']})",
        "",
        "Lowest F1 (classes present in the split; all in `per_class.csv`):",
        "",
        "| class | support | precision | recall | F1 | stratum |",
        "|---|---|---|---|---|---|",
    ]
    return lines + [
        f"| {row['class']} | {row['support']} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} "
        f"| {row['stratum']} |"
        for _, row in worst.iterrows()
    ]


def _confusion_lines(options, pairs, files):
    lines = [
        "",
        "## Confusions",
        "",
        f"Image counts (`confusion_matrix.csv`), classes in the per-class chart's order; with more than "
        f"{options.top_n} classes (`--top-n`), those of the most frequent mistakes, the rest pooled as "
        f"\"{metrics.ALL_OTHERS}\". Colour: the cell's share of the true class's images.",
        "",
        f"![confusion matrix]({files['confusion_matrix']})",
        "",
        f"Most confused pairs ({len(pairs)} pairs in all, listed in `{CONFUSED_PAIRS}`; "
        "share: of the true class's images):",
        "",
    ]
    if pairs.empty:
        return lines + ["No mistakes."]
    lines += ["| true class | predicted class | count | share of the true class |", "|---|---|---|---|"]
    return lines + [
        f"| {row['true_class']} | {row['predicted_class']} | {row['count']} | {row['share']:.3f} |"
        for _, row in pairs.head(options.top_n).iterrows()
    ]


def _report_markdown(options, result, tables, files, gradcam_note):
    lines = (
        _summary_lines(options, result)
        + _per_class_lines(tables.per_class, files)
        + _confusion_lines(options, tables.confused_pairs, files)
    )
    lines += [
        "",
        f"## Most confident mistakes ({result['num_mistakes']} mistakes in all, listed in `mistakes.csv`)",
        "",
        f"![mistakes]({files['mistakes']})",
        "",
        "## What the model looks at",
        "",
        gradcam_note,
    ]
    if "gradcam" in files:
        lines += ["", f"![Grad-CAM]({files['gradcam']})"]
    lines += [
        "",
        "## Calibration",
        "",
        f"Expected calibration error {metrics.format_figure(result['expected_calibration_error'])} "
        f"over {options.calibration_bins} confidence bins "
        "(`calibration.csv`): how far the top-1 probability is from the accuracy it promises.",
        "",
        f"![reliability diagram]({files['reliability']})",
        "",
    ]
    return "\n".join(lines)


# --- the command -------------------------------------------------------------------


def _figures_and_tables(options, predictions, class_names, train_counts, result):
    import pandas as pd

    report, files = options.report, {}
    predicted = predictions.probabilities.argmax(axis=1)
    per_class = metrics.per_class_metrics(
        predictions.labels, predicted, class_names, train_counts, options.head_min, options.tail_below
    )
    write_csv(per_class, os.path.join(report, "per_class.csv"))
    metrics.plot_per_class_f1(per_class, os.path.join(report, "per_class_f1.png"))
    files["per_class_f1"] = "per_class_f1.png"
    matrix, names = metrics.confusion_matrix_top(
        predictions.labels, predicted, class_names, options.top_n, train_counts
    )
    confusion = pd.DataFrame(matrix, index=names, columns=names)
    write_csv(confusion, os.path.join(report, "confusion_matrix.csv"), index=True)
    metrics.plot_confusion_matrix(matrix, names, os.path.join(report, "confusion_matrix.png"))
    files["confusion_matrix"] = "confusion_matrix.png"
    pairs = metrics.confused_pairs(predictions.labels, predicted, class_names)
    write_csv(pairs, os.path.join(report, CONFUSED_PAIRS))
    write_csv(mistakes_table(predictions, class_names), os.path.join(report, "mistakes.csv"))
    plot_gallery(
        predictions.mistakes,
        class_names,
        os.path.join(report, "mistakes.png"),
        f"most confident mistakes ({options.split})",
    )
    files["mistakes"] = "mistakes.png"
    table = metrics.calibration_table(predictions.labels, predictions.probabilities, options.calibration_bins)
    write_csv(table, os.path.join(report, "calibration.csv"))
    before = None
    if "calibration" in result:  # the run's temperature undone: the same predictions before calibration
        temperature = result["calibration"]["temperature"]
        uncalibrated = calibration.uncalibrated_probabilities(predictions.probabilities, temperature)
        before_table = metrics.calibration_table(predictions.labels, uncalibrated, options.calibration_bins)
        before = before_table, result["calibration"]["ece_before"]
    metrics.plot_reliability_diagram(
        table, result["expected_calibration_error"], os.path.join(report, "reliability.png"), before
    )
    files["reliability"] = "reliability.png"
    return _Tables(per_class, pairs), files


def _run_folder(model):
    """The run folder `--model` names (one holding saved_model/), or None for a saved_model folder."""
    from abo_tf.training import run_folder

    return model if os.path.isdir(run_folder.path(model, run_folder.SAVED_MODEL)) else None


def _saved_model_folder(model):
    from abo_tf.training import run_folder

    run = _run_folder(model)
    return model if run is None else run_folder.path(run, run_folder.SAVED_MODEL)


def _keras_model_path(options):
    folder = _run_folder(options.model) or os.path.dirname(os.path.normpath(options.model))
    return options.keras_model or os.path.join(folder, KERAS_MODEL)


def _parity(options, loaded, manifest, image_size):
    """Given a run folder: its SavedModel against its model.keras on the split, the check training ends with.

    Returns:
      The parity record (`parity.to_json`), or None for a saved_model folder.

    Raises:
      ParityError: the two differ (no report is written).
    """
    from abo_tf.training import export, input_pipeline, parity

    run = _run_folder(options.model)
    if run is None:
        return None
    keras_path = _keras_model_path(options)
    if not os.path.isfile(keras_path):
        raise InputNotFoundError(f"{keras_path!r} does not exist: the parity check needs the run's {KERAS_MODEL}")
    model = _load_keras_model(keras_path, len(export.exported_class_names(loaded)), image_size)
    batches = _split_dataset(options, manifest, image_size, (schema.IMAGE,))
    with input_pipeline.explain_read_errors(options.records, manifest, [options.split]):
        record = parity.to_json(export.saved_model_parity(model, loaded, batches))
    parity.check(record, what=f"the saved_model of {run!r}", outcome="no report was written")
    return record


def _gradcam(options, predictions, class_names, image_size, files):
    from abo_tf.reports import gradcam as interpret

    keras_path = _keras_model_path(options)
    if options.gradcam_examples == 0:
        return "Grad-CAM was not asked for (`--gradcam-examples 0`)."
    if not os.path.isfile(keras_path):
        if options.keras_model:
            raise InputNotFoundError(f"--keras-model {keras_path!r} does not exist: give the model.keras of the run")
        message = (
            f"No Grad-CAM: there is no `{KERAS_MODEL}` next to the SavedModel "
            "(give the run's file with `--keras-model`)."
        )
        print(message, file=sys.stderr)
        return message
    panels, layer, grid = gradcam_panels(keras_path, predictions, class_names, image_size)
    interpret.plot_gradcam(
        panels,
        os.path.join(options.report, "gradcam.png"),
        f"Grad-CAM on {layer} (heat: evidence for the predicted class)",
        grid,
    )
    files["gradcam"] = "gradcam.png"
    note = (
        f"Grad-CAM on `{layer}`, the backbone's last feature map ({grid[0]} x {grid[1]}), for "
        f"{len(predictions.samples['correct'])} correct and {len(predictions.samples['wrong'])} wrong predictions "
        f"drawn with seed {options.seed}; red marks the regions that raise the predicted class's score."
    )
    coarse = interpret.coarseness_note(grid, image_size)
    return f"{note} {coarse}" if coarse else note


def evaluate(options):
    """Evaluates an exported model on one split and writes the report.

    Args:
      options: an `EvaluateOptions`.

    Returns:
      The metrics dict written to metrics.json.

    Raises:
      UserInputError: a model folder that is not an abo_tf SavedModel, records
        without the split, an empty split, classes the model does not know, an
        unwritable report folder, bad thresholds.
    """
    from abo_tf.training import export, input_pipeline

    leaked = _leaked_ids(options)  # a bad --exclude fails before the model is loaded or the report claimed
    outputs.claim(options.report, "evaluate", "--report", records=options.records)
    options_lib.save_config(options, options.report)
    loaded = export.load_exported(_saved_model_folder(options.model))
    class_names, image_size = export.exported_class_names(loaded), export.exported_image_size(loaded)
    manifest = shards.read_manifest(options.records)
    entry = _split_entry(manifest, options.split, options.records)
    input_pipeline.check_records(options.records, manifest, [options.split])
    mapping = label_mapping(manifest["classes"], class_names, entry.get("per_class", {}))
    parity_record = _parity(options, loaded, manifest, image_size)
    predictions = predict(loaded, options, manifest, mapping)
    train_counts = metrics.train_counts(manifest, class_names)
    predicted = predictions.probabilities.argmax(axis=1)
    result = metrics.evaluation_metrics(
        predictions.labels,
        predicted,
        predictions.probabilities,
        train_counts,
        options.head_min,
        options.tail_below,
        num_bins=options.calibration_bins,
        groups=predictions.item_ids,
        bootstrap_samples=options.bootstrap_samples,
        seed=options.seed,
    )
    result.update(
        {
            "split": options.split,
            "model": os.path.abspath(options.model),
            "records": os.path.abspath(options.records),
            "num_classes": len(class_names),
            "num_mistakes": int(np.sum(predicted != predictions.labels)),
        }
    )
    if parity_record is not None:
        result["parity"] = parity_record
    temperature = export.exported_temperature(loaded)
    if temperature is not None:
        result["calibration"] = calibration.uncalibrated_record(
            predictions.probabilities, predictions.labels, temperature
        )
    if leaked is not None:
        result["without_near_duplicates"] = _metrics_without_near_duplicates(options, leaked, predictions, train_counts)
    tables, files = _figures_and_tables(options, predictions, class_names, train_counts, result)
    gradcam_note = _gradcam(options, predictions, class_names, image_size, files)
    write_json(os.path.join(options.report, "metrics.json"), result)
    with open(os.path.join(options.report, "report.md"), "w", encoding="utf-8") as handle:
        handle.write(_report_markdown(options, result, tables, files, gradcam_note) + _leakage_markdown(result))
    return result


def _leaked_ids(options):
    from abo_tf.auditing import leakage

    return None if options.exclude is None else leakage.leaked_ids(options.exclude, options.split)


def _metrics_without_near_duplicates(options, leaked, predictions, train_counts):
    """The metrics of the split's images that have no near-duplicate in train (`--exclude`)."""
    from abo_tf.auditing import leakage

    keep = leakage.kept_mask(predictions.image_ids, leaked, options.split)
    return metrics.metrics_without(
        predictions.labels,
        predictions.probabilities.argmax(axis=1),
        predictions.probabilities,
        train_counts,
        keep,
        predictions.item_ids,
        options.bootstrap_samples,
        options.seed,
        head_min=options.head_min,
        tail_below=options.tail_below,
        num_bins=options.calibration_bins,
    )


def _leakage_markdown(result):
    if "without_near_duplicates" not in result:
        return ""
    from abo_tf.reports import markdown

    without = result["without_near_duplicates"]
    differences = without.get("difference_with_excluded", {})
    rows = [
        (
            name,
            metrics.figure_with_interval(result, key),
            metrics.figure_with_interval(without, key),
            bootstrap.format_difference(differences.get(key)),
        )
        for name, key in (("accuracy", "accuracy"), ("macro F1", "macro_f1"), ("top-5 accuracy", "top5_accuracy"))
    ]
    return "\n".join(
        [
            "",
            "## Without near-duplicates of training images",
            "",
            f"{without['num_excluded']} images with a near-duplicate in train (`--exclude`) left out. The difference's "
            "interval is paired (the same items drawn for both columns); when it includes 0 the near-duplicates "
            "make no difference this split can tell:",
            "",
            markdown.table(rows, ["metric", "all images", "without near-duplicates", "all minus without"]),
            "",
        ]
    )
