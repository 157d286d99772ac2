"""Image bytes -> uint8 RGB pixels for the model: decoding, eval crops and train crops.

Each function works eagerly, inside `tf.data.Dataset.map` and inside a
`tf.function` traced with autograph=False (the SavedModel endpoints): no
Python control flow on tensors. Pixels stay uint8 [0, 255]; the model
normalises them itself, so training and serving cannot disagree.

`decode_rgb` is the one definition of "encoded image -> RGB" outside the build,
and it matches the build's (`abo_tf.records.images`, OpenCV): a transparent PNG
is composited onto white with the same float32 formula, so a served PNG looks
like the JPEG the build stored for it. `header_error` reads an image's size
from its header, so serving can refuse a decompression bomb before decoding it.
"""

import tensorflow as tf

# Serving decodes a whole image in one piece and composites PNG alpha in float32: about 20 bytes a pixel
# at its peak. A 9400 x 9400 PNG (257 KB) took `predict` to 2.9 GB; 4096 x 4096, 8- or 16-bit, RGB or
# RGBA, stays at 1.2 GB with the VGG16 test model (measured). Larger photos: resize them first.
MAX_SERVING_PIXELS = 4096 * 4096

# The standard ImageNet evaluation crop (224 of 256 pixels): the central square
# of 87.5% of the shorter side.
CROP_FRACTION = 0.875
# Antialiasing triples the cost of a resize (measured: 1,150 vs 3,650 images/s
# for 256 px outputs on one core) and only matters when shrinking by a large
# factor; ABO's small images are at most 256 px and crops are mostly enlarged.
# Originals should be built with `build_records --resize`, which shrinks with
# OpenCV's area filter once, at build time.
ANTIALIAS = False
# The Inception crop's smallest share of the image area. Inception's 0.08 is for ImageNet from scratch; fine-tuning
# recipes raise it (timm's fine-tuning and DeiT-III's "simple random crop" keep more of the object), and a product
# photo cut to 8% is often a patch of plain material.
CROP_AREA_MIN = 0.25
MAX_CROP_ATTEMPTS = 10  # of sample_distorted_bounding_box before it falls back to the whole image

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_GIF_MAGIC = b"GIF8"  # GIF87a and GIF89a
_BMP_MAGIC = b"BM"
_HEADER_BYTES = 32  # enough for the size fields of PNG (IHDR), GIF and BMP


def _to_uint8(image):
    """Float pixels (from tf.image.resize) back to uint8, rounded, not truncated."""
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def _starts_with(image_bytes, magic):
    return tf.equal(tf.strings.substr(image_bytes, 0, len(magic)), magic)


def composite_on_white(rgba):
    """RGBA -> RGB on a white background, the build's formula (`records.images._decode_bgr`) in the same float32 steps.

    Catalog pages show transparent product shots on white; compositing onto
    black (what dropping alpha does) darkened the test image by 201/255 on average.

    Args:
      rgba: uint8 tensor [height, width, 4].

    Returns:
      uint8 tensor [height, width, 3].
    """
    alpha = tf.cast(rgba[:, :, 3:4], tf.float32) / 255.0
    rgb = tf.cast(rgba[:, :, :3], tf.float32) * alpha + 255.0 * (1.0 - alpha)
    return _to_uint8(rgb)


def decode_rgb(image_bytes, crop=None):
    """Decodes JPEG, PNG, GIF (first frame) or BMP bytes into RGB pixels.

    A PNG is decoded with its alpha channel and composited onto white, as the
    build does (a 16-bit PNG keeps its high byte, the build divides by 257: at
    most 1/255 apart). Grayscale becomes RGB.

    Args:
      image_bytes: scalar string tensor, the encoded image.
      crop: optional function `pixels -> pixels` that only selects pixels (a
        crop); it runs before the composite, so a large PNG is composited only
        where it is kept.

    Returns:
      uint8 tensor [height, width, 3] (of the crop, with `crop`).
    """
    crop = crop or (lambda pixels: pixels)

    def png():
        rgba = tf.ensure_shape(tf.io.decode_png(image_bytes, channels=4), [None, None, 4])
        return composite_on_white(crop(rgba))

    def other():
        # Records always hold JPEG: this is the input pipeline's path, without the composite's cost.
        rgb = tf.ensure_shape(tf.io.decode_image(image_bytes, channels=3, expand_animations=False), [None, None, 3])
        return crop(rgb)

    return tf.ensure_shape(tf.cond(_starts_with(image_bytes, _PNG_MAGIC), png, other), [None, None, 3])


def _unsigned(header, position, length, little_endian):
    """The unsigned integer in `header[position:position + length]`, as int64."""
    digits = tf.cast(tf.io.decode_raw(tf.strings.substr(header, position, length), tf.uint8), tf.int64)
    weights = [256 ** (index if little_endian else length - 1 - index) for index in range(length)]
    return tf.reduce_sum(digits * tf.constant(weights, tf.int64))


