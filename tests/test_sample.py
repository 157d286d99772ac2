"""The synthetic ABO generator: real layout, determinism, every planted quirk, CLI."""

import collections
import contextlib
import csv
import gzip
import io
import json
import os
import re
import tarfile

import cv2
import numpy as np
import pytest

from abo_tf import sample as sample_command
from abo_tf.common.errors import UserInputError
from abo_tf.testing import synthetic_abo as sample

LISTINGS = 150
MAX_SIDE = 64
ORIGINAL_SCALES = range(2, 7)
IMAGE_ID = re.compile(r"^[0-9A-Za-z+-]{11}$")
ITEM_ID = re.compile(r"^[0-9A-Z]{10}$")
IMAGE_PATH = re.compile(r"^([0-9a-f]{2})/([0-9a-f]{8})\.(jpg|png)$")
LISTINGS_NAMES = [f"listings/metadata/listings_{number:x}.json.gz" for number in range(16)]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SOF_MARKERS = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


# --- helpers -----------------------------------------------------------------


def _all_files(root):
    """Relative path -> bytes of every file under root."""
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, root).replace(os.sep, "/")] = handle.read()
    return found


def _tar_members(path):
    with tarfile.open(path) as tar:
        return [(member, tar.extractfile(member).read()) for member in tar]


def _normalise(value):
    if isinstance(value, list):
        value = value[0]["value"]
    return re.sub(r"[\s-]+", "_", value.strip()).upper()


def _jpeg_frame(data):
    """(height, width, components) from the SOF marker, or None before one is found."""
    position = 2
    while position + 10 <= len(data) and data[position] == 0xFF:
        marker, length = data[position + 1], int.from_bytes(data[position + 2 : position + 4], "big")
        if marker in SOF_MARKERS:
            return (
                int.from_bytes(data[position + 5 : position + 7], "big"),
                int.from_bytes(data[position + 7 : position + 9], "big"),
                data[position + 9],
            )
        if marker == 0xDA:
            return None
        position += 2 + length
    return None


def _read_sample(root):
    """The folder sample as plain data: listing lines, parsed records, csv rows, image bytes by path."""
    files = _all_files(root)
    lines = {}
    for name in LISTINGS_NAMES:
        lines[name.rsplit("/", 1)[1]] = gzip.decompress(files[name]).decode("utf-8").splitlines()
    with gzip.open(io.BytesIO(files[sample.IMAGES_CSV]), "rt", newline="") as handle:
        rows = list(csv.reader(handle))
    images = {path[len("images/small/") :]: data for path, data in files.items() if path.startswith("images/small/")}
    return {
        "files": files,
        "lines": lines,
        "header": rows[0],
        "rows": {row[0]: row for row in rows[1:]},
        "images": images,
    }


def _records(data):
    records = []
    for lines in data["lines"].values():
        for line in lines:
            with contextlib.suppress(json.JSONDecodeError):
                records.append(json.loads(line))
    return records


def _image_ids(record):
    main = [record["main_image_id"]] if "main_image_id" in record else []
    return main + [image_id for image_id in record.get("other_image_id", []) if image_id not in main]


def _file_of(data, image_id):
    return data["images"].get(data["rows"][image_id][3])


# --- fixtures ----------------------------------------------------------------


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("sample") / "abo")
    truth = sample.generate_sample(root, num_listings=LISTINGS, seed=0, max_side=MAX_SIDE)
    return {"root": root, "truth": truth, **_read_sample(root)}


@pytest.fixture(scope="module")
def tar_sample(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("sample_tar") / "abo")
    truth = sample.generate_sample(root, num_listings=LISTINGS, seed=0, tar=True, max_side=MAX_SIDE)
    return {"root": root, "truth": truth}


# --- determinism ---------------------------------------------------------------


def test_same_seed_gives_the_same_bytes(folder, tmp_path):
    again = str(tmp_path / "again")
    assert sample.generate_sample(again, num_listings=LISTINGS, seed=0, max_side=MAX_SIDE) == folder["truth"]
    assert _all_files(again) == folder["files"]


