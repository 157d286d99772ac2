"""Classical scikit-learn baselines on extracted features: `python -m abo_tf.baselines`.

    python -m abo_tf.baselines --records tfrecords/abo/1.0.0 --features handcrafted \\
        --model logreg linear_svm rbf_svm sgd --output runs/baselines
    python -m abo_tf.baselines --records tfrecords/abo/1.0.0 --features cnn --backbone resnet50 \\
        --weights imagenet --model logreg sgd --output runs/baselines --runs runs

The yardstick for the CNNs: if a logistic regression on colour histograms gets
close, the deep model does not earn its cost. Each `--model` is a Pipeline
(StandardScaler, optional PCA, classifier) with balanced class weights
against the long tail; its hyperparameters are chosen by macro-F1 on the
validation split (GRIDS: every candidate when the grid is small, successive
halving when it is large), then it is evaluated on test with the functions
`abo_tf.training.loop` uses, so the numbers compare with the CNN runs'.

Output folder:

    features/                      the feature cache (see abo_tf.features), unless --cache-dir
    <features>-<model>/            model.skops (the fitted pipeline), baseline.json (search,
                                   choice, timings, SHA-256 of model.skops), metrics.json
                                   ({"validation", "test"}), per_class.csv, confusion_matrix.png;
                                   handcrafted features also importance.csv, coefficients.csv
                                   (logreg) and interpretation.png
    comparison.md, comparison.csv  every baseline in this folder and every CNN run under --runs

Memory at full ABO size (~400k x 2048 float32 = 3.3 GB of CNN features):
features are memory-mapped from the cache, never loaded whole. `sgd` always
trains by `partial_fit` over chunks of CHUNK_ROWS rows (the scaler too), and
`logreg` / `linear_svm` switch to the same streamed SGD with their loss
(log / hinge, alpha = 1 / (C n)) when the training matrix is larger than
`--in-memory-gb` (their solvers copy the matrix, liblinear in float64).
`rbf_svm` trains on a stratified subsample of at most `--rbf-max-train`
examples: kernel SVMs cost O(n^2) memory and more time.
"""

import argparse
import dataclasses
import glob
import json
import math
import os
import sys
import time
import warnings

import numpy as np
from sklearn.base import clone
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.model_selection import ParameterGrid
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC
from sklearn.utils.class_weight import compute_class_weight

from abo_tf import features as features_lib
from abo_tf.records import shards
from abo_tf.reports import metrics
from abo_tf.common.errors import InputNotFoundError, UserInputError, cli_main

MODELS = ("logreg", "linear_svm", "rbf_svm", "sgd")
# The searched grids (Pipeline parameter names). Small on purpose: each candidate is a full fit.
GRIDS = {
    "logreg": {"classifier__C": [0.01, 0.1, 1.0, 10.0]},
    # C >= 1 did not converge in 5000 liblinear iterations on the sample's standardised
    # handcrafted features (127 s of a 150 s search) and never won; small C regularise HOG's correlated columns.
    "linear_svm": {"classifier__C": [0.0001, 0.001, 0.01, 0.1]},
    # PCA keeping 95% of the variance shortens the kernel computations on 2048-d CNN features.
    "rbf_svm": {"pca": ["passthrough", PCA(n_components=0.95, svd_solver="full")], "classifier__C": [0.1, 1.0, 10.0, 100.0]},
    "sgd": {"classifier__loss": ["hinge", "log_loss", "modified_huber"], "classifier__alpha": [1e-6, 1e-5, 1e-4, 1e-3]},
}
HALVING_ABOVE = 6  # candidates; larger grids are searched by successive halving
HALVING_FACTOR = 3  # each round keeps 1/3 of the candidates and triples the training examples
RBF_MAX_TRAIN = 10_000
SGD_EPOCHS = 20
IN_MEMORY_GB = 1.0
CHUNK_ROWS = 8192
IMPORTANCE_REPEATS = 5
MODEL_FILE = "model.skops"
RESULT_FILE = "baseline.json"
# Types a model.skops may hold beyond those skops trusts by default (scikit-learn,
# NumPy, SciPy): none. A file asking for any other type is refused, never loaded.
TRUSTED_TYPES = ()


