"""A signal handler's exception (Ctrl-C, an alarm whose handler raises) that lands while a run is
collected or released (red team 6): the user gets their exception, and every run is still
killed, reaped and released: no process, zombie, busy slot or workspace is left."""

from __future__ import annotations

import os

import pytest

import evalbox
from evalbox.process import sandbox as sandbox_module
from evalbox.process import warm, workspace
from proc_helpers import zombie_children
from test_warm_start_overlap import our_children

pytestmark = pytest.mark.skipif(bool(warm.why_cold_here()), reason=str(warm.why_cold_here()))


@pytest.mark.parametrize("slots", ["0", "1"])
def test_an_interrupt_right_after_a_reap_is_the_users_and_the_other_runs_end(monkeypatch, slots):
    monkeypatch.setenv("EVALBOX_SLOTS", slots)
    assert evalbox.python.run("pass").warm
    real_wait4 = os.wait4
    hit = []

    def wait4_then_interrupted(pid, options):
        result = real_wait4(pid, options)
        if not hit:
            hit.append(pid)
            raise KeyboardInterrupt  # as CPython raises it at the bytecode after the call
        return result

    monkeypatch.setattr(sandbox_module.os, "wait4", wait4_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        with evalbox.Executor() as ex:
            ex.spawn(evalbox.python.plan("pass", timeout=30), close_stdin=True)
            for _ in range(2):
                ex.spawn(evalbox.python.plan("import time; time.sleep(60)", timeout=120), close_stdin=True)
            while True:
                ex.poll(0.1)  # the quick run ends; its collection is interrupted
    monkeypatch.setattr(sandbox_module.os, "wait4", real_wait4)
    assert hit
    assert our_children() == set(), "the other runs' programs still run, nobody watches them"
    assert zombie_children() == []
    assert not warm.Slot.busy


@pytest.mark.parametrize("slots", ["0", "1"])
def test_an_interrupt_while_a_run_is_released_leaves_nothing(monkeypatch, slots):
    monkeypatch.setenv("EVALBOX_SLOTS", slots)
    assert evalbox.python.run("pass").warm
    remove = workspace.Workspace.remove
    roots = []

    def interrupted(self):
        if not roots:
            roots.append(self.root)
            raise KeyboardInterrupt  # the handler ran at the first bytecode of the removal
        return remove(self)

    monkeypatch.setattr(workspace.Workspace, "remove", interrupted)
    with pytest.raises(KeyboardInterrupt):
        evalbox.python.run("print(1)", timeout=30)
    monkeypatch.setattr(workspace.Workspace, "remove", remove)
    assert roots
    assert not warm.Slot.busy, "the run's slot is busy for ever"
    assert not os.path.exists(roots[0]), f"the run's workspace {roots[0]} is left behind"
