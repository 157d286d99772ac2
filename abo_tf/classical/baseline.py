"""One baseline end to end (rows, search, evaluation, files), and every baseline of a command with the comparison."""

# `logreg` is searched and fitted on at most `logreg_max_train` rows (lbfgs's
# time), fewer when scikit-learn's lbfgs would take more than `in_memory_gb`
# (classifiers.solver_bytes: a float32 score and gradient per row and class);
# from that fit it continues on every row, its loss and gradient summed over
# row chunks (lbfgs.memory_bytes). `sgd` and `linear_svm` (hinge loss by SGD)
# stream every row. `rbf_svm` is exact SVC, on at most `rbf_max_train`
# examples, up to EXACT_KERNEL_MAX_CLASSES classes (libsvm solves a problem per
# pair and scores every image against every pair); above, a Nystroem map
# followed by the linear SVM, streamed on every row.

import contextlib
import dataclasses
import os
from typing import NamedTuple

import numpy as np

from abo_tf.auditing import leakage
from abo_tf.classical import (
    classifiers,
    comparison,
    evaluation,
    extraction,
    feature_spec,
    interpretation,
    lbfgs,
    persistence,
    report,
    search,
)
from abo_tf.common import console, options, outputs
from abo_tf.common.errors import InputNotFoundError, UserInputError
from abo_tf.records.split import SPLITS
from abo_tf.reports import bootstrap

RBF_MAX_TRAIN = 10_000  # exact SVC's rows at most: libsvm's time grows about as their square
DEFAULT_RUNS = "runs"  # where `abo_tf.train --output runs/NAME` puts runs, as the README does
IN_MEMORY_GB = 2.5  # lbfgs on full ABO's 313,681 x 622 handcrafted features, 576 classes: ~2.2 GB
STREAMED_SOLVER, IN_MEMORY_SOLVER = "streamed SGD (partial_fit over chunks)", "in memory"


