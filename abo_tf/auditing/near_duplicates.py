"""Near-duplicate images across splits: a DCT perceptual hash of every record's image, and a multi-index hash.

The hash is pHash (Zauner 2010, as `imagehash.phash` computes it): the image in grey, resized to 32 x 32,
its 2-D DCT, and one bit per coefficient of the lowest 8 x 8 frequencies, set where the coefficient is above
their median. A re-encoding, a resize, a slight crop or a brightening moves few of the 64 bits.

Pairs within `max_distance` bits are found without comparing all pairs: the 64 bits are dealt into BANDS bands
of 16 bits; two hashes within `max_distance` bits differ by at most `max_distance // BANDS` bits in one band at
least (pigeonhole), so probing each band's sorted values at that radius finds every pair (Norouzi et al., "Fast
search in Hamming space with multi-index hashing", CVPR 2012). Only candidates are compared bit by bit.

A hash alone pairs too much: catalog photos are one product on a white background, and on the generated
sample two different phone cases are within 4 bits of each other as often as a planted copy is. So each
candidate pair is confirmed on its pixels: the correlation of 16 x 16 colour thumbnails (mean removed, unit
norm, so a brightening changes nothing) must reach `min_similarity`. On the sample, planted copies correlate
at 0.990 or more and the closest unrelated pair at 0.978 (tests/test_audit.py checks both ends).
"""

import hashlib
import itertools
import os
from typing import NamedTuple

import cv2
import numpy as np

from abo_tf.common import console, parallel
from abo_tf.common.parallel import bounded_map
from abo_tf.records import schema, shards
from abo_tf.records.split import SPLITS

HASH_SIDE = 32  # pixels of the grey image the DCT runs on
HASH_BITS_SIDE = 8  # the lowest 8 x 8 frequencies: 64 bits
BANDS = 4
BAND_BITS = 64 // BANDS
CHUNK_IMAGES = 256  # images per task sent to a worker
WINDOW_PER_WORKER = 4  # tasks in flight per worker: keeps every core busy, memory flat
THUMBNAIL_SIDE = 16  # 768 bytes an image: 300 MB for 400k images
# 4-7 bits probe each band at radius 1 (17 probes), 8 at radius 2 (137): planted copies are within 2 bits.
DEFAULT_HASH_DISTANCE = 6
CANDIDATES_PER_BLOCK = 1 << 22  # candidate pairs held at once: about 300 MB of index arrays
SIMILARITY_BLOCK = 1 << 14  # pairs whose thumbnails are compared at once: 2 x 50 MB of float32
DEFAULT_PIXEL_SIMILARITY = 0.985
UNDECODABLE = (1 << 64) - 1  # an image OpenCV cannot decode; no pHash has more than 32 bits set


class HashedImages(NamedTuple):
    """The hash of every record's image, with what the report needs next to it (arrays of one length)."""

    hashes: np.ndarray  # uint64 [N]
    thumbnails: np.ndarray  # uint8 [N, THUMBNAIL_SIDE * THUMBNAIL_SIDE * 3], BGR
    image_ids: np.ndarray  # str [N]
    splits: np.ndarray  # str [N]
    labels: np.ndarray  # int [N]
    product_types: np.ndarray  # str [N]
    item_ids: np.ndarray  # str [N]: the label audit's folds keep an item's images together


def _shrunk(pixels, side):
    return cv2.resize(pixels, (side, side), interpolation=cv2.INTER_AREA)


def _phash(grey):
    low = cv2.dct(_shrunk(grey, HASH_SIDE).astype(np.float32))[:HASH_BITS_SIDE, :HASH_BITS_SIDE].ravel()
    return int.from_bytes(np.packbits(low > np.median(low)).tobytes(), "big")


def signature(encoded):
    """(64-bit pHash, uint8 BGR thumbnail) of an encoded image; UNDECODABLE and zeros if OpenCV cannot read it."""
    pixels = cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_COLOR)
    if pixels is None:
        return UNDECODABLE, np.zeros(THUMBNAIL_SIDE * THUMBNAIL_SIDE * 3, np.uint8)
    return _phash(cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY)), _shrunk(pixels, THUMBNAIL_SIDE).ravel()


