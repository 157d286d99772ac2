"""Leak-free, reproducible train/validation/test split of ABO images.

Images that share a listing, listings that share an `item_id` (the same product
on several marketplaces) and image files with the same bytes form one group,
and a group goes whole to one split. The split is stratified by class: each
group counts as the class of most of its images, and each class's groups are
dealt to the splits in the order of a seeded hash of their key (the smallest
image id: a function of the group, not of file order), so that every class gets
its share of images and at least a floor of groups in every split, and the same
data gives the same split however the listings are ordered.
"""

import hashlib
import itertools

import numpy as np

SPLITS = ("train", "validation", "test")
GROUP_RULE = "a group counts as the class of most of its images (ties to the alphabetically first); all go with it"


def stable_fraction(seed, key):
    """Maps (seed, key) to a float in [0, 1), the same on every machine and run."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


_DIGEST = type(hashlib.sha256()).digest


def _sha256_words(texts):
    """The SHA-256 of each text as four big-endian uint64 words a row (an `(n, 4)` array), hashed by C loops (map):
    a Python call a key (a `sorted` key function, an f-string) was 1.3 of a 400k build's serial CPU seconds."""
    joined = b"".join(map(_DIGEST, map(hashlib.sha256, map(str.encode, texts))))
    return np.frombuffer(joined, ">u8").reshape(-1, 4)


def stable_fractions(seed, keys):
    """`stable_fraction(seed, key)` of each of `keys` (strings), as a float64 array."""
    # uint64 -> float64 rounds to nearest, as Python's int / 2**64 does; the division by 2**64 is exact.
    return _sha256_words(map(f"{seed}:".__add__, keys))[:, 0].astype(np.float64) / 2.0**64


def shuffle_digests(image_ids, seed):
    """The SHA-256 of `shuffle:<seed>:<image id>` of each of `image_ids` (strings) as `_sha256_words` rows: the
    shuffle's keys (`shuffled_positions`), computed during the scan."""
    return _sha256_words(map(f"shuffle:{seed}:".__add__, image_ids))


def group_images(image_ids_per_listing, content_hash, joined_pairs=(), named_join=True, join_contents=True):
    """`group_numbers` keyed by id (for the data report): dict image id -> its group's key (the smallest image id
    of its group), in image id order."""
    ordered, smallest = group_numbers(image_ids_per_listing, content_hash, joined_pairs, named_join, join_contents)
    return dict(zip(ordered, map(ordered.__getitem__, smallest.tolist())))


def group_numbers(image_ids_per_listing, content_hash, joined_pairs=(), named_join=True, join_contents=True):
    """Connected groups of images, as numbers.

    Args:
      image_ids_per_listing: iterable of `(item_id, image ids)`, one per listing.
      content_hash: dict image id -> SHA-256 of its bytes: the images grouped.
      joined_pairs: `(image id, image id)` pairs that must share a group (near-duplicates found by
        `abo_tf.audit`); a pair with an image not in `content_hash` is ignored.
      named_join: whether an image a listing names but `content_hash` lacks joins the items of the listings
        naming it (else it is ignored, as if the listings did not name it).
      join_contents: whether images with the same `content_hash` value share a group; a build, whose images
        grouped have distinct contents (it drops the duplicates first), saves the edges (0.1 s at 80k).

    Returns:
      `(the images grouped, sorted; each one's group as the number in that list of its group's smallest image id,
      an int array)`.
    """
    # Nodes are integers: the images grouped numbered in id order, then those only listings name, then the items,
    # then the digests; an edge joins an image to its listing's item, to its digest, to its pair. The components
    # are scipy's and a group's key its smallest number, the smallest image id. Per image only C loops (map,
    # chain, NumPy): a union-find in Python was the slowest serial step of a 400k build (1.7 CPU s, now about 0.6).
    ordered = sorted(content_hash)
    number = dict(zip(ordered, range(len(ordered))))
    listed = tuple(image_ids_per_listing)
    item_ids, id_lists = (tuple(column) for column in zip(*listed)) if listed else ((), ())
    named = list(itertools.chain.from_iterable(id_lists))
    if named_join:
        number.update(zip(sorted(set(named).difference(number)), itertools.count(len(number))))
    image_nodes = np.fromiter(map(number.get, named, itertools.repeat(-1)), np.int64, len(named))
    item_number = dict(zip(dict.fromkeys(item_ids), itertools.count()))
    item_nodes = np.repeat(
        np.fromiter(map(item_number.__getitem__, item_ids), np.int64, len(item_ids)),
        np.fromiter(map(len, id_lists), np.int64, len(id_lists)),
    )
    named_here = image_nodes >= 0
    digests = list(map(content_hash.__getitem__, ordered)) if join_contents else []
    digest_number = dict(zip(dict.fromkeys(digests), itertools.count()))
    pairs = [
        (number[first], number[second])
        for first, second in joined_pairs
        if first in content_hash and second in content_hash
    ]
    num_images, num_items = len(number), len(item_number)
    first_ends = np.concatenate(
        [
            image_nodes[named_here],
            np.arange(len(digests), dtype=np.int64),
            np.array([first for first, _ in pairs], np.int64),
        ]
    )
    second_ends = np.concatenate(
        [
            item_nodes[named_here] + num_images,
            np.fromiter(map(digest_number.__getitem__, digests), np.int64, len(digests)) + num_images + num_items,
            np.array([second for _, second in pairs], np.int64),
        ]
    )
    smallest = smallest_of_component(first_ends, second_ends, len(ordered), num_images + num_items + len(digest_number))
    return ordered, smallest


