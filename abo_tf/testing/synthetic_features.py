"""Feature splits for the baselines' benchmarks: Gaussian classes with a long tail, at any size.

Extracting handcrafted features from 400k generated images takes hours on 2
cores; what the search and the solvers cost depends on the matrix's shape,
its class sizes and how separable the classes are, which these splits set
directly. Large splits are written chunk by chunk to a `.npy` file and read
back memory-mapped, as the feature cache serves them.
"""

import os

import numpy as np

from abo_tf.classical import feature_cache

CHUNK_ROWS = 65_536


def class_weights(num_classes, head_fraction=None):
    """Class probabilities falling as 1/rank; with `head_fraction`, the first class takes that share (ABO: ~half)."""
    weights = 1.0 / np.arange(1, num_classes + 1)
    if head_fraction is None:
        return weights / weights.sum()
    tail = weights[1:] / weights[1:].sum() * (1.0 - head_fraction)
    return np.concatenate([[head_fraction], tail])


def class_means(num_classes, dimension, spread=0.15, seed=0):
    """Per-class means of the Gaussian features: how far apart the classes are, in noise standard deviations."""
    return (np.random.default_rng(seed).standard_normal((num_classes, dimension)) * spread).astype(np.float32)


def split(name, size, means, seed, weights=None, groups=None, info=None, folder=None):
    """One split's `SplitFeatures`: every class at least once, then labels drawn from `weights`.

    Args:
      name: the split's name.
      size: its rows.
      means: float32 [num_classes, D] (see `class_means`).
      seed: draws the labels and the noise.
      weights: class probabilities (default: `class_weights`, 1/rank).
      groups: column groups (default {"cnn": [0, D]}).
      info: the cache's info.json stand-in (default {"name": "synthetic"}).
      folder: write features.npy there and return it memory-mapped; None keeps it in memory.
    """
    num_classes, dimension = means.shape
    rng = np.random.default_rng(seed)
    weights = class_weights(num_classes) if weights is None else weights
    labels = np.concatenate([np.arange(num_classes), rng.choice(num_classes, size - num_classes, p=weights)])
    labels = rng.permutation(labels).astype(np.int32)
    if folder is None:
        features = np.empty((size, dimension), np.float32)
    else:
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, feature_cache.FEATURES_FILE)
        features = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(size, dimension))
    for start in range(0, size, CHUNK_ROWS):
        chunk = labels[start : start + CHUNK_ROWS]
        features[start : start + len(chunk)] = means[chunk] + rng.standard_normal((len(chunk), dimension), np.float32)
    if folder is not None:
        features.flush()
        del features
        features = np.load(path, mmap_mode="r")
    classes = [f"class_{index:03d}" for index in range(num_classes)]
    image_ids = np.array([str(index) for index in range(size)])
    return feature_cache.SplitFeatures(
        name,
        features,
        labels,
        image_ids,
        np.array([f"item{index // 2}" for index in range(size)]),  # two views per item
        classes,
        groups or {"cnn": [0, dimension]},
        info or {"name": "synthetic"},
        folder or "",
    )
