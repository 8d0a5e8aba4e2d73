"""A signal handler's exception (Ctrl-C, a CPU timer or alarm whose handler raises) that lands
once the program exists but before it is watched (red team 6, finding 04: its supervisor, its
guard registration, its clock): the user gets their exception, and the program is killed and
reaped at once; no process, zombie, busy slot or fd of it is left, and the next run works."""

from __future__ import annotations

import os
import signal

import pytest

import evalbox
from evalbox.executor import deferred
from evalbox.process import sandbox as sandbox_module
from evalbox.kernel import cgroups
from evalbox.process import netns, warm, workspace
from proc_helpers import alive, zombie_children
from test_warm_start_overlap import our_children

# (an unprivileged caller's jail, in a user namespace, has no warm copies yet: every run is cold)
needs_warm = pytest.mark.skipif(bool(warm.why_cold_here()), reason=str(warm.why_cold_here()))

LONG = "import time; time.sleep(30)"  # would outlive the test: still alive is the failure


def run_fds() -> set[str]:
    """This process's fds but evalbox's own bounded pools (templates, idle slots, recycled
    cgroups, the jail's pooled namespaces and their counters)."""
    held = {str(fd) for fd in warm.held_fds() | netns.held_fds() | cgroups.held_fds()}
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            pooled = os.readlink(f"/proc/self/fd/{name}").startswith(("net:[", "mnt:["))
        except OSError:
            continue
        if not pooled and name not in held:
            found.add(name)
    return found


def interrupt_once(monkeypatch, owner, name: str, seen: list) -> None:
    """owner.name raises KeyboardInterrupt at its first call (as a handler run at its first
    bytecode would), after noting its arguments in `seen`."""
    real = getattr(owner, name)

    def interrupted(*args, **kwargs):
        if not seen:
            seen.append(args)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, interrupted)


def assert_nothing_left(fds_before: set[str]) -> None:
    assert our_children() == set(), "the program runs on, nobody watches it"
    assert zombie_children() == [], "the program ended and nobody reaped it"
    assert not warm.Slot.busy, "the run's slot is busy for ever"
    left = {fd for fd in run_fds() - fds_before if os.path.exists(f"/proc/self/fd/{fd}")}
    assert not left, f"the run's fds are left open: {[os.readlink(f'/proc/self/fd/{fd}') for fd in left]}"
    again = evalbox.python.run("print('next')", timeout=30)
    assert again.stdout == b"next\n", again


@pytest.mark.parametrize("slots", ["0", "1"])
@pytest.mark.parametrize("warm_start", [pytest.param(True, marks=needs_warm), False])
def test_an_interrupt_while_a_started_run_is_registered_kills_and_reaps_it(monkeypatch, slots, warm_start):
    monkeypatch.setenv("EVALBOX_SLOTS", slots)
    assert evalbox.python.run("pass").warm or not warm_start
    fds_before = run_fds()
    seen: list = []
    interrupt_once(monkeypatch, sandbox_module.watchdog, "register", seen)
    with pytest.raises(KeyboardInterrupt):
        evalbox.python.run(LONG, timeout=120, warm=warm_start)
    monkeypatch.undo()
    monkeypatch.setenv("EVALBOX_SLOTS", slots)
    assert seen, "the run never got to its registration"
    program = seen[0][1]
    assert not alive(program) and program not in zombie_children(), f"the program {program} is left"
    assert_nothing_left(fds_before)


@pytest.mark.parametrize("slots", ["0", "1"])
def test_an_interrupt_while_a_supervisor_is_made_kills_and_reaps_the_run(monkeypatch, slots):
    """A notify run (cold, with a seccomp listener): cut short while its supervisor is made."""
    monkeypatch.setenv("EVALBOX_SLOTS", slots)
    evalbox.python.run("pass")
    fds_before = run_fds()
    seen: list = []
    interrupt_once(monkeypatch, sandbox_module, "Supervision", seen)
    with pytest.raises(KeyboardInterrupt):
        evalbox.python.run(LONG, timeout=120, notify=evalbox.NotifyMode.MONITOR, intercept=["openat"])
    monkeypatch.undo()
    monkeypatch.setenv("EVALBOX_SLOTS", slots)
    assert seen
    assert_nothing_left(fds_before)


