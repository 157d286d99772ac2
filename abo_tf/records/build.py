"""ABO archives -> leak-free, sharded TFRecords (the library of `python -m abo_tf.build_records`).

    python -m abo_tf.build_records --listings abo-listings.tar \\
        --images abo-images-small.tar --output tfrecords/abo/1.0.0

The listings are read in a worker while this process indexes the images tar.
Then two parallel passes over the images: a scan (structure check and SHA-256 of
every candidate image; content hashes take part in the leak-free grouping and
the rejections must be known before classes are counted), then the write, each
TFDS-named shard written and hashed whole by one worker, each image read again and
checked against the scan by its size and CRC-32C. The plan (which image
goes to which shard, in which order) is fixed before writing, so a re-run gives
byte-identical shards and an interrupted run resumes where it stopped.
"""

import array
import collections
import concurrent.futures
import dataclasses
import errno
import fnmatch
import functools
import gc
import hashlib
import importlib
import itertools
import json
import operator
import os
import sys
import time
from typing import NamedTuple

import google_crc32c
import numpy as np

from abo_tf.common import console, id_files, outputs, parallel
from abo_tf.common import options as options_lib
from abo_tf.common.errors import UserInputError
from abo_tf.common.files import read_json, write_json
from abo_tf.common.parallel import bounded_map
from abo_tf.records import archive, download, images, labels, schema, shards, split

STATE_DIR = ".build"  # plan and finished pieces of an unfinished build
PLAN_FILE = "plan.json"
PIECE_EXAMPLES = 512  # unit of parallel work; a shard is the unit of resumption
SCAN_CHUNK = 2048
IMAGE_SELECTIONS = ("main", "all")
# Options that do not change the bytes written; everything else does.
# allow_truncated changes what is read, which the fingerprint and the manifest's "truncated" lists record.
_NON_OUTPUT_OPTIONS = ("listings", "images", "output", "workers", "overwrite", "progress", "allow_truncated")

KEPT = "kept"
COMMAND = "build_records"
# Everything a build writes into --output, and nothing else: what --overwrite may
# delete. Files are written under `<name>.tmp-<pid>` (`<name>.tmp` before) first.
BUILD_FILES = (
    f"{schema.DATASET_NAME}-*.{schema.FILE_FORMAT}-*",
    shards.MANIFEST,
    shards.LABELS_FILE,
    *shards.TFDS_FILES,
    options_lib.CONFIG_FILE,
    STATE_DIR,
)
_BUILD_PATTERNS = BUILD_FILES + tuple(name + ".tmp*" for name in BUILD_FILES)


class BuildError(RuntimeError):
    """An internal check failed (a leak, an accounting mismatch): a bug, not bad input."""


class ImageChangedError(UserInputError):
    """An image read by the write differs from the one the scan read: something wrote to --images meanwhile."""


class NotABuildError(UserInputError):
    """--output holds a manifest or plan that is JSON but not an abo_tf build's."""


_INPUTS = "inputs (extracted folder or the .tar as downloaded)"
_LABELS, _SPLIT, _OUTPUT = "examples and labels", "split", "output"


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    """Everything a build depends on; `python -m abo_tf.build_records --help` documents each."""

    listings: str | None = options_lib.option(
        group=_INPUTS,
        help=f"abo-listings.tar or the folder it was extracted into (default: looked for under {download.DATA_DIR}/)",
    )
    images: str | None = options_lib.option(
        group=_INPUTS,
        help=f"abo-images-small.tar (or -original) or the folder it was extracted into (default: looked "
        f"for under {download.DATA_DIR}/)",
    )
    image_variant: str = options_lib.option(
        "small", choices=archive.IMAGE_VARIANTS, group=_INPUTS, help="images/small (256 px) or images/original"
    )
    allow_truncated: bool = options_lib.option(
        False,
        group=_INPUTS,
        help="read a truncated archive up to its cut (counted, and reported loudly) instead of failing",
    )
    image_selection: str = options_lib.option(
        "main", choices=IMAGE_SELECTIONS, group=_LABELS, help="main image of each listing, or all its images"
    )
    min_examples_per_class: int = options_lib.option(
        10,
        minimum=1,
        maximum=options_lib.MAX_COUNT,
        group=_LABELS,
        help="product types with fewer images are dropped (or merged)",
    )
    max_classes: int | None = options_lib.option(
        minimum=2, maximum=options_lib.MAX_COUNT, group=_LABELS, help="keep the N most frequent product types"
    )
    rare_classes: str = options_lib.option(
        "drop", choices=labels.RARE_CLASS_ACTIONS, group=_LABELS, help="what happens to the examples of the other types"
    )
    split_fractions: tuple[float, ...] = options_lib.option(
        (0.8, 0.1, 0.1),
        flag="--split",
        nargs=3,
        metavar=("TRAIN", "VALIDATION", "TEST"),
        minimum=0.0,
        maximum=1.0,
        group=_SPLIT,
        help="fractions of the groups of images, summing to 1",
    )
    min_groups_per_split: tuple[int, ...] = options_lib.option(
        (1, 1, 1),
        nargs=3,
        metavar=("TRAIN", "VALIDATION", "TEST"),
        minimum=0,
        maximum=options_lib.MAX_COUNT,
        group=_SPLIT,
        help="product types with fewer groups than these in each split (of positive fraction) are dropped (or "
        "merged); a group is images joined by listing, item, bytes or --join-near-duplicates",
    )
    max_listings_per_image: int = options_lib.option(
        50,
        minimum=1,
        maximum=options_lib.MAX_COUNT,
        group=_SPLIT,
        help="drop boilerplate images shown by more listings",
    )
    seed: int = options_lib.option(
        0, group=_SPLIT, help="seed of the split and of the shuffle", **options_lib.SEED_BOUNDS
    )
    join_near_duplicates: str | None = options_lib.option(
        group=_SPLIT,
        metavar="FILE",
        help="near_duplicate_groups.csv of `abo_tf.audit` (or its report folder): each group goes whole to one split",
    )
    exclude_images: str | None = options_lib.option(
        group=_LABELS,
        metavar="FILE",
        help="CSV with an image_id column (e.g. the audit's label_issues.csv): these "
        "images are dropped, counted as `excluded`",
    )
    output: str = options_lib.option(
        os.path.join("tfrecords", schema.DATASET_NAME, schema.DATASET_VERSION),
        group=_OUTPUT,
        config=False,
        help="the build's folder (new, empty, or an earlier build's)",
    )
    overwrite: bool = options_lib.option(
        False, group=_OUTPUT, config=False, help="replace a different build in --output (only the files a build writes)"
    )
    shard_mb: float = options_lib.option(
        shards.DEFAULT_SHARD_MB, minimum=1.0, maximum=65536.0, group=_OUTPUT, help="target shard size"
    )
    resize: int | None = options_lib.option(
        minimum=32, maximum=65536, group=_OUTPUT, help="re-encode images whose longer side exceeds N pixels"
    )
    workers: int = options_lib.option(
        os.cpu_count() or 1,
        minimum=1,
        maximum=parallel.MAX_WORKERS,
        group=_OUTPUT,
        config=False,
        help="worker processes (default: this machine's cores)",
    )
    progress: bool = options_lib.option(True, group=options_lib.CONSOLE_GROUP, config=False, help="progress bars")

    def __post_init__(self):
        options_lib.validate(self)
        fractions = tuple(self.split_fractions)
        if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-6:
            raise UserInputError(
                f"--split {_spelled(fractions)} must be three non-negative fractions "
                f"summing to 1 (these sum to {sum(fractions):g}), e.g. 0.8 0.1 0.1"
            )
        if len(tuple(self.min_groups_per_split)) != 3:
            raise UserInputError(
                f"--min-groups-per-split {_spelled(self.min_groups_per_split)} must be three group counts "
                "(train, validation, test), e.g. 1 1 1"
            )

    def output_options(self):
        """The options that determine the records' bytes, as saved in the manifest.

        An id file is recorded by its SHA-256 (where it lies does not change the records); an id file not given
        is left out, so a build without one has the manifest it had before these options existed.
        """
        values = dataclasses.asdict(self)
        values["split_fractions"] = list(self.split_fractions)
        values["min_groups_per_split"] = list(self.min_groups_per_split)
        for name, default_name in _ID_FILES.items():
            if values[name] is None:
                del values[name]
            else:
                path = id_files.id_file_path(values[name], _flag(name), default_name)
                values[name] = {"sha256": shards.file_sha256(path)}
        return {key: value for key, value in values.items() if key not in _NON_OUTPUT_OPTIONS}


# --- files of image ids from `abo_tf.audit` ------------------------------------

_ID_FILES = {"join_near_duplicates": "near_duplicate_groups.csv", "exclude_images": "label_issues.csv"}
_GROUP_COLUMNS = ("group", "image_id")
EXCLUDED = "excluded"  # the drop reason of --exclude-images
# Drop reasons (and, under --rare-classes other, merge reasons) of the images of types too rare to be a class:
# fewer images than --min-examples-per-class (or past --max-classes), or fewer groups than --min-groups-per-split.
RARE_CLASS, RARE_CLASS_GROUPS = "rare_class", "rare_class_groups"


def _flag(name):
    return "--" + name.replace("_", "-")


def _spelled(values):
    """Numbers as a user types them after a flag: `0.8 0.1 0.1`, not `(0.8, 0.1, 0.1)`; counts in full."""
    return " ".join(f"{value:g}" if isinstance(value, float) else str(value) for value in values)


def read_id_files(options):
    """(near-duplicate pairs, excluded image ids) of the options' id files; empty when not given.

    A group of `near_duplicate_groups.csv` becomes pairs of its first image with each other one.
    """
    pairs, excluded = [], set()
    if options.join_near_duplicates is not None:
        flag, name = _flag("join_near_duplicates"), _ID_FILES["join_near_duplicates"]
        first_of_group = {}
        for group, image_id in id_files.read_id_rows(options.join_near_duplicates, flag, _GROUP_COLUMNS, name):
            pairs.append((first_of_group.setdefault(group, image_id), image_id))
    if options.exclude_images is not None:
        flag, name = _flag("exclude_images"), _ID_FILES["exclude_images"]
        rows = id_files.read_id_rows(options.exclude_images, flag, ("image_id",), name)
        excluded = {image_id for (image_id,) in rows}
    return pairs, excluded


