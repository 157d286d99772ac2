"""Feature extraction for the baselines: descriptor shapes, the per-split cache, CNN and run embeddings.

Handcrafted features at 64 px and the small backbone at 32 px: the plumbing, not the features' quality, is under test.
"""

import json
import os

import numpy as np
import pytest

from abo_tf import features
from abo_tf.classical import descriptors, extraction, feature_cache, feature_spec
from abo_tf.common import outputs
from abo_tf.records import schema
from abo_tf.records.split import SPLITS
from abo_tf.training import input_pipeline

HANDCRAFTED_SIZE = 64
CNN_SIZE = 32


def _spec(**overrides):
    return feature_spec.FeatureSpec(**{"kind": feature_spec.HANDCRAFTED, "image_size": HANDCRAFTED_SIZE, **overrides})


def _tiny_cnn(**overrides):
    values = {"kind": feature_spec.CNN, "backbone": "mobilenet_v3_small", "weights": "none", "image_size": CNN_SIZE}
    return feature_spec.FeatureSpec(**{**values, **overrides})


@pytest.fixture(scope="module")
def handcrafted(built_records, tmp_path_factory):
    """Handcrafted features of every split, computed in 2 worker processes; returns (cache_dir, results)."""
    records_dir, _ = built_records
    cache_dir = str(tmp_path_factory.mktemp("feature_cache"))
    return cache_dir, extraction.extract_features(records_dir, _spec(), cache_dir=cache_dir, workers=2, progress=False)


def _records_labels_and_ids(records_dir, split, manifest):
    dataset = input_pipeline.make_dataset(
        records_dir, split, 32, 64, training=False, manifest=manifest, extra_keys=(schema.IMAGE_ID,)
    )
    batches = [(batch["label"].numpy(), batch[schema.IMAGE_ID].numpy()) for batch in dataset]
    return np.concatenate([labels for labels, _ in batches]), [value.decode() for _, ids in batches for value in ids]


# --- descriptors -------------------------------------------------------------


def test_handcrafted_groups_tile_the_columns_with_named_widths():
    groups = descriptors.handcrafted_groups()
    assert list(groups) == ["colour", "shape", "texture"]
    widths = {name: end - start for name, (start, end) in groups.items()}
    # 18 x 4 x 4 HSV bins; HOG: 3 x 3 blocks of 2 x 2 cells of 9 orientations; 10 LBP codes.
    assert widths == {"colour": 18 * 4 * 4, "shape": 3 * 3 * 4 * 9, "texture": 10}
    assert (
        groups["colour"][0] == 0
        and groups["colour"][1] == groups["shape"][0]
        and groups["shape"][1] == groups["texture"][0]
    )
    names = descriptors.handcrafted_feature_names()
    assert len(names) == groups["texture"][1] == len(set(names))


def test_handcrafted_features_shapes_and_normalised_histograms():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 40, 56, 3), dtype=np.uint8)  # not square, not HOG_SIZE: resized inside
    values = descriptors.handcrafted_features(images)
    groups = descriptors.handcrafted_groups()
    assert values.shape == (3, groups["texture"][1]) and values.dtype == np.float32
    for name in ("colour", "texture"):
        start, end = groups[name]
        np.testing.assert_allclose(values[:, start:end].sum(axis=1), 1.0, rtol=1e-5)
    assert descriptors.handcrafted_features(np.zeros((0, 8, 8, 3), np.uint8)).shape == (0, groups["texture"][1])
    with pytest.raises(ValueError, match="uint8"):
        descriptors.handcrafted_features(images.astype(np.float32))


def test_colour_histogram_puts_a_plain_colour_in_its_hue_bin():
    names = descriptors.handcrafted_feature_names()
    start, end = descriptors.handcrafted_groups()["colour"]
    for rgb, hue_bin in (((255, 0, 0), 0), ((0, 255, 0), 6), ((0, 0, 255), 12)):  # OpenCV hue 0, 60, 120 of 0-179
        image = np.broadcast_to(np.array(rgb, np.uint8), (1, 32, 32, 3)).copy()
        colour = descriptors.handcrafted_features(image)[0, start:end]
        assert names[start + int(np.argmax(colour))].startswith(f"hsv_h{hue_bin:02d}_"), rgb
        assert colour.max() == pytest.approx(1.0)


