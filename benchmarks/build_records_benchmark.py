"""Benchmark: `build_records` in copy mode vs a minimal single-process tar -> TFRecord loop, and `--verify`.

    .venv/bin/python benchmarks/build_records_benchmark.py [--images 80000 400000] [--repeats 3] [--work-dir DIR]

Both read the same generated archive (all images of every listing, `--image-selection all`) with its listings'
types as generated: 576, ABO's count, so the build keeps about 575 classes as on ABO (the types are not
re-drawn: `split_benchmark.abo_like`, made for the generator's 16 types, leaves the types written as plain
strings, a fifth, so a 576-type archive re-drawn had both name sets: 714 classes). Both are timed in-process,
one after the other in the same repeat, so process start-up is excluded (the build's own worker processes are
included) and the ratio compares like with like on a loaded machine. The build's stages are timed by wrapping
its functions: index (the images tar and images.csv.gz), prepare (listings, candidates, scan, labels, split,
plan), of which scan, then write and finish. `--verify` of the build's output is timed the same way, in the same
repeat. Peak memory is the largest summed RSS of the process and its workers, sampled every 20 ms while
`python -m abo_tf.build_records` (build, then `--verify`) runs, once per repeat. Every figure is the median of the
repeats; the load average before and after each repeat is recorded. Prints a Markdown table and writes (merging
by size) benchmarks/results/build_records.json. A work folder's `abo_<N>` archive is reused (it may be a link to
one generated elsewhere, e.g. by `python -m abo_tf.sample --types 576 --tar`), else generated at 576 types.
"""

import argparse
import collections
import json
import os
import resource
import shutil
import statistics
import sys
import tarfile
import tempfile
import time

from shared import REPO, results_path, write_results

from abo_tf.records import archive, shards  # noqa: E402  (after the path set-up above)
from abo_tf.records import build as records_build  # noqa: E402
from abo_tf.testing import measure as rss  # noqa: E402

IMAGES_PER_LISTING = 2.7  # the sample generator's average
ABO_TYPES = 576  # product types in ABO's listings: the generated archive has as many


def minimal_loop(images_tar, output_path):
    """The baseline: one process, tarfile iteration, tf.train.Example, tf.io.TFRecordWriter."""
    import tensorflow as tf  # main() imports it before any timing; not at the top, see main()

    count = 0
    with tarfile.open(images_tar) as tar, tf.io.TFRecordWriter(output_path) as writer:
        for member in tar:
            if member.isfile() and member.name.startswith("images/small/"):
                data = tar.extractfile(member).read()
                feature = {
                    "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[data])),
                    "image_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[member.name.encode()])),
                    "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[0])),
                }
                writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
                count += 1
    return count


def _options(data_dir, output):
    return records_build.BuildOptions(
        listings=os.path.join(data_dir, "abo-listings.tar"),
        images=os.path.join(data_dir, "abo-images-small.tar"),
        output=output,
        image_selection="all",
        min_examples_per_class=1,
        progress=False,
    )


