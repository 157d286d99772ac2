"""The Optuna study: its storage (a journal file in the tune folder, or a database URL), sampler, pruner, and
the bookkeeping that lets several processes share one study and a killed one be replaced.

Optuna gives each trial its number atomically in the storage, so processes never share a number. A trial
left RUNNING by a process that died is found by the process id recorded with it (same machine) or, with a
database URL, by Optuna's heartbeat (any machine); it is marked FAIL and its parameters are queued again.
"""

import contextlib
import json
import os
import socket
import sys
import threading
import time
import warnings

import optuna

from abo_tf.common.errors import UserInputError, first_line

JOURNAL = "study.journal"
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "hyperband", "none")
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
HEARTBEAT_SECONDS, GRACE_SECONDS = 30, 120
_HOST, _PID, _RETRY_OF = "host", "pid", "retry_of"
RECORDS_FINGERPRINT = "records_fingerprint"  # a study attribute: the build its trials were scored on


class StorageError(UserInputError):
    """A study storage that cannot be opened, or that holds another study."""


class _Journal(optuna.storages.journal.JournalFileBackend):
    """Optuna's journal file, but a write that fails part-way (disk full) leaves no partial record.

    Optuna appends after a partial last line; the line is then not JSON, and every later read of the study
    raised JSONDecodeError (issue 23). Here the file is cut back to its size before the write, under the
    journal's lock, and the failure is one line; this process writes nothing more.
    """

    def __init__(self, path):
        super().__init__(path)
        self._failure = None

    def append_logs(self, logs):
        if self._failure is not None:
            raise self._failure
        with optuna.storages.journal._file.get_lock_file(self._lock):  # noqa: SLF001 (the lock Optuna takes)
            size = os.path.getsize(self._file_path)
            try:
                with open(self._file_path, "ab") as handle:
                    handle.write(("\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n").encode())
                    handle.flush()
                    os.fsync(handle.fileno())
            except OSError as error:
                with contextlib.suppress(OSError):
                    os.truncate(self._file_path, size)
                self._failure = StorageError(
                    f"cannot write the study journal {self._file_path!r} ({error.strerror or error}): the study is "
                    "as it was before this write; free space (or fix the folder), then run the same command"
                )
                raise self._failure from error


def repair_journal(path):
    """Drops a partial last record of a journal file (a write cut by a full disk or a kill) before Optuna reads it.

    Returns:
      The bytes dropped (0 when the journal ends with a complete record).

    Raises:
      StorageError: a record that is not JSON before the last one (a partial one that later records were
        appended to, by an abo_tf before issue 23): the line to repair is named.
    """
    if not os.path.isfile(path):
        return 0
    lock = optuna.storages.journal.JournalFileSymlinkLock(path)
    with optuna.storages.journal._file.get_lock_file(lock), open(path, "rb+") as handle:  # noqa: SLF001
        data = handle.read()
        complete = data.rfind(b"\n") + 1
        for number, line in enumerate(data[:complete].splitlines(), 1):
            try:
                json.loads(line)
            except ValueError as error:
                raise StorageError(
                    f"{path!r} line {number} is not a complete record (a write failed part-way, later records "
                    "were appended to it): delete that line's text before its last '{\"op_code\"' (or the line), "
                    "then run again"
                ) from error
        handle.truncate(complete)
    return len(data) - complete


def open_storage(url, tune_dir):
    """The storage at `url`, or the journal file in `tune_dir` when `url` is empty (a partial last record of it
    dropped, with a warning).

    Raises:
      StorageError: a URL Optuna cannot open (the reason in one line), a damaged journal.
    """
    if not url:
        path = os.path.join(tune_dir, JOURNAL)
        dropped = repair_journal(path)
        if dropped:
            print(
                f"WARNING: {path!r} ended with a partial record ({dropped} bytes, a write cut short): dropped it",
                file=sys.stderr,
            )
        return optuna.storages.JournalStorage(_Journal(path))
    try:
        if url.startswith(("sqlite:", "postgresql", "mysql")):
            # The heartbeat finds trials of dead processes on other machines too; their values are queued again.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats since Optuna 2.9
                return optuna.storages.RDBStorage(
                    url,
                    heartbeat_interval=HEARTBEAT_SECONDS,
                    grace_period=GRACE_SECONDS,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(),
                )
        return optuna.storages.get_storage(url)
    except Exception as error:  # noqa: BLE001 (SQLAlchemy, drivers and Optuna raise many kinds; all mean the same)
        reason = first_line(error)
        raise StorageError(
            f"--storage {url!r} cannot be opened ({reason}): give a URL Optuna supports, "
            f"e.g. sqlite:///tune.db or postgresql://user@host/db"
        ) from error


