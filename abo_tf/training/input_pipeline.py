"""The tf.data input pipeline: record shards -> batches of {"image": uint8, "label": int32}.

    files (seeded shuffle) -> shard per input pipeline -> parallel interleave of
    TFRecordDatasets -> [--sampling: repeat, records copied by class] -> shuffle
    -> batch -> parse_example -> decode + augment -> prefetch

Images stay uint8 until the model, which normalises them itself, so serving
and training cannot disagree. Training order is non-deterministic (faster)
unless `deterministic` (train --deterministic); evaluation order is deterministic.

Broken records are one-line errors that name the shard: `check_records` compares
the manifest with the files before reading (cheap: sizes, not contents), and
`explain_read_errors` turns a damaged record met while reading (TensorFlow's
"corrupted record at 2044" names no file) into the shard that holds it.
"""

import contextlib
import dataclasses
import os
import re

import numpy as np
import tensorflow as tf

from abo_tf.common.errors import UserInputError
from abo_tf.records import schema, shards
from abo_tf.training import preprocess

SHUFFLE_BUFFER = 4096  # examples; ~8 KB each for the small images: ~32 MB
RAM_BUDGET_FRACTION = 0.25  # of the machine's memory, for tf.data autotuned buffers
# The key of the encoded bytes when `extra_keys` asks for `schema.IMAGE` ("image" holds the decoded pixels).
ENCODED_IMAGE = "encoded_image"


def _options(in_order):
    options = tf.data.Options()
    options.deterministic = in_order
    # The TF performance guide: one intra-op thread per tf.data op, parallelism comes from the pipeline.
    options.threading.max_intra_op_parallelism = 1
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    options.autotune.ram_budget = int(memory * RAM_BUDGET_FRACTION)
    # distribute_datasets_from_function: each input pipeline shards itself below.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options


# Raised inside the pipeline; `explain_read_errors` recognises it by this text.
_LABEL_CHECK = "record label outside the classes of the manifest"  # no quotes: TensorFlow escapes them in messages


def _verify_hint(records_dir):
    return f"check the build with `python -m abo_tf.build_records --verify {records_dir}` and rebuild it"


def check_records(records_dir, manifest, splits):
    """Checks, without reading records, that the manifest and the shards of `splits` agree.

    Every split must exist and have examples, and every shard listed must exist
    with the size the manifest records (`num_bytes`, when it has it). A flipped
    byte keeps the size: `explain_read_errors` finds it while reading.

    Raises:
      UserInputError: a split missing or empty.
      VerificationError: a missing shard or one of another size (named).
    """
    # The manifest's own structure was checked when it was read (`shards.read_manifest`).
    for split in splits:
        split_files(records_dir, split, manifest)
        for shard in manifest["splits"][split]["shards"]:
            problem = _shard_file_problem(records_dir, split, shard)
            if problem:
                raise shards.VerificationError(f"{problem}: {_verify_hint(records_dir)}")


def _shard_file_problem(records_dir, split, shard):
    path = os.path.join(records_dir, str(shard.get("file")))
    if not os.path.isfile(path):
        return f"shard {path} of split {split!r} is missing"
    if shard.get("num_bytes") not in (None, os.path.getsize(path)):
        return f"shard {path} has {os.path.getsize(path)} bytes, the manifest says {shard['num_bytes']}"
    return None


def _shard_problem(path, shard, num_classes):
    """What is wrong with one shard's records (framing, CRCs, count, labels), or None."""
    if not os.path.isfile(path):
        return f"shard {path} is missing"
    try:
        records = list(shards.iter_framed_records(path))
    except shards.VerificationError as error:
        return f"shard {error}"
    if len(records) != shard["num_examples"]:
        return f"shard {path} holds {len(records)} records, the manifest says {shard['num_examples']}"
    if not records:
        return None
    labels = schema.parse_records(tf.constant(records), (schema.LABEL,))[schema.LABEL].numpy()
    outside = labels[(labels < 0) | (labels >= num_classes)]
    if len(outside):
        return f"shard {path} has a record of label {int(outside[0])}, the manifest lists {num_classes} classes"
    return None


def find_damaged_shard(records_dir, manifest, splits):
    """The first shard of `splits` whose records are damaged, described in one line; None if all are sound.

    Reads every record of the splits (it runs after a read failed, not before).
    """
    for split in splits:
        for shard in manifest["splits"][split]["shards"]:
            problem = _shard_problem(os.path.join(records_dir, shard["file"]), shard, len(manifest["classes"]))
            if problem:
                return problem
    return None


