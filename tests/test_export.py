"""abo_tf.training.export and abo_tf.predict: a tiny VGG16 exported once, served from bytes and pixels."""

import collections
import functools
import json
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
import tensorflow as tf

from abo_tf import predict
from abo_tf.common.errors import UserInputError
from abo_tf.testing import measure
from abo_tf.training import export, models, preprocess, serving

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
    for name, (height, width, extension) in {
        "wide.jpg": (40, 90, ".jpg"),
        "tall.png": (120, 50, ".png"),
        "small.jpg": (20, 24, ".jpg"),
    }.items():
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
    byte_strings = [
        encode(random_rgb(50, 80, 1)),
        encode(random_rgb(97, 31, 2), ".png"),
        encode(random_rgb(SIZE, SIZE, 3)),
    ]
    outputs = loaded.signatures["serving_default"](image_bytes=tf.constant(byte_strings))
    assert sorted(outputs) == sorted(export.OUTPUT_KEYS + (export.ERROR_KEY,))
    assert outputs[export.ERROR_KEY].numpy().tolist() == [b""] * 3
    probabilities = outputs["probabilities"].numpy()
    assert probabilities.dtype == np.float32 and probabilities.shape == (3, len(CLASSES))
    np.testing.assert_allclose(probabilities, keras_probabilities(model, byte_strings), atol=1e-4)
    assert probabilities.max() - probabilities.min() > 0.01  # not trivially uniform
    check_top_k(outputs)


def test_serve_pixels_matches_the_keras_model(exported):
    model, loaded, _ = exported
    pixels = np.stack([random_rgb(SIZE, SIZE, seed) for seed in range(4)])
    outputs = loaded.signatures["serve_pixels"](pixels=tf.constant(pixels))
    np.testing.assert_allclose(
        outputs["probabilities"].numpy(), softmax(model(pixels, training=False).numpy()), atol=1e-4
    )
    check_top_k(outputs)


def test_class_names_and_image_size_travel_in_the_export(exported):
    _, loaded, _ = exported
    assert export.exported_class_names(loaded) == CLASSES
    assert export.exported_image_size(loaded) == SIZE


def test_each_endpoint_is_traced_once_and_the_models_variables_travel(tmp_path, monkeypatch):
    """Given the Python endpoints, ExportArchive traced each twice (tf.saved_model.save's context is another
    tf.function cache key): every layer of the model traced four times an export, in every training run."""
    import keras

    traced, make_endpoints = collections.Counter(), export._make_endpoints

    def counting(endpoint):
        @functools.wraps(endpoint)  # the signature's input names are the endpoint's argument names
        def counted(tensor):
            traced[endpoint.__name__] += 1
            return endpoint(tensor)

        return counted

    monkeypatch.setattr(export, "_make_endpoints", lambda *args: tuple(map(counting, make_endpoints(*args))))
    inputs = keras.Input((SIZE, SIZE, 3), dtype="uint8")
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.BatchNormalization()(inputs))
    model = keras.Model(inputs, keras.layers.Dense(len(CLASSES))(features))
    loaded = export.load_exported(export.export_saved_model(model, CLASSES, SIZE, str(tmp_path / "saved_model")))
    assert traced == {"serve_bytes": 1, "serve_pixels": 1}
    for collection in ("variables", "trainable_variables", "non_trainable_variables"):  # as track(model) saved them
        saved, expected = getattr(loaded, collection), getattr(model, collection)
        assert [variable.shape for variable in saved] == [tuple(variable.shape) for variable in expected], collection


@pytest.mark.slow
def test_saved_model_cli_lists_both_signatures(exported):
    _, _, export_dir = exported
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    shown = subprocess.run(
        [cli, "show", "--dir", export_dir, "--all"], capture_output=True, text=True, timeout=120, env=env, check=True
    ).stdout
    assert "signature_def['serving_default']" in shown and "signature_def['serve_pixels']" in shown
    for key in export.OUTPUT_KEYS + (export.ERROR_KEY, "image_bytes", "pixels"):
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
    results = serving.predict_files(loaded, paths, top_k=2)
    expected = keras_probabilities(model, [open(path, "rb").read() for path in paths])
    for result, probabilities in zip(results, expected):
        best = np.argsort(-probabilities)[:2]
        assert [prediction["label"] for prediction in result["predictions"]] == [CLASSES[index] for index in best]
        np.testing.assert_allclose(
            [prediction["score"] for prediction in result["predictions"]], probabilities[best], atol=1e-4
        )