def _check_known_ids(ids, referenced, name):
    """Refuses an id file naming images these listings do not show: it belongs to another download or selection."""
    unknown = sorted(set(ids) - referenced)
    if unknown:
        raise UserInputError(
            f"{_flag(name)}: {len(unknown)} of its {len(set(ids))} image ids (e.g. {unknown[0]!r}) "
            "are not images of these listings: give the file of an audit of a build of the same "
            "download with the same --image-selection"
        )


class _ImageIndex:
    """Where each image of images.csv sits in the archive: an id -> position dict and flat arrays.

    The `ImageStore`'s dicts of `ImageRow`s and `(offset, size)` tuples take
    about 540 bytes an image (tracemalloc, 100k images); this about 215, the
    id and path strings included.
    """

    NOT_IN_ARCHIVE = -1

    def __init__(self, store):
        self.position = {}  # image id -> index into paths/offsets/sizes, or NOT_IN_ARCHIVE
        self.paths = []  # relative to images/<variant>/
        self.offsets, self.sizes = array.array("q"), array.array("q")  # offset -1: a file in a folder
        self.refused = {}  # image id -> reason the reader refused its file (path_outside_images, file_too_large)
        for image_id, row in store.rows.items():
            location = store.locations.get(row.path)
            if row.path in store.refused:
                self.refused[image_id] = store.refused[row.path]
            if location is None:
                self.position[image_id] = self.NOT_IN_ARCHIVE
                continue
            self.position[image_id] = len(self.paths)
            self.paths.append(row.path)
            self.offsets.append(-1 if location[0] is None else location[0])
            self.sizes.append(location[1])
        self.num_rows, self.csv_sha256, self.truncated = len(store.rows), store.csv_sha256, store.truncated

    def locate(self, image_id):
        """`(path, offset or None, size)` of a located image."""
        position = self.position[image_id]
        offset = self.offsets[position]
        return self.paths[position], None if offset < 0 else offset, self.sizes[position]


def _positions(image_index, image_ids):
    """The positions of `image_ids` (a list of ids in images.csv) in an `_ImageIndex`, an int array."""
    return np.fromiter(map(image_index.position.__getitem__, image_ids), np.int64, len(image_ids))


def _offsets_or_none(offsets):
    """`offsets` (a list of ints) with None for a file in a folder (-1), as `PlanItem.offset` and the reader take."""
    return [None if offset < 0 else offset for offset in offsets] if min(offsets, default=0) < 0 else offsets


class _ListingLabel(NamedTuple):
    """What the build keeps of a listing: the rest of the `Listing` is dropped as it is read."""

    item_id: str
    product_type: str | None


@dataclasses.dataclass
class _Candidates:
    """The state of the build between reading and writing.

    `listings`, `listings_of_image` and `scanned` are set to None once the first shards are submitted
    (`_complete_during_write`): the rest of the write and the manifest do not need them, and at 400k
    images they are hundreds of MB.
    """

    listings: list | None  # of _ListingLabel
    status: list  # per listing: None while it may be kept, else the reason it is dropped
    image_ids: list  # per listing: the image ids it contributes
    listings_of_image: dict | None  # image id -> listing indices
    image_status: dict = dataclasses.field(default_factory=dict)  # image id -> drop reason or KEPT
    scanned: "_Scanned | None" = None  # what the scan found, set by `_scan`
    keeper: dict = dataclasses.field(default_factory=dict)  # content duplicate -> the id kept for it
    num_referenced: int = 0  # images referenced by the selected listings
    survivors: list | None = None  # the image ids kept as of the last `_surviving`, sorted
    survivor_positions: np.ndarray | None = None  # their positions in the `_ImageIndex`, when known

    def kept_ids(self, index):
        """Listing `index`'s image ids, duplicates replaced by the copy kept."""
        return [self.keeper.get(image_id, image_id) for image_id in self.image_ids[index]]

    @functools.cached_property
    def listing_items(self):
        """The listings' item ids, in listing order: read by the scan's columns, a content duplicate's copy kept and
        the grouping (each made this list of 147k ids again)."""
        return list(map(_ITEM_ID, self.listings))


@dataclasses.dataclass
class _Scanned:
    """The scan's results as columns in scan (archive) order, and where each image of the index is in them.

    Lists extended a chunk at a time and read through `place` with NumPy: three dicts keyed by image id took
    three inserts an image during the scan and three look-ups an image in the plan.
    """

    image_ids: list
    place: np.ndarray  # the index's position of an image -> its place in these lists (-1: not scanned)
    sha256: list = dataclasses.field(default_factory=list)  # hex digest
    crc32c: list = dataclasses.field(default_factory=list)  # CRC-32C of the bytes scanned
    copy_size: list = dataclasses.field(default_factory=list)  # (height, width) if stored as-is, else None
    # The split's and the shuffle's keys (`split.stable_fractions`, `split.shuffle_digests`), an array a chunk:
    # hashed by the parent while it waits for the listings (`_SplitKeys`) or for the scan's workers, not after the scan.
    key_fractions: list = dataclasses.field(default_factory=list)
    shuffle_words: list = dataclasses.field(default_factory=list)
    # What the listings say of each image, taken during the scan too (`_listed_columns`): the labels and the plan
    # looked each image's listings up again in the serial step, one core busy (1.0 of its CPU s at 417k).
    product_type: list = dataclasses.field(default_factory=list)  # its first listing's
    item_id: list = dataclasses.field(default_factory=list)  # the smallest of its listings'
    several: list = dataclasses.field(default_factory=list)  # the places of the images shown by several listings
    # The grouping's graph in integers (`_group_kept`): a place's rank in image id order and its position in the
    # `_ImageIndex`, and which listings show each place (an array a chunk each, taken during the scan). Grouping by
    # dicts keyed by image id was a third of a 421k build's serial step (1.4 of its 5.4 CPU s).
    rank: np.ndarray | None = None
    position: np.ndarray | None = None
    shown_places: list = dataclasses.field(default_factory=list)  # a place once per listing showing it
    shown_listings: list = dataclasses.field(default_factory=list)  # that listing's index


@dataclasses.dataclass
class _Prepared:
    """What the manifest needs from the steps before the write (the plan goes to the writer)."""

    candidates: _Candidates
    report: archive.ListingsReport
    vocabulary: labels.Vocabulary
    conflicts: dict
    rare_classes: dict
    images_csv_sha256: str
    images_csv_rows: int
    scanned_content_sha256: str | None  # None until `_complete_during_write`, as is label_conflicts["items"]
    images_truncated: list


# --- reading and selecting ---------------------------------------------------


def _select_images(listings, image_selection):
    """Per listing: a drop reason or None, the image ids it contributes, and `(item ids, types)`, a list each.

    `listings` is streamed: a `Listing` is dropped as soon as it is read.
    """
    status, image_ids, seen, item_ids, product_types = [], [], set(), [], []
    for listing in listings:
        item_ids.append(listing.item_id)
        product_types.append(listing.product_type)
        ids = (
            listing.image_ids if image_selection == "all" else [listing.main_image_id] if listing.main_image_id else []
        )
        key = (listing.item_id, listing.domain_name)
        reason = (
            "missing_item_id"
            if not listing.item_id
            else "duplicate_listing"
            if key in seen
            else "missing_product_type"
            if listing.product_type is None
            else None
            if ids
            else "no_main_image"
            if image_selection == "main"
            else "no_image"
        )
        seen.add(key)
        status.append(reason)
        image_ids.append(tuple(ids) if reason is None else ())
    return status, image_ids, (item_ids, product_types)


class _Digest(NamedTuple):
    """A finished hashlib digest as a worker sends it back (hashlib objects do not pickle)."""

    value: str

    def hexdigest(self):
        return self.value


def _read_listings(path, image_selection, allow_truncated):
    """Worker: `_select_images` of the listings archive (`_from_columns` makes its labels `_ListingLabel`s), and
    its `ListingsReport`.

    Run in a worker while the parent indexes the images tar: the two serial
    reads of a build overlap, each on its own core. The parent waits for its result: 148k named tuples pickled
    through Python code one by one took 0.45 CPU s to send and 0.11 to receive, two lists of strings 0.25 and 0.05.
    """
    report = archive.ListingsReport()
    selected = _select_images(archive.read_listings(path, report, allow_truncated), image_selection)
    return selected, dataclasses.replace(report, sha256=_Digest(report.sha256.hexdigest()))


def _from_columns(selected):
    """`_read_listings`' selection with its labels as `_ListingLabel`s again, made by C loops."""
    status, image_ids, (item_ids, product_types) = selected
    return status, image_ids, list(map(tuple.__new__, itertools.repeat(_ListingLabel), zip(item_ids, product_types)))


def _read_candidates(options, image_index, selected, excluded=frozenset()):
    status, image_ids, labels_of_listings = selected
    listings_of_image = collections.defaultdict(list)
    for index, ids in enumerate(image_ids):
        for image_id in ids:
            listings_of_image[image_id].append(index)
    candidates = _Candidates(
        labels_of_listings, status, image_ids, dict(listings_of_image), num_referenced=len(listings_of_image)
    )
    for image_id, indices in candidates.listings_of_image.items():
        position = image_index.position.get(image_id)
        if position is None:
            candidates.image_status[image_id] = "missing_from_images_csv"
        elif image_id in image_index.refused:  # path_outside_images, file_too_large
            candidates.image_status[image_id] = image_index.refused[image_id]
        elif position == image_index.NOT_IN_ARCHIVE:
            candidates.image_status[image_id] = "missing_from_archive"
        elif len(indices) > options.max_listings_per_image:
            candidates.image_status[image_id] = "over_shared"
        elif image_id in excluded:
            candidates.image_status[image_id] = EXCLUDED
    return candidates


