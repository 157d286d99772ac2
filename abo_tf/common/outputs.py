"""Output folders: a command writes only into a folder that is new, empty, or its own; never two at once.

Every command that writes a folder (`build_records`, `train`, `evaluate`,
`analyze`, `features`, `baselines`) claims it first. The claim leaves a marker
naming the command, so a later run knows the folder is its own (to resume or
overwrite it) and any other folder with files in it is refused before any work
is done. An exclusive lock on a file in the folder makes a second process
writing the same folder fail at once instead of interleaving files.
"""

import dataclasses
import errno
import fcntl
import fnmatch
import os
import shutil

from abo_tf.common import files
from abo_tf.common.errors import UserInputError

MARKER = ".abo_tf-output.json"
LOCK = ".abo_tf-output.lock"
_BOOKKEEPING = (MARKER, LOCK)
_HELD_LOCKS = {}  # realpath -> open lock file, alive as long as the process


class OutputFolderError(UserInputError):
    """An output folder cannot be used: it is a file, not writable, another command's, or busy."""


@dataclasses.dataclass(frozen=True)
class OutputFolder:
    """A claimed output folder; `earlier` is True when it already held this command's output."""

    path: str
    command: str
    earlier: bool


def contents(path):
    """The entries of an output folder, without the claim's own marker and lock."""
    # The marker's temporary name (files.write_json) is bookkeeping too: a second
    # process claiming the folder while the first writes its marker must see it
    # as busy, not as holding a stranger's file.
    return sorted(
        name for name in os.listdir(path) if name not in _BOOKKEEPING and not name.startswith(MARKER + ".tmp-")
    )


def _make_folder(path, flag):
    if os.path.islink(path) and not os.path.exists(path):
        raise OutputFolderError(f"{flag} {path!r} is a link to nothing ({os.readlink(path)!r}): choose a folder")
    if os.path.lexists(path) and not os.path.isdir(path):
        raise OutputFolderError(f"{flag} {path!r} is a file: choose a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise OutputFolderError(
            f"cannot create {flag} {path!r} ({error.strerror or error}): choose a writable folder"
        ) from error


def _lock(path, flag):
    """Takes the folder's lock, or says which folder is busy."""
    real = os.path.realpath(path)
    if real in _HELD_LOCKS:
        return
    try:
        handle = open(os.path.join(path, LOCK), "a+", encoding="utf-8")  # noqa: SIM115 (held for the process)
    except OSError as error:
        raise OutputFolderError(
            f"cannot write in {flag} {path!r} ({error.strerror or error}): choose a writable folder"
        ) from error
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        handle.close()
        if error.errno in (errno.EAGAIN, errno.EACCES):
            raise OutputFolderError(
                f"{flag} {path!r} is being written by another abo_tf process: wait for it, or choose another folder"
            ) from error
        raise OutputFolderError(f"cannot lock {flag} {path!r} ({error.strerror or error})") from error
    _HELD_LOCKS[real] = handle


def is_busy(error):
    """True when an `OutputFolderError` of `claim` says another process holds the folder's lock."""
    cause = error.__cause__
    return isinstance(cause, OSError) and cause.errno in (errno.EAGAIN, errno.EACCES)


def check_apart(path, flag, records):
    """Refuses an output folder inside --records or holding them: a rebuild (--overwrite) refuses a build folder
    holding other files, and the records would not be a build's folder any more. One rule for every command
    that reads records and writes a folder (tune had it; audit and evaluate wrote into the records).
    """
    path_real, records_real = os.path.realpath(path), os.path.realpath(records)
    if os.path.commonpath([path_real, records_real]) in (path_real, records_real):
        raise OutputFolderError(
            f"{flag} {path!r} and --records {records!r} overlap (one holds the other): choose a {flag} outside the "
            "records"
        )


def owner(path):
    """The command whose marker `path` holds (None without one): a command reading its own files back from a
    folder (train's config.toml) reads them only from a folder it wrote."""
    marker = files.read_json(os.path.join(path, MARKER), what="output marker")
    return marker.get("command") if isinstance(marker, dict) else marker


def claim(path, command, flag="--output", recognise=None, records=None):
    """Makes `path` the output folder of `command`, or refuses it with a one-line error.

    Args:
      path: the folder the user named.
      command: the command's name (`"train"`), written into the folder's marker.
      flag: the flag that named the folder, for messages.
      recognise: optional `f(path) -> bool` recognising this command's output
        written before markers existed; such a folder is adopted.
      records: the records folder the command reads, if any: `path` must lie apart (`check_apart`).

    Returns:
      An `OutputFolder`.

    Raises:
      OutputFolderError: a file, a folder that cannot be written, a folder
        holding files of anything but `command`, or a folder another process
        is writing, or one overlapping `records`.
    """
    if records is not None:
        check_apart(path, flag, records)
    _make_folder(path, flag)
    marker = files.read_json(os.path.join(path, MARKER), what="output marker")
    if marker is not None and (not isinstance(marker, dict) or marker.get("command") != command):
        owner = marker.get("command") if isinstance(marker, dict) else marker
        raise OutputFolderError(
            f"{flag} {path!r} holds the output of `abo_tf.{owner}`, not of `abo_tf.{command}`: choose another folder"
        )
    entries = contents(path)
    if marker is None and entries and not (recognise and recognise(path)):
        raise OutputFolderError(
            f"{flag} {path!r} is not empty and was not written by `abo_tf.{command}` "
            f"(it holds {entries[0]!r}): choose a new or empty folder"
        )
    _lock(path, flag)
    if marker is None:
        files.write_json(os.path.join(path, MARKER), {"command": command})
    return OutputFolder(path, command, earlier=bool(entries))


def remove_owned(folder, patterns):
    """Deletes the entries of `folder` matching `patterns` (what the command writes), nothing else.

    Returns:
      The names of what is left that the command did not write.
    """
    for name in contents(folder.path):
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
            target = os.path.join(folder.path, name)
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target)
            else:
                os.remove(target)
    return contents(folder.path)


def release(path):
    """Releases the lock `claim` took (tests and long-lived processes; exit releases it anyway)."""
    handle = _HELD_LOCKS.pop(os.path.realpath(path), None)
    if handle is not None:
        handle.close()