@dataclasses.dataclass(frozen=True)
class BaselineConfig(feature_spec.FeatureOptions):
    """Everything a baselines command depends on; `python -m abo_tf.baselines --help` documents each."""

    output: str = options.option(
        help="baselines folder (one subfolder per model, comparison.md)", group="output", required=True, config=False
    )
    models: tuple[str, ...] = options.option(
        ("logreg",),
        flag="--model",
        choices=classifiers.MODELS,
        group="models",
        help="baselines to train (several allowed)",
    )
    rbf_max_train: int = options.option(
        RBF_MAX_TRAIN,
        minimum=2,
        maximum=options.MAX_COUNT,
        group="models",
        help="exact rbf_svm (SVC) trains on a stratified subsample of at most this many examples "
        "(libsvm's time grows about as their square)",
    )
    logreg_max_train: int = options.option(
        classifiers.LOGREG_MAX_TRAIN,
        minimum=2,
        maximum=options.MAX_COUNT,
        group="models",
        help="logreg's search and first fit see at most this many rows: every row of the classes up to a cap, the "
        "cap of the others (lbfgs's time grows with rows x classes x columns x iterations); "
        "--logreg-all-rows-iter then continues on every row",
    )
    logreg_all_rows_iter: int = options.option(
        classifiers.LOGREG_ALL_ROWS_ITER,
        minimum=0,
        maximum=10_000,
        group="models",
        help="lbfgs iterations of logreg on every training row, from the coefficients of its fit on the "
        "--logreg-max-train rows when that cap applied (0: it stays fitted on them; each iteration at full ABO "
        "size: about 5 CPU s)",
    )
    knn_max_train: int = options.option(
        classifiers.KNN_MAX_TRAIN,
        minimum=2,
        maximum=options.MAX_COUNT,
        group="models",
        help="knn compares each image with at most this many training rows: every row of the classes up to a cap, "
        "the cap of the others (its cost grows with rows x images scored)",
    )
    exact_kernel_max_classes: int = options.option(
        classifiers.EXACT_KERNEL_MAX_CLASSES,
        minimum=2,
        maximum=options.MAX_COUNT,
        group="models",
        help="rbf_svm is exact SVC up to this many classes; above, a Nystroem map and a linear SVM by SGD "
        "on every row (SVC solves a problem per pair of classes)",
    )
    class_weights: str = options.option(
        "balanced",
        choices=classifiers.CLASS_WEIGHTINGS,
        group="models",
        help="loss weights against the long tail, as abo_tf.train's --class-weights: give the CNN run's to compare "
        "like with like (comparison.md lists each row's)",
    )
    hellinger: bool = options.option(
        True,
        group="models",
        help="square roots of the handcrafted histograms before scaling (Hellinger); CNN embeddings are "
        "L2-normalised either way",
    )
    sgd_epochs: int = options.option(
        classifiers.SGD_EPOCHS,
        minimum=1,
        maximum=1000,
        group="models",
        help="passes of SGD over its training rows, at most (fewer once it has seen 1M examples)",
    )
    in_memory_gb: float = options.option(
        IN_MEMORY_GB,
        minimum=0.001,
        maximum=1024.0,
        group="models",
        help="logreg/linear_svm/rbf_svm train on a stratified subsample their solver can hold in this much",
    )
    search_max_train: int = options.option(
        search.SEARCH_MAX_TRAIN,
        minimum=2,
        maximum=options.MAX_COUNT,
        group="models",
        help="the search compares candidates on a stratified subsample of at most this many training "
        "examples; the chosen one is then fitted on all the rows its model trains on",
    )
    runs: str | None = options.option(
        group="comparison", help="folder of CNN training runs to compare with (default: runs/, if it exists)"
    )
    measure_runs: bool = options.option(True, group="comparison", help="time each run's SavedModel on the test split")
    inference_images: int = options.option(
        512, minimum=1, maximum=options.MAX_COUNT, group="comparison", help="test images timed per run"
    )
    bootstrap_samples: int = bootstrap.samples_option("comparison")
    exclude: str | None = options.option(
        group="comparison",
        metavar="FILE",
        help="near_duplicate_groups.csv of `abo_tf.audit` (or its folder): also score "
        "validation and test without their images that have a near-duplicate in train",
    )
    cache_dir: str | None = options.option(
        group="output", config=False, help="feature cache (shared with abo_tf.features); default OUTPUT/features"
    )
    progress: bool = options.option(
        True, group=options.CONSOLE_GROUP, config=False, help="progress bars: extraction, search candidates, SGD"
    )
    # Library use only (smaller searches in tests): model -> grid replacing search.GRIDS[model].
    grids: dict | None = options.option(help="", cli=False)

    def grid(self, training):
        """The searched grid of a `classifiers.Training`: `grids[model]` if given, else search.GRIDS's."""
        key = training.model if training.exact_kernel else search.APPROXIMATE_KERNEL
        return (self.grids or {}).get(key, search.GRIDS[key])


def check_config(config):
    """Refuses unknown models and settings that cannot train.

    Raises:
      UserInputError: naming the flag and its value.
    """
    if config.runs is not None and not os.path.isdir(config.runs):
        raise InputNotFoundError(
            f"--runs {config.runs!r} is not a folder: give the folder of your training runs, or leave it out"
        )
    unknown = [model for model in config.models if model not in classifiers.MODELS]
    if config.exclude is not None:
        leakage.leaked_ids(config.exclude, "test")  # a bad --exclude fails before any training
    if not config.models:
        raise UserInputError(f"--model: give at least one baseline, from {classifiers.MODELS}")
    if unknown:
        raise UserInputError(f"--model {' '.join(unknown)}: choose one or more of {classifiers.MODELS}")
    limits = {
        "--rbf-max-train": (config.rbf_max_train, 2),
        "--knn-max-train": (config.knn_max_train, 2),
        "--logreg-max-train": (config.logreg_max_train, 2),
        "--logreg-all-rows-iter": (config.logreg_all_rows_iter, 0),
        "--exact-kernel-max-classes": (config.exact_kernel_max_classes, 2),
        "--sgd-epochs": (config.sgd_epochs, 1),
        "--search-max-train": (config.search_max_train, 2),
        "--inference-images": (config.inference_images, 1),
    }
    for flag, (value, minimum) in limits.items():
        if value is not None and value < minimum:
            raise UserInputError(f"{flag} {value}: must be at least {minimum}")
    if not config.in_memory_gb > 0:
        raise UserInputError(f"--in-memory-gb {config.in_memory_gb}: must be positive")


