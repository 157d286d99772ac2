"""Checking ABO image files and turning them into the RGB JPEG a record stores.

The build runs at copy speed: a JPEG that is already 3-channel, 8-bit and
complete is stored as-is, checked from its structure (every marker segment, the
tables each scan uses, the end-of-image marker) without decoding. The check
follows the rules on which libjpeg-turbo (the decoder of `tf.io.decode_jpeg`
and of OpenCV) stops with an error, so a file it passes cannot make training
fail with `jpeg::Uncompress failed`. Everything else (PNG, grayscale, CMYK,
larger than `--resize`, or a JPEG outside the layouts the check vouches for) is
decoded once with OpenCV and re-encoded; damaged files are rejected with a
reason that the build counts.
"""

import dataclasses
import functools
import re

import numpy as np

# The same ceiling as Pillow's decompression-bomb guard: about 0.25 GB of RGBA.
MAX_PIXELS = 89_478_485
# Decoded bytes allowed per image: as much as the largest accepted 8-bit RGB
# JPEG. A 630 KB PNG of 9000x9000 16-bit RGBA passes MAX_PIXELS yet decodes to
# 648 MB and took 2.9 GB in one build worker.
MAX_DECODED_BYTES = 3 * MAX_PIXELS
JPEG_QUALITY = 95

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"
# Start-of-frame markers carry the dimensions; C4 (DHT), C8 (JPG), CC (DAC) are not frames.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Huffman-coded sequential and progressive frames: what the structure check vouches for.
_BASELINE, _EXTENDED, _PROGRESSIVE = 0xC0, 0xC1, 0xC2
# Hierarchical frames and JPG: libjpeg-turbo has no decoder for them (JERR_SOF_UNSUPPORTED).
_UNSUPPORTED_SOF = frozenset({0xC5, 0xC6, 0xC7, 0xC8, 0xCD, 0xCE, 0xCF})
_STANDALONE_MARKERS = frozenset(range(0xD0, 0xD8)) | {0x01}  # RSTn, TEM
# Every marker libjpeg reads or skips (frames, tables, scans, APPn, COM, DNL); any
# other stops it (JERR_UNKNOWN_MARKER).
_KNOWN_MARKERS = frozenset(range(0xC0, 0xDE)) | frozenset(range(0xE0, 0xF0)) | {0xFE, 0x01}
_START_OF_IMAGE, _END_OF_IMAGE, _START_OF_SCAN = 0xD8, 0xD9, 0xDA
_DQT, _DHT, _DRI = 0xDB, 0xC4, 0xDD
# In entropy-coded data 0xFF is stuffed as FF00 and restart markers are FFD0-FFD7:
# the first FF followed by anything else is the next marker.
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
# libjpeg limits (jpeglib.h, jdmarker.c, jdinput.c, jdsample.c).
_MAX_DIMENSION, _MAX_SCAN_COMPONENTS, _MAX_BLOCKS_IN_MCU, _MAX_SAMPLING = 65500, 4, 10, 4
_NUM_TABLES = 4
_MAX_SUCCESSIVE_APPROXIMATION = 13

# PNG colour type -> (allowed bit depths, channels OpenCV decodes it to with IMREAD_UNCHANGED).
_PNG_COLOUR_TYPES = {0: ((1, 2, 4, 8, 16), 1), 2: ((8, 16), 3), 3: ((1, 2, 4, 8), 4), 4: ((8, 16), 4), 6: ((8, 16), 4)}

# Reasons an image is rejected; the manifest counts each.
EMPTY, NOT_AN_IMAGE, TRUNCATED, CORRUPT, TOO_LARGE = "empty", "not_an_image", "truncated", "corrupt", "too_large"
UNDECODABLE = "undecodable"  # well-formed enough to read, but the JPEG/PNG decoder would stop with an error


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
    channels: int  # JPEG components (1 gray, 3 YCbCr/RGB, 4 CMYK/YCCK); PNG: channels decoded
    bits: int
    # True when the structure shows libjpeg-turbo decodes the file as it is
    # (Huffman-coded, 8-bit, every table it uses defined, sampling it supports).
    decodable_as_is: bool = False

    @property
    def decoded_bytes(self):
        """Bytes of the pixels a decoder allocates for the image (at least 3 channels of 8 bits)."""
        bytes_per_sample = 2 if self.bits > 8 else 1
        return self.height * self.width * max(3, self.channels) * bytes_per_sample


