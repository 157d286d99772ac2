"""What a pipeline run found, in a few lines: the CNN against the best baseline, the audit, where the reports are.

Read from the files the commands wrote (comparison.csv of `baselines`, the audit's summary.json, the runs'
test_predictions.csv), never recomputed: the summary agrees with the reports it points to. `make demo` ends with it.
"""

import dataclasses
import os

from abo_tf.common import files
from abo_tf.common.errors import InputNotFoundError, UserInputError
from abo_tf.reports import bootstrap, metrics, predictions_file

# The reports of a pipeline folder laid out as `make demo` lays it out.
REPORTS = {
    "data analysis": os.path.join("analysis", "report.md"),
    "data audit": os.path.join("audit", "report.md"),
    "evaluation": os.path.join("evaluation", "report.md"),
    "CNN against baselines": os.path.join("baselines", "comparison.md"),
}
COMPARISON = os.path.join("baselines", "comparison.csv")
AUDIT_SUMMARY = os.path.join("audit", "summary.json")
SUMMARY = "summary.json"


@dataclasses.dataclass(frozen=True)
class Contender:
    """One row of comparison.csv: a model's test macro F1 with its 95% interval by item."""

    name: str
    kind: str
    macro_f1: float | None
    interval: tuple | None
    folder: str


def _contenders(folder):
    import pandas as pd

    path = os.path.join(folder, COMPARISON)
    if not os.path.isfile(path):
        raise InputNotFoundError(
            f"{path!r} does not exist: run `python -m abo_tf.baselines --output {os.path.dirname(path)}`"
        )
    try:
        rows = pd.read_csv(path, encoding="utf-8", dtype=str, keep_default_na=False)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as error:  # EmptyDataError is a ValueError
        raise UserInputError(f"{path!r} is not a comparison.csv of `abo_tf.baselines` ({error})") from error
    missing = [column for column in _COLUMNS if column not in rows.columns]
    if missing:
        raise UserInputError(f"{path!r} lacks the columns {missing}: give the comparison.csv `abo_tf.baselines` wrote")
    return [_contender(path, number + 2, row) for number, row in enumerate(rows.itertuples(index=False))]


_COLUMNS = ("name", "kind", "macro_f1", "macro_f1_low", "macro_f1_high", "folder")


def _number(path, line, column, text):
    if text in ("", "nan", "NaN"):
        return None
    try:
        value = float(text)
    except ValueError as error:
        raise UserInputError(f"{path!r} line {line}: {column} {text[:40]!r} is not a number") from error
    if not 0 <= value <= 1:  # "inf" or 7 was named the best model
        raise UserInputError(f"{path!r} line {line}: {column} {text[:40]!r} is not a macro F1 in [0, 1]")
    return value


def _contender(path, line, row):
    score, low, high = (_number(path, line, column, getattr(row, column)) for column in _COLUMNS[2:5])
    interval = None if low is None or high is None else (low, high)
    return Contender(row.name, row.kind, score, interval, row.folder)


def _best(contenders):
    scored = [contender for contender in contenders if contender.macro_f1 is not None]
    return max(scored, key=lambda contender: contender.macro_f1, default=None)


def summarize(folder, samples=bootstrap.DEFAULT_SAMPLES, seed=0):
    """The figures of a pipeline folder (as `make demo` writes it) as a dict; also written to FOLDER/summary.json.

    Returns:
      {"cnn", "best_baseline": {"name", "macro_f1", "interval"} or None, "cnn_minus_best_baseline" (a
      `bootstrap.paired_differences` entry or None), "audit" (its summary.json's figures or None), "reports"}.
    """
    if os.path.lexists(folder) and not os.path.isdir(folder):  # said "FILE/baselines/comparison.csv does not exist"
        raise UserInputError(f"{folder!r} is not a folder: give the folder `make demo` writes (with its baselines/)")
    contenders = _contenders(folder)
    cnn = _best([contender for contender in contenders if contender.kind == "cnn"])
    baseline = _best([contender for contender in contenders if contender.kind != "cnn"])
    difference = None
    if cnn is not None and baseline is not None:
        compared = predictions_file.compare(cnn.folder, baseline.folder, samples, seed, ("macro_f1",))
        difference = (compared or {}).get("macro_f1")
    audit = files.read_json(os.path.join(folder, AUDIT_SUMMARY), what="audit summary", missing=None)
    if audit is not None and not isinstance(audit, dict):
        raise UserInputError(f"{os.path.join(folder, AUDIT_SUMMARY)!r} is not an audit's summary.json (not an object)")
    summary = {
        "cnn": None if cnn is None else dataclasses.asdict(cnn),
        "best_baseline": None if baseline is None else dataclasses.asdict(baseline),
        "cnn_minus_best_baseline": difference,
        "audit": audit,
        "reports": {name: os.path.join(folder, path) for name, path in REPORTS.items()},
    }
    try:
        files.write_json(os.path.join(folder, SUMMARY), summary)
    except OSError as error:
        raise UserInputError(f"cannot write {os.path.join(folder, SUMMARY)!r} ({error.strerror or error})") from error
    return summary


def _scored(contender):
    if contender is None:
        return "n/a"
    interval = contender["interval"]
    return f"{contender['name']} ({contender['kind']}), {bootstrap.format_interval(contender['macro_f1'], interval)}"


def _verdict(difference):
    if difference is None or difference.get("interval") is None:
        return "no paired comparison (a model without test_predictions.csv)"
    if difference["includes_zero"]:
        return "the test split cannot tell them apart"
    if difference["difference"] > 0:
        return "the CNN is better"
    return "the baseline is better: the CNN does not earn its cost here"


def _audit_lines(audit):
    if audit is None:
        return ["audit: not run"]
    lines = [
        f"audit: {audit.get('near_duplicate_groups', 'n/a')} near-duplicate groups "
        f"({audit.get('near_duplicate_images', 'n/a')} images), {audit.get('groups_across_splits', 'n/a')} across "
        f"splits; {audit.get('test_images_with_a_near_duplicate_in_train', 'n/a')} of "
        f"{audit.get('test_images', 'n/a')} test images share a group with train; "
        f"{audit.get('label_issues', 'n/a')} likely label errors among {audit.get('labels_audited', 'n/a')} labels"
    ]
    planted = audit.get("planted_label_errors")
    kinds = planted.get("kinds") if isinstance(planted, dict) else None
    # An entry of another shape (a number) was a TypeError traceback: the line is left out, as without kinds.
    if isinstance(kinds, dict) and all(isinstance(entry, dict) for entry in kinds.values()):
        recalls = ", ".join(f"{kind} {entry.get('flagged')} of {entry.get('planted')}" for kind, entry in kinds.items())
        lines.append(
            f"  planted label errors found: {recalls}; precision {metrics.format_figure(planted.get('precision'))}"
        )
    return lines


def format_summary(summary):
    """The console lines of `summarize`'s dict."""
    difference = summary["cnn_minus_best_baseline"]
    lines = [
        "Test macro F1 with 95% intervals by item:",
        f"  CNN:           {_scored(summary['cnn'])}",
        f"  best baseline: {_scored(summary['best_baseline'])}",
        f"  CNN minus best baseline: {bootstrap.format_difference(difference)}: {_verdict(difference)}",
        *_audit_lines(summary["audit"]),
        "reports:",
        *(f"  {name}: {path}" for name, path in summary["reports"].items()),
    ]
    return "\n".join(lines)
