"""Benchmark: `build_records` in copy mode vs a minimal single-process tar -> TFRecord loop.

    .venv/bin/python benchmarks/build_records_benchmark.py [--images 20000 80000] [--repeats 3]

Both read the same generated `abo-images-small.tar` (all images of every listing,
`--image-selection all`); both are timed in-process, so process start-up is
excluded (the build's own worker processes are included). Peak memory is the
largest summed RSS of the build process and its workers, sampled every 20 ms
while `python -m abo_tf.build_records` runs. Prints a Markdown table and writes
benchmarks/results/build_records.json. About 10 minutes on 2 cores.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from abo_tf import build_records  # noqa: E402

IMAGES_PER_LISTING = 2.7  # the sample generator's average


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
    return build_records.BuildOptions(
        listings=os.path.join(data_dir, "abo-listings.tar"), images=os.path.join(data_dir, "abo-images-small.tar"),
        output=output, image_selection="all", min_examples_per_class=1, progress=False,
    )


def _time(function):
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def _tree_rss_bytes(pid):
    """Summed RSS of `pid` and its descendants, from /proc."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parent = int(handle.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        stack.extend(children.get(current, []))
        try:
            with open(f"/proc/{current}/statm") as handle:
                total += int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
    return total


def peak_memory(data_dir, output):
    """Peak summed RSS (bytes) of a `python -m abo_tf.build_records` run and its workers."""
    options = _options(data_dir, output)
    command = [sys.executable, "-m", "abo_tf.build_records", "--listings", options.listings, "--images", options.images,
               "--output", output, "--image-selection", "all", "--min-examples-per-class", "1", "--no-progress"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    peak = 0
    while process.poll() is None:
        peak = max(peak, _tree_rss_bytes(process.pid))
        time.sleep(0.02)
    if process.returncode:
        raise RuntimeError(f"build failed: {' '.join(command)}")
    return peak


def measure(num_images, repeats, work_dir):
    data_dir = os.path.join(work_dir, f"abo_{num_images}")
    if not os.path.isdir(data_dir):
        from abo_tf.testing import synthetic_abo as sample

        print(f"generating ~{num_images} images ...", flush=True)
        sample.generate_sample(data_dir, num_listings=round(num_images / IMAGES_PER_LISTING), seed=0, tar=True)
    baseline, ours = [], []
    for repeat in range(repeats):
        seconds, count = _time(lambda: minimal_loop(os.path.join(data_dir, "abo-images-small.tar"), os.path.join(work_dir, "baseline.tfrecord")))
        baseline.append(count / seconds)
        output = os.path.join(work_dir, f"out_{num_images}_{repeat}")
        shutil.rmtree(output, ignore_errors=True)  # a finished build would be reused, not timed
        seconds, manifest = _time(lambda: build_records.build(_options(data_dir, output)))
        ours.append(manifest["images"]["kept"] / seconds)
        print(f"  {num_images}: repeat {repeat}: baseline {baseline[-1]:.0f} img/s, build_records {ours[-1]:.0f} img/s", flush=True)
    shutil.rmtree(os.path.join(work_dir, f"mem_{num_images}"), ignore_errors=True)
    memory = peak_memory(data_dir, os.path.join(work_dir, f"mem_{num_images}"))
    return {
        "images_in_tar": count, "images_written": manifest["images"]["kept"],
        "baseline_images_per_second": statistics.median(baseline), "build_images_per_second": statistics.median(ours),
        "ratio": statistics.median(ours) / statistics.median(baseline), "peak_rss_mb": memory / 2**20,
        "repeats": repeats, "all_baseline": baseline, "all_build": ours,
    }


def main():
    # Imported here, not at module level: the build's spawned workers re-import
    # this script, and must not pay for TensorFlow. Imported before any timing.
    import tensorflow  # noqa: F401

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, nargs="+", default=[20000, 80000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work-dir", default=None, help="keeps generated data between runs if given")
    args = parser.parse_args()
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="abo_bench_")
    results = {"cpu_count": os.cpu_count()}
    for num_images in args.images:
        results[str(num_images)] = measure(num_images, args.repeats, work_dir)
    print("\n| images | minimal loop (img/s) | build_records (img/s) | ratio | peak RSS (MB) |\n|---|---|---|---|---|")
    for num_images in args.images:
        row = results[str(num_images)]
        print(f"| {row['images_written']} | {row['baseline_images_per_second']:.0f} | {row['build_images_per_second']:.0f} | {row['ratio']:.2f}x | {row['peak_rss_mb']:.0f} |")
    os.makedirs(os.path.join(REPO, "benchmarks", "results"), exist_ok=True)
    with open(os.path.join(REPO, "benchmarks", "results", "build_records.json"), "w") as handle:
        json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