# --- JPEG structure ----------------------------------------------------------


@dataclasses.dataclass
class _JpegFrame:
    """The frame header, and what the scans seen so far have coded."""

    marker: int
    bits: int
    height: int
    width: int
    components: dict  # component id -> (horizontal sampling, vertical sampling, quantisation table)
    coded: set = dataclasses.field(default_factory=set)  # component ids seen in a scan
    vouched: bool = True  # False once anything outside the layouts the check vouches for is seen


def _undecodable(detail):
    return RejectedImage(UNDECODABLE, detail)


def _read_quant_tables(segment, quant_tables):
    position = 0
    while position < len(segment):
        precision, table = segment[position] >> 4, segment[position] & 0x0F
        if table >= _NUM_TABLES or precision > 1:
            raise _undecodable(f"quantisation table {table} of precision {precision}")
        quant_tables.add(table)
        position += 1 + 64 * (precision + 1)
    if position != len(segment):
        raise _undecodable("quantisation table segment of the wrong length")


@functools.lru_cache(maxsize=64)
def _huffman_tables(segment):
    """`((0 DC / 1 AC, number), largest symbol)` of each table a DHT segment defines.

    Cached: most files carry the same standard tables, byte for byte.
    """
    tables, position = [], 0
    while position + 17 <= len(segment):
        table_class, table = segment[position] >> 4, segment[position] & 0x0F
        counts = segment[position + 1 : position + 17]
        num_symbols = sum(counts)
        if table_class > 1 or table >= _NUM_TABLES or num_symbols > 256 or not _complete_code(counts):
            raise _undecodable(f"bad Huffman table {table_class}/{table}")
        tables.append(((table_class, table), max(segment[position + 17 : position + 17 + num_symbols], default=0)))
        position += 17 + num_symbols
    if position != len(segment):
        raise _undecodable("Huffman table segment of the wrong length")
    return tuple(tables)


def _complete_code(counts):
    """False when the code lengths over-subscribe the code space (libjpeg's JERR_BAD_HUFF_TABLE)."""
    code = 0
    for length, count in enumerate(counts, start=1):
        code += count
        if code > 1 << length:
            return False
        code <<= 1
    return True


def _read_frame(marker, segment, existing):
    if existing is not None:
        raise _undecodable("two frame headers")
    if len(segment) < 6 or len(segment) != 6 + 3 * segment[5]:
        raise _undecodable("frame header of the wrong length")
    bits, height, width = segment[0], int.from_bytes(segment[1:3], "big"), int.from_bytes(segment[3:5], "big")
    components = {}
    for position in range(6, len(segment), 3):
        component, sampling, table = segment[position : position + 3]
        horizontal, vertical = sampling >> 4, sampling & 0x0F
        if not (1 <= horizontal <= _MAX_SAMPLING and 1 <= vertical <= _MAX_SAMPLING):
            raise _undecodable(f"sampling factors {horizontal}x{vertical}")
        if table >= _NUM_TABLES or component in components:
            raise _undecodable(f"component {component} with quantisation table {table}")
        components[component] = (horizontal, vertical, table)
    if len(components) not in (1, 3, 4):
        raise _undecodable(f"{len(components)} components (a colour decoder takes 1, 3 or 4)")
    if max(height, width) > _MAX_DIMENSION:
        raise _undecodable(f"{width}x{height} pixels, libjpeg's limit is {_MAX_DIMENSION} a side")
    _check_sampling_ratios(components.values())
    vouched = marker in (_BASELINE, _EXTENDED, _PROGRESSIVE) and bits == 8
    return _JpegFrame(marker, bits, height, width, components, vouched=vouched)


def _check_sampling_ratios(components):
    """libjpeg upsamples each component by a whole factor; a 3:2 ratio stops it (JERR_FRACT_SAMPLE_NOTIMPL)."""
    max_horizontal = max(horizontal for horizontal, _, _ in components)
    max_vertical = max(vertical for _, vertical, _ in components)
    for horizontal, vertical, _ in components:
        if max_horizontal % horizontal or max_vertical % vertical:
            raise _undecodable(f"sampling {horizontal}x{vertical} against {max_horizontal}x{max_vertical}")


