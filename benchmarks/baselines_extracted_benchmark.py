"""Benchmark: every baseline on features `abo_tf.features` extracted from a generated build, in time and memory.

    .venv/bin/python benchmarks/baselines_extracted_benchmark.py --records RECORDS [--models logreg sgd ...]
        [--work-dir DIR] [--name baselines_extracted.json]

RECORDS is a `build_records` output of a generated archive (`python -m abo_tf.sample`; for ABO's 576 types
re-drawn over its listings, `benchmarks/split_benchmark.py`'s `abo_like`). The handcrafted features are
extracted once by `python -m abo_tf.features` into WORK_DIR/features (timed, reused when there), then each
model runs `python -m abo_tf.baselines --model MODEL` in its own process under `/usr/bin/time -v`, with its
default grid and options, progress bars on. Per model: search, final fit and whole-command seconds, peak RSS
(the process's, as `time` reports it; the feature pages it mapped count), the longest silence between two
lines of its output (the progress bars write one every 30 s in a log), the choice, and test macro F1 with its
95% item-bootstrap interval. Targets (issue 21): each baseline within 10 minutes and 3 GB on 2 cores.
Writes benchmarks/results/NAME and prints a Markdown table.
"""

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import time

from shared import REPO, write_results

MODELS = ("logreg", "sgd", "linear_svm", "rbf_svm", "knn", "centroid")
TIMEOUT = 3600


def _timed(command, log_path):
    """Runs `command` under /usr/bin/time -v, its output to `log_path`: (seconds, peak MB, longest silence s)."""
    # Unbuffered: a pipe would otherwise hold the progress lines back and hide how often they come.
    environment = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    started, last, silence = time.perf_counter(), time.perf_counter(), 0.0
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen(
            ["/usr/bin/time", "-v", sys.executable, "-m", *command],
            cwd=REPO,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        # tqdm ends its log lines with "\r" or "\n": both count as a line.
        for line in iter(lambda: process.stdout.readline(), ""):
            now = time.perf_counter()
            silence, last = max(silence, now - last), now
            log.write(line)
        code = process.wait(timeout=TIMEOUT)
    with open(log_path, encoding="utf-8") as log:
        text = log.read()
    if code:
        raise RuntimeError(f"{' '.join(command)} failed ({code}); see {log_path}")
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    return time.perf_counter() - started, peak_kb / 1024, silence


def extract(records, cache_dir, log_dir):
    """Extracts the handcrafted features once; the extraction's record, or None when the cache was there."""
    if glob.glob(os.path.join(cache_dir, "handcrafted-*", "test", "*")):
        return None
    command = ["abo_tf.features", "--records", records, "--cache-dir", cache_dir, "--features", "handcrafted"]
    seconds, peak_mb, silence = _timed(command, os.path.join(log_dir, "features.log"))
    return {"seconds": seconds, "peak_rss_mb": peak_mb, "longest_silence_seconds": silence}


def run_model(model, records, cache_dir, work_dir, extra=()):
    """One baseline as the command runs it; its figures from /usr/bin/time and its baseline.json/metrics.json."""
    output = os.path.join(work_dir, f"out-{model}")
    command = ["abo_tf.baselines", "--records", records, "--cache-dir", cache_dir, "--model", model, *extra]
    command += ["--output", output, "--runs", os.path.join(work_dir, "no-runs")]
    os.makedirs(os.path.join(work_dir, "no-runs"), exist_ok=True)
    seconds, peak_mb, silence = _timed(command, os.path.join(work_dir, f"{model}.log"))
    folder = os.path.join(output, f"handcrafted-{model}")
    with open(os.path.join(folder, "baseline.json"), encoding="utf-8") as handle:
        record = json.load(handle)
    with open(os.path.join(folder, "metrics.json"), encoding="utf-8") as handle:
        test = json.load(handle)["test"]
    found = record["search"]
    return {
        "model": model,
        "strategy": found["strategy"],
        "candidates": len(found["candidates"]),
        "search_train_examples": found["search_train_examples"],
        "rescored": found.get("rescored"),
        "chosen": found["chosen"],
        "search_seconds": found["search_seconds"],
        "final_fit": found["final_fit"],
        "kernel": record.get("kernel"),
        "normalisation": record.get("normalisation"),
        "command_seconds": seconds,
        "peak_rss_mb": peak_mb,
        "longest_silence_seconds": silence,
        "test_macro_f1": test["macro_f1"],
        "test_macro_f1_interval": (test.get("intervals") or {}).get("macro_f1"),
        "test_accuracy": test["accuracy"],
    }


def _row(result):
    interval = result["test_macro_f1_interval"]
    f1 = f"{result['test_macro_f1']:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")
    fit = result["final_fit"]
    return (
        f"| {result['model']} | {result['candidates']} on {result['search_train_examples']:,} rows | "
        f"{result['search_seconds']:.0f} | {fit['seconds']:.0f} ({fit['train_examples']:,} rows) | "
        f"{result['command_seconds']:.0f} | {result['peak_rss_mb'] / 1024:.2f} GB | "
        f"{result['longest_silence_seconds']:.0f} | {f1} |"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", required=True, help="a build_records output of a generated archive")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--work-dir", default="/tmp/baselines_extracted", help="features, outputs and logs")
    parser.add_argument("--no-hellinger", action="store_true", help="passed on to abo_tf.baselines")
    parser.add_argument("--name", default="baselines_extracted.json", help="results file under benchmarks/results")
    args = parser.parse_args()
    os.makedirs(args.work_dir, exist_ok=True)
    cache_dir = os.path.join(args.work_dir, "features")
    with open(os.path.join(args.records, "manifest.json"), encoding="utf-8") as handle:
        manifest = json.load(handle)
    results = {
        "records": os.path.abspath(args.records),
        "examples": {name: split["num_examples"] for name, split in manifest["splits"].items()},
        "classes": len(manifest["classes"]),
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "extraction": extract(args.records, cache_dir, args.work_dir),
        "hellinger": not args.no_hellinger,
        "models": [],
    }
    for model in args.models:
        extra = ["--no-hellinger"] if args.no_hellinger else []
        results["models"].append(run_model(model, args.records, cache_dir, args.work_dir, extra))
        results["load_average_at_end"] = os.getloadavg()
        write_results(args.name, results)  # after each model: a long run keeps what it measured
    print(
        "| model | search | search (s) | final fit (s) | command (s) | peak RSS | longest silence (s) | test macro F1 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for result in results["models"]:
        print(_row(result))


if __name__ == "__main__":
    main()
