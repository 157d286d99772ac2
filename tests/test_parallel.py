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
