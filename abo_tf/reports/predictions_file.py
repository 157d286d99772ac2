"""test_predictions.csv: a model's test split image by image, for the paired comparisons.

The paired comparisons (CNN vs baselines, best trial vs default config) resample it. One row per image:
image_id, item_id (the bootstrap's unit), label and predicted (class names, so models with other label
orders still pair), top5_hit (1 when the label is among the 5 best scores). Rows in image_id order: the
same predictions give the same bytes.
"""

import os

import numpy as np

from abo_tf.common.errors import UserInputError

# No import of the bootstrap (nor of scikit-learn behind it) here: run_folder names this file, and every command
# that reads a run imports run_folder.

TEST_PREDICTIONS = "test_predictions.csv"
COLUMNS = ("image_id", "item_id", "label", "predicted", "top5_hit")


def write(folder, image_ids, item_ids, labels, predictions, top5_hits, class_names):
    """Writes FOLDER/test_predictions.csv (labels and predictions are indices into `class_names`); its path."""
    import pandas as pd

    names = np.array(list(class_names), dtype=object)
    frame = pd.DataFrame(
        {
            "image_id": np.asarray(image_ids, dtype=str),
            "item_id": np.asarray(item_ids, dtype=str),
            "label": names[np.asarray(labels)],
            "predicted": names[np.asarray(predictions)],
            "top5_hit": np.asarray(top5_hits).astype(np.int8),
        }
    )
    path = os.path.join(folder, TEST_PREDICTIONS)
    temporary = f"{path}.tmp-{os.getpid()}"
    frame.sort_values("image_id", kind="stable").to_csv(temporary, index=False)
    os.replace(temporary, path)
    return path


def read(folder):
    """FOLDER/test_predictions.csv as a DataFrame, or None when the folder has none (a run from before the file).

    Raises:
      UserInputError: the file lacks a column or cannot be read.
    """
    import pandas as pd

    path = os.path.join(folder, TEST_PREDICTIONS)
    if not os.path.isfile(path):
        return None
    try:
        frame = pd.read_csv(path, dtype={"image_id": str, "item_id": str, "label": str, "predicted": str})
    except (ValueError, OSError) as error:
        raise UserInputError(f"{path!r} cannot be read ({error}): move it away or write it again") from error
    missing = [column for column in COLUMNS if column not in frame.columns]
    if missing:
        raise UserInputError(f"{path!r} lacks the columns {missing}: move it away or write it again")
    # Checked here, not where they are used: any text in top5_hit became True (a hit) in the comparison.
    hits = pd.to_numeric(frame["top5_hit"], errors="coerce")
    broken = frame[list(COLUMNS[:4])].isna().any(axis=1) | ~hits.isin((0, 1))
    if broken.any():
        row = int(np.flatnonzero(broken.to_numpy())[0])
        values = {column: str(frame[column].iloc[row])[:40] for column in COLUMNS}
        raise UserInputError(
            f"{path!r} line {row + 2} ({values}): every row needs its ids, label and predicted class, and a "
            "top5_hit of 0 or 1: move the file away or write it again"
        )
    return frame.assign(top5_hit=hits.astype(np.int8))


def paired(first, second):
    """Two `read` frames as `bootstrap.Scored` on the same images and label space, or None when their images differ.

    Returns:
      `(first Scored, second Scored, number of classes)`, rows matched by image_id, or None.
    """
    from abo_tf.reports import bootstrap

    if first is None or second is None or len(first) != len(second):
        return None
    first, second = (frame.sort_values("image_id", kind="stable").reset_index(drop=True) for frame in (first, second))
    for column in ("image_id", "label"):  # other records: not the same test split
        if not (first[column].to_numpy() == second[column].to_numpy()).all():
            return None
    classes = np.unique(
        np.concatenate([frame[column].to_numpy(str) for frame in (first, second) for column in ("label", "predicted")])
    )

    def scored(frame):
        return bootstrap.Scored(
            np.searchsorted(classes, frame["label"].to_numpy(str)),
            np.searchsorted(classes, frame["predicted"].to_numpy(str)),
            frame["top5_hit"].to_numpy().astype(bool),
            frame["item_id"].to_numpy(str),
        )

    return scored(first), scored(second), len(classes)


def compare(first_folder, second_folder, samples, seed, figures=None):
    """`bootstrap.paired_differences` of two folders' test predictions (first minus second), or None.

    None when a folder has no test_predictions.csv, the two scored other images, or `samples` is 0.
    `figures`: those compared, default all of `bootstrap.FIGURES`.
    """
    from abo_tf.reports import bootstrap

    pair = paired(read(first_folder), read(second_folder)) if samples else None
    if pair is None:
        return None
    first, second, num_classes = pair
    return bootstrap.paired_differences(first, second, num_classes, samples, seed, figures or bootstrap.FIGURES)