@contextlib.contextmanager
def explain_read_errors(records_dir, manifest, splits):
    """Turns a damaged record met while reading `splits` into a `VerificationError` that names the shard.

    TensorFlow reports a flipped byte as `DataLossError: corrupted record at
    2044`, without the file; a label beyond the manifest's classes fails the
    pipeline's own check. Other errors pass through unchanged.
    """
    try:
        yield
    except (tf.errors.DataLossError, tf.errors.NotFoundError, tf.errors.InvalidArgumentError) as error:
        is_records_error = isinstance(error, tf.errors.DataLossError) or _LABEL_CHECK in str(error)
        may_be_records = is_records_error or isinstance(error, tf.errors.NotFoundError)
        problem = find_damaged_shard(records_dir, manifest, splits) if may_be_records else None
        if problem is None and not is_records_error:
            raise
        reason = problem or f"reading split(s) {list(splits)} failed ({tf_error_line(error)})"
        raise shards.VerificationError(f"{reason}: {_verify_hint(records_dir)}") from error


def tf_error_line(error):
    """The first line of a TensorFlow error without its `{{function_node ...}}` prefix, for a one-line message."""
    text = re.sub(r"\{\{function_node [^}]*\}\}", "", str(getattr(error, "message", error)))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def split_files(records_dir, split, manifest=None):
    """The shard paths of `split`, with a clear error when the build has none."""
    manifest = manifest or shards.read_manifest(records_dir)
    if split not in manifest["splits"] or manifest["splits"][split]["num_examples"] == 0:
        available = [name for name, entry in manifest["splits"].items() if entry["num_examples"]]
        raise UserInputError(f"{records_dir!r} has no examples in split {split!r} (splits with examples: {available})")
    return shards.shard_paths(records_dir, manifest, split)


def _checked_labels(labels, num_classes):
    """int32 labels, after checking they index the manifest's classes.

    Out-of-range labels do not fail by themselves: `tf.one_hot` gives a zero
    row and `tf.gather` on a GPU returns 0, so a manifest that lists fewer
    classes than the records hold would train silently wrong.
    """
    inside = tf.reduce_all((labels >= 0) & (labels < num_classes))
    with tf.control_dependencies([tf.debugging.Assert(inside, [_LABEL_CHECK, tf.reduce_max(labels), num_classes])]):
        return tf.cast(labels, tf.int32)


_POSITION = "position"  # of an example in the stream read: with --seed, its augmentation's seed


