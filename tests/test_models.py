"""abo_tf.training.models on tiny images with random weights: building, one step, freezing, weights files."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from abo_tf.common.errors import UserInputError
from abo_tf.training import models

SIZE = 32  # the smallest input Keras Applications accept: fast on CPU


def random_images(count=2, size=SIZE, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def train_step(model, images, labels):
    optimizer = keras.optimizers.SGD(learning_rate=0.01)
    with tf.GradientTape() as tape:
        logits = model(images, training=True)
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))
    optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
    return float(loss)


@pytest.fixture
def mixed_precision():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


@pytest.mark.parametrize("backbone", ["vgg16", "resnet50"])
def test_big_backbones_build_and_take_a_training_step(backbone):
    model = models.build_model(backbone, num_classes=3, image_size=SIZE)
    assert model.input.dtype == "uint8" and model.output.shape == (None, 3)
    before = model.get_layer("logits").get_weights()[0].copy()
    loss = train_step(model, random_images(), np.array([0, 2]))
    assert np.isfinite(loss)
    assert not np.array_equal(model.get_layer("logits").get_weights()[0], before)


@pytest.mark.parametrize("backbone", ["mobilenet_v3_small", "efficientnet_b0"])
def test_small_backbones_build(backbone):
    model = models.build_model(backbone, num_classes=4, image_size=SIZE)
    logits = model(random_images(), training=False)
    assert logits.shape == (2, 4) and logits.dtype == tf.float32
    assert np.all(np.isfinite(logits.numpy()))


def test_logits_are_float32_under_mixed_precision(mixed_precision):
    model = models.build_model("mobilenet_v3_small", num_classes=3, image_size=SIZE)
    assert models.backbone_of(model).output.dtype == "float16"
    assert model.get_layer("preprocess").compute_dtype == "float32"
    logits = model(random_images(), training=False)
    assert logits.dtype == tf.float32


def test_the_model_applies_the_backbones_own_preprocessing():
    model = models.build_model("vgg16", num_classes=2, image_size=SIZE)
    images = random_images()
    inside = model.get_layer("preprocess")(images)
    expected = keras.applications.vgg16.preprocess_input(images.astype(np.float32))
    np.testing.assert_allclose(np.asarray(inside), expected, atol=1e-4)


def trainable_count(layers):
    return sum(len(layer.trainable_weights) for layer in layers)


def test_freezing_and_unfreezing_count_trainable_weights():
    model = models.build_model("mobilenet_v3_small", num_classes=3, image_size=SIZE)
    backbone = models.backbone_of(model)
    head = len(model.get_layer("logits").trainable_weights)
    batch_norm = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    everything = len(model.trainable_weights)

    models.set_backbone_trainable(model, False)
    assert len(model.trainable_weights) == head

    models.set_backbone_trainable(model, True, freeze_batch_norm=True)
    assert len(model.trainable_weights) == everything - 2 * len(batch_norm)  # gamma and beta stay

    models.set_backbone_trainable(model, 10, freeze_batch_norm=True)
    top = [layer for layer in backbone.layers[-10:] if layer not in batch_norm]
    assert len(model.trainable_weights) == head + sum(len(layer.weights) for layer in top)
    assert not any(layer.trainable for layer in backbone.layers[:-10])

    models.set_backbone_trainable(model, True)  # from scratch (weights=None): batch norm learns too
    assert len(model.trainable_weights) == everything


@pytest.mark.parametrize("trainable", [0, -3, "all", 2.5])
def test_set_backbone_trainable_refuses_other_values(trainable):
    model = models.build_model("mobilenet_v3_small", num_classes=2, image_size=SIZE)
    with pytest.raises(UserInputError, match="trainable"):
        models.set_backbone_trainable(model, trainable)


def moving_means(model):
    layers = [layer for layer in models.backbone_of(model).layers if isinstance(layer, keras.layers.BatchNormalization)]
    return np.concatenate([layer.moving_mean.numpy() for layer in layers])


def test_frozen_batch_norm_keeps_its_statistics_in_a_training_step():
    # Keras 3 lets model(x, training=True) override the backbone's training=False;
    # the frozen BatchNormalization layers must still run in inference mode.
    model = models.build_model("resnet50", num_classes=2, image_size=SIZE)
    models.set_backbone_trainable(model, True, freeze_batch_norm=True)
    before = moving_means(model)
    train_step(model, random_images(), np.array([0, 1]))
    np.testing.assert_array_equal(moving_means(model), before)

    models.set_backbone_trainable(model, True, freeze_batch_norm=False)
    train_step(model, random_images(), np.array([0, 1]))
    assert not np.array_equal(moving_means(model), before)


def test_weights_from_a_file(tmp_path):
    source = models.build_model("mobilenet_v3_small", num_classes=2, image_size=SIZE)
    path = tmp_path / "backbone.weights.h5"
    models.backbone_of(source).save_weights(str(path))
    model = models.build_model("mobilenet_v3_small", num_classes=5, image_size=SIZE, weights=str(path))
    for loaded, saved in zip(models.backbone_of(model).get_weights(), models.backbone_of(source).get_weights()):
        np.testing.assert_array_equal(loaded, saved)
    # Pretrained weights: batch norm starts frozen.
    assert not any(
        layer.trainable
        for layer in models.backbone_of(model).layers
        if isinstance(layer, keras.layers.BatchNormalization)
    )


@pytest.mark.filterwarnings("ignore::UserWarning")  # Keras warns about each layer it skips before it fails
def test_weights_file_errors(tmp_path):
    with pytest.raises(UserInputError, match="does not exist"):
        models.build_model("vgg16", num_classes=2, image_size=SIZE, weights=str(tmp_path / "missing.h5"))
    path = tmp_path / "mobilenet.weights.h5"
    models.build_backbone("mobilenet_v3_small", SIZE).save_weights(str(path))
    with pytest.raises(UserInputError, match="does not fit the vgg16"):
        models.build_model("vgg16", num_classes=2, image_size=SIZE, weights=str(path))


_OFFLINE_BUILD = """
import socket
socket.setdefaulttimeout(10)
from abo_tf.training import models
from abo_tf.common.errors import UserInputError
try:
    models.build_model("mobilenet_v3_small", 2, 32, weights="imagenet")
