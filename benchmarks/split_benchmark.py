"""Benchmark: what the class-aware split changes at ABO size, against a checkout of the code before it.

    .venv/bin/python benchmarks/split_benchmark.py --before /tmp/split_before [--images 400000] [--work-dir DIR]

The generator draws 16 product types; ABO has 576, hundreds of them under ten listings (docs/abo-format.md).
So each archive is measured twice: as generated, and with its listings' types re-drawn ABO-like (the top
type's listings keep it, about 52%; every other item gets one of 575 types by a Zipf law of exponent 1.5, a
hash of its item id: 554 types drawn at 400k images, 363 of them under 10 listings; an item listed under
two types keeps a conflict). The images tar is shared; the split does not look at pixels.

Builds each archive (`--image-selection all`, every other option at its default) with the code
in `--before` (e.g. `git archive bbac9df | tar -x -C /tmp/split_before`) and with this repository, each under
`/usr/bin/time -v` (peak RSS is the largest single process's, as `time` reports it), and reads each manifest:
kept classes without a validation or test image, the largest deviation of a class's split fractions of
images from `--split`, the seconds spent grouping and splitting (timed inside the build: wall clock, and the
process's CPU time, which a loaded machine disturbs less), and the build time.
Prints a Markdown table and writes benchmarks/results/split.json. The archive is generated once into the
work folder and reused. About 14 minutes on the shared 2 cores at 400k images (generation: 25 more).
"""

import argparse
import bisect
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile

from shared import REPO, write_results

from abo_tf.records import split as split_lib  # noqa: E402  (after the path set-up above)

IMAGES_PER_LISTING = 2.7  # the sample generator's average
ABO_TYPES, ZIPF_EXPONENT, TOP_TYPE = 576, 1.5, "CELLULAR_PHONE_CASE"
LARGE_CLASS = 100  # images: where a split's share can come close to its fraction whatever the group sizes
# Run in the build's process: times the split functions of whichever version is imported, then runs the CLI.
_TIMED_BUILD = """
import json, sys, time
from abo_tf import build_records
from abo_tf.records import build
seconds = {}
def timed(name, function):
    def wrapper(*args, **kwargs):
        start, cpu = time.perf_counter(), time.process_time()
        try:
            return function(*args, **kwargs)
        finally:
            seconds["wall"] = seconds.get("wall", 0.0) + time.perf_counter() - start
            seconds["cpu"] = seconds.get("cpu", 0.0) + time.process_time() - cpu
    return wrapper
for name in ("_group_kept", "_apply_group_floors", "_plan_splits"):
    if hasattr(build, name):
        setattr(build, name, timed(name, getattr(build, name)))
code = build_records.main(sys.argv[1:])
print("SPLIT_SECONDS " + json.dumps(seconds))
sys.exit(code)
"""


def _generate(data_dir, num_images):
    if not os.path.isfile(os.path.join(data_dir, "abo-images-small.tar")):
        from abo_tf.testing import synthetic_abo as sample

        print(f"generating ~{num_images} images into {data_dir} ...", flush=True)
        sample.generate_sample(data_dir, num_listings=round(num_images / IMAGES_PER_LISTING), seed=0, tar=True)


def _zipf_type(item_id, cumulative):
    """One of the 575 other types for an item: the same for every listing of the item."""
    position = int.from_bytes(hashlib.sha256(f"type:{item_id}".encode()).digest()[:8], "big") / 2**64
    return f"TYPE_{bisect.bisect_right(cumulative, position * cumulative[-1]):03d}"


def _relabel_line(line, cumulative):
    try:
        listing = json.loads(line)
    except ValueError:
        return line  # the generator's malformed lines stay malformed
    types = listing.get("product_type")
    if isinstance(types, list) and types and isinstance(types[0], dict) and types[0].get("value") != TOP_TYPE:
        listing["product_type"] = [{"value": _zipf_type(listing.get("item_id"), cumulative)}]
    return json.dumps(listing).encode() + b"\n"


def abo_like(data_dir, target_dir):
    """`data_dir`'s archive with ABO's 576 types (see the module's docstring) in `target_dir`; reused if there."""
    listings = os.path.join(target_dir, "abo-listings.tar")
    if os.path.isfile(listings):
        return target_dir
    os.makedirs(target_dir, exist_ok=True)
    weights = [1 / rank**ZIPF_EXPONENT for rank in range(1, ABO_TYPES)]
    cumulative = [sum(weights[: index + 1]) for index in range(len(weights))]
    with (
        tarfile.open(os.path.join(data_dir, "abo-listings.tar")) as source,
        tarfile.open(listings + ".tmp", "w") as out,
    ):
        for member in source:
            data = source.extractfile(member).read()
            if member.name.endswith(".json.gz"):
                lines = gzip.decompress(data).splitlines(keepends=True)
                data = gzip.compress(b"".join(_relabel_line(line, cumulative) for line in lines), mtime=0)
            member.size = len(data)
            out.addfile(member, io.BytesIO(data))
    os.replace(listings + ".tmp", listings)
    os.symlink(os.path.join(data_dir, "abo-images-small.tar"), os.path.join(target_dir, "abo-images-small.tar"))
    return target_dir


