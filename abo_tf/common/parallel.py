"""The worker processes of every command that fans work out: one way to start them, one bounded in-order queue."""

import collections
import concurrent.futures
import contextlib
import ctypes
import itertools
import multiprocessing
import os
import signal

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent(parent, initializer, initargs):
    """Worker initializer: Linux kills this worker when the command dies, then runs `initializer(*initargs)`.

    Without it, a command killed by SIGKILL (or the OOM killer) left its workers running their task to
    the end (checked: a worker in a 30 s task outlived its parent).
    """
    # Not Linux (no prctl): a worker then stops at its next task, when its queue breaks.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the command died before prctl took effect
        os._exit(1)
    if initializer is not None:
        initializer(*initargs)


def process_pool(workers, initializer=None, initargs=()):
    """A `ProcessPoolExecutor` of `workers` spawned processes that die with the command.

    Spawned, not forked: the command may hold TensorFlow's or OpenCV's threads, which a forked child
    would inherit in whatever state they were. Submit from a thread that outlives the pool (the main
    thread, as every command does): workers start at `submit`, and Linux's parent-death signal follows
    the thread that started them, not the process.
    """
    return concurrent.futures.ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_die_with_parent,
        initargs=(os.getpid(), initializer, initargs),
    )


def bounded_map(pool, function, items, window, *args):
    """`pool.submit(function, item, *args)` for each item; results in input order, at most `window` in flight.

    `Executor.map` submits every item at once, holding the whole dataset's
    results in memory when the consumer is slower than the workers; the window
    keeps memory flat however large the input.
    """
    pending, items = collections.deque(), iter(items)
    for item in itertools.islice(items, window):
        pending.append(pool.submit(function, item, *args))
    while pending:
        result = pending.popleft().result()
        for item in itertools.islice(items, 1):
            pending.append(pool.submit(function, item, *args))
        yield result


# Worker processes a command may be asked for. Each spawned worker costs tens of MB before any work:
# 1,000 on a 2-core machine took 2.6 GB in 10 s and no speed; 64 is more cores than any machine here has.
MAX_WORKERS = 64
