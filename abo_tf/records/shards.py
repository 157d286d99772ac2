"""TFRecord shard files: framing, sizing, TFDS metadata, and verification.

Records are framed here rather than with `tf.io.TFRecordWriter` so the build's
worker processes never import TensorFlow (seconds per process). The framing is
TFRecord's: length, masked CRC-32C of the length, data, masked CRC-32C of the
data; tests/test_shards.py reads it back with `tf.data.TFRecordDataset`.
"""

import hashlib
import json
import math
import os
import struct

import google_crc32c

from abo_tf.records import schema
from abo_tf.common.errors import InputNotFoundError, UserInputError

MANIFEST = "manifest.json"
LABELS_FILE = "labels.txt"
DEFAULT_SHARD_MB = 128  # tf.data guide / TFDS: shards of 100-200 MB read well


def _masked_crc(data):
    crc = google_crc32c.value(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def frame_record(data):
    """One record in TFRecord framing."""
    length = struct.pack("<Q", len(data))
    return b"".join((length, struct.pack("<I", _masked_crc(length)), data, struct.pack("<I", _masked_crc(data))))


def num_shards_for(total_bytes, shard_bytes):
    """How many shards of about `shard_bytes` hold `total_bytes` (at least one)."""
    return max(1, math.ceil(total_bytes / shard_bytes))


def split_evenly(items, num_parts):
    """`items` cut into `num_parts` contiguous runs whose lengths differ by at most one."""
    base, extra = divmod(len(items), num_parts)
    parts, start = [], 0
    for index in range(num_parts):
        end = start + base + (index < extra)
        parts.append(items[start:end])
        start = end
    return parts


def file_sha256(path):
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(records_dir):
    """The manifest of a build, or a `UserInputError` saying why there is none."""
    path = os.path.join(records_dir, MANIFEST)
    if not os.path.isfile(path):
        raise InputNotFoundError(f"no {MANIFEST} in {records_dir!r}: build the records with `python -m abo_tf.build_records` first")
    with open(path, encoding="utf-8") as handle:
        manifest = json.load(handle)
    if manifest.get("version") != schema.DATASET_VERSION:
        raise UserInputError(f"{path} is from records version {manifest.get('version')!r}, this abo_tf reads {schema.DATASET_VERSION!r}: rebuild the records")
    return manifest


def examples_per_class(manifest, split, class_names=None):
    """Examples of each class (default: the build's classes, in label order) in `split`; 0 for a missing split."""
    per_class = manifest["splits"].get(split, {}).get("per_class", {})
    return [per_class.get(name, 0) for name in (manifest["classes"] if class_names is None else class_names)]


def shard_paths(records_dir, manifest, split):
    """Full paths of a split's shards, in order."""
    return [os.path.join(records_dir, shard["file"]) for shard in manifest["splits"][split]["shards"]]


def write_tfds_metadata(records_dir, class_names, splits):
    """Writes dataset_info.json & co so `tfds.builder_from_directory` reads the shards.

    Args:
      records_dir: the build's output folder.
      class_names: the vocabulary, label order.
      splits: dict split -> (list of per-shard example counts, total bytes).
    """
    import tensorflow_datasets as tfds

    split_infos = [
        tfds.core.SplitInfo(name=name, shard_lengths=list(lengths), num_bytes=num_bytes)
        for name, (lengths, num_bytes) in splits.items()
    ]
    tfds.folder_dataset.write_metadata(
        data_dir=records_dir,
        features=schema.tfds_features(class_names),
        split_infos=split_infos,
        version=schema.DATASET_VERSION,
        check_data=False,
        description="Amazon Berkeley Objects (ABO) catalog images labelled by product type, built by abo_tf.",
        homepage="https://amazon-berkeley-objects.s3.amazonaws.com/index.html",
        citation='Collins et al., "ABO: Dataset and Benchmarks for Real-World 3D Object Understanding", CVPR 2022.',
        license="CC BY 4.0, credit Amazon.com",
    )


class VerificationError(UserInputError):
    """A build on disk does not match its manifest."""


def iter_framed_records(path):
    """Yields the records of a TFRecord file, checking both CRCs of each."""
    with open(path, "rb") as handle:
        data = handle.read()
    position = 0
    while position < len(data):
        length_bytes = data[position:position + 8]
        if len(length_bytes) < 8 or struct.unpack("<I", data[position + 8:position + 12])[0] != _masked_crc(length_bytes):
            raise VerificationError(f"{path}: bad length CRC at byte {position}")
        (length,) = struct.unpack("<Q", length_bytes)
        record = data[position + 12:position + 12 + length]
        crc = data[position + 12 + length:position + 16 + length]
        if len(record) < length or len(crc) < 4 or struct.unpack("<I", crc)[0] != _masked_crc(record):
            raise VerificationError(f"{path}: bad data CRC at byte {position}")
        yield record
        position += 16 + length


def _check_shard_file(records_dir, shard):
    path = os.path.join(records_dir, shard["file"])
    if not os.path.isfile(path):
        raise VerificationError(f"{path} is missing")
    if file_sha256(path) != shard["sha256"]:
        raise VerificationError(f"{path}: SHA-256 differs from the manifest")
    count = sum(1 for _ in iter_framed_records(path))
    if count != shard["num_examples"]:
        raise VerificationError(f"{path}: {count} records, the manifest says {shard['num_examples']}")
    return path


def _decoded_examples(paths):
    """(image id, sha256, label, decoded shape == stored shape) of every record that decodes."""
    import tensorflow as tf

    def decode(serialized):
        example = schema.parse_records(serialized)
        image = tf.io.decode_jpeg(example[schema.IMAGE], channels=3)
        shape_ok = tf.reduce_all(tf.shape(image)[:2] == tf.cast(tf.stack([example[schema.HEIGHT], example[schema.WIDTH]]), tf.int32))
        return example[schema.IMAGE_ID], example[schema.IMAGE_SHA256], example[schema.LABEL], shape_ok

    dataset = tf.data.TFRecordDataset(paths).map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    # A record that fails to decode is skipped here and found missing below.
    dataset = dataset.ignore_errors()
    return [(image_id.decode(), digest.decode(), int(label), bool(ok)) for image_id, digest, label, ok in dataset.as_numpy_iterator()]


def verify_records(records_dir, progress=True):
    """Re-reads a build: files, SHA-256s, CRCs, counts, labels, no leak, every image decodes.

    Args:
      records_dir: a build's output folder.
      progress: show a progress bar over shards.

    Returns:
      Dict split -> number of examples verified.

    Raises:
      VerificationError: the first problem found.
    """
    from tqdm import tqdm

    manifest = read_manifest(records_dir)
    num_classes, split_of, counts = len(manifest["classes"]), {}, {}
    all_shards = [(name, shard) for name, entry in manifest["splits"].items() for shard in entry["shards"]]
    for name, shard in tqdm(all_shards, desc="verify", unit="shard", disable=not progress):
        examples = _decoded_examples([_check_shard_file(records_dir, shard)])
        if len(examples) != shard["num_examples"]:
            raise VerificationError(f"{shard['file']}: {shard['num_examples'] - len(examples)} image(s) do not decode")
        for image_id, digest, label, shape_ok in examples:
            if not 0 <= label < num_classes or not shape_ok:
                raise VerificationError(f"{shard['file']}: image {image_id} has label {label} or a wrong stored size")
            for key in (image_id, digest):
                if split_of.setdefault(key, name) != name:
                    raise VerificationError(f"image {key} is in both {split_of[key]} and {name}")
        counts[name] = counts.get(name, 0) + len(examples)
    return counts
