"""abo_tf.tune: a study ends with exactly --trials trials, across kills and workers; best.toml reproduces the best."""

import csv
import errno
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

import optuna
import pytest

from abo_tf import train, tune
from abo_tf.training import run_folder
from abo_tf.tuning import reruns as reruns_lib
from abo_tf.tuning import search
from abo_tf.tuning import space as space_lib
from abo_tf.tuning import study as study_lib
from abo_tf.tuning import trials as trials_lib
from tests.conftest import TINY_TRAIN_ARGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPACE = (
    "[search]\nfine_tune_learning_rate = { low = 1e-4, high = 1e-2, log = true }\ndropout = { low = 0.0, high = 0.5 }\n"
)
TINY_TUNE = [*TINY_TRAIN_ARGS, "--head-epochs", "0", "--rerun-top", "0"]  # re-runs: the one test that asks


def _config(tmp_path, text=SPACE, name="search.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _tune_args(records_dir, config, output, *extra):
    return ["--config", config, "--records", records_dir, "--output", str(output), *TINY_TUNE, *extra]


def _trials_csv(tune_dir):
    with open(os.path.join(tune_dir, "trials.csv"), newline="") as handle:
        return list(csv.DictReader(handle))


def _study(tune_dir, name=search.DEFAULT_STUDY):
    return optuna.load_study(study_name=name, storage=study_lib.open_storage("", str(tune_dir)))


def _finished_numbers(tune_dir):
    return sorted(trial.number for trial in _study(tune_dir).get_trials(states=study_lib.FINISHED))


@pytest.mark.slow
def test_two_workers_share_a_study_whose_best_toml_reproduces_the_best_mean(built_records, tmp_path, capsys):
    records_dir, _ = built_records
    output, config = tmp_path / "tune", _config(tmp_path)
    # The best of two trials re-run (each re-run is a whole tiny training): the choice among several re-run means
    # is test_best_toml_holds_the_best_rerun_mean_not_the_best_single_trial's, on folders written without training.
    reruns = ["--rerun-top", "1", "--rerun-seeds", "2"]
    arguments = _tune_args(records_dir, config, output, "--trials", "2", "--epochs", "1", *reruns)
    _two_workers_share_one_study(arguments, output, tmp_path)
    rows = _trials_csv(output)
    assert [row["number"] for row in rows] == ["0", "1"] and {row["state"] for row in rows} <= {"COMPLETE", "PRUNED"}
    assert os.path.isfile(output / "trials" / "0001" / "history.csv")
    assert "default config" in (output / "report.md").read_text() and os.path.isfile(output / "slices.png")
    complete = [row for row in rows if row["state"] == "COMPLETE"]
    top = max(complete, key=lambda row: (float(row["objective"]), -int(row["number"])))  # --rerun-top 1
    means = _check_reruns(output, [top], seeds=[1, 2])
    best = max(means, key=lambda number: (means[number], -number))
    _check_not_exported(trials_lib.trial_dir(str(output), best), records_dir, tmp_path, capsys)
    rerun = tmp_path / "rerun"
    assert train.main(["--config", str(output / "best.toml"), "--output", str(rerun), "--no-progress"]) == 0
    assert os.path.isfile(rerun / run_folder.SAVED_MODEL / "saved_model.pb")  # best.toml is how to get the model
    reproduced = run_folder.load_metrics(str(rerun))["validation"]["macro_f1"]
    search_objective = next(float(row["objective"]) for row in rows if int(row["number"]) == best)
    assert abs(reproduced - search_objective) <= 0.02
    # F1 on a tiny split barely moves: the stricter check is that best.toml is the best mean's whole config.
    assert run_folder.load_config(str(rerun)) == run_folder.load_config(trials_lib.trial_dir(str(output), best))
    finished = sorted(output.glob("reruns/*/metrics.json"))
    stamps = [path.stat().st_mtime_ns for path in finished]
    assert tune.main(arguments) == 0  # the same command again: the study and its re-runs are done, none retrained
    assert [path.stat().st_mtime_ns for path in sorted(output.glob("reruns/*/metrics.json"))] == stamps


def _check_not_exported(trial, records_dir, tmp_path, capsys):
    """A trial is a search point, trained without an export: each command that needs its model refuses it in one
    line saying how to get one (its metrics are there, for the study's report)."""
    from abo_tf import evaluate, predict
    from abo_tf import export as export_cli

    assert run_folder.load_metrics(trial) is not None and os.path.isfile(os.path.join(trial, run_folder.NOT_EXPORTED))
    models = (run_folder.SAVED_MODEL, run_folder.KERAS_MODEL, run_folder.PARITY)
    assert not any(os.path.exists(os.path.join(trial, name)) for name in models)
    image = tmp_path / "photo.jpg"
    image.write_bytes(b"not read: the model is refused first")
    commands = {
        evaluate: ["--model", trial, "--records", records_dir, "--report", str(tmp_path / "report")],
        predict: ["--model", os.path.join(trial, run_folder.SAVED_MODEL), str(image)],
        export_cli: ["--run", trial, "--format", "onnx", "--records", records_dir],
    }
    capsys.readouterr()
    for command, argv in commands.items():
        assert command.main(argv) == 2, command.__name__
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and "trained without an export" in error and "best.toml" in error, error


def _check_reruns(output, complete_rows, seeds):
    """Checks reruns.csv and report.md against the re-runs' own run folders; returns {trial: mean}."""
    with open(output / "reruns.csv", newline="") as handle:
        reruns_rows = list(csv.DictReader(handle))
    assert {int(row["trial"]) for row in reruns_rows} == {int(row["number"]) for row in complete_rows}
    report = (output / "report.md").read_text()
    means = {}
    for row in reruns_rows:
        number = int(row["trial"])
        objectives = []
        for seed in seeds:
            folder = reruns_lib.rerun_dir(str(output), number, seed)
            assert run_folder.load_config(folder)["seed"] == seed
            objectives.append(run_folder.load_metrics(folder)["validation"]["macro_f1"])
        assert [int(seed) for seed in row["seeds"].split()] == seeds
        assert [float(value) for value in row["objectives"].split()] == objectives
        assert float(row["mean"]) == pytest.approx(statistics.mean(objectives))
        assert float(row["sd"]) == pytest.approx(statistics.stdev(objectives))
        assert f"{statistics.mean(objectives):.4f} ± {statistics.stdev(objectives):.4f}" in report
        means[number] = statistics.mean(objectives)
    assert "## Re-runs with other seeds" in report
    return means


def test_longer_head_phase_is_not_pruned_by_construction():
    # The tuner's median pruner, comparing from the second reported step, once one trial has finished.
    study = optuna.create_study(direction="maximize", pruner=study_lib.make_pruner("median", trials=3))
    finished = study.ask()
    report = trials_lib._pruning_hook(finished, "accuracy", head_epochs=0)
    for epoch in range(1, 5):
        report(epoch, {"val_accuracy": 0.8})
    study.tell(finished, 0.8)
    trial = study.ask()
    report = trials_lib._pruning_hook(trial, "accuracy", head_epochs=3)
    for epoch in range(1, 4):  # frozen backbone: far below the other trial's fine-tuning epochs at the same epoch
        report(epoch, {"val_accuracy": 0.1})
    assert study.trials[trial.number].intermediate_values == {}  # with epochs as steps it was pruned at epoch 2
    report(4, {"val_accuracy": 0.7})  # the first fine-tuning epoch: never pruned (n_warmup_steps)
    with pytest.raises(optuna.TrialPruned, match="fine-tuning epoch 2"):
        report(5, {"val_accuracy": 0.6})  # its best, 0.7, against the other's second fine-tuning epoch, 0.8
    assert study.trials[trial.number].intermediate_values == {1: 0.7, 2: 0.6}
    assert study.trials[trial.number].user_attrs[trials_lib.EPOCHS] == 5


@pytest.mark.slow
def test_pruning_stops_a_trial_after_its_first_epoch(built_records, tmp_path):
    records_dir, _ = built_records
    options, _ = tune.options.parse(
        search.TuneOptions,
        _tune_args(records_dir, _config(tmp_path), tmp_path / "tune", "--epochs", "3", "--trials", "1"),
        prog="t",
        description="",
    )
    opened = search.open_search(options)
    # A pruner no trial can pass: the loop must stop at the first epoch it reports.
    opened.study.pruner = optuna.pruners.ThresholdPruner(lower=2.0)
    trial = opened.study.ask()
    state = trials_lib.run_trial(opened.study, trial, opened.space, opened.base_config, options.output, "macro_f1")
    frozen = opened.study.trials[trial.number]
    assert state == optuna.trial.TrialState.PRUNED == frozen.state
    assert frozen.user_attrs[trials_lib.EPOCHS] == 1
    assert len(run_folder.load_history(trials_lib.trial_dir(options.output, trial.number))) == 1


def _command(records_dir, config, output, trials, epochs):
    return [
        sys.executable,
        "-m",
        "abo_tf.tune",
        *_tune_args(records_dir, config, output, "--trials", str(trials), "--epochs", str(epochs)),
    ]


def _env():
    return dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")


@pytest.mark.slow
def test_killed_study_is_completed_with_exactly_the_trials_asked(built_records, tmp_path):
    records_dir, _ = built_records
    output, config = tmp_path / "tune", _config(tmp_path)
    command = _command(records_dir, config, output, 1, epochs=1)
    process = subprocess.Popen(command, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # The first trial's run folder has its config: the trial is running (its owner recorded before), so kill it
    # mid-trial. Its retry trains in a folder of its own, so how far the dead one got does not matter (waiting
    # for its first epoch cost a model build and a trace in the killed process).
    _wait_for_first_trial(output, process)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL  # killed, not ended on its own
    # The same command again, in this process (the killed run was the CLI's): the killed trial does not count.
    assert tune.main(command[3:]) == 0
    trials = _study(output).trials
    assert len([trial for trial in trials if trial.state in study_lib.FINISHED]) == 1
    assert trials[0].state == optuna.trial.TrialState.FAIL  # the killed one, marked and retried with its values
    retried = [trial for trial in trials if trial.user_attrs.get("retry_of") == 0]
    assert retried and retried[0].params == trials[0].params


def _two_workers_share_one_study(arguments, output, tmp_path):
    """Runs a two-trial study, with its re-runs, by two workers side by side: a CLI process and this one (a second
    CLI process cost another TensorFlow start-up); checks that each ran one trial."""
    # This worker asks once the CLI runs the first trial: with TensorFlow loaded, it would otherwise finish a trial
    # and take the second too before the CLI started. The worker that finishes first waits for the other's running
    # trial instead of starting a third. A file, not a pipe, takes the CLI's output: a full pipe would stop it
    # mid-trial while this worker waits for that trial.
    with open(tmp_path / "worker.log", "w+") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "abo_tf.tune", *arguments], cwd=REPO, env=_env(), stdout=log, stderr=log
        )
        try:
            _wait_for_first_trial(output, worker)
            assert tune.main(arguments) == 0
        finally:
            worker.wait(timeout=400)
        log.seek(0)
        assert worker.returncode == 0, log.read()[-3000:]
    numbers = _finished_numbers(output)
    assert len(numbers) == 2 and len(set(numbers)) == 2
    owners = {trial.user_attrs["pid"] for trial in _study(output).get_trials(states=study_lib.FINISHED)}
    assert owners == {os.getpid(), worker.pid}  # both workers ran trials