def test_hog_tells_vertical_from_horizontal_edges():
    start, end = descriptors.handcrafted_groups()["shape"]
    vertical = np.zeros((64, 64, 3), np.uint8)
    vertical[:, 32:] = 255
    horizontal = np.ascontiguousarray(vertical.transpose(1, 0, 2))
    flat = np.full((64, 64, 3), 128, np.uint8)
    values = descriptors.handcrafted_features(np.stack([vertical, horizontal, flat]))[:, start:end]
    assert not np.allclose(values[0], values[1])
    assert np.allclose(values[2], 0.0)  # no gradient, no orientation
    # Each block's 4 cells x 9 orientations: the vertical edge's energy sits in the horizontal-gradient bin (0 degrees).
    blocks = values[0].reshape(-1, 4, 9).sum(axis=(0, 1))
    assert np.argmax(blocks) in (0, 8)


# --- extraction and the cache ----------------------------------------------


def test_handcrafted_extraction_matches_the_records(handcrafted, built_records):
    records_dir, manifest = built_records
    _, results = handcrafted
    width = descriptors.handcrafted_groups()["texture"][1]
    for split in SPLITS:
        data = results[split]
        assert data.features.shape == (manifest["splits"][split]["num_examples"], width)
        assert np.isfinite(data.features).all() and not data.cached
        assert data.classes == manifest["classes"] and data.groups == descriptors.handcrafted_groups()
    labels, image_ids = _records_labels_and_ids(records_dir, "validation", manifest)
    np.testing.assert_array_equal(results["validation"].labels, labels)
    assert results["validation"].image_ids.tolist() == image_ids


def test_one_process_gives_the_same_features_as_the_worker_pool(handcrafted, built_records, tmp_path):
    records_dir, _ = built_records
    _, results = handcrafted
    alone = extraction.extract_features(
        records_dir, _spec(), ("validation",), str(tmp_path), batch_size=16, workers=1, progress=False
    )
    np.testing.assert_array_equal(alone["validation"].features, results["validation"].features)


def test_second_call_reuses_the_cache(handcrafted, built_records, monkeypatch):
    from abo_tf.training import input_pipeline

    records_dir, _ = built_records
    cache_dir, first = handcrafted

    def no_computing(*args, **kwargs):
        raise AssertionError("the cached features were computed again, or their records read")

    monkeypatch.setattr(extraction, "_compute_split", no_computing)
    # Neither the records' check (TensorFlow's import: the baselines' first line waited for it) nor the workers.
    monkeypatch.setattr(input_pipeline, "check_records", no_computing)
    monkeypatch.setattr(extraction, "_describer", no_computing)
    second = extraction.extract_features(records_dir, _spec(), cache_dir=cache_dir, workers=2, progress=False)
    for split in SPLITS:
        assert second[split].cached and second[split].path == first[split].path
        np.testing.assert_array_equal(second[split].features, first[split].features)
        assert isinstance(second[split].features, np.memmap)  # paged in, not copied


def test_another_model_or_rebuilt_records_get_another_cache_folder(built_records, tmp_path):
    _, manifest = built_records
    base = feature_spec.resolve_spec(_tiny_cnn())
    folder = feature_cache.cache_folder(str(tmp_path), manifest, base)
    others = [
        feature_spec.resolve_spec(_tiny_cnn(seed=1)),
        feature_spec.resolve_spec(_tiny_cnn(image_size=CNN_SIZE + 8)),
        feature_spec.resolve_spec(_tiny_cnn(backbone="efficientnet_b0")),
        feature_spec.resolve_spec(_spec()),
    ]
    folders = {feature_cache.cache_folder(str(tmp_path), manifest, spec) for spec in others}
    assert folder not in folders and len(folders) == len(others)
    rebuilt = json.loads(json.dumps(manifest))
    rebuilt["fingerprint"] = "0" * 64
    assert feature_cache.cache_folder(str(tmp_path), rebuilt, base) != folder
    assert feature_cache.cache_folder(str(tmp_path), json.loads(json.dumps(manifest)), base) == folder


