"""The batch and asyncio faces do not wait for one warm copy's lockdown before starting the next
(issue 11): the starts overlap, and a start that fails in the background comes back as that
run's error while the others complete."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

import evalbox
from evalbox.errors import SpawnError
from evalbox.executor import executor as executor_module
from evalbox.process import warm
from proc_helpers import zombie_children

# (an unprivileged caller's jail, in a user namespace, has no warm copies yet: every run is cold)
pytestmark = pytest.mark.skipif(bool(warm.why_cold_here()), reason=str(warm.why_cold_here()))

CODE = "import os, sys; print(sys.argv[1])"


def plans(n: int) -> list[evalbox.Plan]:
    return [evalbox.python.plan(CODE, args=[str(i)], timeout=30) for i in range(n)]


def count_pending(monkeypatch) -> list[int]:
    """After each spawn, how many runs of that executor are still locking down."""
    seen: list[int] = []
    spawn = executor_module.Executor._spawn

    def counting(self, plan, **kw):
        sid = spawn(self, plan, **kw)
        seen.append(sum(1 for run in self._running.values() if run.box.pending is not None))
        return sid

    monkeypatch.setattr(executor_module.Executor, "_spawn", counting)
    return seen


def fail_start(monkeypatch, which: set[str]) -> None:
    """The lockdown of the runs whose argument is in `which` fails (reported as the copy would)."""
    finish = warm.PendingStart.finish

    def failing(self):
        pid, pidfd, listener, report = finish(self)
        if os.fsdecode(self.lock.argv[-1]) not in which:
            return pid, pidfd, listener, report
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        for fd in (pidfd, listener, report):
            if fd >= 0:
                os.close(fd)
        raise SpawnError(1, "lockdown failed (injected by the test)")

    monkeypatch.setattr(warm.PendingStart, "finish", failing)


def test_run_many_overlaps_warm_starts(monkeypatch):
    seen = count_pending(monkeypatch)
    outs = evalbox.run_many(plans(6), concurrency=3, progress=False)
    assert [o.stdout for o in outs] == [f"{i}\n".encode() for i in range(6)]
    assert all(o.warm for o in outs)
    assert max(seen) == 3, seen  # three copies locking down at once, not one after the other


def test_executor_spawn_still_returns_a_started_run():
    with evalbox.Executor() as ex:
        sid = ex.spawn(plans(1)[0], close_stdin=True)
        assert not ex.starting(sid)
        out = next(ev.output for _ in range(100) for ev in ex.poll() if isinstance(ev, evalbox.Completed))
    assert out.stdout == b"0\n" and out.warm


def test_a_failed_background_start_is_that_runs_error(monkeypatch):
    fail_start(monkeypatch, {"1", "4"})
    outs = evalbox.run_many(plans(6), concurrency=3, progress=False)
    for i, out in enumerate(outs):
        if i in (1, 4):
            assert isinstance(out, SpawnError) and "injected" in str(out), out
        else:
            assert out.stdout == f"{i}\n".encode(), out


def test_async_faces_raise_a_failed_start(monkeypatch):
    fail_start(monkeypatch, {"2"})

    async def main():
        many = await evalbox.arun_many(plans(4), concurrency=4, progress=False)
        async with evalbox.AsyncExecutor() as ex:
            with pytest.raises(SpawnError, match="injected"):
                await ex.spawn(plans(3)[2], close_stdin=True)
            alone = await ex.run(plans(1)[0])
            assert ex.active_count == 0
        return many, alone

    many, alone = asyncio.run(main())
    assert isinstance(many[2], SpawnError)
    assert [many[i].stdout for i in (0, 1, 3)] == [b"0\n", b"1\n", b"3\n"]
    assert alone.stdout == b"0\n" and alone.warm


def test_closing_with_starts_in_flight_leaves_nothing_behind():
    """Closed before the servers said their copies' pids: the copies are still found and killed."""
    before = our_children()
    with evalbox.Executor() as ex:
        sids = [ex._spawn(p, close_stdin=True, wait=False) for p in plans(3)]
        assert all(ex._running[sid].box.pending.awaiting_pid for sid in sids)  # (nobody took them yet)
        ex.kill(sids[0])  # gives that start up (its copy killed once its pid comes)
    assert not our_children() - before and not zombie_children()


def test_closing_with_lockdowns_in_flight_leaves_nothing_behind():
    with evalbox.Executor() as ex:
        sids = [ex._spawn(p, close_stdin=True, wait=False) for p in plans(3)]
        while any(ex._running[sid].box.pending is not None and ex._running[sid].box.pending.awaiting_pid
                  for sid in sids if sid in ex._running):
            ex.poll(0.01)  # the servers' answers are taken; the copies may still be locking down
        pids = [ex._running[sid].box.pid if ex._running[sid].box.pending is None else ex._running[sid].box.pending.pid
                for sid in sids if sid in ex._running]
        assert pids and all(pid > 0 for pid in pids)
        ex.kill(sids[0])
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # reaped, not a zombie or a live copy