def check_splits(splits):
    """Refuses splits that cannot train or compare: other widths, other label spaces, one class.

    Args:
      splits: dict split name -> `feature_cache.SplitFeatures`, with "train" and "validation".

    Raises:
      UserInputError: naming the split and what differs.
    """
    train = splits["train"]
    for name, data in splits.items():
        if data.features.shape[1] != train.features.shape[1]:
            raise UserInputError(
                f"features of {name} have {data.features.shape[1]} columns, train's {train.features.shape[1]}: "
                "extract every split with the same features"
            )
        if list(data.classes) != list(train.classes):
            raise UserInputError(
                f"the label space of {name} ({len(data.classes)} classes) differs from train's ({len(train.classes)}): "
                "extract every split from the same records"
            )
        if len(data.labels) and (data.labels.min() < 0 or data.labels.max() >= len(train.classes)):
            raise UserInputError(
                f"labels of {name} fall outside the {len(train.classes)} classes: "
                f"the feature cache in {data.path!r} is damaged, delete it"
            )
        _check_finite(name, data)
    for name in ("train", "validation"):
        present = np.unique(splits[name].labels)
        if len(present) < 2:
            raise UserInputError(
                f"split {name!r} has a single class ({splits[name].classes[present[0]]!r}): "
                "a classifier needs at least 2 to train and to be chosen"
            )


def _check_finite(name, data):
    """Refuses NaN or infinite features, which every solver refuses only once the search has fitted its candidates.

    The pages read are released after: at full size they would keep 1 GB of features resident for nothing.
    """
    for start in range(0, len(data.features), classifiers.CHUNK_ROWS):
        bad = ~np.isfinite(np.asarray(data.features[start : start + classifiers.CHUNK_ROWS])).all(axis=1)
        if bad.any():
            row = start + int(np.argmax(bad))
            raise UserInputError(
                f"features of {name} hold NaN or infinite values (row {row}, image {data.image_ids[row]!r}): "
                f"the feature cache in {data.path!r} is damaged, delete it and extract again"
            )
    classifiers.release_pages(data.features)


class TrainingRows(NamedTuple):
    """Which training rows a model fits on, and how."""

    rows: np.ndarray
    subsample: dict | None  # {"examples", "of"} when the model trains on a subsample


class _Limit(NamedTuple):
    """A bound on the training rows of a model, and the option that sets it."""

    rows: int
    flag: str
    value: object  # the option's value


# The models whose training rows an option caps, and that option (`--rbf-max-train` ...).
_MAX_TRAIN = {"rbf_svm": "rbf_max_train", "knn": "knn_max_train", "logreg": "logreg_max_train"}


def _row_limit(training, config):
    """The most training rows an in-memory model trains on, and the flag that sets it; (None, None) when streamed."""
    if training.streamed:
        return None, None
    train = training.train
    num_classes = len(np.unique(train.labels))  # a subsample keeps a row of each
    per_row = classifiers.solver_bytes(training.model, 1, train.features.shape[1], len(train.classes))
    # Capped at the rows there are: a budget like 1e300 GB overflows to inf, and inf // per_row is NaN.
    held = min(config.in_memory_gb * 2**30 / per_row, len(train.labels))
    limits = [_Limit(int(held), "--in-memory-gb", config.in_memory_gb)]
    if training.model in _MAX_TRAIN:
        name = _MAX_TRAIN[training.model]
        limits.append(_Limit(getattr(config, name), "--" + name.replace("_", "-"), getattr(config, name)))
    limit = min(limits, key=lambda limit: limit.rows)
    if limit.rows < num_classes:
        raise UserInputError(
            f"{limit.flag} {limit.value} holds {limit.rows} training rows for {training.model}, "
            f"fewer than the {num_classes} classes: raise it"
        )
    return limit.rows, limit.flag


