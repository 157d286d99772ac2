"""SavedModel -> LiteRT (float32, float16, full-integer) or ONNX, with the label names inside the file.

What is converted is the SavedModel's `serve_pixels` endpoint (uint8 [N, S, S, 3]
-> probabilities float32 [N, C]): converters cannot take the string input and
the decoding ops of `serving_default`, so decoding and the evaluation crop stay
outside the file and are described by `contract.py`. Only "probabilities" is
kept; top-k and label strings are the caller's (LiteRT and ONNX Runtime users
sort in their own language).

Every file carries `METADATA_KEY` -> JSON {"class_names", "image_size", "format"}:
in the LiteRT flatbuffer's `metadata` table, in ONNX's `metadata_props`.
"""

import json

import numpy as np

from abo_tf.common import console
from abo_tf.common.errors import UserInputError, first_line

FORMATS = ("litert", "litert-fp16", "litert-int8", "onnx")
FILE_NAMES = {
    "litert": "model.tflite",
    "litert-fp16": "model_fp16.tflite",
    "litert-int8": "model_int8.tflite",
    "onnx": "model.onnx",
}
# Opset 17 is what tf2onnx 1.17 targets by default and ONNX Runtime 1.32 runs; LayerNormalization etc. are not needed.
ONNX_OPSET = 17
METADATA_KEY = "abo_tf"
INPUT_NAME = "pixels"
OUTPUT_NAME = "probabilities"
INT8_OUTPUTS = ("float", "uint8")


class ConversionError(UserInputError):
    """The converter refused the model; the message names the format and the converter's first line."""


def metadata(class_names, image_size, export_format):
    """The JSON string every export carries."""
    return json.dumps({"class_names": list(class_names), "image_size": int(image_size), "format": export_format})


def probabilities_function(loaded, image_size):
    """A tf.function over the SavedModel's serve_pixels that returns only the probabilities."""
    import tensorflow as tf

    from abo_tf.training import export

    serve = loaded.signatures[export.PIXELS_ENDPOINT]

    @tf.function(input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.uint8, name=INPUT_NAME)])
    def probabilities(pixels):
        return {OUTPUT_NAME: serve(pixels=pixels)["probabilities"]}

    return probabilities


def to_litert(loaded, image_size, export_format, calibration_pixels=None, int8_output="float"):
    """The .tflite bytes of `loaded`'s serve_pixels (without metadata; see `with_litert_metadata`).

    Args:
      loaded: a SavedModel from `export.load_exported`.
      image_size: its input side.
      export_format: "litert" (float32), "litert-fp16" (float16 weights) or "litert-int8".
      calibration_pixels: uint8 [M, S, S, 3], the representative sample of litert-int8.
      int8_output: litert-int8's output, "float" (float32 probabilities) or "uint8" (quantised).

    Raises:
      ConversionError: the converter failed, or litert-int8 without calibration pixels.
    """
    import tensorflow as tf

    function = probabilities_function(loaded, image_size)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function.get_concrete_function()], loaded)
    if export_format == "litert-fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif export_format == "litert-int8":
        if calibration_pixels is None or not len(calibration_pixels):
            raise ConversionError("litert-int8 needs calibration images: the train split gave none")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        # One image per step, as the converter's calibrator expects; pixels are uint8 already (the model's input).
        converter.representative_dataset = lambda: ([image[None]] for image in calibration_pixels)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_output_type = tf.uint8 if int8_output == "uint8" else tf.float32
    try:
        with console.native_messages_hidden():  # the quantiser prints "fully_quantize: 0, inference_type: 6, ..."
            return converter.convert()
    except Exception as error:  # the converter raises ConverterError, ValueError, RuntimeError...
        raise ConversionError(
            f"the LiteRT converter cannot take this model ({export_format}): {first_line(error)}"
        ) from error


