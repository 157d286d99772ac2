"""One data audit end to end: near-duplicates across splits, likely label errors, and the report folder.

The report folder (`--report`) gets:

    near_duplicates.csv   every near-duplicate pair: ids, splits, product types, hash bits apart, similarity
    label_issues.csv      likely label errors, least self-confident first: id, split, given and suggested type
    noise_rates.csv       per product type: audited examples, flagged, estimated noise rate
    near_duplicates.png   a gallery of example pairs across splits; label_issues.png the top flagged images
    summary.json          the figures of report.md, and the build the audit read (its manifest's SHA-256);
                          with --truth (a generated sample's), recall and precision on its planted label errors
    report.md             pairs per split pair, the share of test with a near-duplicate in train, top issues
    config.toml           the resolved options
"""

import dataclasses
import os
import time

import numpy as np
import pandas as pd

from abo_tf.auditing import label_issues, near_duplicates
from abo_tf.classical import extraction, feature_spec
from abo_tf.classical.feature_cache import DEFAULT_CACHE_DIR
from abo_tf.common import files, options, outputs
from abo_tf.common.errors import UserInputError
from abo_tf.records import schema, shards
from abo_tf.records.split import SPLITS
from abo_tf.reports import figures, markdown, metrics

PAIRS_FILE = "near_duplicates.csv"
ISSUES_FILE = "label_issues.csv"
NOISE_FILE = "noise_rates.csv"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.md"
PAIR_COLUMNS = (
    "image_id_a",
    "split_a",
    "product_type_a",
    "image_id_b",
    "split_b",
    "product_type_b",
    "hash_distance",
    "similarity",
    "signal",
)
SPLIT_PAIRS = (("train", "test"), ("train", "validation"), ("validation", "test"))
_WRITTEN = (
    PAIRS_FILE,
    ISSUES_FILE,
    NOISE_FILE,
    SUMMARY_FILE,
    REPORT_FILE,
    "near_duplicates.png",
    "label_issues.png",
    options.CONFIG_FILE,
)
_DUPLICATES, _LABELS, _REPORT = "near-duplicates", "label errors", "report"


@dataclasses.dataclass(frozen=True)
class AuditOptions(feature_spec.FeatureOptions):
    """`python -m abo_tf.audit`: the features (shared with abo_tf.features), the two audits, the report."""

    report: str = options.option(
        help="folder for report.md, the CSVs and the galleries", group=_REPORT, required=True, config=False
    )
    cache_dir: str = options.option(
        DEFAULT_CACHE_DIR,
        group="features",
        config=False,
        help="feature cache folder (abo_tf.features'; reused when it holds the features)",
    )
    hash_distance: int = options.option(
        near_duplicates.DEFAULT_HASH_DISTANCE,
        group=_DUPLICATES,
        minimum=0,
        maximum=32,
        help="largest perceptual-hash distance (bits of 64) of a pair",
    )
    pixel_similarity: float = options.option(
        near_duplicates.DEFAULT_PIXEL_SIMILARITY,
        group=_DUPLICATES,
        minimum=-1.0,
        maximum=1.0,
        help="smallest correlation of the 16 x 16 colour thumbnails of a hash pair that is kept",
    )
    embedding_similarity: float = options.option(
        0.97,
        group=_DUPLICATES,
        minimum=-1.0,
        maximum=1.0,
        help="with --features cnn or --run, also pair images whose embeddings' cosine similarity reaches this",
    )
    label_issues_max: int = options.option(500, group=_LABELS, minimum=1, help="likely label errors listed at most")
    folds: int = options.option(
        label_issues.DEFAULT_FOLDS,
        group=_LABELS,
        minimum=2,
        help="cross-validation folds of the out-of-sample probabilities",
    )
    truth: str = options.option(
        "",
        group=_LABELS,
        metavar="FILE.json",
        help="a generated sample's truth (python -m abo_tf.sample --truth): the report scores the label audit "
        "on the label errors planted in it",
    )
    gallery_size: int = options.option(8, group=_REPORT, minimum=0, help="pairs and label issues shown in each gallery")
    progress: bool = options.option(True, group=options.CONSOLE_GROUP, config=False, help="progress bars")

    def __post_init__(self):
        options.validate(self)


# --- near-duplicates -------------------------------------------------------------


