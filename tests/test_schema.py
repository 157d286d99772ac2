"""The record schema: our hand-written encoding and framing against TensorFlow's own."""

import tensorflow as tf

from abo_tf.records import schema, shards


def _record(**overrides):
    values = dict(
        image=b"\xff\xd8\xff" + bytes(range(256)) * 3,
        label=300,
        product_type="SHOES",
        image_id="11Y+Xpt1lfL",
        image_sha256="ab" * 32,
        item_id="B07HCR1LSZ",
        height=256,
        width=1,
    )
    values.update(overrides)
    return schema.Record(**values)


def test_encoding_equals_tensorflow_example():
    record = _record()
    expected = tf.train.Example(
        features=tf.train.Features(
            feature={
                key: tf.train.Feature(int64_list=tf.train.Int64List(value=[getattr(record, key)]))
                if key in schema.INT64_FEATURES
                else tf.train.Feature(
                    bytes_list=tf.train.BytesList(
                        value=[getattr(record, key) if key == schema.IMAGE else getattr(record, key).encode()]
                    )
                )
                for key in schema.BYTES_FEATURES + schema.INT64_FEATURES
            }
        )
    )
    assert tf.train.Example.FromString(schema.encode_record(record)) == expected


def test_encoding_is_deterministic_and_handles_large_varints():
    big = _record(label=2**40, image=b"x" * 70000, product_type="ÉTAGÈRE")
    assert schema.encode_record(big) == schema.encode_record(big)
    parsed = schema.parse_records(tf.constant(schema.encode_record(big)))
    assert parsed[schema.LABEL].numpy() == 2**40
    assert parsed[schema.PRODUCT_TYPE].numpy().decode() == "ÉTAGÈRE"
    assert len(parsed[schema.IMAGE].numpy()) == 70000


def test_round_trip_through_tfrecord_file_and_dataset_map(tmp_path):
    records = [_record(label=index, image_id=f"id{index}") for index in range(5)]
    path = tmp_path / "x.tfrecord"
    path.write_bytes(b"".join(shards.frame_record(schema.encode_record(record)) for record in records))
    dataset = tf.data.TFRecordDataset(str(path)).batch(2).map(schema.parse_records, num_parallel_calls=tf.data.AUTOTUNE)
    labels = [int(label) for batch in dataset for label in batch[schema.LABEL].numpy()]
    assert labels == [0, 1, 2, 3, 4]
    assert [r for r in shards.iter_framed_records(str(path))] == [schema.encode_record(record) for record in records]


def test_negative_int_is_refused():
    try:
        schema.encode_record(_record(label=-1))
    except ValueError as error:
        assert "label=-1" in str(error)
    else:
        raise AssertionError("a negative label was encoded")


def test_damaged_frame_is_detected(tmp_path):
    path = tmp_path / "x.tfrecord"
    data = bytearray(shards.frame_record(b"hello world"))
    data[15] ^= 1
    path.write_bytes(bytes(data))
    try:
        list(shards.iter_framed_records(str(path)))
    except shards.VerificationError as error:
        assert "CRC" in str(error)
    else:
        raise AssertionError("corruption not found")
