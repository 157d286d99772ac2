"""The SavedModel for serving: image bytes or uint8 pixels in, probabilities and top-k labels out.

Endpoints (both also SavedModel signatures, listed by `saved_model_cli show`):

    serving_default(image_bytes: string [N])          JPEG/PNG/GIF/BMP of any size
    serve_pixels(pixels: uint8 [N, S, S, 3])          already decoded and cropped

each returning {"probabilities": float32 [N, C], "top_k_labels": string [N, k],
"top_k_scores": float32 [N, k]}; `serving_default` also returns "error": string
[N]. Bytes go through `preprocess.eval_image`, the evaluation crop of the input
pipeline (a transparent PNG is composited onto white, as the build does); the
model normalises pixels itself. The class names and the image size travel
inside the SavedModel, and so does the calibration temperature when a run
folded one into the logits (`exported_temperature`): the probabilities are
the calibrated ones.

A bad image fails alone, not the whole call: before decoding, each image's
header is read (`preprocess.header_error`), and an image that is not a JPEG,
PNG, GIF or BMP, or has more than `preprocess.MAX_SERVING_PIXELS` pixels (4096 x 4096, a memory budget),
is not decoded. Its "error" is a one-line reason ("" for every good
image), its probabilities and scores are 0 and its labels "". A 1.2 MB PNG of
20000x20000 pixels would otherwise take 5 GB. An image whose header is
readable but whose data is damaged (truncated, no scan, a PNG CRC error) gets the
error `DAMAGED` the same way. `serve_pixels` refuses pixels of another shape
than [N, S, S, 3] with `InvalidArgumentError`. Known gap: giflib expands
every frame of an animated GIF (1 byte per pixel per frame) although only the
first is used, and a GIF's frame count is not in its header.
"""

import collections
import os

import keras
import tensorflow as tf

from abo_tf.common.errors import InputNotFoundError, UserInputError, first_line
from abo_tf.training import input_pipeline, parity, preprocess, run_folder

BYTES_ENDPOINT = "serving_default"
PIXELS_ENDPOINT = "serve_pixels"
OUTPUT_KEYS = ("probabilities", "top_k_labels", "top_k_scores")
ERROR_KEY = "error"  # serving_default only: why an image was not classified, "" when it was
DAMAGED = "cannot be decoded: the image data is damaged (truncated, no scan, or a bad checksum)"
# Variable collections of the export (`loaded.class_names[0]`, `loaded.image_size[0]`).
CLASS_NAMES = "class_names"
IMAGE_SIZE = "image_size"
TEMPERATURE = "temperature"  # the temperature already folded into the logits (abo_tf.training.calibration), if any


def _check_export_arguments(model, class_names, image_size, top_k):
    num_outputs = model.output.shape[-1]
    if len(class_names) != num_outputs:
        raise UserInputError(
            f"{len(class_names)} class names for a model with {num_outputs} outputs: give one name per output"
        )
    repeated = sorted(name for name, count in collections.Counter(class_names).items() if count > 1)
    if repeated:
        raise UserInputError(f"class names are not unique: {repeated} appear more than once")
    if tuple(model.input.shape[1:]) != (image_size, image_size, 3):
        raise UserInputError(
            f"image size {image_size} does not match the model's input shape {tuple(model.input.shape[1:])}"
        )
    if top_k < 1:
        raise UserInputError(f"top_k={top_k}: must be at least 1")


def inference_function(model, image_size):
    """`model(pixels, training=False)` as one graph for uint8 [N, S, S, 3] batches of any N, traced on first call.

    A run's copy calls it on validation twice and on test once, and exports it in both endpoints: its layers are
    traced once, not once per endpoint, and the passes run as graphs, not op by op. In a tiny MobileNetV3 run
    (249 images of 32 px, load average 10) the three passes took 14.4 s eager and 4.5 s with this function, trace
    included; the export 18.8 s and 8.9 s. Outputs, metrics and parity.json were byte-identical.
    """
    return tf.function(
        lambda pixels: model(pixels, training=False),
        input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.uint8)],
        autograph=False,
    )