def test_predict_cli_prints_a_table(exported, image_files, capsys):
    _, _, export_dir = exported
    assert predict.main(["--model", export_dir, image_files["wide.jpg"], image_files["small.jpg"], "--top-k", "2"]) == 0
    out = capsys.readouterr().out
    assert image_files["wide.jpg"] in out and image_files["small.jpg"] in out
    assert out.count(" 1. ") == 2 and out.count(" 2. ") == 2 and " 3. " not in out


def test_predict_cli_json_reports_a_bad_file_alone(exported, image_files, capsys):
    _, _, export_dir = exported
    paths = [
        image_files["tall.png"],
        image_files["broken.jpg"],
        os.path.join(os.path.dirname(image_files["tall.png"]), "missing.jpg"),
        image_files["wide.jpg"],
    ]
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


# --- transparent PNG: served as the build stores it -------------------------------


def transparent_png(height=64, width=96):
    """A smooth grey-blue product on a fully transparent background whose hidden pixels are black."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgba = np.zeros((height, width, 4), np.uint8)
    rgba[..., :3] = (90, 110, 150)
    distance = np.sqrt(((x - width / 2) / (width / 2)) ** 2 + ((y - height / 2) / (height / 2)) ** 2)
    rgba[..., 3] = np.clip((0.8 - distance) * 600, 0, 255).astype(np.uint8)
    rgba[rgba[..., 3] == 0, :3] = 0
    ok, data = cv2.imencode(".png", rgba[..., [2, 1, 0, 3]])
    assert ok
    return data.tobytes()


@pytest.fixture(scope="module")
def transparent_files(tmp_path_factory):
    """The transparent PNG, and the JPEG the build stores for it (`records.images.prepare_image`)."""
    from abo_tf.records import images

    folder = tmp_path_factory.mktemp("transparent")
    png = transparent_png()
    jpeg, _, _, reencoded = images.prepare_image(png)
    assert reencoded
    paths = {"png": str(folder / "product.png"), "build_jpeg": str(folder / "product_as_built.jpg")}
    for key, data in (("png", png), ("build_jpeg", jpeg)):
        with open(paths[key], "wb") as handle:
            handle.write(data)
    return paths


def test_transparent_png_pixels_match_the_build(transparent_files):
    served, built = (
        preprocess.eval_image(open(transparent_files[key], "rb").read(), SIZE).numpy().astype(int)
        for key in ("png", "build_jpeg")
    )
    # Only the build's JPEG compression (quality 95, 4:2:0 chroma) separates them: 1.4/255 on this sharp cut-out.
    # The composite itself is the build's to the bit (test_preprocess); onto black it differed by ~200/255.
    assert np.abs(served - built).mean() <= 2.0
    on_black = tf.io.decode_png(open(transparent_files["png"], "rb").read(), channels=3).numpy().astype(int)
    assert np.abs(on_black.mean() - served.mean()) > 100  # the oracle can tell the two composites apart


def test_transparent_png_through_serving_default_and_predict_matches_the_build(exported, transparent_files):
    """Serving computes the Keras model on `eval_image` pixels, which match the build's (test above)."""
    model, loaded, _ = exported
    data = [open(transparent_files[key], "rb").read() for key in ("png", "build_jpeg")]
    served = loaded.signatures["serving_default"](image_bytes=tf.constant(data))["probabilities"].numpy()
    np.testing.assert_allclose(served, keras_probabilities(model, data), atol=1e-4)
    assert np.abs(served[0] - served[1]).max() < 0.05  # the PNG and the JPEG the build made of it
    paths = [transparent_files["png"], transparent_files["build_jpeg"]]
    by_file = serving.predict_files(loaded, paths, top_k=len(CLASSES))
    for result, probabilities in zip(by_file, served):
        scores = {item["label"]: item["score"] for item in result["predictions"]}
        np.testing.assert_allclose([scores[name] for name in CLASSES], probabilities, atol=1e-6)