# --- pass 1: scan ------------------------------------------------------------


def _warm_up():
    """Worker: nothing; submitting it starts the process early."""


def _scan_chunk(locations, reader, max_side):
    """Worker: four lists, one entry per `(path, location)`: the reason the image is rejected or None, its
    SHA-256, its CRC-32C, its (height, width) if stored as-is or None.

    Plain lists, a column each: they pickle in C, and the parent stores each column with one `dict.update`.
    The sizes of files that are copied as they are travel in the plan, so the write pass does not parse them
    again.
    """
    reasons, digests, crcs, copy_sizes = [], [], [], []
    for data in reader.read_many(locations):
        reason, copy_size = None, None
        try:
            info = images.inspect_image(data)
            copy_size = (info.height, info.width) if images.can_copy(info, max_side) else None
        except images.RejectedImage as error:
            reason = error.reason
        reasons.append(reason)
        digests.append(hashlib.sha256(data).hexdigest())
        crcs.append(google_crc32c.value(data))
        copy_sizes.append(copy_size)
    return reasons, digests, crcs, copy_sizes


def _located(image_index, image_ids, positions=None):
    """`(image ids, their positions in the index, their places in `image_ids`)` of located `image_ids` in archive
    order, so reads are sequential; `_scan_locations` gives where they are, a chunk at a time. Their `positions`
    are looked up unless given.

    Ordered by an argsort of the offsets (of the paths in a folder), stable as `sorted` is: a key function per
    image and a named tuple each was 2.3 of a 400k build's serial CPU seconds.
    """
    at = _positions(image_index, image_ids) if positions is None else positions
    offsets = np.asarray(image_index.offsets, np.int64)[at]  # -1: a file in a folder
    if len(offsets) and offsets[0] >= 0:  # a tar: one offset a member, so ties are the same member (same path)
        order = np.argsort(offsets, kind="stable")
    else:  # a folder: no offsets
        paths = list(map(image_index.paths.__getitem__, at.tolist()))
        order = np.asarray(sorted(range(len(paths)), key=paths.__getitem__), np.int64)
    return list(map(image_ids.__getitem__, order.tolist())), at[order], order


def _scan_locations(image_index, positions, offsets, sizes):
    """`[(path, (offset or None, size)), ...]` of the index's `positions` (an int array), as the reader takes them;
    `offsets` and `sizes` are the index's as int arrays.

    Made a scan chunk at a time as the chunks are handed out, while the workers scan the chunks before: made for
    every image before the scan, they were 0.9 CPU s at 423k with the workers idle.
    """
    at = positions.tolist()
    located = zip(_offsets_or_none(offsets[positions].tolist()), sizes[positions].tolist())
    return list(zip(map(image_index.paths.__getitem__, at), located))


def _scan(candidates, image_index, reader, pool, options, keys):
    pending = _surviving(candidates)
    image_ids, positions, ranks = _located(image_index, pending, candidates.survivor_positions)
    starts = range(0, len(image_ids), SCAN_CHUNK)
    del pending
    place = np.full(len(image_index.paths), -1, np.int64)
    place[positions] = np.arange(len(positions))
    candidates.scanned = result = _Scanned(image_ids, place, rank=ranks, position=positions)
    listed = [listing.product_type for listing in candidates.listings], candidates.listing_items
    offsets, sizes = np.asarray(image_index.offsets, np.int64), np.asarray(image_index.sizes, np.int64)
    with console.progress_bar(total=len(image_ids), desc="scan", unit="img", enabled=options.progress) as bar:
        chunks = (
            _scan_locations(image_index, positions[start : start + SCAN_CHUNK], offsets, sizes) for start in starts
        )
        scanned = bounded_map(pool, _scan_chunk, chunks, 2 * options.workers + 2, reader, options.resize)
        for start, (reasons, digests, crcs, copy_sizes) in zip(starts, scanned):
            chunk_ids = image_ids[start : start + SCAN_CHUNK]
            result.sha256 += digests
            result.crc32c += crcs
            result.copy_size += copy_sizes
            chunk_keys = _chunk_keys(keys, positions[start : start + SCAN_CHUNK], chunk_ids, options.seed)
            result.key_fractions.append(chunk_keys[0])
            result.shuffle_words.append(chunk_keys[1])
            _listed_columns(result, candidates, chunk_ids, start, listed)
            candidates.image_status.update(
                (image_id, reason) for image_id, reason in zip(chunk_ids, reasons) if reason is not None
            )
            bar.update(len(chunk_ids))


def _listed_columns(scanned, candidates, chunk_ids, start, listed):
    """Appends to the scan's columns the product type of the first listing and the smallest item id of the images
    `chunk_ids` (from place `start`), and the places of those shown by several listings; `listed` is the listings'
    (types, item ids)."""
    listing_types, listing_items = listed
    shown = list(map(candidates.listings_of_image.__getitem__, chunk_ids))
    firsts = list(map(_FIRST, shown))
    scanned.product_type += map(listing_types.__getitem__, firsts)
    item_ids = list(map(listing_items.__getitem__, firsts))
    counts = np.fromiter(map(len, shown), np.int64, len(shown))
    scanned.shown_places.append(np.repeat(np.arange(start, start + len(shown), dtype=np.int64), counts))
    scanned.shown_listings.append(np.fromiter(itertools.chain.from_iterable(shown), np.int64, int(counts.sum())))
    for at in np.flatnonzero(counts > 1).tolist():  # nearly every image is in one listing
        item_ids[at] = _image_item_id(listing_items, shown[at])
        scanned.several.append(start + at)
    scanned.item_id += item_ids


_ITEM_ID = operator.attrgetter("item_id")


def _image_item_id(listing_items, shown):
    """The item id of an image shown by the listings `shown` (indices into `listing_items`, their item ids): the
    smallest of theirs, so that it does not depend on the listings' order (nor on which copy of its bytes is kept)."""
    return min(map(listing_items.__getitem__, shown))


def _drop_duplicate_content(candidates):
    """Keeps one image per distinct content (the smallest id); its listings take over the others'."""
    # Found by counting in C; a loop in Python over the few images whose content repeats. Only digests whose
    # CRC-32C repeats are counted (equal bytes, equal CRCs): NumPy counts the ints, a Counter of every digest took
    # 0.1 CPU s at 400k.
    scanned = candidates.scanned
    passed = list(map(operator.not_, map(candidates.image_status.__contains__, scanned.image_ids)))
    digests = list(itertools.compress(scanned.sha256, passed))
    crcs = np.fromiter(itertools.compress(scanned.crc32c, passed), np.int64, len(digests))
    values, counts = np.unique(crcs, return_counts=True)
    shared_crc = np.isin(crcs, values[counts > 1]).tolist()
    counted = collections.Counter(itertools.compress(digests, shared_crc))
    repeated = {digest for digest, count in counted.items() if count > 1}
    by_digest = collections.defaultdict(list)
    passed_places = itertools.compress(zip(scanned.image_ids, itertools.count()), passed)
    for copy, digest in itertools.compress(zip(passed_places, digests), map(repeated.__contains__, digests)):
        by_digest[digest].append(copy)
    for copies in by_digest.values():
        (keeper, place), *duplicates = sorted(copies)
        for duplicate, _ in duplicates:
            candidates.image_status[duplicate] = "duplicate_content"
            candidates.keeper[duplicate] = keeper
            candidates.listings_of_image[keeper] = sorted(
                set(candidates.listings_of_image[keeper] + candidates.listings_of_image[duplicate])
            )
        shown = candidates.listings_of_image[keeper]
        scanned.item_id[place] = _image_item_id(candidates.listing_items, shown)
        if len(shown) > 1:
            scanned.several.append(place)


# --- labels and split --------------------------------------------------------


def _surviving(candidates):
    """The image ids without a drop reason, sorted.

    Reasons are only added before the write, so the last call's list, filtered, is this one, in order: one sort
    of every image id a build instead of one a step (scan, labels, grouping, split; 0.2-0.5 s each at 400k).
    """
    previous = candidates.survivors if candidates.survivors is not None else sorted(candidates.listings_of_image)
    alive = _without_reason(candidates, previous)
    candidates.survivors = list(itertools.compress(previous, alive.tolist()))  # a C loop, not a listcomp
    if candidates.survivor_positions is not None:  # their positions filtered alike
        candidates.survivor_positions = candidates.survivor_positions[alive]
    return candidates.survivors


def _label_images(candidates, options):
    """Returns (vocabulary, image id -> product type, conflict counts); the images in scan order."""
    scanned, listings = candidates.scanned, candidates.listings
    # The images the scan passed and the duplicates left, in scan order: their first listing's type was taken
    # during the scan; only those shown by several listings look them up again.
    alive = list(map(operator.not_, map(candidates.image_status.__contains__, scanned.image_ids)))
    survivors = itertools.compress(scanned.image_ids, alive)
    image_types = dict(zip(survivors, itertools.compress(scanned.product_type, alive)))
    several = {}  # place -> its listings' types
    for place in sorted(set(scanned.several)):
        if alive[place]:
            shown = candidates.listings_of_image[scanned.image_ids[place]]
            several[place] = [listings[index].product_type for index in shown]
    resolved, conflicting_images = labels.resolve_image_types(several)
    image_types.update(zip(map(scanned.image_ids.__getitem__, resolved), resolved.values()))
    for place, product_type in resolved.items():  # the scan's column now holds each image's type (`_number_kept`)
        scanned.product_type[place] = product_type
    vocabulary = labels.make_vocabulary(
        collections.Counter(image_types.values()),
        options.min_examples_per_class,
        options.max_classes,
        options.rare_classes,
    )
    _mark_dropped_types(candidates, vocabulary, image_types, image_types.values(), RARE_CLASS)
    conflicts = {
        "items": None,  # counted by `_complete_during_write`: the manifest's alone, not the plan's
        "images": conflicting_images,
        "rule": labels.CONFLICT_RULE,
    }
    return vocabulary, image_types, conflicts


