"""Damaged records, and manifests that do not match their shards: one-line errors naming the shard (train, evaluate).

Each case copies the session's build, breaks one thing, and runs the command
as a user would; the error must name the shard (or the manifest's problem) and
point at `build_records --verify`, not show a TensorFlow traceback.
"""

import json
import os
import shutil

import pytest

from abo_tf import evaluate, train
from abo_tf.records import shards
from abo_tf.training import input_pipeline
from tests.conftest import TINY_TRAIN_ARGS

VERIFY = "python -m abo_tf.build_records --verify"


def _copy(built_records, tmp_path):
    records_dir, manifest = built_records
    copy = str(tmp_path / "records")
    shutil.copytree(records_dir, copy)
    return copy, json.loads(json.dumps(manifest))


def _shard(records, manifest, split, index=0):
    return os.path.join(records, manifest["splits"][split]["shards"][index]["file"])


def _flip_a_byte(path):
    """Flips one bit in the middle of the file, inside some record's image: the size stays, the CRC breaks."""
    with open(path, "r+b") as handle:
        handle.seek(os.path.getsize(path) // 2)
        value = handle.read(1)[0]
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([value ^ 0x10]))


def _write_manifest(records, manifest):
    with open(os.path.join(records, shards.MANIFEST), "w") as handle:
        json.dump(manifest, handle)


def _keep_first_class_only(records, manifest):
    """A manifest listing fewer classes than the records' labels use.

    Its counts stay consistent, so only reading the records finds it.
    """
    first = manifest["classes"][0]
    manifest["classes"] = [first]
    for entry in manifest["splits"].values():
        for key in ("per_class", "groups_per_class"):
            entry[key] = {name: count for name, count in entry.get(key, {}).items() if name == first}
    _write_manifest(records, manifest)


def _train(records, tmp_path, capsys):
    code = train.main(
        [
            "--records",
            records,
            "--output",
            str(tmp_path / "run"),
            *TINY_TRAIN_ARGS,
            "--epochs",
            "1",
            "--head-epochs",
            "0",
        ]
    )
    return code, capsys.readouterr().err.strip()


def _evaluate(model, records, tmp_path, capsys):
    code = evaluate.main(
        [
            "--model",
            model,
            "--records",
            records,
            "--report",
            str(tmp_path / "report"),
            "--gradcam-examples",
            "0",
            "--no-progress",
        ]
    )
    return code, capsys.readouterr().err.strip()


def _assert_one_line(code, error, *expected):
    assert code == 2, error
    assert error.startswith("error: ") and len(error.splitlines()) == 1, error
    for text in expected:
        assert text in error, (text, error)
    assert "Traceback" not in error and "{{function_node" not in error


# --- train ------------------------------------------------------------------------


@pytest.mark.slow
def test_train_names_a_shard_with_a_flipped_byte(built_records, tmp_path, capsys):
    records, manifest = _copy(built_records, tmp_path)
    shard = _shard(records, manifest, "train")
    _flip_a_byte(shard)
    _assert_one_line(*_train(records, tmp_path, capsys), shard, "bad data CRC", VERIFY)


def test_train_names_a_missing_shard_before_starting(built_records, tmp_path, capsys):
    records, manifest = _copy(built_records, tmp_path)
    shard = _shard(records, manifest, "validation")
    os.remove(shard)
    _assert_one_line(*_train(records, tmp_path, capsys), f"shard {shard} of split 'validation' is missing", VERIFY)
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before the model was built


def test_train_names_a_truncated_shard_from_its_size(built_records, tmp_path, capsys):
    records, manifest = _copy(built_records, tmp_path)
    shard = _shard(records, manifest, "train")
    size = os.path.getsize(shard)
    os.truncate(shard, size - 100)
    _assert_one_line(
        *_train(records, tmp_path, capsys), f"shard {shard} has {size - 100} bytes, the manifest says {size}", VERIFY
    )


@pytest.mark.slow
def test_train_refuses_labels_beyond_the_manifests_classes(built_records, tmp_path, capsys):
    records, manifest = _copy(built_records, tmp_path)
    _keep_first_class_only(records, manifest)
    _assert_one_line(
        *_train(records, tmp_path, capsys), "has a record of label", "the manifest lists 1 classes", VERIFY
    )


@pytest.mark.parametrize(
    "breakage,expected",
    [
        (
            lambda manifest: manifest["splits"]["validation"].pop("shards"),
            "split 'validation' has no shard list or example count",
        ),
        (
            lambda manifest: manifest.update(classes=manifest["classes"][1:]),
            "counts classes the build does not have",
        ),
        (lambda manifest: manifest["splits"]["train"]["shards"][0].update(num_examples=1), "do not add up"),
        (lambda manifest: manifest.update(classes=[]), "its classes are not a list of names"),
        (lambda manifest: manifest.pop("fingerprint"), "it has no fingerprint"),  # baselines: KeyError
        (lambda manifest: manifest.update(fingerprint=5), "it has no fingerprint"),
    ],
)
def test_train_refuses_a_manifest_that_does_not_match_its_shards(built_records, tmp_path, capsys, breakage, expected):
    records, manifest = _copy(built_records, tmp_path)
    breakage(manifest)
    _write_manifest(records, manifest)
    _assert_one_line(*_train(records, tmp_path, capsys), expected, VERIFY)


# --- evaluate -----------------------------------------------------------------------


@pytest.mark.slow
def test_evaluate_names_a_shard_with_a_flipped_byte(trained_run, built_records, tmp_path, capsys):
    records, manifest = _copy(built_records, tmp_path)
    shard = _shard(records, manifest, "test")
    _flip_a_byte(shard)
    _assert_one_line(
        *_evaluate(os.path.join(trained_run, "saved_model"), records, tmp_path, capsys), shard, "bad data CRC", VERIFY
    )


def test_evaluate_names_a_missing_shard(trained_run, built_records, tmp_path, capsys):
    records, manifest = _copy(built_records, tmp_path)
    shard = _shard(records, manifest, "test")
    os.remove(shard)
    _assert_one_line(
        *_evaluate(os.path.join(trained_run, "saved_model"), records, tmp_path, capsys),
        f"shard {shard} of split 'test' is missing",
    )


def test_evaluate_refuses_labels_beyond_the_manifests_classes(trained_run, built_records, tmp_path, capsys):
    records, manifest = _copy(built_records, tmp_path)
    _keep_first_class_only(records, manifest)
    _assert_one_line(
        *_evaluate(os.path.join(trained_run, "saved_model"), records, tmp_path, capsys), "has a record of label", VERIFY
    )


# --- the library functions ----------------------------------------------------------


def test_sound_records_pass_both_checks(built_records):
    records, manifest = built_records
    splits = list(manifest["splits"])
    input_pipeline.check_records(records, manifest, splits)
    assert input_pipeline.find_damaged_shard(records, manifest, splits) is None


def test_other_errors_pass_through_unchanged(built_records):
    import tensorflow as tf

    records, manifest = built_records
    with (
        pytest.raises(tf.errors.InvalidArgumentError, match="a bug, not the records"),
        input_pipeline.explain_read_errors(records, manifest, ["test"]),
    ):
        raise tf.errors.InvalidArgumentError(None, None, "a bug, not the records")
