"""Red team 7, finding 06: Executor.close() waits up to CLOSE_PID_GRACE (0.5 s) for a pending
warm start's pid (`_readable`) and then gives it up with `cancel_start`, neither deferred; a
signal handler's exception there (a single-threaded caller's SIGALRM: half a second is a wide
window) is kept for later, the start is neither cancelled nor discarded, and the executor's
table is cleared: the run's workspace, network namespace lease and (slots) slot are never
given back. (Checked too: the program does not run after the template answers late.)"""

from __future__ import annotations

import os
import sys

import pytest

sys.path[:0] = [os.path.dirname(os.path.dirname(__file__)), os.path.dirname(__file__)]

import evalbox  # noqa: E402
from evalbox.executor import executor as executor_module  # noqa: E402
from evalbox.process import warm  # noqa: E402
from proc_helpers import alive_with, kill_and_reap, zombie_children  # noqa: E402
from test_kill_before_pid import resume, stop_servers  # noqa: E402

pytestmark = pytest.mark.skipif(bool(warm.why_cold_here()), reason=str(warm.why_cold_here()))


class Cut(Exception):
    pass


@pytest.mark.parametrize("slots", ["0", "1"])
def test_a_cut_while_close_waits_for_a_pending_pid_never_lets_the_program_run(monkeypatch, slots):
    monkeypatch.setenv("EVALBOX_SLOTS", slots)
    assert evalbox.python.run("pass").warm
    marker = f"rt7-close-grace-{slots}-{os.getpid()}"

    def readable(fd, timeout):
        raise Cut()  # (the caller's alarm goes off during the 0.5 s wait for the pid)

    monkeypatch.setattr(executor_module, "_readable", readable)
    stopped = stop_servers()
    try:
        ex = evalbox.Executor()
        ex._spawn(evalbox.python.plan("import time; time.sleep(30)", args=[marker], timeout=2),
                  close_stdin=True, wait=False)
        with pytest.raises(Cut):
            ex.close()
    finally:
        resume(stopped)  # (the template answers late)
    running = alive_with(marker)  # (close() gave its server up: no copy is left to run it)
    import glob
    from evalbox.process import netns, workspace
    spaces = glob.glob(os.path.join(workspace.base_dir(False), f"evalbox-{os.getpid()}-*")) + \
        glob.glob(os.path.join(workspace.base_dir(True), f"evalbox-{os.getpid()}-*"))
    leased = set(netns._stats) - set(netns._idle) - set(netns._unchecked)
    zombies = zombie_children()
    kill_and_reap(running)
    assert not running, f"the program {running} runs after close() raised, past its time limit: unwatched"
    assert not warm.Slot.busy, "the run's slot stays busy for ever"
    assert not zombies, f"zombies of the caller left: {zombies}"
    assert not spaces, f"the run's workspace is left: {spaces}"
    assert not leased, f"the run's network namespace is never given back: {leased}"
