"""Classifying image files with an exported model, one file at a time (the library of `python -m abo_tf.predict`).

A file that cannot be read or decoded fails alone with a reason. That includes
a file over `MAX_FILE_BYTES` (refused before it is read) and an image over the
build's pixel limit (refused by the SavedModel from its header, before it is
decoded).
"""

import os
import stat

import numpy as np
import tensorflow as tf

from abo_tf.common import console
from abo_tf.common.errors import UserInputError
from abo_tf.training import export, preprocess

# Far above any real catalog image (the pixel limit's JPEGs are tens of MB), far below what hurts a machine.
MAX_FILE_BYTES = 64 * 2**20


class NotARegularFile(OSError):
    """A path that is not a regular file; refused before anything is read."""


class FileTooLarge(OSError):
    """A file over the size limit; refused before its bytes are read."""


def _read(path, max_bytes):
    # Non-blocking open: a FIFO would otherwise wait for a writer forever; only regular files are read.
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    status = os.fstat(descriptor)
    if not stat.S_ISREG(status.st_mode):
        os.close(descriptor)
        raise NotARegularFile("not a regular file (a folder, device or pipe)")
    with os.fdopen(descriptor, "rb") as handle:
        # Read one byte more than allowed: the size may change while it is read.
        data = handle.read(max_bytes + 1) if status.st_size <= max_bytes else b""
    if status.st_size > max_bytes or len(data) > max_bytes:
        raise FileTooLarge(
            f"{max(status.st_size, len(data))} bytes is over the limit of {max_bytes} bytes for one image"
        )
    return data


def _decode_error_reason(error):
    # TF's message carries the graph node and a stack; the last plain line says what is wrong.
    lines = [
        line.strip()
        for line in error.message.splitlines()
        if line.strip() and not line.strip().startswith(("[[", "<", "Detected at", "Graph execution"))
    ]
    return lines[-1] if lines else "cannot be decoded"


def _top_predictions(probabilities, names, top_k):
    order = np.argsort(-probabilities, kind="stable")[:top_k]
    return [{"label": names[index], "score": float(probabilities[index])} for index in order]


def predict_files(loaded, paths, top_k=5, max_file_bytes=MAX_FILE_BYTES):
    """Classifies image files one at a time, so a bad file fails alone.

    Args:
      loaded: a SavedModel from `export.load_exported`, or a classifier from
        `abo_tf.conversion.runtimes.load` (SavedModel, .tflite or .onnx).
      paths: image file paths (JPEG, PNG, GIF or BMP).
      top_k: predictions per image (capped at the number of classes).
      max_file_bytes: larger files are refused before they are read.

    Returns:
      One dict per path, in order: {"image": path, "predictions": [{"label",
      "score"}, ...]} (best first), or {"image": path, "error": reason}.

    Raises:
      UserInputError: top_k < 1.
    """
    if top_k < 1:
        raise UserInputError(f"--top-k {top_k}: must be at least 1")
    loaded = getattr(loaded, "loaded", loaded)  # a runtimes.SavedModelClassifier serves through its bytes endpoint
    if hasattr(loaded, "probabilities"):
        names, serve = loaded.class_names, _bytes_endpoint_of(loaded)
    else:
        names, serve = export.exported_class_names(loaded), loaded.signatures[export.BYTES_ENDPOINT]
    return [_predict_file(serve, path, names, top_k, max_file_bytes) for path in paths]


def _bytes_endpoint_of(classifier):
    """`serving_default`'s contract for a file that takes pixels: the same header check and crop, then the file."""
    image_size = classifier.image_size

    def serve(image_bytes):
        data = image_bytes[0]
        error = preprocess.header_error(data)
        if error.numpy():
            return {"probabilities": None, export.ERROR_KEY: error[None]}
        pixels = preprocess.eval_image(data, image_size)[None].numpy()
        return {"probabilities": tf.constant(classifier.probabilities(pixels)), export.ERROR_KEY: tf.constant([""])}

    return serve


def _predict_file(serve, path, names, top_k, max_file_bytes):
    try:
        data = _read(path, max_file_bytes)
        with console.quiet_native_messages():
            outputs = serve(image_bytes=tf.constant([data]))
    except (FileTooLarge, NotARegularFile) as error:
        return {"image": path, "error": f"not read: {error}"}
    except OSError as error:
        return {"image": path, "error": f"cannot read the file: {error.strerror or error}"}
    except tf.errors.InvalidArgumentError as error:
        return {"image": path, "error": f"not a readable image: {_decode_error_reason(error)}"}
    refused = outputs[export.ERROR_KEY].numpy()[0].decode("utf-8")
    if refused:
        return {"image": path, "error": f"not classified: {refused}"}
    return {"image": path, "predictions": _top_predictions(np.asarray(outputs["probabilities"])[0], names, top_k)}


def printable(path):
    """`path` as printed: quoted with escapes when it holds a newline or another control character (one line)."""
    return path if path.isprintable() else repr(path)


def format_table(result):
    """One image's predictions as readable lines: rank, label, score."""
    width = max(len(prediction["label"]) for prediction in result["predictions"])
    lines = [printable(result["image"])]
    for rank, prediction in enumerate(result["predictions"], start=1):
        lines.append(f"  {rank:>2}. {prediction['label']:<{width}}  {prediction['score']:.4f}")
    return "\n".join(lines)
