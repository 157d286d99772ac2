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


def _worst_moderate(source):
    """{family: the worst recall over its moderate strengths} of one source of a near-duplicate benchmark run."""
    return source["worst_moderate_recall_per_family"]


def render_near_duplicates(results):
    """Worst moderate recall per edit family, unplanted joins and the signals' edges: the run the defaults were
    chosen on and, when recorded, the held-out check (near_duplicates_heldout.json, another seed)."""
    runs = [("chosen on", results)]
    if os.path.isfile(shared.results_path("near_duplicates_heldout.json")):
        runs.append(("checked on", _read("near_duplicates_heldout.json")))
    columns = [(label, run, source) for label, run in runs for source in run["sources"]]
    header = ["family (moderate strengths)"] + [
        f"{source['source']}, seed {run.get('seed', 0)} ({label})" for label, run, source in columns
    ]
    families = sorted({family for _, _, source in columns for family in _worst_moderate(source)})
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for family in families:
        cells = [
            f"{_worst_moderate(source)[family]:.2f}" if family in _worst_moderate(source) else "n/a"
            for _, _, source in columns
        ]
        lines.append(f"| {family} | " + " | ".join(cells) + " |")
    lines.append(
        "| **unplanted joins per 10k images** | "
        + " | ".join(f"**{source['unplanted_per_10k']:.1f}**" for _, _, source in columns)
        + " |"
    )
    lines.append(
        "| images (distinct shots) | "
        + " | ".join(f"{source['images']:,} ({source['shots']:,})" for _, _, source in columns)
        + " |"
    )
    signals = sorted({name for _, _, source in columns for name in source["edges_per_signal"]})
    lines += [
        "",
        "| signal: edges kept (of them joining two distinct shots) | " + " | ".join(header[1:]) + " |",
        "|" + "---|" * len(header),
    ]
    for name in signals:
        cells = []
        for _, _, source in columns:
            entry = source["edges_per_signal"].get(name, [0, 0])
            kept, false = entry if isinstance(entry, list) else (entry, "not recorded")  # runs before false edges
            cells.append(f"{kept:,} ({false})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    defaults = results["defaults"]
    loads = ", ".join(
        f"{run['load_average']:.0f}-{run.get('load_average_end', run['load_average']):.0f}" for _, run in runs
    )
    lines += [
        "",
        f"Defaults: `--hash-distance {defaults['hash_distance']}`, "
        f"`--pixel-similarity {defaults['pixel_similarity']}`, `--min-inliers {defaults['min_inliers']}`. "
        "`benchmarks/near_duplicate_benchmark.py` (`--seed 1 --output near_duplicates_heldout.json` for the check), "
        f"one run each on {results['cores']} shared cores at load "
        f"{loads}.",
    ]
    return "\n".join(lines)


def _include(name):
    return lambda results: results.strip()


RENDERERS = {
    "demo": ("demo.json", render_demo),
    "test_suite": ("test_suite.json", render_test_suite),
    "export": ("export.md", _include("export.md")),
    "near_duplicates": ("near_duplicates.json", render_near_duplicates),
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
