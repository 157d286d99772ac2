"""Leakage-adjusted scores: which evaluated images have a near-duplicate in train, per an audit's pair file.

`evaluate --exclude` and `baselines --exclude` score the test images that have none beside the plain scores:
the gap is how much near-duplicates of training photos inflate the test score.
"""

import numpy as np

from abo_tf.common.errors import UserInputError
from abo_tf.records import build as records_build

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
    found = set()
    for image_a, split_a, image_b, split_b in records_build.read_id_rows(
        records_build.id_file_path(path, flag, PAIRS_FILE), flag, _COLUMNS
    ):
        for own, own_split, other_split in ((image_a, split_a, split_b), (image_b, split_b, split_a)):
            if own_split == split and other_split == TRAIN:
                found.add(own)
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