def test_tar_is_reproducible_whatever_the_number_of_workers(tar_sample, tmp_path):
    again = str(tmp_path / "again")
    truth = sample.generate_sample(again, num_listings=LISTINGS, seed=0, tar=True, max_side=MAX_SIDE, workers=2)
    assert truth == tar_sample["truth"]
    assert _all_files(again) == _all_files(tar_sample["root"])


def test_another_seed_gives_other_data(folder, tmp_path):
    other = str(tmp_path / "other")
    truth = sample.generate_sample(other, num_listings=LISTINGS, seed=1, max_side=MAX_SIDE)
    files = _all_files(other)
    assert truth["boilerplate_images"] != folder["truth"]["boilerplate_images"]
    assert all(files[name] != folder["files"][name] for name in LISTINGS_NAMES + [sample.IMAGES_CSV])


# --- layout --------------------------------------------------------------------


def test_folder_layout_is_the_real_one(folder):
    truth = folder["truth"]
    assert sorted(folder["files"]) == truth["files"]  # and nothing else, no truth file
    assert [name for name in truth["files"] if name.startswith("listings/")] == LISTINGS_NAMES
    assert folder["header"] == ["image_id", "height", "width", "path"]
    assert len(folder["rows"]) == truth["num_images"]
    for image_id, (_, height, width, path) in folder["rows"].items():
        match = IMAGE_PATH.match(path)
        assert IMAGE_ID.match(image_id) and match and match.group(1) == match.group(2)[:2], path
        assert int(height) > 0 and int(width) > 0
    csv_paths = {row[3] for image_id, row in folder["rows"].items() if image_id not in truth["missing_from_archive"]}
    assert set(folder["images"]) == csv_paths
    for name in LISTINGS_NAMES:
        header = folder["files"][name]
        assert header[4:8] == b"\0\0\0\0" and header[10:].startswith(name.rsplit("/", 1)[1][:-3].encode() + b"\0")


def test_tar_layout_and_headers(tar_sample, folder):
    assert sorted(os.listdir(tar_sample["root"])) == ["abo-images-small.tar", "abo-listings.tar"]
    assert tar_sample["truth"]["files"] == ["abo-images-small.tar", "abo-listings.tar"]
    listings = _tar_members(os.path.join(tar_sample["root"], "abo-listings.tar"))
    images = _tar_members(os.path.join(tar_sample["root"], "abo-images-small.tar"))
    assert [member.name for member, _ in listings] == LISTINGS_NAMES
    names = [member.name for member, _ in images]
    assert names[-1] == sample.IMAGES_CSV  # last: the worst case for a streaming reader
    assert names[:-1] == sorted(names[:-1]) and all(name.startswith("images/small/") for name in names[:-1])
    for member, data in listings + images:
        assert member.isreg() and (member.mtime, member.uid, member.gid, member.mode) == (sample.TAR_MTIME, 0, 0, 0o644)
        assert member.uname == member.gname == ""
        assert data == folder["files"][member.name]  # the tar holds exactly the folder's files
    assert len(listings) + len(images) == len(folder["files"])


# --- listings --------------------------------------------------------------------


def test_listing_lines_and_the_malformed_one(folder):
    truth = folder["truth"]
    assert sum(len(lines) for lines in folder["lines"].values()) == truth["num_lines"]
    malformed = []
    for name, lines in folder["lines"].items():
        for number, line in enumerate(lines, start=1):
            try:
                assert isinstance(json.loads(line), dict)
            except json.JSONDecodeError:
                malformed.append({"file": name, "line": number})
    assert malformed == truth["malformed_lines"] and len(malformed) >= 1
    assert len(_records(folder)) == truth["num_listings"] == LISTINGS


