"""Labels: one product type per image, conflicts resolved by a stated rule, the vocabulary.

Rule for conflicts (listed in README and manifest): an image takes the product
type shared by most of the listings that show it; a tie goes to the
alphabetically first type. Items listed under different types on different
marketplaces, and images shown by listings of different types, are counted.
"""

import collections
import dataclasses

OTHER = "OTHER"
CONFLICT_RULE = "majority of the listings showing the image; ties to the alphabetically first type"
RARE_CLASS_ACTIONS = ("drop", "other")


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """The classes kept, sorted by name; a label is an index into `names`."""

    names: tuple[str, ...]
    mapping: dict  # product type (as resolved) -> class name kept, or None if dropped

    def label_of(self, product_type):
        """Returns `(label, class name)` or None when the type's examples are dropped."""
        name = self.mapping.get(product_type)
        return None if name is None else (self._index[name], name)

    def __post_init__(self):
        if len(set(self.names)) != len(self.names) or list(self.names) != sorted(self.names):
            raise ValueError(f"class names must be unique and sorted: {self.names}")
        object.__setattr__(self, "_index", {name: index for index, name in enumerate(self.names)})


def resolve_image_types(listing_types_per_image):
    """Picks each image's product type from the types of the listings showing it.

    Args:
      listing_types_per_image: dict image id -> list of product types (one per listing).

    Returns:
      `(types, num_conflicting_images)`: dict image id -> type, and how many
      images had listings of more than one type.
    """
    types, conflicts = {}, 0
    for image_id, listing_types in listing_types_per_image.items():
        if listing_types.count(listing_types[0]) == len(listing_types):  # nearly every image: one type; a Counter
            types[image_id] = listing_types[0]  # for it was most of this loop's time
            continue
        counts = collections.Counter(listing_types)
        conflicts += len(counts) > 1
        types[image_id] = min(counts, key=lambda name: (-counts[name], name))
    return types, conflicts


def count_conflicting_items(listings):
    """Number of item ids listed under more than one product type."""
    types_per_item = collections.defaultdict(set)
    for listing in listings:
        types_per_item[listing.item_id].add(listing.product_type)
    return sum(len(types) > 1 for types in types_per_item.values())


def make_vocabulary(examples_per_type, min_examples=1, max_classes=None, rare_classes="drop"):
    """Chooses the classes: frequent types kept, the others dropped or merged into OTHER.

    Args:
      examples_per_type: dict product type -> number of examples.
      min_examples: types with fewer examples are rare.
      max_classes: keep at most this many types (most frequent first, ties by
        name); the rest are rare too. With "other", OTHER is one of them.
      rare_classes: "drop" their examples or merge them into "other".

    Returns:
      A `Vocabulary`.
    """
    if rare_classes not in RARE_CLASS_ACTIONS:
        raise ValueError(f"rare_classes={rare_classes!r} is not one of {RARE_CLASS_ACTIONS}")
    ranked = sorted(examples_per_type, key=lambda name: (-examples_per_type[name], name))
    frequent = [name for name in ranked if examples_per_type[name] >= min_examples]
    if max_classes is not None:
        # With "other", OTHER takes one of the max_classes places whenever a type is merged.
        merges = rare_classes == "other" and len(ranked) > min(len(frequent), max_classes)
        frequent = frequent[: max_classes - 1 if merges else max_classes]
    frequent = set(frequent)
    fallback = OTHER if rare_classes == "other" else None
    mapping = {name: name if name in frequent else fallback for name in ranked}
    names = tuple(sorted({name for name in mapping.values() if name is not None}))
    return Vocabulary(names, mapping)


def demote_classes(vocabulary, rare_names, rare_classes="drop"):
    """The vocabulary with the classes `rare_names` dropped or merged into OTHER.

    OTHER itself, when rare, is dropped: there is nothing left to merge it into.

    Args:
      vocabulary: a `Vocabulary`.
      rare_names: class names of `vocabulary` that are no longer classes of their own.
      rare_classes: "drop" their examples or merge them into "other".

    Returns:
      A `Vocabulary`.
    """
    fallback = OTHER if rare_classes == "other" else None
    mapping = {
        product_type: name if name not in rare_names else None if name == OTHER else fallback
        for product_type, name in vocabulary.mapping.items()
    }
    return Vocabulary(tuple(sorted({name for name in mapping.values() if name is not None})), mapping)
