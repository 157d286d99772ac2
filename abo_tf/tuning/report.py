"""What a search leaves in the tune folder: trials.csv, best.toml, report.md and its figures."""

import csv
import json
import os
import sys

import optuna
import tomli_w

from abo_tf.reports import figures, markdown, metrics
from abo_tf.training import run_folder
from abo_tf.tuning import trials as trials_lib

TRIALS_CSV, BEST_TOML, REPORT = "trials.csv", "best.toml", "report.md"
FIGURES = {"history": "optimization_history.png", "importances": "param_importances.png", "slices": "slices.png"}
_COLUMNS = ("number", "state", "objective", "epochs", "seconds", "params", "stopped_because")
MIN_TRIALS_FOR_IMPORTANCES = 4  # fANOVA on fewer finished trials says nothing


def recorded_trials(study):
    """Every trial but the surplus ones (asked by two workers at once, never run), by number."""
    return [trial for trial in study.get_trials(deepcopy=False) if not trial.user_attrs.get("surplus")]


def _replace(path, write):
    temporary = f"{path}.tmp-{os.getpid()}"  # several workers may write at the end of one study
    write(temporary)
    os.replace(temporary, path)
    return path


def write_trials_csv(study, tune_dir):
    def write(path):
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(_COLUMNS)
            for trial in recorded_trials(study):
                writer.writerow(
                    [
                        trial.number,
                        trial.state.name,
                        "" if trial.value is None else trial.value,
                        trial.user_attrs.get(trials_lib.EPOCHS, 0),
                        trial.user_attrs.get(trials_lib.SECONDS, ""),
                        json.dumps(trial.params, sort_keys=True),
                        trial.user_attrs.get(trials_lib.STOPPED_BECAUSE, ""),
                    ]
                )

    return _replace(os.path.join(tune_dir, TRIALS_CSV), write)


def best_trial(study):
    """The best COMPLETE trial, or None."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return max(complete, key=lambda trial: (trial.value, -trial.number)) if complete else None


def write_best_toml(study, tune_dir):
    """best.toml: the complete train config of the best trial (its run folder's config.toml), or None.

    A trial whose folder was deleted is named on stderr and skipped: the best one with a folder is written.
    """
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    for best in sorted(complete, key=lambda trial: (-trial.value, trial.number)):  # best_trial's order
        folder = trials_lib.trial_dir(tune_dir, best.number)
        values = run_folder.load_config(folder)
        if values is not None:
            break
        print(
            f"WARNING: trial {best.number} has no config.toml in {folder!r} (deleted?): best.toml skips it",
            file=sys.stderr,
        )
    else:
        return None
    final_path = os.path.join(tune_dir, BEST_TOML)

    def write(path):
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(
                f"# Trial {best.number} of study {study.study_name!r}: validation {best.value:.4f}.\n"
                f"#   python -m abo_tf.train --config {final_path} --records ... --output ...\n"
            )
            handle.write(tomli_w.dumps(dict(sorted(values.items()))))

    return _replace(final_path, write)


def _draw_figures(study, tune_dir, num_params):
    """The Optuna matplotlib figures that say something for this study: {name: file}."""
    import warnings

    from optuna.visualization import matplotlib as optuna_plots

    finished = [trial for trial in study.trials if trial.state == optuna.trial.TrialState.COMPLETE]
    plots = {"history": optuna_plots.plot_optimization_history, "slices": optuna_plots.plot_slice}
    if num_params >= 2 and len(finished) >= MIN_TRIALS_FOR_IMPORTANCES:
        plots["importances"] = optuna_plots.plot_param_importances
    drawn = {}
    figures.pyplot()  # the project's non-interactive backend
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", UserWarning)  # tight_layout on Optuna's colour-bar axes; the figure is fine
        for name, plot in plots.items():
            try:
                axes = plot(study)
            except (ValueError, RuntimeError) as error:  # e.g. importances of a parameter every trial shares
                print(f"report: no {name} figure ({error})", file=sys.stderr)
                continue
            first = axes.flat[0] if hasattr(axes, "flat") else axes
            figures.save(first.get_figure(), os.path.join(tune_dir, FIGURES[name]))
            drawn[name] = FIGURES[name]
    return drawn


def trial_test_metrics(tune_dir, trial):
    """The test figures of a finished trial's run (metrics.json), or None."""
    if trial is None:
        return None
    results = run_folder.load_metrics(trials_lib.trial_dir(tune_dir, trial.number)) or {}
    return results.get("test")


def default_trial(study):
    """The trial of the default config (queued first), when it finished."""
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if trial.user_attrs.get("default_config"):
            return trial
    return None


def comparison_rows(study, tune_dir):
    """(name, trial, validation objective, test macro F1, test accuracy) of the default config and the best trial."""
    rows = []
    for name, trial in (("default config", default_trial(study)), ("best trial", best_trial(study))):
        test = trial_test_metrics(tune_dir, trial) or {}
        rows.append(
            (
                name,
                "n/a" if trial is None else trial.number,
                None if trial is None else trial.value,
                test.get("macro_f1"),
                test.get("accuracy"),
            )
        )
    return rows


def write_report(study, tune_dir, tune_options, num_params):
    drawn = _draw_figures(study, tune_dir, num_params) if best_trial(study) else {}
    states = [trial.state.name for trial in recorded_trials(study)]
    lines = [
        f"# Hyperparameter search: study `{study.study_name}`",
        "",
        f"Objective: validation {tune_options.objective} (maximised); sampler {tune_options.sampler}, pruner "
        f"{tune_options.pruner}. Trials: " + ", ".join(f"{states.count(s)} {s.lower()}" for s in sorted(set(states))),
        "",
        "## Default config against the best trial",
        "",
        markdown.table(
            comparison_rows(study, tune_dir),
            ("config", "trial", f"validation {tune_options.objective}", "test macro F1", "test accuracy"),
        ),
        "",
        "The test split was not used to choose: its figures are reported once, here.",
        "",
    ]
    lines += [f"![{name}]({path})\n" for name, path in drawn.items()]
    lines += [
        "## Trials",
        "",
        f"Every trial, with its parameters: [{TRIALS_CSV}]({TRIALS_CSV}); the best "
        f"trial's train config: [{BEST_TOML}]({BEST_TOML}).",
        "",
    ]

    def write(path):
        with open(path, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines))

    return _replace(os.path.join(tune_dir, REPORT), write)


def write_all(search):
    """trials.csv, best.toml and report.md; returns the console summary."""
    tune_dir = search.options.output
    write_trials_csv(search.study, tune_dir)
    best_path = write_best_toml(search.study, tune_dir)
    write_report(search.study, tune_dir, search.options, len(search.space))
    lines = []
    for name, number, value, test_f1, test_accuracy in comparison_rows(search.study, tune_dir):
        lines.append(
            f"{name} (trial {number}): validation {metrics.format_figure(value, 4)}, test macro F1 "
            f"{metrics.format_figure(test_f1)}, test accuracy {metrics.format_figure(test_accuracy)}"
        )
    lines.append(f"best config: {best_path}" if best_path else "no trial completed: no best.toml")
    lines.append(f"report: {os.path.join(tune_dir, REPORT)}")
    return "\n".join(lines)
