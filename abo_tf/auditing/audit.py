"""One data audit end to end: near-duplicates across splits, likely label errors, and the report folder.

The report folder (`--report`) gets:

    near_duplicate_groups.csv  every image with a near-duplicate: group, id, split, product type
    near_duplicates.csv   the pairs that joined each group (a spanning forest: one row fewer than the group's
                          images): ids, splits, product types, hash bits apart, similarity (the score of
                          the check that confirmed it: the thumbnails' correlation it passed), ORB
                          inliers, and the signal that confirmed it (identical, hash, whole hash, mirror hash,
                          inner thumbnail, corner thumbnail, brightened thumbnail, trimmed thumbnail,
                          cropped thumbnail, local features, mirrored local features, turned product, embedding)
    label_issues.csv      likely label errors, least self-confident first: id, split, given and suggested type
    noise_rates.csv       per product type: audited examples, flagged, estimated noise rate
    near_duplicates.png   a gallery of example pairs across splits; label_issues.png the top flagged images
    summary.json          the figures of report.md, and the build the audit read (its manifest's SHA-256);
                          with --truth (a generated sample's), recall and precision on its planted label errors
                          and the recall of its planted near-duplicates per edit family
    report.md             pairs per split pair, the share of test with a near-duplicate in train, top issues
    config.toml           the resolved options
"""

import dataclasses
import os
import re
import shutil
import tempfile
import time

import numpy as np
import pandas as pd

from abo_tf.auditing import label_issues, leakage, near_duplicates
from abo_tf.classical import extraction, feature_spec
from abo_tf.classical.feature_cache import DEFAULT_CACHE_DIR
from abo_tf.common import files, options, outputs
from abo_tf.common.errors import UserInputError
from abo_tf.records import schema, shards
from abo_tf.records.split import SPLITS
from abo_tf.reports import figures, markdown, metrics

PAIRS_FILE = "near_duplicates.csv"
GROUPS_FILE = leakage.GROUPS_FILE
ISSUES_FILE = "label_issues.csv"
NOISE_FILE = "noise_rates.csv"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.md"
EDGE_COLUMNS = (
    "group",
    "image_id_a",
    "split_a",
    "product_type_a",
    "image_id_b",
    "split_b",
    "product_type_b",
    "hash_distance",
    "similarity",
    "inliers",
    "signal",
)
GROUP_COLUMNS = leakage.GROUP_COLUMNS
EMBEDDING_QUERIES = 256  # neighbours held at once: 256 x the images at most (40 MB for 10k identical ones)
SPLIT_PAIRS = (("train", "test"), ("train", "validation"), ("validation", "test"))
_WRITTEN = (
    PAIRS_FILE,
    GROUPS_FILE,
    ISSUES_FILE,
    NOISE_FILE,
    SUMMARY_FILE,
    REPORT_FILE,
    "near_duplicates.png",
    "label_issues.png",
    options.CONFIG_FILE,
)
_DUPLICATES, _LABELS, _REPORT = "near-duplicates", "label errors", "report"
COLUMNS_PREFIX = "near-duplicates-"  # the mapped columns' temporary folder in --cache-dir (`_columns_folder`)


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
        maximum=near_duplicates.MAX_HASH_DISTANCE,
        help="largest perceptual-hash distance (bits of 64) of a pair",
    )
    pixel_similarity: float = options.option(
        near_duplicates.DEFAULT_PIXEL_SIMILARITY,
        group=_DUPLICATES,
        minimum=-1.0,
        maximum=1.0,
        help="smallest correlation of the 16 x 16 colour thumbnails (or their inner 12 x 12) that confirms a hash "
        "pair within 4 bits",
    )
    min_inliers: int = options.option(
        near_duplicates.DEFAULT_MIN_INLIERS,
        group=_DUPLICATES,
        minimum=0,
        maximum=near_duplicates.KEYPOINTS,
        help="ORB keypoints (of 32) one similarity transform (scale 0.7-1.43, turn <= 10 degrees) must align for a "
        "hash pair no thumbnail confirms (a crop, a turn) to be kept; 0 turns the check off",
    )
    embedding_similarity: float = options.option(
        0.97,
        group=_DUPLICATES,
        minimum=-1.0,
        maximum=1.0,
        help="with --features cnn or --run, also pair images whose embeddings' cosine similarity reaches this",
    )
    label_issues_max: int = options.option(
        500, group=_LABELS, minimum=1, maximum=options.MAX_COUNT, help="likely label errors listed at most"
    )
    folds: int = options.option(
        label_issues.DEFAULT_FOLDS,
        group=_LABELS,
        minimum=2,
        maximum=100,
        help="cross-validation folds of the out-of-sample probabilities (fewer when the largest class has fewer "
        "examples: each fold needs one)",
    )
    gallery_size: int = options.option(
        8, group=_REPORT, minimum=0, maximum=options.MAX_SHOWN, help="pairs and label issues shown in each gallery"
    )
    truth: str = options.option(
        "",
        group=_LABELS,
        metavar="FILE.json",
        help="a generated sample's truth (python -m abo_tf.sample --truth): the report scores the label audit "
        "on the label errors planted in it",
    )
    progress: bool = options.option(True, group=options.CONSOLE_GROUP, config=False, help="progress bars")

    def __post_init__(self):
        options.validate(self)


