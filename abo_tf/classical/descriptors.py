"""Handcrafted OpenCV descriptors of images, in named groups: colour (HSV), shape (HOG), texture (LBP)."""

# No TensorFlow here (nor in what this imports): worker processes import this
# module to compute descriptors, and would otherwise pay seconds each.
# OpenCV is imported inside the functions, as everywhere in abo_tf.

import math

import numpy as np

# HSV: OpenCV hue is 0-179; 18 hue bins of 10 degrees separate the sample's
# product types (hues at least 7 apart, with saturation and value bins telling
# the rest); 4 x 4 saturation x value bins keep the near-white background in few bins.
HSV_BINS = (18, 4, 4)
# HOG on 64 x 64 grayscale: 16 px cells, 2 x 2-cell blocks moved by one cell,
# 9 orientations: 3 x 3 blocks x 4 cells x 9 = 324 values, cheap, and enough for outlines.
HOG_SIZE = 64
HOG_BLOCK, HOG_STRIDE, HOG_CELL, HOG_BINS = 32, 16, 16, 9
# LBP with 8 neighbours at radius 1: codes 0-8 = number of brighter neighbours
# of a "uniform" pattern (at most 2 transitions), 9 = every other pattern.
LBP_BINS = 10


def handcrafted_groups():
    """Column ranges [start, end) of each named descriptor group, in feature order."""
    colour = math.prod(HSV_BINS)
    blocks = ((HOG_SIZE - HOG_BLOCK) // HOG_STRIDE + 1) ** 2
    shape = blocks * (HOG_BLOCK // HOG_CELL) ** 2 * HOG_BINS
    return {
        "colour": [0, colour],
        "shape": [colour, colour + shape],
        "texture": [colour + shape, colour + shape + LBP_BINS],
    }


def handcrafted_feature_names():
    """One readable name per handcrafted column (`hsv_h03_s1_v2`, `hog_0123`, `lbp_7`)."""
    hue, saturation, value = HSV_BINS
    names = [f"hsv_h{h:02d}_s{s}_v{v}" for h in range(hue) for s in range(saturation) for v in range(value)]
    start, end = handcrafted_groups()["shape"]
    names += [f"hog_{index:04d}" for index in range(end - start)]
    return names + [f"lbp_{code}" for code in range(LBP_BINS)]


def descriptor_parameters():
    """Every setting that changes the descriptors' values (part of the feature cache key)."""
    return {"hsv_bins": HSV_BINS, "hog": [HOG_SIZE, HOG_BLOCK, HOG_STRIDE, HOG_CELL, HOG_BINS], "lbp_bins": LBP_BINS}


def _cell_histograms(gray):
    """Orientation histogram of each HOG cell: [cells, cells, HOG_BINS], gradient magnitudes as weights."""
    import cv2

    pixels = gray.astype(np.float32)
    magnitude, angle = cv2.cartToPolar(
        cv2.Sobel(pixels, cv2.CV_32F, 1, 0, ksize=1), cv2.Sobel(pixels, cv2.CV_32F, 0, 1, ksize=1), angleInDegrees=True
    )
    # Each gradient's magnitude is shared between its two nearest orientation bins.
    position = (angle % 180.0) / (180.0 / HOG_BINS) - 0.5
    low = np.floor(position)
    fraction = position - low
    cells_per_side = HOG_SIZE // HOG_CELL
    rows, columns = np.indices(gray.shape) // HOG_CELL
    cell = (rows * cells_per_side + columns) * HOG_BINS
    size = cells_per_side * cells_per_side * HOG_BINS
    histogram = np.bincount(
        (cell + low.astype(int) % HOG_BINS).ravel(), (magnitude * (1 - fraction)).ravel(), size
    ) + np.bincount((cell + (low.astype(int) + 1) % HOG_BINS).ravel(), (magnitude * fraction).ravel(), size)
    return histogram.reshape(cells_per_side, cells_per_side, HOG_BINS)


def _hog(gray):
    """HOG (Dalal & Triggs) of a HOG_SIZE grayscale image: unsigned orientations, L2-Hys blocks.

    Written on OpenCV's gradients because opencv-python-headless 5.0 no longer
    ships `cv2.HOGDescriptor` (moved out of the main modules in OpenCV 5).
    """
    histogram = _cell_histograms(gray)
    block_cells, step = HOG_BLOCK // HOG_CELL, HOG_STRIDE // HOG_CELL
    starts = range(0, len(histogram) - block_cells + 1, step)
    blocks = np.stack(
        [
            histogram[row : row + block_cells, column : column + block_cells].ravel()
            for row in starts
            for column in starts
        ]
    )
    blocks /= np.sqrt((blocks**2).sum(axis=1, keepdims=True) + 1e-6)
    blocks = np.minimum(blocks, 0.2)  # L2-Hys: clip, then normalise again
    blocks /= np.sqrt((blocks**2).sum(axis=1, keepdims=True) + 1e-6)
    return blocks.ravel().astype(np.float32)


def _lbp_histogram(gray):
    """Normalised histogram of rotation-invariant uniform LBP codes of a grayscale image."""
    center = gray[1:-1, 1:-1]
    height, width = gray.shape
    # The 8 neighbours in circular order, so transitions between consecutive bits are counted right.
    offsets = ((0, 0), (0, 1), (0, 2), (1, 2), (2, 2), (2, 1), (2, 0), (1, 0))
    bits = np.stack(
        [gray[row : row + height - 2, column : column + width - 2] >= center for row, column in offsets]
    ).astype(np.int8)
    ones = bits.sum(axis=0)
    transitions = np.abs(bits - np.roll(bits, 1, axis=0)).sum(axis=0)
    codes = np.where(transitions <= 2, ones, LBP_BINS - 1)
    histogram = np.bincount(codes.ravel(), minlength=LBP_BINS).astype(np.float32)
    return histogram / histogram.sum()


def _describe(image):
    """The descriptors of one uint8 RGB image, groups concatenated in `handcrafted_groups` order."""
    import cv2

    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    colour = cv2.calcHist([hsv], [0, 1, 2], None, list(HSV_BINS), [0, 180, 0, 256, 0, 256]).ravel()
    colour /= max(float(colour.sum()), 1.0)
    gray = cv2.resize(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), (HOG_SIZE, HOG_SIZE), interpolation=cv2.INTER_AREA)
    return np.concatenate([colour, _hog(gray), _lbp_histogram(gray)])


def handcrafted_features(images):
    """Handcrafted descriptors of a batch of images.

    Args:
      images: uint8 RGB pixels [N, H, W, 3] (any size; HOG resizes to HOG_SIZE).

    Returns:
      float32 [N, D], columns grouped as `handcrafted_groups()`.

    Raises:
      ValueError: `images` is not a uint8 [N, H, W, 3] array (a bug of the caller, not a user error).
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"handcrafted_features takes uint8 [N, H, W, 3] images, got {images.dtype} {images.shape}")
    if not len(images):
        return np.zeros((0, handcrafted_groups()["texture"][1]), np.float32)
    return np.stack([_describe(image) for image in images]).astype(np.float32)


def init_worker():
    """Initialiser of a descriptor worker process."""
    import cv2

    cv2.setNumThreads(1)  # parallelism comes from the processes; OpenCV's own threads would oversubscribe