def _wait_for_first_trial(output, process, seconds=400):
    """Waits until the CLI `process` runs the study's first trial (its run folder has its config), or has ended."""
    deadline = time.time() + seconds
    while not os.path.isfile(output / "trials" / "0000" / run_folder.CONFIG) and time.time() < deadline:
        if process.poll() is not None:
            return
        time.sleep(0.05)


BAD_SPACES = {
    "empty": ("[search]\n", "search space is empty"),
    "unknown key": ("[search]\nlearning_rat = { low = 0.1, high = 0.2 }\n", "allowed are"),
    "low above high": ("[search]\ndropout = { low = 0.4, high = 0.1 }\n", "low must not be above high"),
    "log touches zero": ("[search]\nweight_decay = { low = 0.0, high = 0.1, log = true }\n", "above 0"),
    "unknown model": ('[search]\nmodel = { choices = ["resnet50", "alexnet"] }\n', "alexnet"),
    "unknown weighting": ('[search]\nclass_weights = { choices = ["none", "cubic"] }\n', "cubic"),
    "not a table": ("search = 3\n", "search = 3 must be a table (a table such as { low"),
    "neither range nor choices": ("[search]\ndropout = { low = 0.1 }\n", "give either low and high"),
    "range of a string": ("[search]\nclass_weights = { low = 1, high = 2 }\n", "choices"),
    "validation steps": ("[search]\nvalidation_steps = { low = 1, high = 4 }\n", "how a trial runs or is measured"),
    "mixed precision": ("[search]\nmixed_precision = { choices = [true, false] }\n", "set it outside [search]"),
    "same choice twice": ("[search]\ndropout = { choices = [0, 0.0] }\n", "choices must differ"),
    "too many choices": (
        "[search]\nseed = { choices = [" + ",".join(map(str, range(1001))) + "] }\n",
        "1,001 choices, more than 1000: give a range",
    ),
    "image size past its bound": ("[search]\nimage_size = { low = 64, high = 100000 }\n", "at most 1024"),
}


