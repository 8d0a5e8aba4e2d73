"""Red team 7, finding 06: a second signal handler's exception inside `Sandbox._end_unwatched`
(the clean-up of a start cut short once its program runs) before its `kill_tree()`: nothing
retries it - for a cold start (and a warm one finished inside Sandbox()) the exception leaves
`Sandbox.__init__`, so the Executor never holds the box, and `discard()` is never called - the
program runs on unwatched past its timeout, never reaped. A handler that raises on each tick of
an interval timer (setitimer(..., interval)) delivers exactly such a second exception during
the first one's clean-up. (Red team 6's finding 07 was the same for abandon(); fixed there.)

Run: .venv/bin/python -m pytest tests/executor/test_second_cut_in_end_unwatched.py -q -p no:cacheprovider"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
sys.path.insert(0, os.path.dirname(__file__))
import evalbox  # noqa: E402
from evalbox.process import lockdown as lockdown_module  # noqa: E402
from evalbox.process import sandbox as sandbox_module  # noqa: E402
from evalbox.process import warm  # noqa: E402
from test_warm_start_overlap import our_children  # noqa: E402
from proc_helpers import zombie_children  # noqa: E402


@pytest.mark.parametrize("warm_start", [False, True])
def test_second_cut_while_a_started_run_is_ended(monkeypatch, warm_start):
    evalbox.python.run("pass")
    register = sandbox_module.watchdog.register
    release = lockdown_module.Lockdown.release_spawn_resources
    cuts = []

    def cut_register(*a, **k):
        cuts.append("register")
        raise KeyboardInterrupt  # first cut: registration of the started run

    def cut_release(self):
        if cuts == ["register"]:
            cuts.append("release")
            raise KeyboardInterrupt  # second cut: _end_unwatched, before its kill_tree
        return release(self)

    monkeypatch.setattr(sandbox_module.watchdog, "register", cut_register)
    monkeypatch.setattr(lockdown_module.Lockdown, "release_spawn_resources", cut_release)
    try:
        with pytest.raises(KeyboardInterrupt):
            evalbox.python.run("import time; time.sleep(5)", timeout=1, warm=warm_start)
    finally:
        monkeypatch.setattr(sandbox_module.watchdog, "register", register)
        monkeypatch.setattr(lockdown_module.Lockdown, "release_spawn_resources", release)
    assert cuts == ["register", "release"]
    left = our_children()  # (had it not been killed and reaped first, its sleep would still run)
    try:
        assert not left, f"the program runs on unwatched past its timeout: {left}"
        assert not warm.Slot.busy, "the run's slot is left busy"
    finally:
        for pid in left:
            try:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        for z in zombie_children():
            try:
                os.waitpid(z, 0)
            except ChildProcessError:
                pass
