"""build_records on generated ABO data: accounting, leak-free split, determinism, resume, TFDS, bad input."""

import array
import collections
import errno
import gzip
import hashlib
import itertools
import json
import os
import random
import re
import shutil
import tarfile

import numpy as np
import pytest
import tensorflow as tf

from abo_tf import build_records
from abo_tf.common.errors import UserInputError
from abo_tf.records import archive, labels, schema, shards
from abo_tf.records import build as records_build
from abo_tf.records import split as split_lib
from tests.conftest import build_options


def _records_by_split(records_dir, manifest):
    result = {}
    for split in manifest["splits"]:
        dataset = (
            tf.data.TFRecordDataset(shards.shard_paths(records_dir, manifest, split))
            .batch(256)
            .map(schema.parse_records)
        )
        rows = []
        for batch in dataset:
            rows += [dict(zip(batch, values)) for values in zip(*[tensor.numpy() for tensor in batch.values()])]
        result[split] = rows
    return result


def _read_listings(abo):
    return list(archive.read_listings(abo["listings"]))


# --- parsing ---------------------------------------------------------------


def test_listings_reader_reports_each_quirk(abo_sample):
    report = archive.ListingsReport()
    listings = list(archive.read_listings(abo_sample["listings"], report))
    truth = abo_sample["truth"]
    assert len(listings) == truth["num_listings"]
    assert report.lines_read == truth["num_lines"]
    assert report.malformed_lines == [f"{entry['file']}:{entry['line']}" for entry in truth["malformed_lines"]]
    assert report.unknown_keys  # the generator plants an unknown key
    assert all(
        listing.product_type is None or listing.product_type == listing.product_type.upper() for listing in listings
    )
    types = collections.Counter(listing.product_type for listing in listings)
    assert types == collections.Counter(truth["listings_per_type"])
    assert sum(listing.main_image_id is None for listing in listings) == len(truth["no_main_image"])


def test_folder_and_tar_readers_agree(abo_sample, abo_folder_sample):
    from_tar = archive.open_images(abo_sample["images"])
    from_folder = archive.open_images(abo_folder_sample["root"])
    assert from_tar.rows == from_folder.rows
    assert set(from_tar.locations) == set(from_folder.locations)
    some = sorted(from_tar.locations)[:20]
    assert list(from_tar.read_many([(path, from_tar.locations[path]) for path in some])) == list(
        from_folder.read_many([(path, from_folder.locations[path]) for path in some])
    )
    assert _read_listings(abo_sample) == list(archive.read_listings(abo_folder_sample["root"]))


def test_fast_tar_index_equals_tarfile(abo_sample):
    with tarfile.open(abo_sample["images"]) as tar:
        expected = [(member.name, member.offset_data, member.size) for member in tar if member.isreg()]
    assert list(archive._fast_tar_files(abo_sample["images"])) == expected


@pytest.mark.parametrize(
    "header",
    [bytes(512), b"\xff" * 512, bytes(range(256)) * 2, random.Random(0).randbytes(512)],
    ids=["zeros", "all_ff", "ramp", "random"],
)
def test_header_sum_is_the_sum_of_the_bytes_but_the_checksum_field(header):
    assert archive._header_sum(header) == sum(header[:148]) + sum(header[156:])


