"""Leakage-adjusted scores: which evaluated images share a near-duplicate group with a train image.

`evaluate --exclude` and `baselines --exclude` score the test images that do not beside the plain scores: the gap
is how much near-duplicates of training photos inflate the test score. A group is what `build_records
--join-near-duplicates` keeps in one split, so the images excluded are those a joined rebuild would move.
"""

import numpy as np

from abo_tf.common import id_files
from abo_tf.common.errors import UserInputError

GROUPS_FILE = "near_duplicate_groups.csv"  # written by abo_tf.auditing.audit, read without its dependencies
GROUP_COLUMNS = ("group", "image_id", "split", "product_type")
TRAIN = "train"


def leaked_ids(path, split, flag="--exclude"):
    """Ids of the `split` images in a near-duplicate group with a train image, from the audit's groups file.

    Raises:
      UserInputError: no such file, not an audit's groups file (one line naming the row), or `split` is train.
    """
    if split == TRAIN:
        raise UserInputError(f"{flag} removes the images with a near-duplicate in train: evaluate another split")
    rows = id_files.read_id_rows(path, flag, GROUP_COLUMNS[:3], GROUPS_FILE)
    with_train = {group for group, _, member_split in rows if member_split == TRAIN}
    return {image_id for group, image_id, member_split in rows if member_split == split and group in with_train}


def kept_mask(image_ids, leaked, split, flag="--exclude"):
    """Boolean mask of the images to score (no near-duplicate in train).

    Raises:
      UserInputError: the file names `split` images these records do not have (it is another build's), or it
        leaves no image to score.
    """
    image_ids = np.asarray(image_ids).astype(str)
    unknown = sorted(leaked - set(image_ids.tolist()))
    if unknown:
        raise UserInputError(
            f"{flag}: {len(unknown)} of its {split} images (e.g. {unknown[0]!r}) are not in these "
            "records' split: give the groups file of an audit of these records"
        )
    kept = ~np.isin(image_ids, sorted(leaked))
    if len(image_ids) and not kept.any():
        raise UserInputError(
            f"{flag} removes all {len(image_ids)} {split} images (each is in a near-duplicate group with a train "
            "image): no image is left to score; rebuild with --join-near-duplicates instead"
        )
    return kept