def _time(function):
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def _cpu_seconds():
    """CPU seconds of this process and of its children that ended (the build's pool is joined when it returns)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def peak_memory(command):
    """Peak summed RSS (bytes) of a `python -m abo_tf.build_records` run and its workers."""
    code, _, _, peak = rss.run_measured(command, timeout=4 * 3600, cwd=REPO)  # 400k at load 30: over 10 min
    if code:
        raise RuntimeError(f"failed: {' '.join(command)}")
    return peak


def _build_and_verify_memory(data_dir, output):
    """Peak RSS (bytes) of a command-line build into `output` (emptied first), then of its `--verify`."""
    shutil.rmtree(output, ignore_errors=True)
    options = _options(data_dir, output)
    command = [sys.executable, "-m", "abo_tf.build_records", "--no-progress"]
    inputs = ["--listings", options.listings, "--images", options.images, "--output", output]
    build_memory = peak_memory(command + inputs + ["--image-selection", "all", "--min-examples-per-class", "1"])
    return build_memory, peak_memory(command + ["--verify", output])


# The build's stages: (name, module, function), all called in the build's own process.
STAGES = (
    ("index", archive, "open_images"),
    ("prepare", records_build, "_prepare"),
    ("scan", records_build, "_scan"),
    ("write", records_build, "_write_shards"),
    ("finish", records_build, "_make_manifest"),
)


def _timed_stages(seconds, cpu):
    """Wraps each stage's function to add its wall time to `seconds` and to `cpu[stage]` a Counter of the CPU
    seconds of this process ("parent") and of its worker processes ("workers"); returns a function undoing it."""
    originals = [(module, name, getattr(module, name)) for _, module, name in STAGES]
    for (stage, module, name), (_, _, function) in zip(STAGES, originals):

        def timed(*args, _function=function, _stage=stage, **kwargs):
            start, parent, workers = time.perf_counter(), time.process_time(), rss.descendants_cpu_seconds(os.getpid())
            try:
                return _function(*args, **kwargs)
            finally:
                seconds[_stage] += time.perf_counter() - start
                cpu[_stage]["parent"] += time.process_time() - parent
                cpu[_stage]["workers"] += rss.descendants_cpu_seconds(os.getpid()) - workers

        setattr(module, name, timed)
    return lambda: [setattr(module, name, function) for module, name, function in originals]


def _timed_build(options):
    """`(seconds, manifest, seconds per stage, CPU seconds of the process and its workers per stage)` of an
    in-process build."""
    stages, cpu = collections.Counter(), collections.defaultdict(collections.Counter)
    undo = _timed_stages(stages, cpu)
    try:
        seconds, manifest = _time(lambda: records_build.build(options))
    finally:
        undo()
    cpu = {stage: {who: round(value, 3) for who, value in cpu[stage].items()} for stage, _, _ in STAGES}
    return seconds, manifest, {stage: round(stages[stage], 3) for stage, _, _ in STAGES}, cpu


def _repeat(data_dir, work_dir, num_images, repeat):
    """One repeat: the baseline loop, the build and its verify, timed in-process; then the peak RSS of each."""
    images_tar = os.path.join(data_dir, "abo-images-small.tar")
    load_before = os.getloadavg()[0]
    cpu = _cpu_seconds()
    seconds, count = _time(lambda: minimal_loop(images_tar, os.path.join(work_dir, "baseline.tfrecord")))
    loop_cpu = _cpu_seconds() - cpu
    output = os.path.join(work_dir, f"out_{num_images}")
    shutil.rmtree(output, ignore_errors=True)  # a finished build would be reused, not timed
    cpu = _cpu_seconds()
    build_seconds, manifest, stages, stage_cpu = _timed_build(_options(data_dir, output))
    build_cpu = _cpu_seconds() - cpu
    verify_seconds, _ = _time(lambda: shards.verify_records(output, progress=False))
    build_memory, verify_memory = _build_and_verify_memory(data_dir, os.path.join(work_dir, f"mem_{num_images}"))
    row = {
        "images_in_tar": count,
        "images_written": manifest["images"]["kept"],
        "classes": len(manifest["classes"]),
        "baseline_images_per_second": count / seconds,
        "build_images_per_second": manifest["images"]["kept"] / build_seconds,
        "build_seconds": build_seconds,
        # CPU per image: the figure the machine's load does not change (the loop uses one core, the build two).
        "baseline_cpu_us_per_image": loop_cpu / count * 1e6,
        "build_cpu_us_per_image": build_cpu / manifest["images"]["kept"] * 1e6,
        "stage_seconds": stages,
        "stage_cpu_seconds": stage_cpu,
        "verify_seconds": verify_seconds,
        "verify_to_build": verify_seconds / build_seconds,
        "build_peak_rss_mb": build_memory / 2**20,
        "verify_peak_rss_mb": verify_memory / 2**20,
        "load_average": [load_before, os.getloadavg()[0]],
    }
    row["ratio"] = row["build_images_per_second"] / row["baseline_images_per_second"]
    print(
        f"  {num_images}: repeat {repeat}: baseline {row['baseline_images_per_second']:.0f} img/s, build "
        f"{row['build_images_per_second']:.0f} img/s ({build_seconds:.1f} s, {row['build_peak_rss_mb']:.0f} MB), "
        f"ratio {row['ratio']:.2f}, CPU/image {row['baseline_cpu_us_per_image']:.0f} / "
        f"{row['build_cpu_us_per_image']:.0f} us, verify {verify_seconds:.1f} s "
        f"({row['verify_peak_rss_mb']:.0f} MB), stages "
        f"{stages}, load {row['load_average']}",
        flush=True,
    )
    return row


def _median_row(rows):
    result = {
        key: statistics.median(row[key] for row in rows)
        for key in rows[0]
        if not isinstance(rows[0][key], (dict, list))
    }
    result["stage_seconds"] = {
        stage: statistics.median(row["stage_seconds"][stage] for row in rows) for stage in rows[0]["stage_seconds"]
    }
    result["stage_cpu_seconds"] = {
        stage: {who: statistics.median(row["stage_cpu_seconds"][stage][who] for row in rows) for who in cpu}
        for stage, cpu in rows[0]["stage_cpu_seconds"].items()
    }
    result["load_average"] = statistics.median(value for row in rows for value in row["load_average"])
    return result


def measure(num_images, repeats, work_dir):
    data_dir = os.path.join(work_dir, f"abo_{num_images}")
    if not os.path.isfile(os.path.join(data_dir, "abo-images-small.tar")):
        from abo_tf.testing import synthetic_abo as sample

        print(f"generating ~{num_images} images ...", flush=True)
        listings = round(num_images / IMAGES_PER_LISTING)
        sample.generate_sample(data_dir, num_listings=listings, seed=0, tar=True, num_types=ABO_TYPES)
    rows = [_repeat(data_dir, work_dir, num_images, repeat) for repeat in range(repeats)]
    result = _median_row(rows)  # the ratio is the median of the repeats' ratios, each measured in one repeat
    result.update(repeats=repeats, all_repeats=rows, machine=rss.machine())
    return result


def _earlier_results():
    """The results file's sizes measured by an earlier run (each size may be measured by its own run)."""
    try:
        with open(results_path("build_records.json"), encoding="utf-8") as handle:
            earlier = json.load(handle)
    except (OSError, ValueError):
        return {}
    return {key: value for key, value in earlier.items() if isinstance(value, dict) and "stage_seconds" in value}


def main():
    # Imported here, not at module level: the build's spawned workers re-import this script, and must not pay for
    # TensorFlow, nor for readme's scikit-learn (3 s of import at a worker's start: timed here, not in the CLI).
    # Imported before any timing.
    import readme
    import tensorflow  # noqa: F401

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, nargs="+", default=[80000, 400000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work-dir", default=None, help="keeps generated data between runs if given")
    args = parser.parse_args()
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="abo_bench_")
    measured = {str(num_images): measure(num_images, args.repeats, work_dir) for num_images in args.images}
    results = {**_earlier_results(), **measured, "cpu_count": os.cpu_count()}  # read now: another run may have written
    print("\n" + readme.render_build_speed(results))
    write_results("build_records.json", results)


if __name__ == "__main__":
    main()