@pytest.mark.parametrize("text, message", BAD_SPACES.values(), ids=BAD_SPACES)
def test_bad_search_space_is_one_line_error(built_records, tmp_path, capsys, text, message):
    records_dir, _ = built_records
    output = tmp_path / "tune"
    # One short trial at most: an accepted space (a regression) fails quickly instead of training 20 trials.
    assert tune.main(_tune_args(records_dir, _config(tmp_path, text), output, "--trials", "1", "--epochs", "1")) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error:") and message in error and "\n" not in error
    assert not os.path.exists(output)  # refused before the folder was claimed


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--trials", "0"], "--trials 0 must be at least 1"),
        (["--storage", "nosuchdb://x/y"], "cannot be opened"),
        (["--timeout", "soon"], "--timeout 'soon'"),
        (["--study", ""], "--study ''"),
        (["--study", "a\nb"], "--study 'a\\nb'"),
    ],
    ids=["no trials", "bad storage", "bad timeout", "empty study", "study of two lines"],
)
def test_bad_option_is_one_line_error(built_records, tmp_path, capsys, extra, message):
    records_dir, _ = built_records
    assert tune.main(_tune_args(records_dir, _config(tmp_path), tmp_path / "tune", *extra)) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error


def test_folder_of_another_study_is_refused_unless_named(built_records, tmp_path, capsys):
    records_dir, _ = built_records
    output = tmp_path / "tune"
    options, _ = tune.options.parse(
        search.TuneOptions, _tune_args(records_dir, _config(tmp_path), output, "--study", "a"), prog="t", description=""
    )
    search.open_search(options, study_flag_given=True)
    assert tune.main(_tune_args(records_dir, _config(tmp_path), output, "--trials", "1")) == 2
    assert "holds study 'a'" in capsys.readouterr().err


