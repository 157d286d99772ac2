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


def _extracted_row(result):
    interval = result["test_macro_f1_interval"]
    f1 = f"{result['test_macro_f1']:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")
    fit, load = result["final_fit"], (result["load_average_before"][0], result["load_average_after"][0])
    epochs = f", {fit['epochs']} epochs" if fit.get("epochs") else ""
    name = result["model"] + (f" ({result['kernel']})" if result.get("kernel") else "")
    return (
        f"| {name} | {result.get('features', 'handcrafted')} | "
        f"{result['candidates']} on {result['search_train_examples']:,} rows | "
        f"{result['search_seconds']:.0f} | {fit['seconds']:.0f} ({fit['train_examples']:,} rows{epochs}) | "
        f"{result['command_seconds']:.0f} | {result['cpu_seconds']:.0f} | {load[0]:.0f} / {load[1]:.0f} | "
        f"{max(result['peak_rss_mb'], result['peak_tree_rss_mb']) / 1024:.2f} GB | "
        f"{result['longest_silence_seconds']:.0f} | {f1} |"
    )


def render_baselines_extracted(results):
    """Every baseline on features extracted from a build: search, fit, command and CPU time, load, memory, test F1."""
    examples = results["examples"]
    lines = [
        "| model | features | search | search (s) | final fit (s) | command (s) | CPU (s) | load before / after "
        "| peak RSS | longest silence (s) | test macro F1 [95%] |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *[_extracted_row(result) for result in results["models"]],
        "",
        f"{results['classes']} classes, {examples['train']:,} / {examples['validation']:,} / {examples['test']:,} "
        f"train / validation / test images; square roots of the handcrafted histograms: {results['hellinger']}; "
        f"{_machine(results)} at the start. CPU: user + system seconds of the command; load: 1-minute load "
        "average when it started and ended; peak RSS: the larger of the process's and its process tree's. "
        "Written by `benchmarks/baselines_extracted_benchmark.py`.",
    ]
    return "\n".join(lines)


def _include(name):
    return lambda results: results.strip()


RENDERERS = {
    "demo": ("demo.json", render_demo),
    "test_suite": ("test_suite.json", render_test_suite),
    "export": ("export.md", _include("export.md")),
    "baselines_full": ("baselines_full.json", render_baselines_extracted),
    "baselines_probe": ("baselines_probe.json", render_baselines_extracted),
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
