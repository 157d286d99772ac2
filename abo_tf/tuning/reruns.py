"""After the search: the top configs trained again with other seeds, so best.toml is chosen on a mean.

A search keeps the trial that scored highest once, and on a small validation split part of that score is the
seed's luck (the initial weights, the order, the augmentation). The `--rerun-top` best complete trials are
trained again with `--rerun-seeds` seeds the search never used (--seed + 1, + 2, ...: the search's own run is
left out, since it was chosen for scoring high), each in TUNE_DIR/reruns/NNNN-seed-S/, and best.toml is the
config of the best mean. A killed command resumes the re-runs; several workers of one study share them.
"""

import dataclasses
import math
import os
import sys
import time

import numpy as np
import optuna

from abo_tf.common import outputs
from abo_tf.training import loop, run_folder
from abo_tf.tuning import trials as trials_lib

RERUNS = "reruns"
_POLL_SECONDS = 2.0


@dataclasses.dataclass(frozen=True)
class Rerun:
    """One config (a trial's) trained with several seeds; an objective is NaN where a seed's run failed."""

    trial: optuna.trial.FrozenTrial
    seeds: tuple
    objectives: tuple

    @property
    def mean(self):
        return float(np.mean(self.objectives))  # NaN when a seed failed: such a config is never chosen

    @property
    def sd(self):
        return float(np.std(self.objectives, ddof=1))


def rerun_seeds(seed, count):
    return tuple(seed + 1 + offset for offset in range(count))


def rerun_dir(tune_dir, number, seed):
    return os.path.join(tune_dir, RERUNS, f"{number:04d}-seed-{seed}")


def top_trials(study, count):
    """The `count` best COMPLETE trials, best first (the earlier trial first on a tie)."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return sorted(complete, key=lambda trial: (-trial.value, trial.number))[:count]


def _planned(search):
    seeds = rerun_seeds(search.options.seed, search.options.rerun_seeds)
    return [(trial, seed) for trial in top_trials(search.study, search.options.rerun_top) for seed in seeds]


def _objective(search, number, seed):
    """The finished re-run's validation objective, None before it finished."""
    metrics = run_folder.load_metrics(rerun_dir(search.options.output, number, seed))
    return None if metrics is None else metrics["validation"][trials_lib.OBJECTIVES[search.options.objective][1]]


def _run_one(search, trial, seed):
    """Trains one re-run (resuming its checkpoints); False when another worker is training it."""
    import keras

    config = trials_lib.trial_config(
        search.base_config, trial.params, rerun_dir(search.options.output, trial.number, seed)
    )
    try:
        trials_lib.train_run(dataclasses.replace(config, seed=seed), search.options.objective)
    except outputs.OutputFolderError as error:
        if outputs.is_busy(error):
            return False
        raise
    except (loop.TrainingDiverged, loop.OutOfMemory) as error:  # the config fails with this seed: NaN, see Rerun
        print(f"re-run of trial {trial.number} with seed {seed}: {error}", file=sys.stderr)
    finally:
        keras.backend.clear_session()
    return True


def run_reruns(search):
    """Trains every planned re-run that has not finished, waiting for the ones other workers train."""
    pending = [(trial, seed) for trial, seed in _planned(search) if _objective(search, trial.number, seed) is None]
    while pending:
        busy = [(trial, seed) for trial, seed in pending if not _run_one(search, trial, seed)]
        pending = [(trial, seed) for trial, seed in busy if _objective(search, trial.number, seed) is None]
        if pending:
            time.sleep(_POLL_SECONDS)


def results(search):
    """The `Rerun` of each of the top trials, best mean first (a config with a failed seed last)."""
    seeds = rerun_seeds(search.options.seed, search.options.rerun_seeds)
    found = []
    for trial in top_trials(search.study, search.options.rerun_top):
        objectives = [_objective(search, trial.number, seed) for seed in seeds]
        found.append(Rerun(trial, seeds, tuple(math.nan if value is None else value for value in objectives)))
    return sorted(found, key=lambda rerun: (math.isnan(rerun.mean), -np.nan_to_num(rerun.mean), rerun.trial.number))
