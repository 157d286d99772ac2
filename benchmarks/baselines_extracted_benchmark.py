"""Benchmark: every baseline on features `abo_tf.features` extracted from a generated build, in time and memory.

    .venv/bin/python benchmarks/baselines_extracted_benchmark.py --records RECORDS [--models logreg sgd ...]
        [--work-dir DIR] [--features-from CACHE] [--name baselines_extracted.json]

RECORDS is a `build_records` output of a generated archive (`python -m abo_tf.sample`; for ABO's 576 types
re-drawn over its listings, `benchmarks/split_benchmark.py`'s `abo_like`). The handcrafted features are
extracted once by `python -m abo_tf.features` into WORK_DIR/features (timed, reused when there), then each
model runs `python -m abo_tf.baselines --model MODEL` in its own process under `/usr/bin/time -v`, with its
default grid and options, progress bars on. Per model: search, final fit and whole-command seconds, peak RSS
(the process's, as `time` reports it, and its process tree's, sampled; the feature pages it mapped count), the
longest silence between two lines of its output (the progress bars write one every 30 s in a log), the choice,
and test macro F1 with its 95% item-bootstrap interval. Targets (issue 21): each baseline within 10 minutes and
3 GB on 2 cores. Each figure carries the load average before and after its command and its CPU seconds (user +
system, children included): on a shared machine the wall time measures the load as much as the model.
`--features-from CACHE` links the folders of an existing cache instead of extracting (the cache key is the
command's check). `--run RUN` takes a training run's pooled embeddings instead of handcrafted features (the linear
probe: logreg, and knn and centroid, on them).
Writes benchmarks/results/NAME (a re-run of some models keeps the others' figures) and prints the Markdown table
`benchmarks/readme.py` renders into the README.
"""

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time

import readme
from shared import REPO, results_path, write_results

from abo_tf.common import outputs
from abo_tf.testing import measure

MODELS = ("logreg", "sgd", "linear_svm", "rbf_svm", "knn", "centroid")
TIMEOUT = 3600


class _PeakSampler:
    """Samples the resident memory of a process tree twice a second; `peak` is the largest sum seen, in bytes."""

    def __init__(self, pid):
        self.pid, self.peak, self.stop = pid, 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.wait(0.5):
            self.peak = max(self.peak, measure.tree_rss(self.pid))

    def close(self):
        self.stop.set()
        self.thread.join()


def _time_field(text, name):
    return float(re.search(rf"{re.escape(name)}: ([\d.]+)", text).group(1))