def _hash_chunk(task):
    """Worker: `(split, [(image id, label, product type, item id, hash, thumbnail)])` of a chunk of records.

    Records are parsed here, not in the parent: the parent only frames them, so it does not become the
    bottleneck of the fan-out.
    """
    split, serialized_records = task
    results = []
    for serialized in serialized_records:
        record = shards.parse_record(serialized)
        results.append(
            (
                record[schema.IMAGE_ID].decode(),
                record[schema.LABEL],
                record[schema.PRODUCT_TYPE].decode(),
                record[schema.ITEM_ID].decode(),
                *signature(record[schema.IMAGE]),
            )
        )
    return split, results


def _single_threaded_worker():
    # One OpenCV thread per process: the processes already use every core, and more threads only contend.
    cv2.setNumThreads(1)


def _record_chunks(records_dir, manifest, splits):
    """Yields `(split, serialised records)`, CHUNK_IMAGES records at a time, a chunk within one split."""
    for split in splits:
        chunk = []
        for path in shards.shard_paths(records_dir, manifest, split):
            for serialized in shards.iter_framed_records(path):
                chunk.append(serialized)
                if len(chunk) == CHUNK_IMAGES:
                    yield split, chunk
                    chunk = []
        if chunk:
            yield split, chunk


def hash_records(records_dir, workers=None, progress=True):
    """The perceptual hash of every image of a build, in worker processes.

    Args:
      records_dir: a build_records output folder.
      workers: processes; default this machine's cores.
      progress: show a progress bar over images.

    Returns:
      A `HashedImages`, splits in SPLITS order and records in shard order.

    Raises:
      UserInputError: no manifest, or not one of an abo_tf build.
    """
    manifest = shards.read_manifest(records_dir)
    splits = [split for split in SPLITS if split in manifest["splits"]]
    total = sum(manifest["splits"][split]["num_examples"] for split in splits)
    workers = workers or os.cpu_count() or 1
    rows, split_names = [], []
    with (
        parallel.process_pool(workers, initializer=_single_threaded_worker) as pool,
        console.progress_bar(total=total, desc="hashing", unit="img", enabled=progress) as bar,
    ):
        tasks = _record_chunks(records_dir, manifest, splits)
        for split, results in bounded_map(pool, _hash_chunk, tasks, workers * WINDOW_PER_WORKER):
            rows.extend(results)
            split_names.extend([split] * len(results))
            bar.update(len(results))
    image_ids, labels, product_types, item_ids, hashes, thumbnails = zip(*rows) if rows else ((),) * 6
    width = THUMBNAIL_SIDE * THUMBNAIL_SIDE * 3
    return HashedImages(
        np.array(hashes, dtype=np.uint64),
        np.array(thumbnails, np.uint8).reshape(-1, width),
        np.array(image_ids, dtype=str),
        np.array(split_names, dtype=str),
        np.array(labels, dtype=np.int64),
        np.array(product_types, dtype=str),
        np.array(item_ids, dtype=str),
    )


def hamming_distance(first, second):
    """Bits that differ between uint64 arrays, element-wise."""
    return np.bitwise_count(np.bitwise_xor(first, second)).astype(np.int64)


def _band_values(hashes, band):
    """The BAND_BITS bits b with b % BANDS == band, packed: every band mixes low and high frequencies.

    Contiguous bands put the lowest frequencies (the DC bit is always set, the next nearly always) in one band,
    whose buckets are then huge: on 100k generated images its exact matches alone were 11M pairs, 4.7M when
    interleaved.
    """
    values = np.zeros(len(hashes), dtype=np.int64)
    for position, bit in enumerate(range(band, 64, BANDS)):
        values |= ((hashes >> np.uint64(bit)) & np.uint64(1)).astype(np.int64) << position
    return values


def _probe_masks(radius):
    """Every BAND_BITS-bit mask with at most `radius` bits set."""
    masks = [0]
    for flipped in range(1, radius + 1):
        masks += [sum(1 << bit for bit in bits) for bits in itertools.combinations(range(BAND_BITS), flipped)]
    return masks


def _blocks(counts, limit):
    """[start, end) ranges of queries whose candidates add up to about `limit` (at least one query each)."""
    ends = np.searchsorted(np.cumsum(counts), np.arange(limit, int(counts.sum()) + limit, limit), side="right")
    bounds = np.unique(np.concatenate([[0], np.maximum(ends, 1), [len(counts)]]))
    return zip(bounds[:-1], bounds[1:])


