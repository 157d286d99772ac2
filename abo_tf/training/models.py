"""Classifiers on Keras Applications backbones: uint8 image in, float32 logits out.

    image (uint8) -> preprocess (cast + the backbone's own preprocess_input)
    -> backbone -> global average pooling -> dropout -> logits (float32)

Normalisation is a layer inside the model, so a SavedModel or a `model.keras`
file takes the same uint8 pixels as training and cannot normalise differently.
"""

import dataclasses
import os

import keras
import numpy as np

from abo_tf.common.errors import InputNotFoundError, UserInputError, first_line

MIN_IMAGE_SIZE = 32  # Keras Applications refuse smaller inputs
NO_WEIGHTS = "none"  # the CLI's spelling of weights=None
FROM_SCRATCH_BATCH_NORM_MOMENTUM = 0.9
# EfficientNet's ImageNet files hold ImageNet's standard deviations as their Normalization variance
# (tensorflow/tensorflow#49930); Keras 3.15 makes up for it with a Rescaling(1/sqrt(stddev)) that it adds
# only for weights="imagenet" (keras/src/applications/efficientnet.py).
IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """How to build one Keras Applications backbone."""

    constructor: object  # keras.applications.X, called with include_top=False
    preprocess_input: object  # float32 pixels in 0..255 -> what the backbone expects
    weights_file: str  # the notop ImageNet file Keras caches (names from the Keras 3.15 sources)
    min_image_size: int = MIN_IMAGE_SIZE