def _timed(command, log_path):
    """Runs `command` under /usr/bin/time -v, its output to `log_path`: its seconds, CPU seconds, memory, silence.

    Peak memory twice: the largest resident set of one process (`time`'s) and the largest sum over the
    process tree (sampled from /proc every 0.5 s: a worker pool's processes count together).
    """
    # Unbuffered: a pipe would otherwise hold the progress lines back and hide how often they come.
    environment = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    started, last, silence, load = time.perf_counter(), time.perf_counter(), 0.0, os.getloadavg()
    previous = silent_after = "(the command's start)"
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen(
            ["/usr/bin/time", "-v", sys.executable, "-m", *command],
            cwd=REPO,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        sampler = _PeakSampler(process.pid)
        # tqdm ends its log lines with "\r" or "\n": both count as a line.
        for line in iter(lambda: process.stdout.readline(), ""):
            now = time.perf_counter()
            if now - last > silence:
                silence, silent_after = now - last, previous
            last, previous = now, line.strip()[:120]
            log.write(line)
            log.flush()  # readable while the command runs
        code = process.wait(timeout=TIMEOUT)
        sampler.close()
    with open(log_path, encoding="utf-8") as log:
        text = log.read()
    if code:
        raise RuntimeError(f"{' '.join(command)} failed ({code}); see {log_path}")
    return {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": _time_field(text, "User time (seconds)") + _time_field(text, "System time (seconds)"),
        "peak_rss_mb": _time_field(text, "Maximum resident set size (kbytes)") / 1024,
        "peak_tree_rss_mb": sampler.peak / 2**20,
        "longest_silence_seconds": silence,
        "longest_silence_after": silent_after,
        "load_average_before": load,
        "load_average_after": os.getloadavg(),
    }


def link_cache(source, cache_dir):
    """Makes `cache_dir` a feature cache whose folders are links to those of `source` (read, not written).

    Only the links and the cache's marker are written: `abo_tf.baselines` claims its --cache-dir (a marker and a
    lock file), which a read-only or shared cache must not get. The cache key is checked by the command itself:
    features of other records or another descriptor version are not found, and then extracted into `cache_dir`.
    """
    os.makedirs(cache_dir, exist_ok=True)
    shutil.copyfile(os.path.join(source, outputs.MARKER), os.path.join(cache_dir, outputs.MARKER))
    for folder in glob.glob(os.path.join(source, "*", "")):
        link = os.path.join(cache_dir, os.path.basename(os.path.normpath(folder)))
        if not os.path.lexists(link):
            os.symlink(os.path.abspath(folder), link)


def feature_flags(run):
    """The flags choosing the features: a run's pooled embeddings (the linear probe's), or handcrafted."""
    return ["--features", "cnn", "--run", run] if run else ["--features", "handcrafted"]


def features_name(run):
    """The name `abo_tf.features` gives the features (the prefix of the cache's and the baselines' folders)."""
    return f"run-{os.path.basename(os.path.normpath(run))}" if run else "handcrafted"


def extract(records, cache_dir, log_dir, run=None):
    """Extracts the features once; the extraction's record, or None when the cache was there."""
    if glob.glob(os.path.join(cache_dir, f"{features_name(run)}-*", "test", "*")):
        return None
    command = ["abo_tf.features", "--records", records, "--cache-dir", cache_dir, *feature_flags(run)]
    return _timed(command, os.path.join(log_dir, "features.log"))


def run_model(model, records, cache_dir, work_dir, extra=(), run=None):
    """One baseline as the command runs it; its figures from /usr/bin/time and its baseline.json/metrics.json."""
    name = features_name(run)
    output = os.path.join(work_dir, f"out-{name}-{model}")
    command = ["abo_tf.baselines", "--records", records, "--cache-dir", cache_dir, "--model", model, *extra]
    command += feature_flags(run)
    command += ["--output", output, "--runs", os.path.join(work_dir, "no-runs")]
    os.makedirs(os.path.join(work_dir, "no-runs"), exist_ok=True)
    timing = _timed(command, os.path.join(work_dir, f"{name}-{model}.log"))
    folder = os.path.join(output, f"{name}-{model}")
    with open(os.path.join(folder, "baseline.json"), encoding="utf-8") as handle:
        record = json.load(handle)
    with open(os.path.join(folder, "metrics.json"), encoding="utf-8") as handle:
        test = json.load(handle)["test"]
    found = record["search"]
    return {
        "model": model,
        "features": name,
        "strategy": found["strategy"],
        "candidates": len(found["candidates"]),
        "search_train_examples": found["search_train_examples"],
        "rescored": found.get("rescored"),
        "chosen": found["chosen"],
        "search_seconds": found["search_seconds"],
        "final_fit": found["final_fit"],
        "kernel": record.get("kernel"),
        "normalisation": record.get("normalisation"),
        "command_seconds": timing.pop("seconds"),
        **timing,
        "test_macro_f1": test["macro_f1"],
        "test_macro_f1_interval": (test.get("intervals") or {}).get("macro_f1"),
        "test_accuracy": test["accuracy"],
    }


def _order(result):
    return result.get("features", "handcrafted"), MODELS.index(result["model"])


def _earlier(name, results):
    """The results in `name` of runs of the same records and options (earlier, or running too), else {}."""
    path = results_path(name)
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        earlier = json.load(handle)
    same = all(earlier.get(key) == results[key] for key in ("records", "examples", "hellinger"))
    return earlier if same else {}


def _kept_models(name, results, models):
    """The other models' figures in `name` from runs of the same records and options."""
    rerun = {(results["features"], model) for model in models}
    return [
        result
        for result in _earlier(name, results).get("models", [])
        if (result.get("features", "handcrafted"), result["model"]) not in rerun
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", required=True, help="a build_records output of a generated archive")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--work-dir", default="/tmp/baselines_extracted", help="features, outputs and logs")
    parser.add_argument(
        "--features-from", metavar="CACHE", help="an existing feature cache of RECORDS to link (not write) instead"
    )
    parser.add_argument("--run", help="a training run: its pooled embeddings instead of handcrafted features")
    parser.add_argument("--no-hellinger", action="store_true", help="passed on to abo_tf.baselines")
    parser.add_argument("--name", default="baselines_extracted.json", help="results file under benchmarks/results")
    args = parser.parse_args()
    os.makedirs(args.work_dir, exist_ok=True)
    cache_dir = os.path.join(args.work_dir, "features")
    if args.features_from:
        link_cache(args.features_from, cache_dir)
    with open(os.path.join(args.records, "manifest.json"), encoding="utf-8") as handle:
        manifest = json.load(handle)
    results = {
        "records": os.path.abspath(args.records),
        "examples": {name: split["num_examples"] for name, split in manifest["splits"].items()},
        "classes": len(manifest["classes"]),
        "machine": measure.machine(),
        "features_from": args.features_from and os.path.abspath(args.features_from),
        "features": features_name(args.run),
        "extraction": extract(args.records, cache_dir, args.work_dir, args.run),
        "hellinger": not args.no_hellinger,
        "models": [],
    }
    if results["extraction"] is None:  # the cache was there: the extraction that wrote it, if this file timed it
        earlier = _earlier(args.name, results)
        results["extraction"] = earlier.get("extraction") if earlier.get("features") == results["features"] else None
    measured, extra = [], ["--no-hellinger"] if args.no_hellinger else []
    for model in args.models:
        measured.append(run_model(model, args.records, cache_dir, args.work_dir, extra, args.run))
        # The file is read again before each write: runs of other models into the same file keep their rows.
        results["models"] = sorted(_kept_models(args.name, results, args.models) + measured, key=_order)
        write_results(args.name, results)  # after each model: a long run keeps what it measured
    print(readme.render_baselines_extracted(results))


if __name__ == "__main__":
    main()