def make_training(model, train, config):
    """The `classifiers.Training` of `model` on every row: its kernel (exact or not) and its normalisation."""
    num_classes = len(np.unique(train.labels))
    exact = model != "rbf_svm" or num_classes <= config.exact_kernel_max_classes
    kind = train.info.get("spec", {}).get("kind")
    # Histograms are never negative; a first chunk that is (synthetic features in tests) keeps them as they are.
    histograms = kind == feature_spec.HANDCRAFTED and np.min(train.features[: classifiers.CHUNK_ROWS]) >= 0
    normalisation = "l2" if kind == feature_spec.CNN else "hellinger" if config.hellinger and histograms else "none"
    rows = np.arange(len(train.labels))
    # Neighbours and class means take no class weights: recorded as none, so comparison.md says so.
    weighting = "none" if model in classifiers.NEIGHBOUR_MODELS else config.class_weights
    return classifiers.Training(model, train, rows, config.sgd_epochs, config.seed, exact, normalisation, weighting)


def _training_rows(training, config):
    """All rows, or a stratified subsample an in-memory solver can hold (said, and recorded)."""
    train = training.train
    limit, flag = _row_limit(training, config)
    if limit is None or len(training.rows) <= limit:
        return TrainingRows(training.rows, None)
    # kNN and logreg keep the small classes whole (a proportional subsample would leave the tail a row or two).
    subsample, kind = (
        (classifiers.capped_subsample, "capped per class")
        if training.model in classifiers.CAPPED_MODELS
        else (classifiers.stratified_subsample, "stratified")
    )
    rows = subsample(train.labels, training.rows, limit, config.seed)
    print(
        f"{training.model}: training on a {kind} subsample of {len(rows)} of {len(train.labels)} examples ({flag})",
        flush=True,
    )
    return TrainingRows(rows, {"examples": int(len(rows)), "of": int(len(train.labels))})


def _continues_on_every_row(training, plan, config):
    """Whether logreg, fitted on the --logreg-max-train cap, continues on every row: only if lbfgs holds them in
    --in-memory-gb (the cap bounds the search's cost, the memory budget what a fit may hold)."""
    if training.model != "logreg" or plan.subsample is None or not config.logreg_all_rows_iter:
        return False
    train = training.train
    needed = lbfgs.memory_bytes(len(train.labels), train.features.shape[1], len(train.classes))
    if needed > config.in_memory_gb * 2**30:
        print(
            f"logreg: stays on its {len(plan.rows):,} capped rows: every row needs {needed / 2**30:.1f} GB, over "
            f"--in-memory-gb {config.in_memory_gb:g} (raise it to train on every row)",
            flush=True,
        )
        return False
    return True


def _record(model, config, splits, found, training, plan, classifier_rate):
    """The baseline.json of a trained baseline, but for the model file's hash and the importance."""
    train = splits["train"]
    return {
        "model": model,
        "features": train.info["name"],
        "feature_spec": train.info["spec"],
        "feature_key": train.info["key"],
        "records": os.path.abspath(config.records),
        "classes": list(train.classes),
        "search": found.record,
        "solver": STREAMED_SOLVER if training.streamed else IN_MEMORY_SOLVER,
        "kernel": None if model != "rbf_svm" else "exact (SVC)" if training.exact_kernel else "Nystroem",
        "normalisation": training.normalisation,
        "class_weights": training.weighting,
        "subsample": plan.subsample,
        "training_seconds": found.record["seconds"],
        "classifier_images_per_second": classifier_rate,
        "inference_images_per_second": evaluation.end_to_end_rate(
            splits["test"].info["images_per_second"], classifier_rate
        ),
        "model_file": persistence.MODEL_FILE,
    }


@contextlib.contextmanager
def _phase(enabled, description, steps):
    """A progress bar of `steps` redrawn every 30 s (`classifiers.heartbeat`): a long silent step looks hung."""
    bar = console.progress_bar(enabled=enabled, total=steps, desc=description, unit="step")
    with bar, classifiers.heartbeat(bar):
        yield bar


