"""What the classifier looks at: Grad-CAM (Selvaraju et al., 2017) on the last feature map.

For the class c being explained, the gradient of its logit with respect to the
feature map A (H x W x K) gives each channel a weight, the mean gradient over
positions; the map is ReLU(sum_k weight_k A_k), scaled to [0, 1] and resized
to the image. The layer is found by `models.find_last_conv_layer`, never named
per backbone.
"""

import keras
import numpy as np
import tensorflow as tf

from abo_tf.common.errors import UserInputError
from abo_tf.reports import figures
from abo_tf.training import models


def _single_input(model):
    """The model's one input tensor (not a list of one, which Keras then expects as a list)."""
    if len(model.inputs) != 1:
        raise UserInputError(
            f"model {model.name!r} has {len(model.inputs)} inputs: Grad-CAM explains single-image models"
        )
    return model.inputs[0]


def _check_chain(model):
    """Raises unless each layer takes exactly the previous layer's output (in the model's own graph).

    The first inbound node of a layer is the one of the graph it was built in;
    later calls (Grad-CAM's own) add nodes but never change that one.
    """
    previous = model.layers[0]._inbound_nodes[0].output_tensors
    for layer in model.layers[1:]:
        node = layer._inbound_nodes[0]
        if len(node.input_tensors) != len(previous) or any(a is not b for a, b in zip(node.input_tensors, previous)):
            raise UserInputError(
                f"model {model.name!r} is not a chain of layers at {layer.name!r}: Grad-CAM inside a nested "
                f"backbone needs a model from abo_tf.training.models"
            )
        previous = node.output_tensors


def _split_chain(model, container, layer_name):
    """images -> (feature map, logits) for a chain of layers whose `container` holds the layer.

    A layer inside a nested model (the backbone) is not reachable from the
    outer model's graph, so the chain is called again with the container
    replaced by a copy that also returns the feature map. The weights are shared.
    """
    _check_chain(model)
    inner = keras.Model(_single_input(container), [container.get_layer(layer_name).output, container.output])
    outputs, feature_map = model.inputs[0], None
    for layer in model.layers[1:]:
        if layer is container:
            feature_map, outputs = inner(outputs, training=False)
        else:
            outputs = layer(outputs, training=False)
    return keras.Model(_single_input(model), [feature_map, outputs])


def gradcam_model(model, layer_name=None):
    """A model: images -> (feature map of `layer_name`, logits).

    Args:
      model: a model from `models.build_model` (or any functional model).
      layer_name: default `models.find_last_conv_layer(model)`.

    Returns:
      `(keras.Model, layer name)`.
    """
    layer_name = layer_name or models.find_last_conv_layer(model)
    names = [layer.name for layer in model.layers]
    if layer_name in names:
        return keras.Model(_single_input(model), [model.get_layer(layer_name).output, model.output]), layer_name
    for container in model.layers:
        if isinstance(container, keras.Model) and layer_name in [layer.name for layer in container.layers]:
            return _split_chain(model, container, layer_name), layer_name
    raise UserInputError(f"model {model.name!r} has no layer {layer_name!r} to explain")


# A feature map of at most this many cells a side (ResNet50 at 96 px: 3 x 3) colours whole thirds of the image:
# the heat map says which coarse cell, not which part of the object.
COARSE_GRID = 4


def feature_map_grid(model, layer_name=None):
    """(height, width) of the feature map Grad-CAM explains: how coarse its heat map is."""
    explainer, _ = gradcam_model(model, layer_name)
    return tuple(int(side) for side in explainer.outputs[0].shape[1:3])


def coarseness_note(grid, image_size):
    """A sentence for the report when the feature map is too coarse for the heat map to mean much, else ""."""
    if min(grid) > COARSE_GRID:
        return ""
    cell = image_size // max(min(grid), 1)
    return (
        f"The feature map is only {grid[0]} x {grid[1]} cells (each about {cell} px of the {image_size} px image): "
        "the heat map can only say which coarse region raised the score, not which part of the object; a larger "
        "--image-size gives a finer map."
    )


def grad_cam(model, images, class_indices=None, layer_name=None):
    """Grad-CAM heat maps of a batch.

    Args:
      model: a Keras classifier returning logits (a model from `build_model`).
      images: the model's input batch (uint8 [N, S, S, 3]).
      class_indices: the class explained per image; default the predicted one.
      layer_name: the feature map; default the backbone's last one.

    Returns:
      `(heatmaps, class_indices)`: float32 [N, S, S] in [0, 1] (resized to the
      images; all zero where no position has a positive contribution), int [N].
    """
    explainer, _ = gradcam_model(model, layer_name)
    images = tf.convert_to_tensor(images)
    with tf.GradientTape() as tape:
        feature_map, logits = explainer(images, training=False)
        if class_indices is None:
            class_indices = tf.argmax(logits, axis=1)
        class_indices = tf.cast(tf.convert_to_tensor(class_indices), tf.int32)
        scores = tf.gather(logits, class_indices, batch_dims=1)
    gradients = tape.gradient(scores, feature_map)
    weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
    cams = tf.nn.relu(tf.reduce_sum(weights * feature_map, axis=-1))
    peak = tf.reduce_max(cams, axis=(1, 2), keepdims=True)
    cams = tf.math.divide_no_nan(cams, peak)
    heatmaps = tf.image.resize(cams[..., tf.newaxis], tf.shape(images)[1:3], method="bilinear")[..., 0]
    return heatmaps.numpy().astype(np.float32), class_indices.numpy()


def overlay(image, heatmap, alpha=0.45):
    """The image with the heat map blended over it in the jet colormap (uint8 RGB)."""
    plt = figures.pyplot()
    colours = plt.get_cmap("jet")(np.clip(heatmap, 0, 1))[..., :3]
    blended = (1 - alpha) * (np.asarray(image, np.float32) / 255.0) + alpha * colours
    return np.round(np.clip(blended, 0, 1) * 255).astype(np.uint8)


def plot_gradcam(panels, path, title="Grad-CAM", grid=None):
    """A grid of (image, overlay) pairs, with one colour bar for every overlay.

    Args:
      panels: list of dicts with "image" (uint8), "heatmap" and "caption".
      path: the PNG to write.
      grid: (height, width) of the explained feature map, named over each overlay.
    """
    import matplotlib

    plt = figures.pyplot()
    columns = 2 * min(3, max(1, len(panels)))
    rows = max(1, -(-2 * len(panels) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(2.6 * columns + 1.2, 3.3 * rows), squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    heat = "Grad-CAM" + (f" ({grid[0]} x {grid[1]} map)" if grid else "")
    for index, panel in enumerate(panels):
        row, column = divmod(2 * index, columns)
        axes[row, column].imshow(panel["image"])
        figures.caption(axes[row, column], panel["caption"], fontsize=9)
        axes[row, column + 1].imshow(overlay(panel["image"], panel["heatmap"]))
        figures.caption(axes[row, column + 1], heat, fontsize=9)
    figure.suptitle(title)
    figure.tight_layout()
    scale = matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(0, 1), plt.get_cmap("jet"))
    figure.colorbar(scale, ax=axes.ravel().tolist(), shrink=0.7, label="evidence for the predicted class (1: its peak)")
    figure.savefig(path, dpi=80)  # photographs: the PNGs get large
    plt.close(figure)
    return path
