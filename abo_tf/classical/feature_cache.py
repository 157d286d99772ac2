"""The feature cache: a folder per (records, features) pair, a subfolder per split, each written whole or not at all."""

# A split folder holds features.npy (float32 [N, D], read back memory-mapped,
# so a large split is paged in rather than copied), labels.npy, image_ids.npy,
# item_ids.npy (the bootstrap's unit) and info.json. The pair's folder is named by a hash of the records'
# fingerprint and shards, the feature kind, the model's identity and the image
# size: a second call reuses it, rebuilt records or another model get a new one.

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
from typing import NamedTuple

import numpy as np

from abo_tf.classical import feature_spec
from abo_tf.common import console, files
from abo_tf.common.errors import UserInputError

DEFAULT_CACHE_DIR = "features"
# Bump when a descriptor or the folder's files change: it is part of every cache key.
# 2: item_ids.npy, for intervals by item.
FEATURES_VERSION = 2
FEATURES_FILE, LABELS_FILE, IMAGE_IDS_FILE = "features.npy", "labels.npy", "image_ids.npy"
ITEM_IDS_FILE = "item_ids.npy"
_ARRAY_FILES = (FEATURES_FILE, LABELS_FILE, IMAGE_IDS_FILE, ITEM_IDS_FILE)
METADATA = "info.json"


class FeatureBatch(NamedTuple):
    """The features of a batch of images, with the labels, image ids and item ids of the same rows."""

    features: np.ndarray  # float32 [B, D]
    labels: np.ndarray  # int [B]
    image_ids: np.ndarray  # bytes [B], as the records hold them
    item_ids: np.ndarray  # bytes [B]


def cache_key(manifest, spec):
    """Hex key of the features of `spec` on a build: records fingerprint, kind, model, image size.

    Args:
      manifest: the records' manifest.json.
      spec: a resolved `FeatureSpec`.
    """
    identity = {
        "version": FEATURES_VERSION,
        "records": manifest["fingerprint"],
        "classes": manifest["classes"],
        "shards": {
            name: [shard["sha256"] for shard in entry["shards"]] for name, entry in sorted(manifest["splits"].items())
        },
        "kind": spec.kind,
        "model": feature_spec.model_identity(spec),
        "image_size": spec.image_size,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def cache_folder(cache_dir, manifest, spec):
    """The folder holding the splits of one (records, spec) pair."""
    return os.path.join(cache_dir, f"{spec.name}-{cache_key(manifest, spec)[:16]}")


@dataclasses.dataclass
class SplitFeatures:
    """The features of one split, as read from the cache."""

    split: str
    features: np.ndarray  # float32 [N, D], memory-mapped
    labels: np.ndarray  # int32 [N]
    image_ids: np.ndarray  # str [N]
    item_ids: np.ndarray  # str [N], the item of each image (schema.ITEM_ID): the bootstrap's unit
    classes: list  # the records' vocabulary: label i is classes[i]
    groups: dict  # group name -> [start, end) columns; {"cnn": [0, D]} for embeddings
    info: dict  # the cache's info.json: spec, key, seconds, images_per_second
    path: str
    cached: bool = False  # True when an earlier call computed it


def _damaged(path, problem):
    return UserInputError(f"feature cache {path!r} {problem}: delete the folder and extract again")


def _read_split_files(path):
    """(features memory-mapped, labels, image ids, item ids, info) of a split folder."""
    missing = [name for name in (*_ARRAY_FILES, METADATA) if not os.path.isfile(os.path.join(path, name))]
    if missing:
        raise _damaged(path, f"is empty or incomplete (missing {missing})")
    info = files.read_json(os.path.join(path, METADATA), what="feature cache info")
    if not isinstance(info, dict) or not {"classes", "groups"} <= set(info):
        raise _damaged(path, f"has no classes and groups in its {METADATA}")
    try:
        arrays = [
            np.load(os.path.join(path, name), mmap_mode="r" if name == FEATURES_FILE else None) for name in _ARRAY_FILES
        ]
    except (ValueError, OSError) as error:
        raise _damaged(path, f"cannot be read ({error})") from error
    return (*arrays, info)


def load_features(path, split=None):
    """Reads one split's cache folder, checking it is complete.

    Args:
      path: a split folder written by `extraction.extract_features`.
      split: the split's name, default the folder's.

    Returns:
      A `SplitFeatures`, features memory-mapped.

    Raises:
      UserInputError: the folder is missing files, empty, or its arrays disagree.
    """
    features, labels, image_ids, item_ids, info = _read_split_files(path)
    if features.ndim != 2 or len(features) == 0 or features.shape[1] == 0:
        raise _damaged(path, f"holds no features (shape {features.shape})")
    if not len(labels) == len(image_ids) == len(item_ids) == len(features):
        raise _damaged(
            path,
            f"holds {len(features)} feature rows, {len(labels)} labels, {len(image_ids)} image ids, "
            f"{len(item_ids)} item ids",
        )
    return SplitFeatures(
        split or os.path.basename(path),
        features,
        labels,
        image_ids,
        item_ids,
        info["classes"],
        info["groups"],
        info,
        path,
    )


@contextlib.contextmanager
def writing_split(final):
    """Yields a temporary folder next to `final` that becomes `final` when the block completes.

    A block that raises (an error, Ctrl-C) leaves no half-written split behind.
    """
    temporary = f"{final}.tmp-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    os.makedirs(temporary)
    try:
        yield temporary
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    shutil.rmtree(final, ignore_errors=True)
    os.replace(temporary, final)


class WrittenRows(NamedTuple):
    """What `write_rows` wrote."""

    rows: int
    width: int  # feature columns; 0 when no row came


def _features_file(folder, num_examples, width):
    """features.npy, memory-mapped for writing: rows go to disk as they come, never all in memory."""
    path = os.path.join(folder, FEATURES_FILE)
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(num_examples, width))