def test_records_without_validation_are_refused(built_records, tmp_path, capsys):
    records_dir, _ = built_records
    copy = tmp_path / "records"
    shutil.copytree(records_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["splits"]["validation"].update(
        num_examples=0, shards=[], per_class={}
    )  # as a build with --split 0.9 0 0.1
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert tune.main(_tune_args(str(copy), _config(tmp_path), tmp_path / "tune")) == 2
    assert "no validation split" in capsys.readouterr().err


def test_train_ignores_the_search_table(built_records, tmp_path):
    records_dir, _ = built_records
    config = _config(tmp_path, "epochs = 3\n" + SPACE)
    values = train.resolve_config(["--config", config, "--records", records_dir, "--output", str(tmp_path / "run")])
    assert values.epochs == 3


def test_search_values_are_drawn_inside_the_space(built_records):
    records_dir, _ = built_records
    base = search.base_train_config(search.TuneOptions(records=records_dir, output="x"))
    space = space_lib.parse_space(
        {
            "dropout": {"low": 0.1, "high": 0.3},
            "batch_size": {"choices": [8, 16]},
            "fine_tune_learning_rate": {"low": 1e-4, "high": 1e-2, "log": True},
        },
        base,
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        values = space_lib.suggest(study.ask(), space)
        assert all(space_lib.contains(parameter, values[parameter.name]) for parameter in space)
        assert isinstance(values["batch_size"], int)


@pytest.mark.parametrize(
    "pipeline", ["demo", "resnet50_mirrored", "vgg16_finetune", "efficientnetv2_s", "convnext_tiny"]
)
def test_shipped_pipelines_search_around_their_own_config(pipeline, tmp_path):
    path = os.path.join(REPO, "pipelines", f"{pipeline}.toml")
    options, _ = tune.options.parse(
        search.TuneOptions, ["--config", path, "--records", "r", "--output", "o"], prog="t", description=""
    )
    base = search.base_train_config(options)
    space = space_lib.parse_space(options.search, base)
    assert len(space) >= 4 and space_lib.default_point(space, base) is not None  # the default is trial 0
    trained = train.resolve_config(["--config", path, "--records", "r", "--output", str(tmp_path / "run")])
    assert trained == base.__class__(**{**vars(base), "output": str(tmp_path / "run")})


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # asked here directly, as the tuner does (it beats)
def test_database_trial_of_a_silent_worker_is_failed_and_queued_again(tmp_path, monkeypatch):
    monkeypatch.setattr(study_lib, "GRACE_SECONDS", 1)
    storage = study_lib.open_storage(f"sqlite:///{tmp_path / 'study.db'}", str(tmp_path))
    study, created = study_lib.open_study(storage, "s", "maximize", None, None, {"dropout": 0.25})
    assert created and study_lib.open_study(storage, "s", "maximize", None, None, None)[1] is False
    trial = study.ask()
    trial.suggest_float("dropout", 0.0, 0.5)
    with study_lib.heartbeat(study, trial):
        pass  # one beat, then the worker falls silent (as if its machine died)
    time.sleep(2.5)
    study_lib.fail_dead_trials(study)
    failed, queued = study.trials
    assert failed.state == optuna.trial.TrialState.FAIL and failed.params == {"dropout": 0.25}
    assert queued.state == optuna.trial.TrialState.WAITING and queued.system_attrs["fixed_params"] == failed.params


def test_trial_of_a_dead_local_process_is_failed_and_queued_again(tmp_path):
    storage = study_lib.open_storage("", str(tmp_path))
    study, _ = study_lib.open_study(storage, "s", "maximize", None, None, None)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    trial = study.ask()
    trial.suggest_int("batch_size", 8, 16)
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", int(dead.stdout))
    alive = study.ask()
    study_lib.mark_owner(alive)  # this process: never failed
    assert study_lib.fail_dead_trials(study) == [trial.number]
    assert [frozen.state.name for frozen in study.trials] == ["FAIL", "RUNNING", "WAITING"]
    queued = study.trials[2]
    assert queued.system_attrs["fixed_params"] == trial.params and queued.user_attrs["retry_of"] == trial.number


def _journal_study(tmp_path):
    study, _ = study_lib.open_study(study_lib.open_storage("", str(tmp_path)), "s", "maximize", None, None, None)
    trial = study.ask()
    trial.suggest_float("dropout", 0.0, 0.5)
    study.tell(trial, 0.5)
    return study


class _DiskFull:
    """A file whose write stores half the bytes, then fails as a full disk does."""

    def __init__(self, handle):
        self.handle = handle

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()

    def write(self, data):
        self.handle.write(data[: len(data) // 2])
        self.handle.flush()
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_write_cut_by_a_full_disk_leaves_the_study_readable(tmp_path, monkeypatch):
    study = _journal_study(tmp_path)
    journal = tmp_path / study_lib.JOURNAL
    before = journal.read_bytes()
    monkeypatch.setattr(study_lib, "open", lambda path, mode: _DiskFull(open(path, mode)), raising=False)
    with pytest.raises(study_lib.StorageError, match=r"cannot write the study journal .*\(No space left on device\)"):
        study.enqueue_trial({"dropout": 0.1})
    assert journal.read_bytes() == before  # the half record is cut back
    with pytest.raises(study_lib.StorageError, match="No space left"):
        study.set_user_attr("more", 1)  # nothing more is written by this process
    monkeypatch.undo()
    loaded = optuna.load_study(study_name="s", storage=study_lib.open_storage("", str(tmp_path)))
    assert [trial.state.name for trial in loaded.trials] == ["COMPLETE"]


def test_a_partial_last_record_is_dropped_on_open_and_the_study_continues(tmp_path, capsys):
    _journal_study(tmp_path)
    journal = tmp_path / study_lib.JOURNAL
    complete = journal.read_bytes()
    partial = b'{"op_code":5,"worker_id":"x","trial_id":0,"us'  # a kill or a full disk mid-write
    journal.write_bytes(complete + partial)
    storage = study_lib.open_storage("", str(tmp_path))
    assert f"ended with a partial record ({len(partial)} bytes" in capsys.readouterr().err
    assert journal.read_bytes() == complete
    study, _ = study_lib.open_study(storage, "s", "maximize", None, None, None)
    study.enqueue_trial({"dropout": 0.2})  # appended after a complete line: every later read still works
    loaded = optuna.load_study(study_name="s", storage=study_lib.open_storage("", str(tmp_path)))
    assert [trial.state.name for trial in loaded.trials] == ["COMPLETE", "WAITING"]


def test_a_journal_damaged_mid_file_is_refused_naming_the_line(tmp_path):
    _journal_study(tmp_path)
    journal = tmp_path / study_lib.JOURNAL
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join(lines[:2]) + b'{"op_code":5,"wor' + b"".join(lines[2:]))
    with pytest.raises(study_lib.StorageError, match="line 3 is not a complete record"):
        study_lib.open_storage("", str(tmp_path))


def test_best_toml_skips_a_best_trial_whose_folder_was_deleted(tmp_path, capsys):
    from abo_tf.common import config
    from abo_tf.tuning import report

    study = _journal_study(tmp_path)  # trial 0: 0.5, its folder never written (as if deleted)
    trial = study.ask()
    trial.suggest_float("dropout", 0.0, 0.5)
    study.tell(trial, 0.4)
    config.save_run_config(trials_lib.trial_dir(str(tmp_path), trial.number), {"dropout": 0.25})
    path = report.write_best_toml(study, str(tmp_path))
    assert "trial 0 has no config.toml" in capsys.readouterr().err
    assert "# Trial 1 of study 's'" in open(path).read() and "dropout = 0.25" in open(path).read()


def test_best_toml_holds_the_best_rerun_mean_not_the_best_single_trial(tmp_path):
    import types

    from abo_tf.common import config, files
    from abo_tf.tuning import report

    study = _journal_study(tmp_path)  # trial 0: 0.5 in the search, the best single trial
    trial = study.ask()
    trial.suggest_float("dropout", 0.0, 0.5)
    study.tell(trial, 0.4)
    third = study.ask()
    third.suggest_float("dropout", 0.0, 0.5)
    study.tell(third, 0.3)  # below the two --rerun-top 2 keeps: never re-run, never chosen
    seeds_objectives = {0: (0.2, 0.3), 1: (0.45, 0.35), 2: (0.9, 0.9)}
    for number, objectives in seeds_objectives.items():
        config.save_run_config(trials_lib.trial_dir(str(tmp_path), number), {"dropout": number / 10})
        for seed, objective in zip((1, 2), objectives):
            folder = reruns_lib.rerun_dir(str(tmp_path), number, seed)
            os.makedirs(folder)
            files.write_json(os.path.join(folder, run_folder.METRICS), {"validation": {"macro_f1": objective}})
    options = types.SimpleNamespace(output=str(tmp_path), seed=0, rerun_top=2, rerun_seeds=2, objective="macro_f1")
    found = reruns_lib.results(types.SimpleNamespace(options=options, study=study))
    assert [(rerun.trial.number, rerun.objectives) for rerun in found] == [(1, (0.45, 0.35)), (0, (0.2, 0.3))]
    text = open(report.write_best_toml(study, str(tmp_path), found, "macro_f1")).read()
    assert text.startswith("# Trial 1 of study 's': validation macro_f1 0.4000 ± 0.0707") and "dropout = 0.1" in text


# The epoch hook under MirroredStrategy (every replica's predictions gathered): checked by
# tests/test_training.py::test_mirrored_on_two_logical_cpus, on the same run as the strategy itself.


def test_a_combination_train_refuses_is_pruned_without_training(built_records, tmp_path):
    records_dir, _ = built_records
    text = "[search]\nepochs = { choices = [1, 3] }\nhead_epochs = { choices = [0, 2] }\n"
    arguments = _tune_args(records_dir, _config(tmp_path, text), tmp_path / "tune", "--epochs", "3", "--trials", "1")
    options, _ = tune.options.parse(search.TuneOptions, arguments, prog="t", description="")
    opened = search.open_search(options)
    opened.study.enqueue_trial({"epochs": 1, "head_epochs": 2})
    opened.study.ask()  # the default point, queued first: not run here
    trial = opened.study.ask()
    state = trials_lib.run_trial(opened.study, trial, opened.space, opened.base_config, options.output, "macro_f1")
    assert state == optuna.trial.TrialState.PRUNED
    assert "--head-epochs 2" in opened.study.trials[trial.number].user_attrs[trials_lib.STOPPED_BECAUSE]
    assert not os.path.exists(trials_lib.trial_dir(options.output, trial.number))


def test_output_inside_the_records_is_refused(built_records, tmp_path, capsys):
    records_dir, _ = built_records
    copy = tmp_path / "records"
    shutil.copytree(records_dir, copy)
    assert tune.main(_tune_args(str(copy), _config(tmp_path), copy / "tune", "--trials", "1", "--epochs", "1")) == 2
    assert "overlap" in capsys.readouterr().err
    assert not os.path.exists(copy / "tune")


def test_a_study_is_not_continued_on_rebuilt_records(built_records, tmp_path, capsys):
    records_dir, _ = built_records
    copy, output = tmp_path / "records", tmp_path / "tune"
    shutil.copytree(records_dir, copy)
    arguments = _tune_args(str(copy), _config(tmp_path), output, "--trials", "1", "--epochs", "1")
    options, _ = tune.options.parse(search.TuneOptions, arguments, prog="t", description="")
    search.open_search(options)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "fingerprint": "0" * 64}))  # as a rebuild
    assert tune.main(arguments) == 2
    error = capsys.readouterr().err.strip()
    assert "was run on other records" in error and "\n" not in error


