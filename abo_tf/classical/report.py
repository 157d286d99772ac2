"""A baseline folder's report.md: the model and its choice, the search that made it, its figures with intervals."""

import os
import urllib.parse

from abo_tf.reports import markdown, metrics

REPORT_FILE = "report.md"
PER_CLASS_F1_FIGURE = "per_class_f1.png"
# The figures a baseline folder may hold, as the report names them (interpretation.png: handcrafted only).
FIGURES = (
    ("F1 per class", PER_CLASS_F1_FIGURE),
    ("confusion matrix (test)", "confusion_matrix.png"),
    ("importance of each descriptor group", "interpretation.png"),
)


def link(text, path):
    """A Markdown link whose text is inert (`markdown.cell`) and whose target is URL-quoted."""
    return f"[{markdown.cell(text)}]({urllib.parse.quote(path)})"


def _params(params):
    return ", ".join(f"{key.removeprefix('classifier__')}={value}" for key, value in params.items()) or "(none)"


def _candidate_rows(found):
    return [
        [
            row["round"],
            _params(row["params"]),
            f"{row['train_examples']:,}",
            row["validation_macro_f1"],
            f"{row['seconds']:.1f}",
            {True: "yes", False: "no", None: "n/a"}[row["converged"]],
        ]
        for row in found["candidates"]
    ]


def _rescored_lines(found):
    rescored = found.get("rescored")
    if not rescored:
        return []
    rows = [[_params(row["params"]), row["validation_macro_f1"]] for row in rescored["finalists"]]
    return [
        "",
        f"Finalists re-fitted on {rescored['train_examples']:,} training rows ({rescored['seconds']:.0f} s):",
        "",
        markdown.table(rows, ["candidate", "validation macro F1"]),
    ]


def _metric_rows(by_split):
    figure = metrics.figure_with_interval
    return [
        [split, entry["num_examples"], figure(entry, "macro_f1"), figure(entry, "accuracy")]
        + [figure(entry, "top5_accuracy"), metrics.format_figure(entry.get("expected_calibration_error"))]
        for split, entry in by_split.items()
    ]


def report_markdown(record, by_split, figures):
    """The report of one baseline.

    Args:
      record: its baseline.json record.
      by_split: {"validation": metrics, "test": metrics} (its metrics.json).
      figures: file names of the figures present in its folder.

    Returns:
      The Markdown text.
    """
    found, fit = record["search"], record["search"]["final_fit"]
    rows = f"{fit['train_examples']:,} training rows" + (
        f" (a stratified subsample of {record['subsample']['of']:,})" if record.get("subsample") else " (all)"
    )
    epochs = f", {fit['epochs']} epochs of SGD" if fit.get("epochs") else ""
    start = fit.get("continued_from")
    if start:  # logreg continued on every row from its fit on the capped rows
        epochs = (
            f", {fit['iterations']} lbfgs iterations from its fit on {start['train_examples']:,} capped rows "
            f"(converged: {start['converged']}; on every row: {fit['converged']})"
        )
    lines = [
        f"# Baseline `{record['model']}` on {markdown.cell(record['features'])} features",
        "",
        f"- Chosen: {_params(found['chosen'])} (search validation macro F1 "
        f"{metrics.format_figure(found['search_validation_macro_f1'])}).",
        f"- Solver: {record['solver']}"
        + (f", kernel {record['kernel']}" if record.get("kernel") else "")
        + f"; normalisation {record['normalisation']}; class weights {record['class_weights']}.",
        f"- Final fit: {rows}{epochs}, {fit['seconds']:.1f} s; search {found['search_seconds']:.1f} s.",
        "",
        "## Test and validation",
        "",
        markdown.table(_metric_rows(by_split), ["split", "images", "macro F1", "accuracy", "top-5", "ECE"]),
    ]
    bootstrap = by_split.get("test", {}).get("bootstrap")
    if bootstrap:
        lines += ["", f"In brackets: 95% intervals, {metrics.interval_note(bootstrap)}."]
    lines += [
        "",
        f"## Search: {found['strategy']}",
        "",
        f"Candidates compared on a stratified subsample of {found['search_train_examples']:,} training rows, "
        "scored on validation:",
        "",
        markdown.table(
            _candidate_rows(found),
            ["round", "candidate", "training rows", "validation macro F1", "seconds", "converged"],
        ),
        *_rescored_lines(found),
    ]
    present = [(name, file) for name, file in FIGURES if file in figures]
    if present:
        lines += ["", "## Figures", ""] + [f"- {link(name, file)}" for name, file in present]
    return "\n".join(lines) + "\n"


def write_report(folder, record, by_split):
    """Writes `folder`/report.md (`report_markdown`, linking the figures the folder holds); its path."""
    path = os.path.join(folder, REPORT_FILE)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(report_markdown(record, by_split, set(os.listdir(folder))))
    return path
