"""shards: TFDS metadata written without TensorFlow, records parsed without it, and the parallel verify."""

import json
import os
import shutil
import struct

import pytest
import tensorflow as tf

from abo_tf.records import schema, shards
from tests import crafted_images as crafted

SPLITS = {"train": ([120, 119], 2_000_000), "validation": ([30], 250_000), "test": ([31], 260_000)}
CLASSES = ["BOOT", "CELLULAR_PHONE_CASE", "CHAIR"]


def _shard_files(folder):
    """Empty shard files named as the splits say: `write_metadata` looks for them."""
    folder.mkdir()
    for name, (lengths, _) in SPLITS.items():
        for index in range(len(lengths)):
            (folder / schema.shard_filename(name, index, len(lengths))).write_bytes(b"")


def test_tfds_metadata_is_what_tfds_writes(tmp_path):
    import tensorflow_datasets as tfds

    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    _shard_files(ours)
    _shard_files(theirs)
    shards.write_tfds_metadata(str(ours), CLASSES, SPLITS)
    info = shards._TFDS_INFO  # the texts are ours; what is compared is how TFDS lays them out
    tfds.folder_dataset.write_metadata(
        data_dir=str(theirs),
        features=schema.tfds_features(CLASSES),
        version=schema.DATASET_VERSION,
        check_data=False,
        split_infos=[
            tfds.core.SplitInfo(name=name, shard_lengths=lengths, num_bytes=size)
            for name, (lengths, size) in SPLITS.items()
        ],
        description=info["description"],
        homepage=info["location"]["urls"][0],
        citation=info["citation"],
        license=info["redistributionInfo"]["license"],
    )
    assert sorted(os.listdir(ours)) == sorted(os.listdir(theirs))
    for name in shards.TFDS_FILES:
        mine, reference = (ours / name).read_text(), (theirs / name).read_text()
        if name.endswith(".json"):
            assert json.loads(mine) == json.loads(reference), name
        assert mine == reference, name  # no field differs today: the bytes are the same


def test_tfds_reads_metadata_written_without_tensorflow(tmp_path):
    import tensorflow_datasets as tfds

    folder = tmp_path / "records"
    _shard_files(folder)
    shards.write_tfds_metadata(str(folder), CLASSES, SPLITS)
    builder = tfds.builder_from_directory(str(folder))
    assert builder.info.features["label"].names == CLASSES
    assert {name: split.num_examples for name, split in builder.info.splits.items()} == {
        name: sum(lengths) for name, (lengths, _) in SPLITS.items()
    }


def test_parse_record_agrees_with_tensorflow(built_records):
    records_dir, manifest = built_records
    for record in tf.data.TFRecordDataset(shards.shard_paths(records_dir, manifest, "validation")).take(20):
        parsed = tf.io.parse_single_example(record, schema.feature_spec())
        expected = {key: value.numpy() for key, value in parsed.items()}
        assert shards.parse_record(record.numpy()) == expected


def _entries(serialized):
    """The map entries (key, feature) of a serialised `tf.train.Example`, as bytes."""
    return [entry for _, _, features in shards._fields(serialized) for _, _, entry in shards._fields(features)]


def _example(entries):
    return schema._length_delimited(1, b"".join(schema._length_delimited(1, entry) for entry in entries))


def _with_feature(serialized, feature, name=schema.LABEL):
    """The record with the `Feature` message of `name` (the label by default) replaced by `feature` (bytes)."""
    key = schema._KEY_PARTS[name]
    return _example(
        [
            key + schema._length_delimited(2, feature) if entry.startswith(key) else entry
            for entry in _entries(serialized)
        ]
    )


def _relaid(serialized, layout):
    """The same `tf.train.Example` in another valid layout than the build writes: entries reversed, or the label
    as an unpacked int64 (the general parser's case, not the fast path's)."""
    if layout == "reversed":
        return _example(_entries(serialized)[::-1])
    label = shards.parse_record(serialized)[schema.LABEL]
    return _with_feature(serialized, schema._length_delimited(3, b"\x08" + schema._varint(label)))


def _first_test_record(built_records):
    records_dir, manifest = built_records
    return next(iter(tf.data.TFRecordDataset(shards.shard_paths(records_dir, manifest, "test")))).numpy()