def test_an_interrupted_trial_is_failed_and_its_values_queued_again(built_records, tmp_path, capsys, monkeypatch):
    records_dir, _ = built_records
    output = tmp_path / "tune"

    def interrupted(trial, config, objective):
        raise KeyboardInterrupt  # Ctrl-C in the middle of the trial's training

    monkeypatch.setattr(trials_lib, "_train", interrupted)
    assert tune.main(_tune_args(records_dir, _config(tmp_path), output, "--trials", "2")) == 130
    assert "trial 0: interrupted (Ctrl-C); its values are queued again" in capsys.readouterr().err
    failed, queued = _study(output).trials
    assert failed.state == optuna.trial.TrialState.FAIL and failed.user_attrs["default_config"]
    assert queued.state == optuna.trial.TrialState.WAITING and queued.system_attrs["fixed_params"] == failed.params
    assert queued.user_attrs == {"retry_of": 0, "default_config": True}  # the default config is still run first


def _fake_trial(study, tune_dir, number, predictions, labels, default_config=False):
    """A finished trial whose run folder holds metrics.json (with intervals) and test_predictions.csv."""
    import numpy as np

    from abo_tf.common import files
    from abo_tf.reports import metrics, predictions_file

    items = np.arange(len(labels)) // 2  # two views per item
    scores = np.eye(3)[predictions]
    result = metrics.evaluation_metrics(labels, predictions, scores, [10, 10, 10], groups=items.astype(str))
    folder = trials_lib.trial_dir(str(tune_dir), number)
    os.makedirs(folder)
    files.write_json(os.path.join(folder, run_folder.METRICS), {"validation": result, "test": result})
    hits = metrics.top_k_hits(labels, scores)
    predictions_file.write(
        folder, [f"image{i:03d}" for i in range(len(labels))], items, labels, predictions, hits, "abc"
    )
    distribution = optuna.distributions.FloatDistribution(0.0, 0.5)
    study.add_trial(
        optuna.trial.create_trial(
            params={"dropout": 0.1 * number},
            distributions={"dropout": distribution},
            value=result["macro_f1"],
            user_attrs={"default_config": default_config},
        )
    )
    return result