# --- near-duplicates -------------------------------------------------------------


def _edges_table(hashed, forest, group_of):
    """The spanning-forest edges: each pair once, the smaller id first, sorted (the same records, the same file)."""
    edges = forest.edges
    table = pd.DataFrame(
        {
            "group": group_of[edges.first],
            "image_id_a": hashed.image_ids[edges.first],
            "split_a": hashed.splits[edges.first],
            "product_type_a": hashed.product_types[edges.first],
            "image_id_b": hashed.image_ids[edges.second],
            "split_b": hashed.splits[edges.second],
            "product_type_b": hashed.product_types[edges.second],
            "hash_distance": edges.distance,
            "similarity": np.round(edges.similarity.astype(np.float64), 4),
            "inliers": edges.inliers,
            "signal": edges.signal,
        }
    )
    swap = table["image_id_a"] > table["image_id_b"]
    for column in ("image_id", "split", "product_type"):
        first, second = table[f"{column}_a"].copy(), table[f"{column}_b"].copy()
        table.loc[swap, f"{column}_a"], table.loc[swap, f"{column}_b"] = second[swap], first[swap]
    return table.sort_values(["group", "image_id_a", "image_id_b"]).reset_index(drop=True)[list(EDGE_COLUMNS)]


def _groups_table(hashed, group_of):
    grouped = np.flatnonzero(group_of >= 0)
    table = pd.DataFrame(
        {
            "group": group_of[grouped],
            "image_id": hashed.image_ids[grouped],
            "split": hashed.splits[grouped],
            "product_type": hashed.product_types[grouped],
        }
    )
    return table.sort_values(["group", "image_id"]).reset_index(drop=True)[list(GROUP_COLUMNS)]


def _add_embedding_pairs(forest, splits, hashed, min_similarity):
    """Joins the images whose CNN embeddings' cosine similarity reaches `min_similarity` (scikit-learn's
    NearestNeighbors), EMBEDDING_QUERIES queries at a time: identical embeddings have a quadratic number of pairs.
    """
    from sklearn.neighbors import NearestNeighbors

    parts = [splits[split] for split in SPLITS if split in splits]
    embeddings = np.concatenate([np.asarray(part.features, dtype=np.float32) for part in parts])
    embeddings /= np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    row_of_id = {image_id: row for row, image_id in enumerate(hashed.image_ids)}
    rows = np.array([row_of_id[image_id] for part in parts for image_id in part.image_ids])
    index = NearestNeighbors(radius=float(np.sqrt(max(0.0, 2 - 2 * min_similarity)))).fit(embeddings)
    for start in range(0, len(embeddings), EMBEDDING_QUERIES):
        distances, neighbours = index.radius_neighbors(embeddings[start : start + EMBEDDING_QUERIES])
        counts = np.array([len(found) for found in neighbours], dtype=np.int64)
        query = np.repeat(np.arange(start, start + len(counts)), counts)
        found = np.concatenate([*neighbours, np.zeros(0, np.int64)]).astype(np.int64)
        distance = np.concatenate([*distances, np.zeros(0)])
        later = found > query
        similarity = 1 - distance[later] ** 2 / 2
        forest.add(
            near_duplicates.make_pairs(hashed.hashes, rows[query[later]], rows[found[later]], similarity, "embedding")
        )


