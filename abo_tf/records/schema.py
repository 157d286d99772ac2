"""The record schema: feature keys, their types, encoding and parsing, defined once.

The writer (`build_records`), the reader (`input_pipeline`), the TFDS metadata
and the tests all import this module, so a key or a dtype cannot drift between
them. Encoding is plain Python (no TensorFlow import) because the build runs it
in worker processes where importing TensorFlow would cost seconds each.
"""

import dataclasses
import functools

DATASET_NAME = "abo"
# Bump when the meaning or layout of a record changes; it names the default
# output folder (tfrecords/abo/<version>) and is checked by the readers.
DATASET_VERSION = "1.0.0"
FILE_FORMAT = "tfrecord"

IMAGE = "image"  # encoded RGB JPEG bytes
LABEL = "label"  # 0-based index into the vocabulary (labels.txt)
PRODUCT_TYPE = "product_type"  # the label's name, for humans and checks
IMAGE_ID = "image_id"  # ABO image id, e.g. "11Y+Xpt1lfL"
IMAGE_SHA256 = "image_sha256"  # hex SHA-256 of the image file as shipped by ABO
ITEM_ID = "item_id"  # smallest item_id among the listings showing the image
HEIGHT = "height"  # of the stored JPEG, in pixels
WIDTH = "width"

BYTES_FEATURES = (IMAGE, PRODUCT_TYPE, IMAGE_ID, IMAGE_SHA256, ITEM_ID)
INT64_FEATURES = (LABEL, HEIGHT, WIDTH)
TEXT_FEATURES = (PRODUCT_TYPE, IMAGE_ID, IMAGE_SHA256, ITEM_ID)


@dataclasses.dataclass(frozen=True)
class Record:
    """One example, as written: one ABO image and its label."""

    image: bytes
    label: int
    product_type: str
    image_id: str
    image_sha256: str
    item_id: str
    height: int
    width: int


def shard_filename(split, shard_index, num_shards):
    """TFDS' default file name, so `tfds.builder_from_directory` finds the shards."""
    return f"{DATASET_NAME}-{split}.{FILE_FORMAT}-{shard_index:05d}-of-{num_shards:05d}"


# --- encoding: protobuf wire format of tf.train.Example, written directly ----
# Example{features=1: Features{feature=1: map<string, Feature>}},
# Feature{bytes_list=1: BytesList{value=1}, int64_list=3: Int64List{value=1, packed}}.
# tests/test_schema.py checks the bytes against tf.train.Example.


def _encode_varint(value):
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# Every length and int64 of a record but the image's length is below 2**14: a look-up, not a loop (a record
# takes 36 varints; computing them was most of the encoding's time).
_SMALL_VARINTS = tuple(_encode_varint(value) for value in range(1 << 14))


def _varint(value):
    return _SMALL_VARINTS[value] if value < 1 << 14 else _encode_varint(value)


def _length_delimited(field_number, payload):
    return _varint(field_number << 3 | 2) + _varint(len(payload)) + payload


_TAG_1, _TAG_2 = b"\x0a", b"\x12"  # fields 1 and 2, length-delimited
_TAG_3 = b"\x1a"  # field 3, length-delimited (Feature.int64_list)
# Map entry key parts, fixed per feature key.
_KEY_PARTS = {key: _length_delimited(1, key.encode()) for key in BYTES_FEATURES + INT64_FEATURES}


def _entry(key, list_tag, data):
    """One map entry `key -> Feature{<list_tag>: {value: data}}`, the value's bytes referenced, not copied.

    The image is most of a record: building the prefixes only and joining once makes encoding ~4x faster than
    nesting `_length_delimited` calls.
    """
    value_prefix = _TAG_1 + _varint(len(data))
    list_length = len(value_prefix) + len(data)
    list_prefix = list_tag + _varint(list_length)
    feature_prefix = _TAG_2 + _varint(len(list_prefix) + list_length)
    entry_length = len(_KEY_PARTS[key]) + len(feature_prefix) + len(list_prefix) + list_length
    return [_TAG_1 + _varint(entry_length), _KEY_PARTS[key], feature_prefix, list_prefix, value_prefix, data]


@functools.lru_cache(maxsize=8192)
def _int64_entry(key, value):
    """The entry of an int64 feature (packed): labels, heights and widths repeat, so it is made once each."""
    if value < 0:
        raise ValueError(f"{key}={value}: int64 features of a record are never negative")
    return b"".join(_entry(key, _TAG_3, _varint(value)))


def _text_entry(key, text):
    data = text.encode("utf-8")
    key_part = _KEY_PARTS[key]
    if len(key_part) + len(data) + 6 < 0x80:  # every length one varint byte: ids and digests, the common case
        size = len(data)
        return (
            bytes((0x0A, len(key_part) + size + 6))
            + key_part
            + bytes((0x12, size + 4, 0x0A, size + 2, 0x0A, size))
            + data
        )
    return b"".join(_entry(key, _TAG_1, data))


