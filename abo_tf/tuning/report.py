"""What a search leaves in the tune folder: trials.csv, best.toml, report.md and its figures."""

import csv
import json
import math
import os
import sys

import optuna
import tomli_w

from abo_tf.reports import bootstrap, figures, markdown, metrics, predictions_file
from abo_tf.training import run_folder
from abo_tf.tuning import trials as trials_lib

TRIALS_CSV, BEST_TOML, REPORT, RERUNS_CSV = "trials.csv", "best.toml", "report.md", "reruns.csv"
FIGURES = {"history": "optimization_history.png", "importances": "param_importances.png", "slices": "slices.png"}
_COLUMNS = ("number", "state", "objective", "epochs", "seconds", "params", "stopped_because")
_RERUN_COLUMNS = ("trial", "search_objective", "seeds", "objectives", "mean", "sd", "params")
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


def chosen(study, reruns, objective="objective"):
    """(trial, header) of best.toml: the best mean of the re-runs when there are any, else the best trial."""
    if reruns and not math.isnan(reruns[0].mean):
        best = reruns[0]
        seeds = ", ".join(map(str, best.seeds))
        return best.trial, (
            f"validation {objective} {best.mean:.4f} ± {best.sd:.4f} (mean ± sd over seeds {seeds}; "
            f"{best.trial.value:.4f} in the search)"
        )
    best = best_trial(study)
    return best, None if best is None else f"validation {objective} {best.value:.4f}"


def write_best_toml(study, tune_dir, reruns=None, objective="objective"):
    """best.toml: the complete train config of the chosen trial (its run folder's config.toml), or None.

    A trial whose folder was deleted is named on stderr and skipped: the next best one with a folder is written.
    """
    first, figure = chosen(study, reruns, objective)
    if first is None:
        return None
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    others = sorted(complete, key=lambda trial: (-trial.value, trial.number))  # best_trial's order
    for best in [first] + [trial for trial in others if trial.number != first.number]:
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
    if best is not first:
        figure = f"validation {objective} {best.value:.4f}"
    final_path = os.path.join(tune_dir, BEST_TOML)

    def write(path):
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(
                f"# Trial {best.number} of study {study.study_name!r}: {figure}.\n"
                f"#   python -m abo_tf.train --config {final_path} --records ... --output ...\n"
            )
            handle.write(tomli_w.dumps(dict(sorted(values.items()))))

    return _replace(final_path, write)


def write_reruns_csv(reruns, tune_dir):
    """reruns.csv: per re-run config, its trial, search objective, seeds, their objectives, mean and sd."""

    def write(path):
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(_RERUN_COLUMNS)
            for rerun in reruns:
                seeds, objectives = " ".join(map(str, rerun.seeds)), " ".join(map(str, rerun.objectives))
                writer.writerow(
                    [rerun.trial.number, rerun.trial.value, seeds, objectives, rerun.mean, rerun.sd, _params(rerun)]
                )

    return _replace(os.path.join(tune_dir, RERUNS_CSV), write)


def _params(rerun):
    return json.dumps(rerun.trial.params, sort_keys=True)


def _rerun_section(reruns, objective, best_number):
    """The re-runs' table: the configs best.toml was chosen among, mean ± sd over seeds."""
    if not reruns:
        return []
    rows = [
        (
            rerun.trial.number,
            metrics.format_figure(rerun.trial.value, 4),
            f"{metrics.format_figure(rerun.mean, 4)} ± {metrics.format_figure(rerun.sd, 4)}",
            ", ".join(metrics.format_figure(value, 4) for value in rerun.objectives),
            _params(rerun),
        )
        for rerun in reruns
    ]
    return [
        "## Re-runs with other seeds",
        "",
        f"The {len(reruns)} best configs trained again with seeds {', '.join(map(str, reruns[0].seeds))} "
        f"([{RERUNS_CSV}]({RERUNS_CSV}), runs in `reruns/`); best.toml is trial {best_number}'s config, the best "
        "mean (a config whose run failed with a seed has no mean and is chosen only when every one failed).",
        "",
        markdown.table(rows, ("trial", f"search {objective}", f"mean ± sd {objective}", "per seed", "params")),
        "",
    ]


def _last_value(trial):
    """A pruned trial's objective at its last reported epoch, or None."""
    values = trial.intermediate_values
    return values[max(values)] if values else None