def _make_endpoints(model, class_names_variable, image_size, top_k, inference=None):
    """The two endpoint functions; traced later with autograph=False (no Python control flow on tensors)."""
    if inference is None:
        inference = inference_function(model, image_size)

    def logits(pixels):
        # An empty batch: the model's BatchNorm broadcast fails on 0 images, so the answer is built, not computed.
        return tf.cond(
            tf.shape(pixels)[0] > 0,
            lambda: tf.cast(inference(pixels), tf.float32),
            lambda: tf.zeros([0, model.output.shape[-1]], tf.float32),
        )

    def outputs(pixels):
        probabilities = tf.nn.softmax(logits(pixels), axis=-1)
        scores, indices = tf.math.top_k(probabilities, k=top_k)
        return {
            "probabilities": probabilities,
            "top_k_labels": tf.gather(class_names_variable, indices),
            "top_k_scores": scores,
        }

    def checked_pixels(data):
        """Pixels and "" for a good image; zeros and the reason for one refused from its header."""
        error = preprocess.header_error(data)
        pixels = tf.cond(
            tf.equal(error, ""),
            lambda: preprocess.eval_image(data, image_size),
            lambda: tf.zeros([image_size, image_size, 3], tf.uint8),
        )
        return pixels, error

    def decoded(index, data):
        return (index, *checked_pixels(data))

    def decode_each(image_bytes):
        """(pixels [N, S, S, 3], errors [N]) of every image; a damaged one gets zeros and DAMAGED.

        A decoder error (a truncated JPEG, one without a scan, a PNG with a bad CRC) cannot be caught by a graph
        op, and failed the whole call: each image is decoded in a tf.data pipeline whose ignore_errors() drops
        it instead, and the survivors' indices say which were dropped.
        """
        count = tf.shape(image_bytes, out_type=tf.int64)[0]
        blank = (tf.constant(-1, tf.int64), tf.zeros([image_size, image_size, 3], tf.uint8), tf.constant(""))
        index, pixels, errors = (
            tf.data.Dataset.from_tensor_slices((tf.range(count), image_bytes))
            .map(decoded, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .ignore_errors()
            .concatenate(tf.data.Dataset.from_tensors(blank))  # never empty: batch() then always has one batch
            .batch(count + 1)
            .get_single_element()
        )
        survivors = tf.shape(index, out_type=tf.int64)[0] - 1  # the blank sits at this position
        slot = tf.tensor_scatter_nd_update(tf.fill([count], survivors), index[:-1, None], tf.range(survivors))
        damaged = tf.equal(slot, survivors)
        return tf.gather(pixels, slot), tf.where(damaged, tf.constant(DAMAGED), tf.gather(errors, slot))

    def serve_bytes(image_bytes):
        pixels, errors = decode_each(image_bytes)
        result = outputs(pixels)
        refused = tf.not_equal(errors, "")[:, None]
        blanks = {"probabilities": 0.0, "top_k_scores": 0.0, "top_k_labels": ""}
        result = {key: tf.where(refused, tf.constant(blanks[key], value.dtype), value) for key, value in result.items()}
        return {**result, ERROR_KEY: errors}

    def serve_pixels(pixels):
        # The signature's [None, S, S, 3] is not enforced on a loaded SavedModel: (1, 1, 1, 3) was classified
        # and (1, 8000, 8000, 3) run until killed at 4 GB.
        shape = tf.shape(pixels)
        check = tf.debugging.assert_equal(
            shape[1:],
            tf.constant([image_size, image_size, 3]),
            message=f"serve_pixels takes uint8 [N, {image_size}, "
            f"{image_size}, 3] pixels (decoded and cropped): resize them, or send the image to serving_default",
        )
        with tf.control_dependencies([check]):
            return outputs(tf.ensure_shape(tf.identity(pixels), [None, image_size, image_size, 3]))

    return serve_bytes, serve_pixels


def _traced_once(endpoint, input_signature):
    """`endpoint` traced into a graph now, for ExportArchive to call.

    Given the Python function, the export traced it twice: ExportArchive lists the variables it reads (a first
    trace), then tf.saved_model.save traces it again, its save context being another tf.function cache key (the
    variable policy). Both now trace a call of this one graph, and the model's layers are traced once.
    """
    return tf.function(endpoint, autograph=False).get_concrete_function(*input_signature)


def export_saved_model(model, class_names, image_size, export_dir, top_k=5, temperature=None, inference=None):
    """Writes the serving SavedModel of a classifier from `models.build_model`.

    Args:
      model: Keras model, uint8 [N, S, S, 3] -> logits [N, C]; export a float32
        copy (a mixed-precision model works, but serves float16 activations).
      class_names: the C label names, in output order.
      image_size: S, the model's input side.
      export_dir: folder to write (created; files in it are overwritten).
      top_k: labels returned per image; capped at C.
      temperature: the calibration temperature folded into the model's logits, recorded (not applied) for
        readers that undo it; None: not calibrated.
      inference: `inference_function(model, image_size)` when the caller has one already (its trace is reused).

    Returns:
      `export_dir`.

    Raises:
      UserInputError: class names or image size do not match the model, or top_k < 1.
    """
    class_names = [str(name) for name in class_names]
    _check_export_arguments(model, class_names, image_size, top_k)
    # Variables, not constants: saved once, shared by both endpoints, readable after loading.
    class_names_variable = tf.Variable(class_names, dtype=tf.string, trainable=False, name=CLASS_NAMES)
    image_size_variable = tf.Variable(image_size, dtype=tf.int32, trainable=False, name=IMAGE_SIZE)
    serve_bytes, serve_pixels = _make_endpoints(
        model, class_names_variable, image_size, min(top_k, len(class_names)), inference
    )

    archive = keras.export.ExportArchive()
    # What track(model) saves, without its search of the model for lookup tables (it has none): that walk was a
    # quarter of a MobileNetV3 export's CPU time in a profile.
    for collection in ("variables", "trainable_variables", "non_trainable_variables"):
        archive.add_variable_collection(collection, getattr(model, collection))
    signatures = {
        BYTES_ENDPOINT: [tf.TensorSpec([None], tf.string, name="image_bytes")],
        PIXELS_ENDPOINT: [tf.TensorSpec([None, image_size, image_size, 3], tf.uint8, name="pixels")],
    }
    for name, endpoint in ((BYTES_ENDPOINT, serve_bytes), (PIXELS_ENDPOINT, serve_pixels)):
        archive.add_endpoint(name, _traced_once(endpoint, signatures[name]), input_signature=signatures[name])
    archive.add_variable_collection(CLASS_NAMES, [class_names_variable])
    archive.add_variable_collection(IMAGE_SIZE, [image_size_variable])
    if temperature is not None:
        temperature_variable = tf.Variable(float(temperature), dtype=tf.float64, trainable=False, name=TEMPERATURE)
        archive.add_variable_collection(TEMPERATURE, [temperature_variable])
    archive.write_out(export_dir, verbose=False)
    return export_dir


def load_exported(export_dir):
    """Loads a SavedModel written by `export_saved_model`.

    Args:
      export_dir: the export folder (a run's `saved_model/`).

    Returns:
      The loaded object: `.signatures[BYTES_ENDPOINT]`, `.signatures[PIXELS_ENDPOINT]`;
      see `exported_class_names` and `exported_image_size`.

    Raises:
      InputNotFoundError: the folder does not exist, or belongs to a tune trial (trained without an export).
      UserInputError: it is not a SavedModel, or not one from `export_saved_model`.
    """
    export_dir = os.fspath(export_dir)
    if not tf.saved_model.contains_saved_model(export_dir):
        run_folder.check_exported(export_dir)  # a tune trial's folder (or its missing saved_model/)
    if os.path.islink(export_dir) and not os.path.exists(export_dir):
        raise InputNotFoundError(
            f"model folder {export_dir!r} is a link to nothing ({os.readlink(export_dir)!r}): "
            "give the saved_model folder of a training run"
        )
    if os.path.lexists(export_dir) and not os.path.isdir(export_dir):
        raise UserInputError(f"{export_dir!r} is a file, not a folder: give the saved_model folder of a training run")
    if not os.path.isdir(export_dir):
        raise InputNotFoundError(
            f"model folder {export_dir!r} does not exist (give the saved_model folder of a training run)"
        )
    if not tf.saved_model.contains_saved_model(export_dir):
        raise UserInputError(
            f"{export_dir!r} is not a SavedModel (no saved_model.pb): give the saved_model folder of a training run"
        )
    try:
        loaded = tf.saved_model.load(export_dir)
    except (OSError, ValueError, tf.errors.OpError) as error:
        raise UserInputError(f"cannot load the SavedModel in {export_dir!r}: {first_line(error)}") from error
    missing = [name for name in (BYTES_ENDPOINT, PIXELS_ENDPOINT) if name not in loaded.signatures]
    missing += [name for name in (CLASS_NAMES, IMAGE_SIZE) if not hasattr(loaded, name)]
    if missing:
        raise UserInputError(f"{export_dir!r} is a SavedModel but not one exported by abo_tf (it lacks {missing})")
    return loaded


def exported_class_names(loaded):
    """The label names of an export, in output order."""
    return [name.decode("utf-8") for name in getattr(loaded, CLASS_NAMES)[0].numpy()]


def exported_image_size(loaded):
    """The side of the square pixels `serve_pixels` takes."""
    return int(getattr(loaded, IMAGE_SIZE)[0].numpy())


def exported_temperature(loaded):
    """The calibration temperature folded into an export's probabilities, or None (not calibrated, or older)."""
    collection = getattr(loaded, TEMPERATURE, None)
    return None if collection is None else float(collection[0].numpy())


def keras_probabilities(model):
    """The parity reference: batch {"image": uint8 pixels} -> the Keras model's float32 softmax."""
    return lambda batch: tf.nn.softmax(tf.cast(model(batch["image"], training=False), tf.float32), axis=-1)


def signature_probabilities(loaded):
    """Both signatures as parity candidates: `serving_default` on the encoded bytes, `serve_pixels` on the pixels.

    A batch is {"image": uint8 pixels, input_pipeline.ENCODED_IMAGE: the same images' encoded bytes}.
    """
    serve_bytes, serve_pixels = loaded.signatures[BYTES_ENDPOINT], loaded.signatures[PIXELS_ENDPOINT]
    return {
        BYTES_ENDPOINT: lambda batch: serve_bytes(image_bytes=batch[input_pipeline.ENCODED_IMAGE])["probabilities"],
        PIXELS_ENDPOINT: lambda batch: serve_pixels(pixels=batch["image"])["probabilities"],
    }


def saved_model_parity(model, loaded, batches, tie_margin=0.0):
    """`parity.measure` of an export's two signatures against a Keras model on the same batches.

    Args:
      model: the reference Keras model (uint8 pixels -> logits).
      loaded: a SavedModel from `load_exported`.
      batches: batches of {"image", input_pipeline.ENCODED_IMAGE}, e.g. `make_dataset(...,
        extra_keys=(schema.IMAGE,))`.
      tie_margin: as in `parity.compare`.

    Returns:
      Dict signature name -> `parity.Parity`.
    """
    return parity.measure(keras_probabilities(model), signature_probabilities(loaded), batches, tie_margin)
