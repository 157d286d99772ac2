"""scikit-learn's multinomial logistic regression fitted and continued by lbfgs, its loss and gradient summed by chunk.

`LogisticRegression.fit` (scikit-learn 1.9) holds two float32 [rows, classes] arrays for every row at once, the
scores and their gradient: at full ABO size (338,173 training rows, 575 classes) 1.56 GB beside the 0.84 GB of
features, and the every-row fit peaked at 3.30 GB. Here the same objective (`LinearModelLoss` over
`HalfMultinomialLoss`: class-weighted mean cross-entropy plus 1 / (2 C sum of weights) |W|^2, the intercept not
penalised) is summed CHUNK_ROWS rows at a time, in float32 as scikit-learn computes it on float32 features, and
minimised by the same scipy L-BFGS-B call with scikit-learn's options. The chunks run on a thread each core, one
BLAS thread each: on 100,000 full-size rows an evaluation took 1.5 CPU s so, 2.9-3.1 on one thread with two BLAS
threads (numpy's exponentials and sums use one core, OpenBLAS's threads wait on each other) and 3.1-3.6 in
scikit-learn's (load 11). `ChunkedLogisticRegression` fits the search's candidates and finalists on it too, so that
every logreg fit computes one objective: on 20,000 x 576 float32 rows, 575 classes, C 10, 50 iterations took 19 CPU s
against scikit-learn's 45, the coefficients 0.006 apart (AMD EPYC, load 12-15).
"""

import concurrent.futures
import os
import warnings

import numpy as np
import scipy.optimize
import scipy.sparse
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import validate_data
from threadpoolctl import threadpool_limits

from abo_tf.common import parallel

CHUNK_ROWS = 8192  # a chunk's scores are 8192 x classes float32: 19 MB at 575 classes
WINDOW = 4  # chunks in flight on the threads: each holds its scores, and its gradient until it is summed
# scikit-learn's L-BFGS-B options for LogisticRegression (`_logistic_regression_path`): gtol is the estimator's tol.
MAX_LINE_SEARCH_STEPS = 50
FTOL = 64 * np.finfo(float).eps
# Probabilities under float32's smallest normal number are subnormal, and x86 multiplies subnormals in microcode: an
# 8192 x 575 by 8192 x 576 product took 6.5 CPU s with 98% of its entries subnormal against 0.043 without. On the
# linear probe's full-size embeddings, at a search candidate's coefficients (C 10, 50 iterations on 20,000 rows),
# 4.3% of the probabilities were subnormal and an evaluation on 60,000 rows took 5.1 CPU s against 1.9 flushed, with
# the same loss and gradient: their share of the gradient is below float32's resolution, so they are flushed to zero.
# Processors differ: on an AMD EPYC (family 25) the same product took 0.057 CPU s all subnormal or all normal, and
# only numpy's elementwise products slowed (6x, on a 19 MB chunk 9 ms against 1.5).
SMALLEST_NORMAL = np.finfo(np.float32).tiny


def applies(classifier):
    """Whether `fit_further` computes `classifier`'s objective: a fitted multinomial (3+ classes) with an intercept.

    Two classes are scikit-learn's binomial loss (one row of coefficients), left to its own fit.
    """
    return len(classifier.classes_) > 2 and classifier.fit_intercept and not classifier.l1_ratio


def memory_bytes(num_rows, num_features, num_classes, workers=2):
    """About the memory `fit_further` takes on float32 features, in bytes: the features, and per chunk in flight
    its scores and gradient; lbfgs's 10 pairs of float64 vectors of the coefficients' size beside."""
    coefficients = num_classes * (num_features + 1)
    in_flight = (WINDOW + workers) * (CHUNK_ROWS * num_classes + coefficients) * 4
    return num_rows * num_features * 4 + in_flight + 24 * coefficients * 8


def flush_subnormals(values):
    """Sets the entries of `values` (float32, non-negative) below SMALLEST_NORMAL to zero, in place."""
    values[values < SMALLEST_NORMAL] = 0
    return values


