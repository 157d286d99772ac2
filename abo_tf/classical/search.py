"""Hyperparameter search on the validation split: every candidate of a small grid, successive halving of a large one."""

import math
from typing import NamedTuple

from sklearn.decomposition import PCA
from sklearn.model_selection import ParameterGrid
from sklearn.pipeline import Pipeline

from abo_tf.classical import classifiers

# The searched grids (Pipeline parameter names). Small on purpose: each candidate is a full fit.
GRIDS = {
    "logreg": {"classifier__C": [0.01, 0.1, 1.0, 10.0]},
    # C >= 1 did not converge in 5000 liblinear iterations on the sample's standardised
    # handcrafted features (127 s of a 150 s search) and never won; small C regularise HOG's correlated columns.
    "linear_svm": {"classifier__C": [0.0001, 0.001, 0.01, 0.1]},
    # PCA keeping 95% of the variance shortens the kernel computations on 2048-d CNN features.
    "rbf_svm": {
        "pca": ["passthrough", PCA(n_components=0.95, svd_solver="full")],
        "classifier__C": [0.1, 1.0, 10.0, 100.0],
    },
    "sgd": {"classifier__loss": ["hinge", "log_loss", "modified_huber"], "classifier__alpha": [1e-6, 1e-5, 1e-4, 1e-3]},
}
HALVING_ABOVE = 6  # candidates; larger grids are searched by successive halving
HALVING_FACTOR = 3  # each round keeps 1/3 of the candidates and triples the training examples


class Scored(NamedTuple):
    """A candidate fitted in one round, and its validation macro-F1."""

    score: float
    index: int  # position in grid order: ties go to the first
    pipeline: Pipeline


class SearchResult(NamedTuple):
    """The chosen pipeline, fitted on every training row, and the search's record for baseline.json."""

    pipeline: Pipeline
    record: dict


def _printable(params):
    return {
        key: value if isinstance(value, (int, float, str, type(None))) else repr(value) for key, value in params.items()
    }


def _try(training, grid, candidates, rows, validation, round_index):
    """Fits and scores each candidate on `rows`; returns the `Scored` candidates and their record rows."""
    scored, records = [], []
    for index in candidates:
        fitted = classifiers.fit(training, grid[index], rows)
        score = classifiers.macro_f1(fitted.pipeline, validation)
        scored.append(Scored(score, index, fitted.pipeline))
        records.append(
            {
                "round": round_index,
                "params": _printable(grid[index]),
                "train_examples": int(len(rows)),
                "validation_macro_f1": score,
                "seconds": fitted.seconds,
                "converged": fitted.converged,
            }
        )
    return scored, records


def _num_rounds(num_candidates):
    return 1 if num_candidates <= HALVING_ABOVE else math.ceil(math.log(num_candidates) / math.log(HALVING_FACTOR))


def search(training, grid_spec, validation):
    """Chooses the grid's best candidate by validation macro-F1; ties go to the first in grid order.

    A grid of at most HALVING_ABOVE candidates fits each on every training row.
    A larger one is searched by successive halving: every candidate on
    1/3^(R-1) of the rows (stratified), the best third on 3x more, and so on,
    the last round on every row.

    Args:
      training: a `classifiers.Training`: the model, its rows, how it fits.
      grid_spec: Pipeline parameter name -> values to try.
      validation: the validation split's `SplitFeatures`.

    Returns:
      A `SearchResult`.
    """
    grid = list(ParameterGrid(grid_spec))
    candidates, rounds, history = list(range(len(grid))), _num_rounds(len(grid)), []
    for round_index in range(rounds):
        size = math.ceil(len(training.rows) / HALVING_FACTOR ** (rounds - 1 - round_index))
        rows = classifiers.stratified_subsample(training.train.labels, training.rows, size, training.seed + round_index)
        scored, records = _try(training, grid, candidates, rows, validation, round_index)
        history += records
        scored.sort(key=lambda candidate: (-candidate.score, candidate.index))
        keep = 1 if round_index == rounds - 1 else math.ceil(len(candidates) / HALVING_FACTOR)
        candidates = [candidate.index for candidate in scored[:keep]]
    best = scored[0]
    record = {
        "strategy": "exhaustive" if rounds == 1 else f"successive halving (factor {HALVING_FACTOR}, {rounds} rounds)",
        "grid": {key: [_printable({key: value})[key] for value in values] for key, values in grid_spec.items()},
        "candidates": history,
        "chosen": _printable(grid[best.index]),
        "validation_macro_f1": best.score,
        "seconds": sum(row["seconds"] for row in history),
    }
    return SearchResult(best.pipeline, record)
