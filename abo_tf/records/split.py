"""Leak-free, reproducible train/validation/test split of ABO images.

Images that share a listing, listings that share an `item_id` (the same product
on several marketplaces) and image files with the same bytes form one group,
and a group goes whole to one split. The split of a group is a hash of its
smallest image id (a function of the group, not of file order), so the same
data gives the same split however the listings are ordered.
"""

import hashlib

SPLITS = ("train", "validation", "test")


class _UnionFind:
    def __init__(self):
        self.parent = {}

    def find(self, node):
        root = node
        while self.parent.setdefault(root, root) != root:
            root = self.parent[root]
        while self.parent[node] != root:  # path compression
            self.parent[node], node = root, self.parent[node]
        return root

    def union(self, first, second):
        first, second = self.find(first), self.find(second)
        if first != second:
            self.parent[max(first, second)] = min(first, second)


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
    union_find = _UnionFind()
    for item_id, image_ids in image_ids_per_listing:
        for image_id in image_ids:
            union_find.union(("image", image_id), ("item", item_id))
    for image_id, digest in content_hash.items():
        union_find.union(("image", image_id), ("content", digest))
    for first, second in joined_pairs:
        if first in content_hash and second in content_hash:
            union_find.union(("image", first), ("image", second))
    smallest = {}
    for image_id in content_hash:
        root = union_find.find(("image", image_id))
        smallest[root] = min(smallest.get(root, image_id), image_id)
    return {image_id: smallest[union_find.find(("image", image_id))] for image_id in content_hash}


def assign_splits(group_of_image, fractions, seed):
    """Assigns every image to a split by the hash of its group key.

    Args:
      group_of_image: dict image id -> group key, from `group_images`.
      fractions: (train, validation, test) fractions summing to 1.
      seed: salt of the hash; another seed gives another split.

    Returns:
      Dict image id -> split name.
    """
    train_end, validation_end = fractions[0], fractions[0] + fractions[1]
    split_of_group = {}
    for key in set(group_of_image.values()):
        position = stable_fraction(seed, key)
        split_of_group[key] = (
            SPLITS[0] if position < train_end else SPLITS[1] if position < validation_end else SPLITS[2]
        )
    return {image_id: split_of_group[key] for image_id, key in group_of_image.items()}


def shuffle_order(image_ids, seed):
    """The image ids in a seeded order that does not depend on the input order."""
    return sorted(image_ids, key=lambda image_id: hashlib.sha256(f"shuffle:{seed}:{image_id}".encode()).digest())
