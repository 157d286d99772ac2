"""Labels and the leak-free split, on small hand-made cases."""

import collections
import hashlib
import random

import numpy as np
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


def _components(edges, nodes):
    """Connected components by a plain search: the reference the grouping must agree with."""
    neighbours = collections.defaultdict(set)
    for first, second in edges:
        neighbours[first].add(second)
        neighbours[second].add(first)
    component = {}
    for start in nodes:
        stack = [start]
        while stack:
            node = stack.pop()
            if node not in component:
                component[node] = start
                stack.extend(neighbours[node])
    return component


@pytest.mark.parametrize("seed", range(4))
def test_groups_are_the_connected_components_keyed_by_their_smallest_image(seed):
    rng = random.Random(seed)
    hashes = {f"img{n:03d}": f"h{rng.randrange(150)}" for n in rng.sample(range(200), 200)}  # not in id order
    # "ghost" images are named by listings but not kept: they still join what they touch, as before.
    names = list(hashes) + [f"ghost{n}" for n in range(10)]
    pairs = [(f"item{rng.randrange(60)}", rng.sample(names, rng.randrange(1, 4))) for _ in range(120)]
    joined = [tuple(rng.sample(names, 2)) for _ in range(10)]
    if seed == 3:  # a long chain of near-duplicates: one component however far its ends are
        joined += [(f"img{n:03d}", f"img{n + 1:03d}") for n in range(100, 199)]
    groups = split.group_images(pairs, hashes, joined)
    edges = [(("item", item), image) for item, image_ids in pairs for image in image_ids]
    edges += [(image, ("content", digest)) for image, digest in hashes.items()]
    edges += [(first, second) for first, second in joined if first in hashes and second in hashes]
    component = _components(edges, sorted(hashes))
    assert list(groups) == sorted(hashes)
    for image, key in groups.items():
        members = [other for other in hashes if component[other] == component[image]]
        assert key == min(members)


@pytest.mark.parametrize("named_join", [True, False])
def test_groups_of_distinct_contents_need_no_content_edges(named_join):
    # The build groups images whose duplicates it dropped: join_contents=False must give the same groups.
    rng = random.Random(5)
    hashes = {f"img{n:03d}": f"h{n}" for n in rng.sample(range(200), 200)}
    names = list(hashes) + ["ghost0", "ghost1"]
    pairs = [(f"item{rng.randrange(60)}", rng.sample(names, rng.randrange(1, 4))) for _ in range(120)]
    joined = [tuple(rng.sample(names, 2)) for _ in range(10)]
    expected = split.group_images(pairs, hashes, joined, named_join)
    assert split.group_images(pairs, dict.fromkeys(hashes), joined, named_join, join_contents=False) == expected


def test_groups_of_no_images_are_none():
    assert split.group_images([("item", ["ghost"])], {}) == {}
    assert split.group_images([], {"a": "h"}, [("a", "ghost")]) == {"a": "a"}


def _classes_by_image_number(group_of_image, num_classes=5):
    types = split.types_per_group(
        group_of_image, {image_id: f"C{int(image_id[3:]) % num_classes}" for image_id in group_of_image}
    )
    return split.class_of_groups(types, {f"C{index}": f"C{index}" for index in range(num_classes)})


def test_split_does_not_depend_on_input_order():
    rng = random.Random(1)
    pairs = [(f"item{n // 3}", [f"img{n}", f"img{n + 1}"]) for n in range(0, 3000, 2)]
    hashes = {f"img{n}": f"h{n}" for n in range(3001)}
    groups = split.group_images(pairs, hashes)
    first = split.assign_splits(groups, _classes_by_image_number(groups), (0.8, 0.1, 0.1), seed=7)
    rng.shuffle(pairs)
    shuffled_hashes = dict(sorted(hashes.items(), key=lambda _: rng.random()))
    shuffled = split.group_images(pairs, shuffled_hashes)
    assert split.assign_splits(shuffled, _classes_by_image_number(shuffled), (0.8, 0.1, 0.1), seed=7) == first
    fractions = [list(first.values()).count(name) / len(first) for name in split.SPLITS]
    assert 0.78 < fractions[0] < 0.82 and 0.08 < fractions[1] < 0.12
    assert split.assign_splits(groups, _classes_by_image_number(groups), (0.8, 0.1, 0.1), seed=8) != first
    assert split.shuffle_order(list(first), 3) == split.shuffle_order(sorted(first, reverse=True), 3)


def test_a_group_counts_as_the_class_of_most_of_its_images():
    groups = {"a1": "a1", "a2": "a1", "a3": "a1", "b1": "b1", "b2": "b1", "c1": "c1", "d1": "d1"}
    types = {"a1": "SOFA", "a2": "CHAIR", "a3": "SOFA", "b1": "SOFA", "b2": "CHAIR", "c1": "LAMP", "d1": None}
    types_of_group = split.types_per_group(groups, types)
    assert types_of_group["a1"] == (("CHAIR", 1), ("SOFA", 2)) and "d1" not in types_of_group
    classes = {"SOFA": "SOFA", "CHAIR": "CHAIR", "LAMP": None}
    assert split.class_of_groups(types_of_group, classes) == {"a1": "SOFA", "b1": "CHAIR"}
    assert split.class_of_groups(types_of_group, dict(classes, CHAIR="OTHER", SOFA="OTHER"))["a1"] == "OTHER"


