"""The scikit-learn classifiers: pipelines built, fitted in memory or streamed by SGD, and scored chunk by chunk."""

# Memory at full ABO size (~400k x 2048 float32 = 3.3 GB of CNN features): the
# features are memory-mapped from the cache, never loaded whole. Streamed
# training and prediction read CHUNK_ROWS rows at a time.

import contextlib
import copy
import dataclasses
import functools
import math
import mmap
import threading
import time
import warnings
from typing import NamedTuple

import numpy as np
import scipy.sparse
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.kernel_approximation import Nystroem
from sklearn.linear_model import SGDClassifier
from sklearn.neighbors import KNeighborsClassifier, NearestCentroid
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, Normalizer, StandardScaler
from sklearn.svm import SVC
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import validate_data

from abo_tf.classical import lbfgs
from abo_tf.common import console
from abo_tf.common.errors import UserInputError
from abo_tf.reports import metrics

MODELS = ("logreg", "linear_svm", "rbf_svm", "sgd", "knn", "centroid")
# Nearest neighbours and nearest class mean compare L2-normalised rows (cosine): how much of the task is retrieval.
NEIGHBOUR_MODELS = ("knn", "centroid")
# kNN's reference rows at most (`--knn-max-train`): every query is compared with each. Measured at 622 columns on
# 2 cores: 8.3 CPU ms a query against 332,778 rows, so validation, test and the importance's 16 x 4,000 queries
# would take 1,300 CPU s; 50,000 rows take about a sixth.
KNN_MAX_TRAIN = 50_000
# logreg's training rows at most (`--logreg-max-train`): lbfgs computes scores and gradients of every row and
# class each iteration. Measured at 622 columns and 387 classes on 2 cores: 0.78 CPU s an iteration per 20,000
# rows, so 200 iterations on 332,778 rows would take about 2,600 CPU s, the search's candidates more.
LOGREG_MAX_TRAIN = 40_000
# lbfgs iterations on every training row after the capped fit (`--logreg-all-rows-iter`), from its coefficients
# (`lbfgs.fit_further`). Chosen on validation at full size (338,173 x 622, 575 classes): macro F1 0.289 capped,
# then 0.302, 0.311, 0.312, 0.320, 0.318 after 10, 30, 40, 50, 60 iterations on every row, at 5.3 CPU s each.
LOGREG_ALL_ROWS_ITER = 50
CAPPED_MODELS = ("knn", "logreg")  # subsampled by `capped_subsample`: every row of the small classes
# Above this many classes `rbf_svm` is Nystroem features + a linear SVM trained by SGD on every row: exact SVC
# solves a problem per pair of classes (165,600 at ABO's 576) and could only see about 1,000 rows there.
EXACT_KERNEL_MAX_CLASSES = 50
# Landmarks of the Nystroem map: each row becomes this many kernel values, and SGD's cost grows with it.
KERNEL_COMPONENTS = 512
# How a model reads its features before the scaler: square roots of the handcrafted histograms (Hellinger), L2
# normalised CNN embeddings (the linear probe's usual input), or as they are.
NORMALISATIONS = ("hellinger", "l2", "none")
# Loss weight of a class by its training examples, as `abo_tf.train --class-weights`: 1 / count ("balanced",
# scikit-learn's), 1 / sqrt(count), or none; normalised so the average example keeps weight 1.
CLASS_WEIGHTINGS = ("none", "sqrt", "balanced")
SGD_EPOCHS = 20
# Seconds between a heartbeat's redraws: under the 30 s a log's bar waits between lines, as a busy machine wakes the
# thread late (at full size, 30.5 and 32.9 s passed between two lines of linear_svm's and rbf_svm's logs).
HEARTBEAT_SECONDS = console.NON_TERMINAL_INTERVAL - 5
# lbfgs stops here unless converged first (recorded per candidate and for the final fit). Measured: handcrafted
# features converged in 68-85 iterations at 16 classes and 114-166 at 71; the linear probe on 576-d embeddings
# at 15 classes in 216, and stopped at 200 it scored the same (validation macro F1 0.976). At 387 classes with
# labels that do not follow the pixels lbfgs memorises them, far from converged after 75 iterations at about
# 0.3 CPU-seconds an iteration per 20,000 rows: 1,000 iterations would cost over an hour on every training row.
LOGREG_MAX_ITER = 200
# lbfgs iterations of each search candidate (the finalists and the final fit get LOGREG_MAX_ITER). Measured on the
# full-size handcrafted features (622 columns, 575 classes, 2 cores): 0.78 CPU s an iteration per 20,000 rows, so
# 4 candidates at 200 iterations took up to 620 CPU s before the finalists' 2 x 200 on 40,000 rows.
SEARCH_LOGREG_MAX_ITER = 50
# scikit-learn's rule of thumb (user guide, SGD tips): SGD converges after seeing about 10^6 examples.
SGD_EXAMPLES = 1_000_000
# Examples each search candidate and finalist sees: they are compared with each other, not used. Measured on
# the full-size handcrafted features (622 columns, 575 classes): 0.3 CPU ms a row a pass of one-vs-rest SGD, so
# at 1M examples each linear_svm's 4 candidates and 2 finalists cost 1,900 CPU s beside its final fit's 300.
SEARCH_SGD_EXAMPLES = 120_000
CHUNK_ROWS = 8192
# What one chunk's scores may take. SVC computes one-vs-one decision values, K (K - 1) / 2 floats a row:
# 165,600 at ABO's 576 classes, 1.3 MB a row, so 8192 rows at once would take 10.8 GB.
SCORE_BYTES = 256 * 2**20
# Bytes a row of SVC's scores holds per one-vs-one pair: its float64 decision value and the copy scipy's
# sparse product makes of them (`_svc_decision`). Counting the values alone, a 256 MB chunk peaked at 773 MB.
SVC_BYTES_PER_PAIR = 16