def _mark_dropped_types(candidates, vocabulary, image_ids, product_types, reason):
    """Marks `reason` on the images of `image_ids` whose type (`product_types`, in the same order) `vocabulary`
    drops (a loop only if it drops one). The types are given, not looked up by image id: 421k look-ups in a dict
    keyed by id took 0.27 CPU s at 421k."""
    dropped = {product_type for product_type, name in vocabulary.mapping.items() if name is None}
    if dropped:
        in_dropped = map(dropped.__contains__, product_types)  # C loops, not a generator
        candidates.image_status.update(zip(itertools.compress(image_ids, in_dropped), itertools.repeat(reason)))


class _Kept(NamedTuple):
    """The images kept after the labels, numbered once in id order: grouping, group floors, split and plan work on
    these numbers by NumPy (a dozen passes over dicts keyed by image id were most of a 400k build's serial step)."""

    image_ids: list  # sorted
    group: np.ndarray  # an image's group: the number of its group's smallest image id
    type_code: np.ndarray  # an image's product type, an index into type_names
    type_names: list  # the product types, sorted
    position: np.ndarray  # an image's position in the `_ImageIndex`
    place: np.ndarray  # an image's place in the scan's columns (`_Scanned`)


def _number_kept(candidates, image_types, places, group):
    """A `_Kept` of the scanned images at `places` (in image id order) and their `group` numbers, with their types
    and positions: read from the scan's columns by place, the only look-ups by name those of the types'
    codes (576 at ABO size: a small dict, where one keyed by 421k image ids took 0.6 CPU s)."""
    scanned, at = candidates.scanned, places.tolist()
    type_names = sorted(set(image_types.values()))
    code_of = dict(zip(type_names, itertools.count()))
    type_code = np.fromiter(map(code_of.__getitem__, map(scanned.product_type.__getitem__, at)), np.int64, len(at))
    image_ids = list(map(scanned.image_ids.__getitem__, at))
    return _Kept(image_ids, group, type_code, type_names, scanned.position[places], places)


def _without_reason(candidates, image_ids):
    """A bool array: which of `image_ids` have no drop reason (yet)."""
    status = candidates.image_status
    return np.fromiter(map(operator.not_, map(status.__contains__, image_ids)), np.bool_, len(image_ids))


def _kept_places(candidates):
    """The places of the scanned images without a drop reason, in image id order (an int array)."""
    scanned = candidates.scanned
    in_id_order = np.empty(len(scanned.image_ids), np.int64)
    in_id_order[scanned.rank] = np.arange(len(in_id_order))
    return in_id_order[_without_reason(candidates, scanned.image_ids)[in_id_order]]


def _place_of(image_index, scanned, image_id):
    """An image's place in the scan's columns, -1 if it was not scanned."""
    position = image_index.position.get(image_id, _ImageIndex.NOT_IN_ARCHIVE)
    return -1 if position == _ImageIndex.NOT_IN_ARCHIVE else int(scanned.place[position])


def _ints(arrays):
    """The int arrays `arrays` end to end (an empty array for none)."""
    return np.concatenate(arrays) if arrays else np.zeros(0, np.int64)


def _group_kept(candidates, image_index, image_types, near_duplicates=()):
    """The `_Kept` images, grouped by listings, items, bytes and near-duplicate pairs.

    The graph `split.group_numbers` makes of image ids, made of the scan's integers: the images kept numbered in id
    order by their ranks, joined to their listings' items by the (place, listing) pairs the scan took.
    """
    scanned = candidates.scanned
    places = _kept_places(candidates)
    number = np.full(len(scanned.image_ids) + 1, -1, np.int64)  # a place's number if kept; the last: place -1's
    number[places] = np.arange(len(places))
    place_of = functools.partial(_place_of, image_index, scanned)
    # A content duplicate's place in its listings, and in its pairs, is the copy kept's. The images kept have
    # distinct contents (duplicates are dropped before): no edges by content to add.
    for duplicate, keeper in candidates.keeper.items():
        number[place_of(duplicate)] = number[place_of(keeper)]
    # (a duplicate's place now has its copy's number: a pair naming it needs no look-up of the copy)
    pairs = np.array([number[[place_of(first), place_of(second)]] for first, second in near_duplicates], np.int64)
    pairs = pairs.reshape(-1, 2)
    pairs = pairs[np.all(pairs >= 0, axis=1)]  # a pair with an image not kept: none
    shown = number[_ints(scanned.shown_places)]
    named = shown >= 0  # a listing's image not kept is as if it did not name it
    listing_items = candidates.listing_items
    item_number = dict(zip(dict.fromkeys(listing_items), itertools.count()))
    items = np.fromiter(map(item_number.__getitem__, listing_items), np.int64, len(listing_items))
    item_nodes = items[_ints(scanned.shown_listings)[named]] + len(places)
    first_ends, second_ends = np.concatenate([shown[named], pairs[:, 0]]), np.concatenate([item_nodes, pairs[:, 1]])
    group = split.smallest_of_component(first_ends, second_ends, len(places), len(places) + len(item_number))
    return _number_kept(candidates, image_types, places, group)


def _class_codes(vocabulary, kept):
    """Each kept image's class under `vocabulary`, an index into its names (-1: dropped)."""
    code_of = {name: code for code, name in enumerate(vocabulary.names)}
    class_of_type = np.array([code_of.get(vocabulary.mapping[name], -1) for name in kept.type_names], np.int64)
    return class_of_type[kept.type_code]


def _apply_group_floors(candidates, options, vocabulary, kept):
    """Drops (or merges into OTHER) the classes with fewer groups than the split's floors need.

    Demoting a class only adds groups to the others under "drop"; under "other"
    the merged images may outvote a kept class in a mixed group, so the counts are
    taken again until every class left has its groups. OTHER is dropped only when
    it is the last class short of them: the classes merged into it may fill it.

    Returns:
      `(vocabulary, the class of each group number as a code of its names (-1: none), groups with images of more
      than one type)`; images left without a class are marked rare_class_groups.

    Raises:
      UserInputError: when fewer than two classes are left.
    """
    _check_image_floor(options, vocabulary)
    needed = sum(split.positive_floors(options.split_fractions, options.min_groups_per_split))
    most_groups = 0  # the most any class had, in any round: what the floors could be lowered to
    while True:
        class_of_group = split.vote_classes(kept.group, _class_codes(vocabulary, kept), len(kept.image_ids))
        groups_per_class = np.bincount(class_of_group[class_of_group >= 0], minlength=len(vocabulary.names))
        most_groups = max(most_groups, int(groups_per_class.max(initial=0)))
        rare = {name for name, count in zip(vocabulary.names, groups_per_class.tolist()) if count < needed}
        if not rare:
            break
        if rare != {labels.OTHER}:
            rare.discard(labels.OTHER)  # the classes merged into it this round may give it its groups
        vocabulary = labels.demote_classes(vocabulary, rare, options.rare_classes)
    if len(vocabulary.names) < 2:
        raise UserInputError(_too_few_classes(options, len(vocabulary.names), most_groups, len(np.unique(kept.group))))
    kept_types = map(kept.type_names.__getitem__, kept.type_code.tolist())
    _mark_dropped_types(candidates, vocabulary, kept.image_ids, kept_types, RARE_CLASS_GROUPS)
    types_of_groups = np.unique(kept.group * len(kept.type_names) + kept.type_code) // max(len(kept.type_names), 1)
    return vocabulary, class_of_group, int(np.count_nonzero(np.bincount(types_of_groups) > 1))


def _check_image_floor(options, vocabulary):
    """Raises the one-line error of a vocabulary under two classes before any group floor: the group counts
    `_too_few_classes` gives would then read as the cause ("the most any class had is 173 of 173 groups")."""
    if len(vocabulary.names) < 2:
        other = f" ({labels.OTHER}, the rare types merged, among them)" if labels.OTHER in vocabulary.names else ""
        # At --min-examples-per-class 1 every type is a class already: lowering it cannot help.
        lower = "lower --min-examples-per-class or " if options.min_examples_per_class > 1 else ""
        raise UserInputError(
            f"only {len(vocabulary.names)} class(es) have at least {options.min_examples_per_class} images{other}: "
            f"a build needs two; {lower}give more data"
        )


def _too_few_classes(options, num_classes, most_groups, num_groups):
    """The one-line error of a build left with under two classes: the floors in force (none in a split of fraction
    0), as given when they differ, and the groups there were."""
    floors = split.positive_floors(options.split_fractions, options.min_groups_per_split)
    as_given = ""
    if floors != tuple(options.min_groups_per_split):
        as_given = f" (--min-groups-per-split {_spelled(options.min_groups_per_split)}"
        as_given += f" with --split {_spelled(options.split_fractions)})"
    # A floor of 1 is the least there is: advising to lower it would send the user round in a circle.
    lower = [
        flag
        for flag, floor in (
            ("--min-examples-per-class", options.min_examples_per_class),
            ("--min-groups-per-split", max(floors)),
        )
        if floor > 1
    ]
    advice = f"lower {' or '.join(lower)}, or give more data" if lower else "give more data"
    return (
        f"only {num_classes} class(es) have at least {options.min_examples_per_class} images and "
        f"{_spelled(floors)} groups per split{as_given}: {sum(floors)} groups a class, the most any class had is "
        f"{most_groups} of {num_groups} groups in all; {advice}"
    )


def _rare_class_counts(options, by_images, final, image_types):
    """Product types (and their images) that are no class of their own, by the floor they missed."""
    reasons = {}
    for product_type in by_images.mapping:
        if final.mapping[product_type] != by_images.mapping[product_type]:
            reasons[product_type] = RARE_CLASS_GROUPS
        elif by_images.mapping[product_type] != product_type:
            reasons[product_type] = RARE_CLASS
    images = collections.Counter(reasons[name] for name in image_types.values() if name in reasons)
    return {
        "action": options.rare_classes,
        "types": dict(sorted(collections.Counter(reasons.values()).items())),
        "images": dict(sorted(images.items())),
    }


