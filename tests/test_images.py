"""Image checks from file structure, and re-encoding to RGB JPEG."""

import cv2
import numpy as np
import pytest
from PIL import Image

from abo_tf.records import images
from tests import crafted_images as crafted

_jpeg = crafted.jpeg


def _pil_bytes(mode, fmt, size=(30, 20), color=None):
    import io

    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, fmt)
    return buffer.getvalue()


def test_rgb_jpeg_is_copied_as_is():
    data = _jpeg()
    assert images.prepare_image(data) == (data, 40, 60, False)
    info = images.inspect_image(data)
    assert (info.format, info.height, info.width, info.channels) == ("jpeg", 40, 60, 3)


@pytest.mark.parametrize(
    "data, channels",
    [
        (_jpeg(channels=1), 1),
        (_pil_bytes("CMYK", "JPEG", color=(0, 255, 255, 0)), 4),
    ],
)
def test_grayscale_and_cmyk_are_reencoded_to_rgb(data, channels):
    assert images.inspect_image(data).channels == channels
    jpeg, height, width, reencoded = images.prepare_image(data)
    assert reencoded and images.inspect_image(jpeg).channels == 3
    assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_UNCHANGED).shape == (height, width, 3)


def test_cmyk_colour_survives():
    # CMYK (0, 255, 255, 0) is red; a wrong (inverted) conversion gives cyan.
    jpeg, _, _, _ = images.prepare_image(_pil_bytes("CMYK", "JPEG", color=(0, 255, 255, 0)))
    blue, green, red = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)[10, 10]
    assert red > 200 and green < 60 and blue < 60


def test_transparent_png_goes_on_white():
    data = _pil_bytes("RGBA", "PNG", color=(255, 0, 0, 0))
    jpeg, height, width, reencoded = images.prepare_image(data)
    assert reencoded and (height, width) == (20, 30)
    assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)[5, 5].min() > 240


def test_resize_shrinks_the_longer_side():
    _, height, width, reencoded = images.prepare_image(_jpeg(100, 400), max_side=64)
    assert reencoded and (height, width) == (16, 64)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", images.EMPTY),
        (b"<html>not found</html>", images.NOT_AN_IMAGE),
        (_jpeg()[:-200], images.TRUNCATED),
        (_jpeg()[:300], images.TRUNCATED),
        (_pil_bytes("RGB", "PNG")[:-12], images.TRUNCATED),
    ],
)
def test_bad_files_are_rejected_with_a_reason(data, reason):
    with pytest.raises(images.RejectedImage) as caught:
        images.prepare_image(data)
    assert caught.value.reason == reason


def test_decompression_bomb_is_rejected_without_decoding():
    data = bytearray(_jpeg())
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = (60000).to_bytes(2, "big") * 2
    with pytest.raises(images.RejectedImage) as caught:
        images.prepare_image(bytes(data))
    assert caught.value.reason == images.TOO_LARGE


# --- JPEGs the decoder refuses: patched bytes of a valid file -----------------
# Each patch breaks one rule on which libjpeg-turbo (TensorFlow's decoder) stops
# with an error; the test checks TensorFlow really refuses the file, so the rule
# is the decoder's and not ours.


_SOF, _DQT, _DHT, _SOS = crafted.SOF, crafted.DQT, crafted.DHT, crafted.SOS
_Y_SAMPLING, _CB_SAMPLING, _CR_TABLE = crafted.Y_SAMPLING, crafted.CB_SAMPLING, crafted.CR_TABLE
_patched, _segment_offset = crafted.patched, crafted.segment_offset


@pytest.mark.parametrize(
    "patches, detail",
    [
        ([(_SOF, _CR_TABLE, 3)], "quantisation table 3, never defined"),
        ([(_DQT, 0, 0x05)], "quantisation table 5"),
        ([(_SOF, _Y_SAMPLING, 0x01)], "sampling factors 0x1"),
        ([(_SOF, _Y_SAMPLING, 0x51)], "sampling factors 5x1"),
        ([(_SOF, _Y_SAMPLING, 0x31), (_SOF, _CB_SAMPLING, 0x21)], "sampling 2x1 against 3x1"),
        ([(_SOF, _Y_SAMPLING, 0x44)], "more than 10 blocks per MCU"),
        ([(_SOS, 2, 0x33)], "Huffman table 0/3, never defined"),
        ([(_SOS, 1, 9)], "scan of components [9, 2, 3]"),
        ([(_DHT, 1, 3)], "bad Huffman table"),  # three 1-bit codes: over-subscribed
        ([(_SOF, 5, 2)], "frame header of the wrong length"),
    ],
    ids=[
        "undefined-dqt",
        "dqt-index",
        "sampling-0",
        "sampling-5",
        "fractional-sampling",
        "mcu-size",
        "undefined-dht",
        "scan-component",
        "oversubscribed-dht",
        "frame-length",
    ],
)
def test_jpeg_the_decoder_refuses_is_rejected_as_undecodable(patches, detail):
    import tensorflow as tf

    data = _patched(_jpeg(), *patches)
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.io.decode_jpeg(data, channels=3)
    with pytest.raises(images.RejectedImage) as caught:
        images.prepare_image(data)
    assert caught.value.reason == images.UNDECODABLE and detail in str(caught.value)


