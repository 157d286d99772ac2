"""The blind catalog generator: deterministic, well-formed shots, mostly on white, with the variants asked for."""

import numpy as np
import pytest

from abo_tf.testing import blind_catalog

COUNT = 30
SIDE = 96


@pytest.fixture(scope="module")
def catalog():
    return blind_catalog.catalog_shots(COUNT, seed=3, side=SIDE, with_families=True)


def test_same_seed_same_pixels_other_seed_other_pixels(catalog):
    shots, _ = catalog
    again = blind_catalog.catalog_shots(COUNT, seed=3, side=SIDE)
    other = blind_catalog.catalog_shots(6, seed=4, side=SIDE)
    assert list(again) == list(shots) and all(np.array_equal(again[name], shots[name]) for name in shots)
    assert not any(np.array_equal(pixels, shots[name]) for name, pixels in other.items())


def test_shapes_dtypes_and_names(catalog):
    shots, families = catalog
    assert list(shots) == [f"blind-{index:05d}" for index in range(COUNT)] == list(families)
    assert all(pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3 for pixels in shots.values())
    assert all(max(pixels.shape[:2]) == SIDE and min(pixels.shape[:2]) >= 0.6 * SIDE for pixels in shots.values())
    assert len({pixels.shape[:2] for pixels in shots.values()}) > 1  # square, portrait and landscape frames


def test_background_mostly_white(catalog):
    shots, _ = catalog

    def border_white_share(pixels):
        border = np.concatenate([pixels[:3].reshape(-1, 3), pixels[-3:].reshape(-1, 3), pixels[:, :3].reshape(-1, 3)])
        return np.mean(border.min(axis=1) >= 215)

    assert np.mean([border_white_share(pixels) >= 0.6 for pixels in shots.values()]) >= 0.6


def test_variants_share_families_in_the_ratio_asked(catalog):
    shots, families = catalog
    plans = blind_catalog.shot_plans(COUNT, 3)
    variants = [plan for plan in plans if plan.variation]
    assert len(variants) == round(blind_catalog.VARIANT_SHARE * COUNT)
    firsts = {plan.name for plan in plans if not plan.variation}
    assert all(families[plan.name] == plan.family != plan.name and plan.family in firsts for plan in variants)
    assert {plan.variation for plan in blind_catalog.shot_plans(400, 0)} == {"", *blind_catalog.VARIATIONS}
    # A variant is another photograph, never the first shot's pixels.
    assert all(not np.array_equal(shots[plan.name], shots[plan.family]) for plan in variants)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="count=-1"):
        blind_catalog.catalog_shots(-1, seed=0)
    with pytest.raises(ValueError, match="count=5001"):  # refused before any shot is held
        blind_catalog.catalog_shots(blind_catalog.MAX_SHOTS + 1, seed=0)