def _plan_splits(candidates, options, kept, class_of_group):
    """Returns dict split -> the numbers of its `kept` images in their seeded, shuffled order (an int array), from
    the keys hashed during the scan."""
    scanned = candidates.scanned
    fractions, words = np.concatenate(scanned.key_fractions), np.concatenate(scanned.shuffle_words)
    sizes = np.bincount(kept.group, minlength=len(kept.image_ids))
    keys = np.flatnonzero(sizes)  # a group's key is its smallest image id: in id order, as the numbers are
    split_of_group = np.zeros(len(sizes), np.int64)
    split_of_group[keys] = split.deal_groups(
        sizes[keys],
        class_of_group[keys],
        fractions[kept.place[keys]],
        options.split_fractions,
        options.min_groups_per_split,
    )
    alive = _without_reason(candidates, kept.image_ids)
    split_of_image = split_of_group[kept.group]
    members = {}
    for code, name in enumerate(split.SPLITS):
        numbers = np.flatnonzero(alive & (split_of_image == code))
        members[name] = numbers[split.shuffled_positions(words[kept.place[numbers]])]
    return members


def check_split_sizes(split_members, options):
    """Refuses a split asked non-empty (fraction > 0) that the grouping left empty; warns on stderr of one left
    with under half its share. Joined near-duplicates can chain most images into one group (issue 23): the build
    then ended without validation or test images, silently.

    Raises:
      UserInputError: naming the empty split, and --join-near-duplicates when given.
    """
    total = sum(len(members) for members in split_members.values())
    hint = (
        ": --join-near-duplicates joined most images into few groups (see the audit's near_duplicate_groups.csv; "
        "raise its --pixel-similarity or lower --hash-distance)"
        if options.join_near_duplicates is not None
        else ": too few groups of images for these fractions"
    )
    for name, fraction in zip(split.SPLITS, options.split_fractions):
        share = len(split_members[name]) / total if total else 0.0
        if fraction > 0 and len(split_members[name]) == 0:
            raise UserInputError(f"the {name} split would be empty (--split asks {fraction:g} of the images){hint}")
        if fraction > 0 and share < fraction / 2:
            print(
                f"WARNING: the {name} split has {share:.1%} of the images, --split asks {fraction:.0%}{hint}",
                file=sys.stderr,
            )


# --- plan of the write -------------------------------------------------------


class PlanItem(NamedTuple):
    """One record to write: where its image is, what it is, and its size if stored as-is."""

    image_id: str
    path: str  # relative to images/<variant>/
    offset: int | None  # in the tar, None in a folder
    size: int
    sha256: str  # hex digest of the file as shipped
    crc32c: int  # of the same bytes: the write's check that it reads what the scan hashed
    label: int
    product_type: str
    item_id: str
    copy_size: tuple | None  # (height, width) when the file is stored as-is, else None
    group: str  # key of its group (the split's unit), for the manifest's groups per class; last: workers get the rest


_FIRST, _SECOND = operator.itemgetter(0), operator.itemgetter(1)


class _ItemSource(NamedTuple):
    """What the `PlanItem` fields the fingerprint does not hash are taken from, by `_item_columns` when a shard is
    submitted: indexed by the `_Kept` numbers (position, place), as `_plan_columns` indexes them."""

    kept: "_Kept"
    paths: list  # the `_ImageIndex`'s
    offsets: np.ndarray  # the `_ImageIndex`'s, -1 for a file in a folder
    sizes: np.ndarray
    crc32c: list  # the scan's columns
    item_id: list
    copy_size: list
    names: list  # the classes'


def _item_source(candidates, image_index, vocabulary, kept):
    scanned = candidates.scanned
    offsets, sizes = np.asarray(image_index.offsets, np.int64), np.asarray(image_index.sizes, np.int64)
    return _ItemSource(
        kept, image_index.paths, offsets, sizes, scanned.crc32c, scanned.item_id, scanned.copy_size, vocabulary.names
    )


def _plan_columns(candidates, source, class_codes, numbers):
    """`(image ids, SHA-256s, labels, sizes, the label's part of the fingerprint's text of each)` of the `kept` images
    `numbers` (an int array), in their order: what the fingerprint hashes and the shards' sizes.

    Built a column at a time by `map` over bound look-ups and NumPy indexing: at 400k images a loop in Python over
    the items was most of the plan's serial time. The other fields are taken when their shard is submitted
    (`_item_columns`), the fingerprint's text here.
    """
    kept = source.kept
    image_ids = list(map(kept.image_ids.__getitem__, numbers.tolist()))
    label_numbers = class_codes[numbers].tolist()  # a label is a class's index in the names
    digests = list(map(candidates.scanned.sha256.__getitem__, kept.place[numbers].tolist()))
    # "<image id>:<SHA-256>:<label>;" an item, as four strings joined by C loops: the label's part made once a
    # label, not formatted an item (0.5 of 2.3 CPU s of the plan at 400k, load 10).
    label_parts = list(map({number: f":{number};" for number in set(label_numbers)}.__getitem__, label_numbers))
    return image_ids, digests, label_numbers, source.sizes[kept.position[numbers]], label_parts


def _item_columns(source, numbers, image_ids, digests, label_numbers):
    """The `PlanItem` fields as columns of the `kept` images `numbers`, whose ids, SHA-256s and labels are given.

    Taken when the shard is submitted, while the workers write the shards before it: the paths, CRCs, types, item
    ids and sizes of every item were a third of the plan's CPU seconds in the serial step before the write.
    """
    kept = source.kept
    at, places = kept.position[numbers], kept.place[numbers].tolist()
    return (
        image_ids,
        list(map(source.paths.__getitem__, at.tolist())),
        _offsets_or_none(source.offsets[at].tolist()),
        source.sizes[at].tolist(),
        digests,
        list(map(source.crc32c.__getitem__, places)),
        label_numbers,
        list(map(source.names.__getitem__, label_numbers)),
        list(map(source.item_id.__getitem__, places)),
        list(map(source.copy_size.__getitem__, places)),
        list(map(kept.image_ids.__getitem__, kept.group[numbers].tolist())),
    )


def _fingerprint_text(image_ids, digests, label_parts):
    """The fingerprint's text of items, `<image id>:<SHA-256>:<label>;` each (`label_parts` are the `:<label>;`s).

    One list interleaved by slice assignments (C copies), then joined: a tuple an item, chained, was 0.3 CPU s of
    the serial step at 423k.
    """
    parts = [":"] * (4 * len(image_ids))
    parts[0::4], parts[2::4], parts[3::4] = image_ids, digests, label_parts
    return "".join(parts)


_SHARD_COLUMNS = ("numbers", "image_ids", "digests", "labels")  # what `_item_columns` takes of a shard


def _make_plan(candidates, image_index, vocabulary, kept, split_members, options):
    """The shards, each the `kept` numbers of its records and what the fingerprint hashed of them (`_shard_pieces`
    makes the items), plus a fingerprint."""
    shard_bytes = options.shard_mb * 2**20
    plan = {"options": options.output_options(), "classes": list(vocabulary.names), "shards": []}
    # Locations are where bytes sit in this copy of the input, not what they are:
    # the fingerprint hashes content (ids, digests, labels) so a moved tar resumes.
    digest = hashlib.sha256(json.dumps([plan["options"], plan["classes"]], sort_keys=True).encode())
    class_codes = _class_codes(vocabulary, kept)  # once, not once a split
    source = _item_source(candidates, image_index, vocabulary, kept)
    for name in split.SPLITS:
        numbers = split_members[name]
        *columns, sizes, label_parts = _plan_columns(candidates, source, class_codes, numbers)
        num_shards = shards.num_shards_for(int(sizes.sum()), shard_bytes)
        shard_columns = zip(*(shards.split_evenly(column, num_shards) for column in (numbers, *columns)))
        for index, (columns_of_shard, shard_label_parts) in enumerate(
            zip(shard_columns, shards.split_evenly(label_parts, num_shards))
        ):
            _, image_ids, digests, _ = columns_of_shard
            plan["shards"].append(
                {
                    "split": name,
                    "file": schema.shard_filename(name, index, num_shards),
                    "num_items": len(image_ids),
                    "source": source,
                    **dict(zip(_SHARD_COLUMNS, columns_of_shard)),
                }
            )
            digest.update(plan["shards"][-1]["file"].encode())
            # One update a shard: the bytes of one an item.
            digest.update(_fingerprint_text(image_ids, digests, shard_label_parts).encode())
    plan["fingerprint"] = digest.hexdigest()
    return plan


def _shard_pieces(shard):
    """A shard's `PlanItem`s in pieces of `PIECE_EXAMPLES`, made the first time they are asked for: when the shard
    is submitted, while the workers write the shards before it, not in the serial step before the write (0.4 of
    its CPU seconds at 400k, and the columns `_item_columns` takes)."""
    if shard.get("pieces") is None:
        columns = _item_columns(shard.pop("source"), *(shard.pop(key) for key in _SHARD_COLUMNS))
        items = list(map(tuple.__new__, itertools.repeat(PlanItem), zip(*columns)))
        pieces = [items[start : start + PIECE_EXAMPLES] for start in range(0, len(items), PIECE_EXAMPLES)]
        shard["pieces"] = pieces or [[]]
    return shard["pieces"]


# --- output folder: fresh, resumed, finished or refused ----------------------


def _is_build_file(name):
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in _BUILD_PATTERNS)


# What the state folder of an unfinished build holds: its plan and one result per finished shard.
_STATE_PATTERNS = (PLAN_FILE, f"{PLAN_FILE}.tmp*", f"{schema.DATASET_NAME}-*.{schema.FILE_FORMAT}-*.json*")