def our_children() -> set[int]:
    """Live children of this process that are neither templates, launchers nor the guard."""
    from evalbox.process import watchdog

    servers = set(warm.resident_pids())
    with warm._lock:
        servers |= {t.pid for t in warm._templates.values() if isinstance(t, warm.Template)}
    guard = watchdog._guard.pid if watchdog._guard is not None else -1
    found = set()
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) not in servers | {guard}:
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == os.getpid() and fields[0] != "Z":
                found.add(int(name))
    return found


@pytest.mark.parametrize("slots", ["0", "1"])
def test_a_start_cut_short_leaves_nothing_running_and_later_runs_their_own_verdict(monkeypatch, slots):
    """An exception (Ctrl-C, an alarm handler that raises) that cuts a warm start short must not
    leave its copy running unwatched, nor pair a later run with that copy (red team round 4)."""
    monkeypatch.setenv("EVALBOX_SLOTS", slots)
    assert evalbox.python.run("pass").warm
    take_pid = warm.PendingStart.take_pid
    cut = []

    def cut_once(self, *args, **kwargs):
        if not cut:
            cut.append(self)
            raise KeyboardInterrupt  # the server's answer (the copy's pid) stays unread
        return take_pid(self, *args, **kwargs)

    monkeypatch.setattr(warm.PendingStart, "take_pid", cut_once)
    with pytest.raises(KeyboardInterrupt):
        evalbox.python.run("import time; time.sleep(30)", timeout=60)
    monkeypatch.setattr(warm.PendingStart, "take_pid", take_pid)
    for _ in range(2):
        out = evalbox.python.run("import time; time.sleep(30)", timeout=0.5)
        assert out.status is evalbox.Status.TIMEOUT and out.warm and out.wall_time < 5, out
    assert our_children() == set()
    assert zombie_children() == [], "the cut start's process was killed but never reaped"


@pytest.mark.parametrize("slots", ["0", "1"])
@pytest.mark.parametrize("wait", [True, False])
def test_a_server_that_dies_before_forking_the_copy_means_a_cold_run(monkeypatch, slots, wait):
    """The run's template (or slot launcher) dies on its request before forking: the server's
    answer is the end of the run's channel, and the run starts cold instead (nothing left over);
    the next run is warm again."""
    monkeypatch.setenv("EVALBOX_SLOTS", slots)
    assert evalbox.python.run("pass").warm
    trigger = warm._Server._trigger
    broken = []

    def crashing(self, request, fds, after_send):
        if not broken:  # an impossible jail: the server's fork_jail raises and the server dies
            broken.append(self.pid)
            request = {**request, "jail": -1}
        return trigger(self, request, fds, after_send)

    monkeypatch.setattr(warm._Server, "_trigger", crashing)
    if wait:
        out = evalbox.python.run("import sys; print(sys.argv[1])", args=["x"], timeout=30)
    else:
        [out] = evalbox.run_many([evalbox.python.plan("import sys; print(sys.argv[1])", args=["x"], timeout=30)],
                                 progress=False)
    assert broken and out.success and out.stdout == b"x\n" and not out.warm, out
    with pytest.raises(ProcessLookupError):
        os.kill(broken[0], 0)  # that server is gone (and reaped)
    assert evalbox.python.run("pass").warm
    assert our_children() == set() and zombie_children() == []
    assert not warm.Slot.busy  # the failed slot is not counted as serving a run


def test_a_server_that_never_answers_means_a_cold_run_after_the_start_timeout(monkeypatch):
    """A server that takes the request but never forks (hung): after START_TIMEOUT the run
    starts cold, in run_many (the event loop) as in Executor.run."""
    monkeypatch.setattr(warm, "START_TIMEOUT", 0.5)
    assert evalbox.python.run("pass").warm
    held = []

    def swallowed(self, request, fds, after_send):
        held.extend(os.dup(fd) for fd in fds)  # the channel stays open: no end of file either
        after_send()

    monkeypatch.setattr(warm._Server, "_trigger", swallowed)
    try:
        outs = evalbox.run_many([evalbox.python.plan("print(7)", timeout=30)] * 2, concurrency=2, progress=False)
        alone = evalbox.python.run("print(8)", timeout=30)
    finally:
        for fd in held:
            os.close(fd)
    assert [(o.stdout, o.warm) for o in outs] == [(b"7\n", False)] * 2, outs
    assert alone.stdout == b"8\n" and not alone.warm
    assert our_children() == set() and zombie_children() == []
