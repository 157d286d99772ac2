"""Checking ABO image files and turning them into the RGB JPEG a record stores.

The build runs at copy speed: a JPEG that is already 3-channel, 8-bit and
complete is stored as-is, checked from its structure (markers, SOF header,
end-of-image marker) without decoding. Everything else (PNG, grayscale, CMYK,
or larger than `--resize`) is decoded once and re-encoded; damaged files are
rejected with a reason that the build counts.
"""

import dataclasses

import numpy as np

# The same ceiling as Pillow's decompression-bomb guard: about 0.25 GB of RGBA.
MAX_PIXELS = 89_478_485
JPEG_QUALITY = 95

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"
# Start-of-frame markers carry the dimensions; C4 (DHT), C8 (JPG), CC (DAC) are not frames.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE_MARKERS = frozenset(range(0xD0, 0xD9)) | {0x01}  # RSTn, SOI, TEM
_START_OF_SCAN = 0xDA

# Reasons an image is rejected; the manifest counts each.
EMPTY, NOT_AN_IMAGE, TRUNCATED, CORRUPT, TOO_LARGE = "empty", "not_an_image", "truncated", "corrupt", "too_large"


class RejectedImage(ValueError):
    """The file cannot become a record; `reason` is one of the constants above."""

    def __init__(self, reason, detail=""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    """What the file's structure says, read without decoding pixels."""

    format: str  # "jpeg" or "png"
    height: int
    width: int
    channels: int  # JPEG components (1 gray, 3 YCbCr/RGB, 4 CMYK/YCCK); PNG: 3
    bits: int


def _jpeg_info(data):
    position = 2
    frame = None
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            raise RejectedImage(CORRUPT, f"no JPEG marker at byte {position}")
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
            continue
        if marker in _STANDALONE_MARKERS:
            position += 2
            continue
        length = int.from_bytes(data[position + 2:position + 4], "big")
        if marker in _SOF_MARKERS and position + 10 <= len(data):
            bits, height, width, channels = data[position + 4], int.from_bytes(data[position + 5:position + 7], "big"), int.from_bytes(data[position + 7:position + 9], "big"), data[position + 9]
            frame = ImageInfo("jpeg", height, width, channels, bits)
        if marker == _START_OF_SCAN:
            # 0xFF in entropy-coded data is stuffed as FF00, so an FFD9 after the
            # scan header can only be the end-of-image marker.
            if frame is None:
                raise RejectedImage(CORRUPT, "scan before frame header")
            if data.find(b"\xff\xd9", position + 2 + length) < 0:
                raise RejectedImage(TRUNCATED, "no end-of-image marker")
            return frame
        position += 2 + length
    raise RejectedImage(TRUNCATED, "file ends before the image data")


def _png_info(data):
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise RejectedImage(TRUNCATED if len(data) < 33 else CORRUPT, "no PNG header chunk")
    if not data.rstrip(b"\x00").endswith(_PNG_END):
        raise RejectedImage(TRUNCATED, "no IEND chunk")
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return ImageInfo("png", height, width, 3, data[24])


def inspect_image(data):
    """Reads format, size and completeness from the file's structure.

    Args:
      data: the file's bytes.

    Returns:
      An `ImageInfo`.

    Raises:
      RejectedImage: empty, not a JPEG/PNG, truncated, damaged, or over `MAX_PIXELS`.
    """
    if not data:
        raise RejectedImage(EMPTY)
    if data.startswith(_JPEG_MAGIC):
        info = _jpeg_info(data)
    elif data.startswith(_PNG_MAGIC):
        info = _png_info(data)
    else:
        raise RejectedImage(NOT_AN_IMAGE, f"starts with {data[:8]!r}")
    if info.height <= 0 or info.width <= 0:
        raise RejectedImage(CORRUPT, f"{info.width}x{info.height} pixels")
    if info.height * info.width > MAX_PIXELS:
        raise RejectedImage(TOO_LARGE, f"{info.width}x{info.height} pixels is over {MAX_PIXELS}")
    return info


def can_copy(info, max_side=None):
    """True when a file is stored as it is: an 8-bit, 3-channel JPEG no larger than `max_side`."""
    small_enough = max_side is None or max(info.height, info.width) <= max_side
    return info.format == "jpeg" and info.channels == 3 and info.bits == 8 and small_enough


def _decode_bgr(data):
    import cv2

    # IGNORE_ORIENTATION: tf.io.decode_jpeg ignores EXIF too, so copied and
    # re-encoded images are seen the same way.
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise RejectedImage(CORRUPT, "does not decode")
    if image.dtype != np.uint8:  # 16-bit PNG
        image = (image // 257).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:  # transparent product shots go on white, like the catalog pages
        alpha = image[:, :, 3:4].astype(np.float32) / 255.0
        return np.round(image[:, :, :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    return image


def _shrink(image, max_side):
    import cv2

    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def prepare_image(data, max_side=None):
    """Returns `(jpeg_bytes, height, width, reencoded)` for a record.

    Args:
      data: the ABO file's bytes.
      max_side: re-encode images whose longer side exceeds this (for the originals).

    Raises:
      RejectedImage: the file cannot become a record.
    """
    info = inspect_image(data)
    if can_copy(info, max_side):
        return data, info.height, info.width, False
    too_big = max_side is not None and max(info.height, info.width) > max_side
    import cv2

    image = _decode_bgr(data)
    if too_big:
        image = _shrink(image, max_side)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RejectedImage(CORRUPT, "cannot be re-encoded")
    return encoded.tobytes(), image.shape[0], image.shape[1], True