def _search_and_fit(model, splits, config):
    """(`classifiers.Training`, `TrainingRows`, `search.SearchResult`) of `model`: searched, then fitted on the rows
    it trains on; logreg fitted on its --logreg-max-train cap continues on every row (`_continues_on_every_row`)."""
    training = make_training(model, splits["train"], config)
    if model == "rbf_svm":
        kernel = "exact SVC" if training.exact_kernel else "Nystroem map and a linear SVM by SGD on every row"
        print(f"rbf_svm: {kernel} (--exact-kernel-max-classes {config.exact_kernel_max_classes})", flush=True)
    plan, every_row = _training_rows(training, config), training.rows
    training.rows = plan.rows
    continues = _continues_on_every_row(training, plan, config)
    # The capped fit's validation scores (97 MB and a scoring of validation at full size) would not be the
    # continued model's: not computed.
    found = search.search(
        training, config.grid(training), splits["validation"], config.search_max_train, config.progress, not continues
    )
    if not continues:
        return training, plan, found
    training.rows = every_row
    found = search.continue_on(training, found, every_row, config.logreg_all_rows_iter, config.progress)
    return training, TrainingRows(every_row, None), found


def train_baseline(model, splits, config):
    """Searches, fits, evaluates and saves one baseline into OUTPUT/<features>-<model>.

    Args:
      model: one of classifiers.MODELS.
      splits: dict split -> `feature_cache.SplitFeatures` (train, validation, test), checked.
      config: the `BaselineConfig`.

    Returns:
      The baseline.json record (with "folder" and "metrics").
    """
    train = splits["train"]
    training, plan, found = _search_and_fit(model, splits, config)
    folder = os.path.join(config.output, f"{train.info['name']}-{model}")
    os.makedirs(folder, exist_ok=True)
    handcrafted = train.info["spec"]["kind"] == feature_spec.HANDCRAFTED
    # Scoring 80k images with their bootstrap and the permutation importance take minutes at full size.
    steps = 2 + handcrafted
    with _phase(config.progress, f"{model} evaluation", steps) as bar:
        scored = {"validation": found.validation} if found.validation else None
        results = evaluation.evaluate(
            found.pipeline, splits, config.exclude, config.bootstrap_samples, config.seed, scored
        )
        found.record["validation_macro_f1"] = results["validation"].metrics["macro_f1"]
        bar.update()
        evaluation.write_reports(folder, splits, results)
        record = _record(model, config, splits, found, training, plan, results["test"].images_per_second)
        record["model_sha256"] = persistence.save_model(found.pipeline, os.path.join(folder, persistence.MODEL_FILE))
        bar.update()
        if handcrafted:
            record["importance"] = interpretation.interpret(
                model, found.pipeline, splits["validation"], folder, config.seed
            ).to_dict("records")
            bar.update()
    persistence.write_record(folder, record)
    by_split = evaluation.metrics_by_split(results)
    report.write_report(folder, record, by_split)
    return {**record, "folder": folder, "metrics": by_split}


def run_baselines(config):
    """Extracts (or reuses) features, trains every `config.models`, writes the comparison.

    Args:
      config: a `BaselineConfig`.

    Returns:
      Dict: "baselines" (one record per model) and "comparison" (the Markdown table).

    Raises:
      UserInputError: a setting that cannot train, features that cannot be
        extracted, or splits that cannot train (see `check_splits`).
    """
    check_config(config)
    outputs.claim(config.output, "baselines", "--output", records=config.records)
    options.save_config(config, config.output)
    cache_dir = config.cache_dir or os.path.join(config.output, "features")
    splits = extraction.extract_features(
        config.records, config.feature_spec(), SPLITS, cache_dir, config.batch_size, config.workers, config.progress
    )
    with _phase(config.progress, "checking the features", 1) as bar:  # reads every row: minutes at full size
        check_splits(splits)
        bar.update()
    models = list(dict.fromkeys(config.models))
    for model in models:  # a limit below a row per class fails before the first model trains, not after it
        _row_limit(make_training(model, splits["train"], config), config)
    results = [train_baseline(model, splits, config) for model in models]
    rows = comparison.collect_baselines(config.output)
    runs = config.runs or (DEFAULT_RUNS if os.path.isdir(DEFAULT_RUNS) else None)
    if runs:
        rows += comparison.collect_runs(runs, config.records, config.measure_runs, config.inference_images)
    text = comparison.write_comparison(rows, config.output, config.bootstrap_samples, config.seed)
    return {"baselines": results, "comparison": text}
