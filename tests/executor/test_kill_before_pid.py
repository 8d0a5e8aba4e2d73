"""Killing a warm start whose server has not said its copy's pid yet (red team 6, finding 08):
`Executor.kill()` and `close()` never wait for that server (before, up to warm.START_TIMEOUT on
a hung one), and the run is never started cold only to be killed: its StartFailed event says it
was killed as it started. A server that answers late keeps serving."""

from __future__ import annotations

import os
import signal

import pytest

import evalbox
from evalbox.executor.executor import StartFailed
from evalbox.process import sandbox as sandbox_module
from evalbox.process import warm
from proc_helpers import alive, zombie_children
from test_warm_start_overlap import our_children

# (an unprivileged caller's jail, in a user namespace, has no warm copies yet: every run is cold)
pytestmark = pytest.mark.skipif(bool(warm.why_cold_here()), reason=str(warm.why_cold_here()))


def stop_servers() -> list[int]:
    """SIGSTOP the live templates and their idle slots' launchers: every server a run may use."""
    with warm._lock:
        templates = [t for t in warm._templates.values() if isinstance(t, warm.Template)]
    pids = [t.pid for t in templates] + [s.pid for t in templates for s in t.idle_slots]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    return pids


def resume(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def no_cold_start(monkeypatch) -> list:
    cold: list = []
    spawn_cold = sandbox_module.Sandbox._spawn_cold

    def noted(self, *args):
        cold.append(self.id)
        return spawn_cold(self, *args)

    monkeypatch.setattr(sandbox_module.Sandbox, "_spawn_cold", noted)
    return cold


def warm_servers_stopped(monkeypatch, slots: str, start_timeout: float) -> tuple[list, list[int]]:
    """Warm runs on (slots on or off), no cold start expected, every server SIGSTOPped: returns
    (the ids of runs started cold, the stopped pids)."""
    monkeypatch.setenv("EVALBOX_SLOTS", slots)
    assert evalbox.python.run("pass").warm
    monkeypatch.setattr(warm, "START_TIMEOUT", start_timeout)
    return no_cold_start(monkeypatch), stop_servers()


def spawn_awaiting_pid(ex: evalbox.Executor):
    sid = ex._spawn(evalbox.python.plan("print('ran')", timeout=30), close_stdin=True, wait=False)
    assert ex._running[sid].box.pending.awaiting_pid
    return sid


def events_until_settled(ex: evalbox.Executor, sid, bound: float = 60.0) -> list:
    seen: list = []
    for _ in range(int(bound * 10)):
        seen += ex.poll(0.1)
        if sid not in ex._running:
            return seen + ex.poll(0)
    raise AssertionError(f"sandbox {sid} never settled: {seen}")


def assert_nothing_left() -> None:
    assert our_children() == set(), "a copy of the killed run is left"
    assert zombie_children() == []
    assert not warm.Slot.busy
    again = evalbox.python.run("print('next')", timeout=30)
    assert again.stdout == b"next\n" and again.warm, again


@pytest.mark.parametrize("slots", ["0", "1"])
@pytest.mark.parametrize("server", ["answers_late", "never_answers"])
def test_kill_of_a_start_awaiting_its_pid_does_not_wait_for_the_server(monkeypatch, slots, server):
    cold, stopped = warm_servers_stopped(monkeypatch, slots, 2.0)  # (never_answers: given up after 2 s)
    try:
        with evalbox.Executor() as ex:
            sid = spawn_awaiting_pid(ex)
            ex.kill(sid)
            # kill() came back while every server was stopped: it did not wait for one
            assert all(alive(pid) for pid in stopped)
            assert sid in ex._running and ex._running[sid].box.pending.awaiting_pid
            if server == "answers_late":
                resume(stopped)
            events = events_until_settled(ex, sid)
    finally:
        resume(stopped)
    assert [type(e).__name__ for e in events if e.id == sid] == ["StartFailed"], events
    failed = [e for e in events if isinstance(e, StartFailed)][0]
    assert "killed as it started" in str(failed.error)
    assert cold == [], "the killed run was started cold"
    if server == "answers_late" and slots == "0":
        assert all(alive(pid) for pid in stopped), "a server that answered was killed for one run's kill"
    assert_nothing_left()


@pytest.mark.parametrize("slots", ["0", "1"])
def test_close_with_a_start_awaiting_its_pid_gives_the_hung_server_up(monkeypatch, slots):
    # close() must not wait the 20 s for it (before: a cold start after it)
    cold, stopped = warm_servers_stopped(monkeypatch, slots, 20.0)
    try:
        with evalbox.Executor() as ex:
            spawn_awaiting_pid(ex)
        # (had close() waited for the stopped server, it would still be waiting)
    finally:
        resume(stopped)
    assert cold == [], "the closed run was started cold"
    assert_nothing_left()
