"""Red team 7, finding 01: a signal handler's exception inside `Sandbox._abandon_start` (a start
that failed, was cut short, or - new - was killed before its copy's pid came: cancel_start) makes
the retry in `Executor._drop_failed_start` -> `Sandbox.discard()` take the "started" branch
(pending is already None, released still False) and call reap() on a sandbox that has no pid:
AttributeError replaces the caller's exception, and the rest of the release is never done (the
slot stays busy for ever, the Landlock ruleset, pipes, workspace, cgroup and uid lease leak); a
kill()ed run's StartFailed event is never delivered.

Reached for real by `findings/stress_rt7.py` (MODE=exec SIG=alrm THREAD=1, or SIG=usr1: a helper
thread's SIGUSR1; the main thread's deferral does not hold a process-directed signal). Here the
handler's exception is raised at the first bytecode of Lockdown.close (called by _abandon_start).

Run: .venv/bin/python -m pytest tests/executor/test_cut_abandon_start.py -q -p no:cacheprovider"""
import os
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
import evalbox  # noqa: E402
from evalbox.executor.executor import Executor, StartFailed  # noqa: E402
from evalbox.process import lockdown as lockdown_module  # noqa: E402
from evalbox.process import netns, warm  # noqa: E402
from evalbox.kernel import cgroups  # noqa: E402

# (an unprivileged caller's jail, in a user namespace, has no warm copies yet: every run is cold)
pytestmark = pytest.mark.skipif(bool(warm.why_cold_here()), reason=str(warm.why_cold_here()))


def loose_fds(base):
    held = warm.held_fds() | netns.held_fds() | set(netns._idle) | set(netns._unchecked) | set(netns._stats) | cgroups.held_fds()
    return {fd for fd in (int(x) for x in os.listdir("/proc/self/fd")) if fd not in base and fd not in held
            and os.path.exists(f"/proc/self/fd/{fd}")}


@pytest.mark.parametrize("slots", ["0", "1"])
def test_cut_while_a_killed_pending_start_is_released(monkeypatch, slots):
    monkeypatch.setenv("EVALBOX_SLOTS", slots)
    assert evalbox.python.run("pass").warm
    base = set(int(x) for x in os.listdir("/proc/self/fd"))
    close = lockdown_module.Lockdown.close
    hit = []

    def cut(self, *a, **k):
        if not hit:
            hit.append(1)
            raise KeyboardInterrupt  # a handler's exception at its first bytecode
        return close(self, *a, **k)

    ex = Executor()
    try:
        sid = ex._spawn(evalbox.python.plan("print('ran')", timeout=10), wait=False)
        assert ex.starting(sid)
        ex.kill(sid)  # before the copy's pid came: cancel_start at the next poll
        monkeypatch.setattr(lockdown_module.Lockdown, "close", cut)
        events = []
        with pytest.raises(KeyboardInterrupt):  # the caller's own exception, not AttributeError
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                events += ex.poll(0.2)
        monkeypatch.setattr(lockdown_module.Lockdown, "close", close)
        assert hit
    finally:
        monkeypatch.setattr(lockdown_module.Lockdown, "close", close)
        ex.close()
    assert not warm.Slot.busy, "the run's slot stays busy for ever"
    left = {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in loose_fds(base)}
    assert not left, f"fds of the run left open: {left}"