def _chunk_loss_gradient(features, encoded, sample_weight, weights, intercept):
    """(weighted sum of cross-entropies, [classes, columns + 1] float32 gradient sum) of one chunk of rows."""
    scores = features @ weights.T
    scores += intercept
    rows = np.arange(len(encoded))
    scores -= scores.max(axis=1, keepdims=True)  # log-sum-exp without overflow
    true_scores = scores[rows, encoded]
    np.exp(scores, out=scores)
    totals = scores.sum(axis=1)
    losses = np.log(totals) - true_scores
    scores /= totals[:, None]  # the probabilities
    # Each row's gradient with respect to its scores, (p - onehot) * weight, as p * weight - weight: the weights
    # under 1 (frequent classes) would make small normal probabilities subnormal again after the flush.
    scores *= sample_weight[:, None]
    flush_subnormals(scores)  # before the matrix product below
    scores[rows, encoded] -= sample_weight
    gradient = np.empty((weights.shape[0], weights.shape[1] + 1), features.dtype)
    gradient[:, :-1] = scores.T @ features
    gradient[:, -1] = scores.sum(axis=0)
    return float(np.dot(sample_weight.astype(np.float64), losses)), gradient


def loss_gradient(flat, features, encoded, sample_weight, l2_reg_strength, pool=None):
    """scikit-learn's `LinearModelLoss.loss_gradient` for the multinomial loss, summed CHUNK_ROWS rows at a time.

    Args:
      flat: float64 [classes * (columns + 1)] coefficients, intercept last, raveled in Fortran order (scikit-learn's).
      features: float32 [rows, columns].
      encoded: int [rows], each row's class as its index in the classifier's classes.
      sample_weight: float32 [rows], the class weights of each row.
      l2_reg_strength: 1 / (C * sample_weight.sum()).
      pool: an executor the chunks run on (in order); None: in this thread.

    Returns:
      (loss, gradient raveled as `flat`).
    """
    num_classes = len(flat) // (features.shape[1] + 1)
    coef = flat.reshape((num_classes, -1), order="F")
    weights, intercept = coef[:, :-1].astype(features.dtype), coef[:, -1].astype(features.dtype)
    starts = range(0, len(features), CHUNK_ROWS)

    def chunk(start):
        rows = slice(start, start + CHUNK_ROWS)
        return _chunk_loss_gradient(features[rows], encoded[rows], sample_weight[rows], weights, intercept)

    chunks = map(chunk, starts) if pool is None else parallel.bounded_map(pool, chunk, starts, WINDOW)
    loss, gradient = 0.0, np.zeros(coef.shape)
    for chunk_loss, chunk_gradient in chunks:  # in chunk order whatever the threads: the same sums every run
        loss += chunk_loss
        gradient += chunk_gradient
    total_weight = float(np.sum(sample_weight))
    loss /= total_weight
    gradient /= total_weight
    loss += 0.5 * l2_reg_strength * float(np.sum(coef[:, :-1] ** 2))
    gradient[:, :-1] += l2_reg_strength * coef[:, :-1]
    return loss, gradient.ravel(order="F")


def _sample_weight(classifier, labels, encoded):
    """float32 weight of each row by the classifier's `class_weight` (a dict: 1 for a class it does not name;
    "balanced": scikit-learn's; None: 1), as LogisticRegression weighs them."""
    per_class = compute_class_weight(classifier.class_weight, classes=classifier.classes_, y=labels)
    return per_class.astype(np.float32)[encoded]


