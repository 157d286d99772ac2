"""Leakage-adjusted scores: which evaluated images have a near-duplicate in train, per an audit's pair file.

`evaluate --exclude` and `baselines --exclude` score the test images that have none beside the plain scores:
the gap is how much near-duplicates of training photos inflate the test score.
"""

import csv
import os

import numpy as np

from abo_tf.common.errors import InputNotFoundError, UserInputError

PAIRS_FILE = "near_duplicates.csv"  # abo_tf.auditing.audit.PAIRS_FILE, without importing the audit's dependencies
_COLUMNS = ("image_id_a", "split_a", "image_id_b", "split_b")
TRAIN = "train"


def leaked_ids(path, split, flag="--exclude"):
    """Ids of the `split` images that have a near-duplicate in train, from near_duplicates.csv or its folder.

    Raises:
      UserInputError: no such file, not an audit's pair file, or `split` is train.
    """
    if split == TRAIN:
        raise UserInputError(f"{flag} removes the images with a near-duplicate in train: evaluate another split")
    path = os.path.join(path, PAIRS_FILE) if os.path.isdir(path) else path
    if not os.path.isfile(path):
        raise InputNotFoundError(
            f"{flag} {path!r} does not exist: give the {PAIRS_FILE} of `python -m abo_tf.audit` or its --report folder"
        )
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in _COLUMNS if column not in (reader.fieldnames or ())]
        if missing:
            raise UserInputError(
                f"{flag} {path!r} has no {missing[0]} column: give the {PAIRS_FILE} of `python -m abo_tf.audit`"
            )
        found = set()
        for row in reader:
            for own, other in (("a", "b"), ("b", "a")):
                if row[f"split_{own}"] == split and row[f"split_{other}"] == TRAIN:
                    found.add(row[f"image_id_{own}"])
    return found


def kept_mask(image_ids, leaked, split, flag="--exclude"):
    """Boolean mask of the images to score (no near-duplicate in train).

    Raises:
      UserInputError: the file names `split` images these records do not have: it is another build's.
    """
    image_ids = np.asarray(image_ids).astype(str)
    unknown = sorted(leaked - set(image_ids.tolist()))
    if unknown:
        raise UserInputError(
            f"{flag}: {len(unknown)} of its {split} images (e.g. {unknown[0]!r}) are not in these "
            "records' split: give the pair file of an audit of these records"
        )
    return ~np.isin(image_ids, sorted(leaked))
