"""Likely label errors: out-of-sample probabilities by cross-validated logistic regression, then confident learning.

Every train and validation image gets class probabilities from a model that never saw it nor any other image of
its item (k folds grouped by item, `StratifiedGroupKFold`), so a mislabeled image is judged by what the other
items say its class looks like. Ungrouped, a listing labeled wrong as a whole would vouch for itself: its other
views, in the training folds with the same wrong label, look just like it.
`cleanlab.filter.find_label_issues` (Northcutt et al., "Confident learning", JAIR 2021) flags the images whose
given label is unlikely under those probabilities, ranked by self-confidence (the probability of the given label):
lowest first.
"""

import warnings
from typing import NamedTuple

import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict

from abo_tf.classical import classifiers
from abo_tf.common.errors import UserInputError

DEFAULT_FOLDS = 5
AUDITED_SPLITS = ("train", "validation")
COLUMNS = ("image_id", "split", "given_type", "suggested_type", "self_confidence", "suggested_probability")


class LabelAudit(NamedTuple):
    """The flagged images, ranked, and the noise each class is estimated to carry."""

    issues: pd.DataFrame  # COLUMNS, least self-confident first, at most `max_issues`
    noise_rates: pd.DataFrame  # product_type, examples, flagged (all of them), estimated_noise_rate
    num_audited: int
    flagged_ids: np.ndarray  # every flagged image id, listed or not, least self-confident first
    audited_ids: np.ndarray  # every audited image id


def out_of_sample_probabilities(features, labels, num_classes, groups, folds=DEFAULT_FOLDS, seed=0):
    """[N, num_classes] probabilities of each row from a logistic regression fitted on the other folds.

    A group's rows (an item's images) share a fold. Classes with fewer examples than `folds` are left out of
    some folds' training: scikit-learn gives them probability 0 there, which is what a model that never saw
    the class would say.
    """
    folds = max(2, min(folds, int(np.bincount(labels).max()), len(np.unique(groups))))
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # Tiny classes: "The least populated class in y has only 1 members"; fold fits that stop at max_iter.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", ConvergenceWarning)
        probabilities = cross_val_predict(
            classifiers.make_pipeline("logreg", seed),
            np.asarray(features),
            labels,
            groups=groups,
            cv=splitter,
            method="predict_proba",
        )
    full = np.zeros((len(labels), num_classes), dtype=np.float64)
    full[:, np.unique(labels)] = probabilities  # columns of the classes present, in label order
    return full


def _check_features(splits):
    missing = [split for split in AUDITED_SPLITS if split not in splits or len(splits[split].labels) == 0]
    if missing:
        raise UserInputError(
            f"the records have no {missing[0]} images to audit labels on: "
            "rebuild them with a non-zero train and validation fraction"
        )


def find_label_issues(splits, item_of, folds=DEFAULT_FOLDS, seed=0, max_issues=None):
    """Ranks the likely label errors of the train and validation images.

    Args:
      splits: dict split -> `feature_cache.SplitFeatures` with "train" and "validation".
      item_of: image id -> item id of every audited image (the folds keep an item's images together).
      folds: cross-validation folds for the out-of-sample probabilities.
      seed: shuffles the folds.
      max_issues: list at most this many flagged images (None: all cleanlab flags); the noise rates count all.

    Returns:
      A `LabelAudit`.

    Raises:
      UserInputError: a split is missing or empty.
    """
    from cleanlab.filter import find_label_issues as cleanlab_find

    _check_features(splits)
    parts = [splits[split] for split in AUDITED_SPLITS]
    classes = parts[0].classes
    features = np.concatenate([np.asarray(part.features) for part in parts])
    labels = np.concatenate([part.labels for part in parts]).astype(np.int64)
    image_ids = np.concatenate([part.image_ids for part in parts])
    split_names = np.concatenate([[part.split] * len(part.labels) for part in parts])
    groups = np.array([item_of[image_id] for image_id in image_ids])
    probabilities = out_of_sample_probabilities(features, labels, len(classes), groups, folds, seed)
    # "low_self_confidence": as many as confident learning estimates are wrong, taken lowest self-confidence
    # first. The default ("both") also needs an image in its class's pruned share, and on the generated sample
    # missed a planted flip ranked 5th of 460 by self-confidence (the biggest class has the most pruning slack).
    ranked = cleanlab_find(
        labels, probabilities, filter_by="low_self_confidence", return_indices_ranked_by="self_confidence"
    )
    noise_rates = _noise_rates(labels, ranked, classes)  # from every flagged image, however many are listed
    ranked_all, ranked = ranked, ranked[:max_issues] if max_issues is not None else ranked
    suggested = probabilities[ranked].argmax(axis=1)
    issues = pd.DataFrame(
        {
            "image_id": image_ids[ranked],
            "split": split_names[ranked],
            "given_type": np.array(classes)[labels[ranked]],
            "suggested_type": np.array(classes)[suggested],
            "self_confidence": probabilities[ranked, labels[ranked]],
            "suggested_probability": probabilities[ranked, suggested],
        },
        columns=list(COLUMNS),
    )
    return LabelAudit(issues, noise_rates, len(labels), image_ids[ranked_all], image_ids)


def _noise_rates(labels, flagged, classes):
    """Per class: examples, flagged images, and their ratio (cleanlab's estimate of the class's noise rate)."""
    examples = np.bincount(labels, minlength=len(classes))
    flagged_counts = np.bincount(labels[flagged], minlength=len(classes))
    rates = np.divide(flagged_counts, examples, out=np.zeros(len(classes)), where=examples > 0)
    return pd.DataFrame(
        {"product_type": classes, "examples": examples, "flagged": flagged_counts, "estimated_noise_rate": rates}
    )


def planted_label_errors(truth):
    """image id -> kind ("image flip", "listing flip") of each label error a generated sample planted.

    Args:
      truth: the truth dict of `synthetic_abo.generate_sample` (`python -m abo_tf.sample --truth FILE`).
    """
    planted = {flip["image_id"]: "image flip" for flip in truth["label_flips"]}
    planted.update({image_id: "listing flip" for flip in truth["listing_flips"] for image_id in flip["image_ids"]})
    return planted


def score_planted(label_audit, planted):
    """How the audit did on the planted label errors of its audited images.

    Returns:
      {"kinds": {kind: {"planted", "flagged", "recall"}}, "flagged", "flagged_planted", "precision"}: recall per
      kind of error, and precision over every flag (the share of flagged images that are planted errors).
    """
    audited, flagged = set(label_audit.audited_ids), set(label_audit.flagged_ids)
    kinds = {}
    for kind in sorted(set(planted.values())):
        ids = {image_id for image_id, planted_kind in planted.items() if planted_kind == kind and image_id in audited}
        found = len(ids & flagged)
        kinds[kind] = {"planted": len(ids), "flagged": found, "recall": found / len(ids) if ids else None}
    flagged_planted = len(flagged & set(planted))
    return {
        "kinds": kinds,
        "flagged": len(flagged),
        "flagged_planted": flagged_planted,
        "precision": flagged_planted / len(flagged) if flagged else None,
    }
