"""The search: tune options, the tune folder, and the loop that runs trials until the study has its count."""

import dataclasses
import re
import sys
import time
import warnings

import optuna

from abo_tf.common import config as config_lib
from abo_tf.common import console, options, outputs
from abo_tf.common.errors import UserInputError
from abo_tf.records import shards
from abo_tf.training import loop, models
from abo_tf.tuning import space as space_lib
from abo_tf.tuning import study as study_lib
from abo_tf.tuning import trials as trials_lib

_SEARCH = "search"
DEFAULT_STUDY = "abo_tf-tune"
# Options that may change between runs of one study (ask for more trials, more time).
_MAY_CHANGE = ("trials", "timeout", "rerun_top", "rerun_seeds")
_POLL_SECONDS = 2.0


@dataclasses.dataclass(frozen=True)
class TuneOptions(loop.TrainConfig):
    """The train options the trials start from, and how to search around them."""

    output: str = options.option(
        help="tune folder: the study, trials/NNNN/ runs, trials.csv, best.toml, report.md",
        group="run folder",
        required=True,
        config=False,
    )
    trials: int = options.option(
        20,
        help="finished trials (complete or pruned) the study ends with",
        group=_SEARCH,
        minimum=1,
        maximum=100_000,
    )
    timeout: str = options.option(
        "", metavar="DURATION", group=_SEARCH, help="start no trial after this long, e.g. 90s, 45m, 2h ('' = no limit)"
    )
    objective: str = options.option(
        "macro_f1",
        choices=tuple(trials_lib.OBJECTIVES),
        group=_SEARCH,
        help="validation metric to maximise (the test split is never used to choose)",
    )
    pruner: str = options.option(
        "median", choices=study_lib.PRUNERS, group=_SEARCH, help="stops unpromising trials after an epoch"
    )
    sampler: str = options.option(
        "tpe", choices=study_lib.SAMPLERS, group=_SEARCH, help="draws the trials' values (seeded by --seed)"
    )
    rerun_top: int = options.option(
        3,
        group=_SEARCH,
        minimum=0,
        maximum=100,
        help="after the search, the best configs trained again with --rerun-seeds other seeds; best.toml is the "
        "best mean (0 = the best single trial)",
    )
    rerun_seeds: int = options.option(
        3, group=_SEARCH, minimum=2, maximum=100, help="seeds of each re-run config: --seed + 1, --seed + 2, ..."
    )
    storage: str = options.option(
        "",
        metavar="URL",
        group=_SEARCH,
        help="Optuna storage shared by workers, e.g. postgresql://host/db ('' = a journal file in --output)",
    )
    study: str = options.option(DEFAULT_STUDY, help="study name in the storage", group=_SEARCH)
    search: dict = options.option(
        help="the [search] table of --config: train option -> { low, high, log } or { choices }",
        group=_SEARCH,
        default_factory=dict,
    )

    def __post_init__(self):
        super().__post_init__()
        timeout_seconds(self.timeout)
        check_study_name(self.study)


def check_study_name(name):
    """A study name is a key in the storage and a title in report.md: not blank, one printable line."""
    if not name.strip() or not name.isprintable():
        raise UserInputError(f"--study {name!r}: give a name of printable characters, e.g. --study resnet50")


def timeout_seconds(duration):
    """'90', '90s', '45m', '2h' -> seconds; '' -> None."""
    if not duration:
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", duration)
    if not match or float(match.group(1)) <= 0:
        raise UserInputError(f"--timeout {duration!r}: give a positive duration like 90s, 45m or 2h")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def base_train_config(tune_options):
    """The train config every trial starts from (the default config), writing into the tune folder."""
    names = [field.name for field in dataclasses.fields(loop.TrainConfig)]
    return loop.TrainConfig(**{name: getattr(tune_options, name) for name in names})


def check_validation_split(records):
    """The records' manifest, when it has a validation split to choose trials on."""
    manifest = shards.read_manifest(records)
    if not manifest.get("splits", {}).get("validation", {}).get("num_examples"):
        raise UserInputError(
            f"--records {records!r} has no validation split, which trials are chosen on: "
            f"rebuild it with a validation fraction (build_records --split)"
        )
    return manifest


def check_apart_from_records(tune_dir, records):
    """The tune folder may not lie inside the records or hold them: a rebuild (--overwrite) would refuse its
    folder for the trials in it, and the records would not be a build's folder any more."""
    outputs.check_apart(tune_dir, "--output", records)