def _pairs_table(hashed, pairs, signal):
    first, second = pairs.first, pairs.second
    return pd.DataFrame(
        {
            "image_id_a": hashed.image_ids[first],
            "split_a": hashed.splits[first],
            "product_type_a": hashed.product_types[first],
            "image_id_b": hashed.image_ids[second],
            "split_b": hashed.splits[second],
            "product_type_b": hashed.product_types[second],
            "hash_distance": pairs.distance,
            "similarity": np.round(pairs.similarity, 4),
            "signal": signal,
        }
    )


def _canonical(table):
    """Each pair once, the smaller id first, sorted: the same records give the same file."""
    swap = table["image_id_a"] > table["image_id_b"]
    for column in ("image_id", "split", "product_type"):
        first, second = table[f"{column}_a"].copy(), table[f"{column}_b"].copy()
        table.loc[swap, f"{column}_a"], table.loc[swap, f"{column}_b"] = second[swap], first[swap]
    table = table.sort_values(["image_id_a", "image_id_b", "signal"]).drop_duplicates(["image_id_a", "image_id_b"])
    return table.reset_index(drop=True)[list(PAIR_COLUMNS)]


def _embedding_pairs(splits, hashed, min_similarity):
    """Pairs whose CNN embeddings' cosine similarity reaches `min_similarity`, by scikit-learn's NearestNeighbors."""
    from sklearn.neighbors import NearestNeighbors

    parts = [splits[split] for split in SPLITS if split in splits]
    embeddings = np.concatenate([np.asarray(part.features, dtype=np.float32) for part in parts])
    embeddings /= np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    row_of_id = {image_id: row for row, image_id in enumerate(hashed.image_ids)}
    rows = np.array([row_of_id[image_id] for part in parts for image_id in part.image_ids])
    index = NearestNeighbors(radius=float(np.sqrt(max(0.0, 2 - 2 * min_similarity)))).fit(embeddings)
    distances, neighbours = index.radius_neighbors(embeddings, sort_results=True)
    first, second, similarity = [], [], []
    for query, (found, distance) in enumerate(zip(neighbours, distances)):
        later = found > query
        first += [query] * int(later.sum())
        second += found[later].tolist()
        similarity += (1 - distance[later] ** 2 / 2).tolist()
    first, second = rows[np.array(first, dtype=np.int64)], rows[np.array(second, dtype=np.int64)]
    distance = near_duplicates.hamming_distance(hashed.hashes[first], hashed.hashes[second])
    return near_duplicates.Pairs(first, second, distance, np.array(similarity))


def split_pair_counts(pairs, hashed):
    """Rows (split pair, pairs, images of the second split with a near-duplicate in the first)."""
    rows = []
    for first, second in SPLIT_PAIRS:
        across = pairs[
            ((pairs.split_a == first) & (pairs.split_b == second))
            | ((pairs.split_a == second) & (pairs.split_b == first))
        ]
        ids = set(across.image_id_a[across.split_a == second]) | set(across.image_id_b[across.split_b == second])
        rows.append((f"{first}-{second}", len(across), len(ids), int((hashed.splits == second).sum())))
    return rows


# --- galleries ---------------------------------------------------------------------


def _images_of(records_dir, manifest, image_ids):
    """Decoded RGB pixels of the given ids, read back from the shards."""
    import cv2

    wanted, found = set(image_ids), {}
    for split in manifest["splits"]:
        for path in shards.shard_paths(records_dir, manifest, split):
            for serialized in shards.iter_framed_records(path):
                record = shards.parse_record(serialized)
                image_id = record[schema.IMAGE_ID].decode()
                if image_id in wanted:
                    pixels = cv2.imdecode(np.frombuffer(record[schema.IMAGE], np.uint8), cv2.IMREAD_COLOR)
                    found[image_id] = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
    return found


def _gallery(rows, pixels, path):
    """One row of pictures per entry of `rows` (`[(image id, caption), ...]`)."""
    plt = figures.pyplot()
    width = max(len(row) for row in rows)
    figure, axes = plt.subplots(len(rows), width, figsize=(2.4 * width, 2.6 * len(rows)), squeeze=False)
    for axes_row, row in zip(axes, rows):
        for axis, (image_id, caption) in zip(axes_row, row + [None] * (width - len(row))):
            axis.axis("off")
            if image_id is not None:
                axis.imshow(pixels[image_id])
                axis.set_title(caption, fontsize=7)
    return figures.save(figure, path)


