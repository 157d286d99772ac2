"""Hyperparameter search on the validation split with scikit-learn's search classes, then one fit on every row.

`GridSearchCV` tries every candidate of a small grid; `HalvingGridSearchCV`
searches a large one by successive halving. Both get a `PredefinedSplit` whose
only fold trains on the training rows and scores on the validation split, and
`refit=False`: their refit would train on validation too. The chosen candidate
is then fitted on all the rows its model trains on by `classifiers.fit`
(streamed for sgd, in memory for the others).

At full ABO size (313,681 training rows, 576 classes) one fit of a
576-class model on every row costs minutes, so the search compares candidates
on a stratified subsample of at most `max_train` rows (and all of validation):
`benchmarks/baselines_search_benchmark.py` measures it. The candidates and
finalists are compared at a smaller budget than the final fit gets (SGD's
SEARCH_SGD_EXAMPLES, lbfgs's SEARCH_LOGREG_MAX_ITER): at full size they were
most of the cost. A knn grid over k alone is not fitted once per k: validation's neighbours are found once, for
the largest k, and each k votes with its first k (`classifiers.neighbour_scores`; the same figures).
"""

import time
import warnings
from typing import NamedTuple

import numpy as np
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning, FitFailedWarning
from sklearn.experimental import enable_halving_search_cv  # noqa: F401  (registers HalvingGridSearchCV)
from sklearn.model_selection import GridSearchCV, HalvingGridSearchCV, ParameterGrid, PredefinedSplit

from abo_tf.classical import classifiers
from abo_tf.common import console
from abo_tf.common.errors import UserInputError
from abo_tf.reports import metrics

APPROXIMATE_KERNEL = "rbf_svm (Nystroem)"  # the key of rbf_svm's grid above EXACT_KERNEL_MAX_CLASSES classes
# The searched grids (Pipeline parameter names). Small on purpose: each candidate is a full fit.
GRIDS = {
    "logreg": {"classifier__C": [0.01, 0.1, 1.0, 10.0]},
    # Hinge loss by SGD: alpha is 1 / (C n), so 1e-6 .. 1e-3 at 20,000 rows is C from 50 down to 0.05.
    "linear_svm": {"classifier__alpha": [1e-6, 1e-5, 1e-4, 1e-3]},
    # Exact SVC (at most EXACT_KERNEL_MAX_CLASSES classes). PCA keeping 95% of the variance shortens the
    # kernel computations on 2048-d CNN features.
    "rbf_svm": {
        "pca": ["passthrough", PCA(n_components=0.95, svd_solver="full")],
        "classifier__C": [0.1, 1.0, 10.0, 100.0],
    },
    # Nystroem map + hinge loss by SGD (more classes).
    APPROXIMATE_KERNEL: {"classifier__alpha": [1e-6, 1e-5, 1e-4]},
    "knn": {"classifier__n_neighbors": [1, 5, 15]},
    # shrink_threshold None: the plain class means, nothing to search.
    "centroid": {"classifier__shrink_threshold": [None]},
    "sgd": {"classifier__loss": ["hinge", "log_loss", "modified_huber"], "classifier__alpha": [1e-6, 1e-5, 1e-4, 1e-3]},
}
HALVING_ABOVE = 6  # candidates; larger grids are searched by successive halving
HALVING_FACTOR = 3  # each round keeps 1/3 of the candidates and triples the examples
SEARCH_MAX_TRAIN = 20_000  # training rows the candidates are compared on, at most
# The finalists (the last round's best RESCORED, or the grid's) are fitted again on a stratified subsample this
# many times larger before the choice: at full ABO size a 9-row change of the search's subsample had flipped sgd
# from hinge loss (test macro F1 0.401) to logistic loss (0.041).
RESCORED, RESCORE_FACTOR = 2, 3
NEIGHBOURS = "classifier__n_neighbors"  # knn's k
# The strategy of a search over knn's k alone: validation's neighbours found once, for the largest k.
NEIGHBOUR_STRATEGY = "exhaustive (one neighbour search, for the largest k)"