def _foreign_entry(output):
    """The first entry of `output` (or of its state folder) that a build did not write, or None."""
    for name in outputs.contents(output):
        if not _is_build_file(name):
            return name
    state_dir = os.path.join(output, STATE_DIR)
    if os.path.islink(state_dir) or (os.path.lexists(state_dir) and not os.path.isdir(state_dir)):
        return STATE_DIR
    if os.path.isdir(state_dir):
        for name in sorted(os.listdir(state_dir)):
            if not any(fnmatch.fnmatchcase(name, pattern) for pattern in _STATE_PATTERNS):
                return os.path.join(STATE_DIR, name)
    return None


def _read_build_state(output):
    """The manifest, else the saved plan, of a build in `output`; None if there is neither.

    Raises:
      UserInputError: the file is not JSON, or not a build's.
    """
    for path, what in (
        (os.path.join(output, shards.MANIFEST), "build manifest"),
        (os.path.join(output, STATE_DIR, PLAN_FILE), "build plan"),
    ):
        state = read_json(path, what=what)
        if state is None:
            continue
        if not isinstance(state, dict) or not isinstance(state.get("options"), dict) or "fingerprint" not in state:
            raise NotABuildError(
                f"{path!r} is not the {what} of an abo_tf build: move it away or choose another folder"
            )
        return state
    return None


def _holds_only_a_build(output):
    """Recognises a build written before output markers existed: only build files, a build's manifest or plan."""
    if _foreign_entry(output) is not None:
        return False
    try:  # a manifest that is not JSON raises: the message says so
        return _read_build_state(output) is not None or outputs.contents(output) == [STATE_DIR]
    except NotABuildError:
        return False


def _claim_output(options):
    """Claims --output before any work: a file, an unwritable path or someone else's folder fails here."""
    return outputs.claim(options.output, COMMAND, "--output", recognise=_holds_only_a_build)


def _check_output(options, folder, fingerprint=None):
    """Refuses a folder holding a different build unless --overwrite; clears it if allowed.

    Returns:
      True when the folder holds the same build, finished or interrupted.
    """
    existing = _read_build_state(options.output)
    if existing is None:
        _remove_build(folder)  # at most a state folder killed before its plan was saved: nothing to resume
        return False
    same = existing.get("options") == options.output_options() and fingerprint in (None, existing.get("fingerprint"))
    if same:
        return True
    if not options.overwrite:
        raise UserInputError(
            f"--output {options.output!r} holds a different build (other options or inputs): pass --overwrite to "
            f"replace it, or choose another folder"
        )
    _remove_build(folder)
    return False


def _remove_build(folder):
    """Deletes what a build wrote; refuses, deleting nothing, if the folder also holds anything else."""
    foreign = _foreign_entry(folder.path)
    if foreign is not None:
        raise outputs.OutputFolderError(
            f"--output {folder.path!r} holds {foreign!r}, which build_records did not "
            "write: move it away, or choose another folder"
        )
    outputs.remove_owned(folder, _BUILD_PATTERNS)


# --- pass 2: write -----------------------------------------------------------


def _encode_piece(items, reader, max_side):
    """Worker: the framed records of one piece (`PlanItem`s as plain tuples, without the group), the rejected
    images' reasons, how many were re-encoded."""
    framed, rejected = [], {}
    reencoded = 0
    locations = [(path, (offset, size)) for _, path, offset, size, *_ in items]
    for item, data in zip(items, reader.read_many(locations)):
        image_id, _, _, size, sha256, crc32c, label, product_type, item_id, copy_size = item
        # The bytes the scan hashed, checked by size and CRC-32C (1 us an image, SHA-256 9 us): any accidental
        # change (a file rewritten or re-extracted mid-build, a damaged read) is caught, all but 2**-32 of them.
        if len(data) != size or google_crc32c.value(data) != crc32c:
            # The rerun scans the new bytes: another fingerprint than the partial output's, hence --overwrite.
            what = f"{len(data)} bytes, {size} when scanned" if len(data) != size else "another CRC-32C than scanned"
            raise ImageChangedError(
                f"image {image_id} in --images changed while the build was running ({what}): once nothing writes "
                "to it, run the same command with --overwrite"
            )
        try:
            if copy_size:
                jpeg, (height, width), was_reencoded = data, copy_size, False
            else:
                jpeg, height, width, was_reencoded = images.prepare_image(data, max_side)
        except images.RejectedImage as error:
            rejected[image_id] = error.reason
            continue
        reencoded += was_reencoded
        record = schema.encode_fields(jpeg, label, product_type, image_id, sha256, item_id, height, width)
        framed.append(shards.frame_record(record))
    return b"".join(framed), rejected, reencoded


# What is saved of a written shard, beside the plan: what its worker returned. Its records (the plan's items less
# the rejected ones) are not saved: a resumed build has the same plan (the fingerprint says so) and takes them from it.
_SHARD_OUTCOME = ("rejected", "reencoded", "num_bytes", "sha256")


def _finished_shard(options, shard):
    """The saved outcome of a shard an earlier, interrupted run of the same plan wrote, or None (write it again)."""
    path = os.path.join(options.output, STATE_DIR, shard["file"] + ".json")
    try:
        saved = read_json(path, what="shard result")
    except UserInputError:
        return None  # damaged bookkeeping of our own: write the shard again
    if not isinstance(saved, dict) or any(key not in saved for key in _SHARD_OUTCOME):
        return None  # not ours, or an older build's: write the shard again
    outcome = tuple(saved[key] for key in _SHARD_OUTCOME)
    return outcome if _describes(outcome, shard, os.path.join(options.output, shard["file"])) else None


def _describes(outcome, shard, shard_path):
    """Whether a saved outcome is this shard's, as its file now is: it becomes the manifest's counts, sizes and hashes.

    An edited or stale one (another shard's outcome, an image of no shard's rejected, a written image called
    rejected, a file changed or cut since) had gone into the manifest as it was, or stopped the build with a
    traceback (a count that is a string). Which images were rejected is checked by their number only (their ids
    would take parsing every record). Indexing a finished shard (hash, records, CRCs) took 0.14 CPU s per 123 MiB
    (page-cached, load 0.7): about 3 s for the 2.5 GB of a full-size build, once per resume.
    """
    rejected, reencoded, num_bytes, sha256 = outcome
    image_ids = {item.image_id for piece in _shard_pieces(shard) for item in piece}
    well_formed = (
        isinstance(rejected, dict)
        and set(rejected) <= image_ids
        and all(isinstance(reason, str) for reason in rejected.values())
        and shards.is_count(reencoded)
        and reencoded <= len(image_ids)
        and shards.is_count(num_bytes)
    )
    if not well_formed or not os.path.isfile(shard_path) or os.path.getsize(shard_path) != num_bytes:
        return False
    try:
        digest, records, _ = shards.index_shard(shard_path)
    except shards.VerificationError:  # a damaged record
        return False
    return digest == sha256 and records == len(image_ids) - len(rejected)


def _write_shard_file(pieces, path, reader, max_side):
    """Worker: writes one shard's records to `path` (under `.tmp` until complete).

    A worker writes the whole shard and hashes it as it goes: only this small
    summary travels back, so the records' bytes never cross a pipe and the
    parent stays free to hand out the next shard.

    Returns:
      `(rejected image id -> reason, images re-encoded, bytes written, SHA-256 of the shard)`.
    """
    digest, rejected, reencoded, num_bytes = hashlib.sha256(), {}, 0, 0
    with open(path + ".tmp", "wb") as handle:
        for piece in pieces:  # a piece at a time: a worker's memory is one piece's images
            data, piece_rejected, piece_reencoded = _encode_piece(piece, reader, max_side)
            handle.write(data)
            digest.update(data)
            rejected.update(piece_rejected)
            reencoded += piece_reencoded
            num_bytes += len(data)
    os.replace(path + ".tmp", path)
    return rejected, reencoded, num_bytes, digest.hexdigest()


def _write_shards(plan, reader, options, pool, meanwhile):
    """Writes every shard not finished by an earlier run; returns per-shard results.

    `meanwhile` (a function without arguments) is called once the first shards are submitted.

    Each shard is one worker task, written under a temporary name and renamed
    when complete, its result saved beside the plan as it arrives, so a killed
    build resumes with the unfinished shards and ends with the same bytes.
    """
    results = {}
    for index, shard in enumerate(plan["shards"]):
        outcome = _finished_shard(options, shard)
        if outcome is not None:
            results[index] = _shard_result(shard, outcome)
    todo = collections.deque(index for index in range(len(plan["shards"])) if index not in results)
    total = sum(plan["shards"][index]["num_items"] for index in todo)
    running = {}

    def submit():
        index = todo.popleft()
        path = os.path.join(options.output, plan["shards"][index]["file"])
        # Plain tuples without the group: a named tuple pickles through Python code, item by item.
        pieces = [list(map(_WITHOUT_GROUP, piece)) for piece in _shard_pieces(plan["shards"][index])]
        running[pool.submit(_write_shard_file, pieces, path, reader, options.resize)] = index

    with console.progress_bar(total=total, desc="write", unit="img", enabled=options.progress) as bar:
        # One shard more than workers in flight: none waits for the parent, and a
        # stopped build waits for at most that many shards to end.
        while todo and len(running) <= options.workers:
            submit()
        meanwhile()
        while running:
            done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                index = running.pop(future)
                results[index] = _save_shard_result(options, plan["shards"][index], future.result(), bar)
                if todo:
                    submit()
    return [results[index] for index in range(len(plan["shards"]))]


def _save_shard_result(options, shard, outcome, bar):
    """The result of a shard a worker wrote, its outcome saved beside the plan."""
    saved = dict(zip(_SHARD_OUTCOME, outcome))
    write_json(os.path.join(options.output, STATE_DIR, shard["file"] + ".json"), saved, indent=None)
    result = _shard_result(shard, outcome)
    bar.update(len(result["written"]) + len(result["rejected"]))
    return result