def _write_galleries(options_, manifest, pairs, issues):
    across = pairs[pairs.split_a != pairs.split_b].head(options_.gallery_size)
    pair_rows = [
        [
            (row.image_id_a, f"{row.split_a} {row.image_id_a}\n{row.product_type_a}"),
            (row.image_id_b, f"{row.split_b} {row.image_id_b}\n{row.hash_distance} bits, {row.similarity:.3f}"),
        ]
        for row in across.itertuples()
    ]
    issue_rows = [
        [(row.image_id, f"{row.image_id}\ngiven {row.given_type}\nsuggested {row.suggested_type}")]
        for row in issues.head(options_.gallery_size).itertuples()
    ]
    issue_rows = [sum(issue_rows[start : start + 4], []) for start in range(0, len(issue_rows), 4)]
    wanted = [image_id for row in pair_rows + issue_rows for image_id, _ in row]
    pixels = _images_of(options_.records, manifest, wanted) if wanted else {}
    written = []
    for rows, name in ((pair_rows, "near_duplicates.png"), (issue_rows, "label_issues.png")):
        if rows:
            written.append(_gallery(rows, pixels, os.path.join(options_.report, name)))
    return written


# --- the report ----------------------------------------------------------------------


def _summary(options_, manifest_sha256, pairs, counts, label_audit, seconds):
    train_test = next(row for row in counts if row[0] == "train-test")
    return {
        "records": os.path.abspath(options_.records),
        "manifest_sha256": manifest_sha256,
        "features": options_.feature_spec().name,
        "near_duplicate_pairs": len(pairs),
        "pairs_across_splits": int((pairs.split_a != pairs.split_b).sum()),
        "pairs_by_split_pair": {name: number for name, number, _, _ in counts},
        "test_images": train_test[3],
        "test_images_with_a_near_duplicate_in_train": train_test[2],
        "test_fraction_with_a_near_duplicate_in_train": train_test[2] / train_test[3] if train_test[3] else 0.0,
        "label_issues": int(label_audit.noise_rates.flagged.sum()),
        "label_issues_listed": len(label_audit.issues),
        "labels_audited": label_audit.num_audited,
        "seconds": seconds,
    }


def _load_planted(path):
    """The planted label errors of a truth file, or None without --truth."""
    if not path:
        return None
    truth = files.read_json(path, what="sample truth")
    if truth is None or not isinstance(truth, dict) or not {"label_flips", "listing_flips"} <= set(truth):
        problem = "does not exist" if truth is None else "holds no label_flips and listing_flips"
        raise UserInputError(f"--truth {path!r} {problem}: give the file `python -m abo_tf.sample --truth` wrote")
    return label_issues.planted_label_errors(truth)


def _planted_markdown(scores):
    if scores is None:
        return []
    rows = [
        (kind, entry["planted"], entry["flagged"], metrics.format_figure(entry["recall"]))
        for kind, entry in scores["kinds"].items()
    ]
    return [
        "Against the planted label errors (`--truth`): an image flip is one photo of another type on a listing, a "
        "listing flip every image of a listing (one item) under a wrong type.",
        "",
        markdown.table(rows, ["planted error", "audited", "flagged", "recall"]),
        "",
        f"Precision: {scores['flagged_planted']} of the {scores['flagged']} flagged images are planted errors "
        f"({metrics.format_figure(scores['precision'])}).",
        "",
    ]


