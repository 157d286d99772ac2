"""The README's measured figures, rendered from the results files the commands wrote: `make readme`.

    python benchmarks/readme.py            # rewrites every block of README.md from benchmarks/results/
    python benchmarks/readme.py --check    # exit 1 when a block differs from its results (tests/test_readme.py)
    python benchmarks/readme.py --record-demo demo      # demo/summary.json -> benchmarks/results/demo.json
    python benchmarks/readme.py --record-suite FILE     # a pytest run's figures -> benchmarks/results/test_suite.json

A block is the text between `<!-- results:NAME -->` and `<!-- /results:NAME -->`. Its content is produced by
`RENDERERS[NAME]` from a file under benchmarks/results/: nothing between the markers is typed by hand, so a
figure cannot go stale without the check failing. Every block says the machine and load it was measured at.
"""

import argparse
import json
import os
import re
import sys

import shared

from abo_tf.testing import measure

README = os.path.join(shared.REPO, "README.md")
_BLOCK = re.compile(r"(<!-- results:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)", re.DOTALL)


def _read(name):
    with open(shared.results_path(name), encoding="utf-8") as handle:
        return handle.read() if name.endswith(".md") else json.load(handle)


def _machine(entry):
    machine = entry.get("machine") or {}
    load = machine.get("load_average")
    load_text = f", load average {load[0]:.1f}" if load else ""
    return f"{machine.get('cpus', '?')} CPUs{load_text}, {machine.get('date', 'date not recorded')}"


def _figure(entry):
    if entry is None or entry.get("macro_f1") is None:
        return "n/a"
    interval = entry.get("interval")
    text = f"{entry['macro_f1']:.3f}"
    return text + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")


def render_demo(results):
    """The demo's outcome: its CNN and best baseline on test macro F1 with intervals, and what the audit found."""
    summary = results["summary"]
    difference = summary.get("cnn_minus_best_baseline") or {}
    interval = difference.get("interval")
    difference_text = "n/a"
    if difference.get("difference") is not None:
        difference_text = f"{difference['difference']:+.3f}"
        if interval:
            difference_text += f" [{interval[0]:+.3f}, {interval[1]:+.3f}]"
            difference_text += " (includes 0)" if difference.get("includes_zero") else ""
    audit = summary.get("audit") or {}
    cnn, baseline = summary.get("cnn") or {}, summary.get("best_baseline") or {}
    return "\n".join(
        [
            "| what | figure |",
            "|---|---|",
            f"| CNN ({cnn.get('name', 'n/a')}), test macro F1 | {_figure(cnn)} |",
            f"| best baseline ({baseline.get('name', 'n/a')}), test macro F1 | {_figure(baseline)} |",
            f"| CNN minus best baseline (paired, by item) | {difference_text} |",
            f"| near-duplicate groups (images), across splits | {audit.get('near_duplicate_groups', 'n/a')} "
            f"({audit.get('near_duplicate_images', 'n/a')}), {audit.get('groups_across_splits', 'n/a')} |",
            "| test images sharing a group with train | "
            f"{audit.get('test_images_with_a_near_duplicate_in_train', 'n/a')} of {audit.get('test_images', 'n/a')} |",
            f"| likely label errors flagged | {audit.get('label_issues', 'n/a')} of "
            f"{audit.get('labels_audited', 'n/a')} |",
            "",
            f"`make demo` as committed (`train --deterministic`), one run, recorded on {_machine(results)} (the load "
            "when recorded); 95% intervals by item. Written by `python benchmarks/readme.py --record-demo demo` from "
            "`demo/summary.json`.",
        ]
    )


def render_test_suite(results):
    """The test suite's size and time."""
    runs = results["runs"]
    lines = ["| command | tests | passed | skipped | seconds | machine |", "|---|---|---|---|---|---|"]
    for name in sorted(runs):
        run = runs[name]
        lines.append(
            f"| `{name}` | {run['collected']} | {run['passed']} | {run['skipped']} | {run['seconds']:.0f} | "
            f"{_machine(run)} |"
        )
    return "\n".join(lines)


_ABLATION_ROWS = {
    "old": "old recipe (decay 1e-4 on all weights, crop floor 0.08, last epoch, plain CE)",
    "weight_decay": "+ decay 0.05, vectors excluded",
    "augmentation": "+ crop floor 0.25, RandAugment, MixUp 0.2 / CutMix 1.0",
    "ema": "+ EMA 0.99",
    "logit_adjusted": "+ `--loss logit_adjusted`",
    "keep_best": "+ `--keep best` (old run's best epoch)",
    "calibrate": "+ temperature (old run, T fitted on validation)",
    "all": "all of the above",
    "class_balanced": "+ `--sampling class_balanced`",
    "sqrt_sampling": "+ `--sampling sqrt`",
}
_ABLATION_DATASETS = {
    "demo": "(a) `make demo`'s sample",
    "close_types": "(b) close types, long tail",
    "digits": "(c) scikit-learn digits (real scans)",
}


