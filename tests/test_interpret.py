"""Grad-CAM: shapes on the real backbones, and that it finds the region that decides the class."""

import keras
import numpy as np
import pytest

from abo_tf.reports import gradcam as interpret
from abo_tf.training import models

SIDE, PATCH = 48, 12
RED, BLUE, GREEN = (220, 30, 30), (30, 30, 220), (30, 200, 30)


def _patch_images(count, rng):
    """Gray noise with a red (class 0) or blue (class 1) patch, and a green decoy patch in every image."""
    images = rng.integers(90, 150, size=(count, SIDE, SIDE, 3)).astype(np.uint8)
    labels = rng.integers(0, 2, size=count)
    masks = np.zeros((count, SIDE, SIDE), bool)
    for index in range(count):
        # The decisive patch in one half, the decoy in the other, so they never overlap.
        left = rng.integers(0, 2) == 0
        row, column = rng.integers(0, SIDE - PATCH, size=2)
        column = column // 2 + (0 if left else SIDE // 2 - PATCH // 2)
        images[index, row : row + PATCH, column : column + PATCH] = RED if labels[index] == 0 else BLUE
        masks[index, row : row + PATCH, column : column + PATCH] = True
        decoy_row, decoy_column = (
            rng.integers(0, SIDE - PATCH),
            rng.integers(0, SIDE // 2 - PATCH) + (SIDE // 2 if left else 0),
        )
        images[index, decoy_row : decoy_row + PATCH, decoy_column : decoy_column + PATCH] = GREEN
    return images, labels, masks


@pytest.fixture(scope="module")
def patch_classifier():
    """A small CNN (local receptive fields) trained until it tells red from blue patches."""
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    images = keras.Input((SIDE, SIDE, 3), dtype="uint8")
    hidden = keras.layers.Rescaling(1 / 255.0)(images)
    hidden = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(hidden)
    hidden = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="features")(hidden)
    logits = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(hidden))
    model = keras.Model(images, logits)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    train_images, train_labels, _ = _patch_images(384, rng)
    model.fit(train_images, train_labels, batch_size=32, epochs=8, verbose=0)
    test = _patch_images(32, rng)
    assert model.evaluate(test[0], test[1], verbose=0)[1] >= 0.95
    return model, test


def test_grad_cam_highlights_the_patch_that_decides_the_class(patch_classifier):
    model, (images, labels, masks) = patch_classifier
    assert models.find_last_conv_layer(model) == "features"
    heatmaps, explained = interpret.grad_cam(model, images, labels)
    assert heatmaps.shape == (len(images), SIDE, SIDE) and heatmaps.min() >= 0 and heatmaps.max() <= 1
    assert explained.tolist() == labels.tolist()
    peaks = [masks[index][np.unravel_index(heatmaps[index].argmax(), (SIDE, SIDE))] for index in range(len(images))]
    inside = np.array([heatmaps[index][masks[index]].mean() for index in range(len(images))])
    outside = np.array([heatmaps[index][~masks[index]].mean() for index in range(len(images))])
    assert np.mean(peaks) >= 0.9  # the hottest pixel is on the decisive patch, not on the decoy
    assert np.median(inside / outside) > 3


@pytest.mark.parametrize("backbone, layer, cells", [("vgg16", "block5_conv3", 2), ("resnet50", "conv5_block3_out", 1)])
def test_grad_cam_on_classifier_backbones(backbone, layer, cells, tmp_path):
    model = models.build_model(backbone, num_classes=3, image_size=32)
    explainer, found = interpret.gradcam_model(model)
    assert found == layer
    feature_map, logits = explainer(np.zeros((1, 32, 32, 3), np.uint8))
    assert feature_map.shape[1:3] == (cells, cells) and logits.shape == (1, 3)
    assert interpret.feature_map_grid(model) == (cells, cells)
    assert f"only {cells} x {cells} cells" in interpret.coarseness_note((cells, cells), 32)
    images = np.random.default_rng(1).integers(0, 255, size=(2, 32, 32, 3)).astype(np.uint8)
    heatmaps, explained = interpret.grad_cam(model, images)
    assert heatmaps.shape == (2, 32, 32) and heatmaps.min() >= 0 and heatmaps.max() <= 1
    # The explanation follows the model's own prediction by default.
    assert explained.tolist() == np.argmax(model.predict(images, verbose=0), axis=1).tolist()
    panels = [{"image": image, "heatmap": heatmap, "caption": "x"} for image, heatmap in zip(images, heatmaps)]
    path = interpret.plot_gradcam(panels, str(tmp_path / "gradcam.png"), grid=(cells, cells))
    assert open(path, "rb").read(4) == b"\x89PNG"


def test_unknown_layer_is_a_clear_error():
    model = models.build_model("mobilenet_v3_small", num_classes=2, image_size=32)
    with pytest.raises(ValueError, match="no layer 'nope'"):
        interpret.gradcam_model(model, "nope")