def class_weights(labels, weighting):
    """{label: weight} of each class in `labels` by `weighting` (one of CLASS_WEIGHTINGS); None for "none"."""
    if weighting == "none":
        return None
    classes, counts = np.unique(labels, return_counts=True)
    weights = 1.0 / counts ** (1.0 if weighting == "balanced" else 0.5)
    weights *= counts.sum() / (weights * counts).sum()
    return dict(zip(classes.tolist(), weights.tolist(), strict=True))


def _labelled_chunks(features, labels):
    """(float64 rows, their labels) of CHUNK_ROWS rows at a time."""
    for start in range(0, len(features), CHUNK_ROWS):
        yield features[start : start + CHUNK_ROWS].astype(np.float64), labels[start : start + CHUNK_ROWS]


class ClassMeans(NearestCentroid):
    """scikit-learn's NearestCentroid whose euclidean fit sums CHUNK_ROWS rows at a time: the same fitted model.

    NearestCentroid.fit (scikit-learn 1.9) computes the within-class deviations as float64 [rows, features]
    arrays (the centroid of every row, the difference, its square): at full size, 338,173 x 622, two of them
    live at once, 3.1 GB beside the float32 input, and the centroid baseline peaked at 5.61 GB. Here they are
    [CHUNK_ROWS, features] at a time, summed into [classes, features] float64 sums.
    """

    def fit(self, X, y):  # noqa: N803 (scikit-learn's signature)
        if self.metric != "euclidean" or scipy.sparse.issparse(X):
            return super().fit(X, y)
        X, y = validate_data(self, X, y)
        check_classification_targets(y)
        self.classes_, y_index = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"The number of classes has to be greater than one; got {len(self.classes_)} class")
        counts = np.bincount(y_index).astype(np.float64)
        if isinstance(self.priors, str):
            priors = counts if self.priors == "empirical" else np.ones_like(counts)
        else:
            priors = np.asarray(self.priors, dtype=np.float64)
        if (priors < 0).any():
            raise ValueError("priors must be non-negative")
        self.class_prior_ = priors / priors.sum()
        sums = np.zeros((len(counts), X.shape[1]))
        for chunk, labels in _labelled_chunks(X, y_index):
            members = scipy.sparse.csr_matrix(
                (np.ones(len(labels)), (labels, np.arange(len(labels)))), shape=(len(counts), len(labels))
            )
            sums += members @ chunk
        self.centroids_ = sums / counts[:, None]
        squares = sum(
            ((chunk - self.centroids_[labels]) ** 2).sum(axis=0) for chunk, labels in _labelled_chunks(X, y_index)
        )
        # One row a class (a tiny train split, or --in-memory-gb held a row a class) has no within-class spread:
        # scikit-learn's 0 / 0 made every score NaN and every prediction the first class. A zero spread scales by
        # 1 (`_decision_function`): the class of the nearest row, as its mean is that row.
        degrees = len(X) - len(counts)
        self.within_class_std_dev_ = np.sqrt(squares / degrees) if degrees else np.zeros(X.shape[1])
        if np.all(np.ptp(X, axis=0) == 0):
            raise ValueError("All features have zero variance. Division by zero.")
        self._shrink(sums.sum(axis=0) / len(X), counts, len(X))
        return self

    def _decision_function(self, X):  # noqa: N803 (scikit-learn's signature)
        """NearestCentroid's discriminant scores (ESL eq. 18.2), every class at once.

        scikit-learn computes them a class at a time, each through `pairwise_distances` and its checks of the whole
        chunk: at 575 classes that was most of the baseline's time (minutes per validation pass under load).
        """
        X = validate_data(self, X, reset=False, dtype=np.float64)
        scale = np.where(self.within_class_std_dev_ != 0, self.within_class_std_dev_, 1.0)
        rows, centroids = X / scale, self.centroids_ / scale
        squared = (rows**2).sum(axis=1)[:, None] - 2 * rows @ centroids.T + (centroids**2).sum(axis=1)
        return -np.maximum(squared, 0) + 2.0 * np.log(self.class_prior_)

    def _shrink(self, dataset_centroid, counts, num_rows):
        """The deviations of the centroids from the data's and their soft thresholding, as NearestCentroid.fit."""
        spread = self.within_class_std_dev_ + np.median(self.within_class_std_dev_)
        scale = np.sqrt(1.0 / counts - 1.0 / num_rows)[:, None] * spread
        with np.errstate(divide="ignore", invalid="ignore"):  # a zero spread: deviations unused without a threshold
            self.deviations_ = (self.centroids_ - dataset_centroid) / scale
        if self.shrink_threshold:
            signs = np.sign(self.deviations_)
            self.deviations_ = np.clip(np.abs(self.deviations_) - self.shrink_threshold, 0, None) * signs
            self.centroids_ = dataset_centroid + scale * self.deviations_


