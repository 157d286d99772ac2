"""One interface over the three runtimes: a SavedModel folder, a .tflite file or a .onnx file.

    classifier = runtimes.load(path)
    classifier.class_names, classifier.image_size
    classifier.probabilities(pixels)      uint8 [N, S, S, 3] -> float32 [N, C]

`predict` and the parity check use it, so a file is measured the way it is served.
"""

import json
import os

import numpy as np

from abo_tf.common import console, options
from abo_tf.common.errors import InputNotFoundError, UserInputError
from abo_tf.conversion import convert

LITERT_SUFFIX = ".tflite"
ONNX_SUFFIX = ".onnx"


class SavedModelClassifier:
    """The SavedModel's serve_pixels endpoint."""

    runtime = "tensorflow"

    def __init__(self, loaded):
        from abo_tf.training import export

        self.loaded = loaded
        self.class_names = export.exported_class_names(loaded)
        self.image_size = export.exported_image_size(loaded)
        self._serve = loaded.signatures[export.PIXELS_ENDPOINT]

    def probabilities(self, pixels):
        return self._serve(pixels=pixels)["probabilities"].numpy()


class LiteRTClassifier:
    """A .tflite file in `ai_edge_litert`'s interpreter; a uint8 output is dequantised."""

    runtime = "litert"

    def __init__(self, path, model_bytes, value):
        from ai_edge_litert.interpreter import Interpreter

        self.class_names, self.image_size = _names_and_size(path, value)
        with console.native_messages_hidden():
            # All cores, as TensorFlow and ONNX Runtime use by default: the interpreter's default is one thread.
            self._interpreter = Interpreter(model_content=model_bytes, num_threads=os.cpu_count())
            self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        self._batch = None

    def probabilities(self, pixels):
        pixels = np.asarray(pixels, np.uint8)
        if self._batch != len(pixels):  # re-planning the tensors costs; batches of one size reuse them
            self._interpreter.resize_tensor_input(self._input["index"], pixels.shape)
            self._interpreter.allocate_tensors()
            self._batch = len(pixels)
        self._interpreter.set_tensor(self._input["index"], pixels)
        self._interpreter.invoke()
        output = self._interpreter.get_tensor(self._output["index"])
        if output.dtype != np.float32:
            scale, zero_point = self._output["quantization"]
            output = (output.astype(np.float32) - zero_point) * scale
        return output


class OnnxClassifier:
    """A .onnx file in ONNX Runtime (CPU)."""

    runtime = "onnxruntime"

    def __init__(self, path):
        import onnxruntime

        try:
            self._session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        except Exception as error:  # ONNX Runtime raises its own Fail/InvalidGraph/... classes
            raise UserInputError(f"{path!r} is not an ONNX model ONNX Runtime can load: {error}") from error
        value = self._session.get_modelmeta().custom_metadata_map.get(convert.METADATA_KEY)
        self.class_names, self.image_size = _names_and_size(path, value)
        self._input_name = self._session.get_inputs()[0].name
        outputs = [output.name for output in self._session.get_outputs()]
        if convert.OUTPUT_NAME not in outputs:
            raise UserInputError(
                f"{path!r} has no {convert.OUTPUT_NAME!r} output (it has {outputs[:5]}): give a file written by "
                "`python -m abo_tf.export`"
            )

    def probabilities(self, pixels):
        return self._session.run([convert.OUTPUT_NAME], {self._input_name: np.asarray(pixels, np.uint8)})[0]


def _names_and_size(path, value):
    if not value:
        raise UserInputError(
            f"{path!r} has no {convert.METADATA_KEY!r} metadata: give a file written by `python -m abo_tf.export`"
        )
    try:
        fields = json.loads(value)
        names, size = [str(name) for name in fields["class_names"]], int(fields["image_size"])
    except (ValueError, TypeError, KeyError) as error:
        raise UserInputError(
            f"{path!r} has damaged {convert.METADATA_KEY!r} metadata ({error!r}): export it again with "
            "`python -m abo_tf.export`"
        ) from error
    if not names or not 1 <= size <= options.MAX_IMAGE_SIZE:
        raise UserInputError(
            f"{path!r} declares {len(names)} classes and {size} px: an export has classes and at most "
            f"{options.MAX_IMAGE_SIZE} px; export it again with `python -m abo_tf.export`"
        )
    return names, size


def load(path):
    """The classifier in `path`: a SavedModel folder (from training), a .tflite or a .onnx file (from export).

    Raises:
      InputNotFoundError: nothing at `path`.
      UserInputError: a file of another kind, or one not written by abo_tf.
    """
    path = os.fspath(path)
    if path.endswith((LITERT_SUFFIX, ONNX_SUFFIX)) and not os.path.isfile(path):
        raise InputNotFoundError(f"model file {path!r} does not exist (or is not a file)")
    if os.path.isdir(path) or not os.path.exists(path):  # a link to nothing too: `load_exported` names it
        from abo_tf.training import export

        return SavedModelClassifier(export.load_exported(path))
    if path.endswith(LITERT_SUFFIX):
        with open(path, "rb") as handle:
            model_bytes = handle.read()
        try:
            value = convert.litert_metadata(model_bytes)
        except Exception as error:  # flatbuffers raises struct.error/IndexError on a file that is not one
            raise UserInputError(
                f"{path!r} is not a LiteRT (.tflite) flatbuffer: give a file written by `python -m abo_tf.export`"
            ) from error
        return LiteRTClassifier(path, model_bytes, value)
    if path.endswith(ONNX_SUFFIX):
        return OnnxClassifier(path)
    raise UserInputError(f"--model {path!r}: give a SavedModel folder, a {LITERT_SUFFIX} or a {ONNX_SUFFIX} file")