def _report_markdown(summary, counts, label_audit, galleries):
    count_rows = [(name, number, f"{images} of {total}") for name, number, images, total in counts]
    issue_rows = [
        (row.image_id, row.split, row.given_type, row.suggested_type, f"{row.self_confidence:.2g}")
        for row in label_audit.issues.head(20).itertuples()
    ]
    noisy = label_audit.noise_rates.sort_values("estimated_noise_rate", ascending=False).head(10)
    lines = [
        "# Data audit",
        "",
        f"Records: `{summary['records']}`; features: {summary['features']}.",
        "",
        "## Near-duplicates across splits",
        "",
        markdown.table(count_rows, ["splits", "pairs", "second-split images with a near-duplicate in the first"]),
        "",
        f"**{100 * summary['test_fraction_with_a_near_duplicate_in_train']:.1f}%** of the test split "
        f"({summary['test_images_with_a_near_duplicate_in_train']} of {summary['test_images']} images) has a "
        f"near-duplicate in train: score without them with `--exclude {PAIRS_FILE}`, or rebuild with "
        f"`build_records --join-near-duplicates {PAIRS_FILE}`.",
        "",
        "## Likely label errors",
        "",
        f"{summary['label_issues']} of {summary['labels_audited']} train and validation images flagged "
        f"({summary['label_issues_listed']} listed in `{ISSUES_FILE}`, `--label-issues-max`); the 20 least "
        "self-confident:",
        "",
        markdown.table(issue_rows, ["image", "split", "given", "suggested", "self-confidence"]),
        "",
        *_planted_markdown(summary.get("planted_label_errors")),
        "Estimated noise rate, the 10 noisiest product types:",
        "",
        markdown.table(
            [(row.product_type, row.examples, row.flagged, row.estimated_noise_rate) for row in noisy.itertuples()],
            ["product type", "examples", "flagged", "noise rate"],
        ),
        "",
    ]
    lines += [f"![{os.path.basename(path)}]({os.path.basename(path)})" for path in galleries]
    return "\n".join(lines) + "\n"


def _check_options(options_):
    if options_.features == feature_spec.HANDCRAFTED and (options_.backbone or options_.run):
        raise UserInputError("--backbone and --run choose CNN features: give --features cnn with them")


def _find_near_duplicates(options_, splits_features):
    hashed = near_duplicates.hash_records(options_.records, options_.workers, options_.progress)
    pairs = near_duplicates.near_duplicate_pairs(hashed, options_.hash_distance, options_.pixel_similarity)
    tables = [_pairs_table(hashed, pairs, "hash")]
    if options_.features == feature_spec.CNN:
        tables.append(
            _pairs_table(hashed, _embedding_pairs(splits_features, hashed, options_.embedding_similarity), "embedding")
        )
    return hashed, _canonical(pd.concat(tables, ignore_index=True))


def run_audit(options_):
    """Audits a build for near-duplicates across splits and likely label errors; writes the report folder.

    Args:
      options_: an `AuditOptions`.

    Returns:
      The summary dict written to summary.json.

    Raises:
      UserInputError: no build at --records, a report folder of another command, features that cannot be
        computed, a split without images.
    """
    started = time.perf_counter()
    _check_options(options_)
    planted = _load_planted(options_.truth)
    manifest = shards.read_manifest(options_.records)
    folder = outputs.claim(options_.report, "audit", "--report")
    outputs.remove_owned(folder, _WRITTEN)
    options.save_config(options_, options_.report)
    wanted = SPLITS if options_.features == feature_spec.CNN else label_issues.AUDITED_SPLITS
    splits_features = extraction.extract_features(
        options_.records,
        options_.feature_spec(),
        [split for split in wanted if split in manifest["splits"]],
        options_.cache_dir,
        options_.batch_size,
        options_.workers,
        options_.progress,
    )
    hashed, pairs = _find_near_duplicates(options_, splits_features)
    label_audit = label_issues.find_label_issues(
        splits_features,
        dict(zip(hashed.image_ids, hashed.item_ids)),
        options_.folds,
        options_.seed,
        options_.label_issues_max,
    )
    pairs.to_csv(os.path.join(options_.report, PAIRS_FILE), index=False)
    label_audit.issues.to_csv(os.path.join(options_.report, ISSUES_FILE), index=False)
    label_audit.noise_rates.to_csv(os.path.join(options_.report, NOISE_FILE), index=False)
    galleries = _write_galleries(options_, manifest, pairs, label_audit.issues)
    counts = split_pair_counts(pairs, hashed)
    manifest_sha256 = shards.file_sha256(os.path.join(options_.records, shards.MANIFEST))
    summary = _summary(options_, manifest_sha256, pairs, counts, label_audit, time.perf_counter() - started)
    if planted is not None:
        summary["planted_label_errors"] = label_issues.score_planted(label_audit, planted)
    files.write_json(os.path.join(options_.report, SUMMARY_FILE), summary)
    shards.write_text(
        os.path.join(options_.report, REPORT_FILE), _report_markdown(summary, counts, label_audit, galleries)
    )
    return summary