_cached_text_entry = functools.lru_cache(maxsize=4096)(_text_entry)  # product types: a few hundred values


def encode_record(record):
    """Serialises a `Record` as a `tf.train.Example` (keys in sorted order, deterministic).

    Args:
      record: the `Record` to encode.

    Returns:
      The serialised `tf.train.Example` bytes.
    """
    return encode_fields(*(getattr(record, field.name) for field in dataclasses.fields(Record)))


def encode_fields(image, label, product_type, image_id, image_sha256, item_id, height, width):
    """`encode_record` of a `Record`'s fields, in the order `Record` declares them.

    The build's workers call this without making a `Record` (a frozen dataclass costs microseconds to make,
    a tenth of the encoding), and the entries are joined in `_SORTED_KEYS` order.
    """
    # Sorted keys: height, image, image_id, image_sha256, item_id, label, product_type, width.
    head = _int64_entry(HEIGHT, height) + b"".join(_entry(IMAGE, _TAG_1, image)[:-1])
    tail = b"".join(
        (
            _text_entry(IMAGE_ID, image_id),
            _text_entry(IMAGE_SHA256, image_sha256),
            _text_entry(ITEM_ID, item_id),
            _int64_entry(LABEL, label),
            _cached_text_entry(PRODUCT_TYPE, product_type),
            _int64_entry(WIDTH, width),
        )
    )
    return b"".join((_TAG_1, _varint(len(head) + len(image) + len(tail)), head, image, tail))


_SORTED_KEYS = tuple(sorted(BYTES_FEATURES + INT64_FEATURES))


# --- decoding and TFDS: these need TensorFlow, imported on use ---------------


def feature_spec():
    """`tf.io.parse_example` spec of a record."""
    import tensorflow as tf

    spec = {key: tf.io.FixedLenFeature([], tf.string) for key in BYTES_FEATURES}
    spec.update({key: tf.io.FixedLenFeature([], tf.int64) for key in INT64_FEATURES})
    return spec


def parse_records(serialized, keys=None):
    """Parses a batch (or one) of serialised records into a dict of tensors.

    Args:
      serialized: string tensor of serialised `tf.train.Example`s, any shape.
      keys: feature keys to keep (parsing fewer keys is faster); default all.

    Returns:
      Dict from feature key to tensor.
    """
    import tensorflow as tf

    spec = feature_spec()
    if keys is not None:
        spec = {key: spec[key] for key in keys}
    return tf.io.parse_example(serialized, spec)


def tfds_features(class_names):
    """The same schema as a TFDS `FeaturesDict` (needs TensorFlow; the tests' oracle for `tfds_features_json`)."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    features = {
        IMAGE: tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
        LABEL: tfds.features.ClassLabel(names=list(class_names)),
        HEIGHT: tfds.features.Scalar(dtype=tf.int64),
        WIDTH: tfds.features.Scalar(dtype=tf.int64),
    }
    features.update({key: tfds.features.Text() for key in TEXT_FEATURES})
    return tfds.features.FeaturesDict(features)


# --- TFDS metadata as JSON: what `tfds_features(...).save_config` writes ------
# Written without TensorFlow so the build never imports it (seconds and about
# 500 MB of RSS); tests/test_tfds_metadata.py compares it with TFDS' own output.

_TFDS_FEATURES = "tensorflow_datasets.core.features."


def _tfds_int64_scalar():
    return {
        "pythonClassName": _TFDS_FEATURES + "scalar.Scalar",
        "tensor": {"dtype": "int64", "encoding": "none", "shape": {}},
    }


def tfds_features_json(class_names):
    """The `features.json` document TFDS reads the records with (proto3 JSON: int64 as strings)."""
    features = {
        IMAGE: {
            "pythonClassName": _TFDS_FEATURES + "image_feature.Image",
            "image": {"dtype": "uint8", "encodingFormat": "jpeg", "shape": {"dimensions": ["-1", "-1", "3"]}},
        },
        LABEL: {
            "pythonClassName": _TFDS_FEATURES + "class_label_feature.ClassLabel",
            "classLabel": {"numClasses": str(len(class_names))},
        },
        HEIGHT: _tfds_int64_scalar(),
        WIDTH: _tfds_int64_scalar(),
    }
    text = {"pythonClassName": _TFDS_FEATURES + "text_feature.Text", "text": {}}
    features.update({key: dict(text) for key in TEXT_FEATURES})
    return {"pythonClassName": _TFDS_FEATURES + "features_dict.FeaturesDict", "featuresDict": {"features": features}}