def smallest_of_component(first_ends, second_ends, num_kept, num_nodes):
    """For each of the first `num_kept` nodes, the smallest of them in its connected component (an int array)."""
    from scipy.sparse import coo_matrix, csgraph  # a build's import only: the readers of records do not pay for it

    edges = coo_matrix((np.ones(len(first_ends), np.bool_), (first_ends, second_ends)), shape=(num_nodes, num_nodes))
    _, component = csgraph.connected_components(edges.tocsr(), directed=False)
    component = component[:num_kept]
    # np.unique's first index of each component is its smallest kept number: the kept come first, in id order.
    present, smallest = np.unique(component, return_index=True)
    smallest_of = np.empty(component.max(initial=-1) + 1, np.int64)
    smallest_of[present] = smallest
    return smallest_of[component]


def positive_floors(fractions, min_groups):
    """The groups a class needs in each split: `min_groups`, but none in a split of fraction 0."""
    return tuple(floor if fraction > 0 else 0 for fraction, floor in zip(fractions, min_groups))


def vote_classes(group, class_code, num_groups):
    """The class each group is dealt as: the class of most of its images (ties to the smallest code).

    Args:
      group: int array, an image's group number (in [0, num_groups)).
      class_code: int array, an image's class as an index into the sorted class names (ties to the smallest code
        are then ties to the alphabetically first name), -1 for an image whose type is dropped (no vote).
      num_groups: the size of the result.

    Returns:
      An int array over the group numbers: the class code dealt, -1 for a number without a voting image.
    """
    voting = class_code >= 0
    num_classes = int(class_code.max(initial=-1)) + 1
    pairs, votes = np.unique(group[voting] * num_classes + class_code[voting], return_counts=True)
    groups, classes = np.divmod(pairs, max(num_classes, 1))
    order = np.lexsort((classes, -votes, groups))  # a group's pairs together, most votes first, then the first name
    groups, classes = groups[order], classes[order]
    first = np.ones(len(groups), np.bool_)
    first[1:] = groups[1:] != groups[:-1]
    result = np.full(num_groups, -1, np.int64)
    result[groups[first]] = classes[first]
    return result


def deal_groups(sizes, class_codes, key_fractions, fractions, floors=(1, 1, 1)):
    """The split (an index into SPLITS) of each group, class by class, given as arrays in key order.

    Each class's groups are taken in the order of a seeded hash of their key and
    each goes to the split furthest below its share of the class's images, except
    that the last groups go to the splits still short of their floor: every class
    with `sum(floors)` groups gets at least `floors[i]` of them in split i, whatever the file order.

    Args:
      sizes: int array, each group's images.
      class_codes: int array, each group's class (any codes, e.g. `vote_classes`'; -1: no class, the group goes
        to train).
      key_fractions: float array, `stable_fractions(seed, keys)` of each group's key (the seed: another gives
        another split).
      fractions: (train, validation, test) fractions summing to 1.
      floors: the groups each class needs in each split (none in a split of fraction 0, `positive_floors`).

    Returns:
      An int array, each group's split.
    """
    floors = positive_floors(fractions, floors)
    dealt = np.zeros(len(sizes), np.int64)
    # Each class's groups in (fraction, key) order by one stable NumPy sort of the groups, already in key order: the
    # same order as a sort a class with a (fraction, key) tuple a group as its key, without a Python call a group.
    order = np.lexsort((key_fractions, class_codes))
    ordered_classes = class_codes[order]
    first = int(np.searchsorted(ordered_classes, 0))  # those without a class (-1) sort first
    ends = [first, *(np.flatnonzero(np.diff(ordered_classes[first:])) + first + 1).tolist(), len(order)]
    for start, end in zip(ends, ends[1:]):
        if end > start:
            dealt[order[start:end]] = _deal(sizes[order[start:end]].tolist(), fractions, floors)
    return dealt


def _deal(sizes, fractions, floors):
    """The split (an index into SPLITS) of each of one class's groups (in dealing order): largest image deficit
    first, floors kept."""
    targets = [fraction * sum(sizes) for fraction in fractions]
    images, groups = [0] * len(SPLITS), [0] * len(SPLITS)
    open_splits = [index for index, fraction in enumerate(fractions) if fraction > 0]
    owed, dealt = sum(floors), []
    for position, size in enumerate(sizes):
        allowed = open_splits
        if len(sizes) - position <= owed:  # the groups left are just enough for the floors: only those short take one
            allowed = [index for index in open_splits if groups[index] < floors[index]]
        chosen = allowed[0]
        for index in allowed[1:]:  # the largest deficit; a tie to the first split
            if targets[index] - images[index] > targets[chosen] - images[chosen]:
                chosen = index
        owed -= groups[chosen] < floors[chosen]
        images[chosen] += size
        groups[chosen] += 1
        dealt.append(chosen)
    return dealt


def shuffled_positions(digests):
    """The positions of `shuffle_digests` rows in the order of their whole digests (an int array): a seeded order
    of the images that does not depend on their input order."""
    order = np.argsort(digests[:, 0], kind="stable")
    first = digests[order, 0]
    if np.any(first[1:] == first[:-1]):  # two ids share a digest's first 8 bytes (p ~ 1e-8 at 400k): all 32 decide
        order = np.lexsort(digests.T[::-1])
    return order
