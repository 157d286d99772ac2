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
    dataset = tf.data.Dataset.from_tensor_slices(byte_strings).map(
        fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
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
    dataset = tf.data.Dataset.from_tensor_slices([encode(random_rgb(10, 12))]).map(
        preprocess.decode_rgb, num_parallel_calls=2
    )
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
        lambda batch: tf.map_fn(
            lambda item: preprocess.eval_image(item, IMAGE_SIZE), batch, fn_output_signature=tf.uint8
        ),
        input_signature=[tf.TensorSpec([None], tf.string)],
        autograph=False,
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


# --- transparency: the same composite as the build -----------------------------


def _png_bytes(pixels, mode):
    """PNG bytes written by Pillow, which writes every PNG colour type (OpenCV writes no LA or palette)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    image = Image.fromarray(pixels, mode)
    if mode == "P":
        image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30])
        image.save(buffer, "PNG", transparency=bytes([0, 128, 255, 40]))
    else:
        image.save(buffer, "PNG")
    return buffer.getvalue()


def _transparent_png(kind):
    rng = np.random.default_rng(7)
    if kind == "rgba":
        return _png_bytes(rng.integers(0, 256, (21, 34, 4), dtype=np.uint8), "RGBA")
    if kind == "gray_alpha":
        return _png_bytes(rng.integers(0, 256, (21, 34, 2), dtype=np.uint8), "LA")
    if kind == "palette_with_transparency":
        return _png_bytes(rng.integers(0, 4, (21, 34), dtype=np.uint8), "P")
    # 16-bit RGBA, through OpenCV (BGRA order)
    ok, data = cv2.imencode(".png", rng.integers(0, 65536, (21, 34, 4), dtype=np.uint16))
    assert ok
    return data.tobytes()


@pytest.mark.parametrize("kind", ["rgba", "gray_alpha", "palette_with_transparency", "rgba_16_bit"])
def test_decode_rgb_composites_alpha_onto_white_like_the_build(kind):
    from abo_tf.records import images

    data = _transparent_png(kind)
    build = images._decode_bgr(data)[..., ::-1].astype(int)  # the build's own composite (OpenCV, BGR)
    eager = preprocess.decode_rgb(data).numpy()
    [mapped] = map_over(preprocess.decode_rgb, [data])
    traced_fn = tf.function(preprocess.decode_rgb, input_signature=[tf.TensorSpec([], tf.string)], autograph=False)
    traced = traced_fn(data).numpy()
    # 8-bit: identical; 16-bit: TensorFlow keeps the high byte where the build divides by 257.
    assert np.abs(eager.astype(int) - build).max() <= (1 if kind == "rgba_16_bit" else 0)
    np.testing.assert_array_equal(mapped, eager)
    np.testing.assert_array_equal(traced, eager)


def test_decode_rgb_of_a_transparent_png_is_not_the_pixels_under_the_alpha():
    rgba = np.zeros((8, 8, 4), np.uint8)  # fully transparent black: the catalog shows white
    image = preprocess.decode_rgb(_png_bytes(rgba, "RGBA")).numpy()
    assert (image == 255).all()


def test_eval_image_crops_a_transparent_png_before_compositing_it_to_the_same_pixels():
    data = _transparent_png("rgba")
    cropped = preprocess._central_square(preprocess.decode_rgb(data))
    composited_first = tf.image.resize(cropped, [IMAGE_SIZE, IMAGE_SIZE])
    expected = preprocess._to_uint8(composited_first).numpy()
    np.testing.assert_array_equal(preprocess.eval_image(data, IMAGE_SIZE).numpy(), expected)


# --- header checks: the size of an image before it is decoded ------------------


def _header_only_png(width, height):
    """A PNG signature and IHDR chunk that claim `width` x `height` pixels (no image data needed to read the size)."""
    import struct
    import zlib

    fields = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + fields + struct.pack(">I", zlib.crc32(fields))


def _gif(width, height):
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height)).save(buffer, "GIF")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "data,expected",
    [
        (encode(random_rgb(30, 50)), ""),
        (encode(random_rgb(30, 50), ".png"), ""),
        (encode(random_rgb(30, 50), ".bmp"), ""),
        (_gif(50, 30), ""),
        (_header_only_png(4096, 4096), ""),  # 16,777,216 pixels: the serving limit
        (_header_only_png(20000, 20000), "20000x20000 pixels is over the limit of 16777216 pixels"),
        (_header_only_png(2**31 - 1, 3), "2147483647x3 pixels is over the limit"),
        (_header_only_png(0, 10), "damaged image"),
        (b"\x89PNG\r\n\x1a\n", "damaged image"),
        (b"", "not a JPEG, PNG, GIF or BMP image"),
        (b"this is not an image", "not a JPEG, PNG, GIF or BMP image"),
    ],
)
def test_header_error_reads_the_size_without_decoding(data, expected):
    eager = preprocess.header_error(data).numpy().decode()
    [mapped] = map_over(preprocess.header_error, [data])
    assert (eager == "") if expected == "" else (expected in eager)
    assert mapped.decode() == eager


def test_header_error_of_jpeg_and_bmp_reads_their_headers():
    import struct

    jpeg = bytearray(encode(random_rgb(30, 50)))
    start_of_frame = jpeg.index(b"\xff\xc0")
    jpeg[start_of_frame + 5 : start_of_frame + 9] = struct.pack(">HH", 60000, 60000)  # height, width
    assert "60000x60000 pixels" in preprocess.header_error(bytes(jpeg)).numpy().decode()
    bmp = bytearray(encode(random_rgb(30, 50), ".bmp"))
    bmp[18:26] = struct.pack("<ii", 40000, -40000)  # a negative height: rows stored top-down
    assert "40000x40000 pixels" in preprocess.header_error(bytes(bmp)).numpy().decode()


def test_serving_refuses_what_the_build_refuses_and_more():
    from abo_tf.records import images

    assert preprocess.MAX_SERVING_PIXELS <= images.MAX_PIXELS
    assert "4096x4097 pixels is over" in preprocess.header_error(_header_only_png(4096, 4097)).numpy().decode()
    assert preprocess.header_error(_header_only_png(4096, 4096)).numpy().decode() == ""
    with pytest.raises(images.RejectedImage, match="too_large"):
        images.inspect_image(_header_only_png(20000, 20000) + b"IEND\xaeB`\x82")