def _normaliser(normalisation):
    if normalisation not in NORMALISATIONS:
        raise UserInputError(f"unknown normalisation {normalisation!r}: choose from {NORMALISATIONS}")
    # Histograms are non-negative; the square root makes Euclidean distances Hellinger distances, so a bin
    # holding most of an image's mass (the background colour) no longer dominates every comparison.
    return {"hellinger": lambda: FunctionTransformer(np.sqrt), "l2": Normalizer, "none": lambda: "passthrough"}[
        normalisation
    ]()


def make_pipeline(model, seed=0, epochs=SGD_EPOCHS, exact_kernel=True, normalisation="none", weights="balanced"):
    """The unfitted Pipeline of `model`: normalisation, scaler, PCA and kernel map (passthrough unless set), classifier.

    Args:
      model: one of MODELS.
      seed: random state of the classifiers that have one.
      epochs: passes of SGD over its training rows (fixed: no stopping rule).
      exact_kernel: `rbf_svm` is libsvm's SVC; else a Nystroem map and a linear SVM by SGD.
      normalisation: one of NORMALISATIONS, applied before the scaler.
      weights: the classifier's class_weight: "balanced", None or {label: weight} (`class_weights`).

    Returns:
      A `sklearn.pipeline.Pipeline` with steps "normalise", "scaler", "pca", "kernel", "classifier".

    Raises:
      UserInputError: `model` is not one of MODELS.
    """

    def sgd(**loss):
        # One binary problem per class (576 on ABO), over the cores. Streamed fits need a dict of weights:
        # partial_fit refuses "balanced" (`Training.pipeline` gives one).
        return SGDClassifier(class_weight=weights, max_iter=epochs, tol=None, n_jobs=-1, random_state=seed, **loss)

    classifiers = {
        # scikit-learn's objective, minimised chunk by chunk with subnormal probabilities flushed (`lbfgs`).
        "logreg": lambda: lbfgs.ChunkedLogisticRegression(class_weight=weights, max_iter=LOGREG_MAX_ITER),
        # Hinge loss by SGD is a linear SVM (L2-regularised, alpha = 1 / (C n)) that streams every row; liblinear's
        # LinearSVC could only hold about 2,000 rows at 576 classes within 10 minutes.
        "linear_svm": lambda: sgd(loss="hinge"),
        # break_ties: predict is then the argmax of decision_function, which also ranks top-5.
        "rbf_svm": lambda: SVC(kernel="rbf", class_weight=weights, break_ties=True) if exact_kernel else sgd(),
        "sgd": sgd,
        # Brute force: trees do not help in hundreds of dimensions. Euclidean on the L2-normalised rows ranks
        # neighbours as cosine does (|a - b|^2 = 2 - 2 cos), through scikit-learn's compiled float32 search;
        # metric="cosine" took its pure-Python path, normalising every training row again for each query chunk.
        # Votes weigh 1 / euclidean distance.
        "knn": lambda: KNeighborsClassifier(metric="euclidean", algorithm="brute", weights="distance"),
        "centroid": ClassMeans,
    }
    if model not in classifiers:
        raise UserInputError(f"unknown model {model!r}: choose from {MODELS}")
    # gamma None is 1 / columns: SVC's "scale" on standardised features.
    kernel = "passthrough" if exact_kernel or model != "rbf_svm" else Nystroem(n_components=KERNEL_COMPONENTS)
    if kernel != "passthrough":
        kernel.set_params(random_state=seed)
    return Pipeline(
        [
            ("normalise", _normaliser(normalisation)),
            ("scaler", Normalizer() if model in NEIGHBOUR_MODELS else StandardScaler()),
            ("pca", "passthrough"),
            ("kernel", kernel),
            ("classifier", classifiers[model]()),
        ]
    )


