"""What a command prints: its own output, TensorFlow's only when asked, progress bars fit for logs.

TensorFlow's C++ runtime prints a start-up banner (oneDNN, CUDA stubs, the
absl "InitializeLog" warning, a cuInit error on machines without a GPU) on
file descriptor 2 while it is imported, before any logging setting can act:
`TF_CPP_MIN_LOG_LEVEL` does not hide it in TF 2.21. So the import itself runs
with descriptor 2 pointed at a temporary file, which is replayed if the import
fails. `ABO_TF_VERBOSE=1` (or a command's `--verbose`) turns this off.
"""

import contextlib
import importlib.abc
import importlib.util
import os
import sys
import tempfile

VERBOSE_ENV = "ABO_TF_VERBOSE"
_QUIET_MODULES = ("tensorflow",)
NON_TERMINAL_INTERVAL = 30.0  # seconds between progress lines in logs


def verbose():
    """True when the user asked to see TensorFlow's own messages."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def set_verbose(enabled):
    """`--verbose`: from now on, TensorFlow (imported later) prints what it prints."""
    if enabled:
        os.environ[VERBOSE_ENV] = "1"
        os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)


@contextlib.contextmanager
def _stderr_to_file():
    """Points file descriptor 2 at a temporary file; replays it if the block raises."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode("utf-8", "replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


@contextlib.contextmanager
def quiet_native_messages():
    """Runs a block with descriptor 2 captured (unless verbose): libjpeg's and TensorFlow's C++ lines on a damaged
    image ("Premature end of JPEG data") are not the command's output, whose own error line says why."""
    if verbose():
        yield
        return
    with _stderr_to_file():
        yield


class _QuietLoader(importlib.abc.Loader):
    """Runs the real loader of a module with the C++ start-up messages captured."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        with _stderr_to_file():
            self._loader.exec_module(module)
            if module.__name__ == "tensorflow":
                # Device discovery prints the cuInit error on machines without a GPU: do it here, quietly.
                module.config.list_physical_devices()


class _QuietImportFinder(importlib.abc.MetaPathFinder):
    """Finds TensorFlow the usual way, and hands it to `_QuietLoader` unless the user wants to see it."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in _QUIET_MODULES or verbose():
            return None
        sys.meta_path.remove(self)  # once: the real import below must not come back here
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _QuietLoader(spec.loader)
        return spec


def native_messages_hidden():
    """A block whose C++ messages on descriptor 2 are dropped (replayed if it raises), unless the user asked for them.

    For runtimes that print on creation (LiteRT: "INFO: Created TensorFlow Lite XNNPACK delegate for CPU").
    """
    return contextlib.nullcontext() if verbose() else _stderr_to_file()


def install_quiet_imports():
    """Installs the import hook (idempotent); `abo_tf/__init__` calls it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # what the runtime logs after start-up
    if not any(isinstance(finder, _QuietImportFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietImportFinder())


class _LogLines:
    """A file for tqdm that turns its carriage-return redraws into plain lines (no control characters)."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        text = text.replace("\r", "").replace("\x1b[A", "")
        if text.strip():
            self._stream.write(text.rstrip("\n") + "\n")

    def flush(self):
        self._stream.flush()


def is_terminal(stream=None):
    stream = stream or sys.stderr
    return hasattr(stream, "isatty") and stream.isatty()


def progress_bar(iterable=None, *, enabled=True, **kwargs):
    """A tqdm bar: redrawn in place on a terminal; in a log, a plain line every 30 s and at the end.

    Args:
      iterable: as tqdm's first argument.
      enabled: False for no bar at all (`--no-progress`).
      **kwargs: tqdm's (desc, total, unit, ...).
    """
    from tqdm import tqdm

    if not enabled:
        return tqdm(iterable, disable=True, **kwargs)
    if is_terminal():
        return tqdm(iterable, **kwargs)
    return tqdm(
        iterable, file=_LogLines(sys.stderr), mininterval=NON_TERMINAL_INTERVAL, ascii=True, ncols=100, **kwargs
    )
