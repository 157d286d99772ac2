"""The library of `python -m abo_tf.export`: convert a run's SavedModel, measure the file against it, write it all.

RUN_DIR/exports/FORMAT/          (or --output)
  model.tflite | model_fp16.tflite | model_int8.tflite | model.onnx
  preprocessing.json             the input contract (contract.py), labels.txt
  parity.json, report.md         parity, accuracy and macro F1 of both, latency, size, targets
  model_card.md                  abo_tf.reports.model_card
  config.toml                    the resolved options
"""

import dataclasses
import os

import numpy as np

from abo_tf.common import console, files, outputs
from abo_tf.common import options as options_lib
from abo_tf.common.errors import UserInputError
from abo_tf.conversion import contract, convert, parity, runtimes
from abo_tf.records import schema, shards
from abo_tf.records import split as split_lib
from abo_tf.reports import bootstrap, markdown, metrics, model_card
from abo_tf.training import run_folder

PARITY = "parity.json"
REPORT = "report.md"
EXPORTS = "exports"  # RUN_DIR/exports/FORMAT is the default --output
_INPUTS, _MEASURE = "inputs", "measurement"


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """Everything an export depends on; `python -m abo_tf.export --help` documents each."""

    run: str = options_lib.option(help="a training run folder (with saved_model/)", group=_INPUTS, required=True)
    format: str = options_lib.option(
        help="litert (float32), litert-fp16, litert-int8 (full integer) or onnx",
        choices=convert.FORMATS,
        group=_INPUTS,
        required=True,
    )
    records: str | None = options_lib.option(
        help="the build the run was trained on; default: the run's config", group=_INPUTS
    )
    split: str = options_lib.option(  # checked here: a wrong name was refused only after the conversion
        "test", choices=split_lib.SPLITS, help="split the export is measured on", group=_MEASURE
    )
    calibration_images: int = options_lib.option(
        300,
        help="litert-int8: train images, stratified by class, that calibrate the ranges",
        group=_INPUTS,
        minimum=1,
        maximum=100_000,  # held in memory as pixels: 100k images of 224 px are 15 GB
    )
    int8_output: str = options_lib.option(
        "float",
        choices=convert.INT8_OUTPUTS,
        group=_INPUTS,
        help="litert-int8's output: float32 probabilities, or uint8 (the input is uint8 pixels either way)",
    )
    batch_size: int = options_lib.option(
        32,
        help="images per call in the parity pass",
        group=_MEASURE,
        minimum=1,
        maximum=options_lib.MAX_BATCH_SIZE,
    )
    latency_runs: int = options_lib.option(
        50,
        help="timed single-image calls per runtime (a quarter as many batches of 32)",
        group=_MEASURE,
        minimum=4,
        maximum=100_000,
    )
    allow_degraded: bool = options_lib.option(
        False, help="exit 0 although the export misses its parity target", group=_MEASURE
    )
    output: str | None = options_lib.option(
        help="export folder; default RUN_DIR/exports/FORMAT", group="output", config=False
    )
    progress: bool = options_lib.option(True, help="progress bar", group=options_lib.CONSOLE_GROUP, config=False)

    def __post_init__(self):
        options_lib.validate(self)

    def output_folder(self):
        return self.output or os.path.join(self.run, EXPORTS, self.format)


def resolve_records(options):
    """The records folder and manifest; refuses another build than the run's (by fingerprint, if still there)."""
    saved = run_folder.load_config(options.run) or {}
    records = options.records or saved.get("records")
    if not records:
        raise UserInputError(f"--run {options.run!r} does not name its records: give --records")
    manifest = shards.read_manifest(records)
    trained_on = saved.get("records")
    if trained_on and os.path.isfile(os.path.join(trained_on, shards.MANIFEST)) and records != trained_on:
        theirs = shards.read_manifest(trained_on).get("fingerprint")
        if theirs != manifest.get("fingerprint"):
            raise UserInputError(
                f"--records {records!r} are another build (fingerprint {str(manifest.get('fingerprint'))[:12]}) "
                f"than the run's {trained_on!r} ({str(theirs)[:12]}): their train split may hold its test images; "
                "give the records the run was trained on"
            )
    return records, manifest


def _check_classes(manifest, class_names, records):
    if list(manifest["classes"]) != list(class_names):
        raise UserInputError(
            f"--records {records!r} have {len(manifest['classes'])} classes, the model {len(class_names)} "
            "(or in another order): give the records the run was trained on"
        )


def _batches(records, manifest, split, image_size, batch_size):
    from abo_tf.training import input_pipeline

    if manifest["splits"].get(split, {}).get("num_examples", 0) == 0:
        raise UserInputError(f"split {split!r} of {records!r} has no examples: choose another --split")
    dataset = input_pipeline.make_dataset(
        records, split, image_size, batch_size, training=False, manifest=manifest, extra_keys=(schema.ITEM_ID,)
    )
    return input_pipeline.explain_read_errors(records, manifest, [split]), dataset


