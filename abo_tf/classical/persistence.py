"""A baseline's model.skops and baseline.json: saved with the model's SHA-256, loaded only if unchanged and trusted."""

import os

from abo_tf.common import files
from abo_tf.common.errors import InputNotFoundError, UserInputError
from abo_tf.records import shards

MODEL_FILE = "model.skops"
RESULT_FILE = "baseline.json"
# Types a model.skops may hold beyond those skops trusts by default (scikit-learn,
# NumPy, SciPy): none. A file asking for any other type is refused, never loaded.
TRUSTED_TYPES = ()


def save_model(pipeline, path):
    """Writes a fitted pipeline with skops (no pickle).

    Returns:
      The file's SHA-256, for baseline.json.
    """
    import skops.io

    skops.io.dump(pipeline, path)
    return shards.file_sha256(path)


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