def _read_scan(segment, frame, quant_tables, huffman_tables):
    """Checks a scan header against the frame and the tables defined before it."""
    if frame is None:
        raise RejectedImage(CORRUPT, "scan before frame header")
    count = segment[0] if segment else 0
    if not 1 <= count <= _MAX_SCAN_COMPONENTS or len(segment) != 4 + 2 * count:
        raise _undecodable("scan header of the wrong length")
    start, end, approximation = segment[-3], segment[-2], segment[-1]
    high, low = approximation >> 4, approximation & 0x0F
    ids = [segment[1 + 2 * index] for index in range(count)]
    if len(set(ids)) != count or any(component not in frame.components for component in ids):
        raise _undecodable(f"scan of components {ids}, the frame has {sorted(frame.components)}")
    if count > 1 and sum(frame.components[c][0] * frame.components[c][1] for c in ids) > _MAX_BLOCKS_IN_MCU:
        raise _undecodable("more than 10 blocks per MCU")
    if frame.marker == _PROGRESSIVE:
        _check_progression(start, end, high, low, count)
    for index, component in enumerate(ids):
        table = frame.components[component][2]
        if component not in frame.coded and table not in quant_tables:
            raise _undecodable(f"component {component} uses quantisation table {table}, never defined")
        frame.coded.add(component)
        tables = segment[2 + 2 * index]
        _check_huffman_use(frame, huffman_tables, tables >> 4, tables & 0x0F, start, high)


def _check_progression(start, end, high, low, count):
    """The scan parameters libjpeg-turbo accepts in a progressive JPEG (JERR_BAD_PROGRESSION)."""
    bad = end != 0 if start == 0 else start > end or end > 63 or count != 1
    if bad or (high and low != high - 1) or low > _MAX_SUCCESSIVE_APPROXIMATION:
        raise _undecodable(f"progression Ss={start} Se={end} Ah={high} Al={low}")


def _check_huffman_use(frame, huffman_tables, dc_table, ac_table, start, high):
    if frame.marker not in (_BASELINE, _EXTENDED, _PROGRESSIVE):
        return  # arithmetic-coded or lossless: left to the decoder
    progressive = frame.marker == _PROGRESSIVE
    needed = []
    if not progressive or (start == 0 and high == 0):
        needed.append((0, dc_table))
    if not progressive or start > 0:
        needed.append((1, ac_table))
    for table_class, table in needed:
        if table >= _NUM_TABLES:
            raise _undecodable(f"scan uses Huffman table {table}")
        if (table_class, table) not in huffman_tables:
            # libjpeg-turbo falls back on the standard tables 0 and 1 only (jstdhuff.c).
            if table >= 2:
                raise _undecodable(f"scan uses Huffman table {table_class}/{table}, never defined")
            frame.vouched = False
        elif table_class == 0 and huffman_tables[0, table] > 15:  # a DC symbol is a bit count, at most 15
            raise _undecodable(f"Huffman DC table {table} has a symbol over 15")


def _end_of_scan(data, position):
    """Where the entropy-coded data starting at `position` ends: at the next marker."""
    found = _NEXT_MARKER.search(data, position)
    if found is None:
        raise RejectedImage(TRUNCATED, "no end-of-image marker")
    return found.start()


def _jpeg_segments(data, position=2, in_scan=False):
    """Yields `(marker, position, segment payload)` from the marker at `position` (the first after SOI) to EOI,
    or from the end of the scan data at `position` if `in_scan`.

    A scan's entropy-coded data is skipped by searching for the next marker.
    """
    if in_scan:
        position = _end_of_scan(data, position)
    while True:
        while data[position : position + 2] == b"\xff\xff":
            position += 1  # fill bytes before a marker
        if position + 2 > len(data):
            return
        marker = data[position + 1]
        if data[position] != 0xFF or marker == 0x00:  # libjpeg skips such bytes with a warning; we do not vouch
            raise RejectedImage(CORRUPT, f"no JPEG marker at byte {position}")
        if marker not in _KNOWN_MARKERS or marker in _UNSUPPORTED_SOF:
            raise _undecodable(f"marker 0x{marker:02X} at byte {position}")
        if marker == _END_OF_IMAGE:
            yield marker, position, b""
            return
        if marker == _START_OF_IMAGE:
            raise _undecodable(f"second start-of-image marker at byte {position}")
        if marker in _STANDALONE_MARKERS:
            position += 2
            continue
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        if position + 2 + length > len(data):
            return
        if length < 2:
            raise RejectedImage(CORRUPT, f"segment length {length} at byte {position}")
        yield marker, position, data[position + 4 : position + 2 + length]
        position += 2 + length
        if marker == _START_OF_SCAN:
            position = _end_of_scan(data, position)


