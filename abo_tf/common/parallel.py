"""One bounded, in-order worker queue for every command that fans work out to processes."""

import collections
import itertools


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