def _class_quotas(counts, size):
    """Rows kept of each class: one each, then the other `size - len(counts)` in proportion to each class's other rows.

    Largest remainders round the shares, ties to the first class, so that the quotas sum to `size` exactly
    (rounding each share up to a row instead overshot by up to a row per class: at ABO's 576 classes the
    rbf_svm default of 1,041 rows became 1,359, and the kernel solver costs about the square).
    """
    extra = size - len(counts)
    shares = (counts - 1) * extra / (counts.sum() - len(counts))
    quotas = np.floor(shares).astype(np.int64)
    by_remainder = np.argsort(-(shares - quotas), kind="stable")
    quotas[by_remainder[: extra - quotas.sum()]] += 1
    return quotas + 1


def stratified_subsample(labels, rows, size, seed):
    """`size` of `rows`, each class in proportion and at least once (so more than `size` only below a row per class).

    Args:
      labels: the label of every row of the split.
      rows: the candidate row indices.
      size: how many to keep; `rows` itself when it has no more.
      seed: draws the rows kept.

    Returns:
      The kept row indices, sorted.
    """
    if size >= len(rows):
        return rows
    rng = np.random.default_rng(seed)
    row_labels = labels[rows]  # gathered once, not once per class (576 times over 313,681 rows on ABO)
    present, counts = np.unique(row_labels, return_counts=True)
    quotas = np.ones_like(counts) if size <= len(present) else _class_quotas(counts, size)
    kept = [
        rng.choice(rows[row_labels == label], quota, replace=False)
        for label, quota in zip(present, quotas, strict=True)
    ]
    return np.sort(np.concatenate(kept))


