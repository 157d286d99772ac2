"""Features of the records' splits: OpenCV descriptors in worker processes or a CNN in batches, into the cache."""

# Both kinds are computed on the uint8 pixels of the evaluation input pipeline
# (`input_pipeline.make_dataset(training=False)`), so the crop is the one every
# model is evaluated on. TensorFlow and Keras are imported inside the functions:
# descriptor workers import the command module, and with it this one.

import collections
import contextlib
import dataclasses
import functools
import os
import time
from typing import NamedTuple

import numpy as np

from abo_tf.classical import descriptors, feature_cache, feature_spec
from abo_tf.common import outputs, parallel
from abo_tf.common.errors import UserInputError
from abo_tf.common.parallel import bounded_map
from abo_tf.records import schema, shards
from abo_tf.records.split import SPLITS
from abo_tf.training import run_folder


class ImageBatch(NamedTuple):
    """A batch of the evaluation pipeline: uint8 pixels, labels, image ids and item ids."""

    images: np.ndarray  # uint8 [B, S, S, 3]
    labels: np.ndarray  # int [B]
    image_ids: np.ndarray  # bytes [B]
    item_ids: np.ndarray  # bytes [B], the bootstrap's unit


def _image_batches(records_dir, split, spec, batch_size, manifest):
    from abo_tf.training import input_pipeline

    dataset = input_pipeline.make_dataset(
        records_dir,
        split,
        spec.image_size,
        batch_size,
        training=False,
        manifest=manifest,
        extra_keys=(schema.IMAGE_ID, schema.ITEM_ID),
    )
    for batch in dataset:
        yield ImageBatch(
            batch["image"].numpy(),
            batch["label"].numpy(),
            batch[schema.IMAGE_ID].numpy(),
            batch[schema.ITEM_ID].numpy(),
        )


def _handcrafted_batches(batches, pool, workers):
    """`FeatureBatch` per `ImageBatch`; descriptors in the `pool`'s processes, or here without one."""
    if pool is None:
        for batch in batches:
            yield feature_cache.FeatureBatch(
                descriptors.handcrafted_features(batch.images), batch.labels, batch.image_ids, batch.item_ids
            )
        return
    waiting = collections.deque()  # the labels and ids of the batches in the workers, in order

    def images_only():
        for batch in batches:
            waiting.append(batch)
            yield batch.images

    for features in bounded_map(pool, descriptors.handcrafted_features, images_only(), 2 * workers):
        batch = waiting.popleft()
        yield feature_cache.FeatureBatch(features, batch.labels, batch.image_ids, batch.item_ids)


def build_feature_model(spec):
    """The Keras model of a cnn spec: uint8 images [B, S, S, 3] -> pooled features [B, D].

    Args:
      spec: a resolved cnn `FeatureSpec`.

    Returns:
      A `keras.Model`. A backbone with weights="none" is drawn from `spec.seed`.

    Raises:
      UserInputError: the run's model has no "pool" layer.
    """
    import keras

    from abo_tf.training import models

    if spec.run:
        model = feature_spec.load_run_model(spec.run)
        try:
            return keras.Model(model.inputs, model.get_layer(run_folder.POOL_LAYER).output, name="run_features")
        except ValueError as error:
            raise UserInputError(
                f"the model in {spec.run!r} has no {run_folder.POOL_LAYER!r} layer: it is not a model from abo_tf.train"
            ) from error
    if spec.weights == models.NO_WEIGHTS:
        keras.utils.set_random_seed(spec.seed)  # the same random backbone for every split and every call
    backbone = models.build_backbone(
        spec.backbone, spec.image_size, None if spec.weights == models.NO_WEIGHTS else spec.weights
    )
    images = keras.Input(shape=(spec.image_size, spec.image_size, 3), dtype="uint8", name="image")
    pixels = models.BackbonePreprocess(spec.backbone, name="preprocess")(images)
    pooled = keras.layers.GlobalAveragePooling2D(name=run_folder.POOL_LAYER)(backbone(pixels, training=False))
    return keras.Model(images, pooled, name=f"{spec.backbone}_features")


def make_embed(spec):
    """A traced function uint8 images [B, S, S, 3] -> float32 features [B, D], one trace for every batch size.

    Args:
      spec: a resolved cnn `FeatureSpec`.
    """
    import tensorflow as tf

    model = build_feature_model(spec)
    signature = [tf.TensorSpec([None, spec.image_size, spec.image_size, 3], tf.uint8)]
    embed = tf.function(lambda images: tf.cast(model(images, training=False), tf.float32), input_signature=signature)
    embed(
        tf.zeros([1, spec.image_size, spec.image_size, 3], tf.uint8)
    )  # traced here, so the split's images/s leaves it out
    return embed


