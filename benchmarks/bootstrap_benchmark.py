"""Benchmark: the item bootstrap at full ABO size, intervals and a paired difference, wall seconds.

    .venv/bin/python benchmarks/bootstrap_benchmark.py [--images 100000] [--classes 576] [--samples 1000]

Synthetic predictions: Zipf-distributed labels over `--classes` (ABO's tail), 60% right, top-5 hits at 80%,
images spread over items two ways: item ids drawn among images / 3 (about 3 views an item), and every image
its own item (the worst case: the most clusters). For each, the seconds
of `bootstrap.intervals` (overall and three strata) and of `bootstrap.paired_differences`, one run each (read
them with the load average printed beside them: the machine is shared). Prints JSON and writes
benchmarks/results/bootstrap.json.
"""

import argparse
import json
import os
import time

import numpy as np
from shared import write_results

from abo_tf.reports import bootstrap


def _scored(rng, images, classes, items):
    labels = np.minimum(rng.zipf(1.3, images) - 1, classes - 1)
    predictions = np.where(rng.random(images) < 0.6, labels, rng.integers(0, classes, images))
    return bootstrap.Scored(labels, predictions, rng.random(images) < 0.8, rng.integers(0, items, images))


def _measure(scored, classes, samples):
    strata = np.array(["head"] * (classes // 10) + ["torso"] * (classes // 3))
    strata = np.concatenate([strata, ["tail"] * (classes - len(strata))])
    started = time.perf_counter()
    _, _, settings = bootstrap.intervals(scored, classes, strata, samples, seed=0)
    intervals_seconds = time.perf_counter() - started
    started = time.perf_counter()
    bootstrap.paired_differences(scored, scored._replace(predictions=scored.labels), classes, samples, seed=0)
    return {
        "items": settings["clusters"],
        "intervals_seconds": round(intervals_seconds, 2),
        "paired_seconds": round(time.perf_counter() - started, 2),
        "load_average": os.getloadavg()[0],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=576)
    parser.add_argument("--samples", type=int, default=1000)
    arguments = parser.parse_args()
    rng = np.random.default_rng(0)
    results = {"images": arguments.images, "classes": arguments.classes, "samples": arguments.samples}
    for name, items in (("about_3_views_per_item", arguments.images // 3), ("one_item_per_image", 10**9)):
        results[name] = _measure(
            _scored(rng, arguments.images, arguments.classes, items), arguments.classes, arguments.samples
        )
    print(json.dumps(results, indent=2))
    write_results("bootstrap.json", results)


if __name__ == "__main__":
    main()