class SearchResult(NamedTuple):
    """The chosen pipeline, fitted on every training row, and the search's record for baseline.json."""

    pipeline: object  # sklearn Pipeline
    record: dict
    # The pipeline's validation scores when the search computed them (its finalists fitted on every row): the
    # evaluation reuses them rather than scoring validation again (kNN: 42,000 queries at full size).
    validation: classifiers.Timed | None = None


def _printable(params):
    return {
        key: value if isinstance(value, (int, float, str, type(None))) else repr(value) for key, value in params.items()
    }


def _converged(classifier, warned):
    """Whether the solver converged; None for fixed-epoch SGD (no stopping rule) and for the neighbour models
    (no solver).

    Stopping before the iteration limit is not enough: lbfgs also stops early when its line search fails
    (scipy's ABNORMAL_TERMINATION_IN_LNSRCH), which scikit-learn reports only by a ConvergenceWarning
    (`warned`: the fit raised one).
    """
    if classifier.__class__.__name__ == "SGDClassifier" or not hasattr(classifier, "max_iter"):
        return None
    limit = classifier.max_iter
    return bool(limit is None or limit < 0 or np.max(classifier.n_iter_) < limit) and not warned


class _Scorer:
    """Validation macro-F1 as the search's scorer; notes each candidate's convergence and ticks a progress bar.

    scikit-learn calls it once per scored candidate, in the order of `cv_results_` (one fold, n_jobs=1), but
    not for a candidate whose fit failed: `converged` holds (parameters, converged) pairs, matched to the
    rows by parameters (`converged_of`), so one failed fit does not shift every later row's.
    """

    def __init__(self, bar, grid_keys):
        self.bar, self.grid_keys, self.converged = bar, grid_keys, []
        # The warnings `_fit_searcher` records; with n_jobs=1 a candidate is fitted then scored, so those since
        # the last call are this candidate's fit's.
        self.caught, self.seen = [], 0

    def _fit_warned(self):
        fresh, self.seen = self.caught[self.seen :], len(self.caught)
        return any(issubclass(warning.category, ConvergenceWarning) for warning in fresh)

    def __call__(self, pipeline, features, labels):
        # Chunk by chunk: an SVC's one-vs-one decision values on a whole fold would not fit in memory.
        score = metrics.classification_metrics(labels, classifiers.predict_labels(pipeline, features))["macro_f1"]
        params = pipeline.get_params()  # estimators (a PCA) are clones of the grid's: compared by their repr
        scored = _printable({key: params[key] for key in self.grid_keys})
        self.converged.append((scored, _converged(pipeline.named_steps["classifier"], self._fit_warned())))
        self.bar.update()
        # No redraw of its own: in a log the bar writes a line every 30 s, not one per candidate.
        self.bar.set_postfix_str(f"last macro-F1 {score:.3f}", refresh=False)
        return score

    def converged_of(self, params):
        """The convergence noted for the next scoring of `params` (None when it was not scored)."""
        for index, (scored, converged) in enumerate(self.converged):
            if scored == _printable(params):
                del self.converged[index]
                return converged
        return None


def _search_data(training, validation, rows):
    """Features, labels and PredefinedSplit of [the search's training rows; validation]."""
    features = np.concatenate([training.train.features[rows], np.asarray(validation.features)])
    labels = np.concatenate([training.train.labels[rows], validation.labels])
    fold = np.concatenate([np.full(len(rows), -1), np.zeros(len(validation.labels), int)])
    return features, labels, PredefinedSplit(fold)


def _over_k(training, grid, rows):
    """Whether the candidates differ in knn's k alone (its default grid) and each k fits `rows`: one neighbour
    search then serves them all (`classifiers.neighbour_scores`)."""
    return (
        training.model == "knn"
        and all(set(params) == {NEIGHBOURS} for params in grid)
        and max(params[NEIGHBOURS] for params in grid) <= len(rows)
    )