def _scored_trials(study):
    """(complete, pruned): lists of (trial, value); a pruned trial's value is its last epoch's."""
    complete, pruned = [], []
    for trial in recorded_trials(study):
        if trial.state == optuna.trial.TrialState.COMPLETE:
            complete.append((trial, trial.value))
        elif trial.state == optuna.trial.TrialState.PRUNED and _last_value(trial) is not None:
            pruned.append((trial, _last_value(trial)))
    return complete, pruned


def _pruned_label(pruned):
    return f"pruned ({len(pruned)}): value at the epoch it stopped"


def plot_history(study, objective, path):
    """The objective of every trial in order, pruned ones marked, with the best so far."""
    from matplotlib.ticker import MaxNLocator

    plt = figures.pyplot()
    complete, pruned = _scored_trials(study)
    figure, axis = plt.subplots(figsize=(7.5, 4.2))
    axis.scatter([t.number for t, _ in complete], [v for _, v in complete], label=f"complete ({len(complete)})")
    if pruned:
        axis.scatter(
            [t.number for t, _ in pruned], [v for _, v in pruned], marker="x", color="gray", label=_pruned_label(pruned)
        )
    best, numbers = [], sorted((t.number, v) for t, v in complete)
    for _, value in numbers:
        best.append(value if not best else max(best[-1], value))
    axis.step([number for number, _ in numbers], best, where="post", color="tab:red", label="best so far")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel("trial")
    axis.set_ylabel(f"validation {objective}")
    axis.set_title(f"search history: validation {objective} per trial (maximised)")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    return figures.save(figure, path)


def _panel_positions(values, distribution):
    """x positions of a parameter's values, the tick labels of a categorical one (else None), whether log scale."""
    if isinstance(distribution, optuna.distributions.CategoricalDistribution):
        choices = list(distribution.choices)
        return [choices.index(value) for value in values], [str(choice) for choice in choices], False
    return list(values), None, bool(getattr(distribution, "log", False))


def plot_slices(study, objective, path):
    """The objective against each searched parameter: one panel each, colour the trial number (one shared bar)."""
    from matplotlib.ticker import MaxNLocator

    plt = figures.pyplot()
    complete, pruned = _scored_trials(study)
    names = sorted({name for trial, _ in complete + pruned for name in trial.params})
    if not names:
        raise ValueError("no searched parameter to draw")
    columns = min(3, len(names))
    rows = -(-len(names) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns + 1.2, 3.3 * rows), squeeze=False)
    last = max(trial.number for trial, _ in complete + pruned)
    for axis, name in zip(axes.flat, names, strict=False):
        distribution = next(t.distributions[name] for t, _ in complete + pruned if name in t.params)
        for group, style in ((complete, {"cmap": "viridis", "vmin": 0, "vmax": max(last, 1)}), (pruned, None)):
            shown = [(t, v) for t, v in group if name in t.params]
            x, labels, log = _panel_positions([t.params[name] for t, _ in shown], distribution)
            y = [v for _, v in shown]
            if style:
                image = axis.scatter(x, y, c=[t.number for t, _ in shown], s=25, **style)
            elif shown:
                axis.scatter(x, y, marker="x", color="gray", s=25, label="pruned")
        if labels is not None:
            axis.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        elif log:
            axis.set_xscale("log")
        else:
            axis.xaxis.set_major_locator(MaxNLocator(4))
        axis.tick_params(labelsize=8)
        axis.set_xlabel(name)
        axis.set_ylabel(f"validation {objective}", fontsize=8)
        axis.grid(alpha=0.3)
    for axis in axes.flat[len(names) :]:
        axis.set_visible(False)
    figure.suptitle("each searched parameter against the objective" + ("; x: pruned" if pruned else ""))
    figure.tight_layout()
    # One colour bar for every panel, beside them (not over one panel's axis).
    figure.colorbar(image, ax=axes.ravel().tolist(), label="trial", shrink=0.8)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_importances(study, objective, path):
    """fANOVA importances of the searched parameters for the objective (Optuna's default evaluator)."""
    plt = figures.pyplot()
    importances = optuna.importance.get_param_importances(study)
    names = list(importances)[::-1]
    figure, axis = plt.subplots(figsize=(6.5, 0.45 * len(names) + 1.6))
    axis.barh(names, [importances[name] for name in names])
    for position, name in enumerate(names):
        axis.text(importances[name], position, f" {importances[name]:.2f}", va="center", fontsize=8)
    axis.set_xlim(0, 1.1)
    axis.set_xlabel(f"share of the variance of validation {objective} (fANOVA)")
    axis.set_title("hyperparameter importances")
    return figures.save(figure, path)


