"""What a baseline on handcrafted features relies on: permutation importance of feature groups, largest coefficients."""

import os

import numpy as np

from abo_tf.classical import classifiers, descriptors
from abo_tf.common import files
from abo_tf.reports import figures, metrics

IMPORTANCE_REPEATS = 5
# Validation examples shuffled, at most (a stratified subsample): 16 scorings of the split at 3 groups and
# 5 repeats, and an SVC at ABO's 576 classes scores about 2 ms an image. Like `max_samples` of
# scikit-learn's permutation_importance, which shuffles single columns, not groups.
IMPORTANCE_MAX_ROWS = 4000


def _accuracy_and_macro_f1(pipeline, features, labels):
    result = metrics.classification_metrics(labels, classifiers.predict_labels(pipeline, features))
    return np.array([result["accuracy"], result["macro_f1"]])


def group_importance(pipeline, validation, repeats=IMPORTANCE_REPEATS, seed=0, max_rows=IMPORTANCE_MAX_ROWS):
    """Permutation importance of each feature group on the validation split.

    A group's columns are shuffled together across examples (one permutation
    of rows for the whole group), breaking its link to the label while keeping
    the values; the drop in accuracy and macro-F1 is its importance.

    Args:
      pipeline: a fitted Pipeline.
      validation: the validation split's `SplitFeatures` (its `groups` name the columns).
      repeats: shuffles per group, averaged.
      seed: draws the shuffles and the subsample.
      max_rows: validation examples used, at most (a stratified subsample).

    Returns:
      DataFrame: group, columns, examples, accuracy_drop (mean), accuracy_drop_std, macro_f1_drop.
    """
    import pandas as pd

    kept = classifiers.stratified_subsample(validation.labels, np.arange(len(validation.labels)), max_rows, seed)
    features = np.array(validation.features[kept], dtype=np.float32)  # shuffled in place and restored
    labels = validation.labels[kept]
    base = _accuracy_and_macro_f1(pipeline, features, labels)
    rng, rows = np.random.default_rng(seed), []
    for group, (start, end) in validation.groups.items():
        original, drops = features[:, start:end].copy(), []
        for _ in range(repeats):
            features[:, start:end] = original[rng.permutation(len(features))]
            drops.append(base - _accuracy_and_macro_f1(pipeline, features, labels))
        features[:, start:end] = original
        drops = np.array(drops)
        rows.append(
            {
                "group": group,
                "columns": end - start,
                "examples": len(kept),
                "accuracy_drop": drops[:, 0].mean(),
                "accuracy_drop_std": drops[:, 0].std(),
                "macro_f1_drop": drops[:, 1].mean(),
            }
        )
    return pd.DataFrame(rows)


def top_coefficients(pipeline, classes, groups, feature_names, top=3):
    """The largest (absolute, on standardised features) coefficients per class and group of a linear model.

    Args:
      pipeline: a fitted Pipeline whose classifier has `coef_`.
      classes: the label vocabulary.
      groups: group name -> [start, end) columns.
      feature_names: one name per column.
      top: coefficients kept per class and group.

    Returns:
      DataFrame: class, group, rank, feature, coefficient.
    """
    import pandas as pd

    classifier = pipeline.named_steps["classifier"]
    coefficients = classifier.coef_
    if coefficients.shape[0] == 1:  # binary: one row, for classes_[1]; classes_[0] gets its negation
        coefficients = np.concatenate([-coefficients, coefficients])
    rows = []
    for row, label in zip(coefficients, classifier.classes_, strict=True):
        for group, (start, end) in groups.items():
            order = np.argsort(-np.abs(row[start:end]), kind="stable")[:top]
            rows += [
                {
                    "class": classes[label],
                    "group": group,
                    "rank": rank + 1,
                    "feature": feature_names[start + index],
                    "coefficient": float(row[start + index]),
                }
                for rank, index in enumerate(order)
            ]
    return pd.DataFrame(rows)


def _plot_strongest_coefficients(figure, axis, coefficients, max_classes):
    strongest = coefficients.assign(size=coefficients["coefficient"].abs()).pivot_table(
        index="class", columns="group", values="size", aggfunc="max"
    )
    strongest = strongest.iloc[:max_classes]
    image = axis.imshow(strongest.to_numpy(), aspect="auto", cmap="viridis")
    axis.set_xticks(range(strongest.shape[1]), strongest.columns)
    axis.set_yticks(range(strongest.shape[0]), strongest.index, fontsize=7)
    axis.set_title("largest |logreg coefficient| per class and group")
    figure.colorbar(image, ax=axis, fraction=0.046)


def plot_interpretation(importance, coefficients, path, max_classes=30):
    """Figure: group importance bars and, for logreg, max |coefficient| per class and group.

    Args:
      importance: a `group_importance` frame.
      coefficients: a `top_coefficients` frame, or None (one panel).
      path: the PNG to write.
      max_classes: classes shown in the coefficient panel.
    """
    panels = 1 if coefficients is None else 2
    height = max(4.0, 0.25 * max_classes if panels == 2 else 4.0)
    figure, axes = figures.pyplot().subplots(1, panels, figsize=(5 + 5 * (panels - 1), height), squeeze=False)
    axis = axes[0, 0]
    axis.barh(importance["group"], importance["accuracy_drop"], xerr=importance["accuracy_drop_std"], color="tab:blue")
    axis.set_xlabel("validation accuracy drop when shuffled")
    axis.set_title("permutation importance of feature groups")
    if coefficients is not None:
        _plot_strongest_coefficients(figure, axes[0, 1], coefficients, max_classes)
    return figures.save(figure, path, dpi=100)


def interpret(model, pipeline, validation, folder, seed):
    """Writes importance.csv, coefficients.csv (logreg) and interpretation.png of a handcrafted baseline.

    Args:
      model: the baseline's model name.
      pipeline: its fitted Pipeline.
      validation: the validation split's `SplitFeatures`, handcrafted.
      folder: the baseline folder.
      seed: draws the importance shuffles.

    Returns:
      The `group_importance` frame.
    """
    importance = group_importance(pipeline, validation, seed=seed)
    files.write_csv(importance, os.path.join(folder, "importance.csv"))
    coefficients = None
    if model == "logreg":
        coefficients = top_coefficients(
            pipeline, validation.classes, validation.groups, descriptors.handcrafted_feature_names()
        )
        files.write_csv(coefficients, os.path.join(folder, "coefficients.csv"))
    plot_interpretation(importance, coefficients, os.path.join(folder, "interpretation.png"))
    return importance
