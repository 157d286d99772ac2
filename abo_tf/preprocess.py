"""Image bytes -> uint8 RGB pixels for the model: decoding, eval crops and train crops.

Each function works eagerly, inside `tf.data.Dataset.map` and inside a
`tf.function` traced with autograph=False (the SavedModel endpoints): no
Python control flow on tensors. Pixels stay uint8 [0, 255]; the model
normalises them itself, so training and serving cannot disagree.
"""

import tensorflow as tf

# The standard ImageNet evaluation crop (224 of 256 pixels): resize the shorter
# side to image_size / 0.875, then take the central square.
CROP_FRACTION = 0.875
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
    """Deterministic evaluation pixels: resize the shorter side, then central crop.

    Args:
      image_bytes: scalar string tensor, the encoded image (any format `decode_rgb` reads).
      image_size: side of the square output, a Python int.

    Returns:
      uint8 tensor [image_size, image_size, 3].
    """
    image = decode_rgb(image_bytes)
    resize_side = round(image_size / CROP_FRACTION)
    height_width = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = resize_side / tf.reduce_min(height_width)
    # max(): float rounding must not leave the shorter side one pixel short of the crop.
    new_size = tf.maximum(tf.cast(tf.round(height_width * scale), tf.int32), resize_side)
    resized = tf.image.resize(image, new_size, method="bilinear", antialias=True)
    top, left = (new_size[0] - image_size) // 2, (new_size[1] - image_size) // 2
    cropped = resized[top:top + image_size, left:left + image_size]
    return tf.ensure_shape(_to_uint8(cropped), [image_size, image_size, 3])


def train_image(image_bytes, image_size, area_range=(0.08, 1.0), aspect_ratio_range=(3 / 4, 4 / 3)):
    """Random resized ("Inception") crop and random horizontal flip, for training.

    The crop window is chosen from the JPEG header and only that window is
    decoded (`decode_and_crop_jpeg`), which is much faster than decoding the
    whole image. `decode_and_crop_jpeg` reads JPEG only: the records always
    hold RGB JPEG because the build re-encodes PNG (see `abo_tf.images`).

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
    resized = tf.image.resize(image, [image_size, image_size], method="bilinear", antialias=True)
    flipped = tf.image.random_flip_left_right(resized)
    return tf.ensure_shape(_to_uint8(flipped), [image_size, image_size, 3])