def _draw_figures(study, tune_dir, num_params, objective="macro_f1"):
    """The figures that say something for this study: ({name: file}, {name: why not drawn})."""
    import warnings

    finished = [trial for trial in study.trials if trial.state == optuna.trial.TrialState.COMPLETE]
    plots = {"history": plot_history, "slices": plot_slices}
    missing = {}
    if num_params >= 1 and len(finished) >= MIN_TRIALS_FOR_IMPORTANCES:
        plots["importances"] = plot_importances
    else:
        missing["importances"] = (
            f"{len(finished)} complete trials and {num_params} searched parameters: importances need at least "
            f"{MIN_TRIALS_FOR_IMPORTANCES} complete trials"
        )
    drawn = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for name, plot in plots.items():
            try:
                plot(study, objective, os.path.join(tune_dir, FIGURES[name]))
            except (ValueError, RuntimeError) as error:  # e.g. importances of a parameter every trial shares
                print(f"report: no {name} figure ({error})", file=sys.stderr)
                missing[name] = str(error)
                continue
            drawn[name] = FIGURES[name]
    return drawn, missing


def _trial_metrics(tune_dir, trial, split):
    """The figures of a finished trial's run on `split` (metrics.json), or None."""
    if trial is None:
        return None
    results = run_folder.load_metrics(trials_lib.trial_dir(tune_dir, trial.number)) or {}
    return results.get(split)


def trial_test_metrics(tune_dir, trial):
    """The test figures of a finished trial's run (metrics.json), or None."""
    return _trial_metrics(tune_dir, trial, "test")


def default_trial(study):
    """The trial of the default config (queued first), when it finished."""
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if trial.user_attrs.get("default_config"):
            return trial
    return None


CHOSEN_ROW = "best.toml (best re-run mean)"


def _compared_trials(study, reruns=None):
    """The default config, the best single trial of the search, and best.toml's trial when the re-runs chose
    another (the best mean over seeds)."""
    compared = [("default config", default_trial(study)), ("best trial", best_trial(study))]
    chosen_trial = chosen(study, reruns)[0] if reruns else None
    if chosen_trial is not None and compared[1][1] is not None and chosen_trial.number != compared[1][1].number:
        compared.append((CHOSEN_ROW, chosen_trial))
    return compared


def comparison_rows(study, tune_dir, reruns=None):
    """(name, trial, validation objective, test macro F1, test accuracy) of each of `_compared_trials`."""
    rows = []
    for name, trial in _compared_trials(study, reruns):
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


def _rerun_figure(trial, reruns):
    """A trial's mean ± sd over the re-runs' seeds, or "-" when it was not re-run."""
    for rerun in reruns or ():
        if trial is not None and rerun.trial.number == trial.number:
            return f"{metrics.format_figure(rerun.mean, 4)} ± {metrics.format_figure(rerun.sd, 4)}"
    return "-"


def formatted_rows(study, tune_dir, objective, reruns=None):
    """`comparison_rows` as text, each figure with its 95% interval by item when the trial's metrics.json has one;
    with `reruns`, a last column: the mean ± sd over the re-runs' seeds (what best.toml was chosen by)."""
    rows = []
    compared = _compared_trials(study, reruns)
    for row, (_, trial) in zip(comparison_rows(study, tune_dir, reruns), compared, strict=True):
        validation = _trial_metrics(tune_dir, trial, "validation") or {}
        test = trial_test_metrics(tune_dir, trial) or {}
        interval = (validation.get("intervals") or {}).get(trials_lib.OBJECTIVES[objective][1])
        rows.append(
            (
                *row[:2],
                bootstrap.format_interval(row[2], interval, 4),
                metrics.figure_with_interval(test, "macro_f1"),
                metrics.figure_with_interval(test, "accuracy"),
                *([_rerun_figure(trial, reruns)] if reruns else []),
            )
        )
    return rows