def with_litert_metadata(model_bytes, value):
    """`model_bytes` with `METADATA_KEY` -> `value` in the flatbuffer's metadata table (what LiteRT tools read)."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(model_bytes))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(value.encode("utf-8"), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_KEY, len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def litert_metadata(model_bytes):
    """The `METADATA_KEY` string of a .tflite file's bytes, or None."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAs(model_bytes, 0)
    for index in range(model.MetadataLength()):
        entry = model.Metadata(index)
        if entry.Name() and entry.Name().decode("utf-8") == METADATA_KEY:
            return model.Buffers(entry.Buffer()).DataAsNumpy().tobytes().decode("utf-8")
    return None


def _frozen_graph(loaded, image_size):
    """serve_pixels as a GraphDef with every capture folded into a constant, and its input and output names.

    tf2onnx's `from_function` folds the captured variables but leaves captured plain tensors as graph inputs:
    EfficientNet's Normalization mean and variance became two extra ONNX inputs ("Required inputs
    ['47620:0', '47622:0'] are missing", measured). TensorFlow's own freezing folds both.
    """
    from tensorflow.python.framework import convert_to_constants

    function = probabilities_function(loaded, image_size).get_concrete_function()
    frozen = convert_to_constants.convert_variables_to_constants_v2(function)
    return frozen.graph.as_graph_def(), frozen.inputs[0].name, frozen.outputs[0].name


def _unconvertible_ops(graph):
    """What of a frozen graph tf2onnx has no handler for, as "N x what" phrases ([] when nothing is known to fail).

    Keras' TensorFlow backend runs a grouped convolution (ConvNeXt's depthwise ones) as an XLA-compiled function,
    which freezing keeps as a call, and the exact GELU as Erfc: tf2onnx (opset 17) left both unconverted for
    ConvNeXt-Tiny, and onnx.checker then refused the model (measured).
    """
    functions = {function.signature.name: function for function in graph.library.function}
    nodes = list(graph.node) + [node for function in graph.library.function for node in function.node_def]

    def compiled(node):
        called = functions.get(node.attr["f"].func.name)
        return node.attr["_XlaMustCompile"].b or (called is not None and called.attr["_XlaMustCompile"].b)

    xla_calls = sum(1 for node in nodes if node.op in ("PartitionedCall", "StatefulPartitionedCall") and compiled(node))
    erfc = sum(1 for node in nodes if node.op == "Erfc")
    found = [(xla_calls, "XLA-compiled calls (grouped convolutions)"), (erfc, "Erfc (exact GELU)")]
    return [f"{count} {what}" for count, what in found if count]


def to_onnx(loaded, image_size, value):
    """The ONNX model (checked by `onnx.checker`) of `loaded`'s serve_pixels, `METADATA_KEY` in metadata_props.

    Raises:
      ConversionError: tf2onnx failed, or the checker refused its output, or the graph holds ops it cannot take.
    """
    import onnx
    import tensorflow as tf
    import tf2onnx

    graph, input_name, output_name = _frozen_graph(loaded, image_size)
    unconvertible = _unconvertible_ops(graph)
    if unconvertible:
        raise ConversionError(
            f"tf2onnx cannot convert this model (opset {ONNX_OPSET}): it holds {' and '.join(unconvertible)}, "
            "which tf2onnx has no converter for (ConvNeXt does): export it with --format litert, litert-fp16 or "
            "litert-int8"
        )
    level = tf.get_logger().level
    tf.get_logger().setLevel("ERROR")  # tf2onnx calls TF1 graph APIs, each logging "Instructions for updating"
    try:
        model, _ = tf2onnx.convert.from_graph_def(
            graph,
            input_names=[input_name],
            output_names=[output_name],
            opset=ONNX_OPSET,
            tensors_to_rename={input_name: INPUT_NAME, output_name: OUTPUT_NAME},
        )
        onnx.helper.set_model_props(model, {METADATA_KEY: value})
        onnx.checker.check_model(model)
    except Exception as error:  # tf2onnx raises whatever its op handlers raise
        raise ConversionError(f"tf2onnx cannot convert this model (opset {ONNX_OPSET}): {first_line(error)}") from error
    finally:
        tf.get_logger().setLevel(level)
    return model.SerializeToString()
