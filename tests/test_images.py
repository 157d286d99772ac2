"""Image checks from file structure, and re-encoding to RGB JPEG."""

import cv2
import numpy as np
import pytest
from PIL import Image

from abo_tf.records import images


def _jpeg(height=40, width=60, channels=3):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (height, width, channels) if channels > 1 else (height, width), dtype=np.uint8)
    return cv2.imencode(".jpg", pixels)[1].tobytes()


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


@pytest.mark.parametrize("data, channels", [
    (_jpeg(channels=1), 1),
    (_pil_bytes("CMYK", "JPEG", color=(0, 255, 255, 0)), 4),
])
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
    jpeg, height, width, reencoded = images.prepare_image(_jpeg(100, 400), max_side=64)
    assert reencoded and (height, width) == (16, 64)


@pytest.mark.parametrize("data, reason", [
    (b"", images.EMPTY),
    (b"<html>not found</html>", images.NOT_AN_IMAGE),
    (_jpeg()[:-200], images.TRUNCATED),
    (_jpeg()[:300], images.TRUNCATED),
    (_pil_bytes("RGB", "PNG")[:-12], images.TRUNCATED),
])
def test_bad_files_are_rejected_with_a_reason(data, reason):
    with pytest.raises(images.RejectedImage) as caught:
        images.prepare_image(data)
    assert caught.value.reason == reason


def test_decompression_bomb_is_rejected_without_decoding():
    data = bytearray(_jpeg())
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = (60000).to_bytes(2, "big") * 2
    with pytest.raises(images.RejectedImage) as caught:
        images.prepare_image(bytes(data))
    assert caught.value.reason == images.TOO_LARGE
