"""Peak memory of a command run in a fresh process, for the tests of memory budgets and the benchmarks; the machine.

The peak is the summed RSS of the process and its descendants (build workers),
sampled from /proc every 10 ms. Not `ru_maxrss`: on Linux a child's maxrss
starts from the RSS of the process that forked it (kept across exec), so inside
a test session of several GB a small command would look large.
"""

import os
import subprocess
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def machine():
    """Where a figure was measured: {"cpus", "load_average" (1, 5, 15 min), "date"}; every results file carries it."""
    import datetime

    return {"cpus": os.cpu_count(), "load_average": list(os.getloadavg()), "date": datetime.date.today().isoformat()}


def _descendants(pid):
    """`pid` and its descendants' process ids, from /proc."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    children.setdefault(int(handle.read().rsplit(")", 1)[1].split()[1]), []).append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        stack.extend(children.get(current, []))
    return found


def tree_rss(pid):
    """Summed RSS (bytes) of `pid` and its descendants, from /proc."""
    total = 0
    for current in _descendants(pid):
        try:
            with open(f"/proc/{current}/statm") as handle:
                total += int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
    return total


def descendants_cpu_seconds(pid):
    """Summed user + system CPU seconds of the live descendants of `pid` (not `pid` itself), from /proc."""
    total = 0
    for current in _descendants(pid)[1:]:
        try:
            with open(f"/proc/{current}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of proc(5)
        except (OSError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def run_measured(command, timeout=600, env=None, cwd=REPO):
    """Runs `command`: (return code, stdout, stderr, peak summed RSS in bytes); killed after `timeout` seconds."""
    environment = dict(os.environ if env is None else env)
    environment.setdefault("PYTHONPATH", REPO)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:  # no pipe to fill up and block on
        process = subprocess.Popen(command, stdout=out, stderr=err, cwd=cwd, env=environment)
        peak, deadline = 0, time.monotonic() + timeout
        while process.poll() is None:
            peak = max(peak, tree_rss(process.pid))
            if time.monotonic() > deadline:
                process.kill()
            time.sleep(0.01)
        out.seek(0)
        err.seek(0)
        return process.returncode, out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace"), peak
