"""TFRecord shard files: framing, sizing, TFDS metadata, and verification.

Records are framed here rather than with `tf.io.TFRecordWriter` so the build's
worker processes never import TensorFlow (seconds per process). The framing is
TFRecord's: length, masked CRC-32C of the length, data, masked CRC-32C of the
data; tests/test_shards.py reads it back with `tf.data.TFRecordDataset`.
"""

import hashlib
import itertools
import math
import os
import struct

import google_crc32c

from abo_tf.common import console
from abo_tf.common.errors import InputNotFoundError, UserInputError
from abo_tf.common.files import read_json, write_json
from abo_tf.records import schema

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
        raise InputNotFoundError(
            f"no {MANIFEST} in {records_dir!r}: build the records with `python -m abo_tf.build_records` first"
        )
    manifest = read_json(path, what="build manifest")
    if not isinstance(manifest, dict) or manifest.get("dataset") != schema.DATASET_NAME:
        raise UserInputError(
            f"{path} is not the manifest of an abo_tf build: build the records with `python -m abo_tf.build_records`"
        )
    if manifest.get("version") != schema.DATASET_VERSION:
        raise UserInputError(
            f"{path} is from records version {manifest.get('version')!r}, this abo_tf reads "
            f"{schema.DATASET_VERSION!r}: rebuild the records"
        )
    problem = _manifest_problem(manifest)
    if problem:
        raise VerificationError(
            f"{path} is damaged ({problem}): rebuild the records, or see `python -m abo_tf.build_records --verify "
            f"{records_dir}`"
        )
    return manifest