@dataclasses.dataclass
class BaselineConfig:
    """Everything a baselines command depends on; `python -m abo_tf.baselines --help` documents each."""

    records: str
    output: str
    features: features_lib.FeatureSpec
    models: tuple = ("logreg",)
    runs: str = "runs"
    cache_dir: str | None = None  # default OUTPUT/features
    batch_size: int = 64
    workers: int | None = None
    rbf_max_train: int = RBF_MAX_TRAIN
    sgd_epochs: int = SGD_EPOCHS
    in_memory_gb: float = IN_MEMORY_GB
    measure_runs: bool = True
    inference_images: int = 512
    seed: int = 0
    progress: bool = True
    grids: dict | None = None  # model -> grid replacing GRIDS[model] (library use: smaller searches in tests)

    def grid(self, model):
        """The searched grid of `model`: `grids[model]` if given, else GRIDS[model]."""
        return (self.grids or {}).get(model, GRIDS[model])


def check_config(config):
    """Refuses unknown models and settings that cannot train.

    Raises:
      UserInputError: naming the flag and its value.
    """
    unknown = [model for model in config.models if model not in MODELS]
    if unknown or not config.models:
        raise UserInputError(f"--model {' '.join(unknown)}: choose one or more of {MODELS}")
    limits = {"--rbf-max-train": (config.rbf_max_train, 2), "--sgd-epochs": (config.sgd_epochs, 1), "--inference-images": (config.inference_images, 1)}
    for flag, (value, minimum) in limits.items():
        if value < minimum:
            raise UserInputError(f"{flag} {value}: must be at least {minimum}")
    if not config.in_memory_gb > 0:
        raise UserInputError(f"--in-memory-gb {config.in_memory_gb}: must be positive")


# --- checks ------------------------------------------------------------------


def check_splits(splits):
    """Refuses splits that cannot train or compare: other widths, other label spaces, one class.

    Args:
      splits: dict split name -> `features.SplitFeatures`, with "train" and "validation".

    Raises:
      UserInputError: naming the split and what differs.
    """
    train = splits["train"]
    for name, data in splits.items():
        if data.features.shape[1] != train.features.shape[1]:
            raise UserInputError(f"features of {name} have {data.features.shape[1]} columns, train's {train.features.shape[1]}: extract every split with the same features")
        if list(data.classes) != list(train.classes):
            raise UserInputError(f"the label space of {name} ({len(data.classes)} classes) differs from train's ({len(train.classes)}): extract every split from the same records")
        if len(data.labels) and (data.labels.min() < 0 or data.labels.max() >= len(train.classes)):
            raise UserInputError(f"labels of {name} fall outside the {len(train.classes)} classes: the feature cache in {data.path!r} is damaged, delete it")
    for name in ("train", "validation"):
        present = np.unique(splits[name].labels)
        if len(present) < 2:
            raise UserInputError(f"split {name!r} has a single class ({splits[name].classes[present[0]]!r}): a classifier needs at least 2 to train and to be chosen")


# --- fitting -----------------------------------------------------------------


def make_pipeline(model, seed=0):
    """The unfitted Pipeline of `model`: scaler, PCA (passthrough unless the grid sets it), classifier.

    Args:
      model: one of MODELS.
      seed: random state of the classifiers that have one.

    Returns:
      A `sklearn.pipeline.Pipeline` with steps "scaler", "pca", "classifier".
    """
    classifiers = {
        "logreg": lambda: LogisticRegression(class_weight="balanced", max_iter=1000),
        "linear_svm": lambda: LinearSVC(class_weight="balanced", max_iter=5000, random_state=seed),
        # break_ties: predict is then the argmax of decision_function, which also ranks top-5.
        "rbf_svm": lambda: SVC(kernel="rbf", class_weight="balanced", break_ties=True),
        # class_weight is set at fit time: partial_fit refuses "balanced".
        "sgd": lambda: SGDClassifier(random_state=seed),
    }
    if model not in classifiers:
        raise UserInputError(f"unknown model {model!r}: choose from {MODELS}")
    return Pipeline([("scaler", StandardScaler()), ("pca", "passthrough"), ("classifier", classifiers[model]())])


def _row_chunks(rows, rng=None):
    """`rows` cut into chunks of CHUNK_ROWS (chunk order shuffled with an rng), each sorted for locality."""
    chunks = [rows[start:start + CHUNK_ROWS] for start in range(0, len(rows), CHUNK_ROWS)]
    if rng is not None:
        chunks = [chunks[index] for index in rng.permutation(len(chunks))]
    return chunks