def _cnn_batches(batches, embed):
    for batch in batches:
        yield feature_cache.FeatureBatch(embed(batch.images).numpy(), batch.labels, batch.image_ids, batch.item_ids)


@contextlib.contextmanager
def _single_threaded_opencv():
    import cv2

    threads = cv2.getNumThreads()  # restored after: the setting is process-wide
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(threads)


@contextlib.contextmanager
def _describer(spec, workers):
    """Yields a function: iterator of `ImageBatch` -> iterator of `FeatureBatch`."""
    if spec.kind == feature_spec.CNN:
        embed = functools.cache(functools.partial(make_embed, spec))  # built once, on the first split computed
        yield lambda batches: _cnn_batches(batches, embed())
    elif workers <= 1:
        with _single_threaded_opencv():
            yield functools.partial(_handcrafted_batches, pool=None, workers=1)
    else:
        # Workers start on the first batch.
        with parallel.process_pool(workers, initializer=descriptors.init_worker) as pool:
            yield functools.partial(_handcrafted_batches, pool=pool, workers=workers)


def _split_info(split, spec, manifest, written, seconds):
    """The info.json of a computed split (`written`: its `feature_cache.WrittenRows`)."""
    groups = descriptors.handcrafted_groups() if spec.kind == feature_spec.HANDCRAFTED else {"cnn": [0, written.width]}
    return {
        "split": split,
        "spec": dataclasses.asdict(spec),
        "name": spec.name,
        "key": feature_cache.cache_key(manifest, spec),
        "classes": manifest["classes"],
        "groups": groups,
        "num_examples": written.rows,
        "dimension": written.width,
        "image_size": spec.image_size,
        "seconds": seconds,
        "images_per_second": written.rows / max(seconds, 1e-9),
    }


def _compute_split(records_dir, split, spec, manifest, final, describe, batch_size, progress):
    """Extracts one split into the cache folder `final`, written whole or not at all."""
    num_examples = manifest["splits"][split]["num_examples"]
    with feature_cache.writing_split(final) as folder:
        feature_batches = describe(_image_batches(records_dir, split, spec, batch_size, manifest))
        # Timed from here: building and tracing a CNN (in `describe`, on the first split) is not per image.
        started = time.perf_counter()
        written = feature_cache.write_rows(
            feature_batches, folder, num_examples, f"{split} {spec.name}" if progress else None
        )
        seconds = time.perf_counter() - started
        if written.rows != num_examples:
            raise UserInputError(
                f"{records_dir!r}: split {split!r} yielded {written.rows} examples, its manifest says {num_examples}: "
                "verify the records"
            )
        feature_cache.write_info(folder, _split_info(split, spec, manifest, written, seconds))


def extract_features(
    records_dir,
    spec,
    splits=SPLITS,
    cache_dir=feature_cache.DEFAULT_CACHE_DIR,
    batch_size=64,
    workers=None,
    progress=True,
):
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
    if batch_size < 1 or (workers is not None and workers < 1):
        raise UserInputError(f"--batch-size {batch_size}, --workers {workers}: both must be at least 1")
    manifest = shards.read_manifest(records_dir)
    spec = feature_spec.resolve_spec(spec)
    outputs.claim(cache_dir, "features", "--cache-dir", records=records_dir)
    folder = feature_cache.cache_folder(cache_dir, manifest, spec)
    missing = [split for split in splits if not os.path.isdir(os.path.join(folder, split))]
    if missing:
        # TensorFlow is imported, and descriptor workers started, only to compute: a command whose splits are all
        # cached prints its first line seconds sooner (the import alone took 20-30 s on a loaded machine).
        from abo_tf.training import input_pipeline

        input_pipeline.check_records(records_dir, manifest, missing)  # damaged records: named before any work
        with _describer(spec, workers or os.cpu_count() or 1) as describe:
            for split in missing:
                with input_pipeline.explain_read_errors(records_dir, manifest, [split]):
                    path = os.path.join(folder, split)
                    _compute_split(records_dir, split, spec, manifest, path, describe, batch_size, progress)
    return {
        split: dataclasses.replace(
            feature_cache.load_features(os.path.join(folder, split), split), cached=split not in missing
        )
        for split in splits
    }