# --- hostile images: refused alone, before decoding ---------------------------------


def big_png(side):
    """A valid single-colour PNG of side x side pixels, deflated row by row: ~1.2 MB for 20000, never held decoded."""
    import struct
    import zlib

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    compressor = zlib.compressobj(9)
    row = b"\x00" + b"\x80" * (3 * side)  # filter byte "none", then grey RGB
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def test_a_refused_image_does_not_fail_the_others_in_its_call(exported):
    model, loaded, _ = exported
    good = [encode(random_rgb(50, 80, 1)), encode(random_rgb(40, 40, 2), ".png")]
    bombs = [big_png(100)[:33] + b"IEND", b"not an image"]  # a header claiming 100x100 is fine; patch it to 20000 below
    bombs[0] = bombs[0][:16] + (20000).to_bytes(4, "big") * 2 + bombs[0][24:]
    outputs = loaded.signatures["serving_default"](image_bytes=tf.constant([good[0], bombs[0], good[1], bombs[1]]))
    errors = [error.decode() for error in outputs[export.ERROR_KEY].numpy()]
    assert errors[0] == errors[2] == ""
    assert "20000x20000 pixels is over the limit of 16777216 pixels" in errors[1]
    assert "not a JPEG, PNG, GIF or BMP" in errors[3]
    probabilities = outputs["probabilities"].numpy()
    np.testing.assert_allclose(probabilities[[0, 2]], keras_probabilities(model, good), atol=1e-4)
    assert not probabilities[[1, 3]].any() and not outputs["top_k_scores"].numpy()[[1, 3]].any()
    assert set(outputs["top_k_labels"].numpy()[[1, 3]].ravel().tolist()) == {b""}