def is_count(value):
    """A JSON count: an int (not a bool) of at least 0."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _split_problem(name, entry, class_names):
    """What is wrong with one split of a manifest, or None."""
    if (
        not isinstance(entry, dict)
        or not isinstance(entry.get("shards"), list)
        or not is_count(entry.get("num_examples"))
    ):
        return f"split {name!r} has no shard list or example count"
    for index, shard in enumerate(entry["shards"]):
        # A shard's file name must be the one the build writes: never a path out of the folder.
        expected = schema.shard_filename(name, index, len(entry["shards"]))
        if not isinstance(shard, dict) or shard.get("file") != expected or not is_count(shard.get("num_examples")):
            return f"shard {index} of {name!r} is not {expected!r} with an example count"
    if sum(shard["num_examples"] for shard in entry["shards"]) != entry["num_examples"]:
        return f"the shards of {name!r} do not add up to its {entry['num_examples']} examples"
    for key in ("per_class", "groups_per_class"):
        per_class = entry.get(key, {})
        if (
            not isinstance(per_class, dict)
            or set(per_class) - set(class_names)
            or not all(map(is_count, per_class.values()))
        ):
            return f"split {name!r} counts classes the build does not have"
    return None


def _manifest_problem(manifest):
    """The first structural problem of a manifest (hand-edited or damaged), or None."""
    classes, splits = manifest.get("classes"), manifest.get("splits")
    if not isinstance(classes, list) or not classes or not all(isinstance(name, str) and name for name in classes):
        return "its classes are not a list of names"
    if len(set(classes)) != len(classes):
        return "a class name appears twice"
    if not isinstance(splits, dict) or not splits:
        return "it has no splits"
    # The build's identity: feature caches, studies and exports key on it (a missing one was a KeyError).
    if not isinstance(manifest.get("fingerprint"), str) or not manifest["fingerprint"]:
        return "it has no fingerprint"
    for name, entry in splits.items():
        problem = _split_problem(name, entry, classes)
        if problem:
            return problem
    return None


def examples_per_class(manifest, split, class_names=None):
    """Examples of each class (default: the build's classes, in label order) in `split`; 0 for a missing split."""
    per_class = manifest["splits"].get(split, {}).get("per_class", {})
    return [per_class.get(name, 0) for name in (manifest["classes"] if class_names is None else class_names)]


def shard_paths(records_dir, manifest, split):
    """Full paths of a split's shards, in order."""
    return [os.path.join(records_dir, shard["file"]) for shard in manifest["splits"][split]["shards"]]


TFDS_FILES = ("dataset_info.json", "features.json", f"{schema.LABEL}.labels.txt", "LICENSE")
_TFDS_INFO = {
    "description": "Amazon Berkeley Objects (ABO) catalog images labelled by product type, built by abo_tf.",
    "location": {"urls": ["https://amazon-berkeley-objects.s3.amazonaws.com/index.html"]},
    "citation": 'Collins et al., "ABO: Dataset and Benchmarks for Real-World 3D Object Understanding", CVPR 2022.',
    "redistributionInfo": {"license": "CC BY 4.0, credit Amazon.com"},
}
# TFDS' default file name template; schema.shard_filename follows it.
_TFDS_FILE_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"


def write_text(path, text):
    """Writes `text` under a temporary name, then renames: a reader never sees half a file."""
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(temporary, path)


def write_labels(path, class_names):
    """One class name a line, in label order (labels.txt and TFDS' label.labels.txt)."""
    write_text(path, "".join(name + "\n" for name in class_names))


def write_tfds_metadata(records_dir, class_names, splits):
    """Writes dataset_info.json & co so `tfds.builder_from_directory` reads the shards.

    The files are those `tfds.folder_dataset.write_metadata` writes, as plain
    JSON: importing TFDS would import TensorFlow into the build.

    Args:
      records_dir: the build's output folder.
      class_names: the vocabulary, label order.
      splits: dict split -> (list of per-shard example counts, total bytes).
    """
    info = dict(_TFDS_INFO, name=schema.DATASET_NAME, version=schema.DATASET_VERSION, fileFormat=schema.FILE_FORMAT)
    info["splits"] = [
        {
            "name": name,
            "shardLengths": [str(length) for length in lengths],
            "numBytes": str(num_bytes),
            "filepathTemplate": _TFDS_FILE_TEMPLATE,
        }
        for name, (lengths, num_bytes) in splits.items()
    ]
    dataset_info, features, labels, license_file = (os.path.join(records_dir, name) for name in TFDS_FILES)
    write_json(features, schema.tfds_features_json(class_names), indent=4)
    write_labels(labels, class_names)
    write_text(license_file, info["redistributionInfo"]["license"])
    write_json(dataset_info, info, indent=2)  # last: TFDS takes a folder with dataset_info.json as complete


class VerificationError(UserInputError):
    """A build on disk does not match its manifest."""


def iter_framed_records(path):
    """Yields the records of a TFRecord file, checking both CRCs of each."""
    with open(path, "rb") as handle:
        data = handle.read()
    position = 0
    while position < len(data):
        length_bytes = data[position : position + 8]
        if len(length_bytes) < 8 or struct.unpack("<I", data[position + 8 : position + 12])[0] != _masked_crc(
            length_bytes
        ):
            raise VerificationError(f"{path}: bad length CRC at byte {position}")
        (length,) = struct.unpack("<Q", length_bytes)
        record = data[position + 12 : position + 12 + length]
        crc = data[position + 12 + length : position + 16 + length]
        if len(record) < length or len(crc) < 4 or struct.unpack("<I", crc)[0] != _masked_crc(record):
            raise VerificationError(f"{path}: bad data CRC at byte {position}")
        yield record
        position += 16 + length


# --- verification: every core, no TensorFlow ---------------------------------
# This process frames each shard (SHA-256, both CRCs of every record) and hands
# out chunks of records as soon as they are framed; workers check the chunks:
# parsed, labelled, and every image through the same structure check the build
# copies by plus a libjpeg-turbo decode.

VERIFY_CHUNK_BYTES = 8 << 20


def _framing_error(path, position, what):
    return VerificationError(f"{path}: bad {what} CRC at byte {position}: the shard is damaged, build it again")


def _framed_chunks(path):
    """Generator: yields `(path, start byte, end byte)` of each run of records of about `VERIFY_CHUNK_BYTES` once
    every CRC in it is checked; returns `(sha256, number of records)` of the shard.

    Streamed record by record: a whole 128 MB shard in memory was most of verify's peak RSS.
    """
    digest, chunk_start, position, count = hashlib.sha256(), 0, 0, 0
    with open(path, "rb", buffering=1 << 20) as handle:
        while header := handle.read(12):
            if len(header) < 12 or struct.unpack_from("<I", header, 8)[0] != _masked_crc(header[:8]):
                raise _framing_error(path, position, "length")
            (length,) = struct.unpack_from("<Q", header)
            body = handle.read(length + 4)
            if len(body) < length + 4 or struct.unpack_from("<I", body, length)[0] != _masked_crc(body[:length]):
                raise _framing_error(path, position, "data")
            digest.update(header)
            digest.update(body)
            count, position = count + 1, position + 16 + length
            if position - chunk_start >= VERIFY_CHUNK_BYTES:
                yield path, chunk_start, position
                chunk_start = position
    if position > chunk_start:
        yield path, chunk_start, position
    return digest.hexdigest(), count


def index_shard(path):
    """`(sha256, number of records, [(start byte, end byte)] chunks)` of a shard, checking every CRC."""
    chunks, framed = [], _framed_chunks(path)
    while True:
        try:
            chunks.append(next(framed)[1:])
        except StopIteration as finished:
            return (*finished.value, chunks)


def _check_chunk(task, num_classes):
    """Worker: `[(image id, sha256, label)]` of a chunk's records, or the first problem as a string."""
    from abo_tf.records import images

    path, start, end = task
    with open(path, "rb") as handle:
        handle.seek(start)
        data = handle.read(end - start)
    examples, position = [], 0
    while position < len(data):
        (length,) = struct.unpack_from("<Q", data, position)
        try:
            record = parse_record(data[position + 12 : position + 12 + length])
        except VerificationError as error:  # raised here it named no shard: which one is the user's first question
            return f"the record at byte {start + position}: {error}"
        position += 16 + length
        image_id = record[schema.IMAGE_ID].decode("utf-8", "replace")
        if not 0 <= record[schema.LABEL] < num_classes:
            return f"image {image_id} has label {record[schema.LABEL]}, there are {num_classes} classes"
        try:
            images.check_decodes(record[schema.IMAGE], record[schema.HEIGHT], record[schema.WIDTH])
        except images.RejectedImage as error:
            return f"image {image_id} would not decode in training ({error})"
        examples.append((image_id, record[schema.IMAGE_SHA256].decode("ascii", "replace"), record[schema.LABEL]))
    return examples


def _read_varint(data, position):
    byte = data[position]
    if byte < 0x80:  # most lengths and tags: one byte
        return byte, position + 1
    value, shift = byte & 0x7F, 7
    while True:
        position += 1
        if position >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[position]
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, position + 1


def _fields(data):
    """`[(field number, wire type, value)]` of a protobuf message; length-delimited values as bytes."""
    fields, position, end = [], 0, len(data)
    while position < end:
        key, position = _read_varint(data, position)
        wire_type = key & 7
        if wire_type == 2:
            length, position = _read_varint(data, position)
            if position + length > end:
                raise ValueError("truncated field")
            fields.append((key >> 3, wire_type, data[position : position + length]))
            position += length
        elif wire_type == 0:
            value, position = _read_varint(data, position)
            fields.append((key >> 3, wire_type, value))
        elif wire_type in (1, 5):
            position += 8 if wire_type == 1 else 4
            fields.append((key >> 3, wire_type, None))
        else:
            raise ValueError(f"wire type {wire_type}")
    return fields


def _signed(number):
    """An int64 as TensorFlow reads it: a negative one is written as its 10-byte two's complement (label -1 was
    reported as 18446744073709551615)."""
    return number - (1 << 64) if number >= 1 << 63 else number


_BYTES_LIST, _INT64_LIST = 0x0A, 0x1A  # the tags of Feature.bytes_list and Feature.int64_list (field 1, 3; wire 2)
_WIRE_TYPES = {0: "varint", 1: "fixed64", 2: "length-delimited", 5: "fixed32"}


def _messages(fields, what):
    """`fields` (of `_fields`), each of which must be length-delimited: a number where `what` has a message or a
    key was a TypeError ("object of type 'NoneType' has no len()") that named neither the field nor where it is."""
    for field, wire_type, _ in fields:
        if wire_type != 2:
            raise ValueError(f"field {field} of {what} is a {_WIRE_TYPES[wire_type]} number, not a message")
    return fields


def _one_int64(data, start, end):
    """The int64 of the packed list `data[start:end]`. A list of more values is refused: the first was read and
    verify passed, but training's scalar `FixedLenFeature` fails on the record."""
    value, used = _read_varint(data, start)
    if used != end:
        raise ValueError("an int64 list of more than one value")
    return _signed(value)


def _feature_value(feature, name):
    """The single value of the `tf.train.Feature` of key `name`: bytes of a BytesList, int of an Int64List."""
    for list_field, _, payload in _messages(_fields(feature), f"the feature {name!r}"):
        if list_field not in (_BYTES_LIST >> 3, _INT64_LIST >> 3):
            raise ValueError(f"the feature {name!r} holds field {list_field}, neither a BytesList nor an Int64List")
        values = _fields(payload)
        if len(values) != 1:
            raise ValueError(f"a list of {len(values)} values where the schema has one")
        ((_, wire_type, value),) = values
        if list_field == _INT64_LIST >> 3 and wire_type == 2:  # packed int64s
            return _one_int64(value, 0, len(value))
        if wire_type not in (0, 2):
            raise ValueError(f"the feature {name!r} holds a {_WIRE_TYPES[wire_type]} number")
        return _signed(value) if wire_type == 0 else value  # an unpacked int64, or bytes
    raise ValueError(f"the feature {name!r} is empty")


def _nested(data, position, tag):
    """`(start, end)` of the length-delimited field at `position`, which must have the one-byte `tag`."""
    if data[position] != tag:
        raise ValueError(f"tag {data[position]} where {tag} was written")
    length = data[position + 1]
    if length < 0x80:  # all lengths of a record but the image's and its entry's: no call
        return position + 2, position + 2 + length
    length, start = _read_varint(data, position + 1)
    return start, start + length


def _parse_as_written(data):
    """`parse_record`'s dict of a record laid out as `schema.encode_fields` writes it; ValueError or IndexError for
    any other layout (the general parser then has the last word).

    The one `Features` message is walked by position, each entry a key then a one-value list: `_fields` slices and
    lists every nesting level, 27 of verify's ~110 CPU us an image (80k images, load 13), this about 8. It accepts
    a subset of what `_fields` reads and reads it the same way: the last entry of a key wins, an int64 list is
    packed.
    """
    start, end = _nested(data, 0, 0x0A)
    if end != len(data):
        raise ValueError("not one Features message")
    record = {}
    while start < end:
        entry_start, entry_end = _nested(data, start, 0x0A)
        key_start, key_end = _nested(data, entry_start, 0x0A)
        feature_start, feature_end = _nested(data, key_end, 0x12)
        list_tag = data[feature_start]
        list_start, list_end = _nested(data, feature_start, list_tag if list_tag == _INT64_LIST else _BYTES_LIST)
        value_start, value_end = _nested(data, list_start, 0x0A)
        if not entry_end <= end or not feature_end == list_end == value_end == entry_end:
            raise ValueError("an entry holds more than a key and one value")
        value = _one_int64(data, value_start, value_end) if list_tag == _INT64_LIST else data[value_start:value_end]
        record[data[key_start:key_end].decode("utf-8")] = value
        start = entry_end
    return record


def _parse_any_layout(serialized):
    """`parse_record`'s dict of any serialised `tf.train.Example`, by the general parser `_fields`."""
    record = {}
    for _, _, features in _messages(_fields(serialized), "the Example"):
        for _, _, entry in _messages(_fields(features), "its Features"):
            parts = {field: value for field, _, value in _messages(_fields(entry), "a Features entry")}
            if 1 not in parts or 2 not in parts:
                raise ValueError("a Features entry without its key or its feature")
            name = parts[1].decode("utf-8")
            record[name] = _feature_value(parts[2], name)
    return record


def parse_record(serialized):
    """A serialised `tf.train.Example` of the schema as a dict key -> bytes or int, without TensorFlow.

    Raises:
      VerificationError: not a record of the schema.
    """
    try:
        record = _parse_as_written(serialized)
    except (ValueError, IndexError):
        try:
            record = _parse_any_layout(serialized)
        except (ValueError, IndexError) as error:
            raise VerificationError(f"a record is not a serialised tf.train.Example ({error})") from error
    missing = set(schema.BYTES_FEATURES + schema.INT64_FEATURES) - set(record)
    if missing:
        raise VerificationError(f"a record lacks the features {sorted(missing)}")
    # A bytes list where an int64 goes (or the reverse) was a TypeError, a traceback, in verify's label check.
    if not all(isinstance(record[key], int) for key in schema.INT64_FEATURES) or not all(
        isinstance(record[key], bytes) for key in schema.BYTES_FEATURES
    ):
        raise VerificationError("a record has a feature of another type than the schema's")
    return record


def verify_records(records_dir, progress=True, workers=None):
    """Re-reads a build: files, SHA-256s, CRCs, counts, labels, no leak, every image decodes.

    Args:
      records_dir: a build's output folder.
      progress: show a progress bar over records.
      workers: worker processes (default: one per core).

    Returns:
      Dict split -> number of examples verified.

    Raises:
      VerificationError: the first problem found.
    """
    from abo_tf.common.parallel import bounded_map, process_pool

    manifest = read_manifest(records_dir)
    all_shards = [(name, shard) for name, entry in manifest["splits"].items() for shard in entry["shards"]]
    paths = [_existing_shard(records_dir, shard) for _, shard in all_shards]
    workers = workers or os.cpu_count() or 1
    total = sum(shard["num_examples"] for _, shard in all_shards)
    split_of_path = {path: name for (name, _), path in zip(all_shards, paths)}
    # This process frames the shards while the workers check what is framed: the framing was a pass of the workers
    # over every shard before any check (7% of their py-spy samples at 80k images, one worker idle at its end),
    # while this process waited.
    tasks, echoed = itertools.tee(_chunk_tasks([shard for _, shard in all_shards], paths))
    with process_pool(workers) as pool:
        results = bounded_map(pool, _check_chunk, tasks, 4 * workers, len(manifest["classes"]))
        with console.progress_bar(total=total, desc="verify", unit="img", enabled=progress) as bar:
            counts = _check_examples(zip(echoed, results), split_of_path, bar)
    return {name: counts.get(name, 0) for name in manifest["splits"]}


def _chunk_tasks(manifest_shards, paths):
    """Generator: the `(path, start, end)` chunks of every shard as they are framed; a shard's SHA-256 and count are
    checked against the manifest at its end."""
    for shard, path in zip(manifest_shards, paths):
        digest, count = yield from _framed_chunks(path)
        _check_index(path, shard, digest, count)


def _existing_shard(records_dir, shard):
    path = os.path.join(records_dir, shard["file"])
    if not os.path.isfile(path):
        raise VerificationError(f"{path} is missing: build the records again")
    return path


def _check_index(path, shard, digest, count):
    if digest != shard["sha256"]:
        raise VerificationError(f"{path}: SHA-256 differs from the manifest: build the records again")
    if count != shard["num_examples"]:
        raise VerificationError(f"{path}: {count} records, the manifest says {shard['num_examples']}")


def _check_examples(checked_chunks, split_of_path, bar):
    """Counts examples per split, failing on a chunk's problem or on an image in two splits."""
    split_of, counts = {}, {}
    for (path, _, _), examples in checked_chunks:
        if isinstance(examples, str):
            raise VerificationError(f"{path}: {examples}")
        name = split_of_path[path]
        for image_id, digest, _ in examples:
            for key in (image_id, digest):
                if split_of.setdefault(key, name) != name:
                    raise VerificationError(f"image {key} is in both {split_of[key]} and {name}: the split leaks")
        counts[name] = counts.get(name, 0) + len(examples)
        bar.update(len(examples))
    return counts