@needs_warm
@pytest.mark.parametrize("slots", ["0", "1"])
def test_a_warm_start_whose_clean_up_is_cut_short_too_is_discarded_by_the_executor(monkeypatch, slots):
    """A second interrupt, in the start's own clean-up (its workspace removal): the executor
    does that clean-up again; the run is still killed, reaped and released."""
    monkeypatch.setenv("EVALBOX_SLOTS", slots)
    assert evalbox.python.run("pass").warm
    fds_before = run_fds()
    registered: list = []
    removed: list = []
    interrupt_once(monkeypatch, sandbox_module.watchdog, "register", registered)
    remove = workspace.Workspace.remove

    def remove_cut_short(self):
        if registered and not removed:
            removed.append(self.root)
            raise KeyboardInterrupt  # (the handler of a second signal)
        return remove(self)

    monkeypatch.setattr(workspace.Workspace, "remove", remove_cut_short)
    with pytest.raises(KeyboardInterrupt):
        with evalbox.Executor() as ex:
            ex.spawn(evalbox.python.plan(LONG, timeout=120), close_stdin=True)
    monkeypatch.undo()
    monkeypatch.setenv("EVALBOX_SLOTS", slots)
    assert registered and removed
    assert not os.path.exists(removed[0]), f"the run's workspace {removed[0]} is left behind"
    assert_nothing_left(fds_before)


@needs_warm
@pytest.mark.parametrize("slots", ["0", "1"])
def test_an_interrupt_while_a_background_start_is_registered_leaves_the_executor_usable(monkeypatch, slots):
    """A warm start finished by the event loop (wait=False: the batch and asyncio faces): the
    interrupt reaches the caller's poll(); the other run goes on and completes."""
    monkeypatch.setenv("EVALBOX_SLOTS", slots)
    assert evalbox.python.run("pass").warm
    fds_before = run_fds()
    seen: list = []
    with evalbox.Executor() as ex:
        other = ex._spawn(evalbox.python.plan("print('other')", timeout=60), close_stdin=True, wait=True)
        interrupt_once(monkeypatch, sandbox_module.watchdog, "register", seen)
        cut = ex._spawn(evalbox.python.plan(LONG, timeout=120), close_stdin=True, wait=False)
        events = []
        with pytest.raises(KeyboardInterrupt):
            while True:
                events += ex.poll(1)
        monkeypatch.undo()
        monkeypatch.setenv("EVALBOX_SLOTS", slots)
        assert seen
        assert cut not in ex._running, "the executor still holds the run it could not start"
        done = [e for e in events if isinstance(e, evalbox.Completed) and e.id == other]
        while not done:
            done = [e for e in ex.poll(10) if isinstance(e, evalbox.Completed) and e.id == other]
        assert done[0].output.stdout == b"other\n"
    assert_nothing_left(fds_before)


def test_signals_with_a_python_handler_are_deferred_while_a_run_starts():
    """A CPU timer (SIGPROF) whose handler raises is held while a run starts, as Ctrl-C is; a
    signal left to its default action is not held."""
    old = signal.signal(signal.SIGPROF, lambda *_: None)
    try:
        assert signal.SIGPROF in deferred.deferred_signals()
        assert signal.SIGINT in deferred.deferred_signals()
        assert signal.SIGQUIT not in deferred.deferred_signals()
        assert signal.SIGSEGV not in deferred.deferred_signals()
        masks = []

        @deferred.stop_signals_deferred
        def starting():
            masks.append(signal.pthread_sigmask(signal.SIG_BLOCK, []))

        starting()
        assert signal.SIGPROF in masks[0] and signal.SIGQUIT not in masks[0]
        assert signal.SIGPROF not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    finally:
        signal.signal(signal.SIGPROF, old)
    assert signal.SIGPROF not in deferred.deferred_signals()
