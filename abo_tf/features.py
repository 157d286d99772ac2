"""Features for the classical baselines, cached per split: `python -m abo_tf.features`.

    python -m abo_tf.features --records tfrecords/abo/1.0.0 --features handcrafted --cache-dir features
    python -m abo_tf.features --records tfrecords/abo/1.0.0 --features cnn --backbone resnet50 --weights imagenet
    python -m abo_tf.features --records tfrecords/abo/1.0.0 --features cnn --run runs/resnet50

Two kinds, both computed on the uint8 pixels of the evaluation input pipeline
(`input_pipeline.make_dataset(training=False)`, so the crop is the one every
model is evaluated on):

- cnn: the pooled output of a Keras Applications backbone (`--backbone` +
  `--weights`) or of a trained run's model (`--run`), batched.
- handcrafted: OpenCV descriptors in named groups: colour (a joint HSV
  histogram), shape (HOG on a fixed-size grayscale image) and texture
  (rotation-invariant uniform LBP histogram); computed in worker processes.

Each split is cached as `features.npy` (float32 [N, D], read back memory-mapped,
so a large split is paged in rather than copied), `labels.npy`, `image_ids.npy`
and `info.json`, in a folder named by a hash of the records' fingerprint, the
feature kind, the model's identity (backbone + weights, or the SHA-256 of
the run's model.keras) and the image size: a second call reuses it, a rebuilt
records folder or another model gets a new folder.

TensorFlow and Keras are imported inside the functions that need them: the
descriptor workers import this module and would otherwise pay seconds each.
"""

import argparse
import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import shutil
import sys
import time

import numpy as np

from abo_tf.records import schema, shards
from abo_tf.common.errors import InputNotFoundError, UserInputError, cli_main

HANDCRAFTED = "handcrafted"
CNN = "cnn"
KINDS = (HANDCRAFTED, CNN)
SPLITS = ("train", "validation", "test")
DEFAULT_IMAGE_SIZE = {HANDCRAFTED: 128, CNN: 224}
DEFAULT_CACHE_DIR = "features"
# Bump when a descriptor changes: it is part of every cache key.
FEATURES_VERSION = 1

# Handcrafted descriptors. HSV: OpenCV hue is 0-179; 18 hue bins of 10 degrees
# separate the sample's product types (hues at least 7 apart, with saturation
# and value bins telling the rest); 4 x 4 saturation x value bins keep the
# near-white background in few bins.
HSV_BINS = (18, 4, 4)
# HOG on 64 x 64 grayscale: 16 px cells, 2 x 2-cell blocks moved by one cell,
# 9 orientations: 3 x 3 blocks x 4 cells x 9 = 324 values, cheap, and enough for outlines.
HOG_SIZE = 64
HOG_BLOCK, HOG_STRIDE, HOG_CELL, HOG_BINS = 32, 16, 16, 9
# LBP with 8 neighbours at radius 1: codes 0-8 = number of brighter neighbours
# of a "uniform" pattern (at most 2 transitions), 9 = every other pattern.
LBP_BINS = 10

METADATA = "info.json"


# --- handcrafted descriptors (no TensorFlow: they run in worker processes) ---