@pytest.mark.parametrize("layout", ["reversed", "unpacked-label"])
def test_parse_record_reads_other_layouts_as_tensorflow_does(layout, built_records):
    record = _first_test_record(built_records)
    relaid = _relaid(record, layout)
    assert relaid != record
    if layout == "unpacked-label":  # not the build's layout: read by the general parser
        with pytest.raises(ValueError):
            shards._parse_as_written(relaid)
    parsed = tf.io.parse_single_example(relaid, schema.feature_spec())
    assert shards.parse_record(relaid) == {key: value.numpy() for key, value in parsed.items()}


def test_parse_record_refuses_a_feature_of_another_type(built_records):
    label_as_bytes = schema._length_delimited(1, schema._length_delimited(1, b"3"))  # a BytesList
    with pytest.raises(shards.VerificationError, match="another type"):
        shards.parse_record(_with_feature(_first_test_record(built_records), label_as_bytes))


def _two_values(record, name):
    """The `Feature` of `name` holding its value and another: a packed int64 list, or a bytes list."""
    if name in schema.INT64_FEATURES:
        packed = schema._varint(record[name]) + schema._varint(5)
        return schema._length_delimited(3, schema._length_delimited(1, packed))
    return schema._length_delimited(1, schema._length_delimited(1, record[name]) + schema._length_delimited(1, b"x"))


@pytest.mark.parametrize("layout", ["as-written", "unpacked"])
def test_parse_record_reads_a_negative_int64_as_tensorflow_does(layout, built_records):
    negative = schema._varint((1 << 64) - 1)  # -1, as protobuf writes an int64
    feature = schema._length_delimited(1, negative) if layout == "as-written" else b"\x08" + negative  # packed or not
    relaid = _with_feature(_first_test_record(built_records), schema._length_delimited(3, feature))
    expected = tf.io.parse_single_example(relaid, schema.feature_spec())[schema.LABEL].numpy()
    assert expected == -1 and shards.parse_record(relaid)[schema.LABEL] == -1
    if layout == "as-written":  # read by the fast path, not the general parser
        assert shards._parse_as_written(relaid)[schema.LABEL] == -1


@pytest.mark.parametrize("name", [schema.LABEL, schema.IMAGE])
def test_parse_record_refuses_a_list_of_two_values_as_training_does(name, built_records):
    record = _first_test_record(built_records)
    relaid = _with_feature(record, _two_values(shards.parse_record(record), name), name)
    with pytest.raises(tf.errors.InvalidArgumentError):  # the scalar FixedLenFeature of training's input pipeline
        tf.io.parse_single_example(relaid, schema.feature_spec())
    with pytest.raises(shards.VerificationError, match="more than one value|2 values"):
        shards.parse_record(relaid)


@pytest.mark.parametrize(
    "feature, named",
    [
        (b"\x19" + bytes(8), "field 3 of the feature 'label' is a fixed64 number"),  # an Int64List as a number
        (schema._length_delimited(5, b"\x08\x01"), "the feature 'label' holds field 5"),  # no list of the schema's
        (schema._length_delimited(3, b"\x0d" + bytes(4)), "the feature 'label' holds a fixed32 number"),
    ],
    ids=["number-for-list", "unknown-list", "fixed32-in-list"],
)
def test_parse_record_names_the_field_it_cannot_read(feature, named, built_records):
    """The general parser's refusal names the field and its feature: it was "object of type 'NoneType' has no
    len()"."""
    with pytest.raises(shards.VerificationError, match=f"^a record is not a serialised tf.train.Example \\({named}"):
        shards.parse_record(_with_feature(_first_test_record(built_records), feature))


@pytest.mark.parametrize(
    "data",
    [b"\x0a\x05\x0a\x03abc", b"\x0a\xff", b"\x0b", b"\x08\x01", b"\x0a\x0a\x0a\x08\x08\x01\x12\x04\x0a\x02\x0a\x00"],
    ids=["missing-features", "truncated", "wire-type", "number-for-features", "number-for-key"],
)
def test_parse_record_refuses_what_is_not_a_record(data):
    with pytest.raises(shards.VerificationError):
        shards.parse_record(data)


# --- verify ------------------------------------------------------------------


def _rewrite_first_record(records_dir, manifest, split, change):
    """Replaces the first record of a split's first shard by `change(parsed record)`, fixing CRCs and the manifest."""

    def encoded(serialized):
        fields = change(shards.parse_record(serialized))
        text = {
            key: value.decode() for key, value in fields.items() if isinstance(value, bytes) and key != schema.IMAGE
        }
        return schema.encode_record(schema.Record(**{**fields, **text}))

    _replace_first_record(records_dir, manifest, split, encoded)