def _neighbour_fit(training, grid, rows, validation):
    """knn fitted once on `rows` (k of the first candidate), the validation `Timed` of each candidate's k and its
    validation macro-F1."""
    fitted = classifiers.fit(training, grid[0], rows)
    scored = classifiers.neighbour_scores(fitted.pipeline, validation, [params[NEIGHBOURS] for params in grid])
    timed = [scored[params[NEIGHBOURS]] for params in grid]
    scores = [metrics.classification_metrics(validation.labels, each.scores.predictions)["macro_f1"] for each in timed]
    return fitted, timed, scores


def _neighbour_search(training, grid, rows, validation, bar):
    """The candidate rows of a search over knn's k (`_over_k`), as `_candidates` gives GridSearchCV's."""
    fitted, timed, scores = _neighbour_fit(training, grid, rows, validation)
    candidates = []
    for index, params in enumerate(grid):
        candidates.append(
            {
                "round": 0,
                "params": _printable(params),
                "grid_index": index,
                "train_examples": int(len(rows)),
                "validation_examples": int(len(validation.labels)),
                "validation_macro_f1": scores[index],
                "seconds": fitted.seconds + timed[index].seconds,  # the shared fit and neighbour search included
                "converged": None,
            }
        )
        bar.update()
    return candidates


def _searcher(training, grid_spec, scorer, cv, num_rows, labels=None):
    """GridSearchCV for a small grid or few rows (`labels`: both folds'), HalvingGridSearchCV (subsampling rows) for
    a large one."""
    estimator = training.pipeline(classifiers.sgd_passes(num_rows, training, classifiers.SEARCH_SGD_EXAMPLES))
    if training.model == "logreg":  # ranked at a fixed budget of iterations; the finalists get the full one
        estimator.set_params(classifier__max_iter=classifiers.SEARCH_LOGREG_MAX_ITER)
    common = dict(scoring=scorer, cv=cv, refit=False, n_jobs=1, error_score=np.nan)
    # Successive halving starts on 2 rows a class (scikit-learn's min_resources for a classifier and one fold): on
    # fewer rows in all it raised "min_resources_=10 is greater than max_resources_=7" (5 classes, 7 rows).
    few = labels is not None and len(labels) < 2 * len(np.unique(labels))
    if len(ParameterGrid(grid_spec)) <= HALVING_ABOVE or few:
        return GridSearchCV(estimator, grid_spec, **common)
    return HalvingGridSearchCV(  # its return_train_score defaults to True: each candidate scored twice
        estimator,
        grid_spec,
        factor=HALVING_FACTOR,
        resource="n_samples",
        random_state=training.seed,
        return_train_score=False,
        **common,
    )


def _candidates(results, grid, scorer, num_train, num_validation):
    """baseline.json's candidate rows from `cv_results_`, with each row's grid index."""
    rounds = results.get("iter", np.zeros(len(results["params"]), int))
    rows = []
    for index, params in enumerate(results["params"]):
        # HalvingGridSearchCV keeps this fraction of each fold (its _SubsampleMetaSplitter).
        fraction = results["n_resources"][index] / (num_train + num_validation) if "n_resources" in results else 1.0
        score = float(results["mean_test_score"][index])
        rows.append(
            {
                "round": int(rounds[index]),
                "params": _printable(params),
                "grid_index": next(position for position, candidate in enumerate(grid) if candidate == params),
                "train_examples": int(fraction * num_train),
                "validation_examples": int(fraction * num_validation),
                "validation_macro_f1": None if np.isnan(score) else score,
                "seconds": float(results["mean_fit_time"][index] + results["mean_score_time"][index]),
                "converged": scorer.converged_of(params) if not np.isnan(score) else None,
            }
        )
    return rows


