"""Benchmark: the near-duplicate audit (hashing + multi-index search + groups file) on a generated build.

    .venv/bin/python benchmarks/audit_benchmark.py [--images 100000] [--work-dir DIR]

A generated sample of about `--images` images (`abo_tf.sample`, all images of every listing) is built once
(`--work-dir` keeps both between runs). Then, in a child process, `near_duplicates.hash_records` (worker
processes on every core), `near_duplicate_forest` and the groups file are timed, while the summed RSS of the
child and its workers is sampled every 20 ms. The bare rate is `near_duplicates.signature` in one process
on the same records' images, already in memory; times the cores it is what a perfect fan-out would reach,
and the ratio says how much reading, parsing and the worker queue cost. Label issues are not timed here:
their cost is the feature extraction's (benchmarks/baselines_benchmark.py) plus a k-fold logistic regression.
Prints a Markdown table and writes benchmarks/results/audit.json.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from shared import REPO, write_results

IMAGES_PER_LISTING = 2.7  # the sample generator's average, as in build_records_benchmark.py

BARE_IMAGES = 5000


def peak_memory(command):
    """Peak summed RSS (bytes) of `command` and its worker processes (build_records_benchmark's sampling)."""
    from benchmarks.build_records_benchmark import peak_memory as sampled_peak

    return sampled_peak(command)


def _prepare(work_dir, num_images):
    """(records folder, truth) of a generated sample of about `num_images` images, made once."""
    from abo_tf.records import build as records_build
    from abo_tf.testing import synthetic_abo as sample

    data_dir, records_dir = os.path.join(work_dir, f"abo-{num_images}"), os.path.join(work_dir, f"records-{num_images}")
    truth_path = os.path.join(work_dir, f"truth-{num_images}.json")
    if not os.path.isfile(truth_path):
        truth = sample.generate_sample(data_dir, num_listings=round(num_images / IMAGES_PER_LISTING), seed=0, tar=True)
        with open(truth_path, "w") as handle:
            json.dump(truth, handle)
    if not os.path.isfile(os.path.join(records_dir, "manifest.json")):
        records_build.build(
            records_build.BuildOptions(
                listings=os.path.join(data_dir, "abo-listings.tar"),
                images=os.path.join(data_dir, "abo-images-small.tar"),
                output=records_dir,
                image_selection="all",
                min_examples_per_class=1,
                progress=False,
            )
        )
    with open(truth_path) as handle:
        return records_dir, json.load(handle)


def bare_rate(records_dir):
    """Images/s of `signature` alone in this process, on the first BARE_IMAGES images, read beforehand."""
    from abo_tf.auditing import near_duplicates
    from abo_tf.records import schema, shards

    manifest, encoded = shards.read_manifest(records_dir), []
    for serialized in shards.iter_framed_records(shards.shard_paths(records_dir, manifest, "train")[0]):
        encoded.append(shards.parse_record(serialized)[schema.IMAGE])
        if len(encoded) == BARE_IMAGES:
            break
    near_duplicates._single_threaded_worker()
    started = time.perf_counter()
    for data in encoded:
        near_duplicates.signature(data)
    return len(encoded) / (time.perf_counter() - started)


def audit_near_duplicates(records_dir, output):
    """The timed part, run in a child process: prints a JSON line of its figures."""
    from abo_tf.auditing import audit, near_duplicates

    started = time.perf_counter()
    hashed = near_duplicates.hash_records(records_dir, progress=False)
    hashed_at = time.perf_counter()
    group_of = near_duplicates.near_duplicate_forest(hashed).groups()
    groups = audit._groups_table(hashed, group_of)
    groups.to_csv(output, index=False)
    done = time.perf_counter()
    print(
        json.dumps(
            {
                "images": len(hashed.hashes),
                "hash_seconds": hashed_at - started,
                "search_seconds": done - hashed_at,
                "seconds": done - started,
                "groups": int(groups.group.nunique()),
                "grouped_images": len(groups),
            }
        )
    )


def measure(num_images, work_dir):
    records_dir, truth = _prepare(work_dir, num_images)
    output = os.path.join(work_dir, f"near_duplicate_groups-{num_images}.csv")
    command = [sys.executable, os.path.abspath(__file__), "--child", records_dir, output]
    timed = json.loads(subprocess.run(command, check=True, capture_output=True, text=True, cwd=REPO).stdout)
    peak = peak_memory(command)
    cores = os.cpu_count() or 1
    bare = bare_rate(records_dir)
    pipeline_rate = timed["images"] / timed["hash_seconds"]
    planted = {frozenset((pair["image_id"], pair["duplicate_id"])) for pair in truth["near_duplicates"]}
    import pandas as pd

    table = pd.read_csv(output)
    group_of = dict(zip(table.image_id, table.group))
    found = {pair for pair in planted if len({group_of.get(image_id, image_id) for image_id in pair}) == 1}
    return {
        **timed,
        "cores": cores,
        "peak_rss_mb": peak / 2**20,
        "hash_images_per_second": pipeline_rate,
        "bare_images_per_second_one_core": bare,
        "ratio_to_bare_on_all_cores": pipeline_rate / (bare * cores),
        "planted_pairs": len(planted),  # found: both images in one group
        "planted_found": len(found),
    }


def main():
    if sys.argv[1:2] == ["--child"]:
        return audit_near_duplicates(*sys.argv[2:4])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, nargs="+", default=[100_000])
    parser.add_argument("--work-dir", default=None, help="keeps generated data between runs if given")
    args = parser.parse_args()
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="audit-benchmark-")
    rows = [measure(num_images, work_dir) for num_images in args.images]
    print("| images | hashing img/s | bare img/s x cores | ratio | search s | total s | peak RSS MB | planted joined |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['images']} | {row['hash_images_per_second']:.0f} | "
            f"{row['bare_images_per_second_one_core']:.0f} x {row['cores']} | "
            f"{row['ratio_to_bare_on_all_cores']:.2f} | "
            f"{row['search_seconds']:.1f} | {row['seconds']:.1f} | {row['peak_rss_mb']:.0f} | "
            f"{row['planted_found']} of {row['planted_pairs']} "
            f"({row['groups']} groups, {row['grouped_images']} images) |"
        )
    write_results("audit.json", rows)


if __name__ == "__main__":
    main()
