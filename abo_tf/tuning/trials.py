"""One trial: an ordinary training run in TUNE_DIR/trials/NNNN/, its epochs reported to Optuna for pruning."""

import dataclasses
import os
import time

import optuna

from abo_tf.common import options, outputs
from abo_tf.common.errors import UserInputError
from abo_tf.training import loop, run_folder
from abo_tf.tuning import space as space_lib
from abo_tf.tuning import study as study_lib

TRIALS = "trials"
# objective -> (key of the per-epoch validation metrics of loop.train's hook, key of metrics.json)
OBJECTIVES = {"macro_f1": ("val_macro_f1", "macro_f1"), "accuracy": ("val_accuracy", "accuracy")}
EPOCHS, SECONDS, STOPPED_BECAUSE = "epochs", "seconds", "stopped_because"
INTERRUPTED = "interrupted (Ctrl-C); its values are queued again"


def trial_dir(tune_dir, number):
    return os.path.join(tune_dir, TRIALS, f"{number:04d}")


def _pruning_hook(trial, objective, head_epochs):
    """Reports the fine-tuning epochs to the pruner, numbered 1, 2, ... from the first one; head epochs not at all.

    A frozen-backbone epoch scores below a fine-tuning one whatever the config. With epochs as Optuna's steps,
    the median pruner compared one trial's third head epoch with another's third fine-tuning epoch, so a longer
    --head-epochs was pruned by construction. Numbered from the start of fine-tuning, trials are compared at the
    same point of the same phase, under every pruner (median and hyperband alike, no wrapper around each), and
    Optuna's figures show curves that line up. The head phase is never pruned: it is the short, cheap part.
    """
    epoch_key = OBJECTIVES[objective][0]

    def on_epoch_end(epoch, validation_metrics):
        trial.set_user_attr(EPOCHS, epoch)
        if epoch <= head_epochs:
            return
        trial.report(validation_metrics[epoch_key], epoch - head_epochs)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch} (fine-tuning epoch {epoch - head_epochs})")

    return on_epoch_end


def trial_config(base_config, values, folder):
    """The train config of a trial: the base config with the drawn values, writing into `folder`."""
    return dataclasses.replace(base_config, **values, output=folder, progress=False)


def _config_or_prune(base_config, values, folder):
    """The trial's config; a combination train refuses (e.g. head_epochs above a drawn epochs) is pruned:
    counted, so a space full of such combinations still ends, and recorded with the reason."""
    try:
        return trial_config(base_config, values, folder)
    except UserInputError as error:
        raise optuna.TrialPruned(f"train refuses the combination: {error}") from error


def train_run(config, objective, on_epoch_end=None):
    """Trains `config` in its run folder (locked while it trains); returns the final validation `objective`.

    Not exported: a trial or a re-run is a search point, and the export with its parity check took a third of a
    tiny run. Its metrics and test predictions are written; best.toml trains the chosen config into a model.
    """
    outputs.claim(config.output, "train", "--output", recognise=run_folder.is_started_run)
    try:
        options.save_config(config, config.output)
        results = loop.train(config, on_epoch_end=on_epoch_end, export_model=False)
    finally:
        outputs.release(config.output)  # the study's bookkeeping, not this lock, says the trial is over
    return results["validation"][OBJECTIVES[objective][1]]


def _train(trial, config, objective):
    return train_run(config, objective, _pruning_hook(trial, objective, config.head_epochs))


def run_trial(study, trial, space, base_config, tune_dir, objective):
    """Trains the trial's config and tells the study how it ended; returns the final `TrialState`.

    A pruned trial, a diverged loss or a batch too large for memory end the trial as PRUNED (the
    configuration is bad, the epochs it ran are recorded); anything else is a FAIL and is raised.
    """
    import keras

    study_lib.mark_owner(trial)
    started = time.perf_counter()
    state, value, interrupted = optuna.trial.TrialState.FAIL, None, False
    try:
        config = _config_or_prune(base_config, space_lib.suggest(trial, space), trial_dir(tune_dir, trial.number))
        with study_lib.heartbeat(study, trial):
            value = _train(trial, config, objective)
        state = optuna.trial.TrialState.COMPLETE
    except optuna.TrialPruned as pruned:
        state = optuna.trial.TrialState.PRUNED
        trial.set_user_attr(STOPPED_BECAUSE, str(pruned))
    except (loop.TrainingDiverged, loop.OutOfMemory) as error:
        state = optuna.trial.TrialState.PRUNED
        trial.set_user_attr(STOPPED_BECAUSE, str(error))
    except UserInputError as error:
        trial.set_user_attr(STOPPED_BECAUSE, str(error))
        raise
    except KeyboardInterrupt:
        # Ctrl-C says nothing of the configuration: like a killed process's trial, it is run again.
        interrupted = True
        trial.set_user_attr(STOPPED_BECAUSE, INTERRUPTED)
        raise
    finally:
        trial.set_user_attr(SECONDS, round(time.perf_counter() - started, 3))
        study.tell(trial, value if state == optuna.trial.TrialState.COMPLETE else None, state=state)
        if interrupted:
            study_lib.queue_again(study, trial)
        keras.backend.clear_session()  # the next trial builds its own model; free this one's graphs
    return state