def _streamed_classifier(model, params, num_examples, seed):
    """The SGDClassifier a model trains as when streamed: sgd's own, or logreg/linear_svm's loss."""
    if model == "sgd":
        return make_pipeline("sgd", seed).set_params(**params).named_steps["classifier"]
    # C of a mean loss over n examples corresponds to SGD's alpha = 1 / (C n).
    loss = {"logreg": "log_loss", "linear_svm": "hinge"}[model]
    return SGDClassifier(loss=loss, alpha=1.0 / (params["classifier__C"] * num_examples), random_state=seed)


def _fit_streaming(classifier, train, rows, epochs, seed):
    """Scaler and SGD fitted by `partial_fit` over chunks of `train.features[rows]`; one chunk in memory at a time."""
    scaler = StandardScaler()
    for chunk in _row_chunks(rows):
        scaler.partial_fit(train.features[chunk])
    labels = train.labels[rows]
    classes = np.unique(labels)
    weights = compute_class_weight("balanced", classes=classes, y=labels)
    classifier.set_params(class_weight=dict(zip(classes.tolist(), weights.tolist())))
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        for chunk in _row_chunks(rows, rng):
            order = rng.permutation(len(chunk))
            classifier.partial_fit(scaler.transform(train.features[chunk])[order], train.labels[chunk][order], classes=classes)
    return Pipeline([("scaler", scaler), ("pca", "passthrough"), ("classifier", classifier)])


@dataclasses.dataclass
class _Training:
    """How one model trains: on which rows, streamed or in memory."""

    model: str
    grid_spec: dict  # parameter name -> values, as searched
    grid: list  # candidate parameter dicts, in grid order (ParameterGrid of grid_spec)
    train: object  # features.SplitFeatures
    rows: np.ndarray  # training rows (all, or the rbf subsample)
    streamed: bool
    epochs: int
    seed: int


def _fit(training, params, rows):
    """Fits one candidate on `rows`; returns (pipeline, seconds, converged)."""
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        if training.streamed:
            classifier = _streamed_classifier(training.model, params, len(rows), training.seed)
            pipeline = _fit_streaming(classifier, training.train, rows, training.epochs, training.seed)
        else:
            pipeline = make_pipeline(training.model, training.seed).set_params(**clone(params, safe=False))
            pipeline.fit(training.train.features[rows], training.train.labels[rows])
    converged = not any(issubclass(warning.category, ConvergenceWarning) for warning in caught)
    return pipeline, time.perf_counter() - started, converged


def predict_scores(pipeline, features, num_classes):
    """Predicted labels and per-class scores, chunk by chunk.

    Scores are probabilities where the classifier has `predict_proba` (see
    `has_probabilities`; classes absent from training get 0), else its
    decision function (absent classes get -inf). Either ranks classes for
    top-5 accuracy.

    Returns:
      (int32 predictions [N], float32 scores [N, num_classes]).
    """
    classifier = pipeline.named_steps["classifier"]
    known = classifier.classes_
    probabilities = has_probabilities(pipeline)
    predictions, scores = [], []
    for start in range(0, len(features), CHUNK_ROWS):
        chunk = np.asarray(features[start:start + CHUNK_ROWS])
        raw = pipeline.predict_proba(chunk) if probabilities else pipeline.decision_function(chunk)
        if raw.ndim == 1:  # a binary decision function: one column, positive for classes_[1]
            raw = np.stack([-raw, raw], axis=1)
        full = np.full((len(chunk), num_classes), 0.0 if probabilities else -np.inf, np.float32)
        full[:, known] = raw
        predictions.append(known[np.argmax(raw, axis=1)].astype(np.int32))
        scores.append(full)
    return np.concatenate(predictions), np.concatenate(scores)


def has_probabilities(pipeline):
    """Whether the pipeline predicts probabilities (logreg, sgd with log or modified Huber loss): only then is there an ECE."""
    return hasattr(pipeline, "predict_proba")


def _validation_score(pipeline, validation):
    predictions, _ = predict_scores(pipeline, validation.features, len(validation.classes))
    return metrics.classification_metrics(validation.labels, predictions)["macro_f1"]


# --- hyperparameter search on the validation split ---------------------------


def stratified_subsample(labels, rows, size, seed):
    """About `size` of `rows`, each class in proportion and at least once; sorted."""
    if size >= len(rows):
        return rows
    rng = np.random.default_rng(seed)
    fraction = size / len(rows)
    kept = []
    for label in np.unique(labels[rows]):
        members = rows[labels[rows] == label]
        kept.append(rng.choice(members, max(1, round(len(members) * fraction)), replace=False))
    return np.sort(np.concatenate(kept))