# Headers checked before: most files of a catalogue come from one encoder and share every byte up to the end
# of the first scan header but the frame's height and width. The walk reads nothing else before that point, so
# a file whose header equals a checked one (dimensions aside) continues from the state that walk reached: the
# same checks, the same result, a quarter of the time. Per process, bounded.
_MAX_CHECKED_HEADERS, _MAX_HEADER_LAYOUTS = 256, 4
_checked_headers = {}  # header bytes, dimensions cut out -> (frame, quantisation tables, Huffman tables)
_header_layouts = {}  # (frame marker's position, end of the first scan header) of the headers above


def _header_key(data, frame_at, end):
    """The bytes of `data[:end]` but the frame's height and width (4 bytes at `frame_at + 5`)."""
    return data[: frame_at + 5] + data[frame_at + 9 : end] if len(data) >= end else None


def _checked_header(data):
    """`(position after the first scan header, frame, quantisation tables, Huffman tables)` from a checked
    header equal to this file's, or `(2, None, set(), {})` to walk it from the start."""
    for frame_at, end in _header_layouts:
        state = _checked_headers.get(_header_key(data, frame_at, end))
        if state is not None:
            frame, quant_tables, huffman_tables = state
            height, width = (
                int.from_bytes(data[frame_at + 5 : frame_at + 7], "big"),
                int.from_bytes(data[frame_at + 7 : frame_at + 9], "big"),
            )
            if max(height, width) > _MAX_DIMENSION:  # the one check of the walk that reads the dimensions
                raise _undecodable(f"{width}x{height} pixels, libjpeg's limit is {_MAX_DIMENSION} a side")
            frame = _JpegFrame(
                frame.marker, frame.bits, height, width, frame.components, set(frame.coded), frame.vouched
            )
            return end, frame, set(quant_tables), dict(huffman_tables)
    return 2, None, set(), {}


def _remember_header(data, frame_at, end, frame, quant_tables, huffman_tables):
    if len(_checked_headers) >= _MAX_CHECKED_HEADERS:
        del _checked_headers[next(iter(_checked_headers))]
    if (frame_at, end) not in _header_layouts and len(_header_layouts) >= _MAX_HEADER_LAYOUTS:
        del _header_layouts[next(iter(_header_layouts))]
    _header_layouts[frame_at, end] = None
    copy = dataclasses.replace(frame, coded=set(frame.coded))
    _checked_headers[_header_key(data, frame_at, end)] = (copy, frozenset(quant_tables), dict(huffman_tables))


def _jpeg_info(data):
    # huffman_tables: (0 DC / 1 AC, number) -> largest symbol
    position, frame, quant_tables, huffman_tables = _checked_header(data)
    scanned, frame_at = frame is not None, None
    for marker, at, segment in _jpeg_segments(data, position, in_scan=frame is not None):
        if marker == _END_OF_IMAGE:
            return _finished_frame(frame, scanned)
        if marker == _DQT:
            _read_quant_tables(segment, quant_tables)
        elif marker == _DHT:
            huffman_tables.update(_huffman_tables(segment))
        elif marker == _DRI and len(segment) != 2:
            raise _undecodable("restart interval segment of the wrong length")
        elif marker in _SOF_MARKERS:
            frame, frame_at = _read_frame(marker, segment, frame), at
        elif marker == _START_OF_SCAN:
            _read_scan(segment, frame, quant_tables, huffman_tables)
            if not scanned:
                _remember_header(data, frame_at, at + 4 + len(segment), frame, quant_tables, huffman_tables)
            scanned = True
    raise RejectedImage(TRUNCATED, "no end-of-image marker" if scanned else "file ends before the image data")


