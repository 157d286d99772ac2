"""model_card.md: what a trained classifier is, what it was trained on, how well it does, where it fails.

Written once at the end of every training run (into the run folder) and by
every `python -m abo_tf.export` (next to the exported file), from what the run
folder and the build's manifest hold; a figure the run did not measure is said
to be "not measured", never guessed.
"""

import os

from abo_tf.reports import markdown, metrics
from abo_tf.training import run_folder

FEWEST_CLASSES = 5  # the classes with the fewest training examples, listed as a known limit
LICENCE = (
    'ABO data: CC BY 4.0, credit "Amazon.com" (https://amazon-berkeley-objects.s3.amazonaws.com/index.html). '
    'Cite: Collins et al., "ABO: Dataset and Benchmarks for Real-World 3D Object Understanding", CVPR 2022. '
    "Code: Apache-2.0."
)
INTENDED_USE = (
    "Suggesting a product type for a catalog image of the kinds ABO holds (a single product, mostly on a plain "
    "background), for a person to confirm. Not for photographs of scenes, not for decisions about people, and "
    "not for classes outside labels.txt: every image gets one of them, however unlike it is."
)


def _data_lines(manifest, records):
    splits = {name: entry["num_examples"] for name, entry in sorted(manifest["splits"].items())}
    dropped = {
        **{f"images {key}": value for key, value in manifest.get("images", {}).get("dropped", {}).items()},
        **{f"listings {key}": value for key, value in manifest.get("listings", {}).get("dropped", {}).items()},
    }
    return [
        "## Data",
        "",
        f"Records `{records}`, fingerprint `{manifest.get('fingerprint', 'not recorded')}`, "
        f"{len(manifest['classes'])} classes (labels.txt). Split sizes: "
        + ", ".join(f"{name} {count}" for name, count in splits.items())
        + ". The build dropped: "
        + (", ".join(f"{key} {value}" for key, value in sorted(dropped.items()) if value) or "nothing")
        + ". Data audit (`python -m abo_tf.audit`): not linked to this run, so near-duplicate leakage between "
        "train and test is not measured here; run `evaluate --exclude` with the audit's near_duplicates.csv.",
        "",
    ]


def _config_lines(run_dir):
    config = run_folder.load_config(run_dir) or {}
    rows = [[key, str(value)] for key, value in sorted(config.items())]
    return ["## Training configuration", "", markdown.table(rows, ["option", "value"]) if rows else "not recorded", ""]


def _interval(entry, figure):
    interval = (entry.get("intervals") or {}).get(figure)
    return f"[{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "not computed"


def _metrics_lines(run_dir):
    results = run_folder.load_metrics(run_dir) or {}
    test = results.get("test")
    if not test:
        return ["## Test metrics", "", "not measured (the run has no test split or did not finish)", ""]
    rows = [["all", test["num_examples"], test["accuracy"], test["macro_f1"], _interval(test, "macro_f1")]]
    for stratum in metrics.STRATA:
        entry = test["strata"][stratum]
        rows.append(
            [stratum, entry["num_examples"], entry["accuracy"], entry["macro_f1"], _interval(entry, "macro_f1")]
        )
    return [
        "## Test metrics (the run's SavedModel)",
        "",
        markdown.table(rows, ["classes", "images", "accuracy", "macro F1", "macro F1 95% interval"]),
        "",
        f"Top-5 accuracy {metrics.format_figure(test.get('top5_accuracy'))}. Strata by training examples per class "
        f"(head at least {test['strata_thresholds']['head_min']}, tail fewer than "
        f"{test['strata_thresholds']['tail_below']}).",
        "",
        "## Calibration",
        "",
        f"Expected calibration error on test: {metrics.format_figure(test.get('expected_calibration_error'))} "
        "(equal-width confidence bins; `evaluate` draws the reliability diagram).",
        "",
    ]


def _limits_lines(manifest, confusions):
    train = manifest["splits"].get("train", {}).get("per_class", {})
    fewest = sorted(manifest["classes"], key=lambda name: (train.get(name, 0), name))[:FEWEST_CLASSES]
    lines = [
        "## Known limits",
        "",
        "- Fewest training examples: " + ", ".join(f"{name} ({train.get(name, 0)})" for name in fewest) + ".",
    ]
    if confusions:
        lines.append(
            "- Largest confusions on the measured split: "
            + ", ".join(f"{pair['true_class']} -> {pair['predicted_class']} ({pair['count']})" for pair in confusions)
            + "."
        )
    else:
        lines.append("- Largest confusions: see `python -m abo_tf.evaluate`'s confused_pairs.csv (not in this card).")
    lines += ["- Near-duplicate leakage between splits: not measured for this card (see Data).", ""]
    return lines


def _export_lines(export_result):
    if not export_result:
        return []
    agreement = export_result["parity"]
    return [
        "## This export",
        "",
        f"`{export_result['model_file']}` ({export_result['format']}): top-1 agreement with the SavedModel "
        f"{agreement['top1_agreement']:.4f}, max |dp| {agreement['max_abs_difference']:.2e} on "
        f"{agreement['num_images']} {export_result['split']} images; "
        + ("meets its targets." if export_result["passed"] else "MISSES " + "; ".join(export_result["target_misses"]))
        + " Details: report.md, parity.json; input contract: preprocessing.json.",
        "",
    ]


def _sizes(config):
    """ "224 px", or "256 px (trained at 224 px)" with --eval-image-size: the size the model serves first."""
    if "image_size" not in config:
        return "? px"
    trained, served = config["image_size"], run_folder.served_image_size(config)
    return f"{served} px" if trained == served else f"{served} px (trained at {trained} px)"


def markdown_card(run_dir, manifest, records, export_result=None):
    """The card's text."""
    config = run_folder.load_config(run_dir) or {}
    title = f"# Model card: {config.get('model', 'classifier')} at {_sizes(config)}"
    return "\n".join(
        [
            title,
            "",
            "A product-type classifier trained by `python -m abo_tf.train` on Amazon Berkeley Objects images.",
            "",
            *_data_lines(manifest, records),
            *_config_lines(run_dir),
            *_metrics_lines(run_dir),
            *_limits_lines(manifest, (export_result or {}).get("largest_confusions")),
            *_export_lines(export_result),
            "## Intended use",
            "",
            INTENDED_USE,
            "",
            "## Licence and citation",
            "",
            LICENCE,
            "",
        ]
    )


def write(folder, run_dir, manifest, records=None, export_result=None):
    """Writes `folder/model_card.md` for the run in `run_dir`; returns its path."""
    records = records or (run_folder.load_config(run_dir) or {}).get("records", "not recorded")
    path = os.path.join(folder, run_folder.MODEL_CARD)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(markdown_card(run_dir, manifest, records, export_result))
    return path