def capped_subsample(labels, rows, size, seed):
    """At most `size` of `rows`: every row of the classes up to a cap, `cap` rows of each larger one.

    A proportional subsample (`stratified_subsample`) of a long tail leaves its small classes a row or two; this
    keeps them whole and takes the rows it drops from the head classes.

    Args:
      labels: the label of every row of the split.
      rows: the candidate row indices.
      size: how many to keep at most (at least a row per class whatever it is).
      seed: draws the rows kept.

    Returns:
      The kept row indices, sorted.
    """
    if size >= len(rows):
        return rows
    row_labels = labels[rows]
    present, counts = np.unique(row_labels, return_counts=True)
    cap, left = 1, size
    for rank, count in enumerate(np.sort(counts)):  # the largest cap whose rows fit in `size`
        cap = max(1, left // (len(counts) - rank))
        if count > cap:
            break
        left -= count
    rng = np.random.default_rng(seed)
    kept = [
        rng.choice(rows[row_labels == label], min(count, cap), replace=False)
        for label, count in zip(present, counts, strict=True)
    ]
    return np.sort(np.concatenate(kept))


def solver_bytes(model, num_rows, num_features, num_classes):
    """About the memory the in-memory solver of `model` takes for a training matrix, in bytes.

    lbfgs (logreg) keeps float32 features and holds float32 raw predictions
    and gradients of every row and class. Measured at 313,681 x 622 with 576
    classes, lbfgs peaked 1.5 GB above its input.
    """
    if model == "logreg":
        return num_rows * (num_features + 2 * num_classes) * 4
    if model == "knn":  # the fitted model keeps every row, normalised, in float64
        return num_rows * num_features * (4 + 8)
    return num_rows * num_features * 4


@dataclasses.dataclass
class Training:
    """How one model trains: on which rows of which split. SGD models stream them, the others fit in memory."""

    model: str  # one of MODELS
    train: object  # feature_cache.SplitFeatures
    rows: np.ndarray  # training rows (all, or a subsample)
    epochs: int  # passes of SGD, at most (see sgd_passes)
    seed: int
    exact_kernel: bool = True  # rbf_svm: libsvm's SVC, or Nystroem + SGD (see EXACT_KERNEL_MAX_CLASSES)
    normalisation: str = "none"  # one of NORMALISATIONS
    weighting: str = "balanced"  # one of CLASS_WEIGHTINGS

    @property
    def streamed(self):
        """Whether the final fit is SGD by partial_fit over chunks (the search's SGD candidates fit in memory)."""
        return self.model in ("sgd", "linear_svm") or (self.model == "rbf_svm" and not self.exact_kernel)

    def pipeline(self, epochs=None):
        """The unfitted pipeline of this training (`make_pipeline`)."""
        # Weights of the classes of every training row, whichever subsample a candidate sees.
        weights = class_weights(self.train.labels[self.rows], self.weighting)
        return make_pipeline(
            self.model, self.seed, epochs or self.epochs, self.exact_kernel, self.normalisation, weights
        )


def sgd_passes(num_rows, training, examples=SGD_EXAMPLES):
    """Epochs of SGD over `num_rows`: enough to see `examples` examples, at most `training.epochs`."""
    return max(1, min(training.epochs, math.ceil(examples / max(num_rows, 1))))


@contextlib.contextmanager
def heartbeat(bar, interval=HEARTBEAT_SECONDS):
    """Redraws `bar` every `interval` seconds: one candidate of a 576-class search can take minutes, and a log
    that stays silent that long cannot be told from a hung command."""
    stop = threading.Event()

    def beat():
        while not stop.wait(interval):
            bar.refresh()

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield bar
    finally:
        stop.set()
        thread.join()


class Fit(NamedTuple):
    """A fitted candidate: the pipeline, the seconds fitting took, whether the solver converged, SGD's epochs."""

    pipeline: Pipeline
    seconds: float
    converged: bool | None  # None: fixed-epoch SGD has no stopping rule
    epochs: int | None  # passes of SGD; None for the other solvers


def _row_chunks(rows, rng=None):
    """`rows` cut into chunks of CHUNK_ROWS (chunk order shuffled with an rng), each sorted for locality."""
    chunks = [rows[start : start + CHUNK_ROWS] for start in range(0, len(rows), CHUNK_ROWS)]
    if rng is not None:
        chunks = [chunks[index] for index in rng.permutation(len(chunks))]
    return chunks


def _fit_kernel_map(pipeline, train, rows, seed):
    """Fits the Nystroem map (if any) on a stratified subsample of its landmarks' size: every class, when it can."""
    kernel = pipeline.named_steps["kernel"]
    if kernel == "passthrough":
        return
    landmarks = stratified_subsample(train.labels, rows, kernel.n_components, seed)
    before = [name for name, _ in pipeline.steps].index("kernel")
    kernel.fit(pipeline[:before].transform(read_rows(train.features, landmarks)))


def _fit_streaming(pipeline, train, rows, epochs, seed, progress=False):
    """`pipeline` fitted on `train.features[rows]` one chunk at a time: scaler, kernel map, then SGD by partial_fit."""
    normalise, scaler, classifier = (pipeline.named_steps[name] for name in ("normalise", "scaler", "classifier"))
    for chunk in _row_chunks(rows):
        features = train.features[chunk]
        scaler.partial_fit(features if normalise == "passthrough" else normalise.fit_transform(features))
    _fit_kernel_map(pipeline, train, rows, seed)
    classes = np.unique(train.labels[rows])
    rng = np.random.default_rng(seed)
    chunks = math.ceil(len(rows) / CHUNK_ROWS)
    bar = console.progress_bar(enabled=progress, total=epochs * chunks, desc=f"SGD, {epochs} epochs", unit="chunk")
    with (
        bar,
        heartbeat(bar),  # a chunk takes seconds: the bar alone writes a line 30 s plus up to a chunk apart
    ):
        for _ in range(epochs):
            for chunk in _row_chunks(rows, rng):
                order = rng.permutation(len(chunk))
                mapped = pipeline[:-1].transform(train.features[chunk])
                classifier.partial_fit(mapped[order], train.labels[chunk][order], classes=classes)
                bar.update()
    return pipeline


def read_rows(features, rows):
    """`features[rows]` as an array in memory; a memory map's pages are released after the copy.

    Pages of a memory map stay in the process's resident set once read: at
    full ABO size they would hold a second 780 MB copy of the training matrix
    beside the solver's.
    """
    copied = np.asarray(features[rows])
    release_pages(features)
    return copied


def release_pages(features):
    """Drops the pages of a memory-mapped feature matrix from the resident set (read again from disk if needed)."""
    mapping = getattr(features, "_mmap", None)  # np.memmap's mmap object: read-only, clean pages, safe to drop
    if mapping is not None:
        mapping.madvise(mmap.MADV_DONTNEED)


def fit(training, params, rows, progress=False, examples=None):
    """Fits one candidate of `training.model`.

    Args:
      training: a `Training`.
      params: Pipeline parameters of the candidate (`{"classifier__C": 1.0}`).
      rows: the rows of `training.train` to fit on.
      progress: a progress bar over streamed SGD's chunks.
      examples: streamed SGD sees about this many examples (`sgd_passes`); None: SGD_EXAMPLES.

    Returns:
      A `Fit`.
    """
    started = time.perf_counter()
    epochs = sgd_passes(len(rows), training, examples or SGD_EXAMPLES) if training.streamed else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        if training.streamed:
            pipeline = training.pipeline().set_params(**clone(params, safe=False))
            pipeline = _fit_streaming(pipeline, training.train, rows, epochs, training.seed, progress)
        else:
            pipeline = training.pipeline()
            # The rows read are this call's own copy: scaled in place, not copied again (at full ABO
            # size that second copy is 780 MB); the saved scaler copies again.
            pipeline.set_params(**clone(params, safe=False), scaler__copy=False)
            bar = console.progress_bar(enabled=progress, total=1, desc=f"{training.model} fit", unit="fit")
            with bar, heartbeat(bar):
                pipeline.fit(read_rows(training.train.features, rows), training.train.labels[rows])
                bar.update()
            pipeline.set_params(scaler__copy=True)
    no_solver = training.streamed or training.model in NEIGHBOUR_MODELS  # fixed epochs, or nothing to converge
    converged = None if no_solver else not any(issubclass(warning.category, ConvergenceWarning) for warning in caught)
    return Fit(pipeline, time.perf_counter() - started, converged, epochs)


def _transformed(pipeline, features, rows):
    """`pipeline[:-1].transform(features[rows])` chunk by chunk into one float32 array: no whole-size temporaries.

    On every full-size row each step's copy is 840 MB (the rows read, their square roots, the scaled copy).
    """
    out = None
    for start in range(0, len(rows), CHUNK_ROWS):
        # Pages released chunk by chunk: released at the end, those read peaked at 0.83 GB beside the 0.84 GB copy.
        chunk = pipeline[:-1].transform(read_rows(features, rows[start : start + CHUNK_ROWS]))
        if out is None:
            out = np.empty((len(rows), chunk.shape[1]), np.float32)
        out[start : start + len(chunk)] = chunk
    return out


def resume(training, fitted, rows, iterations, callback=None):
    """`fitted` (a logreg) fitted further on `rows`: lbfgs restarted from its coefficients for `iterations` more.

    The finalists are compared after SEARCH_LOGREG_MAX_ITER iterations; the chosen one continues rather than
    starting over (at full size each iteration over 40,000 rows costs 1.6 CPU s). `rows` may be more than it was
    fitted on (every row after a capped subsample): the class weights are then those of `rows`. The loss and
    gradient are summed over row chunks (`lbfgs.fit_further`): scikit-learn's fit on every full-size row held
    1.56 GB of scores and gradients beside the features. `callback` is called after each iteration.
    """
    started = time.perf_counter()
    pipeline, classifier = fitted.pipeline, fitted.pipeline.named_steps["classifier"]
    features = _transformed(pipeline, training.train.features, rows)
    labels = training.train.labels[rows]
    classifier.set_params(class_weight=class_weights(labels, training.weighting))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        if lbfgs.applies(classifier):
            lbfgs.fit_further(classifier, features, labels, iterations, callback)
        else:  # two classes: scikit-learn's binomial loss, small whatever the rows
            classifier.set_params(warm_start=True, max_iter=iterations).fit(features, labels)
    classifier.set_params(warm_start=False, max_iter=LOGREG_MAX_ITER)  # the saved model's, as a fit from scratch
    converged = not any(issubclass(warning.category, ConvergenceWarning) for warning in caught)
    return Fit(pipeline, fitted.seconds + time.perf_counter() - started, converged, None)


class Scores(NamedTuple):
    """What a classifier says of each example."""

    predictions: np.ndarray  # int32 [N]
    scores: np.ndarray  # float32 [N, num_classes]


def has_probabilities(pipeline):
    """Whether the pipeline predicts probabilities (logreg, sgd with log or modified Huber loss): only then an ECE."""
    return hasattr(pipeline, "predict_proba")


def score_chunk_rows(pipeline):
    """Rows scored at once: CHUNK_ROWS, fewer when the classifier's decision values outgrow SCORE_BYTES."""
    classifier = pipeline.named_steps["classifier"]
    known = len(classifier.classes_)
    per_row = SVC_BYTES_PER_PAIR * (known * (known - 1) // 2) if isinstance(classifier, SVC) else 8 * known
    return max(1, min(CHUNK_ROWS, SCORE_BYTES // per_row))


@functools.lru_cache(maxsize=4)
def _pair_incidence(num_classes):
    """[pairs, classes] sparse matrix of SVC's one-vs-one pairs (i < j, in its order): +1 at i, -1 at j."""
    first, second = np.triu_indices(num_classes, 1)
    pairs = np.arange(len(first))
    values = np.concatenate([np.ones(len(first)), -np.ones(len(first))])
    return scipy.sparse.csr_matrix(
        (values, (np.concatenate([pairs, pairs]), np.concatenate([first, second]))), shape=(len(first), num_classes)
    )


def _svc_decision(svc, features):
    """SVC's one-vs-rest decision function (votes plus scaled confidences), as `svc.decision_function` computes it.

    scikit-learn aggregates the one-vs-one values in a Python loop over the K (K - 1) / 2 pairs, reading
    each pair's column of a row-major array: at ABO's 576 classes, 165,600 pairs, about 10 ms an image
    whatever the support vectors. The same sums as two sparse products take about 1 ms (measured).
    """
    ovo = copy.copy(svc)  # shares the fitted arrays; only the shape of the decision function differs
    ovo.decision_function_shape = "ovo"
    values = ovo.decision_function(features)  # [N, pairs]: positive where the pair's first class wins
    incidence = _pair_incidence(len(svc.classes_))
    confidences = np.asarray(values @ incidence)
    # A class wins a pair as its first class where the value is >= 0, as its second where < 0; class c is
    # the second class of c pairs. The wins overwrite the values: no second [N, pairs] array of floats.
    values[...] = values >= 0
    votes = np.asarray(values @ incidence) + np.arange(len(svc.classes_))
    return votes + confidences / (3 * (np.abs(confidences) + 1))


def _decision_function(pipeline, chunk):
    """`pipeline.decision_function(chunk)`, through `_svc_decision` for a multi-class SVC."""
    classifier = pipeline.named_steps["classifier"]
    if isinstance(classifier, SVC) and len(classifier.classes_) > 2 and classifier.decision_function_shape == "ovr":
        return _svc_decision(classifier, pipeline[:-1].transform(chunk))
    return pipeline.decision_function(chunk)


def _chunk_scores(pipeline, features):
    """The classifier's scores of its known classes [rows, known] and the column each row predicts, chunk by chunk."""
    classifier = pipeline.named_steps["classifier"]
    probabilities = has_probabilities(pipeline)
    step = score_chunk_rows(pipeline)
    for start in range(0, len(features), step):
        chunk = np.asarray(features[start : start + step])
        raw = pipeline.predict_proba(chunk) if probabilities else _decision_function(pipeline, chunk)
        if raw.ndim == 2:
            yield raw, np.argmax(raw, axis=1)
            continue
        # A binary decision function: one column, positive for classes_[1]. At exactly 0, libsvm (SVC.predict)
        # gives classes_[1] and the linear models classes_[0]; the argmax of [-0, 0] would give classes_[0].
        chosen = raw >= 0 if isinstance(classifier, SVC) else raw > 0
        yield np.stack([-raw, raw], axis=1), chosen.astype(np.intp)


def predict_scores(pipeline, features, num_classes):
    """Predicted labels and per-class scores, chunk by chunk.

    Scores are probabilities where the classifier has `predict_proba` (see
    `has_probabilities`; classes absent from training get 0), else its
    decision function (absent classes get -inf). Either ranks classes for
    top-5 accuracy.

    Args:
      pipeline: a fitted Pipeline.
      features: [N, D] features (a memory map is read chunk by chunk).
      num_classes: the size of the label space.

    Returns:
      `Scores`: int32 predictions [N], float32 scores [N, num_classes].
    """
    return _full_scores(pipeline, _chunk_scores(pipeline, features), num_classes)


def _full_scores(pipeline, chunks, num_classes):
    """`Scores` over the label space from (scores of the known classes, chosen column) chunks (`_chunk_scores`)."""
    known = pipeline.named_steps["classifier"].classes_
    absent = 0.0 if has_probabilities(pipeline) else -np.inf
    predictions, scores = [np.empty(0, np.int32)], [np.empty((0, num_classes), np.float32)]  # 0 rows: empty
    for raw, chosen in chunks:
        full = np.full((len(raw), num_classes), absent, np.float32)
        full[:, known] = raw
        predictions.append(known[chosen].astype(np.int32))
        scores.append(full)
    return Scores(np.concatenate(predictions), np.concatenate(scores))


class Timed(NamedTuple):
    """A split's `Scores` and the seconds the classifier took to compute them."""

    scores: Scores
    seconds: float


def timed_scores(pipeline, data):
    """`predict_scores` of a split (`SplitFeatures`), timed."""
    started = time.perf_counter()
    scores = predict_scores(pipeline, data.features, len(data.classes))
    return Timed(scores, time.perf_counter() - started)


def _neighbour_votes(knn, distances, indices):
    """KNeighborsClassifier.predict_proba (weights="distance") from its neighbours: the same sums in the same order.

    A query at distance 0 from training rows takes their votes alone, as scikit-learn's `_get_weights` does.
    """
    with np.errstate(divide="ignore"):
        weights = 1.0 / distances
    exact = np.isinf(weights)
    on_a_row = exact.any(axis=1)
    weights[on_a_row] = exact[on_a_row]
    labels = knn._y[indices]  # the fitted rows' column in classes_
    votes, rows = np.zeros((len(indices), len(knn.classes_))), np.arange(len(indices))
    for column in range(indices.shape[1]):  # neighbour by neighbour, nearest first, as predict_proba adds them
        votes[rows, labels[:, column]] += weights[:, column]
    return votes / votes.sum(axis=1, keepdims=True)


def neighbour_scores(pipeline, data, ks):
    """{k: Timed} of a fitted knn pipeline on a split (`SplitFeatures`) for each number of neighbours in `ks`.

    The neighbours are found once, for the largest k: the k nearest are the first k of them (sorted by distance,
    ties in the order scikit-learn's search returns them), and each k votes as `predict_scores` would with that
    n_neighbors. A search over k then queries validation once instead of once a k (at full size, 42,000 queries
    against 50,000 rows each). Each k's seconds include the shared search. Chunks are `_chunk_scores`'s.
    """
    knn, started = pipeline.named_steps["classifier"], time.perf_counter()
    step = score_chunk_rows(pipeline)
    found = [
        knn.kneighbors(pipeline[:-1].transform(np.asarray(data.features[start : start + step])), max(ks))
        for start in range(0, len(data.features), step)
    ]
    searched = time.perf_counter() - started
    timed = {}
    for k in sorted(set(ks)):
        started = time.perf_counter()
        votes = (_neighbour_votes(knn, distances[:, :k], indices[:, :k]) for distances, indices in found)
        scores = _full_scores(pipeline, ((raw, np.argmax(raw, axis=1)) for raw in votes), len(data.classes))
        timed[k] = Timed(scores, searched + time.perf_counter() - started)
    return timed


def predict_labels(pipeline, features):
    """The labels `predict_scores` predicts, without its [N, num_classes] scores: what the search's scorer needs."""
    known = pipeline.named_steps["classifier"].classes_
    chunks = [known[chosen].astype(np.int32) for _, chosen in _chunk_scores(pipeline, features)]
    return np.concatenate([np.empty(0, np.int32), *chunks])  # 0 rows: empty


def macro_f1(pipeline, data):
    """Macro-F1 of `pipeline` on a split's features (`SplitFeatures`)."""
    return metrics.classification_metrics(data.labels, predict_labels(pipeline, data.features))["macro_f1"]
