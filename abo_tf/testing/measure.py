"""Peak memory of a command run in a fresh process, for the tests of memory budgets and the benchmarks; the machine.

The peak is the summed RSS of the process and its descendants (build workers),
sampled from /proc every 10 ms, each address space counted once. Not `ru_maxrss`:
on Linux a child's maxrss starts from the RSS of the process that forked it (kept
across exec), so inside a test session of several GB a small command would look large.

Once, not per process: Python starts a spawned worker or a subprocess by vfork, and
until it execs, the child runs in its parent's address space, so /proc shows it
with the parent's whole RSS. A sample in that window counted the parent twice: an
audit holding 860 MB (TensorFlow) read 2.05 GB in a loaded test session (issue 23),
and a process holding 800 MB that started 30 workers and 75 subprocesses read
1,642 MB at load 23. A fork()ed child's copy-on-write pages still count in both
(an overestimate; the commands spawn their workers).
"""

import contextlib
import ctypes
import os
import platform
import subprocess
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def machine():
    """Where a figure was measured: {"cpus", "load_average" (1, 5, 15 min), "date"}; every results file carries it."""
    import datetime

    return {"cpus": os.cpu_count(), "load_average": list(os.getloadavg()), "date": datetime.date.today().isoformat()}


_KCMP_SYSCALL = {"x86_64": 312, "aarch64": 272}  # kcmp(2), asm/unistd.h of each architecture
_KCMP_VM = 1


def _statm(pid):
    with open(f"/proc/{pid}/statm") as handle:
        return handle.read()


def _shares_address_space(pid, parent):
    """True when `pid` runs in `parent`'s address space: a child between vfork and exec.

    kcmp(2) answers exactly; where it is not available (another architecture, a seccomp filter), equal
    /proc statm lines stand for it (one address space read twice).
    """
    number = _KCMP_SYSCALL.get(platform.machine())
    if number is not None:
        answer = ctypes.CDLL(None, use_errno=True).syscall(number, pid, parent, _KCMP_VM, 0, 0)
        if answer >= 0:
            return answer == 0
    try:
        return _statm(pid) == _statm(parent)
    except OSError:
        return False


def _children_of():
    """Parent pid -> its children's pids, from /proc."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    children.setdefault(int(handle.read().rsplit(")", 1)[1].split()[1]), []).append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return children


def _descendants(pid):
    """`pid` and its descendants' process ids, from /proc."""
    children, found, stack = _children_of(), [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        stack.extend(children.get(current, []))
    return found


def tree_rss(pid):
    """Summed RSS (bytes) of `pid` and its descendants, from /proc; a child in its parent's address space once."""
    children, page = _children_of(), os.sysconf("SC_PAGE_SIZE")
    total, stack = 0, [(pid, None)]
    while stack:
        current, parent = stack.pop()
        stack.extend((child, current) for child in children.get(current, []))
        if parent is not None and _shares_address_space(current, parent):
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):  # the process has ended
            total += int(_statm(current).split()[1]) * page
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
