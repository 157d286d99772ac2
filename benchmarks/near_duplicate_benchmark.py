"""Benchmark: what the near-duplicate audit finds, per edit family and strength, on real photographs.

    .venv/bin/python benchmarks/near_duplicate_benchmark.py [--catalog-listings 400] [--seed 0] [--blind-catalog 0]

Sources (issue 18): the photographs scikit-image, scikit-learn and matplotlib ship, cut into distinct shots
(windows that barely overlap, at three scales: same scene, texture and colours, different pictures: the hard
negatives; no window mostly inside another of any scale), two photographs the defaults were not chosen on
(`image_edits.HELD_OUT_PHOTOS`), and the product images of a generated catalog (`abo_tf.sample`: one product on
white, the other hard case). Every source is kept as a JPEG and copied through every edit family of
`abo_tf.testing.image_edits` at graded strengths, and through pairs of edits. The audit's own rule
(`near_duplicates.near_duplicate_forest` over `near_duplicates.signature`, defaults) groups them all; a
planted pair is found when original and copy share a group, and a group holding two distinct sources is an
unplanted join. A sweep over the two thresholds gives the precision-recall trade-off of the rule.
Prints Markdown tables and writes benchmarks/results/near_duplicates.json.
"""

import argparse
import os
import tempfile
import time

import numpy as np
from shared import write_results

from abo_tf.auditing import near_duplicates
from abo_tf.testing import blind_catalog, image_edits

# (hash distance, thumbnail correlation, ORB inliers; 0: no keypoint check) around the defaults (--sweep).
SWEEP = ((8, 0.985, 0), (8, 0.985, 8), (8, 0.985, 12), (10, 0.985, 10))
CATALOG_COPIES_PER_CASE = 40  # of about 1,000 catalog images: 2,000 copies


def catalog_shots(num_listings, seed):
    """{name: BGR pixels} of the distinct product images of a generated catalog (planted copies left out)."""
    import cv2
    import pandas as pd

    from abo_tf.testing import synthetic_abo

    with tempfile.TemporaryDirectory() as folder:
        truth = synthetic_abo.generate_sample(folder, num_listings=num_listings, seed=seed, max_side=256)
        left_out = {entry["duplicate_id"] for entry in truth["near_duplicates"]} | set(truth["boilerplate_images"])
        left_out |= {image_id for ids in truth["bad_images"].values() for image_id in ids}
        metadata = pd.read_csv(os.path.join(folder, "images", "metadata", "images.csv.gz"))
        shots = {}
        for image_id, path in zip(metadata.image_id, metadata.path):
            file = os.path.join(folder, "images", "small", path)
            pixels = cv2.imread(file, cv2.IMREAD_COLOR) if image_id not in left_out and os.path.isfile(file) else None
            if pixels is not None:
                shots[f"catalog-{image_id}"] = pixels
    return shots


def hashed_set(encoded):
    """A `HashedImages` of encoded images (ids are their positions), hashed in worker processes."""
    from abo_tf.common import parallel

    with parallel.process_pool(os.cpu_count() or 1) as pool:
        signatures = near_duplicates.stack_signatures(pool.map(near_duplicates.signature, encoded, chunksize=64))
    return near_duplicates.hashed_images(signatures)


def evaluate(hashed, shot_of, truth, max_distance, min_similarity, min_inliers, family_of=None):
    """(recall per case, unplanted joins, {signal: [edges kept, edges joining two distinct shots]}, unplanted joins
    of unrelated products) of the audit's rule at these thresholds: which signal finds the copies, and which one
    makes the false pairs. `family_of` ({shot: product}, the blind catalog's): joins of two shots of one product
    (another colour, angle or detail) are not counted in the last (None without it)."""
    forest = near_duplicates.near_duplicate_forest(hashed, max_distance, min_similarity, min_inliers)
    recall, unplanted = image_edits.score_groups(forest.groups(), shot_of, truth)
    unrelated = None
    if family_of is not None:
        unrelated = image_edits.score_groups(forest.groups(), [family_of[shot] for shot in shot_of], truth)[1]
    shots = np.asarray(shot_of)
    false = shots[forest.edges.first] != shots[forest.edges.second]
    signals = {
        str(name): [int((forest.edges.signal == name).sum()), int((false & (forest.edges.signal == name)).sum())]
        for name in np.unique(forest.edges.signal)
    }
    return recall, unplanted, signals, unrelated


def _moderate_summary(recall):
    moderate = {case: value for case, value in recall.items() if image_edits.is_moderate(*case)}
    families = {}
    for (family, _), value in moderate.items():
        families.setdefault(family, []).append(value)
    return {family: float(min(values)) for family, values in families.items()}


