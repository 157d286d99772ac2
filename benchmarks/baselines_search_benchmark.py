"""Benchmark: each baseline's search at full ABO size, in time and peak memory, on 2 cores.

    .venv/bin/python benchmarks/baselines_search_benchmark.py [--models logreg sgd] [--train 313681]

Full ABO: 313,681 training images, 576 product types (the head class about
half of them), 622 handcrafted feature columns. The features are synthetic
(`abo_tf.testing.synthetic_features`: Gaussian classes, long tail, the
handcrafted column groups), written to disk and memory-mapped as the feature
cache serves them: extracting them from 400k generated images would take hours
here, and the search's cost depends on the matrix's shape and class sizes.

Each model runs `classical.baseline.train_baseline` (search, the final fit on
every row, evaluation, importance, files) in a fresh process with its default
grid and options; the peak is the summed RSS of that process (`testing.measure`),
which counts the memory-mapped feature pages it touched. Targets (issue 12):
the search within 10 minutes on 2 cores, under 3 GB. Writes
benchmarks/results/baselines_search.json.
"""

import argparse
import json
import os
import sys
import tempfile

from shared import write_results

ABO_IMAGES, ABO_TRAIN, ABO_CLASSES = 398_212, 313_681, 576
HEAD_FRACTION = 0.5
TIMEOUT = 3600


def make_splits(work_dir, train_size, num_classes):
    """Train, validation and test `SplitFeatures` at ABO's proportions, memory-mapped from `work_dir`."""
    from abo_tf.classical import descriptors
    from abo_tf.testing import synthetic_features

    groups = descriptors.handcrafted_groups()
    dimension = max(end for _, end in groups.values())
    means = synthetic_features.class_means(num_classes, dimension)
    weights = synthetic_features.class_weights(num_classes, HEAD_FRACTION)
    held_out = round(train_size * (ABO_IMAGES - ABO_TRAIN) / ABO_TRAIN / 2)
    info = {"name": "handcrafted", "spec": {"kind": "handcrafted"}, "key": "synthetic", "images_per_second": 1.0}
    sizes = {"train": train_size, "validation": held_out, "test": held_out}
    return {
        name: synthetic_features.split(
            name, size, means, seed, weights, groups, info, os.path.join(work_dir, "features", name)
        )
        for seed, (name, size) in enumerate(sizes.items())
    }


def child(model, work_dir, train_size, num_classes):
    """One baseline trained as `abo_tf.baselines` trains it; prints its search record as JSON."""
    import time

    from abo_tf.classical import baseline

    splits = make_splits(work_dir, train_size, num_classes)
    config = baseline.BaselineConfig(records=work_dir, output=os.path.join(work_dir, "out"), runs=None)
    os.makedirs(config.output, exist_ok=True)
    started = time.perf_counter()
    record = baseline.train_baseline(model, splits, config)
    search = record["search"]
    print(
        json.dumps(
            {
                "model": model,
                "solver": record["solver"],
                "strategy": search["strategy"],
                "search_train_examples": search["search_train_examples"],
                "candidates": len(search["candidates"]),
                "chosen": search["chosen"],
                "search_seconds": search["search_seconds"],
                "final_fit_seconds": search["final_fit"]["seconds"],
                "final_fit_epochs": search["final_fit"]["epochs"],
                "search_and_fit_seconds": search["seconds"],
                "baseline_seconds": time.perf_counter() - started,
                "validation_macro_f1": record["metrics"]["validation"]["macro_f1"],
                "test_macro_f1": record["metrics"]["test"]["macro_f1"],
                "test_accuracy": record["metrics"]["test"]["accuracy"],
            }
        )
    )


def measure(model, work_dir, train_size, num_classes, timeout):
    from abo_tf.testing import measure as measuring

    command = [sys.executable, os.path.abspath(__file__), "--child", model, "--work-dir", work_dir]
    command += ["--train", str(train_size), "--classes", str(num_classes)]
    code, out, err, peak = measuring.run_measured(command, timeout=timeout)
    if code == -9:
        print(f"  {model}: not finished in {timeout} s, peak {peak / 2**30:.2f} GB so far", flush=True)
        return {"model": model, "finished": False, "timeout_seconds": timeout, "peak_rss_gb": peak / 2**30}
    if code != 0:
        raise SystemExit(f"{model} failed ({code}): {err.strip().splitlines()[-1:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_gb"], result["finished"] = peak / 2**30, True
    progress_lines = [line for line in err.splitlines() if "search" in line or "SGD" in line]
    result["progress_lines"] = len(progress_lines)
    print(
        f"  {model}: search {result['search_seconds']:.0f} s + final fit {result['final_fit_seconds']:.0f} s "
        f"({result['solver']}), whole baseline {result['baseline_seconds']:.0f} s, "
        f"peak {result['peak_rss_gb']:.2f} GB, test macro-F1 {result['test_macro_f1']:.3f}",
        flush=True,
    )
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["logreg", "sgd"])
    parser.add_argument("--train", type=int, default=ABO_TRAIN, help="training rows (full ABO: 313,681)")
    parser.add_argument("--classes", type=int, default=ABO_CLASSES)
    parser.add_argument("--work-dir", default=None)
    parser.add_argument("--timeout", type=int, default=TIMEOUT, help="seconds a model may take before it is killed")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.work_dir, args.train, args.classes)
    results = {"cpu_count": os.cpu_count(), "train": args.train, "classes": args.classes, "models": []}
    for model in args.models:
        with tempfile.TemporaryDirectory(prefix="abo_search_bench_", dir=args.work_dir) as work_dir:
            results["models"].append(measure(model, work_dir, args.train, args.classes, args.timeout))
    print(
        "\n| model | solver of the final fit | candidates | search (s) | final fit (s) | whole baseline (s) "
        "| peak RSS (GB) | test macro F1 |\n|---|---|---|---|---|---|---|---|"
    )
    for row in results["models"]:
        if not row["finished"]:
            unfinished = f"not finished in {row['timeout_seconds']} s"
            print(f"| {row['model']} | {unfinished} | | | | | {row['peak_rss_gb']:.2f} | |")
            continue
        print(
            f"| {row['model']} | {row['solver']} | {row['candidates']} | {row['search_seconds']:.0f} | "
            f"{row['final_fit_seconds']:.0f} | {row['baseline_seconds']:.0f} | {row['peak_rss_gb']:.2f} | "
            f"{row['test_macro_f1']:.3f} |"
        )
    suffix = "" if args.models == ["logreg", "sgd"] else "_" + "_".join(args.models)
    write_results(f"baselines_search{suffix}.json", results)


if __name__ == "__main__":
    main()