def best_minus_default(study, tune_dir, samples, seed, reruns=None):
    """The chosen trial (best.toml's) minus the default config on test (macro F1, accuracy), paired by item; None
    when either is missing, they are the same trial, or a run has no test_predictions.csv."""
    default, best = default_trial(study), chosen(study, reruns)[0]
    if default is None or best is None or default.number == best.number:
        return None
    folders = (trials_lib.trial_dir(tune_dir, trial.number) for trial in (best, default))
    return predictions_file.compare(*folders, samples, seed, ("macro_f1", "accuracy"))


def _difference_line(differences, samples, seed):
    if differences is None:
        return (
            "best.toml's config minus the default config: n/a (the same trial, one of them unfinished, or runs without "
            f"{predictions_file.TEST_PREDICTIONS})."
        )
    return (
        f"best.toml's config minus the default config on test, paired bootstrap over items ({samples} resamples, "
        f"seed {seed}): "
        f"macro F1 {bootstrap.format_difference(differences['macro_f1'])}, "
        f"accuracy {bootstrap.format_difference(differences['accuracy'])}; "
        '"(includes 0)": the test split cannot tell the two configs apart.'
    )


def _chosen_line(study, reruns):
    """Which row best.toml holds, and why."""
    best = best_trial(study)
    if best is None:
        return "No trial completed: no best.toml."
    if not reruns:
        return f"best.toml holds the best trial's config (trial {best.number})."
    chosen_trial = chosen(study, reruns)[0]
    if chosen_trial.number == best.number:
        return f"best.toml holds the best trial's config (trial {best.number}), also the best mean over the re-runs."
    return (
        f"best.toml holds trial {chosen_trial.number}'s config, not the best single trial's ({best.number}): its mean "
        "over the re-runs' seeds is the highest, and one run's score is partly luck of the seed."
    )


def write_report(study, tune_dir, tune_options, num_params, difference_line, reruns=None):
    drawn, missing = (
        _draw_figures(study, tune_dir, num_params, tune_options.objective) if best_trial(study) else ({}, {})
    )
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
            formatted_rows(study, tune_dir, tune_options.objective, reruns),
            ("config", "trial", f"validation {tune_options.objective} (search run)", "test macro F1", "test accuracy")
            + ((f"validation {tune_options.objective}: re-run mean ± sd",) if reruns else ()),
        ),
        "",
        _chosen_line(study, reruns),
        "",
        "The test split was not used to choose: its figures are reported once, here. In brackets: 95% intervals "
        "by a bootstrap over items (the views of a product resampled together).",
        "",
        difference_line,
        "",
    ]
    lines += [f"![{name}]({path})\n" for name, path in drawn.items()]
    lines += [f"No {name} figure: {reason}.\n" for name, reason in missing.items()]
    lines += _rerun_section(reruns, tune_options.objective, chosen(study, reruns)[0].number if reruns else None)
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


def write_all(search, reruns=None):
    """trials.csv, reruns.csv (with `reruns`), best.toml and report.md; returns the console summary."""
    tune_dir = search.options.output
    write_trials_csv(search.study, tune_dir)
    if reruns:
        write_reruns_csv(reruns, tune_dir)
    best_path = write_best_toml(search.study, tune_dir, reruns, search.options.objective)
    samples, seed = bootstrap.DEFAULT_SAMPLES, search.options.seed
    differences = best_minus_default(search.study, tune_dir, samples, seed, reruns)
    difference_line = _difference_line(differences, samples, seed)
    write_report(search.study, tune_dir, search.options, len(search.space), difference_line, reruns)
    lines = []
    objective = search.options.objective
    for name, number, value, test_f1, test_accuracy, *rerun in formatted_rows(
        search.study, tune_dir, objective, reruns
    ):
        again = f", re-run mean ± sd {rerun[0]}" if rerun and rerun[0] != "-" else ""
        lines.append(
            f"{name} (trial {number}): validation {objective} {value}{again}, test macro F1 {test_f1}, "
            f"test accuracy {test_accuracy}"
        )
    lines.append(difference_line)
    best, figure = chosen(search.study, reruns, search.options.objective)
    lines.append(f"best config: {best_path} (trial {best.number}, {figure})" if best else "no trial completed")
    lines.append(f"report: {os.path.join(tune_dir, REPORT)}")
    return "\n".join(lines)