def test_an_image_changed_after_the_scan_stops_the_write(abo_sample, tmp_path):
    images_tar = shutil.copy(abo_sample["images"], tmp_path / "images.tar")
    store = archive.open_images(str(images_tar))
    path, (offset, size) = min(store.locations.items())
    reader = store.without_index()
    scanned = records_build._scan_chunk([(path, (offset, size))], reader, None)
    (_, digest, crc32c, copy_size) = (column[0] for column in scanned)
    item = ("image", path, offset, size, digest, crc32c, 0, "TYPE", "item", copy_size)
    framed, rejected, _ = records_build._encode_piece([item], reader, None)
    assert framed and not rejected
    with open(images_tar, "r+b") as handle:  # one bit flipped in place: the same size, other bytes
        handle.seek(offset + size // 2)
        byte = handle.read(1)[0]
        handle.seek(offset + size // 2)
        handle.write(bytes([byte ^ 1]))
    # A user's situation, not a bug: one line (a UserInputError) saying how to start again.
    with pytest.raises(UserInputError, match="changed while the build was running.*--overwrite"):
        records_build._encode_piece([item], reader, None)
    # The archive cut by a new download: one line, where the scan dropped every cut image as damaged.
    os.truncate(images_tar, offset + 1)
    for step in (
        lambda: records_build._scan_chunk([(path, (offset, size))], reader, None),
        lambda: records_build._encode_piece([item], reader, None),
    ):
        with pytest.raises(archive.ArchiveError, match="ends before .*changed while the build was running"):
            step()


def test_pax_tar_falls_back_to_tarfile(tmp_path, abo_folder_sample):
    tar_path = tmp_path / "pax.tar"
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(os.path.join(abo_folder_sample["root"], "images"), arcname="images")
    store = archive.open_images(str(tar_path))
    assert store.rows == archive.open_images(abo_folder_sample["root"]).rows


# --- the scan's order by NumPy against the sort it replaced -------------------


class _Index:
    """An `_ImageIndex`'s fields, made up: ids "i0".. at offsets (-1: files in a folder); some share a member."""

    NOT_IN_ARCHIVE, refused = records_build._ImageIndex.NOT_IN_ARCHIVE, {}

    def __init__(self, rng, num_images, in_tar):
        self.paths = [f"{rng.randrange(num_images):03d}.jpg" for _ in range(num_images)]
        starts = rng.sample(range(512, 512 * 100 * num_images, 512), num_images)
        self.offsets = array.array("q", [start if in_tar else -1 for start in starts])
        self.sizes = array.array("q", [rng.randrange(1, 10**6) for _ in range(num_images)])
        self.position = {f"i{number}": number for number in range(num_images)}
        for number in range(0, num_images, 7):  # two ids of one member: same path, same offset, two positions
            self.position[f"twin{number}"] = len(self.paths)
            self.paths.append(self.paths[number])
            self.offsets.append(self.offsets[number])
            self.sizes.append(self.sizes[number])


def _old_located(index, image_ids):
    """The scan's order before NumPy: (offset or 0, path), stable."""
    rows = [
        (image_id, index.paths[index.position[image_id]], index.offsets[index.position[image_id]])
        for image_id in image_ids
    ]
    rows.sort(key=lambda row: (max(row[2], 0), row[1]))
    return [image_id for image_id, _, _ in rows]


@pytest.mark.parametrize("seed", range(6))
def test_scan_order_by_numpy_is_the_sorted_order_it_replaced(seed):
    rng = random.Random(seed)
    index = _Index(rng, rng.randrange(1, 300), in_tar=seed % 2 == 0)
    located = sorted(index.position)
    ordered, positions, ranks = records_build._located(index, located)
    assert ordered == _old_located(index, located)
    assert list(map(located.__getitem__, ranks.tolist())) == ordered
    assert positions.tolist() == [index.position[image_id] for image_id in ordered]
    in_tar = seed % 2 == 0
    offsets, sizes = np.asarray(index.offsets, np.int64), np.asarray(index.sizes, np.int64)
    assert records_build._scan_locations(index, positions, offsets, sizes) == [
        (index.paths[at], (index.offsets[at] if in_tar else None, index.sizes[at])) for at in positions.tolist()
    ]


def _plan_inputs(rng, index):
    """A scan's columns, listings, types, groups and splits over `index`'s images, made up."""
    image_ids, positions, ranks = records_build._located(index, sorted(rng.sample(sorted(index.position), 150)))
    place = np.full(len(index.paths), -1, np.int64)
    place[positions] = np.arange(len(positions))
    found = {
        image_id: (hashlib.sha256(image_id.encode()).hexdigest(), rng.getrandbits(32), rng.choice([None, (9, 7)]))
        for image_id in image_ids
    }
    scanned = records_build._Scanned(image_ids, place, *map(list, zip(*found.values())), rank=ranks, position=positions)
    listings = [records_build._ListingLabel(f"item{rng.randrange(40)}", "T") for _ in range(60)]
    shown = {image_id: sorted(rng.sample(range(60), rng.choice([1, 1, 2, 3]))) for image_id in image_ids}
    candidates = records_build._Candidates(listings, [None] * 60, [()] * 60, shown, scanned=scanned)
    listed = [listing.product_type for listing in listings], [listing.item_id for listing in listings]
    for start in range(0, len(image_ids), 64):  # what the scan takes of the listings, a chunk at a time
        records_build._listed_columns(scanned, candidates, image_ids[start : start + 64], start, listed)
    types = {image_id: rng.choice(["A", "B", "C"]) for image_id in image_ids}
    scanned.product_type = list(map(types.__getitem__, image_ids))  # as `_label_images` leaves the column
    groups = {image_id: min(image_id, rng.choice(image_ids)) for image_id in image_ids}
    members = {name: [] for name in ("train", "validation", "test")}
    for image_id in rng.sample(image_ids, len(image_ids)):
        members[rng.choice(list(members))].append(image_id)
    return candidates, found, types, groups, members


def _scanned_candidates(rng, index):
    """Listings over `index`'s images (and ids not in it), their candidates, and a scan of them made up: some
    images rejected, some sharing bytes; duplicates dropped as the build drops them."""
    ids = [*sorted(index.position), "ghost1", "ghost2"]  # the ghosts: not in images.csv
    listings = [records_build._ListingLabel(f"item{rng.randrange(30)}", "T") for _ in range(80)]
    image_ids = [tuple(rng.sample(ids, rng.choice([0, 1, 1, 2, 3]))) for _ in listings]
    selected = ([None if shown else "no_image" for shown in image_ids], image_ids, listings)
    candidates = records_build._read_candidates(build_options({"listings": "l", "images": "i"}, "out"), index, selected)
    scanned_ids, positions, ranks = records_build._located(index, records_build._surviving(candidates))
    place = np.full(len(index.paths), -1, np.int64)
    place[positions] = np.arange(len(positions))
    scanned = candidates.scanned = records_build._Scanned(scanned_ids, place, rank=ranks, position=positions)
    scanned.sha256 = [rng.choice(["same", "alike"]) if rng.random() < 0.1 else image_id for image_id in scanned_ids]
    scanned.crc32c = [len(digest) for digest in scanned.sha256]  # equal bytes, equal CRCs; not the reverse
    listed = [listing.product_type for listing in listings], [listing.item_id for listing in listings]
    for start in range(0, len(scanned_ids), 32):
        records_build._listed_columns(scanned, candidates, scanned_ids[start : start + 32], start, listed)
    candidates.image_status.update((image_id, "truncated") for image_id in rng.sample(scanned_ids, len(ids) // 10))
    records_build._drop_duplicate_content(candidates)
    return candidates, ids


@pytest.mark.parametrize("seed", range(6))
def test_grouping_on_the_scans_places_is_the_grouping_by_image_ids(seed):
    """`_group_kept` on the scan's integers against `split.group_numbers` on image ids, as the build grouped."""
    rng = random.Random(seed)
    index = _Index(rng, rng.randrange(100, 300), in_tar=seed % 2 == 0)
    candidates, ids = _scanned_candidates(rng, index)
    pairs = [(rng.choice(ids), rng.choice(ids)) for _ in range(12)]
    image_types = {
        image_id: "T" for image_id in candidates.scanned.image_ids if image_id not in candidates.image_status
    }
    kept = records_build._group_kept(candidates, index, image_types, pairs)
    keeper = candidates.keeper
    assert keeper and any(len(shown) > 1 for shown in candidates.listings_of_image.values())  # the cases are there
    listed = [
        (listing.item_id, [keeper.get(i, i) for i in shown])
        for listing, shown in zip(candidates.listings, candidates.image_ids)
    ]
    joined = [(keeper.get(first, first), keeper.get(second, second)) for first, second in pairs]
    expected_ids, expected_group = split_lib.group_numbers(
        listed, dict.fromkeys(image_types), joined, named_join=False, join_contents=False
    )
    assert kept.image_ids == expected_ids and kept.group.tolist() == expected_group.tolist()
    assert kept.position.tolist() == [index.position[image_id] for image_id in expected_ids]
    assert kept.place.tolist() == [candidates.scanned.image_ids.index(image_id) for image_id in expected_ids]


@pytest.mark.parametrize("seed", range(4))
def test_plan_from_the_scan_columns_is_the_plan_the_dicts_gave(seed):
    rng = random.Random(seed)
    index = _Index(rng, rng.randrange(150, 300), in_tar=seed != 1)
    candidates, found, types, groups, members = _plan_inputs(rng, index)
    vocabulary = labels.make_vocabulary(collections.Counter(types.values()))
    options = build_options({"listings": "l", "images": "i"}, "out", shard_mb=20)
    kept_ids = sorted(groups)
    number = {image_id: at for at, image_id in enumerate(kept_ids)}
    group = np.array([number[groups[image_id]] for image_id in kept_ids], np.int64)
    places = candidates.scanned.place[[index.position[image_id] for image_id in kept_ids]]
    kept = records_build._number_kept(candidates, types, places, group)
    numbers = {name: np.array([number[image_id] for image_id in ids], np.int64) for name, ids in members.items()}
    plan = records_build._make_plan(candidates, index, vocabulary, kept, numbers, options)
    expected_digest = hashlib.sha256(json.dumps([plan["options"], plan["classes"]], sort_keys=True).encode())
    for shard in plan["shards"]:  # each item as the per-image dicts made it, and the fingerprint as it was
        expected_digest.update(shard["file"].encode())
        for item in itertools.chain.from_iterable(records_build._shard_pieces(shard)):
            at = index.position[item.image_id]
            label, name = vocabulary.label_of(types[item.image_id])
            item_id = min(candidates.listings[number].item_id for number in candidates.listings_of_image[item.image_id])
            digest, crc32c, copy_size = found[item.image_id]
            offset = index.offsets[at] if index.offsets[at] >= 0 else None
            located = (index.paths[at], offset, index.sizes[at], digest, crc32c)
            assert item[1:] == (*located, label, name, item_id, copy_size, groups[item.image_id])
            expected_digest.update(f"{item.image_id}:{item.sha256}:{item.label};".encode())
    assert [item.image_id for shard in plan["shards"] for item in itertools.chain(*shard["pieces"])] == [
        image_id for name in ("train", "validation", "test") for image_id in members[name]
    ]
    assert plan["fingerprint"] == expected_digest.hexdigest()


# --- the build -------------------------------------------------------------


def test_every_listing_and_image_is_accounted_for(built_records, abo_sample):
    _, manifest = built_records
    truth = abo_sample["truth"]
    listings, images_ = manifest["listings"], manifest["images"]
    assert listings["read"] == truth["num_lines"]
    assert listings["kept"] + sum(listings["dropped"].values()) == listings["read"]
    assert listings["dropped"]["malformed_json"] == len(truth["malformed_lines"])
    assert images_["kept"] + sum(images_["dropped"].values()) == images_["referenced"]
    dropped = images_["dropped"]
    for reason in ("truncated", "empty", "not_an_image", "too_large"):
        assert dropped.get(reason, 0) >= 1, reason
    assert dropped["missing_from_archive"] == len(truth["missing_from_archive"])
    assert dropped["missing_from_images_csv"] == len(truth["missing_from_csv"])
    assert dropped["over_shared"] == len(truth["boilerplate_images"])
    assert images_["reencoded"] >= 3
    assert sum(entry["num_examples"] for entry in manifest["splits"].values()) == images_["kept"]
    conflicts = manifest["label_conflicts"]
    assert conflicts["items"] >= 1 and conflicts["images"] >= 1 and conflicts["groups"] >= 1


def test_records_round_trip_the_schema(built_records):
    records_dir, manifest = built_records
    by_split = _records_by_split(records_dir, manifest)
    for split, rows in by_split.items():
        assert len(rows) == manifest["splits"][split]["num_examples"]
        for row in rows[:50]:
            image = tf.io.decode_jpeg(row[schema.IMAGE], channels=3)
            assert tuple(image.shape[:2]) == (row[schema.HEIGHT], row[schema.WIDTH])
            assert manifest["classes"][row[schema.LABEL]] == row[schema.PRODUCT_TYPE].decode()
    with open(os.path.join(records_dir, shards.LABELS_FILE)) as handle:
        assert handle.read().split() == manifest["classes"]


def test_no_image_or_item_in_two_splits_and_groups_stay_whole(built_records, abo_sample):
    records_dir, manifest = built_records
    by_split = _records_by_split(records_dir, manifest)
    split_of = {}
    for split, rows in by_split.items():
        for row in rows:
            for key in (row[schema.IMAGE_ID], row[schema.IMAGE_SHA256], row[schema.ITEM_ID]):
                assert split_of.setdefault(key, split) == split
    # Every listing's written images, and every item's listings, sit in one split.
    image_split = {row[schema.IMAGE_ID].decode(): split for split, rows in by_split.items() for row in rows}
    splits_of_item = collections.defaultdict(set)
    for listing in _read_listings(abo_sample):
        ids = [listing.main_image_id, *listing.other_image_ids]
        splits_of_item[listing.item_id].update(image_split[image_id] for image_id in ids if image_id in image_split)
    assert all(len(splits) <= 1 for splits in splits_of_item.values())


@pytest.mark.parametrize("leak", ["id", "sha256", None])
def test_leak_check_names_an_image_in_two_splits(leak):
    def result(split_name, *records):
        return {"split": split_name, "written": [(image_id, digest, 0, image_id) for image_id, digest in records]}

    second = {"id": ("a", "other"), "sha256": ("z", "ha"), None: ("b", "hb")}[leak]
    results = [result("train", ("a", "ha"), ("c", "hc")), result("train", ("a", "ha")), result("test", second)]
    if leak is None:  # a record twice in one split is no leak
        records_build._check_no_leak(results)
        return
    with pytest.raises(
        records_build.BuildError, match=f"image {leak} {second[0 if leak == 'id' else 1]} .*train.*test"
    ):
        records_build._check_no_leak(results)


class _ReadLate:
    """A future of the listings that says it is not done the first `looks` times it is asked."""

    def __init__(self, future, looks):
        self.future, self.looks = future, looks

    def done(self):
        self.looks -= 1
        return self.looks < 0


def _listings_read_late(monkeypatch, late):
    """Makes the build take one way through `_while_the_listings_are_read`: ids sorted and the first 7 images'
    split keys hashed while the listings are read (`late`; the scan hashes the others), or the listings read
    already, whichever the session's build took; the shards must not differ."""
    original = records_build._while_the_listings_are_read
    monkeypatch.setattr(records_build, "KEY_CHUNK", 7)

    def forced(image_index, listings, seed):
        listings.result()
        return original(image_index, _ReadLate(listings, 2) if late else listings, seed)

    monkeypatch.setattr(records_build, "_while_the_listings_are_read", forced)


@pytest.mark.parametrize("looks", [0, 1, 3, 100])
def test_split_keys_hashed_while_the_listings_are_read_are_those_the_scan_hashes(looks, monkeypatch):
    rng = random.Random(looks)
    index = _Index(rng, 40, in_tar=True)
    monkeypatch.setattr(records_build, "KEY_CHUNK", 5)
    keys = records_build._hash_keys_until(index, _ReadLate(None, looks), seed=5)
    assert len(keys.fractions) == min(len(index.paths), 5 * looks)  # a chunk a look that says not done
    image_ids = rng.sample(sorted(index.position), 30)
    positions = np.array([index.position[image_id] for image_id in image_ids], np.int64)
    fractions, words = records_build._chunk_keys(keys, positions, image_ids, seed=5)
    assert fractions.tolist() == split_lib.stable_fractions(5, image_ids).tolist()
    assert words.tolist() == split_lib.shuffle_digests(image_ids, 5).tolist()


def test_same_build_from_folders_is_byte_identical(built_records, abo_folder_sample, tmp_path, monkeypatch):
    _, manifest = built_records
    _listings_read_late(monkeypatch, late=True)
    folder = abo_folder_sample["root"]
    again = records_build.build(build_options({"listings": folder, "images": folder}, tmp_path / "again", workers=1))
    assert again["fingerprint"] == manifest["fingerprint"]
    assert [shard["sha256"] for entry in again["splits"].values() for shard in entry["shards"]] == [
        shard["sha256"] for entry in manifest["splits"].values() for shard in entry["shards"]
    ]


def test_split_does_not_depend_on_listing_order(built_records, abo_folder_sample, tmp_path, monkeypatch):
    _, manifest = built_records
    _listings_read_late(monkeypatch, late=False)
    shuffled = tmp_path / "abo"
    shutil.copytree(abo_folder_sample["root"], shuffled)
    metadata = shuffled / "listings" / "metadata"
    lines = []
    for path in sorted(metadata.iterdir()):
        with gzip.open(path, "rt") as handle:
            lines += handle.read().splitlines()
        path.unlink()
    for index in range(4):  # reversed, and spread over other files
        with gzip.open(metadata / f"listings_{index}.json.gz", "wt") as handle:
            handle.write("\n".join(lines[::-1][index::4]) + "\n")
    again = records_build.build(build_options({"listings": str(shuffled), "images": str(shuffled)}, tmp_path / "out"))
    assert again["fingerprint"] == manifest["fingerprint"]
    assert again["splits"] == manifest["splits"]


def test_interrupted_build_resumes_to_the_same_bytes(built_records, abo_sample, tmp_path, monkeypatch):
    _, manifest = built_records
    output = tmp_path / "resumed"
    calls = []
    original = records_build._save_shard_result

    def write_one_then_die(*args):
        if calls:
            raise KeyboardInterrupt  # as if killed after the first shard
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(records_build, "_save_shard_result", write_one_then_die)
    with pytest.raises(KeyboardInterrupt):
        records_build.build(build_options(abo_sample, output))
    assert os.path.isdir(output / records_build.STATE_DIR)
    assert not (output / shards.MANIFEST).exists()
    # The finished shard's saved outcome holds no records: the resumed build takes them from its plan.
    (saved,) = [name for name in os.listdir(output / records_build.STATE_DIR) if name != records_build.PLAN_FILE]
    assert sorted(json.loads((output / records_build.STATE_DIR / saved).read_text())) == sorted(
        records_build._SHARD_OUTCOME
    )
    finished = os.stat(output / saved.removesuffix(".json")).st_mtime_ns
    (output / "abo-test.tfrecord-00000-of-00001.tmp").write_bytes(b"half a shard")  # a kill mid-write
    monkeypatch.setattr(records_build, "_save_shard_result", original)
    resumed = records_build.build(build_options(abo_sample, output))
    assert os.stat(output / saved.removesuffix(".json")).st_mtime_ns == finished  # not written again
    assert resumed["splits"] == manifest["splits"]
    assert (resumed["images"], resumed["listings"]) == (manifest["images"], manifest["listings"])
    assert not (output / records_build.STATE_DIR).exists()


def test_a_full_disk_is_one_line_and_the_build_resumes_to_the_same_bytes(
    built_records, abo_sample, tmp_path, monkeypatch
):
    records_dir, _ = built_records
    output = tmp_path / "resumed"
    # Shards are written by the workers; the parent records each one's result as it arrives: the disk fills there.
    original = records_build._save_shard_result
    calls = []

    def write_one_then_fill_the_disk(*args):
        if calls:
            raise OSError(errno.ENOSPC, "No space left on device")
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(records_build, "_save_shard_result", write_one_then_fill_the_disk)
    with pytest.raises(records_build.UserInputError, match=r"cannot write --output .*\(No space left on device\)"):
        records_build.build(build_options(abo_sample, output))
    monkeypatch.setattr(records_build, "_save_shard_result", original)
    records_build.build(build_options(abo_sample, output))
    shard_names = [name for name in sorted(os.listdir(records_dir)) if ".tfrecord-" in name]
    assert len(shard_names) >= 3 and sorted(name for name in os.listdir(output) if ".tfrecord-" in name) == shard_names
    for name in shard_names:
        assert (output / name).read_bytes() == open(os.path.join(records_dir, name), "rb").read(), name


@pytest.mark.slow
def test_killed_build_process_resumes(abo_sample, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    output = tmp_path / "killed"
    command = [
        sys.executable,
        "-m",
        "abo_tf.build_records",
        "--listings",
        abo_sample["listings"],
        "--images",
        abo_sample["images"],
        "--output",
        str(output),
        "--image-selection",
        "all",
        "--min-examples-per-class",
        "3",
        "--no-progress",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not (output / records_build.STATE_DIR).exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert subprocess.run(command, capture_output=True, check=False).returncode == 0
    assert shards.verify_records(str(output), progress=False)


def test_rerun_of_a_finished_build_changes_nothing(built_records, abo_sample):
    records_dir, manifest = built_records
    stamp = os.path.getmtime(os.path.join(records_dir, shards.MANIFEST))
    assert records_build.build(build_options(abo_sample, records_dir))["fingerprint"] == manifest["fingerprint"]
    assert os.path.getmtime(os.path.join(records_dir, shards.MANIFEST)) == stamp


def test_tfds_reads_the_same_examples(built_records):
    import tensorflow_datasets as tfds

    records_dir, manifest = built_records
    builder = tfds.builder_from_directory(records_dir)
    assert builder.info.features["label"].names == manifest["classes"]
    for split in manifest["splits"]:
        ids = sorted(example["image_id"].numpy() for example in builder.as_dataset(split=split))
        assert ids == sorted(row[schema.IMAGE_ID] for row in _records_by_split(records_dir, manifest)[split])


def test_verify_accepts_the_build_and_finds_damage(built_records, tmp_path):
    records_dir, manifest = built_records
    counts = shards.verify_records(records_dir, progress=False)
    assert counts == {split: entry["num_examples"] for split, entry in manifest["splits"].items()}
    damaged = tmp_path / "damaged"
    shutil.copytree(records_dir, damaged)
    shard = damaged / manifest["splits"]["train"]["shards"][0]["file"]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert build_records.main(["--verify", str(damaged), "--no-progress"]) == 2


def test_rare_classes_other_and_max_classes(abo_sample, tmp_path):
    manifest = records_build.build(
        build_options(abo_sample, tmp_path / "other", rare_classes="other", min_examples_per_class=20, max_classes=4)
    )
    assert "OTHER" in manifest["classes"] and len(manifest["classes"]) <= 4
    main_only = records_build.build(build_options(abo_sample, tmp_path / "main", image_selection="main"))
    assert main_only["images"]["referenced"] < manifest["images"]["referenced"]


def test_every_kept_class_is_measured_in_every_split(built_records):
    _, manifest = built_records
    for entry in manifest["splits"].values():
        assert sorted(entry["per_class"]) == sorted(entry["groups_per_class"]) == manifest["classes"]
        assert all(entry["groups_per_class"][name] <= count for name, count in entry["per_class"].items())
    assert records_build.unmeasured_classes(manifest) == {}
    rare, dropped = manifest["rare_classes"], manifest["images"]["dropped"]
    assert rare["action"] == "drop" and rare["images"] == {
        reason: dropped[reason] for reason in ("rare_class", "rare_class_groups") if reason in dropped
    }


@pytest.mark.parametrize("rare_classes", ["drop", "other"])
def test_group_floors_demote_the_classes_that_miss_them(abo_sample, tmp_path, rare_classes):
    """A floor of 2 groups per split: the classes left (OTHER too) have 2 in each; the others are counted."""
    manifest = records_build.build(
        build_options(abo_sample, tmp_path / "out", min_groups_per_split=(2, 2, 2), rare_classes=rare_classes)
    )
    assert all(min(entry["groups_per_class"].values()) >= 2 for entry in manifest["splits"].values())
    assert all(len(entry["groups_per_class"]) == len(manifest["classes"]) for entry in manifest["splits"].values())
    rare = manifest["rare_classes"]
    assert rare["types"]["rare_class_groups"] >= 1 and rare["images"]["rare_class_groups"] >= 1
    dropped = manifest["images"]["dropped"].get("rare_class_groups", 0)
    assert dropped == (rare["images"]["rare_class_groups"] if rare_classes == "drop" else 0)
    assert ("OTHER" in manifest["classes"]) == (rare_classes == "other")


def test_floors_no_class_meets_are_named_as_in_force(built_records, abo_sample, tmp_path, capsys):
    """The error gives the floors after a 0 fraction's (as given too) and the most groups a class had: the most of
    the sample's classes (a floor of one more than that leaves no class), of the groups in all."""
    _, manifest = built_records
    totals = [
        sum(entry["groups_per_class"][name] for entry in manifest["splits"].values()) for name in manifest["classes"]
    ]
    most = max(totals)
    code, error = _run_cli(
        capsys,
        *("--listings", abo_sample["listings"], "--images", abo_sample["images"], "--image-selection", "all"),
        *("--min-examples-per-class", "3", "--split", "0.5", "0.5", "0", "--min-groups-per-split", "1", str(most), "7"),
        *("--output", str(tmp_path / "out")),
    )
    assert code == 2 and len(error.splitlines()) == 1, error
    expected = (
        f"only 0 class(es) have at least 3 images and 1 {most} 0 groups per split (--min-groups-per-split 1 {most} 7 "
        f"with --split 0.5 0.5 0): {most + 1} groups a class, the most any class had is {most} of "
    )
    assert expected in error, error
    # Every group written has an image of a class (a group of two classes counts in both); a group not written
    # has an image dropped after the grouping.
    in_all = int(error.split(" groups in all")[0].rsplit(" ", 1)[1])
    assert most < in_all <= sum(totals) + sum(manifest["images"]["dropped"].values()), (in_all, manifest["images"])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("rare_classes", ["drop", "other"])
def test_an_image_floor_no_class_meets_blames_no_group_floor(rare_classes, abo_sample, tmp_path, capsys):
    code, error = _run_cli(
        capsys,
        *("--listings", abo_sample["listings"], "--images", abo_sample["images"], "--rare-classes", rare_classes),
        *("--min-examples-per-class", "100000", "--output", str(tmp_path / "out")),
    )
    assert code == 2 and len(error.splitlines()) == 1, error
    assert "at least 100000 images" in error and "groups" not in error, error
    assert error.rstrip().endswith("lower --min-examples-per-class or give more data"), error
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("min_examples", "advice"), [(1, "two; give more data"), (2, "two; lower --min-examples")])
def test_one_class_error_advises_lowering_the_floor_only_above_one(min_examples, advice):
    options = build_options({"listings": "l", "images": "i"}, "out", min_examples_per_class=min_examples)
    vocabulary = labels.Vocabulary(("SHOES",), {"SHOES": "SHOES"})
    with pytest.raises(UserInputError, match=f"at least {min_examples} images: a build needs {advice}"):
        records_build._check_image_floor(options, vocabulary)


@pytest.mark.parametrize(
    ("min_examples", "min_groups", "advice"),
    [
        (1, (1, 1, 1), "; give more data"),
        (1, (1, 2, 1), "; lower --min-groups-per-split, or give more data"),
        (3, (1, 1, 1), "; lower --min-examples-per-class, or give more data"),
        (3, (2, 1, 1), "; lower --min-examples-per-class or --min-groups-per-split, or give more data"),
    ],
)
def test_group_floor_error_advises_lowering_only_floors_above_one(min_examples, min_groups, advice):
    options = build_options(
        {"listings": "l", "images": "i"}, "out", min_examples_per_class=min_examples, min_groups_per_split=min_groups
    )
    error = records_build._too_few_classes(options, 1, 2, 40)
    assert error.endswith(f"2 of 40 groups in all{advice}"), error


# --- bad input: one line, exit 2, nothing half-written ---------------------


def _run_cli(capsys, *args):
    code = build_records.main(list(args) + ["--no-progress"])
    error = capsys.readouterr().err.strip()
    return code, error


@pytest.fixture
def bad_inputs(abo_sample, abo_folder_sample, tmp_path):
    """Inputs that are not what ABO ships, by name."""
    not_abo = tmp_path / "other.tar"
    with tarfile.open(not_abo, "w") as tar:
        tar.add(__file__, arcname="readme.txt")
    truncated_listings = tmp_path / "listings"
    shutil.copytree(os.path.join(abo_folder_sample["root"], "listings"), truncated_listings / "listings")
    victim = truncated_listings / "listings" / "metadata" / "listings_0.json.gz"
    victim.write_bytes(victim.read_bytes()[:-40])
    no_csv = tmp_path / "no_csv"
    shutil.copytree(os.path.join(abo_folder_sample["root"], "images", "small"), no_csv / "images" / "small")
    not_a_tar = tmp_path / "junk.tar"
    not_a_tar.write_bytes(b"this is not a tar file" * 100)
    return {
        "listings": abo_sample["listings"],
        "images": abo_sample["images"],
        "missing": str(tmp_path / "missing.tar"),
        "not_abo": str(not_abo),
        "truncated": str(truncated_listings),
        "no_csv": str(no_csv),
        "junk": str(not_a_tar),
    }


@pytest.mark.parametrize(
    "expected, args",
    [
        ("does not exist", ["--listings", "{missing}", "--images", "{images}"]),
        ("no images/metadata/images.csv.gz", ["--listings", "{listings}", "--images", "{not_abo}"]),
        ("holds no listings", ["--listings", "{not_abo}", "--images", "{images}"]),
        ("truncated", ["--listings", "{truncated}", "--images", "{images}"]),
        ("no images/metadata", ["--listings", "{listings}", "--images", "{no_csv}"]),
        ("not a readable", ["--listings", "{listings}", "--images", "{junk}"]),
        ("--split", ["--listings", "{listings}", "--images", "{images}", "--split", "0.5", "0.2", "0.2"]),
        ("no --listings given and no ABO download under 'data'", ["--images", "{images}"]),
        (
            "--min-groups-per-split",
            ["--listings", "{listings}", "--images", "{images}", "--min-groups-per-split"] + ["1", "40", "40"],
        ),
    ],
)
def test_bad_inputs_give_one_line_errors(bad_inputs, tmp_path, capsys, monkeypatch, expected, args):
    monkeypatch.chdir(tmp_path)  # no data/ folder here
    code, error = _run_cli(capsys, *[arg.format(**bad_inputs) for arg in args], "--output", str(tmp_path / "out"))
    assert code == 2, (expected, error)
    assert expected in error and len(error.splitlines()) == 1, (expected, error)
    assert not (tmp_path / "out").exists()


def test_output_folder_holding_another_build_is_refused(built_records, abo_sample, tmp_path, capsys):
    records_dir, _ = built_records
    args = ["--listings", abo_sample["listings"], "--images", abo_sample["images"], "--image-selection", "all"]
    code, error = _run_cli(capsys, *args, "--output", records_dir, "--min-examples-per-class", "5")
    assert code == 2 and "--overwrite" in error
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    code, error = _run_cli(capsys, *args, "--output", str(foreign))
    assert code == 2 and "not empty" in error and (foreign / "notes.txt").exists()
    copy = tmp_path / "copy"
    shutil.copytree(records_dir, copy)
    assert _run_cli(capsys, *args, "--output", str(copy), "--min-examples-per-class", "5", "--overwrite")[0] == 0
    assert json.loads((copy / shards.MANIFEST).read_text())["options"]["min_examples_per_class"] == 5


def test_help_exits_zero():
    with pytest.raises(SystemExit) as caught:
        build_records.main(["--help"])
    assert caught.value.code == 0


@pytest.mark.parametrize(
    "sizes, joined, expected",
    [
        ((0, 3000, 0), "groups.csv", "error: the train split would be empty .* --join-near-duplicates joined most"),
        ((90, 10, 0), None, "error: the test split would be empty .* too few groups"),
        ((96, 3, 1), None, "WARNING: the validation split has 3.0% of the images, --split asks 10%"),
        ((80, 10, 10), None, ""),
    ],
)
def test_a_split_asked_for_but_left_empty_is_refused(capsys, sizes, joined, expected):
    import types

    from abo_tf.common.errors import UserInputError

    splits = ("train", "validation", "test")
    members = {name: [f"{name}{index}" for index in range(size)] for name, size in zip(splits, sizes)}
    options = types.SimpleNamespace(split_fractions=(0.8, 0.1, 0.1), join_near_duplicates=joined)
    if expected.startswith("error: "):
        with pytest.raises(UserInputError, match=expected.removeprefix("error: ")):
            records_build.check_split_sizes(members, options)
    else:
        records_build.check_split_sizes(members, options)
        assert re.search(expected, capsys.readouterr().err) if expected else not capsys.readouterr().err


@pytest.mark.parametrize(
    "shown, expected", [([0], "ITEM-B"), ([2], "ITEM-C"), ([0, 1], "ITEM-A"), ([2, 1, 0], "ITEM-A"), ([2, 0], "ITEM-B")]
)
def test_an_image_in_several_listings_takes_the_smallest_of_their_item_ids(shown, expected):
    # The one rule behind both the scan's item ids and a content duplicate's copy kept: whatever the listings' order.
    assert records_build._image_item_id(["ITEM-B", "ITEM-A", "ITEM-C"], shown) == expected


def test_a_content_duplicates_listings_go_to_the_copy_kept_with_its_type_and_item():
    """The types and item ids the scan takes from each image's listings are redone for a copy kept: it takes the
    listings of the duplicates it replaces (the smallest item id; their types vote, ties to the first name)."""
    import types

    label = records_build._ListingLabel
    listings = [label("ITEM-B", "CHAIR"), label("ITEM-A", "LAMP"), label("ITEM-C", "LAMP")]
    image_ids = [("a", "b"), ("c",), ("d",)]
    listings_of_image = {"a": [0], "b": [0], "c": [1], "d": [2]}
    candidates = records_build._Candidates(listings, [None] * 3, image_ids, listings_of_image, num_referenced=4)
    order = ["d", "c", "b", "a"]  # the scan's (archive) order, not the ids'
    scanned = candidates.scanned = records_build._Scanned(order, np.arange(4))
    scanned.sha256, scanned.crc32c = ["h-d", "h-same", "h-same", "h-a"], [4, 7, 7, 1]  # c is b's bytes
    listed = [listing.product_type for listing in listings], [listing.item_id for listing in listings]
    for start in (0, 2):  # two chunks of the scan
        records_build._listed_columns(scanned, candidates, order[start : start + 2], start, listed)
    records_build._drop_duplicate_content(candidates)
    options = types.SimpleNamespace(min_examples_per_class=1, max_classes=None, rare_classes="drop")
    _, image_types, conflicts = records_build._label_images(candidates, options)
    assert candidates.image_status == {"c": "duplicate_content"} and candidates.keeper == {"c": "b"}
    assert image_types == {"d": "LAMP", "b": "CHAIR", "a": "CHAIR"} and conflicts["images"] == 1
    assert dict(zip(order, scanned.item_id)) == {"d": "ITEM-C", "c": "ITEM-A", "b": "ITEM-A", "a": "ITEM-B"}


def test_split_fractions_not_summing_to_one_are_named_as_typed(tmp_path, capsys):
    # They were shown as a Python tuple, "(0.5, 0.5, 0.5)", which is not what the user typed.
    arguments = ["--listings", str(tmp_path), "--images", str(tmp_path), "--output", str(tmp_path / "out")]
    assert build_records.main([*arguments, "--split", "0.5", "0.5", "0.5"]) == 2
    error = capsys.readouterr().err.strip()
    assert "--split 0.5 0.5 0.5 must be three non-negative fractions summing to 1 (these sum to 1.5)" in error, error
    assert len(error.splitlines()) == 1 and not (tmp_path / "out").exists()


def _saved_shard(tmp_path, outcome):
    """A shard of two planned images, one written, with `outcome` saved as its state (None: as written)."""
    items = [records_build.PlanItem(f"img{n}", "p", 0, 1, "h", 0, 0, "t", "item", None, "g") for n in range(2)]
    shard = {"split": "train", "file": "abo-train.tfrecord-00000-of-00001", "pieces": [items]}
    (tmp_path / shard["file"]).write_bytes(shards.frame_record(b"abc"))
    (tmp_path / records_build.STATE_DIR).mkdir()
    sha256 = shards.file_sha256(tmp_path / shard["file"])
    good = {"rejected": {"img1": "undecodable"}, "reencoded": 0, "num_bytes": 19, "sha256": sha256}
    state = tmp_path / records_build.STATE_DIR / (shard["file"] + ".json")
    state.write_text(json.dumps(good if outcome is None else {**good, **outcome}))
    return build_options({"listings": "l", "images": "i"}, tmp_path), shard, good


@pytest.mark.parametrize(
    "outcome",
    [
        {"rejected": 5},  # was a TypeError traceback
        {"rejected": "img0"},  # a string: `in` matched its substrings
        {"rejected": {"img0": "undecodable", "img1": "undecodable"}},  # the written image dropped from the manifest
        {"rejected": {}},  # the rejected one counted in
        {"rejected": {"other": "undecodable"}},  # an image of another shard
        {"rejected": {"img1": 3}},  # a reason that is not a string
        {"num_bytes": "19"},  # was a TypeError traceback in the summary
        {"num_bytes": 20},  # the file is not what was saved (cut, or another shard's outcome)
        {"reencoded": True},
        {"sha256": "0" * 64},  # the manifest would have named bytes the shard does not hold
    ],
)
def test_a_saved_shard_outcome_that_does_not_describe_its_shard_writes_it_again(tmp_path, outcome):
    options, shard, good = _saved_shard(tmp_path, outcome)
    assert records_build._finished_shard(options, shard) is None


def test_a_saved_shard_outcome_that_describes_its_shard_is_resumed(tmp_path):
    options, shard, good = _saved_shard(tmp_path, None)
    assert records_build._finished_shard(options, shard) == tuple(good[key] for key in records_build._SHARD_OUTCOME)