def test_two_component_jpeg_is_undecodable():
    import tensorflow as tf

    data = _jpeg()
    sof = _segment_offset(data, _SOF)
    length = int.from_bytes(data[sof + 2 : sof + 4], "big")
    # Drop the third component from the frame header: 2 components, which no colour conversion takes.
    data = (
        data[: sof + 2]
        + (length - 3).to_bytes(2, "big")
        + data[sof + 4 : sof + 9]
        + b"\x02"
        + data[sof + 10 : sof + 2 + length - 3]
        + data[sof + 2 + length :]
    )
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.io.decode_jpeg(data, channels=3)
    with pytest.raises(images.RejectedImage) as caught:
        images.inspect_image(data)
    assert caught.value.reason == images.UNDECODABLE and "2 components" in str(caught.value)


def test_unknown_marker_is_undecodable():
    import tensorflow as tf

    data = _jpeg()
    app0 = _segment_offset(data, 0xE0)
    data = data[: app0 + 1] + b"\x98" + data[app0 + 2 :]  # APP0 -> 0xFF98, a marker libjpeg does not know
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.io.decode_jpeg(data, channels=3)
    with pytest.raises(images.RejectedImage) as caught:
        images.inspect_image(data)
    assert caught.value.reason == images.UNDECODABLE


def _pil_jpeg(**options):
    import io

    buffer = io.BytesIO()
    pixels = np.random.default_rng(1).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, "JPEG", **options)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "options",
    [
        {"progressive": True},
        {"subsampling": 0},
        {"subsampling": 1, "optimize": True},
        {"progressive": True, "subsampling": 0},
    ],
    ids=["progressive", "444", "422-optimized", "progressive-444"],
)
def test_common_jpeg_layouts_are_copied_and_decode(options):
    import tensorflow as tf

    data = _pil_jpeg(**options)
    assert images.prepare_image(data) == (data, 50, 70, False)
    assert tf.io.decode_jpeg(data, channels=3).shape == (50, 70, 3)
    images.check_decodes(data, 50, 70)


def test_jpeg_without_huffman_tables_is_reencoded_not_copied():
    import tensorflow as tf

    data = crafted.without_segments(_jpeg(), _DHT)  # libjpeg-turbo decodes it with the standard tables
    assert tf.io.decode_jpeg(data, channels=3).shape == (40, 60, 3)
    jpeg, height, width, reencoded = images.prepare_image(data)
    assert reencoded and (height, width) == (40, 60) and images.can_copy(images.inspect_image(jpeg))


def test_12_bit_jpeg_is_not_copied():
    import tensorflow as tf

    data = _patched(_jpeg(), (_SOF, 0, 12))  # 12-bit samples: TensorFlow's 8-bit decoder refuses it
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.io.decode_jpeg(data, channels=3)
    info = images.inspect_image(data)
    assert not images.can_copy(info)
    with pytest.raises(images.RejectedImage) as caught:  # OpenCV's decoder does not take it either
        images.prepare_image(data)
    assert caught.value.reason == images.UNDECODABLE


def _mutants(data, seed, count):
    """`count` copies of `data` with one to three bytes changed, mostly in the headers."""
    rng = np.random.default_rng(seed)
    scan = data.find(b"\xff\xda")
    for _ in range(count):
        mutant = bytearray(data)
        for _ in range(rng.integers(1, 4)):
            position = rng.integers(2, scan + 14 if rng.random() < 0.8 else len(mutant))
            mutant[position] = rng.integers(0, 256)
        yield bytes(mutant)


@pytest.mark.parametrize("seed", range(4))
def test_no_mutated_jpeg_is_copied_unless_tensorflow_decodes_it(seed):
    import tensorflow as tf

    copied = 0
    for base in (_jpeg(), _pil_jpeg(progressive=True)):
        for mutant in _mutants(base, seed, 100):
            try:
                info = images.inspect_image(mutant)
            except images.RejectedImage:
                continue
            if images.can_copy(info):
                copied += 1
                tf.io.decode_jpeg(mutant, channels=3)  # raises if the check vouched for a file TensorFlow refuses
    assert copied > 20  # the mutants are not all rejected: the test exercises the copy path