def _fit_searcher(searcher, features, labels, model, scorer):
    """Runs the search; a failed candidate scores NaN (recorded), every candidate failing is a one-line error."""
    with warnings.catch_warnings(record=True) as caught:
        # Convergence is recorded per candidate (the scorer reads the warnings); a failed fit scores NaN and is
        # recorded as such.
        scorer.caught = caught
        warnings.simplefilter("always", ConvergenceWarning)
        warnings.simplefilter("ignore", FitFailedWarning)
        warnings.filterwarnings("ignore", "One or more of the test scores are non-finite", UserWarning)
        try:
            searcher.fit(features, labels)
        except ValueError as error:
            # scikit-learn raises "All the N fits failed ..." (its _warn_or_raise_about_fit_failures) when every
            # candidate failed, error_score notwithstanding; its last line is the estimator's own error.
            if "fits failed" not in str(error):
                raise
            raise UserInputError(
                f"every candidate of the {model} search failed to fit ({str(error).strip().splitlines()[-1]}): "
                "check the features (abo_tf.features) and the grid"
            ) from error
    for warning in caught:  # recorded, not shown: show the others as they would have been
        if not issubclass(warning.category, ConvergenceWarning):
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)


def _finalists(candidates):
    """The RESCORED best candidates of the last round, best first; ties go to the first in grid order."""
    last = max(row["round"] for row in candidates)
    scored = [row for row in candidates if row["round"] == last and row["validation_macro_f1"] is not None]
    if not scored:
        raise UserInputError(
            "every candidate of the search failed to fit: check the features (abo_tf.features) and the grid"
        )
    return sorted(scored, key=lambda row: (-row["validation_macro_f1"], row["grid_index"]))[:RESCORED]


class _Rescored(NamedTuple):
    """The finalists' scores on the larger subsample, and the chosen one's fit when that subsample is every row."""

    record: dict | None  # None: nothing to rescore (one finalist, or the search already saw every row)
    chosen: dict  # the chosen candidate's row
    fitted: object  # classifiers.Fit on training.rows, or None
    validation: object = None  # classifiers.Timed: the validation scores of `fitted`, or None


def _best(finalists, scores):
    """The index of the best finalist by its rescored validation macro-F1; ties go to the first in grid order."""
    return min(range(len(finalists)), key=lambda index: (-scores[index], finalists[index]["grid_index"]))


def _rescored_record(finalists, scores, rows, started):
    return {
        "train_examples": int(len(rows)),
        "finalists": [{"params": row["params"], "validation_macro_f1": score} for row, score in zip(finalists, scores)],
        "seconds": time.perf_counter() - started,
    }


def _rescore_neighbours(training, finalists, grid, rows, validation, started):
    """`_rescore` of knn finalists that differ in k alone: one fit on `rows`, validation's neighbours found once."""
    fitted, timed, scores = _neighbour_fit(training, grid, rows, validation)
    best = _best(finalists, scores)
    record = _rescored_record(finalists, scores, rows, started)
    if len(rows) < len(training.rows):
        return _Rescored(record, finalists[best], None)
    fitted.pipeline.set_params(**grid[best])  # k is read at query time: the fit of any k is the chosen one's
    return _Rescored(record, finalists[best], fitted, timed[best])