def _claim_shared(path):
    """Claims the tune folder, then lets go of its lock: several workers of one study share the folder."""
    for attempt in range(40):
        try:
            outputs.claim(path, "tune", "--output")
            break
        except outputs.OutputFolderError as error:
            if not outputs.is_busy(error) or attempt == 39:  # another worker holds it for the moment of its own claim
                raise
            time.sleep(0.25)
    outputs.release(path)


def _check_same_search(tune_options):
    saved = config_lib.load_run_config(tune_options.output)
    if saved is None:
        return
    current = options.config_values(tune_options)
    changed = [key for key in config_lib.differences(saved, current) if key not in _MAY_CHANGE]
    if changed:
        raise UserInputError(
            f"--output {tune_options.output!r} holds a study with another config (differs in "
            f"{changed}): use the same config to continue it, or choose another --output"
        )


@dataclasses.dataclass
class Search:
    """An opened search: what every trial needs."""

    options: TuneOptions
    space: list
    base_config: loop.TrainConfig
    study: optuna.Study


def open_search(tune_options, study_flag_given=False):
    """Checks the inputs, claims the tune folder, and opens (or creates) the study.

    Raises:
      UserInputError: a bad search space, records without validation, a folder or storage holding
        another study or config, a storage that cannot be opened.
    """
    base = base_train_config(tune_options)
    models.check_weights(base.weights)  # every trial would fail on it, after the study was created
    space = space_lib.parse_space(tune_options.search, base)
    manifest = check_validation_split(tune_options.records)
    check_apart_from_records(tune_options.output, tune_options.records)
    storage = study_lib.open_storage(tune_options.storage, tune_options.output) if tune_options.storage else None
    _claim_shared(tune_options.output)
    if storage is None:
        storage = study_lib.open_storage("", tune_options.output)
        study_lib.check_studies(storage, tune_options.study, study_flag_given)
    _check_same_search(tune_options)
    options.save_config(tune_options, tune_options.output)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study, _ = study_lib.open_study(
        storage,
        tune_options.study,
        "maximize",
        study_lib.make_sampler(tune_options.sampler, tune_options.seed),
        study_lib.make_pruner(tune_options.pruner, tune_options.trials),
        space_lib.default_point(space, base),
    )
    study_lib.check_same_records(study, manifest, tune_options.records)
    return Search(tune_options, space, base, study)


def _next_trial(search, expired):
    """Asks the study for a trial this process may run, None when the study has its count (or others are
    running its last trials, waited for) or `expired()`."""
    wanted = search.options.trials
    while True:
        study_lib.fail_dead_trials(search.study)
        finished, running = study_lib.counts(search.study)
        if finished >= wanted or expired():
            return None
        if finished + running >= wanted:
            time.sleep(_POLL_SECONDS)  # the last trials run elsewhere; one may die and need a replacement
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "heartbeat is for optimize": study.heartbeat beats here
            trial = search.study.ask()
        if study_lib.earlier_live(search.study, trial.number) < wanted:
            return trial
        # Another worker asked at the same moment and got an earlier number: this one would be one too many.
        trial.set_user_attr("surplus", True)
        search.study.tell(trial, state=optuna.trial.TrialState.FAIL)


def run_trials(search, progress=True):
    """Runs trials in this process until the study has `--trials` finished ones or `--timeout` passed."""
    deadline = timeout_seconds(search.options.timeout)
    started = time.monotonic()
    finished, _ = study_lib.counts(search.study)
    with console.progress_bar(
        total=search.options.trials,
        initial=min(finished, search.options.trials),
        desc="trials",
        unit="trial",
        enabled=progress,
    ) as bar:
        while True:
            trial = _next_trial(search, lambda: deadline is not None and time.monotonic() - started >= deadline)
            if trial is None:
                break
            try:
                trials_lib.run_trial(
                    search.study,
                    trial,
                    search.space,
                    search.base_config,
                    search.options.output,
                    search.options.objective,
                )
            except KeyboardInterrupt:
                print(
                    f"trial {trial.number}: {trials_lib.INTERRUPTED}; the same command continues the study",
                    file=sys.stderr,
                )
                raise
            bar.n = min(study_lib.counts(search.study)[0], search.options.trials)
            bar.refresh()