def _header_size(image_bytes):
    """`(height, width)` as int64 from a PNG, GIF or BMP header (0, 0 for other formats)."""
    # The first bytes, padded with zeros: every field below can be read without a length check.
    header = tf.strings.substr(image_bytes, 0, _HEADER_BYTES) + b"\0" * _HEADER_BYTES
    png_ok = _starts_with(image_bytes, _PNG_MAGIC) & tf.equal(tf.strings.substr(header, 12, 4), b"IHDR")
    bmp_height = _unsigned(header, 22, 4, little_endian=True)
    bmp_height = tf.abs(tf.where(bmp_height >= 2**31, bmp_height - 2**32, bmp_height))  # negative: top-down rows
    sizes = [
        (png_ok, _unsigned(header, 20, 4, False), _unsigned(header, 16, 4, False)),
        # GIF: the logical screen, the size TensorFlow decodes a frame into
        (_starts_with(image_bytes, _GIF_MAGIC), _unsigned(header, 8, 2, True), _unsigned(header, 6, 2, True)),
        (_starts_with(image_bytes, _BMP_MAGIC), bmp_height, _unsigned(header, 18, 4, True)),
    ]
    height, width = tf.constant(0, tf.int64), tf.constant(0, tf.int64)
    for matches, format_height, format_width in reversed(sizes):
        height, width = tf.where(matches, format_height, height), tf.where(matches, format_width, width)
    return height, width


def header_error(image_bytes, max_pixels=MAX_SERVING_PIXELS):
    """Why an image must not be decoded, read from its header only; "" when it may be.

    The size comes from the JPEG header (`extract_jpeg_shape`), the PNG IHDR
    chunk, the GIF logical screen or the BMP info header, so a small file that
    claims 20000x20000 pixels is refused before it allocates them. A JPEG whose
    header is broken fails here with `InvalidArgumentError`, as decoding would.

    Args:
      image_bytes: scalar string tensor, the encoded image.
      max_pixels: the largest height x width accepted (the build's limit).

    Returns:
      Scalar string tensor: "" or a one-line reason.
    """
    is_jpeg = _starts_with(image_bytes, _JPEG_MAGIC)
    known = is_jpeg
    for magic in (_PNG_MAGIC, _GIF_MAGIC, _BMP_MAGIC):
        known |= _starts_with(image_bytes, magic)

    def jpeg_size():
        return tuple(tf.unstack(tf.cast(tf.image.extract_jpeg_shape(image_bytes)[:2], tf.int64)))

    height, width = tf.cond(is_jpeg, jpeg_size, lambda: _header_size(image_bytes))
    too_large = tf.strings.format(
        "{}x{} pixels is over the limit of {} pixels: shrink the image", [width, height, max_pixels]
    )
    error = tf.where(height * width > max_pixels, too_large, "")
    error = tf.where(height * width == 0, "damaged image: its header gives no size", error)
    return tf.where(known, error, "not a JPEG, PNG, GIF or BMP image")


def eval_image(image_bytes, image_size):
    """Deterministic evaluation pixels: the central square crop, resized.

    The crop's side is CROP_FRACTION of the shorter side, which is "resize the
    shorter side to image_size / CROP_FRACTION, then crop image_size" done in
    the other order (as the reference ResNet input pipelines do): the resize
    then produces only the pixels kept, about 30% less work.

    Args:
      image_bytes: scalar string tensor, the encoded image (any format `decode_rgb` reads).
      image_size: side of the square output, a Python int.

    Returns:
      uint8 tensor [image_size, image_size, 3].
    """
    cropped = decode_rgb(image_bytes, crop=_central_square)
    resized = tf.image.resize(cropped, [image_size, image_size], method="bilinear", antialias=ANTIALIAS)
    return tf.ensure_shape(_to_uint8(resized), [image_size, image_size, 3])


def _central_square(image):
    """The central square of CROP_FRACTION of the shorter side, any number of channels."""
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    side = tf.cast(tf.round(tf.cast(tf.minimum(height, width), tf.float32) * CROP_FRACTION), tf.int32)
    side = tf.maximum(side, 1)
    top, left = (height - side) // 2, (width - side) // 2
    return image[top : top + side, left : left + side]


def train_image(image_bytes, image_size, seed=None, area_range=(CROP_AREA_MIN, 1.0), aspect_ratio_range=(3 / 4, 4 / 3)):
    """Random resized ("Inception") crop and random horizontal flip, for training.

    The crop window is chosen from the JPEG header and only that window is
    decoded (`decode_and_crop_jpeg`), which is much faster than decoding the
    whole image. `decode_and_crop_jpeg` reads JPEG only: the records always
    hold RGB JPEG because the build re-encodes PNG (see `abo_tf.records.images`).

    Args:
      image_bytes: scalar string tensor, JPEG bytes.
      image_size: side of the square output, a Python int.
      seed: int tensor [2] of the stateless random ops: the same seed, the same crop and flip (the input
        pipeline passes one per example); None draws one.
      area_range: range of the crop's fraction of the image area.
      aspect_ratio_range: range of the crop's width / height.

    Returns:
      uint8 tensor [image_size, image_size, 3].
    """
    if seed is None:
        seed = tf.random.uniform([2], maxval=tf.int32.max, dtype=tf.int32)
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    shape = tf.image.extract_jpeg_shape(image_bytes)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=tf.zeros([0, 0, 4], tf.float32),  # no boxes: sample from the whole image
        seed=crop_seed,
        min_object_covered=0.0,
        aspect_ratio_range=aspect_ratio_range,
        area_range=area_range,
        max_attempts=MAX_CROP_ATTEMPTS,
        use_image_if_no_bounding_boxes=True,
    )
    crop_window = tf.stack([begin[0], begin[1], size[0], size[1]])
    image = tf.io.decode_and_crop_jpeg(image_bytes, crop_window, channels=3)
    # The same resize as eval_image, so train and eval pixels look alike.
    resized = tf.image.resize(image, [image_size, image_size], method="bilinear", antialias=ANTIALIAS)
    flipped = tf.image.stateless_random_flip_left_right(resized, seed=flip_seed)
    return tf.ensure_shape(_to_uint8(flipped), [image_size, image_size, 3])