def _replace_first_record(records_dir, manifest, split, replace):
    """Replaces the first record of a split's first shard by `replace(its bytes)`, fixing CRCs and the manifest."""
    shard = manifest["splits"][split]["shards"][0]
    path = os.path.join(records_dir, shard["file"])
    records = list(shards.iter_framed_records(path))
    with open(path, "wb") as handle:
        handle.write(b"".join(shards.frame_record(data) for data in [replace(records[0]), *records[1:]]))
    shard["sha256"] = shards.file_sha256(path)
    with open(os.path.join(records_dir, shards.MANIFEST), "w") as handle:
        json.dump(manifest, handle)


def _undecodable_image(fields):
    fields[schema.IMAGE] = crafted.patched(fields[schema.IMAGE], (crafted.SOF, crafted.CR_TABLE, 3))
    return fields


def _label_out_of_range(fields):
    fields[schema.LABEL] = 999
    return fields


def _wrong_size(fields):
    fields[schema.WIDTH] += 1
    return fields


@pytest.mark.parametrize(
    "change, expected",
    [
        (_undecodable_image, "would not decode in training"),
        (_label_out_of_range, "has label 999"),
        (_wrong_size, "the record says"),
    ],
    ids=["undecodable", "label", "size"],
)
def test_verify_finds_a_bad_record_with_valid_crcs(change, expected, built_records, tmp_path):
    records_dir, manifest = built_records
    copy = tmp_path / "copy"
    shutil.copytree(records_dir, copy)
    manifest = json.loads(json.dumps(manifest))
    _rewrite_first_record(str(copy), manifest, "test", change)
    with pytest.raises(shards.VerificationError) as caught:
        shards.verify_records(str(copy), progress=False, workers=2)
    assert expected in str(caught.value) and len(str(caught.value).splitlines()) == 1
    if change is _undecodable_image:  # the rule is TensorFlow's: its decoder refuses the image too
        record = next(iter(tf.data.TFRecordDataset(shards.shard_paths(str(copy), manifest, "test"))))
        with pytest.raises(tf.errors.InvalidArgumentError):
            tf.io.decode_jpeg(tf.io.parse_single_example(record, schema.feature_spec())[schema.IMAGE], channels=3)


def test_verify_names_the_shard_of_a_record_that_does_not_parse(built_records, tmp_path):
    records_dir, manifest = built_records
    copy = tmp_path / "copy"
    shutil.copytree(records_dir, copy)
    manifest = json.loads(json.dumps(manifest))
    label_as_bytes = schema._length_delimited(1, schema._length_delimited(1, b"3"))
    _replace_first_record(str(copy), manifest, "test", lambda record: _with_feature(record, label_as_bytes))
    with pytest.raises(shards.VerificationError, match="another type") as caught:
        shards.verify_records(str(copy), progress=False, workers=2)
    file_name = manifest["splits"]["test"]["shards"][0]["file"]
    assert f"{file_name}: the record at byte 0:" in str(caught.value)


def test_verify_finds_a_truncated_shard(built_records, tmp_path):
    records_dir, manifest = built_records
    copy = tmp_path / "copy"
    shutil.copytree(records_dir, copy)
    path = copy / manifest["splits"]["validation"]["shards"][0]["file"]
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(shards.VerificationError, match="bad data CRC"):
        shards.verify_records(str(copy), progress=False)


@pytest.mark.parametrize("workers", [1, 2])
def test_verify_counts_every_example_with_any_number_of_workers(workers, built_records, monkeypatch):
    records_dir, manifest = built_records
    monkeypatch.setattr(shards, "VERIFY_CHUNK_BYTES", 50_000)  # many chunks per shard
    assert shards.verify_records(records_dir, progress=False, workers=workers) == {
        split: entry["num_examples"] for split, entry in manifest["splits"].items()
    }


def test_length_crc_is_checked_before_the_length_is_used(tmp_path):
    path = tmp_path / "bad.tfrecord"
    path.write_bytes(struct.pack("<Q", 2**40) + b"\x00" * 8)
    with pytest.raises(shards.VerificationError, match="bad length CRC"):
        shards.index_shard(str(path))