def timed_build(code_dir, data_dir, output):
    """Builds with the abo_tf of `code_dir` under /usr/bin/time -v; (manifest, wall s, peak RSS MB, split s)."""
    shutil.rmtree(output, ignore_errors=True)
    command = ["/usr/bin/time", "-v", sys.executable, "-c", _TIMED_BUILD, "--no-progress", "--image-selection", "all"]
    command += ["--listings", os.path.join(data_dir, "abo-listings.tar")]
    command += ["--images", os.path.join(data_dir, "abo-images-small.tar"), "--output", output]
    environment = dict(os.environ, PYTHONPATH=code_dir, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run(command, cwd=code_dir, env=environment, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"build with {code_dir} failed: {done.stderr[-2000:]}")
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", done.stderr).group(1)
    split_seconds = json.loads(done.stdout.split("SPLIT_SECONDS ", 1)[1].splitlines()[0])
    with open(os.path.join(output, "manifest.json"), encoding="utf-8") as handle:
        manifest = json.load(handle)
    return manifest, _seconds(wall), peak_kb / 1024, split_seconds


def _seconds(clock):
    seconds = 0.0
    for part in clock.split(":"):
        seconds = seconds * 60 + float(part)
    return seconds


def coverage(manifest):
    """Kept classes missing from each split, and how far each class's split shares of images stray from --split."""
    fractions = manifest["options"]["split_fractions"]
    per_split = {name: manifest["splits"].get(name, {}).get("per_class", {}) for name in split_lib.SPLITS}
    deviations = {}
    for name in manifest["classes"]:
        counts = [per_split[part].get(name, 0) for part in split_lib.SPLITS]
        deviations[name] = (sum(counts), max(abs(count / sum(counts) - f) for count, f in zip(counts, fractions)))
    large = [deviation for total, deviation in deviations.values() if total >= LARGE_CLASS]
    return {
        "classes": len(manifest["classes"]),
        "images_kept": manifest["images"]["kept"],
        "images_dropped_rare": {
            reason: count for reason, count in manifest["images"]["dropped"].items() if reason.startswith("rare_class")
        },
        "classes_missing_from": {
            part: sum(not per_split[part].get(name) for name in manifest["classes"]) for part in split_lib.SPLITS
        },
        "largest_share_deviation": max(deviation for _, deviation in deviations.values()),
        f"largest_share_deviation_classes_of_{LARGE_CLASS}_images": max(large, default=None),
        f"classes_of_{LARGE_CLASS}_images": len(large),
    }


def measure(label, code_dir, data_dir, work_dir):
    output = os.path.join(work_dir, f"out_{label}")
    manifest, wall, peak_mb, split_seconds = timed_build(code_dir, data_dir, output)
    row = coverage(manifest) | {"build_seconds": wall, "peak_rss_mb": peak_mb}
    row |= {"split_seconds": split_seconds["wall"], "split_cpu_seconds": split_seconds["cpu"]}
    row["load_after"] = _load()
    print(f"  {label}: {json.dumps(row)}", flush=True)
    shutil.rmtree(output)
    return row


def _load():
    with open("/proc/loadavg", encoding="utf-8") as handle:
        return float(handle.read().split()[0])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="a checkout of the code before the class-aware split")
    parser.add_argument("--images", type=int, default=400000)
    parser.add_argument("--work-dir", default=None, help="keeps the generated archive between runs if given")
    args = parser.parse_args()
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="abo_split_bench_")
    data_dir = os.path.join(work_dir, "abo")
    _generate(data_dir, args.images)
    archives = {"generated_16_types": data_dir, "abo_like_576_types": abo_like(data_dir, data_dir + "_576")}
    results = {"cpu_count": os.cpu_count(), "images_asked": args.images, "load_before": _load()}
    for archive, path in archives.items():
        results[archive] = {
            label: measure(f"{archive}_{label}", code_dir, path, work_dir)
            for label, code_dir in (("before", os.path.abspath(args.before)), ("after", REPO))
        }
    print(
        "\n| archive | code | classes | without validation / test image | largest share deviation "
        f"(all / >= {LARGE_CLASS} images) | split (s, CPU s) | build (s) | peak RSS (MB) |\n" + "|---" * 8 + "|"
    )
    for archive in archives:
        for label, row in results[archive].items():
            large = row[f"largest_share_deviation_classes_of_{LARGE_CLASS}_images"]
            print(
                f"| {archive} | {label} | {row['classes']} | {row['classes_missing_from']['validation']} / "
                f"{row['classes_missing_from']['test']} | {row['largest_share_deviation']:.3f} / {large:.3f} "
                f"| {row['split_seconds']:.1f}, {row['split_cpu_seconds']:.1f} | {row['build_seconds']:.0f} "
                f"| {row['peak_rss_mb']:.0f} |"
            )
    write_results("split.json", results)


if __name__ == "__main__":
    main()
