"""Red team 7, finding 04: Executor.close() reaps a running sandbox with `run.box.reap()`
directly (not the deferred `_reap`), so even a single-threaded caller's SIGALRM handler can
raise inside it (os.wait4 runs Python handlers on EINTR). close() then records the exception,
skips `_release` for that run and clears its table: the run's slot stays busy for ever, its
workspace, cgroup, network namespace lease, pidfd and listener leak, and its process stays a
zombie of the caller. Here the handler's exception is injected where wait4 would raise it."""

from __future__ import annotations

import glob
import os
import sys
import types

import pytest

sys.path[:0] = [os.path.dirname(os.path.dirname(__file__))]

import evalbox  # noqa: E402
from evalbox.process import netns, sandbox, warm, workspace  # noqa: E402
from proc_helpers import zombie_children  # noqa: E402


class Cut(Exception):
    pass


@pytest.mark.parametrize("slots", ["0", "1"])
def test_a_cut_while_close_reaps_a_run_still_releases_it(monkeypatch, slots):
    monkeypatch.setenv("EVALBOX_SLOTS", slots)
    evalbox.python.run("pass")
    armed = {"on": True}

    def wait4(pid, options):
        if armed["on"]:
            armed["on"] = False
            raise Cut()  # (a SIGALRM handler's exception: wait4 retries EINTR after running it)
        return os.wait4(pid, options)

    def spaces():
        return set(glob.glob(os.path.join(workspace.base_dir(False), f"evalbox-{os.getpid()}-*")) +
                   glob.glob(os.path.join(workspace.base_dir(True), f"evalbox-{os.getpid()}-*")))

    before = spaces()
    monkeypatch.setattr(sandbox, "os", types.SimpleNamespace(**{**vars(os), "wait4": wait4}))
    ex = evalbox.Executor()
    ex.spawn(evalbox.python.plan("import time; time.sleep(30)", timeout=60), close_stdin=True)
    with pytest.raises(Cut):
        ex.close()  # (the caller's time limit goes off while it closes the executor)
    monkeypatch.undo()
    zombies = zombie_children()
    leased = set(netns._stats) - set(netns._idle) - set(netns._unchecked)
    busy = set(warm.Slot.busy)
    left = spaces() - before
    for pid in zombies:
        os.waitpid(pid, 0)
    assert not busy, "the run's slot stays busy for ever"
    assert not left, f"the run's workspace is left: {left}"
    assert not leased, f"the run's network namespace is never given back: {leased}"
    assert not zombies, f"the run's process {zombies} is left a zombie of the caller"