def _minimise(classifier, features, labels, start, iterations, callback=None, workers=None):
    """Minimises `classifier`'s objective on `features` from `start` (float64, raveled as `loss_gradient`'s `flat`)
    by scipy's L-BFGS-B with scikit-learn's options; sets coef_, intercept_ and n_iter_ as its fit does."""
    classes = classifier.classes_
    encoded = np.searchsorted(classes, labels)
    if not np.array_equal(classes[np.minimum(encoded, len(classes) - 1)], labels):
        raise ValueError(f"labels outside the classifier's {len(classes)} classes: it was fitted on other classes")
    sample_weight = _sample_weight(classifier, labels, encoded)
    l2_reg_strength = 1.0 / (classifier.C * float(np.sum(sample_weight)))
    workers = workers or len(os.sched_getaffinity(0))
    with (
        concurrent.futures.ThreadPoolExecutor(workers) as pool,
        threadpool_limits(1 if workers > 1 else None, user_api="blas"),
    ):
        result = scipy.optimize.minimize(
            loss_gradient,
            start,
            args=(features, encoded, sample_weight, l2_reg_strength, pool if workers > 1 else None),
            method="L-BFGS-B",
            jac=True,
            options={"maxiter": iterations, "maxls": MAX_LINE_SEARCH_STEPS, "gtol": classifier.tol, "ftol": FTOL},
            callback=callback and (lambda *_: callback()),
        )
    if result.status != 0:  # scikit-learn's _check_optimize_result: stopped at maxiter, or the line search failed
        message = f"lbfgs failed to converge after {result.nit} iterations: {result.message}"
        warnings.warn(message, ConvergenceWarning, stacklevel=3)
    coef = result.x.reshape((len(classes), -1), order="F")
    classifier.coef_ = coef[:, :-1].astype(features.dtype)
    classifier.intercept_ = coef[:, -1].astype(features.dtype)
    classifier.n_iter_ = np.array([min(result.nit, iterations)], np.int32)
    return classifier


def fit_further(classifier, features, labels, iterations, callback=None, workers=None):
    """Continues a fitted LogisticRegression by lbfgs from its coefficients on `features`, as its warm-started fit.

    Args:
      classifier: a fitted LogisticRegression for which `applies` holds; its C, tol and class_weight are used.
        Its coef_, intercept_ and n_iter_ are replaced.
      features: float32 [rows, columns], as `classifiers._transformed` gives them (float64 computes in float64).
      labels: [rows], each one of `classifier.classes_`.
      iterations: lbfgs iterations at most.
      callback: called with no argument after each iteration (a progress bar's update).
      workers: threads the chunks run on, one BLAS thread each; default the cores this process may use.

    Returns:
      `classifier`. A ConvergenceWarning is raised when lbfgs stopped at `iterations` or failed its line search.
    """
    start = np.hstack([classifier.coef_, classifier.intercept_[:, None]]).astype(np.float64).ravel(order="F")
    return _minimise(classifier, features, labels, start, iterations, callback, workers)


class ChunkedLogisticRegression(LogisticRegression):
    """scikit-learn's LogisticRegression whose multinomial lbfgs fit minimises the same objective by `loss_gradient`.

    The search's candidates and finalists are fitted by it, not by scikit-learn's loss: that one computes with
    subnormal probabilities (75 CPU s for a candidate's 50 iterations on the linear probe's 20,000 full-size rows,
    at a load of 15-24), and holds every row's scores at once. Any other fit (two classes, sample weights, sparse
    rows, another solver or penalty) is scikit-learn's own. The fitted attributes are LogisticRegression's.
    """

    def fit(self, X, y, sample_weight=None):  # noqa: N803 (scikit-learn's signature)
        if sample_weight is not None or scipy.sparse.issparse(X) or not self._chunked():
            return super().fit(X, y, sample_weight)
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32], order="C")
        check_classification_targets(y)
        self.classes_ = np.unique(y)
        if len(self.classes_) < 3:
            return super().fit(X, y)
        coef = getattr(self, "coef_", None) if self.warm_start else None
        if coef is not None and coef.shape != (len(self.classes_), X.shape[1]):
            raise ValueError(f"warm start coefficients of shape {coef.shape} for {len(self.classes_)} classes")
        start = np.zeros((len(self.classes_), X.shape[1] + 1))
        if coef is not None:
            start[:, :-1], start[:, -1] = coef, self.intercept_
        return _minimise(self, X, y, start.ravel(order="F"), self.max_iter)

    def _chunked(self):
        """Whether the parameters are those `loss_gradient` computes: lbfgs, an L2 penalty, an intercept."""
        plain = self.penalty == "deprecated" and self.l1_ratio == 0 and np.isfinite(self.C)
        return plain and self.solver == "lbfgs" and self.fit_intercept and self.n_jobs is None