def make_sampler(name, seed):
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def make_pruner(name, trials):
    """The pruner. The median one waits for a third of the study (1 to 5 trials) to finish, and prunes from a
    trial's second fine-tuning epoch (trials report fine-tuning epochs only: trials.py): on the benchmark's
    sample (benchmarks/tune_benchmark.py), a median of one finished trial pruned all 5 others, one of them at
    epoch 1."""
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=max(1, min(5, trials // 3)), n_warmup_steps=2)


def check_studies(storage, study_name, flag_study):
    """Refuses a tune folder's storage that holds another study than the one asked for."""
    names = [summary.study_name for summary in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    others = [name for name in names if name != study_name]
    if others and study_name not in names:
        hint = f"pass --study {others[0]} to continue it" if not flag_study else "check --study"
        raise StorageError(
            f"--output holds study {others[0]!r}, not {study_name!r}: {hint}, or choose another --output"
        )


def open_study(storage, study_name, direction, sampler, pruner, first_params):
    """Creates the study (queueing `first_params` as its first trial) or loads it; returns (study, created)."""
    try:
        study = optuna.create_study(
            storage=storage, study_name=study_name, direction=direction, sampler=sampler, pruner=pruner
        )
    except optuna.exceptions.DuplicatedStudyError:
        return optuna.load_study(study_name=study_name, storage=storage, sampler=sampler, pruner=pruner), False
    if first_params is not None:  # created here, once: no other process queues it again
        study.enqueue_trial(first_params, user_attrs={"default_config": True})
    return study, True


def check_same_records(study, manifest, records):
    """Records the build a new study searches on; refuses to continue a study on another build.

    A rebuild into the same --records folder (other images, split or labels) keeps the path and the config,
    so without this its trials would be ranked against trials scored on the old validation split.

    Raises:
      StorageError: the study's trials were scored on records with another fingerprint.
    """
    recorded = study.user_attrs.get(RECORDS_FINGERPRINT)
    if recorded is None:  # a new study, or one from before this check: from now on, this build
        study.set_user_attr(RECORDS_FINGERPRINT, manifest["fingerprint"])
    elif recorded != manifest["fingerprint"]:
        raise StorageError(
            f"study {study.study_name!r} was run on other records than --records {records!r} (fingerprint "
            f"{recorded[:12]} there, {manifest['fingerprint'][:12]} here): give the records it was run on, "
            "or start a new study (--study NAME or another --output)"
        )


def queue_again(study, trial):
    """Queues the parameters of a trial that did not finish (its process died or was interrupted)."""
    study.enqueue_trial(
        trial.params,
        user_attrs={_RETRY_OF: trial.number, "default_config": trial.user_attrs.get("default_config", False)},
    )


def mark_owner(trial):
    """Records which process runs `trial`, for `fail_dead_trials` in other processes."""
    trial.set_user_attr(_HOST, socket.gethostname())
    trial.set_user_attr(_PID, os.getpid())


@contextlib.contextmanager
def heartbeat(study, trial):
    """Records the trial's heartbeat every HEARTBEAT_SECONDS while it runs, on storages that keep one.

    Optuna beats only inside `Study.optimize`; trials here are asked and told, so the beat is ours.
    """
    storage = study._storage  # noqa: SLF001 (Optuna exposes no getter)
    if not hasattr(storage, "record_heartbeat"):
        yield
        return
    stopped = threading.Event()

    def beat():
        while not stopped.is_set():
            storage.record_heartbeat(trial._trial_id)  # noqa: SLF001
            stopped.wait(HEARTBEAT_SECONDS)

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stopped.set()
        thread.join()


def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_dead(frozen):
    """A RUNNING trial whose process is gone: same machine and no such process, or never claimed for 2 min."""
    attrs = frozen.user_attrs
    if _PID not in attrs:
        started = frozen.datetime_start.timestamp() if frozen.datetime_start else time.time()
        return time.time() - started > GRACE_SECONDS
    return attrs.get(_HOST) == socket.gethostname() and attrs[_PID] != os.getpid() and not _process_alive(attrs[_PID])


def fail_dead_trials(study):
    """Marks FAIL the trials of dead processes and queues their parameters again; returns their numbers."""
    if isinstance(study._storage, optuna.storages.RDBStorage):  # noqa: SLF001 (Optuna exposes no getter)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # experimental, and "supposed to be used with optimize": see heartbeat
            optuna.storages.fail_stale_trials(study)
    failed = []
    for frozen in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if not _is_dead(frozen):
            continue
        try:
            if not study._storage.set_trial_state_values(frozen._trial_id, optuna.trial.TrialState.FAIL):  # noqa: SLF001
                continue
        except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # another process marked it first
        queue_again(study, frozen)
        failed.append(frozen.number)
    return failed


def counts(study):
    """(finished, running) trials: COMPLETE + PRUNED, and RUNNING."""
    states = [trial.state for trial in study.get_trials(deepcopy=False)]
    finished = sum(state in FINISHED for state in states)
    return finished, sum(state == optuna.trial.TrialState.RUNNING for state in states)


def earlier_live(study, number):
    """Finished or running trials numbered below `number`: this trial runs only while they are under the count."""
    return sum(
        trial.number < number and (trial.state in FINISHED or trial.state == optuna.trial.TrialState.RUNNING)
        for trial in study.get_trials(deepcopy=False)
    )