def _printable(params):
    return {key: value if isinstance(value, (int, float, str, type(None))) else repr(value) for key, value in params.items()}


def _try(training, candidates, rows, validation, round_index):
    """Fits and scores each candidate on `rows`; returns [(score, index, pipeline)], record rows."""
    scored, records = [], []
    for index in candidates:
        params = training.grid[index]
        pipeline, seconds, converged = _fit(training, params, rows)
        score = _validation_score(pipeline, validation)
        scored.append((score, index, pipeline))
        records.append({"round": round_index, "params": _printable(params), "train_examples": int(len(rows)),
                        "validation_macro_f1": score, "seconds": seconds, "converged": converged})
    return scored, records


def search(training, validation):
    """Chooses the grid's best candidate by validation macro-F1; ties go to the first in grid order.

    A grid of at most HALVING_ABOVE candidates fits each on every training row.
    A larger one is searched by successive halving: every candidate on
    1/3^(R-1) of the rows (stratified), the best third on 3x more, and so on,
    the last round on every row.

    Returns:
      (best fitted pipeline, search record for baseline.json).
    """
    candidates = list(range(len(training.grid)))
    rounds = 1 if len(candidates) <= HALVING_ABOVE else math.ceil(math.log(len(candidates)) / math.log(HALVING_FACTOR))
    history = []
    for round_index in range(rounds):
        size = math.ceil(len(training.rows) / HALVING_FACTOR ** (rounds - 1 - round_index))
        rows = stratified_subsample(training.train.labels, training.rows, size, training.seed + round_index)
        scored, records = _try(training, candidates, rows, validation, round_index)
        history += records
        scored.sort(key=lambda item: (-item[0], item[1]))
        keep = 1 if round_index == rounds - 1 else math.ceil(len(candidates) / HALVING_FACTOR)
        candidates = [index for _, index, _ in scored[:keep]]
    best_score, best_index, best_pipeline = scored[0]
    record = {"strategy": "exhaustive" if rounds == 1 else f"successive halving (factor {HALVING_FACTOR}, {rounds} rounds)",
              "grid": {key: [_printable({key: value})[key] for value in values] for key, values in training.grid_spec.items()},
              "candidates": history, "chosen": _printable(training.grid[best_index]), "validation_macro_f1": best_score,
              "seconds": sum(row["seconds"] for row in history)}
    return best_pipeline, record


# --- persistence ---------------------------------------------------------------


def save_model(pipeline, path):
    """Writes a fitted pipeline with skops (no pickle); returns the file's SHA-256."""
    import skops.io

    skops.io.dump(pipeline, path)
    return shards.file_sha256(path)


def load_model(folder):
    """Loads the pipeline of a baseline folder, refusing a changed file or unexpected types.

    The SHA-256 recorded in baseline.json at training time must match
    model.skops, and the file may hold no type outside skops' defaults and
    TRUSTED_TYPES: a file that would run arbitrary code is never loaded.

    Raises:
      InputNotFoundError: no baseline.json or model.skops in `folder`.
      UserInputError: the hash differs or the file asks for untrusted types.
    """
    import skops.io

    result_path, model_path = os.path.join(folder, RESULT_FILE), os.path.join(folder, MODEL_FILE)
    for path in (result_path, model_path):
        if not os.path.isfile(path):
            raise InputNotFoundError(f"{path} does not exist: give a folder written by `python -m abo_tf.baselines`")
    with open(result_path, encoding="utf-8") as handle:
        expected = json.load(handle).get("model_sha256")
    if shards.file_sha256(model_path) != expected:
        raise UserInputError(f"{model_path} does not match the SHA-256 recorded in {RESULT_FILE}: it changed after training; refusing to load it (retrain)")
    try:
        untrusted = skops.io.get_untrusted_types(file=model_path)
    except Exception as error:  # skops raises assorted errors on a malformed archive
        raise UserInputError(f"{model_path} is not a readable skops file ({type(error).__name__}): retrain") from error
    refused = sorted(set(untrusted) - set(TRUSTED_TYPES))
    if refused:
        raise UserInputError(f"{model_path} asks for untrusted types {refused}: refusing to load it")
    return skops.io.load(model_path, trusted=list(untrusted))


# --- interpretation (handcrafted features) -----------------------------------