def test_report_gives_intervals_and_the_best_trial_minus_the_default_config(tmp_path):
    import numpy as np

    from abo_tf.tuning import report

    labels = np.arange(60) % 3
    rng = np.random.default_rng(0)
    study = optuna.create_study(direction="maximize")
    default = _fake_trial(study, tmp_path, 0, np.where(rng.random(60) < 0.5, labels, (labels + 1) % 3), labels, True)
    best = _fake_trial(study, tmp_path, 1, np.where(np.arange(60) < 57, labels, 0), labels)
    rows = report.formatted_rows(study, str(tmp_path), "macro_f1")
    low, high = best["intervals"]["macro_f1"]
    assert rows[1][:2] == ("best trial", 1) and rows[1][3] == f"{best['macro_f1']:.3f} [{low:.3f}, {high:.3f}]"
    assert rows[0][2].startswith(f"{default['macro_f1']:.4f} [")
    differences = report.best_minus_default(study, str(tmp_path), 500, 0)
    assert differences["macro_f1"]["difference"] == pytest.approx(best["macro_f1"] - default["macro_f1"])
    assert differences["accuracy"]["interval"][0] > 0 and not differences["accuracy"]["includes_zero"]
    line = report._difference_line(differences, 500, 0)
    assert "paired bootstrap over items (500 resamples, seed 0): macro F1 +" in line
    assert report.best_minus_default(study, str(tmp_path / "elsewhere"), 500, 0) is None  # no predictions: n/a