def _finished_frame(frame, scanned):
    if not scanned:
        raise RejectedImage(CORRUPT, "end of image before any scan")
    # A component no scan codes decodes to whatever the buffer held: no error, but not the picture.
    uncoded = sorted(set(frame.components) - frame.coded)
    if uncoded:
        raise RejectedImage(CORRUPT, f"components {uncoded} are in no scan")
    channels = len(frame.components)
    return ImageInfo("jpeg", frame.height, frame.width, channels, frame.bits, frame.vouched and channels == 3)


# --- PNG structure -----------------------------------------------------------


def _png_info(data):
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise RejectedImage(TRUNCATED if len(data) < 33 else CORRUPT, "no PNG header chunk")
    if not data.rstrip(b"\x00").endswith(_PNG_END):
        raise RejectedImage(TRUNCATED, "no IEND chunk")
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    bits, colour_type, compression, filtering, interlace = data[24:29]
    depths, channels = _PNG_COLOUR_TYPES.get(colour_type, ((), 0))
    if bits not in depths or compression or filtering or interlace > 1:
        raise _undecodable(
            f"PNG header: {bits}-bit colour type {colour_type}, methods {compression}/{filtering}/{interlace}"
        )
    return ImageInfo("png", height, width, channels, bits)


def inspect_image(data):
    """Reads format, size and completeness from the file's structure.

    Args:
      data: the file's bytes.

    Returns:
      An `ImageInfo`.

    Raises:
      RejectedImage: empty, not a JPEG/PNG, truncated, damaged, a layout the
        decoder refuses, over `MAX_PIXELS` or over `MAX_DECODED_BYTES` once decoded.
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
    if info.decoded_bytes > MAX_DECODED_BYTES:
        raise RejectedImage(
            TOO_LARGE,
            f"{info.width}x{info.height} {info.bits}-bit pixels decode to "
            f"{info.decoded_bytes} bytes, over {MAX_DECODED_BYTES}",
        )
    return info


def can_copy(info, max_side=None):
    """True when a file is stored as it is: a 3-channel JPEG the check vouches for, no larger than `max_side`."""
    small_enough = max_side is None or max(info.height, info.width) <= max_side
    return info.format == "jpeg" and info.decodable_as_is and small_enough


# Pixels per strip when compositing on white: bounds the float32 temporaries to about 12 MB.
_STRIP_PIXELS = 1 << 20


def _decode_bgr(data):
    import cv2

    # IGNORE_ORIENTATION: tf.io.decode_jpeg ignores EXIF too, so copied and
    # re-encoded images are seen the same way.
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise RejectedImage(UNDECODABLE, "the decoder stops with an error")
    if image.dtype != np.uint8:  # 16-bit PNG; divided in place, the largest image allowed is 256 MB
        np.floor_divide(image, 257, out=image)
        image = image.astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return _on_white(image)
    return image


def _on_white(image):
    """Transparent product shots go on white, like the catalog pages; in row strips to bound memory."""
    result = np.empty(image.shape[:2] + (3,), np.uint8)
    rows = max(1, _STRIP_PIXELS // image.shape[1])
    for top in range(0, image.shape[0], rows):
        strip = image[top : top + rows]
        alpha = strip[:, :, 3:4].astype(np.float32) / 255.0
        result[top : top + rows] = np.round(strip[:, :, :3] * alpha + 255.0 * (1.0 - alpha))
    return result


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


def check_decodes(data, height, width):
    """Raises `RejectedImage` unless a stored JPEG decodes, as TensorFlow would, to `height` x `width`.

    The structure check decides what libjpeg-turbo accepts; an actual decode at
    1/8 scale (OpenCV's libjpeg-turbo, which still entropy-decodes every block)
    confirms it for an eighth of the cost of a full decode.
    """
    import cv2

    info = inspect_image(data)
    if not (info.format == "jpeg" and info.decodable_as_is):
        raise _undecodable(f"a {info.channels}-channel {info.format} the check does not vouch for")
    if (info.height, info.width) != (height, width):
        raise RejectedImage(CORRUPT, f"{info.width}x{info.height} pixels, the record says {width}x{height}")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_COLOR_8 | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None or image.shape[:2] != (-(-height // 8), -(-width // 8)):
        raise _undecodable("the decoder stops with an error")