def _band_candidates(values, order, sorted_values, mask):
    """Yields (i, j), i < j, of the images whose band values differ by exactly `mask`, a block at a time."""
    wanted = values ^ mask
    start = np.searchsorted(sorted_values, wanted, side="left")
    counts = np.searchsorted(sorted_values, wanted, side="right") - start
    for low, high in _blocks(counts, CANDIDATES_PER_BLOCK):
        block_counts = counts[low:high]
        first = np.repeat(np.arange(low, high), block_counts)
        offsets = np.arange(block_counts.sum()) - np.repeat(np.cumsum(block_counts) - block_counts, block_counts)
        second = order[np.repeat(start[low:high], block_counts) + offsets]
        keep = first < second
        yield first[keep], second[keep]


def hash_close_pairs(hashes, max_distance):
    """Yields `(first, second)` index arrays of pairs within `max_distance` bits, a block at a time.

    A pair comes once per band it matches in (up to BANDS times); UNDECODABLE entries are never paired.
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    invalid = hashes == np.uint64(UNDECODABLE)
    for band in range(BANDS):
        values = _band_values(hashes, band)
        values[invalid] = -1 - np.arange(invalid.sum())  # negative: never within a mask of anything
        order = np.argsort(values, kind="stable")
        sorted_values = values[order]
        for mask in _probe_masks(max_distance // BANDS):
            for first, second in _band_candidates(values, order, sorted_values, mask):
                close = hamming_distance(hashes[first], hashes[second]) <= max_distance
                yield first[close], second[close]


def find_pairs(hashes, max_distance, accept=None):
    """Every pair of hashes within `max_distance` bits, by multi-index hashing.

    Holds every pair at once: for a bounded output, `near_duplicate_forest`.

    Args:
      hashes: uint64 [N]; UNDECODABLE entries are never paired.
      max_distance: the largest Hamming distance of a pair, 0-63.
      accept: optional `f(first, second) -> bool mask` that a pair must also pass.

    Returns:
      (first, second, distance) int64 arrays, first < second, sorted by (first, second).
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    found = []
    for first, second in hash_close_pairs(hashes, max_distance):
        if accept is not None:
            accepted = accept(first, second)
            first, second = first[accepted], second[accepted]
        found.append(first * len(hashes) + second)
    keys = np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)
    first, second = keys // max(1, len(hashes)), keys % max(1, len(hashes))
    return first, second, hamming_distance(hashes[first], hashes[second])


def thumbnail_similarity(thumbnails, first, second):
    """Correlation of the thumbnails of each pair (first[k], second[k]): 1 for the same picture.

    Equal thumbnails score 1 even when constant (a blank image's correlation is 0 / 0): identical pixels pair.
    """

    def normalised(rows):
        rows = thumbnails[rows].astype(np.float32)
        rows -= rows.mean(axis=1, keepdims=True)
        return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-6)

    similarity = np.empty(len(first), dtype=np.float32)
    for start in range(0, len(first), SIMILARITY_BLOCK):  # 3 KB a pair as float32: in blocks
        block = slice(start, start + SIMILARITY_BLOCK)
        similarity[block] = np.einsum("ij,ij->i", normalised(first[block]), normalised(second[block]))
        equal = (thumbnails[first[block]] == thumbnails[second[block]]).all(axis=1)
        similarity[block][equal] = 1.0
    return similarity


class Pairs(NamedTuple):
    """Near-duplicate pairs as indices into a `HashedImages`, first < second."""

    first: np.ndarray
    second: np.ndarray
    distance: np.ndarray  # hash bits that differ
    similarity: np.ndarray  # thumbnail correlation (or embedding cosine, per `signal`)
    signal: np.ndarray  # str: which search found the pair ("hash", "embedding")


def make_pairs(hashes, first, second, similarity, signal):
    """A `Pairs` of index arrays (each pair ordered first < second), its hash distances computed."""
    first, second = np.asarray(first, dtype=np.int64), np.asarray(second, dtype=np.int64)
    first, second = np.minimum(first, second), np.maximum(first, second)
    distance = hamming_distance(hashes[first], hashes[second])
    return Pairs(first, second, distance, np.asarray(similarity, np.float32), np.full(len(first), signal))


def _empty_pairs():
    empty = np.zeros(0, dtype=np.int64)
    return Pairs(empty, empty, empty, np.zeros(0, np.float32), np.zeros(0, dtype=str))


