"""The preprocessing contract written next to every export: what to feed it, from any language.

It restates, as data, what `abo_tf.training.preprocess.eval_image` does (the
crop every model is evaluated on and `predict` applies before a .tflite or
.onnx file); `test_conversion` checks a NumPy implementation of this text
against `eval_image` through `predict`: the same image classified by the SavedModel and by the file.
"""

from abo_tf.conversion import convert
from abo_tf.training import preprocess

CONTRACT = "preprocessing.json"
LABELS = "labels.txt"


def preprocessing_contract(class_names, image_size, export_format, model_file, output_dtype="float32"):
    """The contract of one export, a JSON-ready dict."""
    return {
        "model_file": model_file,
        "format": export_format,
        "input": {
            "name": convert.INPUT_NAME,
            "dtype": "uint8",
            "shape": ["N", image_size, image_size, 3],
            "layout": "NHWC",
            "channel_order": "RGB",
            "value_range": [0, 255],
            "normalisation": "none: the model normalises pixels itself",
        },
        "preprocessing": [
            "decode JPEG, PNG, GIF (first frame) or BMP to 8-bit RGB; grayscale becomes RGB",
            "PNG with alpha: composite onto white in float32, rgb * a + 255 * (1 - a) with a = alpha / 255, "
            "round half to even, clip to 0..255",
            f"central square crop: side = max(1, round({preprocess.CROP_FRACTION} * min(height, width))), "
            "top = (height - side) // 2, left = (width - side) // 2",
            f"resize the crop to {image_size} x {image_size}: bilinear, half-pixel centres, no antialiasing "
            "(tf.image.resize v2), then round half to even and clip to 0..255 uint8",
        ],
        "max_input_pixels": preprocess.MAX_SERVING_PIXELS,
        "output": {
            "name": convert.OUTPUT_NAME,
            "dtype": output_dtype,
            "shape": ["N", len(class_names)],
            "meaning": "softmax probabilities in the order of labels.txt"
            + ("; uint8: dequantise with the output tensor's scale and zero point" if output_dtype == "uint8" else ""),
        },
        "labels_file": LABELS,
        "class_names": list(class_names),
    }