def test_cnn_embeddings_of_a_backbone_are_cached(built_records, tmp_path):
    records_dir, manifest = built_records
    spec = _tiny_cnn()
    first = extraction.extract_features(records_dir, spec, ("validation",), str(tmp_path), 32, progress=False)
    first = first["validation"]
    assert first.features.shape == (
        manifest["splits"]["validation"]["num_examples"],
        576,
    )  # MobileNetV3Small's last conv
    assert np.isfinite(first.features).all() and np.ptp(first.features, axis=0).max() > 0  # images differ
    assert first.groups == {"cnn": [0, 576]} and first.info["name"] == f"mobilenet_v3_small-none-{spec.image_size}px"
    second = extraction.extract_features(records_dir, spec, ("validation",), str(tmp_path), progress=False)
    second = second["validation"]
    assert second.cached
    np.testing.assert_array_equal(second.features, first.features)


def test_run_embeddings_use_the_run_image_size_and_model_hash(built_records, tmp_path):
    import keras

    from abo_tf.common import config
    from abo_tf.training import models

    records_dir, manifest = built_records
    run = tmp_path / "run"
    run.mkdir()
    keras.utils.set_random_seed(0)
    models.build_model("mobilenet_v3_small", len(manifest["classes"]), CNN_SIZE).save(str(run / "model.keras"))
    config.save_run_config(str(run), {"model": "mobilenet_v3_small", "image_size": CNN_SIZE})
    spec = feature_spec.FeatureSpec(kind=feature_spec.CNN, run=str(run))
    assert feature_spec.resolve_spec(spec).image_size == CNN_SIZE
    result = extraction.extract_features(records_dir, spec, ("validation",), str(tmp_path / "cache"), progress=False)
    result = result["validation"]
    assert (
        result.features.shape == (manifest["splits"]["validation"]["num_examples"], 576)
        and result.info["name"] == "run-run"
    )
    before = feature_cache.cache_key(manifest, feature_spec.resolve_spec(spec))
    with open(run / "model.keras", "ab") as handle:
        handle.write(b"\0")  # another model file: another key
    assert feature_cache.cache_key(manifest, feature_spec.resolve_spec(spec)) != before


# --- bad input ---------------------------------------------------------------


@pytest.mark.parametrize(
    "expected, args",
    [
        ("has no model.keras", ["--features", "cnn", "--run", "{empty_run}"]),
        ("does not exist", ["--features", "cnn", "--run", "{missing}"]),
        ("exactly one of", ["--features", "cnn"]),
        ("unknown backbone", ["--features", "cnn", "--backbone", "alexnet"]),
        (
            "--image-size 16 must be at least 32",
            ["--features", "cnn", "--backbone", "mobilenet_v3_small", "--image-size", "16"],
        ),
        ("no examples in split", ["--splits", "dev"]),
    ],
)
def test_bad_feature_inputs_are_one_line_errors(built_records, tmp_path, capsys, expected, args):
    records_dir, _ = built_records
    (tmp_path / "empty_run").mkdir()
    base = ["--records", records_dir, "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    args = [arg.format(empty_run=tmp_path / "empty_run", missing=tmp_path / "missing") for arg in args]
    assert features.main(base + args) == 2, expected
    error = capsys.readouterr().err.strip()
    assert expected in error and len(error.splitlines()) == 1, (expected, error)


def test_an_emptied_cache_is_reported_not_read_as_zero_examples(handcrafted, built_records, tmp_path, capsys):
    records_dir, _ = built_records
    _, results = handcrafted
    folder = os.path.dirname(results["test"].path)
    empty_cache = tmp_path / "emptied"
    os.makedirs(empty_cache / os.path.basename(folder) / "test")
    (empty_cache / outputs.MARKER).write_text('{"command": "features"}')
    assert (
        features.main(
            [
                "--records",
                records_dir,
                "--cache-dir",
                str(empty_cache),
                "--splits",
                "test",
                "--image-size",
                str(HANDCRAFTED_SIZE),
            ]
        )
        == 2
    )
    error = capsys.readouterr().err.strip()
    assert "empty or incomplete" in error and len(error.splitlines()) == 1, error


def test_a_cache_dir_holding_other_files_is_refused(built_records, tmp_path, capsys):
    records_dir, _ = built_records
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    assert features.main(["--records", records_dir, "--cache-dir", str(tmp_path / "mine"), "--no-progress"]) == 2
    assert "not empty and was not written by `abo_tf.features`" in capsys.readouterr().err
    assert os.listdir(tmp_path / "mine") == ["thesis.tex"]


def test_help_groups_flags_with_defaults(capsys):
    with pytest.raises(SystemExit):
        features.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for heading in ("data:", "features:", "output:"):
        assert heading in text
    assert "(default: 64)" in text and "(default: handcrafted)" in text