def test_listing_fields_as_abo_has_them(folder):
    records, truth = _records(folder), folder["truth"]
    keys = [(record["item_id"], record["domain_name"]) for record in records]
    assert len(set(keys)) == len(keys)
    assert all(ITEM_ID.match(record["item_id"]) and record["marketplace"] == "Amazon" for record in records)
    assert len({frozenset(record) for record in records}) > 10  # keys vary line to line
    plain = [record for record in records if isinstance(record["product_type"], str)]
    assert 0.1 < len(plain) / len(records) < 0.3
    odd = sorted(value for record in plain if (value := record["product_type"]) != value.strip().upper())
    assert odd == truth["non_normalised_product_types"] and odd
    assert collections.Counter(_normalise(record["product_type"]) for record in records) == truth["listings_per_type"]
    no_main = sorted([record["item_id"], record["domain_name"]] for record in records if "main_image_id" not in record)
    assert no_main == truth["no_main_image"] and no_main
    assert any("extra_field_v2" in record for record in records)
    tags = collections.Counter(entry["language_tag"] for record in records for entry in record["item_name"])
    assert len(tags) >= 5 and tags["en_US"] < 0.5 * sum(tags.values())
    for record in records:
        assert all(
            set(entry) >= {"language_tag", "value"}
            for field in ("item_name", "brand", "bullet_point")
            for entry in record.get(field, [])
        )
        for node in record.get("node", []):
            assert isinstance(node["node_id"], int) and node["node_name"].startswith("/")
        if "item_weight" in record:
            assert set(record["item_weight"][0]["normalized_value"]) == {"unit", "value"}
        assert 0 <= len(record.get("other_image_id", [])) <= 8


def test_long_tail_of_product_types(folder):
    counts = folder["truth"]["listings_per_type"]
    assert len(counts) == len(sample.PRODUCT_TYPES)
    top_type, top_count = max(counts.items(), key=lambda entry: entry[1])
    assert top_type == "CELLULAR_PHONE_CASE" and 0.4 <= top_count / LISTINGS <= 0.6
    assert sum(1 <= count <= 5 for count in counts.values()) >= 2


# --- sharing and conflicts -----------------------------------------------------


def test_sharing_and_label_conflicts(folder):
    records, truth = _records(folder), folder["truth"]
    listings_of_image, types_of_image = collections.Counter(), collections.defaultdict(set)
    domains_of_item, types_of_item = collections.defaultdict(set), collections.defaultdict(set)
    for record in records:
        product_type = _normalise(record["product_type"])
        domains_of_item[record["item_id"]].add(record["domain_name"])
        types_of_item[record["item_id"]].add(product_type)
        for image_id in _image_ids(record):
            listings_of_image[image_id] += 1
            types_of_image[image_id].add(product_type)
    over_shared = {image_id: count for image_id, count in listings_of_image.items() if count > 50}
    assert over_shared == truth["boilerplate_images"] and over_shared
    assert sum(len(domains) > 1 for domains in domains_of_item.values()) == truth["shared_item_ids"] >= 1
    assert sum(2 <= count <= 50 for count in listings_of_image.values()) > truth["shared_item_ids"]
    assert sorted(item for item, types in types_of_item.items() if len(types) > 1) == truth["conflicting_items"]
    conflicting = sorted(image for image, types in types_of_image.items() if len(types) > 1)
    assert conflicting == truth["conflicting_images"]
    assert set(conflicting) - set(truth["boilerplate_images"])  # a conflict the over-sharing cut does not remove


# --- images ----------------------------------------------------------------------


def test_damaged_and_missing_images(folder):
    truth, bad = folder["truth"], folder["truth"]["bad_images"]
    referenced = {image_id for record in _records(folder) for image_id in _image_ids(record)}
    for kind in ("truncated", "empty", "not_an_image", "too_large"):
        assert bad[kind] and set(bad[kind]) <= referenced, kind
    for image_id in bad["truncated"]:
        data = _file_of(folder, image_id)
        start_of_scan = data.find(b"\xff\xda")
        assert data.startswith(b"\xff\xd8") and 0 < start_of_scan < len(data) - 100  # cut inside the scan
        assert data.find(b"\xff\xd9", start_of_scan) < 0  # no end-of-image marker
    assert all(_file_of(folder, image_id) == b"" for image_id in bad["empty"])
    for image_id in bad["not_an_image"]:
        data = _file_of(folder, image_id)
        assert data and not data.startswith((b"\xff\xd8", PNG_MAGIC))
    for image_id in bad["too_large"]:
        assert _jpeg_frame(_file_of(folder, image_id))[:2] == (sample.BOMB_SIDE, sample.BOMB_SIDE)
    assert truth["missing_from_archive"] and set(truth["missing_from_archive"]) <= referenced
    for image_id in truth["missing_from_archive"]:
        assert image_id in folder["rows"] and _file_of(folder, image_id) is None
    mains = {record.get("main_image_id") for record in _records(folder)}
    assert truth["missing_from_csv"] and set(truth["missing_from_csv"]) <= mains
    assert not set(truth["missing_from_csv"]) & set(folder["rows"])


