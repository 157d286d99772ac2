"""Image bytes -> uint8 RGB pixels for the model: decoding, eval crops and train crops.

Each function works eagerly, inside `tf.data.Dataset.map` and inside a
`tf.function` traced with autograph=False (the SavedModel endpoints): no
Python control flow on tensors. Pixels stay uint8 [0, 255]; the model
normalises them itself, so training and serving cannot disagree.
"""

import tensorflow as tf

# The standard ImageNet evaluation crop (224 of 256 pixels): the central square
# of 87.5% of the shorter side.
CROP_FRACTION = 0.875
# Antialiasing triples the cost of a resize (measured: 1,150 vs 3,650 images/s
# for 256 px outputs on one core) and only matters when shrinking by a large
# factor; ABO's small images are at most 256 px and crops are mostly enlarged.
# Originals should be built with `build_records --resize`, which shrinks with
# OpenCV's area filter once, at build time.
ANTIALIAS = False
MAX_CROP_ATTEMPTS = 10  # of sample_distorted_bounding_box before it falls back to the whole image


def _to_uint8(image):
    """Float pixels (from tf.image.resize) back to uint8, rounded, not truncated."""
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def decode_rgb(image_bytes):
    """Decodes JPEG, PNG, GIF (first frame) or BMP bytes into RGB pixels.

    Args:
      image_bytes: scalar string tensor, the encoded image.

    Returns:
      uint8 tensor [height, width, 3]; grayscale and RGBA become RGB.
    """
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    return tf.ensure_shape(image, [None, None, 3])


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
    image = decode_rgb(image_bytes)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    side = tf.cast(tf.round(tf.cast(tf.minimum(height, width), tf.float32) * CROP_FRACTION), tf.int32)
    side = tf.maximum(side, 1)
    top, left = (height - side) // 2, (width - side) // 2
    cropped = image[top:top + side, left:left + side]
    resized = tf.image.resize(cropped, [image_size, image_size], method="bilinear", antialias=ANTIALIAS)
    return tf.ensure_shape(_to_uint8(resized), [image_size, image_size, 3])


def train_image(image_bytes, image_size, area_range=(0.08, 1.0), aspect_ratio_range=(3 / 4, 4 / 3)):
    """Random resized ("Inception") crop and random horizontal flip, for training.

    The crop window is chosen from the JPEG header and only that window is
    decoded (`decode_and_crop_jpeg`), which is much faster than decoding the
    whole image. `decode_and_crop_jpeg` reads JPEG only: the records always
    hold RGB JPEG because the build re-encodes PNG (see `abo_tf.records.images`).

    Args:
      image_bytes: scalar string tensor, JPEG bytes.
      image_size: side of the square output, a Python int.
      area_range: range of the crop's fraction of the image area.
      aspect_ratio_range: range of the crop's width / height.

    Returns:
      uint8 tensor [image_size, image_size, 3].
    """
    shape = tf.image.extract_jpeg_shape(image_bytes)
    begin, size, _ = tf.image.sample_distorted_bounding_box(
        shape,
        bounding_boxes=tf.zeros([0, 0, 4], tf.float32),  # no boxes: sample from the whole image
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
    flipped = tf.image.random_flip_left_right(resized)
    return tf.ensure_shape(_to_uint8(flipped), [image_size, image_size, 3])