def _rescore(training, grid, finalists, validation, search_rows, progress, keep_validation=True):
    """Fits each finalist on a stratified subsample RESCORE_FACTOR times the search's and keeps the best on validation.

    Where that subsample is every training row, the chosen finalist's fit is the final fit, and is reused with its
    validation scores (unless `keep_validation` is False: the caller trains it further, they would not be its).
    """
    if len(finalists) < 2 or len(search_rows) >= len(training.rows):
        return _Rescored(None, finalists[0], None)
    size = RESCORE_FACTOR * len(search_rows)
    rows = classifiers.stratified_subsample(training.train.labels, training.rows, size, training.seed + 1)
    # Compared, not kept, unless they are fitted on every row: then the chosen one's fit is the final fit (SGD
    # sees the final fit's examples; lbfgs continues from the chosen one's coefficients).
    final = len(rows) == len(training.rows)
    examples = classifiers.SGD_EXAMPLES if final else classifiers.SEARCH_SGD_EXAMPLES
    logreg = training.model == "logreg"
    started, fits = time.perf_counter(), []
    with (
        console.progress_bar(enabled=progress, total=len(finalists), desc="finalists", unit="fit") as bar,
        classifiers.heartbeat(bar),
    ):
        params = [grid[row["grid_index"]] for row in finalists]
        if _over_k(training, params, rows):
            return _rescore_neighbours(training, finalists, params, rows, validation, started)
        for row in finalists:
            params = grid[row["grid_index"]]
            if logreg:
                params = {**params, "classifier__max_iter": classifiers.SEARCH_LOGREG_MAX_ITER}
            fitted = classifiers.fit(training, params, rows, examples=examples)
            # A final fit's scores are kept for the evaluation; the others' predictions are enough.
            if final and not logreg:
                scored = classifiers.timed_scores(fitted.pipeline, validation)
                predictions = scored.scores.predictions
            else:
                scored, predictions = None, classifiers.predict_labels(fitted.pipeline, validation.features)
            score = metrics.classification_metrics(validation.labels, predictions)["macro_f1"]
            fits.append((score, fitted, scored))
            bar.update()
    scores = [score for score, *_ in fits]
    best = _best(finalists, scores)
    record = _rescored_record(finalists, scores, rows, started)
    if not final:
        return _Rescored(record, finalists[best], None)
    if logreg:
        more = classifiers.LOGREG_MAX_ITER - classifiers.SEARCH_LOGREG_MAX_ITER
        bar = console.progress_bar(enabled=progress, total=1, desc="chosen finalist, lbfgs continued", unit="fit")
        with bar, classifiers.heartbeat(bar):  # minutes at full size: a line every 25 s
            chosen = classifiers.resume(training, fits[best][1], rows, more)
            bar.update()
        # A full scoring of validation (42,442 x 575 at full size), not the predictions the choice needed.
        scored = classifiers.timed_scores(chosen.pipeline, validation) if keep_validation else None
        return _Rescored(record, finalists[best], chosen, scored)
    return _Rescored(record, finalists[best], fits[best][1], fits[best][2])


def _grid_search(training, grid_spec, grid, rows, validation, bar):
    """The candidate rows of GridSearchCV or HalvingGridSearchCV on `rows` and validation, and the strategy's name
    (None for successive halving: it names its rounds)."""
    features, labels, cv = _search_data(training, validation, rows)
    scorer = _Scorer(bar, list(grid_spec))
    searcher = _searcher(training, grid_spec, scorer, cv, len(rows), labels)
    _fit_searcher(searcher, features, labels, training.model, scorer)
    del features
    exhaustive = isinstance(searcher, GridSearchCV)
    candidates = _candidates(searcher.cv_results_, grid, scorer, len(rows), len(validation.labels))
    return candidates, "exhaustive (GridSearchCV)" if exhaustive else None