def test_images_that_need_reencoding(folder):
    reencode = folder["truth"]["reencode_images"]
    assert reencode["png"] and reencode["grayscale"] and reencode["cmyk"]
    for image_id in reencode["png"]:
        assert _file_of(folder, image_id).startswith(PNG_MAGIC) and folder["rows"][image_id][3].endswith(".png")
    transparent = folder["truth"]["transparent_png"]
    assert transparent and set(transparent) <= set(reencode["png"])
    for image_id in transparent:
        pixels = cv2.imdecode(np.frombuffer(_file_of(folder, image_id), np.uint8), cv2.IMREAD_UNCHANGED)
        assert pixels.shape[2] == 4 and pixels[:, :, 3].min() == 0 and pixels[:, :, 3].max() == 255
    assert all(_jpeg_frame(_file_of(folder, image_id))[2] == 1 for image_id in reencode["grayscale"])
    assert all(_jpeg_frame(_file_of(folder, image_id))[2] == 4 for image_id in reencode["cmyk"])


def test_good_images_decode_small_and_csv_gives_the_original_size(folder):
    truth = folder["truth"]
    damaged = set(truth["missing_from_archive"]).union(*truth["bad_images"].values())
    ids = [image_id for image_id in folder["rows"] if image_id not in damaged]
    assert any("+" in image_id for image_id in folder["rows"]) and any("-" in image_id for image_id in folder["rows"])
    for image_id in ids:
        _, height, width, _ = folder["rows"][image_id]
        pixels = cv2.imdecode(np.frombuffer(_file_of(folder, image_id), np.uint8), cv2.IMREAD_UNCHANGED)
        assert pixels is not None, image_id
        small_height, small_width = pixels.shape[:2]
        assert MAX_SIDE // 2 <= max(small_height, small_width) <= MAX_SIDE
        scale = int(height) // small_height
        assert scale in ORIGINAL_SCALES and (int(height), int(width)) == (small_height * scale, small_width * scale)
    assert 2.3 < truth["num_images"] / LISTINGS < 3.2


def test_types_look_different(folder):
    """Nearest centroid on a hue histogram of the coloured pixels tells the types apart."""
    features, labels = [], []
    for record in _records(folder):
        main = record.get("main_image_id")
        data = _file_of(folder, main) if main in folder["rows"] else None
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
        if pixels is None or len(set(np.unique(pixels[:, :, 0]))) < 3:
            continue
        hsv = cv2.cvtColor(pixels, cv2.COLOR_BGR2HSV)
        coloured = hsv[hsv[:, :, 1] > 80]
        features.append(np.histogram(coloured[:, 0], bins=36, range=(0, 180))[0] / max(1, len(coloured)))
        labels.append(_normalise(record["product_type"]))
    features, labels = np.array(features), np.array(labels)
    train, test = np.arange(len(labels)) % 2 == 0, np.arange(len(labels)) % 2 == 1
    classes = [name for name in set(labels[train]) if name in set(labels[test])]
    centroids = np.array([features[train & (labels == name)].mean(axis=0) for name in classes])
    keep = test & np.isin(labels, classes)
    predicted = np.array(classes)[np.argmin(((features[keep][:, None] - centroids[None]) ** 2).sum(-1), axis=1)]
    assert len(classes) >= 8 and (predicted == labels[keep]).mean() > 0.9