def group_importance(pipeline, validation, repeats=IMPORTANCE_REPEATS, seed=0):
    """Permutation importance of each feature group on the validation split.

    A group's columns are shuffled together across examples (one permutation
    of rows for the whole group), breaking its link to the label while keeping
    the values; the drop in accuracy and macro-F1 is its importance.

    Returns:
      DataFrame: group, columns, accuracy_drop (mean), accuracy_drop_std, macro_f1_drop.
    """
    import pandas as pd

    num_classes = len(validation.classes)
    features = np.array(validation.features, dtype=np.float32)  # shuffled in place and restored

    def scores():
        predictions, _ = predict_scores(pipeline, features, num_classes)
        result = metrics.classification_metrics(validation.labels, predictions)
        return result["accuracy"], result["macro_f1"]

    base_accuracy, base_f1 = scores()
    rng, rows = np.random.default_rng(seed), []
    for group, (start, end) in validation.groups.items():
        original, drops = features[:, start:end].copy(), []
        for _ in range(repeats):
            features[:, start:end] = original[rng.permutation(len(features))]
            accuracy, f1 = scores()
            drops.append((base_accuracy - accuracy, base_f1 - f1))
        features[:, start:end] = original
        drops = np.array(drops)
        rows.append({"group": group, "columns": end - start, "accuracy_drop": drops[:, 0].mean(), "accuracy_drop_std": drops[:, 0].std(), "macro_f1_drop": drops[:, 1].mean()})
    return pd.DataFrame(rows)


def top_coefficients(pipeline, classes, groups, feature_names, top=3):
    """The largest (absolute, on standardised features) coefficients per class and group of a linear model.

    Returns:
      DataFrame: class, group, rank, feature, coefficient.
    """
    import pandas as pd

    classifier = pipeline.named_steps["classifier"]
    coefficients = classifier.coef_
    known = classifier.classes_
    if coefficients.shape[0] == 1:  # binary: one row, for classes_[1]; classes_[0] gets its negation
        coefficients = np.concatenate([-coefficients, coefficients])
    rows = []
    for row, label in zip(coefficients, known):
        for group, (start, end) in groups.items():
            order = np.argsort(-np.abs(row[start:end]), kind="stable")[:top]
            rows += [{"class": classes[label], "group": group, "rank": rank + 1, "feature": feature_names[start + index], "coefficient": float(row[start + index])}
                     for rank, index in enumerate(order)]
    return pd.DataFrame(rows)


