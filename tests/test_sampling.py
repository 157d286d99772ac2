"""Class-aware sampling (`--sampling`): the classes come with the shares the option promises."""

import numpy as np
import pytest
import tensorflow as tf

from abo_tf.records import shards
from abo_tf.training import input_pipeline

COUNTS = (400, 100, 25, 4, 0, 1)  # a head, a tail, a class absent from train


def _label_records(counts):
    """Serialised records holding only a label, `count` of each class, in class order (as a shard might be)."""
    labels = np.repeat(np.arange(len(counts)), counts)
    records = [
        tf.train.Example(
            features=tf.train.Features(
                feature={"label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))}
            )
        ).SerializeToString()
        for label in labels
    ]
    return tf.data.Dataset.from_tensor_slices(records)


def _labels(dataset):
    spec = {"label": tf.io.FixedLenFeature([], tf.int64)}
    batches = dataset.batch(4096).map(lambda records: tf.io.parse_example(records, spec)["label"])
    return np.concatenate([batch.numpy() for batch in batches])


def _target_shares(sampling):
    counts = np.array(COUNTS, np.float64)
    weights = {"instance": counts, "class_balanced": (counts > 0) * 1.0, "sqrt": np.sqrt(counts)}[sampling]
    return weights / weights.sum()


@pytest.mark.parametrize("sampling", input_pipeline.SAMPLINGS)
def test_repeat_factors_give_the_promised_shares_and_keep_a_pass_s_length(sampling):
    factors = input_pipeline.repeat_factors(COUNTS, sampling)
    expected = factors * np.array(COUNTS)
    assert expected.sum() == pytest.approx(sum(COUNTS))  # an epoch keeps its number of steps
    np.testing.assert_allclose(expected / expected.sum(), _target_shares(sampling), atol=1e-12)


@pytest.mark.parametrize("sampling", ["class_balanced", "sqrt"])
def test_resampled_stream_draws_classes_with_the_promised_frequencies_the_same_for_one_seed(sampling):
    passes = 8
    factors = input_pipeline.repeat_factors(COUNTS, sampling)
    stream = input_pipeline._resample(_label_records(COUNTS).repeat(passes), factors, seed=3)
    labels = _labels(stream)
    drawn = len(labels)
    # A pass yields N examples on average: within 4 standard deviations of the stochastic rounding.
    assert abs(drawn - passes * sum(COUNTS)) < 4 * np.sqrt(passes * sum(COUNTS))
    observed = np.bincount(labels, minlength=len(COUNTS)) / drawn
    target = _target_shares(sampling)
    np.testing.assert_array_less(np.abs(observed - target), 4 * np.sqrt(target * (1 - target) / drawn) + 1e-9)
    np.testing.assert_array_equal(labels, _labels(stream))


def test_training_pipeline_with_class_balanced_sampling_flattens_the_head(built_records):
    records_dir, manifest = built_records
    counts = np.array(shards.examples_per_class(manifest, "train"))
    assert counts.max() / counts.sum() > 0.4  # the sample's top type is about half of train
    dataset = input_pipeline.make_dataset(
        records_dir, "train", 32, 64, training=True, seed=1, deterministic=True, sampling="class_balanced"
    )
    labels = np.concatenate([batch["label"].numpy() for batch in dataset.take(2)])
    expected = 1 / np.count_nonzero(counts)
    bound = expected + 5 * np.sqrt(expected * (1 - expected) / len(labels))
    assert bound < 0.4 and np.mean(labels == counts.argmax()) < bound  # reading in turn gives about half
