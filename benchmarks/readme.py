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

from abo_tf.reports import metrics
from abo_tf.testing import measure

README = os.path.join(shared.REPO, "README.md")
_BLOCK = re.compile(r"(<!-- results:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)", re.DOTALL)


class ResultsError(ValueError):
    """A results file (or the README) that cannot be rendered: the message names the file and the problem."""


# What a renderer raises on a results file of the wrong shape (a key missing, a string where a number was written).
_SHAPE_ERRORS = (KeyError, IndexError, TypeError, ValueError, AttributeError, ZeroDivisionError)


def _problem(error):
    if isinstance(error, KeyError):
        return f"no key {error.args[0]!r}" if error.args else "a key is missing"
    return f"{type(error).__name__}: {str(error)[:120]}"


def _load(path, what):
    """The JSON object in `path`; ResultsError naming `what` when it is missing, a folder, not JSON or not an object."""
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise ResultsError(f"{what} cannot be read ({_problem(error)})") from error
    if not isinstance(value, dict):
        raise ResultsError(f"{what} holds a JSON {type(value).__name__}, not an object")
    return value


def _read(name):
    """A results file's text (.md) or JSON object; None when it was never recorded (its block says so)."""
    path = shared.results_path(name)
    if not os.path.lexists(path):
        return None
    if name.endswith(".md"):
        try:
            with open(path, encoding="utf-8") as handle:
                return handle.read()
        except (OSError, UnicodeDecodeError) as error:
            raise ResultsError(f"benchmarks/results/{name} cannot be read ({_problem(error)})") from error
    return _load(path, f"benchmarks/results/{name}")


def _not_recorded(name, command):
    return f"Not recorded yet: `{command}` writes `benchmarks/results/{name}`, then `make readme` renders it here."


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


def _interval(entry, name, digits=3):
    interval = (entry.get("intervals") or {}).get(name)
    value = entry.get(name)
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}" + (f" [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]" if interval else "")


def _number(value, digits=3):
    return "n/a" if value is None else f"{value:.{digits}f}"


def render_demo_evaluation(results):
    """The demo CNN's test figures as `evaluate` wrote them (demo/evaluation/metrics.json), overall and per stratum."""
    if results is None or not results.get("evaluation"):
        return _not_recorded("demo.json", "make demo && make record-demo")
    evaluation = results["evaluation"]
    lines = [
        "| test split | images | classes | macro F1 | accuracy | top-5 | ECE |",
        "|---|---|---|---|---|---|---|",
        f"| all | {evaluation['num_examples']} | {evaluation['num_classes']} | {_interval(evaluation, 'macro_f1')} | "
        f"{_interval(evaluation, 'accuracy')} | {_interval(evaluation, 'top5_accuracy')} | "
        f"{_number(evaluation.get('expected_calibration_error'))} |",
    ]
    for name in metrics.STRATA:
        stratum = evaluation["strata"][name]
        lines.append(
            f"| {name} | {stratum['num_examples']} | {stratum['num_classes']} | {_interval(stratum, 'macro_f1')} | "
            f"{_interval(stratum, 'accuracy')} | {_interval(stratum, 'top5_accuracy')} | |"
        )
    thresholds = evaluation["strata_thresholds"]
    lines += [
        "",
        f"Strata by training examples per class (head >= {thresholds['head_min']}, tail < "
        f"{thresholds['tail_below']}); n/a: a stratum without classes. 95% intervals by item; the same run as the "
        f"table above, recorded on {_machine(results)}.",
    ]
    return "\n".join(lines)