def plot_interpretation(importance, coefficients, path, max_classes=30):
    """Figure: group importance bars and, for logreg, max |coefficient| per class and group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 1 if coefficients is None else 2
    figure, axes = plt.subplots(1, panels, figsize=(5 + 5 * (panels - 1), max(4.0, 0.25 * max_classes if panels == 2 else 4.0)), squeeze=False)
    axis = axes[0, 0]
    axis.barh(importance["group"], importance["accuracy_drop"], xerr=importance["accuracy_drop_std"], color="tab:blue")
    axis.set_xlabel("validation accuracy drop when shuffled")
    axis.set_title("permutation importance of feature groups")
    if coefficients is not None:
        strongest = coefficients.assign(size=coefficients["coefficient"].abs()).pivot_table(index="class", columns="group", values="size", aggfunc="max")
        strongest = strongest.iloc[:max_classes]
        image = axes[0, 1].imshow(strongest.to_numpy(), aspect="auto", cmap="viridis")
        axes[0, 1].set_xticks(range(strongest.shape[1]), strongest.columns)
        axes[0, 1].set_yticks(range(strongest.shape[0]), strongest.index, fontsize=7)
        axes[0, 1].set_title("largest |logreg coefficient| per class and group")
        figure.colorbar(image, ax=axes[0, 1], fraction=0.046)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _interpret(model, pipeline, validation, folder, seed):
    importance = group_importance(pipeline, validation, seed=seed)
    importance.to_csv(os.path.join(folder, "importance.csv"), index=False)
    coefficients = None
    if model == "logreg":
        coefficients = top_coefficients(pipeline, validation.classes, validation.groups, features_lib.handcrafted_feature_names())
        coefficients.to_csv(os.path.join(folder, "coefficients.csv"), index=False)
    plot_interpretation(importance, coefficients, os.path.join(folder, "interpretation.png"))
    return importance


# --- one baseline, end to end -------------------------------------------------


def _training_rows(model, train, config):
    """All rows, or (rbf_svm on a large split) a stratified subsample; and whether to stream."""
    rows = np.arange(len(train.labels))
    subsample = None
    if model == "rbf_svm" and len(rows) > config.rbf_max_train:
        rows = stratified_subsample(train.labels, rows, config.rbf_max_train, config.seed)
        subsample = {"examples": int(len(rows)), "of": int(len(train.labels))}
        print(f"rbf_svm: training on a stratified subsample of {len(rows)} of {len(train.labels)} examples (--rbf-max-train; kernel SVMs grow quadratically)", flush=True)
    too_large = train.features.shape[1] * len(rows) * 4 > config.in_memory_gb * 2**30
    streamed = model == "sgd" or (model in ("logreg", "linear_svm") and too_large)
    if streamed and model != "sgd":
        print(f"{model}: {len(rows)} x {train.features.shape[1]} features exceed --in-memory-gb {config.in_memory_gb}: trained by streamed SGD with its loss", flush=True)
    return rows, subsample, streamed


def _train_counts(splits):
    return np.bincount(splits["train"].labels, minlength=len(splits["train"].classes))


def _evaluate(pipeline, splits):
    """Metrics of validation and test, the test predictions, and the classifier's test images/s.

    The metrics are `abo_tf.evaluate`'s (`metrics.evaluation_metrics`: strata by
    training examples, ECE when the classifier gives probabilities), so a
    baseline's metrics.json reads like a CNN's evaluation.
    """
    results, train_counts = {}, _train_counts(splits)
    for name in ("validation", "test"):
        data = splits[name]
        started = time.perf_counter()
        predictions, scores = predict_scores(pipeline, data.features, len(data.classes))
        seconds = time.perf_counter() - started
        result = metrics.evaluation_metrics(data.labels, predictions, scores, train_counts, calibrated=has_probabilities(pipeline))
        results[name] = (result, predictions, len(data.labels) / max(seconds, 1e-9))
    return results


def _end_to_end_rate(feature_rate, classifier_rate):
    """Images/s of features then classifier, one after the other."""
    return 1.0 / (1.0 / feature_rate + 1.0 / classifier_rate)


def _write_reports(folder, splits, evaluation):
    test = splits["test"]
    metrics.write_json(os.path.join(folder, "metrics.json"), {name: evaluation[name][0] for name in ("validation", "test")})
    predictions = evaluation["test"][1]
    per_class = metrics.per_class_metrics(test.labels, predictions, test.classes, _train_counts(splits))
    per_class.to_csv(os.path.join(folder, "per_class.csv"), index=False)
    matrix, names = metrics.confusion_matrix_top(test.labels, predictions, test.classes)
    metrics.plot_confusion_matrix(matrix, names, os.path.join(folder, "confusion_matrix.png"))


def train_baseline(model, splits, config):
    """Searches, fits, evaluates and saves one baseline into OUTPUT/<features>-<model>.

    Args:
      model: one of MODELS.
      splits: dict split -> `features.SplitFeatures` (train, validation, test), checked.
      config: the `BaselineConfig`.

    Returns:
      The baseline.json record (with "folder" and "metrics").
    """
    train = splits["train"]
    rows, subsample, streamed = _training_rows(model, train, config)
    grid_spec = config.grid(model)
    training = _Training(model, grid_spec, list(ParameterGrid(grid_spec)), train, rows, streamed, config.sgd_epochs, config.seed)
    pipeline, search_record = search(training, splits["validation"])
    folder = os.path.join(config.output, f"{train.info['name']}-{model}")
    os.makedirs(folder, exist_ok=True)
    evaluation = _evaluate(pipeline, splits)
    _write_reports(folder, splits, evaluation)
    classifier_rate = evaluation["test"][2]
    record = {
        "model": model, "features": train.info["name"], "feature_spec": train.info["spec"], "feature_key": train.info["key"],
        "records": os.path.abspath(config.records), "classes": list(train.classes), "search": search_record,
        "solver": "streamed SGD (partial_fit over chunks)" if streamed else "in memory", "subsample": subsample,
        "training_seconds": search_record["seconds"], "classifier_images_per_second": classifier_rate,
        "inference_images_per_second": _end_to_end_rate(splits["test"].info["images_per_second"], classifier_rate),
        "model_file": MODEL_FILE, "model_sha256": save_model(pipeline, os.path.join(folder, MODEL_FILE)),
    }
    if train.info["spec"]["kind"] == features_lib.HANDCRAFTED:
        record["importance"] = _interpret(model, pipeline, splits["validation"], folder, config.seed).to_dict("records")
    with open(os.path.join(folder, RESULT_FILE), "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=2, sort_keys=True)
    return {**record, "folder": folder, "metrics": {name: evaluation[name][0] for name in ("validation", "test")}}


# --- the comparison table ----------------------------------------------------

COMPARISON_FIELDS = ("name", "kind", "features", "accuracy", "macro_f1", "top5_accuracy", "training_seconds", "inference_images_per_second", "test_examples", "folder")


def _read_json(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _metric_fields(test_metrics):
    return {key: test_metrics.get(key) for key in ("accuracy", "macro_f1", "top5_accuracy")} | {"test_examples": test_metrics.get("num_examples")}


def collect_baselines(output):
    """One comparison row per baseline folder under `output` (any features, any earlier command)."""
    rows = []
    for path in sorted(glob.glob(os.path.join(output, "*", RESULT_FILE))):
        folder = os.path.dirname(path)
        record = _read_json(path)
        test = _read_json(os.path.join(folder, "metrics.json")).get("test", {})
        rows.append({"name": os.path.basename(folder), "kind": f"baseline ({record['model']})", "features": record["features"],
                     "training_seconds": record["training_seconds"], "inference_images_per_second": record["inference_images_per_second"],
                     "folder": folder, **_metric_fields(test)})
    return rows


def _history_seconds(run):
    import pandas as pd

    path = os.path.join(run, "history.csv")
    return float(pd.read_csv(path)["seconds"].sum()) if os.path.isfile(path) else None


def measure_run_inference(run, records_dir, max_images=512, batch_size=64):
    """Images/s of a run's SavedModel `serve_pixels` on the test split's evaluation pipeline (decode included).

    The first batch (tracing, warm-up) is not timed. Returns None when the run
    has no saved_model/ or the records have no test split.
    """
    import tensorflow as tf

    from abo_tf.training import export, input_pipeline

    saved_model = os.path.join(run, "saved_model")
    if not tf.saved_model.contains_saved_model(saved_model) or not input_pipeline.num_examples(records_dir, "test"):
        return None
    loaded = export.load_exported(saved_model)
    serve = loaded.signatures[export.PIXELS_ENDPOINT]
    dataset = input_pipeline.make_dataset(records_dir, "test", export.exported_image_size(loaded), batch_size, training=False)
    batches = iter(dataset.repeat().take(1 + max(1, math.ceil(max_images / batch_size))))
    serve(pixels=next(batches)["image"])
    started, count = time.perf_counter(), 0
    for batch in batches:
        outputs = serve(pixels=batch["image"])
        count += int(outputs["probabilities"].shape[0])
    return count / (time.perf_counter() - started)


def collect_runs(runs_dir, records_dir=None, measure=True, max_images=512):
    """One comparison row per CNN run directly under `runs_dir`.

    A run is a folder with the config.toml and metrics.json that training
    writes; baseline folders and evaluation reports (metrics.json alone) are not runs.
    """
    rows = []
    for path in sorted(glob.glob(os.path.join(runs_dir, "*", "metrics.json"))):
        run = os.path.dirname(path)
        if os.path.isfile(os.path.join(run, RESULT_FILE)) or not os.path.isfile(os.path.join(run, "config.toml")):
            continue
        from abo_tf.common import config as config_lib

        saved = config_lib.load_run_config(run) or {}
        rate = measure_run_inference(run, records_dir, max_images) if measure and records_dir else None
        rows.append({"name": os.path.basename(run), "kind": "cnn", "features": f"{saved.get('model', '?')} @ {saved.get('image_size', '?')} px",
                     "training_seconds": _history_seconds(run), "inference_images_per_second": rate, "folder": run,
                     **_metric_fields(_read_json(path).get("test", {}))})
    return rows


def write_comparison(rows, output):
    """Writes comparison.csv and comparison.md (sorted by test macro-F1); returns the Markdown."""
    import pandas as pd

    rows = sorted(rows, key=lambda row: -(row["macro_f1"] if row["macro_f1"] is not None else -1))
    pd.DataFrame(rows, columns=COMPARISON_FIELDS).to_csv(os.path.join(output, "comparison.csv"), index=False)
    lines = ["| model | kind | features | accuracy | macro F1 | top-5 | training (s) | inference (img/s) | test images |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        cells = [row["name"], row["kind"], row["features"], metrics.format_figure(row["accuracy"], 3), metrics.format_figure(row["macro_f1"], 3), metrics.format_figure(row["top5_accuracy"], 3),
                 metrics.format_figure(row["training_seconds"], 1), metrics.format_figure(row["inference_images_per_second"], 0), metrics.format_figure(row["test_examples"], 0)]
        lines.append("| " + " | ".join(cells) + " |")
    notes = ("Test split. Baselines: training time includes the whole hyperparameter search (feature extraction excluded); "
             "inference is end to end from the records (decode, features, classifier). CNN runs: training time is the sum of history.csv; "
             "inference is the SavedModel's serve_pixels fed by the evaluation pipeline (n/a: no saved_model/ or not measured).")
    markdown = "\n".join(lines) + "\n\n" + notes + "\n"
    with open(os.path.join(output, "comparison.md"), "w", encoding="utf-8") as handle:
        handle.write(markdown)
    return markdown


# --- the command -------------------------------------------------------------


def run_baselines(config):
    """Extracts (or reuses) features, trains every `config.models`, writes the comparison.

    Args:
      config: a `BaselineConfig`.

    Returns:
      Dict: "baselines" (one record per model) and "comparison" (the Markdown table).
    """
    check_config(config)
    os.makedirs(config.output, exist_ok=True)
    splits = features_lib.extract_features(
        config.records, config.features, features_lib.SPLITS, config.cache_dir or os.path.join(config.output, "features"),
        config.batch_size, config.workers, config.progress,
    )
    check_splits(splits)
    results = [train_baseline(model, splits, config) for model in dict.fromkeys(config.models)]
    rows = collect_baselines(config.output)
    if os.path.isdir(config.runs):
        rows += collect_runs(config.runs, config.records, config.measure_runs, config.inference_images)
    return {"baselines": results, "comparison": write_comparison(rows, config.output)}


def _parser():
    parser = argparse.ArgumentParser(prog="python -m abo_tf.baselines", description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--records", required=True, help="folder of a build_records output (with manifest.json)")
    features_lib.add_feature_arguments(parser)
    models = parser.add_argument_group("models")
    models.add_argument("--model", nargs="+", choices=MODELS, default=["logreg"], help="baselines to train (several allowed)")
    models.add_argument("--rbf-max-train", type=int, default=RBF_MAX_TRAIN, help="rbf_svm trains on a stratified subsample of at most this many examples")
    models.add_argument("--sgd-epochs", type=int, default=SGD_EPOCHS, help="passes over the training features of streamed SGD")
    models.add_argument("--in-memory-gb", type=float, default=IN_MEMORY_GB, help="larger training features train logreg/linear_svm by streamed SGD")
    models.add_argument("--seed", type=int, default=0, help="subsamples, SGD, and the random backbone of --weights none")
    comparison = parser.add_argument_group("comparison")
    comparison.add_argument("--runs", default="runs", help="folder of CNN training runs to compare with (each */metrics.json)")
    comparison.add_argument("--measure-runs", action=argparse.BooleanOptionalAction, default=True, help="time each run's SavedModel on the test split")
    comparison.add_argument("--inference-images", type=int, default=512, help="test images timed per run")
    output = parser.add_argument_group("output")
    output.add_argument("--output", required=True, help="baselines folder (one subfolder per model, comparison.md)")
    output.add_argument("--cache-dir", default=None, help="feature cache; default OUTPUT/features")
    output.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="a progress bar per extracted split")
    return parser


def _summary(record):
    test = record["metrics"]["test"]
    return (f"{os.path.basename(record['folder'])}: test accuracy {test['accuracy']:.3f}, macro F1 {test['macro_f1']:.3f}, "
            f"top-5 {test['top5_accuracy']:.3f}; chose {record['search']['chosen']} ({record['training_seconds']:.1f} s)")


@cli_main
def main(argv=None):
    args = _parser().parse_args(argv)
    config = BaselineConfig(
        records=args.records, output=args.output, features=features_lib.spec_from_args(args), models=tuple(args.model), runs=args.runs,
        cache_dir=args.cache_dir, batch_size=args.batch_size, workers=args.workers, rbf_max_train=args.rbf_max_train,
        sgd_epochs=args.sgd_epochs, in_memory_gb=args.in_memory_gb, measure_runs=args.measure_runs,
        inference_images=args.inference_images, seed=args.seed, progress=args.progress,
    )
    results = run_baselines(config)
    for record in results["baselines"]:
        print(_summary(record))
    print()
    print(results["comparison"])
    print(f"comparison: {os.path.join(config.output, 'comparison.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