def _damaged(kind):
    jpeg, png = encode(random_rgb(50, 60, 3)), bytearray(encode(random_rgb(30, 30, 4), ".png"))
    if kind == "truncated":
        return jpeg[: len(jpeg) // 2]
    if kind == "soi_eoi":
        return b"\xff\xd8\xff\xd9"
    if kind == "no_scan":
        return jpeg[: jpeg.find(b"\xff\xda")] + b"\xff\xd9"
    idat = png.find(b"IDAT")
    png[idat + 4 + int.from_bytes(png[idat - 4 : idat], "big")] ^= 0xFF  # the chunk's CRC
    return bytes(png)


@pytest.mark.parametrize("kind", ["truncated", "soi_eoi", "no_scan", "png_bad_crc"])
def test_a_damaged_image_gets_an_error_and_the_others_are_classified(exported, kind):
    model, loaded, _ = exported
    good = [encode(random_rgb(50, 80, 1)), encode(random_rgb(40, 40, 2), ".png")]
    outputs = loaded.signatures["serving_default"](image_bytes=tf.constant([good[0], _damaged(kind), good[1]]))
    errors = [error.decode() for error in outputs[export.ERROR_KEY].numpy()]
    assert errors == ["", export.DAMAGED, ""]
    probabilities = outputs["probabilities"].numpy()
    np.testing.assert_allclose(probabilities[[0, 2]], keras_probabilities(model, good), atol=1e-4)
    assert not probabilities[1].any()


def test_empty_batches_are_answered_and_serve_pixels_enforces_its_shape(exported):
    _, loaded, _ = exported
    empty = loaded.signatures["serving_default"](image_bytes=tf.constant([], tf.string))
    assert empty["probabilities"].shape == (0, len(CLASSES)) and empty[export.ERROR_KEY].shape == (0,)
    pixels = loaded.signatures["serve_pixels"]
    assert pixels(pixels=tf.zeros([0, SIZE, SIZE, 3], tf.uint8))["top_k_labels"].shape == (0, TOP_K)
    refused = re.escape(f"serve_pixels takes uint8 [N, {SIZE}, {SIZE}, 3]")
    for shape in [(1, 1, 1, 3), (1, SIZE * 2, SIZE, 3)]:
        with pytest.raises(tf.errors.InvalidArgumentError, match=refused):
            pixels(pixels=tf.zeros(shape, tf.uint8))


def test_predict_refuses_a_file_over_the_size_limit_before_reading_it(exported, image_files):
    _, loaded, _ = exported
    path = image_files["wide.jpg"]
    [result] = serving.predict_files(loaded, [path], max_file_bytes=os.path.getsize(path) - 1)
    assert result["error"].startswith("not read:")
    assert f"{os.path.getsize(path)} bytes is over the limit" in result["error"]


def test_predict_reads_only_regular_files(exported, tmp_path):
    _, loaded, _ = exported
    os.mkfifo(tmp_path / "fifo")  # opening it for reading would wait for a writer forever
    results = serving.predict_files(loaded, ["/dev/zero", str(tmp_path / "fifo"), str(tmp_path)])
    assert [result["error"] for result in results] == ["not read: not a regular file (a folder, device or pipe)"] * 3


_BOMB_SCRIPT = """
import sys
import tensorflow as tf
from abo_tf import predict
from abo_tf.training import export
export_dir, bomb, good = sys.argv[1:4]
loaded = export.load_exported(export_dir)
data = open(bomb, "rb").read()
outputs = loaded.signatures["serving_default"](image_bytes=tf.constant([data, data, data, open(good, "rb").read()]))
print("errors", [error.decode() for error in outputs["error"].numpy()])
code = predict.main(["--model", export_dir, bomb, good])
print("predict exit", code)
"""


@pytest.mark.slow
def test_a_20000_pixel_png_is_refused_by_serving_and_predict_within_1_5_gb(exported, image_files, tmp_path):
    _, _, export_dir = exported
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(big_png(20000))
    assert os.path.getsize(bomb) < 1.5e6  # 1.2 GB of pixels in a small valid file
    repository = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=repository, TF_CPP_MIN_LOG_LEVEL="2")
    code, stdout, stderr, peak = measure.run_measured(
        [sys.executable, "-c", _BOMB_SCRIPT, export_dir, str(bomb), image_files["wide.jpg"]], timeout=300, env=env
    )
    assert code == 0, stderr[-3000:]
    keys = ("errors", "predict exit")
    lines = dict(line.split(" ", 1) for line in stdout.splitlines() if line.startswith(keys))
    assert lines["errors"].count("20000x20000 pixels is over the limit of 16777216 pixels") == 3
    assert lines["errors"].endswith("'']")  # the good image of the same call
    assert lines["predict"] == "exit 1"  # the bomb is reported, the good file still classified
    [error_line] = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert str(bomb) in error_line and "over the limit" in error_line
    assert image_files["wide.jpg"] in stdout
    assert peak < 1.5e9, f"peak RSS {peak / 2**20:.0f} MB"


def test_predict_prints_a_file_name_with_a_newline_on_one_line(exported, tmp_path, capsys):
    _, _, export_dir = exported
    good, bad = tmp_path / "good\nname.jpg", tmp_path / "bad\nname.jpg"
    good.write_bytes(encode(random_rgb(40, 40, 5)))
    bad.write_bytes(b"not an image")
    assert predict.main(["--model", export_dir, str(good), str(bad)]) == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0] == repr(str(good))
    reason = "not classified: not a JPEG, PNG, GIF or BMP image"
    assert captured.err.strip().splitlines() == [f"error: {str(bad)!r}: {reason}"]


def test_predict_on_a_damaged_jpeg_prints_one_line_and_no_libjpeg_warning(exported, tmp_path, capfd):
    _, _, export_dir = exported
    path = tmp_path / "truncated.jpg"
    path.write_bytes(_damaged("truncated"))
    assert predict.main(["--model", export_dir, str(path)]) == 1
    assert capfd.readouterr().err.strip().splitlines() == [f"error: {path}: not classified: {export.DAMAGED}"]
