"""The worker processes of the commands: they run their initializer and die with the command."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from abo_tf.common import parallel

SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from abo_tf.common import parallel

    MARK = None

    def remember(value):
        global MARK
        MARK = value

    def pid_and_mark(_):
        return os.getpid(), MARK

    def wait_long(_):
        time.sleep(120)

    if __name__ == "__main__":
        pool = parallel.process_pool(2, initializer=remember, initargs=("initialised",))
        answers = [pool.submit(pid_and_mark, index).result() for index in range(4)]
        assert {mark for _, mark in answers} == {"initialised"}, answers
        busy = [pool.submit(wait_long, index) for index in range(2)]
        time.sleep(1)  # both workers in their long task
        print(" ".join(str(pid) for pid in {pid for pid, _ in answers}), flush=True)
        time.sleep(120)
    """
)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as handle:  # a zombie is dead, only not yet reaped
        return handle.read().split(")")[-1].split()[0] != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux's")
def test_workers_die_with_a_killed_command(tmp_path):
    script = tmp_path / "command.py"
    script.write_text(SCRIPT)
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    workers = [int(pid) for pid in process.stdout.readline().split()]
    assert workers and all(_alive(pid) for pid in workers)
    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.time() + 10
    while any(_alive(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in workers), "workers outlived their command"


def test_bounded_map_keeps_input_order_with_a_window(tmp_path):
    with parallel.process_pool(2) as pool:
        assert list(parallel.bounded_map(pool, abs, range(-5, 5), 3)) == [abs(value) for value in range(-5, 5)]


HEAP_SCRIPT = textwrap.dedent(
    """
    import sys, threading
    import numpy as np
    from abo_tf.common import parallel

    def resident():
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * 4096

    if sys.argv[1] == "mapped":
        parallel.map_large_blocks()
    grown = []

    def allocate():  # as the search's threads do: blocks of pairs made and freed
        block = np.ones(24 << 20, np.uint8)
        del block  # glibc raises its mapping threshold to this block's size
        before = resident()
        block = np.ones(16 << 20, np.uint8)
        kept = np.ones(1 << 20, np.uint8)  # after the block in the arena: the block's space is free, not its top
        del block
        grown.append(resident() - before)
        parallel.trim_heap()
        grown.append(resident() - before)
        del kept

    thread = threading.Thread(target=allocate)
    thread.start()
    thread.join()
    print(" ".join(str(size >> 20) for size in grown))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt and malloc_trim")
def test_blocks_freed_by_threads_leave_the_resident_set():
    def grown(mode):
        answer = subprocess.run([sys.executable, "-c", HEAP_SCRIPT, mode], capture_output=True, text=True, check=True)
        return [int(size) for size in answer.stdout.split()]

    kept, trimmed = grown("default")
    assert kept >= 12 and trimmed <= 4  # a 16 MB block freed in a thread's arena stays resident until trimmed
    assert grown("mapped")[0] <= 4  # mapped on its own: unmapped as it is freed