def test_the_table_shows_the_best_trial_and_best_tomls_rerun_choice_when_they_differ(tmp_path):
    import numpy as np

    from abo_tf.tuning import report, reruns

    labels = np.arange(60) % 3
    study = optuna.create_study(direction="maximize")
    _fake_trial(study, tmp_path, 0, labels, labels, True)  # the default config: the best single trial
    _fake_trial(study, tmp_path, 1, np.where(np.arange(60) < 50, labels, 0), labels)
    trials = study.get_trials()
    again = [reruns.Rerun(trials[1], (1, 2), (0.9, 0.8)), reruns.Rerun(trials[0], (1, 2), (0.7, 0.5))]
    rows = report.formatted_rows(study, str(tmp_path), "macro_f1", again)
    assert [row[:2] for row in rows] == [("default config", 0), ("best trial", 0), (report.CHOSEN_ROW, 1)]
    assert [row[-1] for row in rows] == ["0.6000 ± 0.1414", "0.6000 ± 0.1414", "0.8500 ± 0.0707"]
    assert "best.toml holds trial 1's config, not the best single trial's (0)" in report._chosen_line(study, again)
    assert report.chosen(study, again, "macro_f1")[1].startswith("validation macro_f1 0.8500 ± 0.0707")


def test_the_figures_name_the_objective_and_show_pruned_trials(tmp_path):
    from abo_tf.tuning import report

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    for number in range(report.MIN_TRIALS_FOR_IMPORTANCES + 1):
        trial = study.ask()
        value = trial.suggest_float("learning_rate", 1e-4, 1e-1, log=True) + trial.suggest_int("head_epochs", 0, 2)
        if number == 2:
            trial.report(0.1, 1)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, value)
    drawn, missing = report._draw_figures(study, str(tmp_path), num_params=2, objective="accuracy")
    assert set(drawn) == {"history", "slices", "importances"} and not missing
    complete, pruned = report._scored_trials(study)
    assert len(complete) == report.MIN_TRIALS_FOR_IMPORTANCES and [value for _, value in pruned] == [0.1]


def test_a_figure_not_drawn_is_explained(tmp_path):
    import numpy as np

    from abo_tf.tuning import report

    labels = np.arange(30) % 3
    study = optuna.create_study(direction="maximize")
    _fake_trial(study, tmp_path, 0, labels, labels, True)
    drawn, missing = report._draw_figures(study, str(tmp_path), num_params=3)
    assert "history" in drawn and "importances" not in drawn
    assert missing["importances"].startswith("1 complete trials and 3 searched parameters: importances need at least")