def calibration_sample(records, manifest, image_size, count):
    """`count` train images (eval crop) stratified by class: round-robin over the classes, in record order.

    Equal shares rather than the class frequencies: the tail's images must set the ranges too. The train split
    is read until every class has ceil(count / classes) images or the split ends (a full pass over train when a
    class has fewer: about 100 s for 100k images at 224 px).

    Returns:
      `(pixels uint8 [M, S, S, 3], labels int [M])`, M = min(count, train images).
    """
    num_classes = len(manifest["classes"])
    quota = -(-count // num_classes)
    per_class = [[] for _ in range(num_classes)]
    context, dataset = _batches(records, manifest, "train", image_size, 64)
    with context:
        for batch in dataset:
            for pixels, label in zip(batch["image"].numpy(), batch["label"].numpy()):
                if len(per_class[label]) < quota:
                    per_class[label].append(pixels)
            if all(len(images) == quota for images in per_class):
                break
    # Round k takes the k-th image of every class that has one: each class before any class gets a second.
    order = [(rank, label) for label, images in enumerate(per_class) for rank in range(len(images))]
    chosen = sorted(order)[:count]
    return np.stack([per_class[label][rank] for rank, label in chosen]), np.array([label for _, label in chosen])


def _convert(options, reference, records, manifest):
    """Writes the export's file into the output folder; returns its path."""
    metadata = convert.metadata(reference.class_names, reference.image_size, options.format)
    if options.format == "onnx":
        model_bytes = convert.to_onnx(reference.loaded, reference.image_size, metadata)
    else:
        pixels = None
        if options.format == "litert-int8":
            pixels, _ = calibration_sample(records, manifest, reference.image_size, options.calibration_images)
        model_bytes = convert.to_litert(
            reference.loaded, reference.image_size, options.format, pixels, options.int8_output
        )
        model_bytes = convert.with_litert_metadata(model_bytes, metadata)
    path = os.path.join(options.output_folder(), convert.FILE_NAMES[options.format])
    with open(path, "wb") as handle:
        handle.write(model_bytes)
    return path


def _write_contract(options, reference, model_path):
    folder = options.output_folder()
    uint8_output = options.format == "litert-int8" and options.int8_output == "uint8"
    terms = contract.preprocessing_contract(
        reference.class_names,
        reference.image_size,
        options.format,
        os.path.basename(model_path),
        "uint8" if uint8_output else "float32",
    )
    files.write_json(os.path.join(folder, contract.CONTRACT), terms)
    run_folder.write_class_names(folder, reference.class_names)  # labels.txt, as in a run folder


def _parity_pass(options, records, manifest, reference, candidate):
    """Both runtimes over the split: labels, item ids, both probability arrays, and the first batch's pixels."""
    context, dataset = _batches(records, manifest, options.split, reference.image_size, options.batch_size)
    labels, items, first, total = [], [], None, manifest["splits"][options.split]["num_examples"]
    probabilities = {"saved_model": [], "export": []}
    with context, console.progress_bar(total=total, desc=f"parity {options.split}", enabled=options.progress) as bar:
        for batch in dataset:
            pixels = batch["image"].numpy()
            first = pixels if first is None else first
            probabilities["saved_model"].append(reference.probabilities(pixels))
            probabilities["export"].append(candidate.probabilities(pixels))
            labels.append(batch["label"].numpy())
            items.append(batch[schema.ITEM_ID].numpy())
            bar.update(len(pixels))
    probabilities = {name: np.concatenate(parts) for name, parts in probabilities.items()}
    return np.concatenate(labels), np.concatenate(items), probabilities, first


def _folder_bytes(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)


def measure(options, records, manifest, reference, candidate, model_path):
    """The parity.json record: parity, metrics of both, difference, latency, sizes, target misses."""
    labels, items, probabilities, first = _parity_pass(options, records, manifest, reference, candidate)
    num_classes = len(reference.class_names)
    scored = {
        name: metrics.classification_metrics(labels, values.argmax(axis=1), values, num_classes)
        for name, values in probabilities.items()
    }
    agreement = parity.compare_probabilities(probabilities["saved_model"], probabilities["export"])
    misses = parity.target_misses(options.format, agreement, scored["saved_model"], scored["export"])
    runs = options.latency_runs
    return {
        "format": options.format,
        "split": options.split,
        "parity": dataclasses.asdict(agreement),
        "target": dataclasses.asdict(parity.TARGETS[options.format]),
        "target_misses": misses,
        "passed": not misses,
        "metrics": {name: {key: scored[name][key] for key in ("accuracy", "macro_f1")} for name in scored},
        "difference": {key: scored["export"][key] - scored["saved_model"][key] for key in ("accuracy", "macro_f1")},
        # Export minus SavedModel, paired over items: the interval says whether the test split can tell them apart.
        "difference_interval": _paired_difference(labels, items, probabilities, num_classes),
        "latency": {
            "saved_model": parity.latency(reference.probabilities, first, runs),
            "export": parity.latency(candidate.probabilities, first, runs),
            "machine": f"{os.cpu_count()} CPUs",
        },
        "bytes": {
            "saved_model": _folder_bytes(os.path.join(options.run, run_folder.SAVED_MODEL)),
            "export": os.path.getsize(model_path),
        },
        "model_file": os.path.basename(model_path),
        "largest_confusions": _largest_confusions(labels, probabilities["saved_model"], reference.class_names),
    }


def _paired_difference(labels, items, probabilities, num_classes, seed=0):
    scored = {
        name: bootstrap.Scored(labels, values.argmax(axis=1), metrics.top_k_hits(labels, values, 5), items)
        for name, values in probabilities.items()
    }
    figures = ("accuracy", "macro_f1")
    return bootstrap.paired_differences(
        scored["export"], scored["saved_model"], num_classes, bootstrap.DEFAULT_SAMPLES, seed, figures
    )


def _largest_confusions(labels, probabilities, class_names, count=5):
    pairs = metrics.confused_pairs(labels, probabilities.argmax(axis=1), class_names).head(count)
    return [
        {"true_class": row.true_class, "predicted_class": row.predicted_class, "count": int(row.count)}
        for row in pairs.itertuples()
    ]


def _disagreements(agreement):
    disagreements = round((1 - agreement["top1_agreement"]) * agreement["num_images"])
    return f"{disagreements} top-1 disagreements ({agreement['disagreements_on_ties']} on ties within max |dp|)"


def report_markdown(result):
    """report.md of one export."""
    latency, size = result["latency"], result["bytes"]
    rows = [
        [
            name,
            f"{size[name] / 2**20:.2f}",
            f"{result['metrics'][name]['accuracy']:.4f}",
            f"{result['metrics'][name]['macro_f1']:.4f}",
            f"{latency[name]['batch1_p50_ms']:.2f}",
            f"{latency[name]['batch1_p95_ms']:.2f}",
            f"{latency[name]['images_per_second']:.0f}",
        ]
        for name in ("saved_model", "export")
    ]
    columns = ["model", "MB", "accuracy", "macro F1", "p50 ms (batch 1)", "p95 ms", "images/s (batch 32)"]
    agreement = result["parity"]
    verdict = "meets its targets" if result["passed"] else "MISSES: " + "; ".join(result["target_misses"])
    return "\n".join(
        [
            f"# Export {result['format']}: {result['model_file']}",
            "",
            f"Against the SavedModel on the {result['split']} split ({agreement['num_images']} images): "
            f"top-1 agreement {agreement['top1_agreement']:.4f}, max |dp| {agreement['max_abs_difference']:.2e}, "
            f"mean |dp| {agreement['mean_abs_difference']:.2e}, {_disagreements(agreement)}; "
            "export minus SavedModel, 95% paired interval over items: accuracy "
            f"{bootstrap.format_difference(result['difference_interval']['accuracy'], 4)}, macro F1 "
            f"{bootstrap.format_difference(result['difference_interval']['macro_f1'], 4)}. "
            f"The export {verdict}.",
            "",
            markdown.table(rows, columns),
            "",
            f"Latency on this machine's CPU ({latency['machine']}); the input contract is "
            f"`{contract.CONTRACT}`, the labels `{contract.LABELS}`.",
            "",
        ]
    )


def export(options):
    """Converts, writes and measures one export (see the module docstring).

    Returns:
      The parity.json record; its "target_misses" say whether the export meets its targets.

    Raises:
      UserInputError: a run without a SavedModel, records of another build, an output folder that cannot be
        written, a model the converter refuses.
    """
    run_folder.check_run(options.run, needs=run_folder.SAVED_MODEL)
    records, manifest = resolve_records(options)
    folder = outputs.claim(options.output_folder(), "export")
    options_lib.save_config(options, folder.path)
    reference = runtimes.load(run_folder.path(options.run, run_folder.SAVED_MODEL))
    _check_classes(manifest, reference.class_names, records)
    model_path = _convert(options, reference, records, manifest)
    _write_contract(options, reference, model_path)
    candidate = runtimes.load(model_path)  # in its own runtime: what a user of the file gets
    result = measure(options, records, manifest, reference, candidate, model_path)
    files.write_json(os.path.join(folder.path, PARITY), result)
    with open(os.path.join(folder.path, REPORT), "w", encoding="utf-8") as handle:
        handle.write(report_markdown(result))
    model_card.write(folder.path, options.run, manifest, records, export_result=result)
    return result