def search(training, grid_spec, validation, max_train=SEARCH_MAX_TRAIN, progress=True, keep_validation=True):
    """Chooses the grid's best candidate by validation macro-F1, then fits it on every training row.

    Candidates are compared on a stratified subsample of at most `max_train`
    training rows: every one of them for a grid of at most HALVING_ABOVE
    candidates (GridSearchCV), by successive halving above (HalvingGridSearchCV,
    which subsamples rows of both folds in its early rounds). The chosen
    candidate is the best of the last round, ties going to the first in grid
    order, among its RESCORED best refitted on a stratified subsample
    RESCORE_FACTOR times larger (when there are more rows); it is then fitted on
    all of `training.rows`.

    Args:
      training: a `classifiers.Training`: the model, its rows, how it fits.
      grid_spec: Pipeline parameter name -> values to try.
      validation: the validation split's `SplitFeatures`.
      max_train: training rows the candidates are compared on, at most.
      progress: a progress bar advanced by each candidate.
      keep_validation: return the fitted pipeline's validation scores when the search computed them; False when
        the caller trains it further (logreg continued on every row), which would make them another model's.

    Returns:
      A `SearchResult`; its record has no "validation_macro_f1" of the fitted pipeline, which the
      baseline's evaluation measures.

    Raises:
      UserInputError: every candidate failed to fit.
    """
    grid = list(ParameterGrid(grid_spec))
    started = time.perf_counter()
    rows = classifiers.stratified_subsample(training.train.labels, training.rows, max_train, training.seed)
    with (
        console.progress_bar(enabled=progress, desc=f"{training.model} search", unit="candidate") as bar,
        classifiers.heartbeat(bar),
    ):
        if _over_k(training, grid, rows):
            candidates, strategy = _neighbour_search(training, grid, rows, validation, bar), NEIGHBOUR_STRATEGY
        else:
            candidates, strategy = _grid_search(training, grid_spec, grid, rows, validation, bar)
    rescored = _rescore(training, grid, _finalists(candidates), validation, rows, progress, keep_validation)
    chosen = rescored.chosen
    search_seconds = time.perf_counter() - started
    fitted = rescored.fitted or classifiers.fit(training, grid[chosen["grid_index"]], training.rows, progress)
    rounds = max(row["round"] for row in candidates) + 1
    record = {
        "strategy": strategy or f"successive halving (HalvingGridSearchCV, factor {HALVING_FACTOR}, {rounds} rounds)",
        "grid": {key: [_printable({key: value})[key] for value in values] for key, values in grid_spec.items()},
        "search_train_examples": int(len(rows)),
        "candidates": candidates,
        "rescored": rescored.record,
        "chosen": chosen["params"],
        "search_validation_macro_f1": chosen["validation_macro_f1"],
        "search_seconds": search_seconds,
        "final_fit": {
            "train_examples": int(len(training.rows)),
            "seconds": fitted.seconds,
            "converged": fitted.converged,
            "epochs": fitted.epochs,
        },
        "seconds": search_seconds + fitted.seconds,
    }
    return SearchResult(fitted.pipeline, record, rescored.validation)


def continue_on(training, found, rows, iterations, progress=True):
    """`found` (logreg fitted on a subsample of `rows`) continued by lbfgs on every one of `rows` for `iterations`.

    Its coefficients are the start: at full size one lbfgs iteration on every row costs 5-11 CPU s, 200 from
    scratch would not fit in 10 minutes, and a start converged on the capped rows needs few (30 measured).
    The record's final fit is the continuation, "continued_from" the fit it started from.
    """
    start = found.record["final_fit"]
    desc = f"lbfgs continued on {len(rows):,} rows"
    bar = console.progress_bar(enabled=progress, total=iterations, desc=desc, unit="iteration")
    with bar, classifiers.heartbeat(bar):  # an iteration on every full-size row takes seconds: a line every 25 s
        fitted = classifiers.Fit(found.pipeline, start["seconds"], start["converged"], None)
        continued = classifiers.resume(training, fitted, rows, iterations, bar.update)
    done = int(np.max(continued.pipeline.named_steps["classifier"].n_iter_))
    final_fit = {
        "train_examples": int(len(rows)),
        "seconds": continued.seconds,
        "converged": continued.converged,
        "epochs": None,
        "iterations": done,
        "continued_from": {key: start[key] for key in ("train_examples", "seconds", "converged")},
    }
    record = {**found.record, "final_fit": final_fit, "seconds": found.record["search_seconds"] + continued.seconds}
    return SearchResult(continued.pipeline, record)  # validation is scored again: the model changed