def _decode_batch(image_size, training, extra_keys, num_classes, seed, crop_area_min):
    def transform(batch):
        if not training:
            return tf.map_fn(
                lambda data: preprocess.eval_image(data, image_size),
                batch[schema.IMAGE],
                fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.uint8),
            )
        # Stateless random ops seeded by (--seed, position): a run read in order augments the same way every
        # time, and the parallel maps stay parallel (under op determinism, stateful ones run one at a time).
        seeds = tf.stack([tf.fill(tf.shape(batch[_POSITION]), tf.constant(seed, tf.int64)), batch[_POSITION]], 1)
        return tf.map_fn(
            lambda pair: preprocess.train_image(pair[0], image_size, pair[1], area_range=(crop_area_min, 1.0)),
            (batch[schema.IMAGE], seeds),
            fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.uint8),
        )

    def decode(batch):
        labels = _checked_labels(batch[schema.LABEL], num_classes)
        passed = {ENCODED_IMAGE if key == schema.IMAGE else key: batch[key] for key in extra_keys}
        return {"image": transform(batch), "label": labels, **passed}

    return decode


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Batch augmentations after the crop and flip, from Keras 3's own layers, run in the tf.data graph.

    MixUp and CutMix make soft targets: training batches then carry "target" (float32 [B, C], rows summing to 1)
    beside "label" (the unmixed image's class). With both on, each batch gets one of the two (timm's switch).
    """

    randaugment: bool = False
    mixup_alpha: float = 0.0  # 0 = off
    cutmix_alpha: float = 0.0  # 0 = off

    @property
    def active(self):
        return self.randaugment or self.mixup_alpha > 0 or self.cutmix_alpha > 0


def _augment_batch(augmentation, num_classes, seed):
    import keras  # the layers only: a pipeline without augmentation does not need Keras

    randaugment = keras.layers.RandAugment(value_range=(0, 255), seed=seed) if augmentation.randaugment else None
    mixers = []
    if augmentation.mixup_alpha > 0:
        mixers.append(keras.layers.MixUp(alpha=augmentation.mixup_alpha, seed=seed))
    if augmentation.cutmix_alpha > 0:
        mixers.append(keras.layers.CutMix(factor=augmentation.cutmix_alpha, seed=seed))

    def mix(images, targets):
        mixed = [lambda layer=layer: layer({"images": images, "labels": targets}, training=True) for layer in mixers]
        if len(mixed) == 1:
            out = mixed[0]()
        else:
            out = tf.cond(tf.random.uniform([], seed=seed) < 0.5, mixed[0], mixed[1])
        return out["images"], out["labels"]

    def augment(batch):
        images = tf.cast(batch["image"], tf.float32)
        targets = tf.one_hot(batch["label"], num_classes)
        if randaugment is not None:
            images = randaugment(images, training=True)
        if mixers:
            images, targets = mix(images, targets)
        # Back to uint8: the model takes the pixels the export serves.
        pixels = tf.cast(tf.clip_by_value(tf.round(images), 0, 255), tf.uint8)
        return {**batch, "image": pixels, **({"target": targets} if mixers else {})}

    return augment


SAMPLINGS = ("instance", "class_balanced", "sqrt")


def repeat_factors(class_counts, sampling):
    """Expected copies of each training example of a class a pass, so that classes come with `sampling`'s shares.

    instance: every example once (classes at their frequency n_c / N). class_balanced: each class 1/C of the stream,
    sqrt: sqrt(n_c) / sum sqrt(n) (Kang et al., ICLR 2020, "Decoupling representation and classifier"). A factor
    is target share x N / n_c, so a pass still yields N examples on average and an epoch keeps its step count. A
    class without training examples gets factor 0 (it cannot be drawn).
    """
    counts = np.asarray(class_counts, np.float64)
    if sampling == "instance":
        return np.where(counts > 0, 1.0, 0.0)
    present = counts > 0
    weights = np.where(present, 1.0 if sampling == "class_balanced" else np.sqrt(counts), 0.0)
    shares = weights / weights.sum()
    return np.where(present, shares * counts.sum() / np.maximum(counts, 1), 0.0)


def _resample(dataset, factors, seed):
    """Each record repeated floor(f) or ceil(f) times (f = its class's factor; P(ceil) = f - floor(f)).

    The rounding draws a stateless uniform seeded by (seed, the record's place in the read stream): the same
    order gives the same copies. One label parse per record; the copies follow each other, the shuffle after
    spreads them over its buffer (and each copy gets its own crop, its position seeding the augmentation).
    """
    factors = tf.constant(factors, tf.float32)

    def copies(place, serialized):
        label = schema.parse_records(serialized, (schema.LABEL,))[schema.LABEL]
        factor = tf.gather(factors, tf.clip_by_value(label, 0, tf.size(factors, tf.int64) - 1))
        draw = tf.random.stateless_uniform([], seed=tf.stack([tf.constant(seed, tf.int64), place]))
        count = tf.cast(tf.floor(factor) + tf.cast(draw < factor - tf.floor(factor), tf.float32), tf.int64)
        return tf.data.Dataset.from_tensors(serialized).repeat(count)

    return dataset.enumerate().flat_map(copies)


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


def make_dataset(
    records_dir,
    split,
    image_size,
    batch_size,
    training,
    input_context=None,
    seed=0,
    cache=False,
    manifest=None,
    repeat=None,
    drop_remainder=None,
    extra_keys=(),
    deterministic=False,
    crop_area_min=preprocess.CROP_AREA_MIN,
    augmentation=None,
    skip_batches=0,
    sampling="instance",
):
    """Builds the input pipeline of one split.

    Args:
      records_dir: a build's output folder (with manifest.json).
      split: "train", "validation" or "test".
      image_size: side of the square images the model takes.
      batch_size: the batch of THIS pipeline (per replica under a strategy).
      training: random crops, flips, shuffling, repeat and drop_remainder; else
        a deterministic resize + centre crop, one pass, in order.
      input_context: a `tf.distribute.InputContext`; the pipeline reads only its share.
      seed: seeds the file order, the example shuffle and (with each example's position) its augmentation.
      cache: cache the encoded records in memory after the first pass.
      manifest: the build's manifest if already read.
      repeat: repeat forever; default: when training. A distributed evaluation
        repeats too, so every worker runs the same number of steps.
      drop_remainder: default: when training.
      extra_keys: record keys passed through as they are (e.g. `schema.IMAGE_ID`
        for reports that name the images); `schema.IMAGE` passes the encoded
        bytes as `ENCODED_IMAGE` (the parity check feeds them to the SavedModel).
      deterministic: training in order too (the shuffles are seeded): the same seed gives the same batches.
      crop_area_min: the training crop's smallest share of the image area.
      augmentation: an `Augmentation` for training batches, or None.
      skip_batches: batches of this pipeline a resumed run already consumed: skipped as records, before parsing
        and decoding, so the stream (its order, and the crops seeded by position) continues where it stopped.
      sampling: training only: "instance" reads each example once a pass; "class_balanced" and "sqrt" repeat
        them by class (`repeat_factors`, from the manifest's train counts) before the shuffle. Every input
        pipeline applies the same factors to its share, so the global stream has the same class shares. A
        resampled stream always repeats: it has no end of pass (`repeat` is ignored).

    Returns:
      A `tf.data.Dataset` of {"image": uint8 [B, S, S, 3], "label": int32 [B], *extra_keys}.
    """
    manifest = manifest or shards.read_manifest(records_dir)
    files = split_files(records_dir, split, manifest)
    in_order = deterministic or not training
    # Sequential when deterministic (train --deterministic, which also turns op determinism on) and augmenting: the
    # Keras layers draw from a seed-generator variable, so tf.data's make_deterministic rewrite turned every
    # parallel map, interleave and prefetch of the pipeline sequential anyway, and each rewritten map kept
    # ParallelMapDatasetV2's use_unbounded_threadpool attribute, which MapDataset lacks: TensorFlow printed
    # "NodeDef mentions attribute use_unbounded_threadpool" error lines (TF 2.21: make_deterministic.cc erases
    # only `deterministic` and `sloppy`). Built sequential, the same batches, nothing left to rewrite.
    augmenting = training and augmentation is not None and augmentation.active
    parallel_calls = None if deterministic and augmenting else tf.data.AUTOTUNE
    dataset, shard_records = _shard_for_input_pipeline(files, input_context, training, seed)
    dataset = dataset.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(len(files), 8),
        num_parallel_calls=parallel_calls,
        deterministic=in_order if parallel_calls else None,  # sequential is in order (and TF warns when given)
    )
    if shard_records:
        dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if cache:
        dataset = dataset.cache()
    if training and sampling != "instance":
        # Repeated before resampling: each pass rounds the factors anew, and the shuffle mixes passes.
        factors = repeat_factors(shards.examples_per_class(manifest, "train"), sampling)
        dataset = _resample(dataset.repeat(), factors, seed).shuffle(SHUFFLE_BUFFER, seed=seed)
    else:
        if training:
            dataset = dataset.shuffle(SHUFFLE_BUFFER, seed=seed)
        if training if repeat is None else repeat:
            dataset = dataset.repeat()
    dataset = dataset.enumerate()
    dataset = dataset.batch(batch_size, drop_remainder=training if drop_remainder is None else drop_remainder)
    dataset = dataset.skip(skip_batches)
    keys = (schema.IMAGE, schema.LABEL, *extra_keys)
    dataset = dataset.map(
        lambda positions, serialized: {**schema.parse_records(serialized, keys), _POSITION: positions},
        num_parallel_calls=parallel_calls,
    )
    decode = _decode_batch(image_size, training, tuple(extra_keys), len(manifest["classes"]), seed, crop_area_min)
    dataset = dataset.map(decode, num_parallel_calls=parallel_calls)
    if augmenting:
        dataset = dataset.map(
            _augment_batch(augmentation, len(manifest["classes"]), seed), num_parallel_calls=parallel_calls
        )
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(_options(in_order))


def num_examples(records_dir, split, manifest=None):
    """Number of examples of a split, from the manifest."""
    manifest = manifest or shards.read_manifest(records_dir)
    return manifest["splits"].get(split, {}).get("num_examples", 0)
