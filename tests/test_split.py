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


def _split_of_images(ordered, group, class_code, fractions, seed, floors=(1, 1, 1)):
    """Each image's split (an index into SPLITS) by the build's steps (`records.build._plan_splits`): the groups'
    classes voted, their keys' fractions hashed, the groups dealt in key order."""
    sizes = np.bincount(group, minlength=len(ordered))
    keys = np.flatnonzero(sizes)  # a group's number is its smallest image's: in key order
    classes = split.vote_classes(group, class_code, len(ordered))[keys]
    key_fractions = split.stable_fractions(seed, [ordered[key] for key in keys.tolist()])
    split_of_group = np.zeros(len(ordered), np.int64)
    split_of_group[keys] = split.deal_groups(sizes[keys], classes, key_fractions, fractions, floors)
    return split_of_group[group]


def _shuffled(image_ids, seed):
    """`image_ids` in the build's shuffled order."""
    return [image_ids[at] for at in split.shuffled_positions(split.shuffle_digests(image_ids, seed)).tolist()]


def _split_by_id(pairs, hashes, seed, num_classes=5):
    ordered, group = split.group_numbers(pairs, hashes)
    class_code = np.array([int(image_id[3:]) % num_classes for image_id in ordered], np.int64)
    return dict(zip(ordered, _split_of_images(ordered, group, class_code, (0.8, 0.1, 0.1), seed).tolist()))


def test_split_does_not_depend_on_input_order():
    rng = random.Random(1)
    pairs = [(f"item{n // 3}", [f"img{n}", f"img{n + 1}"]) for n in range(0, 3000, 2)]
    hashes = {f"img{n}": f"h{n}" for n in range(3001)}
    first = _split_by_id(pairs, hashes, seed=7)
    rng.shuffle(pairs)
    shuffled_hashes = dict(sorted(hashes.items(), key=lambda _: rng.random()))
    assert _split_by_id(pairs, shuffled_hashes, seed=7) == first
    fractions = [list(first.values()).count(code) / len(first) for code in range(len(split.SPLITS))]
    assert 0.78 < fractions[0] < 0.82 and 0.08 < fractions[1] < 0.12
    assert _split_by_id(pairs, hashes, seed=8) != first
    ids = list(first)
    assert _shuffled(ids, 3) == _shuffled(ids[::-1], 3) != ids
    assert _shuffled(ids, 3) != _shuffled(ids, 4)


def test_a_group_counts_as_the_class_of_most_of_its_images():
    # Groups, numbered by their first image: 0 = SOFA CHAIR SOFA, 3 = SOFA CHAIR (a tie), 5 = LAMP LAMP SOFA (LAMP
    # dropped: no vote), 8 = LAMP.
    group = np.array([0, 0, 0, 3, 3, 5, 5, 5, 8], np.int64)
    types = ["SOFA", "CHAIR", "SOFA", "SOFA", "CHAIR", "LAMP", "LAMP", "SOFA", "LAMP"]

    def voted(class_of_type):
        names = sorted(set(class_of_type.values()).difference([None]))  # codes in name order, as the build's
        codes = [names.index(class_of_type[name]) if class_of_type[name] else -1 for name in types]
        result = split.vote_classes(group, np.array(codes, np.int64), 9).tolist()
        return {at: names[code] for at, code in enumerate(result) if code >= 0}

    classes = {"SOFA": "SOFA", "CHAIR": "CHAIR", "LAMP": None}
    assert voted(classes) == {0: "SOFA", 3: "CHAIR", 5: "SOFA"}
    assert voted(dict(classes, SOFA="A_SOFA")) == {0: "A_SOFA", 3: "A_SOFA", 5: "A_SOFA"}  # a tie: by class name
    assert voted(dict(classes, CHAIR="OTHER", SOFA="OTHER")) == {0: "OTHER", 3: "OTHER", 5: "OTHER"}
    assert voted(dict(classes, LAMP="LAMP")) == {0: "SOFA", 3: "CHAIR", 5: "LAMP", 8: "LAMP"}


@pytest.mark.parametrize("seed", range(4))
def test_every_class_with_enough_groups_is_in_every_split(seed):
    """Random classes of 3 to 40 groups of 1 to 12 images: each class has a group in each split, whatever the sizes."""
    rng = random.Random(seed)
    keys, sizes, codes = [], [], []
    for class_index in range(60):
        for group_index in range(rng.choice([3, 3, 4, 5, 8, 40])):
            keys.append(f"c{class_index:02d}g{group_index:02d}")
            sizes.append(rng.choice([1, 1, 2, 3, 12]))
            codes.append(class_index)
    fractions = split.stable_fractions(seed, keys)
    dealt = split.deal_groups(np.array(sizes), np.array(codes), fractions, (0.8, 0.1, 0.1))
    assert set(zip(codes, dealt.tolist())) == {(code, part) for code in range(60) for part in range(3)}