class SpanningForest:
    """Near-duplicate groups (connected components of the pairs) and the edges that joined them.

    Only a spanning forest is kept: at most one edge fewer than the images, however many pairs there are. A
    build of 3,000 pixel-identical images has 4.5 million pairs; holding them took 2.7 GB and wrote a 251 MB
    pair file (issue 23). Pairs arrive a block at a time; those inside one group already are dropped before
    their pixels are compared, and each block's edges are merged by scipy's minimum spanning tree on weight
    2 - similarity, so the most similar edge of a cycle is the one kept.
    """

    def __init__(self, size):
        self.size = size
        self.edges = _empty_pairs()
        self.component = np.arange(size)

    def apart(self, first, second):
        """Mask of the pairs whose images are in different groups so far."""
        return self.component[first] != self.component[second]

    def add(self, pairs):
        """Joins the groups of `pairs` (first < second), keeping the edges of a spanning forest."""
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components, minimum_spanning_tree

        keep = self.apart(pairs.first, pairs.second)
        if not keep.any():
            return
        edges = Pairs(*(np.concatenate([old, new[keep]]) for old, new in zip(self.edges, pairs)))
        weight = 2.0 - np.minimum(edges.similarity.astype(np.float64), 1.0)  # > 0: zeros are no edge to scipy
        graph = coo_matrix((weight, (edges.first, edges.second)), shape=(self.size, self.size)).tocsr()
        tree = minimum_spanning_tree(graph).tocoo()
        keys = edges.first * self.size + edges.second
        order = np.argsort(keys, kind="stable")
        tree_keys = np.minimum(tree.row, tree.col).astype(np.int64) * self.size + np.maximum(tree.row, tree.col)
        chosen = np.sort(order[np.searchsorted(keys[order], tree_keys)])
        self.edges = Pairs(*(column[chosen] for column in edges))
        self.component = connected_components(tree, directed=False)[1]

    def groups(self):
        """Group number of every image (-1 when alone), groups numbered by their smallest index."""
        sizes = np.bincount(self.component, minlength=self.size)
        grouped = sizes[self.component] > 1
        roots = np.unique(self.component[grouped])  # connected_components numbers by smallest index
        number = np.full(self.size, -1, dtype=np.int64)
        number[grouped] = np.searchsorted(roots, self.component[grouped])
        return number


def _identical_pairs(hashed):
    """Each decodable image paired with the first image of equal thumbnail and hash: a star per set of equals.

    Equals are grouped by a digest (one pass, no N x N); a digest collision is caught by comparing bytes.
    """
    digests = np.array(
        [
            int.from_bytes(hashlib.blake2b(row.tobytes() + int(code).to_bytes(8, "big"), digest_size=8).digest())
            for row, code in zip(hashed.thumbnails, hashed.hashes)
        ],
        dtype=np.uint64,
    ).reshape(-1)
    decodable = np.flatnonzero(hashed.hashes != np.uint64(UNDECODABLE))
    _, first_of, inverse = np.unique(digests[decodable], return_index=True, return_inverse=True)
    first, second = decodable[first_of][inverse.reshape(-1)], decodable
    equal = (first != second) & (hashed.hashes[first] == hashed.hashes[second])
    equal[equal] = (hashed.thumbnails[first[equal]] == hashed.thumbnails[second[equal]]).all(axis=1)
    return first[equal], second[equal]


def near_duplicate_forest(hashed, max_distance=DEFAULT_HASH_DISTANCE, min_similarity=DEFAULT_PIXEL_SIMILARITY):
    """The groups of images joined by pairs within `max_distance` hash bits whose thumbnails correlate at
    `min_similarity` or more, as a `SpanningForest`.

    Images with equal thumbnails and hashes are joined first, and only one of each such set is searched: the
    hash search then never sees their quadratic number of pairs.
    """
    forest = SpanningForest(len(hashed.hashes))
    first, second = _identical_pairs(hashed)
    forest.add(make_pairs(hashed.hashes, first, second, np.ones(len(first)), "hash"))
    searched = np.setdiff1d(np.arange(len(hashed.hashes)), second)
    for first, second in hash_close_pairs(hashed.hashes[searched], max_distance):
        first, second = searched[first], searched[second]
        apart = forest.apart(first, second)
        first, second = first[apart], second[apart]
        similarity = thumbnail_similarity(hashed.thumbnails, first, second)
        close = similarity >= min_similarity
        forest.add(make_pairs(hashed.hashes, first[close], second[close], similarity[close], "hash"))
    return forest