BACKBONES = {
    # "caffe" mode: RGB -> BGR and ImageNet mean subtraction.
    "vgg16": BackboneSpec(
        keras.applications.VGG16,
        keras.applications.vgg16.preprocess_input,
        "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
    "resnet50": BackboneSpec(
        keras.applications.ResNet50,
        keras.applications.resnet50.preprocess_input,
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
    # MobileNetV3 and EfficientNet rescale inside the network (include_preprocessing /
    # their Rescaling+Normalization layers): their preprocess_input is the identity on 0..255.
    "mobilenet_v3_small": BackboneSpec(
        keras.applications.MobileNetV3Small,
        keras.applications.mobilenet_v3.preprocess_input,
        "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
    ),
    "efficientnet_b0": BackboneSpec(
        keras.applications.EfficientNetB0, keras.applications.efficientnet.preprocess_input, "efficientnetb0_notop.h5"
    ),
    # EfficientNetV2 (Tan & Le, 2021) and ConvNeXt (Liu et al., 2022) normalise inside the network too
    # (include_preprocessing=True, Keras' default): their preprocess_input is the identity on 0..255. B0 scales
    # to ImageNet mean/std, S to [-1, 1]; ConvNeXt has LayerNormalization and LayerScale, no BatchNormalization.
    "efficientnetv2_b0": BackboneSpec(
        keras.applications.EfficientNetV2B0,
        keras.applications.efficientnet_v2.preprocess_input,
        "efficientnetv2-b0_notop.h5",
    ),
    "efficientnetv2_s": BackboneSpec(
        keras.applications.EfficientNetV2S,
        keras.applications.efficientnet_v2.preprocess_input,
        "efficientnetv2-s_notop.h5",
    ),
    "convnext_tiny": BackboneSpec(
        keras.applications.ConvNeXtTiny, keras.applications.convnext.preprocess_input, "convnext_tiny_notop.h5"
    ),
}


@keras.saving.register_keras_serializable(package="abo_tf")
class BackbonePreprocess(keras.layers.Layer):
    """uint8 pixels -> float32 -> the named backbone's `preprocess_input`.

    A registered layer rather than a Lambda: a `model.keras` file stores only
    the backbone's name and reloads without `safe_mode=False`.
    """

    def __init__(self, backbone, **kwargs):
        # float32 even under mixed precision: the mean subtraction runs on
        # exact pixel values; the backbone's first layer casts to float16 itself.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.backbone = backbone

    def call(self, images):
        return BACKBONES[self.backbone].preprocess_input(keras.ops.cast(images, "float32"))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "backbone": self.backbone}


def _check_backbone(backbone, image_size):
    if backbone not in BACKBONES:
        raise UserInputError(f"unknown backbone {backbone!r}: choose one of {sorted(BACKBONES)}")
    minimum = BACKBONES[backbone].min_image_size
    if not isinstance(image_size, int) or image_size < minimum:
        raise UserInputError(f"image size {image_size!r} is too small for {backbone}: use at least {minimum} pixels")


def _check_head(num_classes, dropout):
    if not isinstance(num_classes, int) or num_classes < 1:
        raise UserInputError(f"num_classes={num_classes!r}: need at least 1 class")
    if not 0.0 <= dropout < 1.0:
        raise UserInputError(f"dropout={dropout!r}: must be in [0, 1)")


def _weights_cache_folder():
    # Keras reads $KERAS_HOME once, at import; keras_home() is its (private) accessor.
    try:
        from keras.src.backend.config import keras_home

        home = keras_home()
    except ImportError:
        home = os.environ.get("KERAS_HOME", os.path.join("~", ".keras"))
    return os.path.join(os.path.expanduser(home), "models")


def _build_imagenet_backbone(backbone, input_shape):
    spec = BACKBONES[backbone]
    cached_file = os.path.join(_weights_cache_folder(), spec.weights_file)
    try:
        return spec.constructor(include_top=False, weights="imagenet", input_shape=input_shape)
    except Exception as error:  # Keras raises a bare Exception("URL fetch failure ...") offline
        if os.path.isfile(cached_file):
            raise  # the weights are there: not a download problem
        reason = first_line(error)
        raise UserInputError(
            f"downloading the ImageNet weights of {backbone} failed ({reason}): put {spec.weights_file} into "
            f"{os.path.dirname(cached_file)} "
            f"(the Keras cache, $KERAS_HOME/models) or pass --weights PATH to a notop weights file"
        ) from error


_WEIGHTS_CHOICES = "give imagenet, none or the path of a Keras notop weights file (.weights.h5)"


def check_weights(weights):
    """Refuses a `--weights` path that is no regular file, saying what it is (a folder was "does not exist").

    Raises:
      UserInputError: a folder, a FIFO or a device; InputNotFoundError: nothing there.
    """
    if weights is None or weights in ("imagenet", NO_WEIGHTS):
        return
    if os.path.isdir(weights):
        raise UserInputError(f"--weights {weights!r} is a folder: {_WEIGHTS_CHOICES}")
    if os.path.lexists(weights) and not os.path.isfile(weights):
        raise UserInputError(
            f"--weights {weights!r} is not a regular file (a FIFO, a device or a broken link): {_WEIGHTS_CHOICES}"
        )
    if not os.path.isfile(weights):
        raise InputNotFoundError(f"weights file {weights!r} does not exist: {_WEIGHTS_CHOICES}")


def _build_backbone_from_file(backbone, input_shape, path):
    check_weights(path)
    model = BACKBONES[backbone].constructor(include_top=False, weights=None, input_shape=input_shape)
    try:
        model.load_weights(path)
    except (ValueError, OSError) as error:
        raise UserInputError(
            f"weights file {path!r} does not fit the {backbone} backbone without top ({first_line(error)})"
        ) from error
    _scale_like_imagenet_build(model)
    return model


def _scale_like_imagenet_build(backbone):
    """Gives a backbone loaded from a file of ImageNet EfficientNet weights the input scaling of weights="imagenet".

    Built with weights=None, the backbone lacks the Rescaling(1/sqrt(stddev))
    Keras puts after the Normalization for weights="imagenet", and ImageNet
    weights would see inputs scaled about 2x wrong. A variance of stddev**2
    computes the same (x - mean) / stddev without that layer. A file whose
    variance is not ImageNet's stddev (random or already corrected) is left as it is.
    """
    normalization = next((layer for layer in backbone.layers if isinstance(layer, keras.layers.Normalization)), None)
    if normalization is None or not normalization.built or not normalization.weights:
        return  # EfficientNetV2-B0's Normalization holds its ImageNet statistics as constants, not weights
    mean, variance, *rest = normalization.get_weights()
    if variance.shape == (3,) and np.allclose(variance, IMAGENET_STDDEV_RGB, rtol=0, atol=1e-6):
        normalization.set_weights([mean, np.square(variance), *rest])
        normalization.finalize_state()  # Normalization computes with tensors finalize_state derives from its weights


def build_backbone(backbone, image_size, weights=None):
    """A Keras Applications backbone without its classifier, under Keras' own name for it (see `backbone_of`).

    Args:
      backbone: a key of `BACKBONES`.
      image_size: side of the square input.
      weights: None or "none" (random), "imagenet" (Keras' download and cache) or the
        path of a Keras weights file of this backbone without top.

    Returns:
      A functional `keras.Model` from float pixels (after `BackbonePreprocess`) to 4-D features.

    Raises:
      UserInputError: unknown backbone, too small image, missing or unfit
        weights file, or ImageNet weights that cannot be downloaded.
    """
    _check_backbone(backbone, image_size)
    input_shape = (image_size, image_size, 3)
    if weights is None or weights == NO_WEIGHTS:
        return BACKBONES[backbone].constructor(include_top=False, weights=None, input_shape=input_shape)
    if weights == "imagenet":
        return _build_imagenet_backbone(backbone, input_shape)
    return _build_backbone_from_file(backbone, input_shape, os.fspath(weights))


def build_model(backbone, num_classes, image_size, weights=None, dropout=0.2):
    """The classifier: uint8 images [B, S, S, 3] -> float32 logits [B, num_classes].

    Args:
      backbone: a key of `BACKBONES`.
      num_classes: number of output logits.
      image_size: side of the square input images.
      weights: None, "imagenet" or a path, as in `build_backbone`.
      dropout: rate of the dropout before the logits.

    Returns:
      A functional `keras.Model`; `backbone_of(model)` is the backbone. With
      pretrained weights its BatchNormalization layers start frozen (see
      `set_backbone_trainable`).

    Raises:
      UserInputError: as `build_backbone`, or a bad num_classes or dropout.
    """
    _check_backbone(backbone, image_size)
    _check_head(num_classes, dropout)
    weights = None if weights == NO_WEIGHTS else weights
    features_model = build_backbone(backbone, image_size, weights)
    images = keras.Input(shape=(image_size, image_size, 3), dtype="uint8", name="image")
    pixels = BackbonePreprocess(backbone, name="preprocess")(images)
    # training=False as in the Keras transfer-learning guide. Keras 3.15 lets
    # an outer model(x, training=True) override it (checked here), so what
    # actually keeps BatchNormalization in inference mode is its trainable=False.
    features = features_model(pixels, training=False)
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(features)
    pooled = keras.layers.Dropout(dropout, name="dropout")(pooled)
    # float32 logits even under mixed precision: softmax and the loss need the range.
    logits = keras.layers.Dense(num_classes, dtype="float32", name="logits")(pooled)
    model = keras.Model(images, logits, name=f"{backbone}_classifier")
    # Read by set_backbone_trainable: BatchNormalization statistics are kept
    # when fine-tuning pretrained weights, learned when training from scratch.
    model.pretrained_backbone = weights is not None
    if weights is None:
        _use_from_scratch_batch_norm_momentum(features_model)
    set_backbone_trainable(model, True)
    return model


def _use_from_scratch_batch_norm_momentum(backbone):
    """Moving statistics that keep up with weights trained from scratch.

    Keras Applications use momentum 0.99-0.999 (made for fine-tuning): after a
    few hundred steps from scratch the moving statistics are still far from
    the batch ones and inference predicts one class for every image (seen on
    the demo: 97% training-mode accuracy, majority class in inference mode).
    0.9 is PyTorch's default (its momentum=0.1).
    """
    for layer in backbone.layers:
        if _is_batch_norm(layer):
            layer.momentum = FROM_SCRATCH_BATCH_NORM_MOMENTUM


def _is_batch_norm(layer):
    return isinstance(layer, keras.layers.BatchNormalization)


def set_backbone_trainable(model, trainable, freeze_batch_norm=None):
    """Freezes or unfreezes the backbone; the head always trains.

    Args:
      model: a model from `build_model`.
      trainable: False (freeze the backbone), True (unfreeze it all) or an
        int N >= 1 (unfreeze only the backbone's top N layers).
      freeze_batch_norm: keep BatchNormalization layers frozen when
        unfreezing. A frozen BatchNormalization layer also runs in inference
        mode (its ImageNet statistics stay), as the Keras transfer-learning
        guide asks when fine-tuning. Default: frozen when `build_model` got
        pretrained weights, trainable when it trains from scratch
        (weights=None), where the statistics must be learned.

    Raises:
      UserInputError: `trainable` is not a bool or a positive int.
    """
    backbone = backbone_of(model)
    if freeze_batch_norm is None:
        freeze_batch_norm = getattr(model, "pretrained_backbone", True)  # a reloaded model.keras: assume fine-tuning
    if isinstance(trainable, bool):
        top_layers = len(backbone.layers) if trainable else 0
    elif isinstance(trainable, int) and trainable >= 1:
        top_layers = trainable
    else:
        raise UserInputError(f"trainable={trainable!r}: give False, True or a number of top backbone layers >= 1")
    backbone.trainable = top_layers > 0
    # Each layer explicitly: in Keras 3.15, setting a model's trainable to the
    # value it already has does not reach its layers.
    for index, layer in enumerate(backbone.layers):
        in_top = index >= len(backbone.layers) - top_layers
        layer.trainable = in_top and not (freeze_batch_norm and _is_batch_norm(layer))


def _is_pooling(layer):
    return isinstance(layer, (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D))


def find_last_conv_layer(model):
    """Name of the last 4-D feature map of the model's backbone, for Grad-CAM.

    Pooling layers are skipped: Grad-CAM wants the last feature map before it
    is downsampled (VGG16's block5_conv3, ResNet50's conv5_block3_out).

    Args:
      model: a model from `build_model` (searched inside its backbone), or any
        functional model (searched among its own layers).

    Returns:
      The layer name (inside `backbone_of(model)` when the model nests one).

    Raises:
      UserInputError: no 4-D output layer.
    """
    nested = _nested_models(model)
    container = nested[0] if len(nested) == 1 else model
    for layer in reversed(container.layers):
        if len(layer.output.shape) == 4 and not _is_pooling(layer) and not isinstance(layer, keras.layers.InputLayer):
            return layer.name
    raise UserInputError(f"model {model.name!r} has no 4-D feature map to explain")


def _nested_models(model):
    return [layer for layer in model.layers if isinstance(layer, keras.Model)]


def backbone_of(model):
    """The backbone of a classifier from `build_model`: its one layer that is itself a model, whatever its name.

    Found by type, not by a layer name: Keras Applications name their layers after the model (ConvNeXt's
    "convnext_tiny_stem"), EfficientNetV2 picks its architecture by its `name` (name="backbone" raises KeyError)
    and ImageNet ConvNeXt refuses a name without its variant, so the backbone keeps Keras' own name
    ("efficientnetv2-s", "convnext_tiny"). Runs saved when every backbone was named "backbone" load the same way.

    Raises:
      UserInputError: the model nests no model or several (not a classifier from `build_model`).
    """
    nested = _nested_models(model)
    if len(nested) != 1:
        raise UserInputError(
            f"model {model.name!r} nests {len(nested)} models, not one backbone: give a model from abo_tf.train"
        )
    return nested[0]


def accept_any_image_size(model):
    """Lets a classifier from `build_model` run on square images of another size than it was built for.

    Keras checks a functional model's input against its Input shape; every layer after it (convolutions, pooling,
    normalisation) takes any height and width. The trained model evaluates at `--eval-image-size` this way, with its
    own variables: the reference the export at that size is checked against.
    """
    spec = keras.InputSpec(ndim=4, axes={-1: 3})
    for network in (model, backbone_of(model)):
        network.input_spec = spec
    return model


_SHAPE_KEYS = ("batch_shape", "build_input_shape", "input_shape")


def _any_height_and_width(shape):
    if isinstance(shape, (list, tuple)) and shape and isinstance(shape[0], (list, tuple)):
        return [_any_height_and_width(item) for item in shape]  # the input shapes of Add, Multiply
    if isinstance(shape, (list, tuple)) and len(shape) == 4:
        return [shape[0], None, None, shape[3]]
    return shape


def map_config(value, on_dict):
    """A Keras config (nested dicts and lists) rebuilt by `on_dict(dict, recurse) -> dict` at every dict."""

    def recurse(item):
        if isinstance(item, list):
            return [recurse(element) for element in item]
        return on_dict(item, recurse) if isinstance(item, dict) else item

    return recurse(value)


def _without_spatial_sizes(value):
    return map_config(
        value,
        lambda entry, recurse: {
            key: _any_height_and_width(item) if key in _SHAPE_KEYS else recurse(item) for key, item in entry.items()
        },
    )


def config_at_image_size(config, image_size):
    """A classifier's `get_config()` rebuilt for square images of `image_size` (the weights fit unchanged).

    Only the classifier's Input keeps a size: every other recorded 4-D shape (the backbone's Input, ConvNeXt's
    nested Sequential stages, layers' build shapes) loses its height and width, so nothing is built for the old size.
    """
    resized = _without_spatial_sizes(config)
    [image_input] = [layer for layer in resized["layers"] if layer["class_name"] == "InputLayer"]
    image_input["config"]["batch_shape"] = [None, image_size, image_size, 3]
    return resized


def all_layers(model):
    """Every layer of `model`, those of nested models (the backbone) included, outer first."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from all_layers(layer)