def test_the_floors_deal_the_fractions_of_images_and_skip_empty_splits():
    sizes, one_class = np.full(200, 2), np.zeros(200, np.int64)  # 200 groups of 2 images
    fractions = split.stable_fractions(0, [f"g{n:03d}" for n in range(200)])
    dealt = split.deal_groups(sizes, one_class, fractions, (0.7, 0.2, 0.1))
    assert np.bincount(dealt, weights=sizes).tolist() == [280, 80, 40]
    floors = split.positive_floors((0.9, 0.1, 0.0), (1, 2, 3))
    assert floors == (1, 2, 0)
    dealt = split.deal_groups(np.ones(3, np.int64), np.zeros(3, np.int64), fractions[:3], (0.9, 0.1, 0.0), floors)
    assert sorted(dealt.tolist()) == [0, 1, 1]
    # The floors given are kept where the fraction is positive, whatever the order of the groups.
    dealt = split.deal_groups(np.ones(6, np.int64), np.zeros(6, np.int64), fractions[:6], (0.9, 0.1, 0.0), (1, 2, 3))
    assert np.bincount(dealt, minlength=3).tolist() == [4, 2, 0]
    groupless = split.deal_groups(np.ones(3, np.int64), np.full(3, -1), fractions[:3], (0.1, 0.1, 0.8))
    assert groupless.tolist() == [0, 0, 0]  # no class: train
    tie = split.deal_groups(np.ones(1, np.int64), np.zeros(1, np.int64), fractions[:1], (0.5, 0.5, 0.0), (0, 0, 0))
    assert tie.tolist() == [0]  # equal deficits: the first split


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
    assert _shuffled(ids, seed) == by_digest
    # Digests sharing their first 8 bytes (here all of them): the other 24 decide, as in a sort by the whole digest.
    words = split.shuffle_digests(ids, seed).copy()
    words[:, 0] = 0
    by_words = sorted(range(len(ids)), key=lambda at: words[at, 1:].tolist())
    assert split.shuffled_positions(words).tolist() == by_words


def _random_groups(rng, ids):
    """Each id joined to a random other's group: `(ids sorted, each one's group number, as group_numbers gives)`."""
    ordered, smallest = sorted(ids), []
    for at in range(len(ordered)):
        other = min(at, rng.randrange(len(ordered)))
        smallest.append(other if other == at else smallest[other])  # the smallest of the group joined
    return ordered, np.array(smallest, np.int64)


@pytest.mark.parametrize("seed", range(3))
def test_groups_dealt_by_one_sort_as_by_a_sort_a_class(seed):
    """Each class's groups dealt in (stable_fraction, key) order, as a sort a class with a key function gave."""
    rng = random.Random(seed)
    ordered, group = _random_groups(rng, _ids(rng, 600))
    keys = sorted(set(group.tolist()))
    class_of_group = {key: rng.choice([0, 1, 2, -1]) for key in keys}
    sizes = collections.Counter(group.tolist())
    expected = {key: 0 for key in keys if class_of_group[key] < 0}
    for code in range(3):
        dealing = sorted(
            (key for key in keys if class_of_group[key] == code),
            key=lambda key: (split.stable_fraction(seed, ordered[key]), ordered[key]),
        )
        expected.update(zip(dealing, split._deal([sizes[key] for key in dealing], (0.7, 0.2, 0.1), (1, 1, 1))))
    class_code = np.array([class_of_group[key] for key in group.tolist()], np.int64)
    dealt = _split_of_images(ordered, group, class_code, (0.7, 0.2, 0.1), seed)
    assert dealt.tolist() == [expected[key] for key in group.tolist()]


@pytest.mark.parametrize("seed", range(3))
def test_classes_voted_on_numbers_as_by_counting(seed):
    """`vote_classes` gives each group the class of most of its images, ties to the first name, dropped types no
    vote, merged classes counted together: a count a group is the reference."""
    rng = random.Random(seed)
    ordered, group = _random_groups(rng, _ids(rng, 400))
    type_of_image = [rng.choice("ABCD") for _ in ordered]
    class_of_type = {"A": "A", "B": "B", "C": None, "D": rng.choice(["A", "D"])}
    votes = collections.defaultdict(collections.Counter)
    for key, product_type in zip(group.tolist(), type_of_image):
        if class_of_type[product_type] is not None:
            votes[key][class_of_type[product_type]] += 1
    expected = {key: min(count, key=lambda name: (-count[name], name)) for key, count in votes.items()}
    names = sorted(set(class_of_type.values()).difference([None]))
    codes = [names.index(class_of_type[name]) if class_of_type[name] else -1 for name in type_of_image]
    voted = split.vote_classes(group, np.array(codes, np.int64), len(ordered))
    assert {at: names[code] for at, code in enumerate(voted.tolist()) if code >= 0} == expected
