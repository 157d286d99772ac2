"""abo_tf.training.export and abo_tf.predict: a tiny VGG16 exported once, served from bytes and pixels."""

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import tensorflow as tf

from abo_tf import predict
from abo_tf.training import export, models, preprocess
from abo_tf.common.errors import UserInputError

SIZE = 32
CLASSES = ["chair", "lamp", "shoe", "rug"]
TOP_K = 3


def encode(rgb, extension=".jpg"):
    ok, data = cv2.imencode(extension, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return data.tobytes()


def random_rgb(height, width, seed):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def softmax(logits):
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(keras model, loaded SavedModel, export folder). VGG16: its caffe
    preprocessing (RGB->BGR, mean subtraction) makes a colour or
    normalisation mix-up between serving and Keras visible."""
    model = models.build_model("vgg16", num_classes=len(CLASSES), image_size=SIZE)
    logits = model.get_layer("logits")
    kernel, bias = logits.get_weights()
    logits.set_weights([kernel * 20.0, bias])  # random features give near-uniform probabilities otherwise
    export_dir = str(tmp_path_factory.mktemp("export") / "saved_model")
    export.export_saved_model(model, CLASSES, SIZE, export_dir, top_k=TOP_K)
    return model, export.load_exported(export_dir), export_dir


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    paths = {}
    for name, (height, width, extension) in {"wide.jpg": (40, 90, ".jpg"), "tall.png": (120, 50, ".png"), "small.jpg": (20, 24, ".jpg")}.items():
        paths[name] = str(folder / name)
        with open(paths[name], "wb") as handle:
            handle.write(encode(random_rgb(height, width, len(paths)), extension))
    paths["broken.jpg"] = str(folder / "broken.jpg")
    with open(paths["broken.jpg"], "wb") as handle:
        handle.write(b"this is not an image")
    return paths


def keras_probabilities(model, byte_strings):
    pixels = np.stack([preprocess.eval_image(data, SIZE).numpy() for data in byte_strings])
    return softmax(model(pixels, training=False).numpy())


def check_top_k(outputs):
    probabilities = outputs["probabilities"].numpy()
    labels, scores = outputs["top_k_labels"].numpy(), outputs["top_k_scores"].numpy()
    assert labels.shape == scores.shape == (len(probabilities), TOP_K)
    for row, probability in enumerate(probabilities):
        best = np.argsort(-probability)[:TOP_K]
        assert [label.decode() for label in labels[row]] == [CLASSES[index] for index in best]
        np.testing.assert_allclose(scores[row], probability[best], rtol=1e-6)


def test_serving_default_matches_the_keras_model_on_jpeg_and_png(exported):
    model, loaded, _ = exported
    byte_strings = [encode(random_rgb(50, 80, 1)), encode(random_rgb(97, 31, 2), ".png"), encode(random_rgb(SIZE, SIZE, 3))]
    outputs = loaded.signatures["serving_default"](image_bytes=tf.constant(byte_strings))
    assert sorted(outputs) == sorted(export.OUTPUT_KEYS)
    probabilities = outputs["probabilities"].numpy()
    assert probabilities.dtype == np.float32 and probabilities.shape == (3, len(CLASSES))
    np.testing.assert_allclose(probabilities, keras_probabilities(model, byte_strings), atol=1e-4)
    assert probabilities.max() - probabilities.min() > 0.01  # not trivially uniform
    check_top_k(outputs)


def test_serve_pixels_matches_the_keras_model(exported):
    model, loaded, _ = exported
    pixels = np.stack([random_rgb(SIZE, SIZE, seed) for seed in range(4)])
    outputs = loaded.signatures["serve_pixels"](pixels=tf.constant(pixels))
    np.testing.assert_allclose(outputs["probabilities"].numpy(), softmax(model(pixels, training=False).numpy()), atol=1e-4)
    check_top_k(outputs)


def test_class_names_and_image_size_travel_in_the_export(exported):
    _, loaded, _ = exported
    assert export.exported_class_names(loaded) == CLASSES
    assert export.exported_image_size(loaded) == SIZE


def test_saved_model_cli_lists_both_signatures(exported):
    _, _, export_dir = exported
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    shown = subprocess.run([cli, "show", "--dir", export_dir, "--all"], capture_output=True, text=True, timeout=120, env=env, check=True).stdout
    assert "signature_def['serving_default']" in shown and "signature_def['serve_pixels']" in shown
    for key in export.OUTPUT_KEYS + ("image_bytes", "pixels"):
        assert f"['{key}']" in shown


def test_export_refuses_mismatched_arguments(exported, tmp_path):
    model, _, _ = exported
    with pytest.raises(UserInputError, match="3 class names"):
        export.export_saved_model(model, CLASSES[:3], SIZE, str(tmp_path / "a"))
    with pytest.raises(UserInputError, match="image size 64"):
        export.export_saved_model(model, CLASSES, 64, str(tmp_path / "b"))


def test_load_exported_refuses_other_folders(tmp_path):
    with pytest.raises(UserInputError, match="does not exist"):
        export.load_exported(str(tmp_path / "missing"))
    with pytest.raises(UserInputError, match="not a SavedModel"):
        export.load_exported(str(tmp_path))
    module = tf.Module()
    module.double = tf.function(lambda x: 2 * x, input_signature=[tf.TensorSpec([None], tf.float32)])
    tf.saved_model.save(module, str(tmp_path / "other"))
    with pytest.raises(UserInputError, match="not one exported by abo_tf"):
        export.load_exported(str(tmp_path / "other"))


# --- predict -----------------------------------------------------------------


def test_predict_files_matches_the_keras_model(exported, image_files):
    model, loaded, _ = exported
    paths = [image_files["wide.jpg"], image_files["tall.png"]]
    results = predict.predict_files(loaded, paths, top_k=2)
    expected = keras_probabilities(model, [open(path, "rb").read() for path in paths])
    for result, probabilities in zip(results, expected):
        best = np.argsort(-probabilities)[:2]
        assert [prediction["label"] for prediction in result["predictions"]] == [CLASSES[index] for index in best]
        np.testing.assert_allclose([prediction["score"] for prediction in result["predictions"]], probabilities[best], atol=1e-4)


def test_predict_cli_prints_a_table(exported, image_files, capsys):
    _, _, export_dir = exported
    assert predict.main(["--model", export_dir, image_files["wide.jpg"], image_files["small.jpg"], "--top-k", "2"]) == 0
    out = capsys.readouterr().out
    assert image_files["wide.jpg"] in out and image_files["small.jpg"] in out
    assert out.count(" 1. ") == 2 and out.count(" 2. ") == 2 and " 3. " not in out


def test_predict_cli_json_reports_a_bad_file_alone(exported, image_files, capsys):
    _, _, export_dir = exported
    paths = [image_files["tall.png"], image_files["broken.jpg"], os.path.join(os.path.dirname(image_files["tall.png"]), "missing.jpg"), image_files["wide.jpg"]]
    assert predict.main(["--model", export_dir, "--json", "--top-k", "10", *paths]) == 1
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert [line["image"] for line in lines] == [paths[0], paths[3]]
    assert all(len(line["predictions"]) == len(CLASSES) for line in lines)  # --top-k capped at the classes
    errors = captured.err.strip().splitlines()
    assert len(errors) == 2 and "broken.jpg" in errors[0] and "missing.jpg" in errors[1]


def test_predict_cli_model_errors_exit_2(tmp_path, image_files, capsys):
    assert predict.main(["--model", str(tmp_path / "nowhere"), image_files["wide.jpg"]]) == 2
    assert predict.main(["--model", str(tmp_path), image_files["wide.jpg"]]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all(line.startswith("error: ") for line in errors)