def write_rows(feature_batches, folder, num_examples, description=None):
    """Writes `FeatureBatch`es into `folder`'s arrays, row by row, never holding the split in memory.

    Args:
      feature_batches: iterable of `FeatureBatch`.
      folder: the split folder being written (see `writing_split`).
      num_examples: the rows the split should have (the manifest's count).
      description: the progress bar's label; None for no bar.

    Returns:
      `WrittenRows`.

    Raises:
      UserInputError: more rows came than `num_examples`.
    """
    features, labels, ids, items, position = None, np.zeros(num_examples, np.int32), [], [], 0
    with console.progress_bar(total=num_examples, desc=description, unit="img", enabled=description is not None) as bar:
        for batch in feature_batches:
            if features is None:  # the width is known from the first batch
                features = _features_file(folder, num_examples, batch.features.shape[1])
            end = position + len(batch.features)
            if end > num_examples:
                raise UserInputError(
                    f"{folder}: the records hold more examples than their manifest says ({num_examples}): "
                    "rebuild or verify them"
                )
            features[position:end], labels[position:end] = batch.features, batch.labels
            ids += [value.decode("utf-8") for value in batch.image_ids]
            items += [value.decode("utf-8") for value in batch.item_ids]
            position = end
            bar.update(len(batch.features))
    width = 0 if features is None else int(features.shape[1])
    if features is not None:
        features.flush()
        del features
    np.save(os.path.join(folder, LABELS_FILE), labels[:position])
    np.save(os.path.join(folder, IMAGE_IDS_FILE), np.array(ids, dtype=str))
    np.save(os.path.join(folder, ITEM_IDS_FILE), np.array(items, dtype=str))
    return WrittenRows(position, width)


def write_info(folder, info):
    """Writes a split's info.json (what was extracted, how, and how fast)."""
    files.write_json(os.path.join(folder, METADATA), info)