def _mean_sd(entry, seeds, digits=3):
    return f"{entry['mean']:.{digits}f}" + (f" ± {entry['sd']:.{digits}f}" if seeds > 1 else "")


def render_recipe_ablation(results):
    """The ablation of issue 19: per dataset, each variant's mean ± sd over seeds of validation F1, NLL, ECE."""
    lines, seconds = [], []
    for name in [name for name in _ABLATION_DATASETS if name in results["datasets"]]:
        dataset = results["datasets"][name]
        examples = dataset["examples"]
        lines += [
            f"{_ABLATION_DATASETS[name]}: {dataset['classes']} classes, {examples.get('train', 0)} train / "
            f"{examples.get('validation', 0)} validation / {examples.get('test', 0)} test images.",
            "",
            "| recipe | seeds | val macro F1 | val NLL | val ECE | test macro F1 | test NLL | test ECE |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for variant in [variant for variant in _ABLATION_ROWS if variant in dataset["variants"]]:
            figures = dataset["variants"][variant]
            validation, test = figures["validation"], figures["test"]
            cells = [
                _mean_sd(split[key], figures["seeds"])
                for split in (validation, test)
                for key in ("macro_f1", "nll", "ece")
            ]
            lines.append(f"| {_ABLATION_ROWS[variant]} | {figures['seeds']} | {' | '.join(cells)} |")
            seconds += [figures["seconds"]["mean"]] if "seconds" in figures else []
        lines.append("")
    lines.append(
        "Mean ± sd over the seeds that finished; MobileNetV3-Small from scratch at "
        f"{results['image_size']} px, {results['epochs']} epochs of {results['steps_per_epoch']} steps of "
        f"{results['batch_size']} images, `--deterministic`, class weights off; a run took {min(seconds):.0f}-"
        f"{max(seconds):.0f} s; load when summarised: {_machine(next(iter(results['datasets'].values())))}. "
        "`benchmarks/recipe_ablation.py` wrote `benchmarks/results/recipe_ablation.json`."
    )
    return "\n".join(lines)


def _include(name):
    return lambda results: results.strip()


RENDERERS = {
    "demo": ("demo.json", render_demo),
    "test_suite": ("test_suite.json", render_test_suite),
    "export": ("export.md", _include("export.md")),
    "recipe_ablation": ("recipe_ablation.json", render_recipe_ablation),
}


def render(text):
    """README text with every block rendered anew; raises KeyError naming an unknown block."""

    def replace(match):
        file_name, renderer = RENDERERS[match.group("name")]
        return f"{match.group(1)}{renderer(_read(file_name))}\n{match.group(4)}"

    return _BLOCK.sub(replace, text)


def stale_blocks(text):
    """Names of the blocks whose text differs from what their results render."""
    rendered = render(text)
    before = {match.group("name"): match.group("body") for match in _BLOCK.finditer(text)}
    after = {match.group("name"): match.group("body") for match in _BLOCK.finditer(rendered)}
    return sorted(name for name in before if before[name] != after[name])


def record_demo(folder):
    with open(os.path.join(folder, "summary.json"), encoding="utf-8") as handle:
        summary = json.load(handle)
    shared.write_results("demo.json", {"summary": summary, "machine": measure.machine()})


def record_suite(name, report_path):
    """Adds a pytest run's figures (the JSON that tests/conftest.py writes with ABO_TF_SUITE_REPORT) under `name`."""
    with open(report_path, encoding="utf-8") as handle:
        run = json.load(handle)
    path = shared.results_path("test_suite.json")
    results = _read("test_suite.json") if os.path.isfile(path) else {"runs": {}}
    results["runs"][name] = run
    shared.write_results("test_suite.json", results)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a block is stale; write nothing")
    parser.add_argument("--record-demo", metavar="DEMO_DIR", help="record DEMO_DIR/summary.json, then render")
    parser.add_argument("--record-suite", nargs=2, metavar=("COMMAND", "REPORT"), help="record a pytest run's figures")
    args = parser.parse_args(argv)
    with open(README, encoding="utf-8") as handle:
        text = handle.read()
    if args.check:
        stale = stale_blocks(text)
        if stale:
            print(f"README.md blocks out of date with benchmarks/results/: {', '.join(stale)}: run `make readme`")
        return 1 if stale else 0
    if args.record_demo:
        record_demo(args.record_demo)
    if args.record_suite:
        record_suite(*args.record_suite)
    with open(README, "w", encoding="utf-8") as handle:
        handle.write(render(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
