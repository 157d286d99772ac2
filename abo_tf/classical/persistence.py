"""A baseline's model.skops and baseline.json: saved with the model's SHA-256, loaded only if unchanged and trusted."""

import json
import os
import zipfile

from abo_tf.common import files
from abo_tf.common.errors import InputNotFoundError, UserInputError
from abo_tf.records import shards

MODEL_FILE = "model.skops"
RESULT_FILE = "baseline.json"
# Types a model.skops may hold beyond those skops trusts by default (scikit-learn,
# NumPy, SciPy): the project's own estimators (a NearestCentroid whose fit streams, a LogisticRegression whose fit
# is chunked; loading them sets attributes, it runs none of their code). A file asking for any other type is refused.
TRUSTED_TYPES = ("abo_tf.classical.classifiers.ClassMeans", "abo_tf.classical.lbfgs.ChunkedLogisticRegression")


def save_model(pipeline, path):
    """Writes a fitted pipeline with skops (no pickle).

    Returns:
      The file's SHA-256, for baseline.json.
    """
    import skops.io

    dumped = f"{path}.tmp-{os.getpid()}"
    skops.io.dump(pipeline, dumped)
    _write_canonical(dumped, path)
    return shards.file_sha256(path)


_SCHEMA = "schema.json"
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest a zip entry can hold


def _renumber(node, ids, names):
    """Replaces, in place, skops' memory addresses (`__id__`, array files `<id>.npy`) by their order of use."""
    if isinstance(node, list):
        for item in node:
            _renumber(item, ids, names)
        return
    if not isinstance(node, dict):
        return
    if "__id__" in node:
        node["__id__"] = ids.setdefault(node["__id__"], len(ids) + 1)  # 0 would read as "no id" to skops
    if isinstance(node.get("file"), str):  # numpy's .npy, scipy's .npz
        node["file"] = names.setdefault(node["file"], f"{len(names)}{os.path.splitext(node['file'])[1]}")
    for value in node.values():
        _renumber(value, ids, names)


def _write_canonical(dumped, path):
    """Rewrites skops' zip with entries named by order and dated 1980: the same pipeline, the same bytes.

    skops names arrays and memoised objects by `id()`, a memory address, and dates entries with the clock,
    so two identical fits would otherwise differ in their file and in baseline.json's SHA-256.
    """
    with zipfile.ZipFile(dumped) as source:
        schema = json.loads(source.read(_SCHEMA))
        names = {}
        _renumber(schema, {}, names)
        if set(names) != set(source.namelist()) - {_SCHEMA}:  # a layout this does not know: kept as skops wrote it
            os.replace(dumped, path)
            return
        with zipfile.ZipFile(f"{path}.tmp-canonical", "w", zipfile.ZIP_STORED) as target:
            target.writestr(zipfile.ZipInfo(_SCHEMA, _FIXED_TIME), json.dumps(schema, indent=2))
            for old_name, new_name in names.items():
                target.writestr(zipfile.ZipInfo(new_name, _FIXED_TIME), source.read(old_name))
    os.remove(dumped)
    os.replace(f"{path}.tmp-canonical", path)


def write_record(folder, record):
    """Writes a baseline's baseline.json (search, choice, timings, the model's SHA-256)."""
    return files.write_json(os.path.join(folder, RESULT_FILE), record)


def read_record(folder):
    """The baseline.json of a baseline folder as a dict, or None when there is none.

    Raises:
      UserInputError: the file is not a JSON object.
    """
    path = os.path.join(folder, RESULT_FILE)
    record = files.read_json(path, what="baseline record")
    if record is not None and not isinstance(record, dict):
        raise UserInputError(
            f"{path!r} is not a baseline record (a JSON object): move it away or train the baseline again"
        )
    return record


def _untrusted_types(model_path):
    import skops.io

    try:
        return skops.io.get_untrusted_types(file=model_path)
    except Exception as error:  # skops raises assorted errors on a malformed archive
        raise UserInputError(f"{model_path} is not a readable skops file ({type(error).__name__}): retrain") from error


def load_model(folder):
    """Loads the pipeline of a baseline folder, refusing a changed file or unexpected types.

    The SHA-256 recorded in baseline.json at training time must match
    model.skops, and the file may hold no type outside skops' defaults and
    TRUSTED_TYPES: a file that would run arbitrary code is never loaded.

    Args:
      folder: a baseline folder (OUTPUT/<features>-<model>).

    Returns:
      The fitted `sklearn.pipeline.Pipeline`.

    Raises:
      InputNotFoundError: no baseline.json or model.skops in `folder`.
      UserInputError: the hash differs or the file asks for untrusted types.
    """
    import skops.io

    model_path = os.path.join(folder, MODEL_FILE)
    for path in (os.path.join(folder, RESULT_FILE), model_path):
        if not os.path.isfile(path):
            raise InputNotFoundError(f"{path} does not exist: give a folder written by `python -m abo_tf.baselines`")
    if shards.file_sha256(model_path) != (read_record(folder) or {}).get("model_sha256"):
        raise UserInputError(
            f"{model_path} does not match the SHA-256 recorded in {RESULT_FILE}: it changed after training; "
            "refusing to load it (retrain)"
        )
    untrusted = _untrusted_types(model_path)
    refused = sorted(set(untrusted) - set(TRUSTED_TYPES))
    if refused:
        raise UserInputError(f"{model_path} asks for untrusted types {refused}: refusing to load it")
    return skops.io.load(model_path, trusted=list(untrusted))