def handcrafted_groups():
    """Column ranges [start, end) of each named descriptor group, in feature order."""
    colour = math.prod(HSV_BINS)
    blocks = ((HOG_SIZE - HOG_BLOCK) // HOG_STRIDE + 1) ** 2
    shape = blocks * (HOG_BLOCK // HOG_CELL) ** 2 * HOG_BINS
    return {"colour": [0, colour], "shape": [colour, colour + shape], "texture": [colour + shape, colour + shape + LBP_BINS]}


def handcrafted_feature_names():
    """One readable name per handcrafted column (`hsv_h03_s1_v2`, `hog_0123`, `lbp_7`)."""
    hue, saturation, value = HSV_BINS
    names = [f"hsv_h{h:02d}_s{s}_v{v}" for h in range(hue) for s in range(saturation) for v in range(value)]
    start, end = handcrafted_groups()["shape"]
    names += [f"hog_{index:04d}" for index in range(end - start)]
    return names + [f"lbp_{code}" for code in range(LBP_BINS)]


def _hog(gray):
    """HOG (Dalal & Triggs) of a HOG_SIZE grayscale image: unsigned orientations, L2-Hys blocks.

    Written on OpenCV's gradients because opencv-python-headless 5.0 no longer
    ships `cv2.HOGDescriptor` (moved out of the main modules in OpenCV 5).
    """
    import cv2

    pixels = gray.astype(np.float32)
    magnitude, angle = cv2.cartToPolar(cv2.Sobel(pixels, cv2.CV_32F, 1, 0, ksize=1), cv2.Sobel(pixels, cv2.CV_32F, 0, 1, ksize=1), angleInDegrees=True)
    # Each gradient's magnitude is shared between its two nearest orientation bins.
    position = (angle % 180.0) / (180.0 / HOG_BINS) - 0.5
    low = np.floor(position)
    fraction = position - low
    cells_per_side = HOG_SIZE // HOG_CELL
    rows, columns = np.indices(gray.shape) // HOG_CELL
    cell = (rows * cells_per_side + columns) * HOG_BINS
    size = cells_per_side * cells_per_side * HOG_BINS
    histogram = (np.bincount((cell + low.astype(int) % HOG_BINS).ravel(), (magnitude * (1 - fraction)).ravel(), size)
                 + np.bincount((cell + (low.astype(int) + 1) % HOG_BINS).ravel(), (magnitude * fraction).ravel(), size))
    histogram = histogram.reshape(cells_per_side, cells_per_side, HOG_BINS)
    block_cells, step = HOG_BLOCK // HOG_CELL, HOG_STRIDE // HOG_CELL
    starts = range(0, cells_per_side - block_cells + 1, step)
    blocks = np.stack([histogram[row:row + block_cells, column:column + block_cells].ravel() for row in starts for column in starts])
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
    bits = np.stack([gray[row:row + height - 2, column:column + width - 2] >= center for row, column in offsets]).astype(np.int8)
    ones = bits.sum(axis=0)
    transitions = np.abs(bits - np.roll(bits, 1, axis=0)).sum(axis=0)
    codes = np.where(transitions <= 2, ones, LBP_BINS - 1)
    histogram = np.bincount(codes.ravel(), minlength=LBP_BINS).astype(np.float32)
    return histogram / histogram.sum()


def _describe(image):
    import cv2

    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    colour = cv2.calcHist([hsv], [0, 1, 2], None, list(HSV_BINS), [0, 180, 0, 256, 0, 256]).ravel()
    colour /= max(float(colour.sum()), 1.0)
    gray = cv2.resize(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), (HOG_SIZE, HOG_SIZE), interpolation=cv2.INTER_AREA)
    shape = _hog(gray)
    return np.concatenate([colour, shape, _lbp_histogram(gray)])


def handcrafted_features(images):
    """Handcrafted descriptors of a batch of images.

    Args:
      images: uint8 RGB pixels [N, H, W, 3] (any size; HOG resizes to HOG_SIZE).

    Returns:
      float32 [N, D], columns grouped as `handcrafted_groups()`.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"handcrafted_features takes uint8 [N, H, W, 3] images, got {images.dtype} {images.shape}")
    width = handcrafted_groups()["texture"][1]
    return np.stack([_describe(image) for image in images]).astype(np.float32) if len(images) else np.zeros((0, width), np.float32)


def _init_worker():
    import cv2

    cv2.setNumThreads(1)  # parallelism comes from the processes; OpenCV's own threads would oversubscribe


# --- what to compute: the spec and its cache key -----------------------------


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """Which features: handcrafted, or a CNN given by a backbone + weights or by a run folder."""

    kind: str
    backbone: str | None = None
    weights: str | None = "imagenet"  # None for handcrafted
    run: str | None = None
    image_size: int | None = None  # None: DEFAULT_IMAGE_SIZE, or the run's
    seed: int = 0  # draws the random backbone of weights="none", so every split sees the same one

    @property
    def name(self):
        """Short readable name: `handcrafted`, `resnet50-imagenet-224px`, `run-NAME`.

        The image size is part of a backbone's name: the same backbone at two
        sizes gives two feature sets, and two baseline folders.
        """
        if self.kind == HANDCRAFTED:
            return HANDCRAFTED
        if self.run:
            return "run-" + os.path.basename(os.path.normpath(self.run))
        weights = self.weights if self.weights in ("imagenet", "none") else os.path.splitext(os.path.basename(self.weights))[0]
        return f"{self.backbone}-{weights}" + (f"-{self.image_size}px" if self.image_size else "")


def _run_model_path(run):
    path = os.path.join(run, "model.keras")
    if not os.path.isdir(run):
        raise InputNotFoundError(f"run folder {run!r} does not exist (give the --output folder of `python -m abo_tf.train`)")
    if not os.path.isfile(path):
        raise InputNotFoundError(f"run folder {run!r} has no model.keras: give a finished training run (its --output folder)")
    return path


def _load_run_model(run):
    import keras

    import abo_tf.models  # noqa: F401  registers BackbonePreprocess for load_model

    return keras.models.load_model(_run_model_path(run))


def _run_image_size(run):
    from abo_tf.common import config

    saved = config.load_run_config(run) or {}
    if "image_size" in saved:
        return int(saved["image_size"])
    return int(_load_run_model(run).input.shape[1])


def resolve_spec(spec):
    """Checks a spec and fills in its image size.

    Returns:
      The `FeatureSpec` with `image_size` set.

    Raises:
      UserInputError: unknown kind or backbone, cnn without exactly one of
        backbone and run, a run folder without model.keras, a missing weights
        file, or an image size that contradicts the run's.
    """
    if spec.kind not in KINDS:
        raise UserInputError(f"--features {spec.kind!r}: choose one of {KINDS}")
    if spec.image_size is not None and spec.image_size < 1:
        raise UserInputError(f"--image-size {spec.image_size}: give a positive number of pixels, or leave it out for the default")
    if spec.kind == HANDCRAFTED:
        # Backbone and weights mean nothing here; dropped so baseline.json does not suggest otherwise.
        return dataclasses.replace(spec, backbone=None, weights=None, run=None, image_size=spec.image_size or DEFAULT_IMAGE_SIZE[HANDCRAFTED])
    if bool(spec.backbone) == bool(spec.run):
        raise UserInputError("--features cnn needs exactly one of --backbone NAME (with --weights) and --run RUN_DIR")
    if spec.run:
        _run_model_path(spec.run)
        size = _run_image_size(spec.run)
        if spec.image_size and spec.image_size != size:
            raise UserInputError(f"--image-size {spec.image_size}: the run in {spec.run!r} takes {size} px images; leave --image-size out")
        return dataclasses.replace(spec, image_size=size)
    from abo_tf.training import models

    if spec.backbone not in models.BACKBONES:
        raise UserInputError(f"unknown backbone {spec.backbone!r}: choose one of {sorted(models.BACKBONES)}")
    if spec.weights not in ("imagenet", models.NO_WEIGHTS) and not os.path.isfile(spec.weights):
        raise InputNotFoundError(f"weights file {spec.weights!r} does not exist (give imagenet, none or the path of a Keras notop weights file)")
    size = spec.image_size or DEFAULT_IMAGE_SIZE[CNN]
    minimum = models.BACKBONES[spec.backbone].min_image_size
    if size < minimum:  # checked now rather than when the model is first built, after a split was read
        raise UserInputError(f"--image-size {size} is too small for {spec.backbone}: use at least {minimum} pixels")
    return dataclasses.replace(spec, image_size=size)


def _model_identity(spec):
    """What makes the features of one model differ from another's."""
    if spec.kind == HANDCRAFTED:
        return {"hsv_bins": HSV_BINS, "hog": [HOG_SIZE, HOG_BLOCK, HOG_STRIDE, HOG_CELL, HOG_BINS], "lbp_bins": LBP_BINS}
    if spec.run:
        return {"run_model_sha256": shards.file_sha256(_run_model_path(spec.run))}
    from abo_tf.training import models

    if spec.weights == models.NO_WEIGHTS:
        weights = f"none:seed={spec.seed}"
    elif spec.weights == "imagenet":
        weights = "imagenet:" + models.BACKBONES[spec.backbone].weights_file  # Keras checks the file's hash on download
    else:
        weights = "sha256:" + shards.file_sha256(spec.weights)
    return {"backbone": spec.backbone, "weights": weights}


def cache_key(manifest, spec):
    """Hex key of the features of `spec` on a build: records fingerprint, kind, model, image size."""
    identity = {
        "version": FEATURES_VERSION, "records": manifest["fingerprint"], "classes": manifest["classes"],
        "shards": {name: [shard["sha256"] for shard in entry["shards"]] for name, entry in sorted(manifest["splits"].items())},
        "kind": spec.kind, "model": _model_identity(spec), "image_size": spec.image_size,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


# --- the cache ---------------------------------------------------------------


@dataclasses.dataclass
class SplitFeatures:
    """The features of one split, as read from the cache."""

    split: str
    features: np.ndarray  # float32 [N, D], memory-mapped
    labels: np.ndarray  # int32 [N]
    image_ids: np.ndarray  # str [N]
    classes: list  # the records' vocabulary: label i is classes[i]
    groups: dict  # group name -> [start, end) columns; {"cnn": [0, D]} for embeddings
    info: dict  # the cache's info.json: spec, key, seconds, images_per_second
    path: str
    cached: bool = False  # True when an earlier call computed it


def load_features(path, split=None):
    """Reads one split's cache folder, checking it is complete.

    Args:
      path: a split folder written by `extract_features`.
      split: the split's name, default the folder's.

    Returns:
      A `SplitFeatures`, features memory-mapped.

    Raises:
      UserInputError: the folder is missing files, empty, or its arrays disagree.
    """
    names = ("features.npy", "labels.npy", "image_ids.npy", METADATA)
    missing = [name for name in names if not os.path.isfile(os.path.join(path, name))]
    if missing:
        raise UserInputError(f"feature cache {path!r} is empty or incomplete (missing {missing}): delete the folder and extract again")
    try:
        features = np.load(os.path.join(path, "features.npy"), mmap_mode="r")
        labels = np.load(os.path.join(path, "labels.npy"))
        image_ids = np.load(os.path.join(path, "image_ids.npy"))
        with open(os.path.join(path, METADATA), encoding="utf-8") as handle:
            info = json.load(handle)
        classes, groups = info["classes"], info["groups"]
    except (ValueError, OSError, KeyError, TypeError) as error:
        raise UserInputError(f"feature cache {path!r} cannot be read ({error}): delete the folder and extract again") from error
    if features.ndim != 2 or len(features) == 0 or features.shape[1] == 0:
        raise UserInputError(f"feature cache {path!r} holds no features (shape {features.shape}): delete the folder and extract again")
    if not len(labels) == len(image_ids) == len(features):
        raise UserInputError(f"feature cache {path!r}: {len(features)} feature rows, {len(labels)} labels, {len(image_ids)} image ids: delete the folder and extract again")
    return SplitFeatures(split or os.path.basename(path), features, labels, image_ids, classes, groups, info, path)


def _bounded_map(pool, function, items, window):
    """`pool.submit(function, item)` for each item, results in order, at most `window` in flight.

    `Executor.map` would submit every batch at once: the whole split in memory.
    """
    pending, items = collections.deque(), iter(items)
    for item in itertools.islice(items, window):
        pending.append(pool.submit(function, item))
    while pending:
        result = pending.popleft().result()
        for item in itertools.islice(items, 1):
            pending.append(pool.submit(function, item))
        yield result


def _handcrafted_batches(batches, pool, workers):
    """(features, labels, ids) per batch; descriptors in the `pool`'s processes, or here without one."""
    if pool is None:
        for images, labels, ids in batches:
            yield handcrafted_features(images), labels, ids
        return
    side = collections.deque()

    def images_only():
        for images, labels, ids in batches:
            side.append((labels, ids))
            yield images

    for features in _bounded_map(pool, handcrafted_features, images_only(), window=2 * workers):
        labels, ids = side.popleft()
        yield features, labels, ids


def build_feature_model(spec):
    """The Keras model of a cnn spec: uint8 images [B, S, S, 3] -> pooled features [B, D].

    Args:
      spec: a resolved cnn `FeatureSpec`.

    Returns:
      A `keras.Model`. A backbone with weights="none" is drawn from `spec.seed`.
    """
    import keras

    from abo_tf.training import models

    if spec.run:
        model = _load_run_model(spec.run)
        try:
            return keras.Model(model.inputs, model.get_layer("pool").output, name="run_features")
        except ValueError as error:
            raise UserInputError(f"the model in {spec.run!r} has no 'pool' layer: it is not a model from abo_tf.train") from error
    if spec.weights == models.NO_WEIGHTS:
        keras.utils.set_random_seed(spec.seed)  # the same random backbone for every split and every call
    backbone = models.build_backbone(spec.backbone, spec.image_size, None if spec.weights == models.NO_WEIGHTS else spec.weights)
    images = keras.Input(shape=(spec.image_size, spec.image_size, 3), dtype="uint8", name="image")
    pixels = models.BackbonePreprocess(spec.backbone, name="preprocess")(images)
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(backbone(pixels, training=False))
    return keras.Model(images, pooled, name=f"{spec.backbone}_features")


def _cnn_batches(batches, embed):
    for images, labels, ids in batches:
        yield embed(images).numpy(), labels, ids


def _make_embed(spec):
    """A traced function images -> float32 features (one trace for every batch size)."""
    import tensorflow as tf

    model = build_feature_model(spec)
    signature = [tf.TensorSpec([None, spec.image_size, spec.image_size, 3], tf.uint8)]
    embed = tf.function(lambda images: tf.cast(model(images, training=False), tf.float32), input_signature=signature)
    embed(tf.zeros([1, spec.image_size, spec.image_size, 3], tf.uint8))  # traced here, so the split's images/s leaves it out
    return embed


def _write_split(feature_batches, folder, num_examples, description):
    """Writes the batches into `folder` (a temporary name) and returns the number of rows written."""
    from tqdm import tqdm

    features, labels, ids, position = None, np.zeros(num_examples, np.int32), [], 0
    with tqdm(total=num_examples, desc=description, unit="img", disable=description is None) as bar:
        for batch_features, batch_labels, batch_ids in feature_batches:
            if features is None:  # the width is known from the first batch; rows are written, never held
                features = np.lib.format.open_memmap(os.path.join(folder, "features.npy"), mode="w+", dtype=np.float32, shape=(num_examples, batch_features.shape[1]))
            end = position + len(batch_features)
            if end > num_examples:
                raise UserInputError(f"{folder}: the records hold more examples than their manifest says ({num_examples}): rebuild or verify them")
            features[position:end], labels[position:end] = batch_features, batch_labels
            ids += [value.decode("utf-8") for value in batch_ids]
            position = end
            bar.update(len(batch_features))
    if features is not None:
        features.flush()
        del features
    np.save(os.path.join(folder, "labels.npy"), labels[:position])
    np.save(os.path.join(folder, "image_ids.npy"), np.array(ids, dtype=str))
    return position


def _eval_batches(records_dir, split, spec, batch_size, manifest):
    from abo_tf.training import input_pipeline

    dataset = input_pipeline.make_dataset(records_dir, split, spec.image_size, batch_size, training=False, manifest=manifest, extra_keys=(schema.IMAGE_ID,))
    for batch in dataset:
        yield batch["image"].numpy(), batch["label"].numpy(), batch[schema.IMAGE_ID].numpy()


def _compute_split(records_dir, split, spec, manifest, final, describe, batch_size, progress):
    """Extracts one split into `final` (through a temporary folder, renamed when complete)."""
    num_examples = manifest["splits"][split]["num_examples"]
    temporary = f"{final}.tmp-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    os.makedirs(temporary)
    try:
        feature_batches = describe(_eval_batches(records_dir, split, spec, batch_size, manifest))
        # Timed from here: building and tracing a CNN (in `describe`, on the first split) is not per image.
        started = time.perf_counter()
        written = _write_split(feature_batches, temporary, num_examples, f"{split} {spec.name}" if progress else None)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)  # an interrupted split leaves no half-written folder behind
        raise
    seconds = time.perf_counter() - started
    if written != num_examples:
        shutil.rmtree(temporary, ignore_errors=True)
        raise UserInputError(f"{records_dir!r}: split {split!r} yielded {written} examples, its manifest says {num_examples}: verify the records")
    width = int(np.load(os.path.join(temporary, "features.npy"), mmap_mode="r").shape[1])
    info = {"split": split, "spec": dataclasses.asdict(spec), "name": spec.name, "key": cache_key(manifest, spec), "classes": manifest["classes"],
            "groups": handcrafted_groups() if spec.kind == HANDCRAFTED else {"cnn": [0, width]}, "num_examples": written,
            "dimension": width, "image_size": spec.image_size, "seconds": seconds, "images_per_second": written / max(seconds, 1e-9)}
    with open(os.path.join(temporary, METADATA), "w", encoding="utf-8") as handle:
        json.dump(info, handle, indent=2, sort_keys=True)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(temporary, final)


@contextlib.contextmanager
def _describer(spec, workers):
    """Yields a function: iterator of (images, labels, ids) -> iterator of (features, labels, ids)."""
    if spec.kind == CNN:
        embed = functools.cache(functools.partial(_make_embed, spec))  # built once, on the first split computed
        yield lambda batches: _cnn_batches(batches, embed())
    elif workers <= 1:
        import cv2

        threads = cv2.getNumThreads()  # restored after: the setting is process-wide
        cv2.setNumThreads(1)
        try:
            yield functools.partial(_handcrafted_batches, pool=None, workers=1)
        finally:
            cv2.setNumThreads(threads)
    else:
        # Spawn, not fork: the parent holds TensorFlow's threads. Workers start on the first batch.
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool:
            yield functools.partial(_handcrafted_batches, pool=pool, workers=workers)


def cache_folder(cache_dir, manifest, spec):
    """The folder holding the splits of one (records, spec) pair."""
    return os.path.join(cache_dir, f"{spec.name}-{cache_key(manifest, spec)[:16]}")


def extract_features(records_dir, spec, splits=SPLITS, cache_dir=DEFAULT_CACHE_DIR, batch_size=64, workers=None, progress=True):
    """Features of each split, from the cache or computed (and cached) now.

    Args:
      records_dir: a build_records output folder.
      spec: a `FeatureSpec` (resolved here).
      splits: split names to extract.
      cache_dir: where the cache folders live.
      batch_size: images per batch of the evaluation pipeline.
      workers: processes computing handcrafted descriptors; default all cores.
      progress: show a progress bar per computed split.

    Returns:
      Dict split -> `SplitFeatures` (`cached` True for the splits reused).

    Raises:
      UserInputError: as `resolve_spec`, a missing or empty split, or a damaged cache.
    """
    from abo_tf.training import input_pipeline

    if batch_size < 1 or (workers is not None and workers < 1):
        raise UserInputError(f"--batch-size {batch_size}, --workers {workers}: both must be at least 1")
    manifest = shards.read_manifest(records_dir)
    spec = resolve_spec(spec)
    for split in splits:
        input_pipeline.split_files(records_dir, split, manifest)
    folder = cache_folder(cache_dir, manifest, spec)
    results = {}
    with _describer(spec, workers or os.cpu_count() or 1) as describe:
        for split in splits:
            path = os.path.join(folder, split)
            cached = os.path.isdir(path)
            if not cached:
                _compute_split(records_dir, split, spec, manifest, path, describe, batch_size, progress)
            results[split] = dataclasses.replace(load_features(path, split), cached=cached)
    return results


# --- command line ------------------------------------------------------------


def add_feature_arguments(parser):
    """The feature flags, shared with `abo_tf.baselines`; returns the argument group."""
    group = parser.add_argument_group("features")
    group.add_argument("--features", choices=KINDS, default=HANDCRAFTED, help="handcrafted OpenCV descriptors or CNN embeddings")
    group.add_argument("--backbone", help="Keras Applications backbone for --features cnn (see abo_tf.training.models.BACKBONES)")
    group.add_argument("--weights", default="imagenet", help="backbone weights: imagenet | none | PATH to a Keras notop weights file")
    group.add_argument("--run", help="a training run folder (with model.keras) whose pooled features to use, instead of --backbone")
    group.add_argument("--image-size", type=int, default=None, help=f"pixels; default {DEFAULT_IMAGE_SIZE[HANDCRAFTED]} handcrafted, {DEFAULT_IMAGE_SIZE[CNN]} cnn, the run's for --run")
    group.add_argument("--batch-size", type=int, default=64, help="images per batch of the evaluation pipeline")
    group.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes for the handcrafted descriptors (default: every core, here %(default)s)")
    return group


def spec_from_args(args):
    """The `FeatureSpec` of parsed flags."""
    return FeatureSpec(kind=args.features, backbone=args.backbone, weights=args.weights, run=args.run, image_size=args.image_size, seed=args.seed)


def _parser():
    parser = argparse.ArgumentParser(prog="python -m abo_tf.features", description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--records", required=True, help="folder of a build_records output (with manifest.json)")
    data.add_argument("--splits", nargs="+", default=list(SPLITS), help="splits to extract")
    add_feature_arguments(parser).add_argument("--seed", type=int, default=0, help="draws the random backbone of --weights none")
    output = parser.add_argument_group("output")
    output.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR, help="feature cache folder")
    output.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="a progress bar per extracted split")
    return parser


@cli_main
def main(argv=None):
    args = _parser().parse_args(argv)
    results = extract_features(args.records, spec_from_args(args), args.splits, args.cache_dir, args.batch_size, args.workers, args.progress)
    for split, data in results.items():
        source = "cached" if data.cached else f"{data.info['images_per_second']:.0f} img/s"
        print(f"{split}: {data.features.shape[0]} x {data.features.shape[1]} ({source}) in {data.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
