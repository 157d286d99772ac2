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


_M_MMAP_THRESHOLD = -3  # malloc.h
LARGE_BLOCK = 1 << 22  # bytes: blocks this large are mapped on their own (`map_large_blocks`)


def map_large_blocks():
    """From now on this process's blocks of LARGE_BLOCK bytes or more are mapped on their own and unmapped when freed
    (glibc's `mallopt(M_MMAP_THRESHOLD)`; nothing happens elsewhere). glibc raises its threshold as such blocks are
    freed (up to 32 MB), after which NumPy's arrays of a few MB come from the threads' malloc arenas and stay
    resident once freed: the near-duplicate search's phases, its threads allocating and freeing blocks of pairs,
    peaked 160-320 MB lower with the threshold fixed (84,767 images), for 2% more CPU (the pages mapped afresh)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, LARGE_BLOCK)


def trim_heap():
    """Hands the heap's free memory back to the system (glibc's `malloc_trim`). NumPy's blocks freed by worker threads
    stay in their threads' malloc arenas, resident: the near-duplicate search's phases peaked 150-280 MB higher on
    2 threads than in one arena (84,767 images; 3,419 MB against 2,924 at 423k once the search ran on both cores).
    Nothing happens where the C library has no `malloc_trim`."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


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
