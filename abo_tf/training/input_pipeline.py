"""The tf.data input pipeline: record shards -> batches of {"image": uint8, "label": int32}.

    files (seeded shuffle) -> shard per input pipeline -> parallel interleave of
    TFRecordDatasets -> shuffle -> batch -> parse_example -> decode + augment
    -> prefetch

Images stay uint8 until the model, which normalises them itself, so serving
and training cannot disagree. Training order is non-deterministic (faster);
evaluation order is deterministic.
"""

import os

import tensorflow as tf

from abo_tf.records import schema, shards
from abo_tf.training import preprocess
from abo_tf.common.errors import UserInputError

SHUFFLE_BUFFER = 4096  # examples; ~8 KB each for the small images: ~32 MB
RAM_BUDGET_FRACTION = 0.25  # of the machine's memory, for tf.data autotuned buffers


def _options(training):
    options = tf.data.Options()
    options.deterministic = not training
    # The TF performance guide: one intra-op thread per tf.data op, parallelism comes from the pipeline.
    options.threading.max_intra_op_parallelism = 1
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    options.autotune.ram_budget = int(memory * RAM_BUDGET_FRACTION)
    # distribute_datasets_from_function: each input pipeline shards itself below.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options


def split_files(records_dir, split, manifest=None):
    """The shard paths of `split`, with a clear error when the build has none."""
    manifest = manifest or shards.read_manifest(records_dir)
    if split not in manifest["splits"] or manifest["splits"][split]["num_examples"] == 0:
        available = [name for name, entry in manifest["splits"].items() if entry["num_examples"]]
        raise UserInputError(f"{records_dir!r} has no examples in split {split!r} (splits with examples: {available})")
    return shards.shard_paths(records_dir, manifest, split)


def _decode_batch(image_size, training, extra_keys):
    transform = preprocess.train_image if training else preprocess.eval_image

    def decode(batch):
        images = tf.map_fn(
            lambda data: transform(data, image_size), batch[schema.IMAGE],
            fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.uint8),
        )
        return {"image": images, "label": tf.cast(batch[schema.LABEL], tf.int32), **{key: batch[key] for key in extra_keys}}

    return decode


def _shard_for_input_pipeline(files, input_context, training, seed):
    """File dataset for this input pipeline, and whether records still need sharding."""
    dataset = tf.data.Dataset.from_tensor_slices(files)
    if training:
        dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    if input_context is None or input_context.num_input_pipelines == 1:
        return dataset, False
    if len(files) >= input_context.num_input_pipelines:
        return dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id), False
    return dataset, True  # fewer files than pipelines (small builds): shard records instead


def make_dataset(records_dir, split, image_size, batch_size, training, input_context=None, seed=0, cache=False, manifest=None,
                 repeat=None, drop_remainder=None, extra_keys=()):
    """Builds the input pipeline of one split.

    Args:
      records_dir: a build's output folder (with manifest.json).
      split: "train", "validation" or "test".
      image_size: side of the square images the model takes.
      batch_size: the batch of THIS pipeline (per replica under a strategy).
      training: random crops, flips, shuffling, repeat and drop_remainder; else
        a deterministic resize + centre crop, one pass, in order.
      input_context: a `tf.distribute.InputContext`; the pipeline reads only its share.
      seed: seeds the file-order shuffle (the augmentation is not seeded).
      cache: cache the encoded records in memory after the first pass.
      manifest: the build's manifest if already read.
      repeat: repeat forever; default: when training. A distributed evaluation
        repeats too, so every worker runs the same number of steps.
      drop_remainder: default: when training.
      extra_keys: record keys passed through as they are (e.g. `schema.IMAGE_ID`
        for reports that name the images).

    Returns:
      A `tf.data.Dataset` of {"image": uint8 [B, S, S, 3], "label": int32 [B], *extra_keys}.
    """
    files = split_files(records_dir, split, manifest)
    dataset, shard_records = _shard_for_input_pipeline(files, input_context, training, seed)
    dataset = dataset.interleave(
        tf.data.TFRecordDataset, cycle_length=min(len(files), 8), num_parallel_calls=tf.data.AUTOTUNE, deterministic=not training
    )
    if shard_records:
        dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if cache:
        dataset = dataset.cache()
    if training:
        dataset = dataset.shuffle(SHUFFLE_BUFFER, seed=seed)
    if training if repeat is None else repeat:
        dataset = dataset.repeat()
    dataset = dataset.batch(batch_size, drop_remainder=training if drop_remainder is None else drop_remainder)
    keys = (schema.IMAGE, schema.LABEL, *extra_keys)
    dataset = dataset.map(lambda serialized: schema.parse_records(serialized, keys), num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.map(_decode_batch(image_size, training, tuple(extra_keys)), num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(_options(training))


def num_examples(records_dir, split, manifest=None):
    """Number of examples of a split, from the manifest."""
    manifest = manifest or shards.read_manifest(records_dir)
    return manifest["splits"].get(split, {}).get("num_examples", 0)