def test_more_types_have_looks_of_their_own_and_a_long_tail(tmp_path):
    assert [sample.product_type(index) for index in range(16)] == list(sample.PRODUCT_TYPES)
    looks = [sample.product_type(index)[1:4] for index in range(sample.max_types())]
    assert len(set(looks)) == len(looks) >= 576
    output, truth_path = tmp_path / "abo", tmp_path / "truth.json"
    arguments = [str(output), "--listings", "400", "--types", "40", "--max-side", "32", "--truth", str(truth_path)]
    assert sample_command.main(arguments) == 0
    counts = json.loads(truth_path.read_text())["listings_per_type"]
    assert len(counts) == 40 and counts["CELLULAR_PHONE_CASE"] == 208
    assert min(counts[sample.product_type(index)[0]] for index in range(16, 40)) >= sample.EXTRA_MIN_LISTINGS
    data = _read_sample(str(output))
    checked = 0
    for record in _records(data):
        name = _normalise(record["product_type"])
        if not name.startswith("PRODUCT_TYPE_") or "main_image_id" not in record:
            continue
        pixels = cv2.imdecode(np.frombuffer(_file_of(data, record["main_image_id"]), np.uint8), cv2.IMREAD_COLOR)
        hsv = cv2.cvtColor(pixels, cv2.COLOR_BGR2HSV)
        hues = hsv[hsv[:, :, 1] > 80][:, 0].astype(int)
        expected = sample.product_type(int(name.rsplit("_", 1)[1]))[2]
        offset = (np.median((hues - expected + 90) % 180) - 90).item()  # circular: hue 0 is hue 180
        assert abs(offset) <= 6, (name, offset)  # the renderer's jitter is +-3
        checked += 1
    assert checked >= 100


@pytest.mark.parametrize("types", ["15", str(sample.max_types() + 1)])
def test_types_out_of_range_are_one_line_errors(tmp_path, capsys, types):
    assert sample_command.main([str(tmp_path / "abo"), "--types", types]) == 2
    assert "--types" in capsys.readouterr().err and not (tmp_path / "abo").exists()


def test_default_size_images_weigh_like_abo(tmp_path):
    truth = sample.generate_sample(str(tmp_path / "abo"), num_listings=100, seed=3)
    sizes = [
        len(data)
        for path, data in _all_files(str(tmp_path / "abo")).items()
        if path.endswith(".jpg") and len(data) > 1000
    ]
    assert 4_000 < sum(sizes) / len(sizes) < 15_000
    assert truth["num_images"] > 250


# --- arguments and CLI -----------------------------------------------------------


@pytest.mark.parametrize(
    "arguments, expected",
    [
        ({"num_listings": 99}, "--listings 99"),
        ({"max_side": 31}, "--max-side 31"),
        ({"seed": -1}, "--seed -1"),
        ({"workers": 0}, "--workers 0"),
    ],
)
def test_bad_arguments_are_refused(tmp_path, arguments, expected):
    with pytest.raises(UserInputError, match=expected):
        sample.generate_sample(str(tmp_path / "new"), **arguments)
    assert not (tmp_path / "new").exists()


def test_cli_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit) as caught:
        sample_command.main(["--help"])
    assert caught.value.code == 0
    help_text = capsys.readouterr().out
    assert "OUT_DIR" in help_text and "300" in help_text and "256" in help_text


@pytest.mark.parametrize(
    "arguments, expected",
    [
        (["{busy}"], "not empty"),
        (["{new}", "--listings", "5"], "--listings 5"),
        (["{busy}/notes.txt"], "is a file"),
        (["{new}", "--truth", "{busy}"], "--truth '{busy}' is a folder"),
        ([""], "output '' is no folder name"),
    ],
)
def test_cli_errors_are_one_line_exit_2(tmp_path, capsys, arguments, expected):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    arguments = [argument.format(busy=busy, new=tmp_path / "new") for argument in arguments]
    assert sample_command.main(arguments) == 2
    error = capsys.readouterr().err.strip()
    assert expected.format(busy=busy) in error and len(error.splitlines()) == 1, error
    assert os.listdir(busy) == ["notes.txt"] and not (tmp_path / "new").exists()


def test_cli_writes_only_the_abo_files_and_the_truth_where_asked(tmp_path, capsys):
    output, truth = tmp_path / "abo", tmp_path / "truth.json"
    arguments = [str(output), "--listings", "100", "--max-side", "32", "--seed", "7", "--tar", "--truth", str(truth)]
    assert sample_command.main(arguments) == 0
    assert "100 listings" in capsys.readouterr().out
    assert sorted(os.listdir(output)) == ["abo-images-small.tar", "abo-listings.tar"]
    planted = json.loads(truth.read_text())
    assert planted["num_listings"] == 100 and planted["listing_flips"] and planted["label_flips"]
