"""build_records: output folder, hostile images, memory: exit 2 and one line, or a counted rejection."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

from abo_tf import build_records
from abo_tf.common import outputs
from abo_tf.records import archive, images, schema, shards
from abo_tf.records import build as records_build
from abo_tf.testing import measure
from tests import crafted_images as crafted

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A build of the 240-listing sample peaks at about 230 MB (parent and two workers);
# decoding the 630 KB PNG bomb below alone takes 1.3 GB.
BUILD_RSS_BUDGET = 600 * 2**20


def _snapshot(root, skip=None):
    """Relative path -> SHA-256 of every file under `root` (folders as None), leaving out `skip`."""
    found = {}
    for folder, names, files in os.walk(root):
        if skip and os.path.abspath(folder) == os.path.abspath(skip):
            names.clear()
            continue
        for name in names:
            found[os.path.relpath(os.path.join(folder, name), root)] = None
        for name in files:
            with open(os.path.join(folder, name), "rb") as handle:
                found[os.path.relpath(os.path.join(folder, name), root)] = hashlib.sha256(handle.read()).hexdigest()
    if skip:
        found.pop(os.path.relpath(skip, root), None)
    return found


def _run_cli(capsys, abo, output, *extra):
    args = [
        "--listings",
        abo["listings"],
        "--images",
        abo["images"],
        "--output",
        str(output),
        "--image-selection",
        "all",
        "--min-examples-per-class",
        "3",
        "--no-progress",
        *extra,
    ]
    code = build_records.main(args)
    captured = capsys.readouterr()
    return code, captured.err.strip()


@pytest.fixture
def no_scan(monkeypatch):
    """Fails the test if the build gets as far as reading the images archive."""

    def fail(*args, **kwargs):
        raise AssertionError("the build read the archive before refusing --output")

    monkeypatch.setattr(records_build.archive, "open_images", fail)


# --- the output folder -------------------------------------------------------


def _foreign_manifest(folder):
    folder.mkdir()
    (folder / shards.MANIFEST).write_text(json.dumps({"title": "my photo album", "pages": 12}))
    (folder / "photo.jpg").write_bytes(b"not yours")


def _not_json_manifest(folder):
    folder.mkdir()
    (folder / shards.MANIFEST).write_text("{half a manifest")


def _other_commands_folder(folder):
    folder.mkdir()
    (folder / outputs.MARKER).write_text(json.dumps({"command": "train"}))
    (folder / "model.keras").write_bytes(b"weights")


def _a_file(folder):
    folder.write_text("a file, not a folder")


def _user_files_in_a_state_folder(folder):
    (folder / records_build.STATE_DIR).mkdir(parents=True)
    (folder / records_build.STATE_DIR / "user.txt").write_text("mine")


@pytest.mark.parametrize(
    "make, output_name, expected",
    [
        (_foreign_manifest, "album", "is not empty and was not written by `abo_tf.build_records`"),
        (_not_json_manifest, "half", "is not a valid JSON build manifest"),
        (_other_commands_folder, "run", "holds the output of `abo_tf.train`"),
        (_a_file, "file.txt", "is a file: choose a folder"),
        (_a_file, "file.txt/records", "Not a directory"),
        (_user_files_in_a_state_folder, "state", "is not empty and was not written by `abo_tf.build_records`"),
    ],
    ids=["foreign-manifest", "manifest-not-json", "another-command", "a-file", "under-a-file", "user-files-in-.build"],
)
def test_unusable_output_is_refused_before_the_scan_and_left_as_it_was(
    make, output_name, expected, abo_sample, tmp_path, capsys, no_scan
):
    target = tmp_path / output_name.split("/")[0]
    make(target)
    before = _snapshot(tmp_path)
    code, error = _run_cli(capsys, abo_sample, tmp_path / output_name, "--overwrite")
    assert code == 2 and expected in error and len(error.splitlines()) == 1, error
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("output", ["/proc/abo_records", "/proc/self/abo_records"])
def test_output_under_proc_is_refused_before_the_scan(output, abo_sample, capsys, no_scan):
    code, error = _run_cli(capsys, abo_sample, output)
    assert code == 2 and f"cannot create --output {output!r}" in error and len(error.splitlines()) == 1, error


def test_overwrite_deletes_only_what_a_build_wrote(built_records, abo_sample, tmp_path, capsys):
    records_dir, _ = built_records
    copy = tmp_path / "copy"
    shutil.copytree(records_dir, copy)
    (copy / "notes.txt").write_text("mine")
    before = _snapshot(tmp_path)
    code, error = _run_cli(capsys, abo_sample, copy, "--min-examples-per-class", "5", "--overwrite")
    assert code == 2 and "'notes.txt', which build_records did not write" in error and len(error.splitlines()) == 1
    assert _snapshot(tmp_path) == before  # nothing deleted, not even the build's own files
    (copy / "notes.txt").unlink()
    code, _ = _run_cli(capsys, abo_sample, copy, "--min-examples-per-class", "5", "--overwrite")
    assert code == 0
    assert json.loads((copy / shards.MANIFEST).read_text())["options"]["min_examples_per_class"] == 5
    assert not [name for name in outputs.contents(str(copy)) if not records_build._is_build_file(name)]


def test_build_from_before_markers_is_adopted(built_records, abo_sample, tmp_path, capsys):
    records_dir, _ = built_records
    legacy = tmp_path / "legacy"
    shutil.copytree(records_dir, legacy)
    for name in (outputs.MARKER, outputs.LOCK):
        (legacy / name).unlink(missing_ok=True)
    before = _snapshot(legacy)
    code, _ = _run_cli(capsys, abo_sample, legacy)  # the same build: finished, nothing rewritten
    assert code == 0
    after = {name: digest for name, digest in _snapshot(legacy).items() if name not in (outputs.MARKER, outputs.LOCK)}
    assert after == before


def test_failed_build_leaves_no_folder_behind(abo_sample, tmp_path, capsys):
    code, error = _run_cli(capsys, abo_sample, tmp_path / "new", "--min-examples-per-class", "100000")
    assert code == 2 and "class(es) have at least" in error
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_two_builds_racing_for_one_folder(abo_sample, tmp_path):
    output = tmp_path / "raced"
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
    racers = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO) for _ in range(2)
    ]
    outcomes = sorted((racer.wait(), racer.stderr.read().strip()) for racer in racers)
    for racer in racers:
        racer.stdout.close()
        racer.stderr.close()
    assert [code for code, _ in outcomes] == [0, 2], outcomes
    loser_error = outcomes[1][1]
    assert "is being written by another abo_tf process" in loser_error and len(loser_error.splitlines()) == 1
    assert shards.verify_records(str(output), progress=False)


# --- no TensorFlow in the build ----------------------------------------------


@pytest.mark.slow
def test_build_and_verify_never_import_tensorflow(abo_folder_sample, tmp_path):
    script = f"""
