"""abo_tf.training.preprocess: each function eagerly, inside Dataset.map and inside a tf.function (autograph off)."""

import cv2
import numpy as np
import pytest
import tensorflow as tf

from abo_tf.training import preprocess

IMAGE_SIZE = 40


def encode(rgb, extension=".jpg"):
    """Encoded bytes of an RGB (or grayscale) uint8 array; cv2 wants BGR."""
    pixels = rgb if rgb.ndim == 2 else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(extension, pixels)
    assert ok
    return data.tobytes()


def random_rgb(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def map_over(fn, byte_strings):
    """`fn` applied inside tf.data, the way the input pipeline applies it."""
    dataset = tf.data.Dataset.from_tensor_slices(byte_strings).map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return [element.numpy() for element in dataset]


def test_decode_rgb_keeps_the_colours_of_png():
    rgb = random_rgb(9, 13)
    image = preprocess.decode_rgb(encode(rgb, ".png"))
    assert image.dtype == tf.uint8 and image.shape == (9, 13, 3)
    np.testing.assert_array_equal(image.numpy(), rgb)  # lossless: catches an RGB/BGR swap


def test_decode_rgb_makes_grayscale_rgb():
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    image = preprocess.decode_rgb(encode(gray, ".png")).numpy()
    assert image.shape == (8, 8, 3)
    np.testing.assert_array_equal(image[..., 0], gray)
    np.testing.assert_array_equal(image[..., 2], gray)


def test_decode_rgb_in_dataset_map_has_a_static_channel_dimension():
    dataset = tf.data.Dataset.from_tensor_slices([encode(random_rgb(10, 12))]).map(preprocess.decode_rgb, num_parallel_calls=2)
    assert dataset.element_spec.shape.as_list() == [None, None, 3]
    assert next(iter(dataset)).shape == (10, 12, 3)


@pytest.mark.parametrize("height,width", [(50, 80), (120, 45), (20, 20), (40, 40)])
def test_eval_image_is_the_same_eagerly_and_in_dataset_map(height, width):
    data = encode(random_rgb(height, width))
    eager = preprocess.eval_image(data, IMAGE_SIZE)
    assert eager.dtype == tf.uint8 and eager.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    [mapped] = map_over(lambda item: preprocess.eval_image(item, IMAGE_SIZE), [data])
    np.testing.assert_array_equal(mapped, eager.numpy())


def test_eval_image_in_a_tf_function_without_autograph_matches_eager():
    # The SavedModel endpoints trace with autograph=False.
    data = [encode(random_rgb(60, 90, seed)) for seed in range(3)]
    fn = tf.function(
        lambda batch: tf.map_fn(lambda item: preprocess.eval_image(item, IMAGE_SIZE), batch, fn_output_signature=tf.uint8),
        input_signature=[tf.TensorSpec([None], tf.string)], autograph=False,
    )
    traced = fn(tf.constant(data)).numpy()
    for index, item in enumerate(data):
        np.testing.assert_array_equal(traced[index], preprocess.eval_image(item, IMAGE_SIZE).numpy())


def test_eval_image_takes_the_central_crop():
    # Left third red, middle blue, right third green: the centre crop of a wide image is blue.
    rgb = np.zeros((64, 192, 3), np.uint8)
    rgb[:, :64, 0], rgb[:, 64:128, 2], rgb[:, 128:, 1] = 255, 255, 255
    image = preprocess.eval_image(encode(rgb, ".png"), 32).numpy().astype(int)
    assert image[..., 2].mean() > 250 and image[..., 0].max() == 0 and image[..., 1].max() == 0


def test_eval_image_reads_png_and_grayscale_jpeg():
    gray = np.random.default_rng(1).integers(0, 256, (33, 70), dtype=np.uint8)
    for data in [encode(random_rgb(70, 33), ".png"), encode(gray, ".jpg")]:
        eager = preprocess.eval_image(data, IMAGE_SIZE)
        [mapped] = map_over(lambda item: preprocess.eval_image(item, IMAGE_SIZE), [data])
        assert eager.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and eager.dtype == tf.uint8
        np.testing.assert_array_equal(mapped, eager.numpy())


def test_eval_image_is_close_to_a_plain_resize_of_a_smooth_image():
    # A horizontal ramp survives resize + crop as a ramp over the central 87.5%.
    ramp = np.tile(np.linspace(0, 255, 256).astype(np.uint8)[None, :, None], (256, 1, 3))
    image = preprocess.eval_image(encode(ramp, ".png"), 224).numpy().astype(float)
    expected = np.linspace(16, 239, 224)
    assert np.abs(image[112, :, 0] - expected).max() < 3


def test_train_image_shape_dtype_eagerly_and_in_dataset_map():
    data = [encode(random_rgb(90, 60, seed)) for seed in range(4)]
    eager = preprocess.train_image(data[0], IMAGE_SIZE)
    assert eager.dtype == tf.uint8 and eager.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    mapped = map_over(lambda item: preprocess.train_image(item, IMAGE_SIZE), data)
    assert [(image.shape, image.dtype) for image in mapped] == [((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)] * 4


def test_train_image_crops_vary_between_calls():
    data = encode(random_rgb(120, 160))
    crops = [preprocess.train_image(data, IMAGE_SIZE).numpy() for _ in range(6)]
    assert len({crop.tobytes() for crop in crops}) > 1


def test_train_image_keeps_colours_and_range():
    # A uniform orange image stays orange whatever the crop and flip.
    rgb = np.zeros((64, 96, 3), np.uint8)
    rgb[...] = (250, 120, 10)
    image = preprocess.train_image(encode(rgb), IMAGE_SIZE).numpy().astype(int)
    assert np.abs(image - np.array([250, 120, 10])).max() <= 6


def test_train_image_full_area_crop_is_the_resized_image_up_to_a_flip():
    rgb = random_rgb(48, 48)
    data = encode(rgb, ".jpg")
    image = preprocess.train_image(data, 48, area_range=(1.0, 1.0), aspect_ratio_range=(1.0, 1.0)).numpy()
    decoded = preprocess.decode_rgb(data).numpy()
    assert np.array_equal(image, decoded) or np.array_equal(image, decoded[:, ::-1])
