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

import collections
import hashlib

SPLITS = ("train", "validation", "test")
GROUP_RULE = "a group counts as the class of most of its images (ties to the alphabetically first); all go with it"


def stable_fraction(seed, key):
    """Maps (seed, key) to a float in [0, 1), the same on every machine and run."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def group_images(image_ids_per_listing, content_hash, joined_pairs=()):
    """Connected groups of images.

    Args:
      image_ids_per_listing: iterable of `(item_id, image ids)`, one per listing;
        only images that will be written should be given.
      content_hash: dict image id -> SHA-256 of its bytes.
      joined_pairs: `(image id, image id)` pairs that must share a group (near-duplicates found by
        `abo_tf.audit`); a pair with an image not in `content_hash` is ignored.

    Returns:
      Dict image id -> group key (the smallest image id of its group).
    """
    # Nodes are integers: the kept images numbered in id order, then the images only the listings name. An item
    # and a digest join their images to the first image seen with them, and a union keeps the smaller root, so a
    # root is its group's smallest number, the smallest image id. At 400k images a union-find over item, content
    # and image keys was the slowest serial step of a build (3 dict look-ups and 2 method calls an image).
    ordered = sorted(content_hash)
    number = {image_id: index for index, image_id in enumerate(ordered)}
    parent = list(range(len(ordered)))

    def join(first, second):
        while parent[first] != first:
            parent[first] = first = parent[parent[first]]  # path halving: a parent is never larger than its child
        while parent[second] != second:
            parent[second] = second = parent[parent[second]]
        if first < second:
            parent[second] = first
        elif second < first:
            parent[first] = second

    first_of_item, first_of_digest = {}, {}
    for item_id, image_ids in image_ids_per_listing:
        for image_id in image_ids:
            index = number.get(image_id)
            if index is None:  # named by a listing, not kept: it still joins what it touches
                index = number[image_id] = len(parent)
                parent.append(index)
            first = first_of_item.setdefault(item_id, index)
            if first != index:
                join(index, first)
    for image_id, digest in content_hash.items():
        index = number[image_id]
        first = first_of_digest.setdefault(digest, index)
        if first != index:
            join(index, first)
    for first, second in joined_pairs:
        if first in content_hash and second in content_hash:
            join(number[first], number[second])
    # In increasing order a node's parent is smaller, hence already its root: one pass leaves every node's root.
    for index in range(len(parent)):
        parent[index] = parent[parent[index]]
    return {image_id: ordered[parent[number[image_id]]] for image_id in content_hash}


def positive_floors(fractions, min_groups):
    """The groups a class needs in each split: `min_groups`, but none in a split of fraction 0."""
    return tuple(floor if fraction > 0 else 0 for fraction, floor in zip(fractions, min_groups))


def types_per_group(group_of_image, type_of_image):
    """Dict group key -> `((type, images), ...)`, sorted, of the images with a type (counted once, voted on often).

    Args:
      group_of_image: dict image id -> group key, from `group_images`.
      type_of_image: dict image id -> product type; an image without one does not count.
    """
    counts = {}
    for image_id, key in group_of_image.items():
        product_type = type_of_image.get(image_id)
        if product_type is not None:
            group = counts.setdefault(key, {})
            group[product_type] = group.get(product_type, 0) + 1
    return {key: tuple(sorted(group.items())) for key, group in counts.items()}


def class_of_groups(types_of_group, class_of_type):
    """The class each group is dealt as: the class of most of its images (ties to the alphabetically first).

    Args:
      types_of_group: from `types_per_group`.
      class_of_type: dict product type -> class name, or None for a type whose images are dropped (no vote).

    Returns:
      Dict group key -> class name, for the groups with at least one image of a class.
    """
    classes = {}
    for key, types in types_of_group.items():
        if len(types) == 1:  # nearly every group: one type
            name = class_of_type[types[0][0]]
            if name is not None:
                classes[key] = name
            continue
        votes = collections.Counter()
        for product_type, count in types:
            if class_of_type[product_type] is not None:
                votes[class_of_type[product_type]] += count
        if votes:
            classes[key] = min(votes, key=lambda name: (-votes[name], name))
    return classes


def assign_splits(group_of_image, class_of_group, fractions, seed, floors=(1, 1, 1)):
    """Assigns every image to a split, class by class, whole groups only.

    Each class's groups are taken in the order of a seeded hash of their key and
    each goes to the split furthest below its share of the class's images, except
    that the last groups go to the splits still short of their floor: every class
    with `sum(floors)` groups gets at least `floors[i]` of them in split i, whatever the file order.

    Args:
      group_of_image: dict image id -> group key, from `group_images`.
      class_of_group: dict group key -> class, from `class_of_groups`; a group
        without a class (its images are all dropped) goes to train.
      fractions: (train, validation, test) fractions summing to 1.
      seed: salt of the hash; another seed gives another split.
      floors: the groups each class needs in each split (none in a split of fraction 0).

    Returns:
      Dict image id -> split name.
    """
    floors = positive_floors(fractions, floors)
    images_of_group = collections.Counter(group_of_image.values())
    groups_of_class = collections.defaultdict(list)
    for key in images_of_group:
        groups_of_class[class_of_group.get(key)].append(key)
    split_of_group = {key: SPLITS[0] for key in groups_of_class.pop(None, [])}
    for keys in groups_of_class.values():
        keys.sort(key=lambda key: (stable_fraction(seed, key), key))
        split_of_group.update(_deal(keys, [images_of_group[key] for key in keys], fractions, floors))
    return {image_id: split_of_group[key] for image_id, key in group_of_image.items()}


def _deal(keys, sizes, fractions, floors):
    """Dict key -> split of one class's groups (in dealing order): largest image deficit first, floors kept."""
    targets = [fraction * sum(sizes) for fraction in fractions]
    images, groups = [0] * len(SPLITS), [0] * len(SPLITS)
    open_splits = [index for index, fraction in enumerate(fractions) if fraction > 0]
    owed, dealt = sum(floors), {}
    for position, (key, size) in enumerate(zip(keys, sizes)):
        allowed = open_splits
        if len(keys) - position <= owed:  # the groups left are just enough for the floors: only those short take one
            allowed = [index for index in open_splits if groups[index] < floors[index]]
        chosen = allowed[0]
        for index in allowed[1:]:  # the largest deficit; a tie to the first split
            if targets[index] - images[index] > targets[chosen] - images[chosen]:
                chosen = index
        owed -= groups[chosen] < floors[chosen]
        images[chosen] += size
        groups[chosen] += 1
        dealt[key] = SPLITS[chosen]
    return dealt


def shuffle_order(image_ids, seed):
    """The image ids in a seeded order that does not depend on the input order."""
    return sorted(image_ids, key=lambda image_id: hashlib.sha256(f"shuffle:{seed}:{image_id}".encode()).digest())