import sys
from abo_tf.records import build as records_build
from abo_tf.records import shards
from tests.conftest import build_options
root = {abo_folder_sample["root"]!r}
records_build.build(build_options({{"listings": root, "images": root}}, {str(tmp_path / "out")!r}))
shards.verify_records({str(tmp_path / "out")!r}, progress=False)
assert "tensorflow" not in sys.modules, sorted(name for name in sys.modules if name.startswith("tensorflow"))
"""
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=False)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert (tmp_path / "out" / shards.MANIFEST).is_file()


# --- hostile images: counted as rejected, within a memory budget -------------


def _run_measured(command):
    return measure.run_measured(command, cwd=REPO)


@pytest.fixture(scope="module")
def copied_images(built_records, abo_folder_sample):
    """Relative paths (under images/small/) of images the sample build stored as they are, in a fixed order."""
    import tensorflow as tf

    records_dir, manifest = built_records
    stored_as_is = []
    for record in tf.data.TFRecordDataset(shards.shard_paths(records_dir, manifest, "train")).take(50):
        parsed = shards.parse_record(record.numpy())
        if hashlib.sha256(parsed[schema.IMAGE]).hexdigest() == parsed[schema.IMAGE_SHA256].decode():
            stored_as_is.append(parsed[schema.IMAGE_ID].decode())
    rows = archive.open_images(abo_folder_sample["root"]).rows
    return [rows[image_id].path for image_id in stored_as_is]


# Each makes the `number`th hostile file of its kind; files differ, so none is a duplicate of another.


def _png_bomb(number):
    return crafted.png_of_zeros(9000 - number, 9000, 16, 6)  # 630 KB, 648 MB decoded


def _undefined_quantisation_table(number):
    return crafted.patched(crafted.jpeg(seed=number), (crafted.SOF, crafted.CR_TABLE, 3))


def _bogus_sampling(number):
    return crafted.patched(crafted.jpeg(seed=number), (crafted.SOF, crafted.Y_SAMPLING, 0x51))


def _standard_huffman_tables(number):
    return crafted.without_segments(crafted.jpeg(seed=number), crafted.DHT)


@pytest.mark.slow
@pytest.mark.parametrize(
    "make, reason",
    [
        (_png_bomb, images.TOO_LARGE),
        (_undefined_quantisation_table, images.UNDECODABLE),
        (_bogus_sampling, images.UNDECODABLE),
        (_standard_huffman_tables, None),  # decodable, but not vouched for: re-encoded
    ],
    ids=["png-bomb", "undefined-dqt", "bogus-sampling", "standard-huffman-tables"],
)
def test_hostile_image_is_counted_and_never_reaches_training(
    make, reason, abo_folder_sample, built_records, copied_images, tmp_path
):
    import tensorflow as tf

    _, baseline = built_records
    root = tmp_path / "abo"
    shutil.copytree(abo_folder_sample["root"], root)
    victims = copied_images[:2]
    for number, path in enumerate(victims):
        (root / "images" / "small" / path).write_bytes(make(number))
    before = _snapshot(tmp_path, skip=tmp_path / "out")
    command = [
        sys.executable,
        "-m",
        "abo_tf.build_records",
        "--listings",
        str(root),
        "--images",
        str(root),
        "--output",
        str(tmp_path / "out"),
        "--image-selection",
        "all",
        "--min-examples-per-class",
        "3",
        "--no-progress",
        "--workers",
        "2",
    ]
    code, stdout, stderr, peak = _run_measured(command)
    assert code == 0, stderr
    assert peak < BUILD_RSS_BUDGET, f"peak RSS {peak / 2**20:.0f} MB"
    assert _snapshot(tmp_path, skip=tmp_path / "out") == before
    manifest = shards.read_manifest(str(tmp_path / "out"))
    dropped, expected_dropped = manifest["images"]["dropped"], dict(baseline["images"]["dropped"])
    if reason is None:
        assert manifest["images"]["reencoded"] == baseline["images"]["reencoded"] + len(victims)
    else:
        expected_dropped[reason] = expected_dropped.get(reason, 0) + len(victims)
        assert f"{reason} {expected_dropped[reason]}" in stdout
    assert dropped == expected_dropped
    # Every stored image decodes with TensorFlow's own decoder, as training will decode it.
    for split in manifest["splits"]:
        for record in tf.data.TFRecordDataset(shards.shard_paths(str(tmp_path / "out"), manifest, split)):
            parsed = tf.io.parse_single_example(record, schema.feature_spec())
            decoded = tf.io.decode_jpeg(parsed[schema.IMAGE], channels=3)
            assert decoded.shape[:2] == (parsed[schema.HEIGHT], parsed[schema.WIDTH])