def _shard_result(shard, outcome):
    """A written shard's result: its worker's outcome and the records it holds; the shard's items are then freed."""
    rejected, reencoded, num_bytes, sha256 = outcome
    # Built from the plan's items, whose strings are shared, not from the worker's copies; by C loops (map).
    items = itertools.chain.from_iterable(_shard_pieces(shard))
    if rejected:
        items = [item for item in items if item.image_id not in rejected]
    written = list(map(_WRITTEN, items))
    shard["pieces"] = None  # written: its items are no longer needed
    return {
        "split": shard["split"],
        "file": shard["file"],
        "written": written,
        "rejected": rejected,
        "reencoded": reencoded,
        "num_bytes": num_bytes,
        "sha256": sha256,
    }


# --- checks, manifest, summary ----------------------------------------------


_IMAGE_ID, _SHA256, _LABEL, _GROUP = map(operator.itemgetter, range(4))  # of a record in a shard result's "written"
_WRITTEN = operator.itemgetter(*(PlanItem._fields.index(name) for name in ("image_id", "sha256", "label", "group")))
_WITHOUT_GROUP = operator.itemgetter(slice(0, PlanItem._fields.index("group")))  # what a worker gets of an item


def _check_no_leak(shard_results):
    """Aborts if an image id or an image content was written to two splits."""
    # Sets per split, intersected in C: a setdefault per record and key was 2.4 s of a 400k build under load.
    ids, contents = collections.defaultdict(set), collections.defaultdict(set)
    for result in shard_results:
        ids[result["split"]].update(map(_IMAGE_ID, result["written"]))
        contents[result["split"]].update(map(_SHA256, result["written"]))
    for kind, keys in (("id", ids), ("sha256", contents)):
        for first, second in itertools.combinations(keys, 2):
            both = keys[first] & keys[second]
            if both:
                raise BuildError(
                    f"image {kind} {min(both)} is in both {first} and {second}: the split leaks; no manifest written"
                )


def _account(candidates, listings_report, shard_results):
    """Final status of every listing and image; checks kept + dropped == read."""
    written = set()
    for result in shard_results:
        written.update(map(_IMAGE_ID, result["written"]))
        candidates.image_status.update(result["rejected"])
    candidates.image_status.update(dict.fromkeys(written, KEPT))
    listing_status = collections.Counter({"malformed_json": len(listings_report.malformed_lines)})
    for index, reason in enumerate(candidates.status):
        if reason is None:
            image_ids = candidates.kept_ids(index) if candidates.keeper else candidates.image_ids[index]
            reason = KEPT if not written.isdisjoint(image_ids) else "image_" + candidates.image_status[image_ids[0]]
        listing_status[reason] += 1
    image_status = collections.Counter(candidates.image_status.values())
    if sum(listing_status.values()) != listings_report.lines_read:
        raise BuildError(f"listings: {sum(listing_status.values())} accounted for, {listings_report.lines_read} read")
    if sum(image_status.values()) != candidates.num_referenced or image_status[KEPT] != len(written):
        raise BuildError(f"images: {sum(image_status.values())} accounted for, {candidates.num_referenced} referenced")
    return listing_status, image_status


def _split_summary(plan, shard_results, vocabulary):
    """Per split: examples, bytes, images per class, groups with an image of each class, and the shards."""
    splits, class_groups = {}, collections.defaultdict(set)
    for shard, result in zip(plan["shards"], shard_results):
        entry = splits.setdefault(
            shard["split"], {"num_examples": 0, "num_bytes": 0, "per_class": collections.Counter(), "shards": []}
        )
        entry["num_examples"] += len(result["written"])
        entry["num_bytes"] += result["num_bytes"]
        # Counted and collected by C loops (map, zip): a generator's frame per record was a serial cost.
        labels_written = list(map(_LABEL, result["written"]))
        entry["per_class"].update(map(vocabulary.names.__getitem__, labels_written))
        class_groups[shard["split"]].update(zip(labels_written, map(_GROUP, result["written"])))
        entry["shards"].append(
            {
                "file": shard["file"],
                "num_examples": len(result["written"]),
                "num_bytes": result["num_bytes"],
                "sha256": result["sha256"],
            }
        )
    for name, entry in splits.items():
        entry["per_class"] = dict(sorted(entry["per_class"].items()))
        groups = collections.Counter(vocabulary.names[label] for label, _ in class_groups[name])
        entry["groups_per_class"] = dict(sorted(groups.items()))
    return splits


def _make_manifest(options, plan, prepared, shard_results, elapsed):
    candidates, report, vocabulary = prepared.candidates, prepared.report, prepared.vocabulary
    listing_status, image_status = _account(candidates, report, shard_results)
    return {
        "dataset": schema.DATASET_NAME,
        "version": schema.DATASET_VERSION,
        "options": options.output_options(),
        "fingerprint": plan["fingerprint"],
        "inputs": {
            "listings": {
                "path": os.path.abspath(options.listings),
                "files": report.files,
                "lines_sha256": report.sha256.hexdigest(),
                "truncated": report.truncated,
            },
            "images": {
                "path": os.path.abspath(options.images),
                "images_csv_sha256": prepared.images_csv_sha256,
                "images_csv_rows": prepared.images_csv_rows,
                "scanned_content_sha256": prepared.scanned_content_sha256,
                "truncated": prepared.images_truncated,
            },
        },
        "classes": list(vocabulary.names),
        "splits": _split_summary(plan, shard_results, vocabulary),
        "listings": {
            "read": report.lines_read,
            "kept": listing_status.pop(KEPT, 0),
            "dropped": dict(sorted(listing_status.items())),
            "malformed_lines": report.malformed_lines[:20],
            "malformed_reasons": dict(sorted(report.malformed_reasons.items())),
            "unknown_fields": dict(sorted(report.unknown_keys.items())),
        },
        "images": {
            "referenced": candidates.num_referenced,
            "kept": image_status.pop(KEPT, 0),
            "dropped": dict(sorted(image_status.items())),
            "reencoded": sum(result["reencoded"] for result in shard_results),
        },
        "label_conflicts": prepared.conflicts,
        "rare_classes": prepared.rare_classes,
        "elapsed_seconds": round(elapsed, 2),
    }


def _finish(folder, manifest, options):
    """Writes labels, TFDS metadata, the resolved config and, last, the manifest; removes the build state."""
    output = folder.path
    options_lib.save_config(options, output)
    shards.write_labels(os.path.join(output, shards.LABELS_FILE), manifest["classes"])
    shards.write_tfds_metadata(
        output,
        manifest["classes"],
        {
            name: ([shard["num_examples"] for shard in entry["shards"]], entry["num_bytes"])
            for name, entry in manifest["splits"].items()
        },
    )
    write_json(os.path.join(output, shards.MANIFEST), manifest, indent=1)
    outputs.remove_owned(folder, [STATE_DIR])


def _prepare(options, image_index, reader, listings, pool):
    """Everything before the write: candidates, scan, labels, split, plan.

    Args:
      listings: the future of `_read_listings`.

    Returns:
      `(plan, _Prepared)`; what only the plan needed is freed.
    """
    near_duplicates, excluded = read_id_files(options)
    meanwhile = _while_the_listings_are_read(image_index, listings, options.seed)
    selected, report = listings.result()
    selected = _from_columns(selected)
    candidates = _read_candidates(options, image_index, selected, excluded)
    if meanwhile.id_order is not None:  # the referenced ids in id order, not sorted again
        listed = candidates.listings_of_image.__contains__
        named = np.fromiter(map(listed, meanwhile.id_order), np.bool_, len(meanwhile.id_order))
        candidates.survivors = list(itertools.compress(meanwhile.id_order, named.tolist()))
        candidates.survivor_positions = meanwhile.positions[named]
    del selected
    referenced = set(candidates.listings_of_image)
    _check_known_ids([image_id for pair in near_duplicates for image_id in pair], referenced, "join_near_duplicates")
    _check_known_ids(excluded, referenced, "exclude_images")
    _scan(candidates, image_index, reader, pool, options, meanwhile.keys)
    del meanwhile  # its keys are in the scan's columns now (40 bytes an image of the index)
    return _plan_scanned(options, candidates, image_index, near_duplicates, report)


def _plan_scanned(options, candidates, image_index, near_duplicates, report):
    """The serial step between the scan and the write: duplicates, labels, grouping, split, plan.

    Returns:
      `(plan, _Prepared)`; what only the plan needed is freed.
    """
    _drop_duplicate_content(candidates)
    by_images, image_types, conflicts = _label_images(candidates, options)
    kept = _group_kept(candidates, image_index, image_types, near_duplicates)
    vocabulary, class_of_group, conflicts["groups"] = _apply_group_floors(candidates, options, by_images, kept)
    conflicts["group_rule"] = split.GROUP_RULE
    split_members = _plan_splits(candidates, options, kept, class_of_group)
    check_split_sizes(split_members, options)
    plan = _make_plan(candidates, image_index, vocabulary, kept, split_members, options)
    del kept, class_of_group
    prepared = _Prepared(
        candidates,
        report,
        vocabulary,
        conflicts,
        _rare_class_counts(options, by_images, vocabulary, image_types),
        image_index.csv_sha256,
        image_index.num_rows,
        None,
        image_index.truncated,
    )
    return plan, prepared


class _Meanwhile(NamedTuple):
    """What the parent made of the `_ImageIndex` while the listings were read."""

    id_order: list | None  # the index's image ids sorted; None if the listings were read already
    positions: np.ndarray | None  # their positions in the index
    keys: "_SplitKeys"


def _while_the_listings_are_read(image_index, listings, seed):
    """Serial work done while the parent would otherwise wait for the listings worker: a `_Meanwhile`.

    At 80k and 400k images the listings are read 0.5-2 s after the images tar is indexed, on one core: the
    grouping's import (0.2 s) and the sort of the image ids (0.3 s at 400k) were in the serial step after the scan,
    the ids' positions (0.25 CPU s at 423k) before the scan, and the split keys in the scan.
    """
    importlib.import_module("scipy.sparse.csgraph")
    if listings.done():
        return _Meanwhile(None, None, _SplitKeys.of([], seed))
    id_order = sorted(image_index.position)
    positions = _positions(image_index, id_order)
    return _Meanwhile(id_order, positions, _hash_keys_until(image_index, listings, seed))


