"""Benchmark: the near-duplicate audit (hashing + multi-index search + groups file) on a generated build.

    .venv/bin/python benchmarks/audit_benchmark.py [--images 100000] [--work-dir DIR]
    .venv/bin/python benchmarks/audit_benchmark.py --records DIR [DIR ...]  # existing builds (read only)
    .venv/bin/python benchmarks/audit_benchmark.py --hashes FILE.npz  # the search alone, on saved hashes

A generated sample of about `--images` images (`abo_tf.sample`, all images of every listing) is built once
(`--work-dir` keeps both between runs), or `--records` names a build. Then, in a child process,
`near_duplicates.hash_records` (worker processes on every core), `near_duplicate_forest` and the groups file
are timed, while the summed RSS of the child and its workers is sampled (abo_tf.testing.measure); the child
also counts its and its workers' CPU seconds. The bare rate is `near_duplicates.signature` in one process
on the same records' images, already in memory; times the cores it is what a perfect fan-out would reach,
and the ratio says how much reading, parsing and the worker queue cost. On a shared machine the wall-clock
ratio moves with the load, so the CPU seconds an image of both are compared too (`cpu_ratio_to_bare`).
After, timed apart: the candidate pairs of the searches on a quarter, half and all of the images and their CPU
seconds (how the search's work grows). Label issues are not timed here: their cost is the feature extraction's
(benchmarks/baselines_benchmark.py) plus a k-fold logistic regression.
With `--hashes` (the columns of a `HashedImages` saved by `np.savez`, e.g. of a build too large to hash again
in one session), only the search and the groups file are timed and measured, and the growth is not; the run is
added to the file's runs that measured hashing.
Prints a Markdown table and writes benchmarks/results/audit.json.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
from shared import results_path, write_results

IMAGES_PER_LISTING = 2.7  # the sample generator's average, as in build_records_benchmark.py

BARE_IMAGES = 5000


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
    split = next(iter(manifest["splits"]))  # a slice of a build may hold one split only
    for serialized in shards.iter_framed_records(shards.shard_paths(records_dir, manifest, split)[0]):
        encoded.append(shards.parse_record(serialized)[schema.IMAGE])
        if len(encoded) == BARE_IMAGES:
            break
    near_duplicates._single_threaded_worker()
    started, cpu_started = time.perf_counter(), time.process_time()
    for data in encoded:
        near_duplicates.signature(data)
    return len(encoded) / (time.perf_counter() - started), (time.process_time() - cpu_started) / len(encoded)


def _cpu_seconds():
    """CPU seconds (user + system) of this process and of its finished workers."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def candidate_growth(hashed):
    """Candidate pairs of all three searches (each hash's `nearest` neighbours), those each image's budget keeps
    (`DEFAULT_MAX_CANDIDATES`, before any is confirmed) and their CPU seconds on the first quarter, half and all of
    the images: how the search's work grows with the build (timed apart)."""
    from abo_tf.auditing import near_duplicates

    growth = {}
    for count in (len(hashed.hashes) // 4, len(hashed.hashes) // 2, len(hashed.hashes)):
        sliced = hashed._replace(
            **{name: column[:count] for name, column in hashed._asdict().items() if column is not None}
        )
        callbacks = near_duplicates.DEFAULT_NEAREST, None, None, os.cpu_count() or 1, lambda images: None
        started = time.process_time()
        blocks = near_duplicates._candidate_pairs(
            sliced, np.arange(count), near_duplicates.DEFAULT_HASH_DISTANCE, callbacks
        )
        found, pairs = near_duplicates._Candidates(count, near_duplicates.DEFAULT_MAX_CANDIDATES), 0
        for first, second, kind, distance in blocks:
            found.add(first, second, kind, distance)
            pairs += len(first)
        _, kept, left_out = found.confirmed_blocks()
        seconds = time.process_time() - started
        growth[str(count)] = {"pairs": pairs, "kept": kept, "left_out": left_out, "cpu_seconds": seconds}
    return growth


def audit_near_duplicates(records_dir, output, growth):
    """The timed part, run in a child process: prints a JSON line of its figures (`growth` "1": and the
    candidates' growth, timed apart)."""
    from abo_tf.auditing import near_duplicates

    # the mapped columns in the work dir, as the audit keeps them in its cache dir
    with tempfile.TemporaryDirectory(prefix="near-duplicates-", dir=os.path.dirname(output) or ".") as columns:
        started, cpu_started = time.perf_counter(), _cpu_seconds()
        hashed = near_duplicates.hash_records(records_dir, progress=True, columns_dir=columns)
        hashing = {"hash_seconds": time.perf_counter() - started, "hash_cpu_seconds": _cpu_seconds() - cpu_started}
        figures = {**_searched(hashed, output), **hashing}
        figures["seconds"] = figures["search_seconds"] + hashing["hash_seconds"]
        if growth == "1":
            figures["candidates_by_images"] = candidate_growth(hashed)
    print(json.dumps(figures))


def search_saved_hashes(path, output):
    """The timed part of `--hashes`, in a child process: the search on saved columns; prints a JSON line."""
    from abo_tf.auditing import near_duplicates

    with np.load(path) as saved:
        hashed = near_duplicates.HashedImages(**{name: saved[name] for name in saved.files})
    figures = _searched(hashed, output)
    print(json.dumps({**figures, "hashes": os.path.abspath(path), "seconds": figures["search_seconds"]}))


def _searched(hashed, output):
    """{figure: value} of `near_duplicate_forest` and the groups file on `hashed`, timed here."""
    from abo_tf.auditing import audit, near_duplicates

    started, cpu_started = time.perf_counter(), _cpu_seconds()
    forest = near_duplicates.near_duplicate_forest(hashed, progress=True)
    groups = audit._groups_table(hashed, forest.groups())
    groups.to_csv(output, index=False)
    signals, counts = np.unique(forest.edges.signal, return_counts=True)
    return {
        "images": len(hashed.hashes),
        "search_seconds": time.perf_counter() - started,
        "search_cpu_seconds": _cpu_seconds() - cpu_started,
        "edges_per_signal": dict(zip(signals.tolist(), counts.tolist())),
        "nearest": near_duplicates.DEFAULT_NEAREST,
        "unchecked_local_pairs": forest.unchecked_local_pairs,
        "left_out_bucket_pairs": forest.left_out_bucket_pairs,
        "max_candidates": near_duplicates.DEFAULT_MAX_CANDIDATES,
        "left_out_candidate_pairs": forest.left_out_candidate_pairs,
        "groups": int(groups.group.nunique()),
        "grouped_images": len(groups),
        "crowded_images": forest.crowded_images,
    }


def _measured_child(mode, source, output, growth=True):
    """(the child's JSON figures with its peak summed RSS MB, the cores and the load average before and after)."""
    from abo_tf.testing import measure as measuring

    command = [sys.executable, os.path.abspath(__file__), mode, source, output, str(int(growth))]
    load_before = os.getloadavg()
    code, stdout, stderr, peak = measuring.run_measured(command, timeout=3600)
    if code:
        raise RuntimeError(f"the audit child failed: {stderr[-2000:]}")
    timed = json.loads(stdout.strip().splitlines()[-1])
    loads = {"load_average_before": list(load_before), "load_average_after": list(os.getloadavg())}
    return {**timed, **loads, "peak_rss_mb": peak / 2**20, "cores": os.cpu_count() or 1}


def measure(records_dir, truth, output, growth=True):
    """The figures of one build: the child's timings, its peak summed RSS, the bare rate, planted pairs joined."""
    timed = _measured_child("--child", records_dir, output, growth)
    cores = timed["cores"]
    bare, bare_cpu = bare_rate(records_dir)
    pipeline_rate = timed["images"] / timed["hash_seconds"]
    row = {
        **timed,
        "records": os.path.abspath(records_dir),
        "hash_images_per_second": pipeline_rate,
        "bare_images_per_second_one_core": bare,
        "ratio_to_bare_on_all_cores": pipeline_rate / (bare * cores),
        "bare_cpu_seconds_per_image": bare_cpu,
        "cpu_ratio_to_bare": bare_cpu * timed["images"] / timed["hash_cpu_seconds"],
    }
    if truth is not None:
        import pandas as pd

        planted = {frozenset((pair["image_id"], pair["duplicate_id"])) for pair in truth["near_duplicates"]}
        table = pd.read_csv(output)
        group_of = dict(zip(table.image_id, table.group))
        found = {pair for pair in planted if len({group_of.get(image_id, image_id) for image_id in pair}) == 1}
        row.update(planted_pairs=len(planted), planted_found=len(found))  # found: both images in one group
    return row


def _runs_with_hashing():
    """The runs of benchmarks/results/audit.json that measured hashing too: a --hashes run is added to them."""
    path = results_path("audit.json")
    if not os.path.isfile(path):
        return []
    with open(path) as handle:
        return [run for run in json.load(handle)["runs"] if "hash_seconds" in run]


def main():
    if sys.argv[1:2] == ["--child"]:
        return audit_near_duplicates(*sys.argv[2:5])
    if sys.argv[1:2] == ["--saved-child"]:
        return search_saved_hashes(*sys.argv[2:4])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, nargs="+", default=[100_000])
    parser.add_argument("--work-dir", default=None, help="keeps generated data between runs if given")
    parser.add_argument("--records", nargs="+", default=None, help="existing builds to audit instead (read only)")
    parser.add_argument("--hashes", default=None, help="saved HashedImages columns (.npz): the search alone")
    parser.add_argument("--append", action="store_true", help="keep the results file's earlier runs (--records)")
    parser.add_argument(
        "--no-growth", action="store_true", help="skip the candidates' growth on a quarter and a half (a full build)"
    )
    args = parser.parse_args()
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="audit-benchmark-")
    os.makedirs(work_dir, exist_ok=True)  # --records writes its groups file there too
    if args.hashes:
        row = _measured_child("--saved-child", args.hashes, os.path.join(work_dir, "near_duplicate_groups.csv"))
        print(json.dumps({key: value for key, value in row.items() if key != "edges_per_signal"}))
        return write_results("audit.json", {"runs": [*_runs_with_hashing(), row]})
    if args.records:
        output = os.path.join(work_dir, "near_duplicate_groups.csv")
        rows = [measure(records, None, output, not args.no_growth) for records in args.records]
    else:
        rows = []
        for num_images in args.images:
            records_dir, truth = _prepare(work_dir, num_images)
            rows.append(measure(records_dir, truth, os.path.join(work_dir, f"near_duplicate_groups-{num_images}.csv")))
    print("| images | hashing img/s | bare img/s x cores | ratio | search s | total s | peak RSS MB | planted joined |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['images']} | {row['hash_images_per_second']:.0f} | "
            f"{row['bare_images_per_second_one_core']:.0f} x {row['cores']} | "
            f"{row['ratio_to_bare_on_all_cores']:.2f} | "
            f"{row['search_seconds']:.1f} | {row['seconds']:.1f} | {row['peak_rss_mb']:.0f} | "
            f"{row.get('planted_found', '-')} of {row.get('planted_pairs', '-')} "
            f"({row['groups']} groups, {row['grouped_images']} images) |"
        )
    write_results("audit.json", {"runs": [*(_runs_with_hashing() if args.append else []), *rows]})


if __name__ == "__main__":
    main()