def split_pair_counts(groups, hashed):
    """Rows (split pair, groups holding both, images of the second split in such a group, images of the second)."""
    rows = []
    splits_of_group = groups.groupby("group")["split"].agg(set)
    for first, second in SPLIT_PAIRS:
        both = set(splits_of_group.index[[{first, second} <= splits for splits in splits_of_group]])
        images = int((groups.group.isin(both) & (groups.split == second)).sum())
        rows.append((f"{first}-{second}", len(both), images, int((hashed.splits == second).sum())))
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
        for axis, (image_id, caption) in zip(axes_row, row + [(None, None)] * (width - len(row))):
            axis.axis("off")
            if image_id is not None:
                axis.imshow(pixels[image_id])
                figures.caption(axis, caption)
    return figures.save(figure, path)


def _write_galleries(options_, manifest, edges, issues):
    across = edges[edges.split_a != edges.split_b]
    per_signal = max(1, options_.gallery_size // max(1, across.signal.nunique()))  # examples of every signal
    across = across.groupby("signal", sort=True).head(per_signal).head(options_.gallery_size)
    pair_rows = [
        [
            (row.image_id_a, f"{row.split_a} {row.image_id_a}\n{row.product_type_a}"),
            (
                row.image_id_b,
                f"{row.split_b} {row.image_id_b}\n{row.signal}: {row.hash_distance} bits, {row.similarity:.3f}",
            ),
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


def _summary(options_, manifest_sha256, near, counts, label_audit, seconds):
    train_test = next(row for row in counts if row[0] == "train-test")
    edges, groups = near
    return {
        "records": os.path.abspath(options_.records),
        "manifest_sha256": manifest_sha256,
        "features": options_.feature_spec().name,
        "near_duplicate_groups": int(groups.group.nunique()),
        "near_duplicate_images": len(groups),
        "near_duplicate_edges": len(edges),
        "groups_across_splits": int((groups.groupby("group")["split"].nunique() > 1).sum()),
        "groups_by_split_pair": {name: number for name, number, _, _ in counts},
        "test_images": train_test[3],
        "test_images_with_a_near_duplicate_in_train": train_test[2],
        "test_fraction_with_a_near_duplicate_in_train": train_test[2] / train_test[3] if train_test[3] else 0.0,
        "label_issues": int(label_audit.noise_rates.flagged.sum()),
        "label_issues_listed": len(label_audit.issues),
        "labels_audited": label_audit.num_audited,
        "seconds": seconds,
    }


# A sample's truth takes 23 bytes a listing with --tar (126 without: it lists every file), measured on 3,000
# listings: 32 MB holds a --tar sample's at the 1,000,000 listings `abo_tf.sample` allows. A 160 MB file took the
# audit to 1.6 GB (hostile review); parsed, a truth takes about 4 times its size, a crafted one up to 26 times.
MAX_TRUTH_BYTES = 32 * 2**20


def _load_truth(path):
    """A generated sample's truth dict, or None without --truth."""
    if not path:
        return None
    truth = files.read_json(
        path, what="sample truth (--truth)", max_bytes=MAX_TRUTH_BYTES, remedy="give the truth.json abo_tf.sample wrote"
    )
    if truth is None or not isinstance(truth, dict) or not {"label_flips", "listing_flips"} <= set(truth):
        problem = "does not exist" if truth is None else "holds no label_flips and listing_flips"
        raise UserInputError(f"--truth {path!r} {problem}: give the file `python -m abo_tf.sample --truth` wrote")
    try:  # the lists' entries as the sample writes them: {"image_id": ...} and {"image_ids": [...]}
        planted = label_issues.planted_label_errors(truth)
        # A string of image ids or a number would be scored silently as planted images that are never built.
        if not all(isinstance(flip["image_ids"], list) for flip in truth["listing_flips"]):
            raise TypeError("a listing flip's image_ids is not a list")
        not_ids = [image_id for image_id in planted if not isinstance(image_id, str)]
        if not_ids:
            raise TypeError(f"image id {not_ids[0]!r} is not a string")
        for pair in truth.get("near_duplicates", []):
            if not all(isinstance(pair[key], str) for key in ("image_id", "duplicate_id", "variant")):
                raise TypeError(f"a near-duplicate entry holds a non-string: {str(pair)[:80]}")
    except (TypeError, KeyError, AttributeError) as error:  # a string, a number or a missing key was a traceback
        raise UserInputError(
            f"--truth {path!r}: its label_flips, listing_flips or near_duplicates are not lists of the sample's "
            f"entries ({type(error).__name__}: {str(error)[:80]}): give the file `python -m abo_tf.sample --truth` "
            "wrote"
        ) from error
    return truth


def score_planted_near_duplicates(truth, groups, image_ids):
    """Recall of a sample's planted near-duplicates per edit family: a pair is found when both images share a
    group. Pairs with an image missing from the build (filtered out by the build's options) are not counted.

    Returns:
      {family: {"planted", "found", "recall"}}, families sorted.
    """
    group_of, built, scores = dict(zip(groups.image_id, groups.group)), set(image_ids), {}
    for pair in truth.get("near_duplicates", []):
        if not {pair["image_id"], pair["duplicate_id"]} <= built:
            continue
        entry = scores.setdefault(pair["variant"], {"planted": 0, "found": 0})
        entry["planted"] += 1
        entry["found"] += int(group_of.get(pair["image_id"], -1) == group_of.get(pair["duplicate_id"], -2))
    for entry in scores.values():
        entry["recall"] = entry["found"] / entry["planted"]
    return dict(sorted(scores.items()))


def _planted_near_duplicates_markdown(scores):
    if scores is None:
        return []
    if not scores:  # a table of headers alone read as a bug of the audit
        return [
            "None of the planted near-duplicate pairs (`--truth`) has both images in these records: the copies "
            "are planted as other images of a listing, which a build keeps with `--image-selection all`.",
            "",
        ]
    rows = [
        (family, entry["planted"], entry["found"], metrics.format_figure(entry["recall"]))
        for family, entry in scores.items()
    ]
    return [
        "Against the planted near-duplicates (`--truth`), per edit family (`abo_tf/testing/image_edits.py`, the "
        "strongest moderate strength of each): found when both images share a group.",
        "",
        markdown.table(rows, ["edit family", "planted pairs", "found", "recall"]),
        "",
    ]


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


def _unchecked_markdown(unchecked, left_out, crowded=0, over_budget=0):
    lines = []
    if over_budget:
        lines += [
            f"{over_budget} candidate pairs were not compared: each image keeps its "
            f"{near_duplicates.DEFAULT_MAX_CANDIDATES} nearest hash partners, and these were among neither image's "
            "(a near-duplicate of a crowded image may be missed).",
            "",
        ]
    if crowded:
        lines += [
            f"{crowded} images have a hash with more than {near_duplicates.DEFAULT_NEAREST} others within the hash "
            f"distance (alike images, such as products on white): each hash was paired with its "
            f"{near_duplicates.DEFAULT_NEAREST} nearest only (a near-duplicate farther than those may be missed).",
            "",
        ]
    if unchecked:
        lines += [
            f"{unchecked} candidate pairs were not checked by keypoints: each image takes part in at most "
            f"{near_duplicates.DEFAULT_MAX_LOCAL_CHECKS}, its closest hashes first (crops of plain images may be "
            "missed).",
            "",
        ]
    if left_out:
        lines += [
            f"{left_out} candidate pairs of hashes sharing a band value with thousands of others (blank or plain "
            "backgrounds) were not compared in that band: near-duplicates among them may be missed.",
            "",
        ]
    return lines


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
        f"{summary['near_duplicate_images']} images in {summary['near_duplicate_groups']} groups of "
        f"near-duplicates (`{GROUPS_FILE}`; the pairs that joined them: `{PAIRS_FILE}`).",
        "",
        markdown.table(count_rows, ["splits", "groups in both", "second-split images in a group with the first"]),
        "",
        f"**{100 * summary['test_fraction_with_a_near_duplicate_in_train']:.1f}%** of the test split "
        f"({summary['test_images_with_a_near_duplicate_in_train']} of {summary['test_images']} images) is in a "
        f"group with a train image: score without them with `--exclude {GROUPS_FILE}`, or rebuild with "
        f"`build_records --join-near-duplicates {GROUPS_FILE}`.",
        "",
        *_unchecked_markdown(
            summary["unchecked_local_pairs"],
            summary.get("left_out_bucket_pairs", 0),
            summary.get("crowded_images", 0),
            summary.get("left_out_candidate_pairs", 0),
        ),
        *_planted_near_duplicates_markdown(summary.get("planted_near_duplicates")),
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


def _columns_folder(cache_dir):
    """A temporary folder in `cache_dir` for the near-duplicate search's mapped columns, once the folders an audit
    killed before its cleanup left there (COLUMNS_PREFIX, up to a GB each at ABO size) are removed: run_audit holds
    the cache's lock (`outputs.claim`), so no other audit is using them."""
    for name in os.listdir(cache_dir):  # tempfile's names only (8 characters after the prefix), no folder of a user's
        path = os.path.join(cache_dir, name)
        ours = re.fullmatch(re.escape(COLUMNS_PREFIX) + r"[a-z0-9_]{8}", name)
        if ours and os.path.isdir(path) and not os.path.islink(path):  # rmtree refuses a link
            shutil.rmtree(path)
    return tempfile.TemporaryDirectory(prefix=COLUMNS_PREFIX, dir=cache_dir)


def _find_near_duplicates(options_, splits_features):
    """(hashed images, (edges table, groups table), the forest: its counts of pairs left out)."""
    # The thumbnails and keypoints on disk, mapped: 1.1 GB of columns at ABO size, resident only while read
    with _columns_folder(options_.cache_dir) as columns_dir:
        hashed = near_duplicates.hash_records(options_.records, options_.workers, options_.progress, columns_dir)
        forest = near_duplicates.near_duplicate_forest(
            hashed,
            options_.hash_distance,
            options_.pixel_similarity,
            options_.min_inliers,
            options_.progress,
            workers=options_.workers,
        )
    if options_.features == feature_spec.CNN:
        _add_embedding_pairs(forest, splits_features, hashed, options_.embedding_similarity)
    group_of = forest.groups()
    near = _edges_table(hashed, forest, group_of), _groups_table(hashed, group_of)
    return hashed, near, forest


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
    truth = _load_truth(options_.truth)
    manifest = shards.read_manifest(options_.records)
    # The cache first: a cache folder of another command, or inside the records, is refused before the report.
    outputs.claim(options_.cache_dir, "features", "--cache-dir", records=options_.records)
    folder = outputs.claim(options_.report, "audit", "--report", records=options_.records)
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
    hashed, near, forest = _find_near_duplicates(options_, splits_features)
    label_audit = label_issues.find_label_issues(
        splits_features,
        dict(zip(hashed.image_ids, hashed.item_ids)),
        options_.folds,
        options_.seed,
        options_.label_issues_max,
    )
    files.write_csv(near[0], os.path.join(options_.report, PAIRS_FILE))
    files.write_csv(near[1], os.path.join(options_.report, GROUPS_FILE))
    files.write_csv(label_audit.issues, os.path.join(options_.report, ISSUES_FILE))
    files.write_csv(label_audit.noise_rates, os.path.join(options_.report, NOISE_FILE))
    galleries = _write_galleries(options_, manifest, near[0], label_audit.issues)
    counts = split_pair_counts(near[1], hashed)
    manifest_sha256 = shards.file_sha256(os.path.join(options_.records, shards.MANIFEST))
    summary = _summary(options_, manifest_sha256, near, counts, label_audit, time.perf_counter() - started)
    summary["unchecked_local_pairs"] = forest.unchecked_local_pairs
    summary["left_out_bucket_pairs"] = forest.left_out_bucket_pairs
    summary["crowded_images"] = forest.crowded_images
    summary["left_out_candidate_pairs"] = forest.left_out_candidate_pairs
    if truth is not None:
        summary["planted_label_errors"] = label_issues.score_planted(
            label_audit, label_issues.planted_label_errors(truth)
        )
        summary["planted_near_duplicates"] = score_planted_near_duplicates(truth, near[1], hashed.image_ids)
    files.write_json(os.path.join(options_.report, SUMMARY_FILE), summary)
    shards.write_text(
        os.path.join(options_.report, REPORT_FILE), _report_markdown(summary, counts, label_audit, galleries)
    )
    return summary