def _sweep_row(hashed, shot_of, truth, distance, similarity, inliers):
    swept, unplanted, *_ = evaluate(hashed, shot_of, truth, distance, similarity, inliers)
    moderate = [value for case, value in swept.items() if image_edits.is_moderate(*case)]
    return {
        "hash_distance": distance,
        "pixel_similarity": similarity,
        "min_inliers": inliers,
        "moderate_recall": float(np.mean(moderate)),
        "worst_moderate_family_recall": min(_moderate_summary(swept).values()),
        "unplanted_per_10k": 1e4 * unplanted / len(shot_of),
    }


def run_source(name, shots, seed, copies_per_case=None, sweep=False, family_of=None):
    """The results of one source set (real photographs or catalog images; `family_of`: see `evaluate`)."""
    encoded, shot_of, truth = image_edits.planted_set(shots, image_edits.edit_cases(), seed, copies_per_case)
    started = time.perf_counter()
    hashed = hashed_set(encoded)
    hashing_seconds = time.perf_counter() - started
    defaults = (
        near_duplicates.DEFAULT_HASH_DISTANCE,
        near_duplicates.DEFAULT_PIXEL_SIMILARITY,
        near_duplicates.DEFAULT_MIN_INLIERS,
    )
    started = time.perf_counter()
    recall, unplanted, signals, unrelated = evaluate(hashed, shot_of, truth, *defaults, family_of)
    search_seconds = time.perf_counter() - started
    return {
        "source": name,
        "shots": len(shots),
        "images": len(encoded),
        "hashing_seconds": hashing_seconds,
        "search_seconds": search_seconds,
        "recall": [
            {
                "family": family,
                "strength": strength,
                "recall": value,
                "moderate": image_edits.is_moderate(family, strength),
            }
            for (family, strength), value in recall.items()
        ],
        "worst_moderate_recall_per_family": _moderate_summary(recall),
        "unplanted_joins": unplanted,
        "unplanted_per_10k": 1e4 * unplanted / len(encoded),
        # joins of unrelated products only (the blind catalog: its variants of one product left out), else None
        "unrelated_per_10k": None if unrelated is None else 1e4 * unrelated / len(encoded),
        "edges_per_signal": signals,  # [kept, joining distinct shots]
        "sweep": [_sweep_row(hashed, shot_of, truth, *row) for row in SWEEP] if sweep else [],
    }


def _print(result):
    from abo_tf.reports import markdown

    print(
        f"\n{result['source']}: {result['shots']} shots, {result['images']} images, "
        f"{result['unplanted_per_10k']:.2f} unplanted joins per 10k images"
    )
    rows = [
        (row["family"], row["strength"], f"{row['recall']:.2f}", "yes" if row["moderate"] else "")
        for row in result["recall"]
    ]
    print(markdown.table(rows, ["family", "strength", "recall", "moderate"]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--catalog-listings", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0, help="of the catalog and of the edits (1: the held-out check)")
    parser.add_argument("--sweep", action="store_true", help="also run the rule at the SWEEP thresholds")
    parser.add_argument("--output", default="near_duplicates.json", help="results file in benchmarks/results")
    parser.add_argument("--blind-catalog", type=int, default=0, help="shots of abo_tf.testing.blind_catalog (0: off)")
    arguments = parser.parse_args()
    if not 0 <= arguments.blind_catalog <= blind_catalog.MAX_SHOTS:  # before the other sources' minutes
        parser.error(
            f"--blind-catalog {arguments.blind_catalog}: give a number of shots from 0 (off) to "
            f"{blind_catalog.MAX_SHOTS}"
        )
    results = {
        "defaults": {
            "hash_distance": near_duplicates.DEFAULT_HASH_DISTANCE,
            "pixel_similarity": near_duplicates.DEFAULT_PIXEL_SIMILARITY,
            "min_inliers": near_duplicates.DEFAULT_MIN_INLIERS,
        },
        "seed": arguments.seed,
        "cores": os.cpu_count(),
        "load_average": os.getloadavg()[0],
        "sources": [],
    }
    sources = [
        ("real photographs", image_edits.distinct_shots(image_edits.real_photographs()), None, None),
        ("held-out photographs", image_edits.distinct_shots(image_edits.held_out_photographs()), None, None),
        (
            "generated catalog",
            catalog_shots(arguments.catalog_listings, arguments.seed),
            CATALOG_COPIES_PER_CASE,
            None,
        ),
    ]
    if arguments.blind_catalog:  # a generator written blind to the first: thresholds checked on images not tuned on
        shots, family_of = blind_catalog.catalog_shots(arguments.blind_catalog, arguments.seed, with_families=True)
        sources.append(("blind catalog", shots, CATALOG_COPIES_PER_CASE, family_of))
    for name, shots, copies, family_of in sources:
        result = run_source(name, shots, arguments.seed, copies, arguments.sweep, family_of)
        _print(result)
        results["sources"].append(result)
    results["load_average_end"] = os.getloadavg()[0]
    print(write_results(arguments.output, results))


if __name__ == "__main__":
    main()