def _outcome(data):
    try:
        return images.inspect_image(data)
    except images.RejectedImage as error:
        return error.reason, str(error)


def _variants(data):
    """Files sharing `data`'s header but for the frame's size, or cut or damaged after it."""
    sof = data.find(b"\xff\xc0") if b"\xff\xc0" in data else data.find(b"\xff\xc2")
    sized = [
        data[: sof + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + data[sof + 9 :]
        for height, width in ((1000, 3), (0, 60), (65501, 2), (60000, 60000))
    ]
    scan = data.find(b"\xff\xda")
    cut = [data[:length] for length in (scan, scan + 13, scan + 40, len(data) - 2)]
    return sized + cut + list(_mutants(data, 7, 40))


@pytest.mark.parametrize("progressive", [False, True], ids=["baseline", "progressive"])
def test_a_header_checked_before_gives_what_a_full_walk_gives(monkeypatch, progressive):
    """A file whose header (size aside) equals a checked one continues from that check's state: same answers."""
    base = _pil_jpeg(progressive=True) if progressive else _jpeg()
    variants = _variants(base)
    cold = []
    for variant in variants:
        monkeypatch.setattr(images, "_checked_headers", {})
        monkeypatch.setattr(images, "_header_layouts", {})
        cold.append(_outcome(variant))
    monkeypatch.setattr(images, "_checked_headers", {})
    monkeypatch.setattr(images, "_header_layouts", {})
    images.inspect_image(base)
    assert len(images._checked_headers) == 1
    assert [_outcome(variant) for variant in variants] == cold
    assert cold[0].height == 1000 and cold[0].width == 3 and cold[1][0] == images.CORRUPT
    assert cold[2][0] == images.UNDECODABLE and cold[3][0] == images.TOO_LARGE


# --- PNGs: sized from the header before any decoding -------------------------


def test_png_decoding_past_the_budget_is_too_large_from_its_header():
    bomb = crafted.png_of_zeros(9000, 9000, 16, 6, rows=1)  # 81 MP, under MAX_PIXELS, but 648 MB decoded
    assert images.MAX_PIXELS > 9000 * 9000
    with pytest.raises(images.RejectedImage) as caught:
        images.prepare_image(bomb)
    assert caught.value.reason == images.TOO_LARGE and "648000000 bytes" in str(caught.value)


@pytest.mark.parametrize("bits, colour_type", [(16, 2), (3, 0), (16, 3), (8, 5)])
def test_png_header_with_impossible_depth_is_undecodable(bits, colour_type):
    data = bytearray(crafted.png_of_zeros(4, 4, 8, 2))
    data[24:26] = bytes([bits, colour_type])
    if (bits, colour_type) == (16, 2):  # a valid header: it decodes to 16-bit, and is halved to 8 bits
        assert images.inspect_image(bytes(data)).bits == 16
        return
    with pytest.raises(images.RejectedImage) as caught:
        images.inspect_image(bytes(data))
    assert caught.value.reason == images.UNDECODABLE


def test_16_bit_transparent_png_goes_on_white_in_strips(monkeypatch):
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 65535, (37, 23, 4), dtype=np.uint16)
    data = cv2.imencode(".png", pixels)[1].tobytes()
    eight_bit = (pixels // 257).astype(np.uint8)
    alpha = eight_bit[:, :, 3:4].astype(np.float32) / 255.0
    expected = np.round(eight_bit[:, :, :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    monkeypatch.setattr(images, "_STRIP_PIXELS", 100)  # 4 rows a strip: many strips
    assert np.array_equal(images._decode_bgr(data), expected)


def test_check_decodes_finds_a_wrong_size_and_a_png():
    data = _jpeg()
    images.check_decodes(data, 40, 60)
    with pytest.raises(images.RejectedImage):
        images.check_decodes(data, 40, 61)
    with pytest.raises(images.RejectedImage) as caught:
        images.check_decodes(_pil_bytes("RGB", "PNG"), 20, 30)
    assert caught.value.reason == images.UNDECODABLE


def test_second_start_of_image_is_undecodable():
    import tensorflow as tf

    data = _jpeg()
    app0 = _segment_offset(data, 0xE0)
    data = data[:app0] + b"\xff\xd8" + data[app0:]
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.io.decode_jpeg(data, channels=3)
    with pytest.raises(images.RejectedImage) as caught:
        images.inspect_image(data)
    assert caught.value.reason == images.UNDECODABLE and "second start-of-image" in str(caught.value)
