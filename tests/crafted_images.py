"""Crafted image files for the tests: valid ones, and valid ones with a few bytes patched."""

import struct
import zlib

import cv2
import numpy as np

# JPEG markers, and where OpenCV's encoder puts things in a segment's payload (after marker and length):
# SOF0 components (id, sampling, quantisation table) from byte 6: Y 2x2 table 0, Cb and Cr 1x1 table 1.
SOF, DQT, DHT, SOS, APP0 = 0xC0, 0xDB, 0xC4, 0xDA, 0xE0
Y_SAMPLING, CB_SAMPLING, CR_TABLE = 7, 10, 14


def jpeg(height=40, width=60, channels=3, seed=0):
    """A JPEG of random pixels, as OpenCV (libjpeg-turbo) writes it: baseline, 4:2:0."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (height, width, channels) if channels > 1 else (height, width), dtype=np.uint8)
    return cv2.imencode(".jpg", pixels)[1].tobytes()


def segment_offset(data, marker, nth=0):
    """Offset of the `nth` segment with `marker`, walking the segments up to the first scan."""
    position, found = 2, []
    while position + 4 <= len(data):
        if data[position + 1] == marker:
            found.append(position)
        if data[position + 1] == SOS:
            break
        position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")
    return found[nth]


def patched(data, *patches):
    """`data` with `(marker, offset in the segment's payload, new byte)` patches applied."""
    result = bytearray(data)
    for marker, offset, value in patches:
        result[segment_offset(data, marker) + 4 + offset] = value
    return bytes(result)


def without_segments(data, marker):
    """`data` without any segment `marker` before the scan (DHT: the decoder falls back on standard tables)."""
    while True:
        try:
            start = segment_offset(data, marker)
        except IndexError:
            return data
        data = data[:start] + data[start + 2 + int.from_bytes(data[start + 2 : start + 4], "big") :]


def png_of_zeros(width, height, bits, colour_type, rows=None):
    """A PNG of black pixels, its rows compressed together: 9000x9000 16-bit RGBA is about 630 KB.

    `rows` cuts the image data short (the header still says `height`), for tests that never decode.
    """

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour_type]
    row = b"\x00" * (1 + width * channels * bits // 8)
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height if rows is None else rows)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, bits, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
