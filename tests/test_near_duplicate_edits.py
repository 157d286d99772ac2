"""The near-duplicate audit on real photographs (scikit-image's, scikit-learn's): every edit family a catalog
makes, at the strength the sample generator plants, against distinct shots of the same photographs."""

import pytest

from abo_tf.auditing import near_duplicates
from abo_tf.testing import image_edits

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "china", "flower")
# Families (alone or combined) some copy of which the audit misses here: those that move or cover pixels, and a
# brightening of 15% that clips a bright photo (the rest are found every time).
NOT_ALWAYS_FOUND = {
    "crop_one_side",
    "crop_all_sides",
    "pad_to_square",
    "rotate",
    "badge",
    "brightness",
    "resize+brightness",
    "pad+mirror",
    "rotate+crop",
    "badge+saturation",
}


@pytest.fixture(scope="module")
def planted():
    pytest.importorskip("skimage")
    photos = {name: pixels for name, pixels in image_edits.real_photographs().items() if name in PHOTOS}
    shots = image_edits.distinct_shots(photos, side=192, scales=(0.6,))
    cases = list(image_edits.PLANTED_EDITS.items())
    encoded, shot_of, truth = image_edits.planted_set(shots, cases, seed=0)
    hashed = near_duplicates.hashed_images(near_duplicates.stack_signatures(map(near_duplicates.signature, encoded)))
    return hashed, shot_of, truth


def test_edits_change_the_bytes_and_keep_the_size_sane(planted):
    hashed, _, truth = planted
    assert {family for _, _, family, _ in truth} == set(image_edits.PLANTED_EDITS)
    assert len({(int(code), bytes(row)) for code, row in zip(hashed.hashes, hashed.thumbnails)}) > len(truth) // 2


def test_every_family_is_found_without_joining_distinct_shots(planted):
    hashed, shot_of, truth = planted
    forest = near_duplicates.near_duplicate_forest(hashed)
    recall, unplanted = image_edits.score_groups(forest.groups(), shot_of, truth)
    recall = {family: value for (family, _), value in recall.items()}
    assert unplanted == 0
    assert {family for family, value in recall.items() if value < 1} <= NOT_ALWAYS_FOUND, recall
    # Where issue 18 still falls short (benchmarks/results/near_duplicates.json): padding (6 of these 11 copies,
    # left to ORB since the thumbnail is untrimmed), turns, badges, one-sided crops (8 or 9).
    assert min(recall.values()) >= 0.5, sorted(recall.items(), key=lambda item: item[1])[:4]