KEY_CHUNK = 4096  # ids hashed between two looks at whether the listings are read (about 10 ms)


class _SplitKeys(NamedTuple):
    """The split's and the shuffle's keys (`split.stable_fractions`, `split.shuffle_digests`) of the first images of
    the `_ImageIndex`, by position: hashed while the parent waits for the listings, they are taken by the scan
    (`_chunk_keys`), which hashed them all (0.5 of the parent's CPU s at 423k, both cores busy)."""

    fractions: np.ndarray
    words: np.ndarray

    @classmethod
    def of(cls, image_ids, seed):
        return cls(split.stable_fractions(seed, image_ids), split.shuffle_digests(image_ids, seed))


def _hash_keys_until(image_index, listings, seed):
    """The `_SplitKeys` of the index's images in position order, hashed a `KEY_CHUNK` at a time until `listings` (a
    future) is done."""
    in_archive = map(operator.ge, image_index.position.values(), itertools.repeat(0))
    image_ids = list(itertools.compress(image_index.position, in_archive))  # positions are given in insertion order
    fractions, words = [], []
    for start in range(0, len(image_ids), KEY_CHUNK):
        if listings.done():
            break
        keys = _SplitKeys.of(image_ids[start : start + KEY_CHUNK], seed)
        fractions.append(keys.fractions)
        words.append(keys.words)
    if not fractions:
        return _SplitKeys.of([], seed)
    return _SplitKeys(np.concatenate(fractions), np.concatenate(words))


def _chunk_keys(keys, positions, image_ids, seed):
    """`(split fractions, shuffle words)` of a scan chunk's `image_ids` at the index's `positions` (an int array):
    those in `keys` taken, the others hashed."""
    ready = positions < len(keys.fractions)
    if ready.all():
        return keys.fractions[positions], keys.words[positions]
    fractions, words = np.empty(len(positions), np.float64), np.empty((len(positions), 4), keys.words.dtype)
    fractions[ready], words[ready] = keys.fractions[positions[ready]], keys.words[positions[ready]]
    missing = list(itertools.compress(image_ids, (~ready).tolist()))
    fractions[~ready], words[~ready] = _SplitKeys.of(missing, seed)
    return fractions, words


def _content_digest(candidates):
    """SHA-256 over the sorted digests of every scanned image: what the build saw, for the manifest."""
    # One update of the joined digests: the same bytes as an update each (0.2 CPU s at 400k).
    return hashlib.sha256("".join(sorted(candidates.scanned.sha256)).encode()).hexdigest()


def _complete_during_write(prepared):
    """Counts what only the manifest needs (the content digest, the items of several types), then drops what only
    they and the plan needed; the plan's columns keep the strings they share.

    Called once the first shards are submitted: the parent would wait for them idle, and these counts (0.5 CPU s at
    400k) were in the serial step before the write, one core busy.
    """
    candidates = prepared.candidates
    selected = [listing for listing, reason in zip(candidates.listings, candidates.status) if reason is None]
    prepared.conflicts["items"] = labels.count_conflicting_items(selected)
    prepared.scanned_content_sha256 = _content_digest(candidates)
    candidates.listings = candidates.listings_of_image = candidates.scanned = candidates.survivors = None
    candidates.survivor_positions = None


_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)  # the output cannot take more bytes


def build(options):
    """Builds (or resumes, or confirms) the records described by `options`.

    Args:
      options: a `BuildOptions`.

    Returns:
      The manifest (a dict), also written to `<output>/manifest.json`.

    Raises:
      UserInputError: bad input or an unusable --output, before any work where it can be known then.
    """
    start = time.perf_counter()
    options = dataclasses.replace(
        options, **dict(zip(("listings", "images"), download.locate(options.listings, options.images)))
    )
    read_id_files(options)  # a missing or foreign id file fails before --output is claimed
    created = not os.path.lexists(options.output)
    folder = _claim_output(options)
    # The plan is a few objects per image, all alive until the end: the cyclic
    # GC would rescan them again and again (a quarter of the serial time).
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _build(options, folder, start)
    except BaseException as error:
        if created and not outputs.contents(folder.path):
            _unmake(folder)  # failed before writing anything: leave no empty folder behind
        if isinstance(error, OSError) and error.errno in _WRITE_ERRNOS:
            # A full disk part-way: what was written stays, and the same command resumes from it (byte-identical).
            raise UserInputError(
                f"cannot write --output {options.output!r} ({error.strerror or error}): free space, then run the "
                "same command: the build resumes where it stopped"
            ) from error
        raise
    finally:
        outputs.release(folder.path)
        if gc_was_enabled:
            gc.enable()


def _unmake(folder):
    """Removes a folder this build created and wrote nothing into but its claim."""
    outputs.release(folder.path)
    for name in (outputs.MARKER, outputs.LOCK):
        if os.path.exists(os.path.join(folder.path, name)):
            os.remove(os.path.join(folder.path, name))
    os.rmdir(folder.path)


def _build(options, folder, start):
    _check_output(options, folder)
    with parallel.process_pool(options.workers) as pool:
        # Workers start (and import) while this process indexes the archive.
        # The listings first: the first worker up reads them, the longest task before the scan (the warm-ups only
        # start the other workers).
        listings = pool.submit(_read_listings, options.listings, options.image_selection, options.allow_truncated)
        warm_up = [pool.submit(_warm_up) for _ in range(options.workers - 1)]
        store = archive.open_images(options.images, options.image_variant, options.allow_truncated)
        image_index, reader = _ImageIndex(store), store.without_index()
        del store  # its dicts of ImageRows are now in the compact index
        plan, prepared = _prepare(options, image_index, reader, listings, pool)
        del image_index
        concurrent.futures.wait(warm_up)
        same_build = _check_output(options, folder, plan["fingerprint"])
        if same_build and os.path.isfile(os.path.join(options.output, shards.MANIFEST)):
            return shards.read_manifest(options.output)  # the same build is already complete
        os.makedirs(os.path.join(options.output, STATE_DIR), exist_ok=True)
        saved_plan = {key: plan[key] for key in ("options", "fingerprint")}
        write_json(os.path.join(options.output, STATE_DIR, PLAN_FILE), saved_plan, indent=None)
        shard_results = _write_shards(plan, reader, options, pool, functools.partial(_complete_during_write, prepared))
    _check_no_leak(shard_results)
    manifest = _make_manifest(options, plan, prepared, shard_results, time.perf_counter() - start)
    _finish(folder, manifest, options)
    return manifest


def unmeasured_classes(manifest):
    """Dict split -> the classes without an image in it, for the splits of positive fraction that lack some.

    The split gives every class an image in every such split; only an image rejected while
    written (it passed the scan's structure check, then failed to decode) can take the last one away.
    """
    options = manifest["options"]
    # A build from before the group floors promised nothing: its floors count as 0.
    floors = split.positive_floors(options["split_fractions"], options.get("min_groups_per_split", (0, 0, 0)))
    missing = {}
    for name, floor in zip(split.SPLITS, floors):
        per_class = manifest["splits"].get(name, {}).get("per_class", {})
        absent = [label for label in manifest["classes"] if not per_class.get(label)]
        if absent and floor > 0:
            missing[name] = absent
    return missing


def format_summary(manifest):
    """The manifest as the lines a person reads after a build: splits, drops, warnings, time."""
    lines = [f"{'split':<12}{'examples':>10}{'shards':>8}{'MB':>10}"]
    for name, entry in manifest["splits"].items():
        lines.append(f"{name:<12}{entry['num_examples']:>10}{len(entry['shards']):>8}{entry['num_bytes'] / 1e6:>10.1f}")
    listings, images_ = manifest["listings"], manifest["images"]
    lines.append(
        f"classes: {len(manifest['classes'])}   listings read {listings['read']}, kept {listings['kept']}   images "
        f"referenced {images_['referenced']}, kept {images_['kept']}, re-encoded {images_['reencoded']}"
    )
    for kind, entry in (("listings", listings), ("images", images_)):
        if entry["dropped"]:
            lines.append(
                f"dropped {kind}: " + ", ".join(f"{reason} {count}" for reason, count in entry["dropped"].items())
            )
    if listings["malformed_lines"]:
        reasons = ", ".join(f"{reason} {count}" for reason, count in listings.get("malformed_reasons", {}).items())
        lines.append(
            "malformed JSON lines (first): "
            + ", ".join(listings["malformed_lines"][:5])
            + (f"; by reason: {reasons}" if reasons else "")
        )
    for kind in ("listings", "images"):
        for cut in manifest["inputs"][kind].get("truncated", []):
            lines.append(f"WARNING: partial read of the {kind}: {cut}")
    conflicts = manifest["label_conflicts"]
    lines.append(f"label conflicts: {conflicts['items']} items, {conflicts['images']} images ({conflicts['rule']})")
    if "groups" in conflicts:
        lines.append(f"groups of more than one type: {conflicts['groups']} ({conflicts['group_rule']})")
    rare = manifest.get("rare_classes", {})
    if rare.get("types"):
        counts = ", ".join(
            f"{reason} {count} ({rare['images'].get(reason, 0)} images)" for reason, count in rare["types"].items()
        )
        lines.append(f"product types not kept as classes ({rare['action']}): {counts}")
    for name, missing in unmeasured_classes(manifest).items():
        lines.append(
            f"WARNING: {len(missing)} classes have no {name} image (e.g. {missing[0]}): rejected while written"
        )
    rate = images_["kept"] / manifest["elapsed_seconds"] if manifest["elapsed_seconds"] else 0.0
    lines.append(f"time: {manifest['elapsed_seconds']:.1f} s ({rate:.0f} images/s)")
    return "\n".join(lines)