def render_test_suite(results):
    """The test suite's size and time, and its slowest tests."""
    if results is None:
        return _not_recorded("test_suite.json", "make record-tests")
    runs = results["runs"]
    lines = ["| command | tests run | passed | failed | skipped | seconds | machine |", "|---|---|---|---|---|---|---|"]
    for name in sorted(runs):
        run = runs[name]
        ran = run["passed"] + run.get("failed", 0) + run["skipped"]  # not `collected`: 0 from an xdist controller
        lines.append(
            f"| `{name}` | {ran} | {run['passed']} | {run.get('failed', 0)} | {run['skipped']} | "
            f"{run['seconds']:.0f} | {_machine(run)} |"
        )
    for name in sorted(runs):
        slowest = runs[name].get("slowest")
        if slowest:
            tests = ", ".join(f"`{entry['test']}` {entry['seconds']:.0f} s" for entry in slowest)
            lines += ["", f"Slowest tests of `{name}` (setup and call, on one of the workers): {tests}."]
    return "\n".join(lines)


def _optional(value, pattern):
    return "n/a" if value is None else pattern.format(value)


def render_build_speed(results):
    """build_records against the minimal tar -> TFRecord loop, per archive size (build_records_benchmark.py)."""
    lines = [
        "| images (classes) | minimal loop (img/s) | build_records (img/s) | ratio | CPU per image, loop / build (us) "
        "| index / prepare (scan) / write / finish (s) | verify / build time | peak RSS build / verify (MB) | repeats "
        "| machine |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key in sorted((key for key in results if key.isdigit()), key=int):
        row, stages = results[key], results[key]["stage_seconds"]
        cpu = (
            f"{_optional(row.get('baseline_cpu_us_per_image'), '{:.0f}')} / "
            f"{_optional(row.get('build_cpu_us_per_image'), '{:.0f}')}"
        )
        ratios = ", ".join(f"{repeat['ratio']:.2f}" for repeat in row["all_repeats"])
        lines.append(
            f"| {row['images_written']:,.0f} ({row['classes']:.0f}) | {row['baseline_images_per_second']:,.0f} "
            f"| {row['build_images_per_second']:,.0f} | **{row['ratio']:.2f}x** ({ratios}) | {cpu} "
            f"| {stages['index']:.1f} / {stages['prepare']:.1f} ({stages['scan']:.1f}) / {stages['write']:.1f} / "
            f"{stages['finish']:.1f} | {row['verify_to_build']:.2f} | {row['build_peak_rss_mb']:.0f} / "
            f"{row['verify_peak_rss_mb']:.0f} | {row['repeats']} | {_machine(row)}, median load during the runs "
            f"{row['load_average']:.1f} |"
        )
    lines += _build_stages(results)
    lines += [
        "",
        "Medians of the repeats (the ratio is the median of each repeat's ratio, both timed in the same repeat; the "
        "repeats' ratios in brackets). Written by `python benchmarks/build_records_benchmark.py` to "
        "`benchmarks/results/build_records.json`.",
    ]
    return "\n".join(lines)


# The build's stages as the benchmark times them; "prepare" includes "scan", shown apart.
_STAGES = (
    ("index", "index the images tar (listings read in a worker meanwhile)"),
    ("scan", "scan: structure check and SHA-256 of every image"),
    ("plan", "labels, grouping, split, plan (prepare without the scan)"),
    ("write", "write the shards"),
    ("finish", "checks, manifest"),
)


def _stage_figures(row, stage):
    """(wall s, parent CPU s, workers' CPU s) of a stage; "plan" is "prepare" less "scan"."""
    seconds, cpu = row["stage_seconds"], row["stage_cpu_seconds"]
    if stage != "plan":
        return seconds[stage], cpu[stage]["parent"], cpu[stage]["workers"]
    return tuple(
        whole - part
        for whole, part in zip(
            _stage_figures(row, "prepare"), (seconds["scan"], cpu["scan"]["parent"], cpu["scan"]["workers"])
        )
    )


def _build_stages(results):
    """Per stage of the build: wall time, CPU of the process and of its workers, cores kept busy."""
    sizes = sorted((key for key in results if key.isdigit() and "stage_cpu_seconds" in results[key]), key=int)
    if not sizes:
        return []
    lines = [
        "",
        "| images | stage | wall (s) | CPU: process / workers (s) | cores busy (CPU / wall) |",
        "|---|---|---|---|---|",
    ]
    for key in sizes:
        row = results[key]
        for stage, description in _STAGES:
            wall, parent, workers = _stage_figures(row, stage)
            busy = (parent + workers) / wall if wall > 0 else 0.0
            lines.append(
                f"| {row['images_written']:,.0f} | {description} | {wall:.1f} | {parent:.1f} / {workers:.1f} "
                f"| {busy:.2f} |"
            )
    return lines


_ABLATION_ROWS = {
    "old": "old recipe (decay 1e-4 on all weights, crop floor 0.08, last epoch, plain CE)",
    "weight_decay": "+ decay 0.05, vectors excluded",
    "augmentation": "+ crop floor 0.25, RandAugment, MixUp 0.2 / CutMix 1.0",
    "ema": "+ EMA 0.99 (weights and BatchNorm statistics, warmed up)",
    "logit_adjusted": "+ `--loss logit_adjusted`",
    "keep_best": "+ `--keep best` (old run's best epoch)",
    "calibrate": "+ temperature (old run, T fitted on validation)",
    "all": "all of the above (logit-adjusted loss, instance sampling)",
    "balanced_softmax": "old recipe + `--loss balanced_softmax`",
    "class_balanced": "old recipe + `--sampling class_balanced`",
    "sqrt_sampling": "old recipe + `--sampling sqrt`",
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
    lines, seconds, loads = [], [], []
    for name in [name for name in _ABLATION_DATASETS if name in results["datasets"]]:
        dataset = results["datasets"][name]
        loads += dataset.get("run_load_average") or []
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
    steps, batch = results["steps_per_epoch"], results["batch_size"]
    epoch = f"{steps} steps of {batch} images" if steps else f"one pass over train (batches of {batch})"
    load = f" (1-minute load average as runs ended: {min(loads):.1f}-{max(loads):.1f})" if loads else ""
    lines.append(
        "Mean ± sd over the seeds that finished; MobileNetV3-Small from scratch at "
        f"{results['image_size']} px, {results['epochs']} epochs of {epoch}, `--deterministic`, class weights off; "
        f"a run took {min(seconds):.0f}-{max(seconds):.0f} s{load}; "
        f"load when summarised: {_machine(next(iter(results['datasets'].values())))}. "
        "`benchmarks/recipe_ablation.py` wrote `benchmarks/results/recipe_ablation.json`."
    )
    return "\n".join(lines)


def render_recipe_costs(results):
    """Issue 19's costs: images/s of the training pipeline per augmentation vs the train step, and EMA's step cost."""
    lines = [
        "| image size | pipeline: plain | RandAugment | MixUp 0.2 | CutMix 1.0 | all three | train step | "
        "step with EMA | EMA step time | machine |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size, figures in sorted(results["by_image_size"].items(), key=lambda item: int(item[0])):
        pipeline = figures["pipeline_images_per_second"]
        rates = [f"{pipeline[name]:.0f}" for name in ("none", "randaugment", "mixup", "cutmix", "all")]
        lines.append(
            f"| {size} px | {' | '.join(rates)} | {figures['step_images_per_second']:.0f} | "
            f"{figures['ema_step_images_per_second']:.0f} | x{figures['ema_step_time_ratio']:.2f} | "
            f"{_machine(figures)} |"
        )
    lines += [
        "",
        "Images/s, batch 32: the training pipeline (decode, crop, augmentation in the tf.data graph) against the "
        "MobileNetV3-Small train step fed one batch from memory, with and without EMA of the weights and BatchNorm "
        "statistics (momentum 0.999). "
        "`benchmarks/input_pipeline_benchmark.py --recipe` wrote `benchmarks/results/recipe_costs.json`.",
    ]
    return "\n".join(lines)


def _extracted_row(result):
    interval = result["test_macro_f1_interval"]
    f1 = f"{result['test_macro_f1']:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")
    fit, load = result["final_fit"], (result["load_average_before"][0], result["load_average_after"][0])
    epochs = f", {fit['epochs']} epochs" if fit.get("epochs") else ""
    start = fit.get("continued_from")  # logreg: lbfgs continued on every row from its fit on the capped rows
    if start:
        epochs = f", {fit['iterations']} lbfgs iterations after {start['seconds']:.0f} s on {start['train_examples']:,}"
    name = result["model"] + (f" ({result['kernel']})" if result.get("kernel") else "")
    return (
        f"| {name} | {result.get('features', 'handcrafted')} | "
        f"{result['candidates']} on {result['search_train_examples']:,} rows | "
        f"{result['search_seconds']:.0f} | {fit['seconds']:.0f} ({fit['train_examples']:,} rows{epochs}) | "
        f"{result['command_seconds']:.0f} | {result['cpu_seconds']:.0f} | {load[0]:.0f} / {load[1]:.0f} | "
        f"{max(result['peak_rss_mb'], result['peak_tree_rss_mb']) / 1024:.2f} GB | "
        f"{result['longest_silence_seconds']:.0f} | {f1} |"
    )


def _extraction(results):
    """How long `abo_tf.features` took, when the benchmark extracted the features ("" when it found or linked them)."""
    timed = results.get("extraction")
    if not timed:
        return ""
    peak = max(timed["peak_rss_mb"], timed["peak_tree_rss_mb"]) / 1024
    load = (timed["load_average_before"][0], timed["load_average_after"][0])
    return (
        f" `abo_tf.features` extracted the {results['features']} features of the three splits in "
        f"{timed['seconds']:.0f} s, {timed['cpu_seconds']:.0f} CPU s, {peak:.2f} GB peak, at a load of "
        f"{load[0]:.0f} / {load[1]:.0f}."
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
        "average when it started and ended; peak RSS: the larger of the process's and its process tree's."
        f"{_extraction(results)} Written by `benchmarks/baselines_extracted_benchmark.py`.",
    ]
    return "\n".join(lines)


def _worst_moderate(source):
    """{family: the worst recall over its moderate strengths} of one source of a near-duplicate benchmark run."""
    return source["worst_moderate_recall_per_family"]


_HELDOUT = "near_duplicates_heldout.json"


def _tuned(label, source):
    # The held-out photographs (image_edits.HELD_OUT_PHOTOS) were never tuned on, whichever seed; the blind
    # catalog's seed-0 joins were read to design the colour check (issue 18), its seed 1 checks it.
    if source["source"] == "held-out photographs":
        return "never tuned on"
    if source["source"] == "blind catalog":
        return "joins read" if label == "chosen on" else label
    return label


def render_near_duplicates(results):
    """Worst moderate recall per edit family, unplanted joins and the signals' edges: the run the defaults were
    chosen on and, when recorded, the held-out check (near_duplicates_heldout.json, another seed)."""
    runs = [("chosen on", results)]
    heldout = _read(_HELDOUT)
    if heldout is not None:
        runs.append(("checked on", heldout))
    columns = [(label, run, source) for label, run in runs for source in run["sources"]]
    header = ["family (moderate strengths)"] + [
        f"{source['source']}, seed {run.get('seed', 0)} ({_tuned(label, source)})" for label, run, source in columns
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
        "| of them joining unrelated products (not another colour, angle or detail of one) | "
        + " | ".join(
            "n/a" if source.get("unrelated_per_10k") is None else f"{source['unrelated_per_10k']:.1f}"
            for _, _, source in columns
        )
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


def render_near_duplicates_scale(results):
    """The near-duplicate stage on a large build (benchmarks/audit_benchmark.py): time, CPU, memory, what the bounds
    left out, and how the hash pairs grow with the images."""
    lines = [
        "| images | hashing s (CPU s) | CPU ratio to bare `signature` | search s (CPU s) | total s | peak RSS MB "
        "(process + workers) | load before-after |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in results["runs"]:
        load = f"{run['load_average_before'][0]:.0f}-{run['load_average_after'][0]:.0f}"
        hashing = "search alone, saved hashes | -"  # `--hashes`: hashed in another run
        if "hash_seconds" in run:
            hashing = f"{run['hash_seconds']:.0f} ({run['hash_cpu_seconds']:.0f}) | {run['cpu_ratio_to_bare']:.2f}"
        lines.append(
            f"| {run['images']:,} | {hashing} | {run['search_seconds']:.0f} ({run['search_cpu_seconds']:.0f}) | "
            f"{run['seconds']:.0f} | {run['peak_rss_mb']:,.0f} | {load} |"
        )
    for run in results["runs"]:
        lines += [
            "",
            f"`{run.get('records') or run['hashes']}`: {_growth(run)}; keypoint pairs left unchecked by the "
            "per-image bound "
            f"{run['unchecked_local_pairs']:,}, candidate pairs of huge band buckets left out "
            f"{run['left_out_bucket_pairs']:,}{_budget(run)}; {run['cores']} shared cores, one run.",
        ]
    return "\n".join(lines)


def _budget(run):
    """The candidate pairs each image's budget left out, in runs that had one."""
    if "left_out_candidate_pairs" not in run:
        return ""
    left_out = run["left_out_candidate_pairs"]
    return f", candidate pairs among neither image's {run['max_candidates']} nearest {left_out:,}"


def _growth(run):
    """How the search's candidate pairs grow with the images, in the words of the run's benchmark version."""
    if "hashes" in run or "hash_seconds" in run and "candidates_by_images" not in run:  # growth not measured
        return f"images with a hash of more than {run['nearest']} neighbours {run['crowded_images']:,}"
    if "candidates_by_images" not in run:  # before the nearest-neighbour bound: all pairs of the first search
        growth = sorted((int(images), pairs) for images, pairs in run["close_pairs_by_images"].items())
        return "hash pairs within the default distance (first search) at " + ", ".join(
            f"{images:,} images: {pairs:,}" for images, pairs in growth
        )
    growth = sorted((int(images), entry) for images, entry in run["candidates_by_images"].items())
    counted = ", ".join(
        f"{images:,} images: {entry['pairs']:,}{_kept(run, entry)} ({entry['cpu_seconds']:.0f} CPU s)"
        for images, entry in growth
    )
    return (
        f"candidate pairs of the three searches (each hash's {run['nearest']} nearest) at {counted}; images with a "
        f"hash of more than {run['nearest']} neighbours {run['crowded_images']:,}"
    )


def _kept(run, entry):
    """The pairs of a growth step that each image's budget kept, in runs that had one."""
    return f", {entry['kept']:,} kept by the budget of {run['max_candidates']} an image" if "kept" in entry else ""


def _include(name):
    return lambda results: results.strip()


RENDERERS = {
    "demo": ("demo.json", render_demo),
    "demo_evaluation": ("demo.json", render_demo_evaluation),
    "test_suite": ("test_suite.json", render_test_suite),
    "export": ("export.md", _include("export.md")),
    "backbones": ("backbones.md", _include("backbones.md")),
    "build_speed": ("build_records.json", render_build_speed),
    "recipe_ablation": ("recipe_ablation.json", render_recipe_ablation),
    "recipe_costs": ("recipe_costs.json", render_recipe_costs),
    "baselines_full": ("baselines_full.json", render_baselines_extracted),
    "baselines_probe": ("baselines_probe.json", render_baselines_extracted),
    "baselines_full_cnn": ("baselines_full_cnn.json", render_baselines_extracted),
    # The handcrafted features' logreg again, every fit on the chunked objective (`lbfgs.ChunkedLogisticRegression`).
    "baselines_full_logreg_probe32": ("baselines_full_logreg_probe32.json", render_baselines_extracted),
    "near_duplicates": ("near_duplicates.json", render_near_duplicates),
    "near_duplicates_scale": ("audit.json", render_near_duplicates_scale),
}


def _render_block(name):
    """A block's rendered text; ResultsError naming its results file when that is missing or of the wrong shape."""
    if name not in RENDERERS:
        raise ResultsError(f"README.md has a block {name!r} that no renderer knows: one of {sorted(RENDERERS)}")
    file_name, renderer = RENDERERS[name]
    results = _read(file_name)
    if results is None and renderer not in (render_test_suite, render_demo_evaluation):
        raise ResultsError(f"benchmarks/results/{file_name} is missing: block {name!r} renders it")
    try:
        return renderer(results)
    except _SHAPE_ERRORS as error:
        where = f"benchmarks/results/{file_name}" + (f" (or {_HELDOUT})" if renderer is render_near_duplicates else "")
        raise ResultsError(
            f"{where} is not what block {name!r} renders ({_problem(error)}): re-run the command that writes it, "
            "or restore it with git checkout"
        ) from error


def render(text):
    """README text with every block rendered anew; raises ResultsError naming an unknown block or a damaged file."""

    def replace(match):
        return f"{match.group(1)}{_render_block(match.group('name'))}\n{match.group(4)}"

    return _BLOCK.sub(replace, text)


def stale_blocks(text):
    """Names of the blocks whose text differs from what their results render."""
    rendered = render(text)
    before = {match.group("name"): match.group("body") for match in _BLOCK.finditer(text)}
    after = {match.group("name"): match.group("body") for match in _BLOCK.finditer(rendered)}
    return sorted(name for name in before if before[name] != after[name])


_EVALUATION_FIGURES = ("num_examples", "num_classes", "macro_f1", "accuracy", "top5_accuracy", "intervals")


def _evaluation_figures(metrics):
    """What the README shows of `evaluate`'s metrics.json: overall figures with intervals, ECE, the strata."""
    figures = {key: metrics.get(key) for key in (*_EVALUATION_FIGURES, "expected_calibration_error")}
    figures["strata_thresholds"] = metrics["strata_thresholds"]
    figures["strata"] = {
        name: {key: stratum.get(key) for key in _EVALUATION_FIGURES} for name, stratum in metrics["strata"].items()
    }
    return figures


def record_demo(folder):
    summary_path = os.path.join(folder, "summary.json")
    metrics_path = os.path.join(folder, "evaluation", "metrics.json")
    summary = _load(summary_path, f"{summary_path} (written by `make demo`)")
    try:
        evaluation = _evaluation_figures(_load(metrics_path, f"{metrics_path} (written by `make demo`)"))
    except _SHAPE_ERRORS as error:
        raise ResultsError(f"{metrics_path} is not `evaluate`'s metrics.json ({_problem(error)})") from error
    shared.write_results("demo.json", {"summary": summary, "evaluation": evaluation, "machine": measure.machine()})


def record_suite(name, report_path):
    """Adds a pytest run's figures (the JSON that tests/conftest.py writes with ABO_TF_SUITE_REPORT) under `name`."""
    run = _load(report_path, f"{report_path} (written by a run with ABO_TF_SUITE_REPORT)")
    results = _read("test_suite.json") or {"runs": {}}
    if not isinstance(results.get("runs"), dict):
        raise ResultsError("benchmarks/results/test_suite.json holds no object `runs`: restore it with git checkout")
    results["runs"][name] = run
    shared.write_results("test_suite.json", results)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a block is stale; write nothing")
    parser.add_argument("--record-demo", metavar="DEMO_DIR", help="record DEMO_DIR/summary.json, then render")
    parser.add_argument("--record-suite", nargs=2, metavar=("COMMAND", "REPORT"), help="record a pytest run's figures")
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except ResultsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _run(args):
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