except UserInputError as error:
    print("USER_ERROR", error)
"""


@pytest.mark.slow
def test_imagenet_weights_that_cannot_be_downloaded_are_a_user_error(tmp_path):
    # Keras reads KERAS_HOME at import: a fresh process. The proxy on the
    # discard port makes the download fail at once, online or not.
    env = dict(
        os.environ,
        KERAS_HOME=str(tmp_path),
        TF_CPP_MIN_LOG_LEVEL="3",
        no_proxy="",
        NO_PROXY="",
        https_proxy="http://127.0.0.1:9",
        HTTPS_PROXY="http://127.0.0.1:9",
    )
    result = subprocess.run(
        [sys.executable, "-c", _OFFLINE_BUILD], env=env, capture_output=True, text=True, timeout=120
    )
    message = [line for line in result.stdout.splitlines() if line.startswith("USER_ERROR")]
    assert len(message) == 1, result.stdout + result.stderr
    assert "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5" in message[0]
    assert os.path.join(str(tmp_path), "models") in message[0]
    assert "--weights PATH" in message[0]


def test_unknown_backbone_and_tiny_images_are_user_errors():
    with pytest.raises(UserInputError, match=r"'vgg17'.*resnet50"):
        models.build_model("vgg17", num_classes=2, image_size=SIZE)
    with pytest.raises(UserInputError, match="16.*at least 32"):
        models.build_model("resnet50", num_classes=2, image_size=16)
    with pytest.raises(UserInputError, match="num_classes"):
        models.build_model("resnet50", num_classes=0, image_size=SIZE)


@pytest.mark.parametrize("backbone,layer", [("vgg16", "block5_conv3"), ("resnet50", "conv5_block3_out")])
def test_find_last_conv_layer(backbone, layer):
    model = models.build_model(backbone, num_classes=2, image_size=SIZE)
    assert models.find_last_conv_layer(model) == layer


def test_model_keras_file_round_trip(tmp_path):
    model = models.build_model("mobilenet_v3_small", num_classes=3, image_size=SIZE)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)  # safe_mode: no Lambda layers
    images = random_images()
    np.testing.assert_allclose(loaded(images, training=False), model(images, training=False), atol=1e-5)
    assert models.find_last_conv_layer(loaded) == models.find_last_conv_layer(model)


# Keras' own names: EfficientNetV2 picks its architecture by its name, ImageNet ConvNeXt checks its name.
@pytest.mark.parametrize(
    "backbone,keras_name,last_map",
    [("efficientnetv2_b0", "efficientnetv2-b0", "top_activation"), ("convnext_tiny", "convnext_tiny", None)],
)
def test_current_backbones_unfreeze_and_copy_at_another_size(backbone, keras_name, last_map):
    from abo_tf.training import loop

    model = models.build_model(backbone, num_classes=3, image_size=SIZE, weights=None)
    network = models.backbone_of(model)
    assert network.name == keras_name and models.BACKBONES[backbone].preprocess_input(np.float32(7.0)) == 7.0
    assert last_map is None or models.find_last_conv_layer(model) == last_map
    model.pretrained_backbone = True  # as if fine-tuning ImageNet weights: BatchNormalization frozen, not LayerNorm
    models.set_backbone_trainable(model, True)
    frozen = [layer for layer in network.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(model.trainable_weights) == len(model.weights) - 4 * len(frozen)  # gamma, beta, moving mean/var
    assert not frozen or not any(layer.trainable for layer in frozen)
    # The float32 copy for --eval-image-size: rebuilt from the config at 48 px, it computes the model at 48 px.
    copy = loop._plain_copy(models.accept_any_image_size(model), image_size=48)
    images = random_images(size=48)
    assert copy.input.shape[1] == 48
    np.testing.assert_allclose(copy(images, training=False), model(images, training=False), rtol=1e-5, atol=1e-6)


def test_backbone_of_refuses_a_model_without_one():
    inputs = keras.Input((SIZE, SIZE, 3))
    with pytest.raises(UserInputError, match="nests 0 models"):
        models.backbone_of(keras.Model(inputs, keras.layers.Conv2D(2, 3)(inputs)))
