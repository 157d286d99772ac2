"""Labels and the leak-free split, on small hand-made cases."""

import random

import pytest

from abo_tf.records import archive, labels, split


@pytest.mark.parametrize(
    "value, expected",
    [
        ([{"value": "SHOES"}], "SHOES"),
        ("SHOES", "SHOES"),
        (" cellular phone-case ", "CELLULAR_PHONE_CASE"),
        ([], None),
        (None, None),
        ("  ", None),
        ([{"language_tag": "en_US"}], None),
        (42, None),
    ],
)
def test_product_type_normalisation(value, expected):
    assert archive.normalise_product_type(value) == expected


def test_majority_with_alphabetical_tie_break():
    types, conflicts = labels.resolve_image_types(
        {"a": ["SOFA", "CHAIR", "SOFA"], "b": ["SOFA", "CHAIR"], "c": ["LAMP"]}
    )
    assert types == {"a": "SOFA", "b": "CHAIR", "c": "LAMP"} and conflicts == 2


def test_vocabulary_drop_and_other():
    counts = {"A": 50, "B": 20, "C": 5, "D": 1}
    dropped = labels.make_vocabulary(counts, min_examples=10, rare_classes="drop")
    assert dropped.names == ("A", "B") and dropped.mapping["C"] is None
    merged = labels.make_vocabulary(counts, min_examples=10, rare_classes="other")
    assert merged.names == ("A", "B", "OTHER") and merged.label_of("D") == (2, "OTHER")
    capped = labels.make_vocabulary(counts, max_classes=3, rare_classes="other")
    assert capped.names == ("A", "B", "OTHER") and capped.mapping["C"] == "OTHER"
    assert labels.make_vocabulary(counts, max_classes=3).names == ("A", "B", "C")


def _listings():
    # item X on two marketplaces shares image 1; images 2 and 3 share listing; 4 alone; 5 and 6 same bytes.
    return [("X", ["i1"]), ("X", ["i1b"]), ("Y", ["i2", "i3"]), ("Z", ["i4"]), ("V", ["i5"]), ("W", ["i6"])]


def _hashes():
    return {"i1": "h1", "i1b": "h1b", "i2": "h2", "i3": "h3", "i4": "h4", "i5": "same", "i6": "same"}


def test_groups_join_items_listings_and_content():
    groups = split.group_images(_listings(), _hashes())
    assert groups["i1"] == groups["i1b"] == "i1"
    assert groups["i2"] == groups["i3"] == "i2"
    assert groups["i5"] == groups["i6"] == "i5"
    assert groups["i4"] == "i4"


def test_split_does_not_depend_on_input_order():
    rng = random.Random(1)
    pairs = [(f"item{n // 3}", [f"img{n}", f"img{n + 1}"]) for n in range(0, 3000, 2)]
    hashes = {f"img{n}": f"h{n}" for n in range(3001)}
    first = split.assign_splits(split.group_images(pairs, hashes), (0.8, 0.1, 0.1), seed=7)
    rng.shuffle(pairs)
    shuffled_hashes = dict(sorted(hashes.items(), key=lambda _: rng.random()))
    second = split.assign_splits(split.group_images(pairs, shuffled_hashes), (0.8, 0.1, 0.1), seed=7)
    assert first == second
    fractions = [list(first.values()).count(name) / len(first) for name in split.SPLITS]
    assert 0.75 < fractions[0] < 0.85 and 0.06 < fractions[1] < 0.14
    assert split.assign_splits(split.group_images(pairs, hashes), (0.8, 0.1, 0.1), seed=8) != first
    assert split.shuffle_order(list(first), 3) == split.shuffle_order(sorted(first, reverse=True), 3)