@pytest.mark.parametrize("seed", range(4))
def test_every_class_with_enough_groups_is_in_every_split(seed):
    """Random classes of 3 to 40 groups of 1 to 12 images: each class has a group in each split, whatever the sizes."""
    rng = random.Random(seed)
    group_of_image, class_of_group = {}, {}
    for class_index in range(60):
        for group_index in range(rng.choice([3, 3, 4, 5, 8, 40])):
            key = f"c{class_index}g{group_index}"
            class_of_group[key] = f"C{class_index}"
            group_of_image.update({f"{key}i{image}": key for image in range(rng.choice([1, 1, 2, 3, 12]))})
    split_of = split.assign_splits(group_of_image, class_of_group, (0.8, 0.1, 0.1), seed)
    groups_in = collections.defaultdict(set)
    for image_id, key in group_of_image.items():
        groups_in[class_of_group[key], split_of[image_id]].add(key)
    assert all(groups_in[name, part] for name in set(class_of_group.values()) for part in split.SPLITS)


def test_the_floors_deal_the_fractions_of_images_and_skip_empty_splits():
    group_of_image = {f"i{n}": f"g{n // 2}" for n in range(400)}  # 200 groups of 2 images, one class
    class_of_group = dict.fromkeys(group_of_image.values(), "A")
    split_of = split.assign_splits(group_of_image, class_of_group, (0.7, 0.2, 0.1), seed=0)
    assert [list(split_of.values()).count(name) for name in split.SPLITS] == [280, 80, 40]
    floors = split.positive_floors((0.9, 0.1, 0.0), (1, 2, 3))
    assert floors == (1, 2, 0)
    three = {"x": "x", "y": "y", "z": "z"}
    split_of = split.assign_splits(three, dict.fromkeys(three, "A"), (0.9, 0.1, 0.0), seed=0, floors=floors)
    assert sorted(split_of.values()) == ["train", "validation", "validation"]


def test_demoting_classes_drops_or_merges_and_a_rare_other_is_dropped():
    vocabulary = labels.make_vocabulary({"A": 50, "B": 20, "C": 5}, min_examples=10, rare_classes="other")
    merged = labels.demote_classes(vocabulary, {"B"}, "other")
    assert merged.names == ("A", "OTHER") and merged.mapping == {"A": "A", "B": "OTHER", "C": "OTHER"}
    dropped = labels.demote_classes(merged, {"OTHER"}, "other")
    assert dropped.names == ("A",) and dropped.mapping["B"] is None and dropped.mapping["C"] is None
    assert labels.demote_classes(vocabulary, {"B"}, "drop").mapping == {"A": "A", "B": None, "C": "OTHER"}


def _ids(rng, count):
    return list(dict.fromkeys("".join(rng.choices("aZ09+-é字", k=rng.randint(1, 12))) for _ in range(count)))


@pytest.mark.parametrize("seed", [0, 7])
def test_keys_hashed_in_bulk_are_the_per_key_definitions(seed):
    ids = _ids(random.Random(seed), 2000)
    assert split.stable_fractions(seed, ids).tolist() == [split.stable_fraction(seed, key) for key in ids]
    by_digest = sorted(ids, key=lambda key: hashlib.sha256(f"shuffle:{seed}:{key}".encode()).digest())
    assert split.shuffle_order(ids, seed) == by_digest
    # Digests sharing their first 8 bytes (here all of them): the other 24 decide, as in a sort by the whole digest.
    words = split.shuffle_digests(ids, seed).copy()
    words[:, 0] = 0
    assert split.shuffle_order(ids, seed, words) == sorted(ids, key=lambda key: words[ids.index(key), 1:].tolist())


@pytest.mark.parametrize("seed", range(3))
def test_groups_dealt_by_one_sort_as_by_a_sort_a_class(seed):
    """Each class's groups dealt in (stable_fraction, key) order, as a sort a class with a key function gave."""
    rng = random.Random(seed)
    ids = _ids(rng, 600)
    group_of_image = {image_id: min(image_id, rng.choice(ids)) for image_id in ids}
    class_of_group = {key: rng.choice(["A", "B", "C", None]) for key in group_of_image.values()}
    class_of_group = {key: name for key, name in class_of_group.items() if name is not None}
    sizes = collections.Counter(group_of_image.values())
    expected = {key: "train" for key in sizes if key not in class_of_group}
    for name in "ABC":
        keys = sorted(
            (key for key in sizes if class_of_group.get(key) == name),
            key=lambda key: (split.stable_fraction(seed, key), key),
        )
        dealt = split._deal([sizes[key] for key in keys], (0.7, 0.2, 0.1), (1, 1, 1))
        expected.update(zip(keys, map(split.SPLITS.__getitem__, dealt)))
    split_of = split.assign_splits(group_of_image, class_of_group, (0.7, 0.2, 0.1), seed)
    assert split_of == {image_id: expected[key] for image_id, key in group_of_image.items()}


@pytest.mark.parametrize("seed", range(3))
def test_classes_voted_on_numbers_as_on_dicts(seed):
    """`vote_classes` (the build's) gives `class_of_groups`' class to each group, ties and dropped types included."""
    rng = random.Random(seed)
    ids = sorted(_ids(rng, 400))
    group_of_image = {image_id: min(image_id, rng.choice(ids)) for image_id in ids}
    type_of_image = {image_id: rng.choice("ABCD") for image_id in ids}
    class_of_type = {"A": "A", "B": "B", "C": None, "D": rng.choice(["A", "D"])}
    expected = split.class_of_groups(split.types_per_group(group_of_image, type_of_image), class_of_type)
    names = sorted(set(class_of_type.values()).difference([None]))
    codes = [
        names.index(class_of_type[type_of_image[image_id]]) if class_of_type[type_of_image[image_id]] else -1
        for image_id in ids
    ]
    group = np.array([ids.index(group_of_image[image_id]) for image_id in ids], np.int64)
    voted = split.vote_classes(group, np.array(codes, np.int64), len(ids))
    assert {ids[at]: names[code] for at, code in enumerate(voted.tolist()) if code >= 0} == expected
