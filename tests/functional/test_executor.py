"""The concurrent Executor: streaming events, concurrency, kill, interactive stdin, timeouts."""

from __future__ import annotations

import signal
import time

import pytest

import evalbox
from ft_helpers import describe

S = evalbox.Status


def drain(ex: evalbox.Executor, deadline: float = 20.0) -> list[tuple[float, object]]:
    """Poll until no sandbox is active; returns (monotonic time, event) pairs."""
    events = []
    end = time.monotonic() + deadline
    while ex.active_count:
        assert time.monotonic() < end, f"executor still has {ex.active_count} active sandboxes; events {events}"
        for ev in ex.poll(timeout=1.0):
            events.append((time.monotonic(), ev))
    return events


def test_streaming_stdout_before_completion():
    plan = evalbox.Plan(["sh", "-c", "echo first; sleep 0.3; echo second >&2; sleep 0.1; echo third"], timeout=10)
    with evalbox.Executor() as ex:
        sid = ex.spawn(plan)
        events = drain(ex)
    kinds = [(type(ev).__name__, getattr(ev, "data", None)) for _, ev in events]
    assert all(ev.id == sid for _, ev in events)
    assert kinds[0] == ("Stdout", b"first\n"), kinds
    assert ("Stderr", b"second\n") in kinds, kinds
    assert isinstance(events[-1][1], evalbox.Completed), kinds
    assert sum(isinstance(ev, evalbox.Completed) for _, ev in events) == 1
    t_first = events[0][0]
    t_done = events[-1][0]
    assert t_done - t_first >= 0.3, "the first line was not delivered before the program finished"
    out = events[-1][1].output
    assert out.success and out.stdout == b"first\nthird\n" and out.stderr == b"second\n", describe(out)
    # streamed chunks add up to the final output
    assert b"".join(ev.data for _, ev in events if isinstance(ev, evalbox.Stdout)) == out.stdout


def test_two_sandboxes_run_concurrently():
    plan = evalbox.Plan(["sleep", "1.5"], timeout=10)
    with evalbox.Executor() as ex:
        start = time.monotonic()
        a = ex.spawn(plan)
        b = ex.spawn(plan.replace(argv=["sh", "-c", "sleep 1.5; echo b"]))
        assert a != b
        assert ex.active_count == 2
        events = drain(ex)
        elapsed = time.monotonic() - start
    done = {ev.id: ev.output for _, ev in events if isinstance(ev, evalbox.Completed)}
    assert set(done) == {a, b}
    assert done[a].success and done[b].stdout == b"b\n", (describe(done[a]), describe(done[b]))
    assert 1.5 <= elapsed < 2.5, f"two 1.5 s sandboxes took {elapsed:.2f} s together (sum would be 3 s)"


def test_many_concurrent_sandboxes_keep_outputs_apart():
    with evalbox.Executor() as ex:
        ids = {ex.spawn(evalbox.Plan(["sh", "-c", f"echo out-{i}; echo err-{i} >&2; exit {i % 4}"], timeout=10)): i
               for i in range(12)}
        events = drain(ex)
    done = {ev.id: ev.output for _, ev in events if isinstance(ev, evalbox.Completed)}
    assert set(done) == set(ids)
    for sid, i in ids.items():
        out = done[sid]
        assert out.stdout == f"out-{i}\n".encode() and out.stderr == f"err-{i}\n".encode(), describe(out)
        assert out.exit_code == i % 4


def test_kill():
    with evalbox.Executor() as ex:
        keep = ex.spawn(evalbox.Plan(["sh", "-c", "sleep 0.5; echo kept"], timeout=10))
        sid = ex.spawn(evalbox.Plan(["sh", "-c", "echo ready; sleep 30"], timeout=30))
        killed_at = None
        events = []
        end = time.monotonic() + 10
        while ex.active_count and time.monotonic() < end:
            for ev in ex.poll(timeout=1.0):
                events.append(ev)
                if isinstance(ev, evalbox.Stdout) and ev.id == sid and ev.data == b"ready\n":
                    ex.kill(sid)
                    killed_at = time.monotonic()
        assert ex.active_count == 0, events
    done = {ev.id: ev for ev in events if isinstance(ev, (evalbox.Completed, evalbox.Timeout))}
    assert killed_at is not None, events
    assert isinstance(done[sid], evalbox.Completed), done
    out = done[sid].output
    assert out.status is S.SIGNALED and out.signal == signal.SIGKILL, describe(out)
    assert out.stdout == b"ready\n"
    assert out.wall_time < 5
    assert done[keep].output.stdout == b"kept\n", "killing one sandbox disturbed another"


def test_kill_unknown_or_finished_is_harmless():
    with evalbox.Executor() as ex:
        sid = ex.spawn(evalbox.Plan(["true"], timeout=10))
        drain(ex)
        ex.kill(sid)  # already finished: nothing happens


def test_write_stdin_then_close():
    with evalbox.Executor() as ex:
        sid = ex.spawn(evalbox.Plan(["cat"], timeout=10))
        ex.write_stdin(sid, b"hello ")
        ex.write_stdin(sid, b"world\n")
        ex.close_stdin(sid)
        events = drain(ex)
    done = [ev for _, ev in events if isinstance(ev, evalbox.Completed)]
    assert len(done) == 1
    assert done[0].output.success and done[0].output.stdout == b"hello world\n", describe(done[0].output)


def test_interactive_stdin_round_trip():
    """Write a line, wait for its echo, write another: a real conversation with the program."""
    code = "import sys\nfor line in sys.stdin:\n    print(line.strip().upper(), flush=True)\nprint('bye')\n"
    with evalbox.Executor() as ex:
        sid = ex.spawn(evalbox.Plan(["python3", "-u", "main.py"], files={"main.py": code}, timeout=10))
        ex.write_stdin(sid, b"one\n")
        got = b""
        done = None
        sent_two = False
        end = time.monotonic() + 10
        while done is None and time.monotonic() < end:
            for ev in ex.poll(timeout=1.0):
                if isinstance(ev, evalbox.Stdout):
                    got += ev.data
                    if got == b"ONE\n" and not sent_two:
                        ex.write_stdin(sid, b"two\n")
                        ex.close_stdin(sid)
                        sent_two = True
                elif isinstance(ev, (evalbox.Completed, evalbox.Timeout)):
                    done = ev.output
    assert done is not None
    assert done.stdout == b"ONE\nTWO\nbye\n", describe(done)


def test_plan_stdin_then_more_from_write_stdin():
    with evalbox.Executor() as ex:
        sid = ex.spawn(evalbox.Plan(["cat"], stdin=b"from-plan ", timeout=10))
        ex.write_stdin(sid, b"from-write")
        ex.close_stdin(sid)
        events = drain(ex)
    out = [ev.output for _, ev in events if isinstance(ev, evalbox.Completed)][0]
    assert out.stdout == b"from-plan from-write", describe(out)


def test_write_stdin_after_close_raises():
    with evalbox.Executor() as ex:
        sid = ex.spawn(evalbox.Plan(["cat"], timeout=10))
        ex.close_stdin(sid)
        with pytest.raises(evalbox.SandboxError):
            ex.write_stdin(sid, b"late")
        drain(ex)


def test_timeout_event():
    with evalbox.Executor() as ex:
        fast = ex.spawn(evalbox.Plan(["true"], timeout=10))
        slow = ex.spawn(evalbox.Plan(["sh", "-c", "echo partial; sleep 30"], timeout=0.5))
        events = drain(ex)
    ends = {ev.id: ev for _, ev in events if isinstance(ev, (evalbox.Completed, evalbox.Timeout))}
    assert isinstance(ends[slow], evalbox.Timeout), ends
    assert ends[slow].output.status is S.TIMEOUT
    assert ends[slow].output.stdout == b"partial\n"
    assert 0.5 <= ends[slow].output.wall_time < 2.5, describe(ends[slow].output)
    assert isinstance(ends[fast], evalbox.Completed) and ends[fast].output.success


def test_poll_timeout_returns_empty_list_while_running():
    with evalbox.Executor() as ex:
        ex.spawn(evalbox.Plan(["sleep", "1"], timeout=10))
        start = time.monotonic()
        assert ex.poll(timeout=0.1) == []
        assert time.monotonic() - start < 0.9
        drain(ex)
        assert ex.poll(timeout=0) == []
        assert ex.active_count == 0


def test_executor_run_blocking_form():
    with evalbox.Executor() as ex:
        out = ex.run(evalbox.Plan(["sh", "-c", "echo $((6*7))"], timeout=10))
        out2 = ex.run(evalbox.Plan(["sh", "-c", "exit 5"], timeout=10))
        # the blocking form gives the plan's stdin and then EOF: a reader does not hang
        out3 = ex.run(evalbox.Plan(["cat"], stdin=b"piped", timeout=5))
    assert out.stdout == b"42\n" and out.success
    assert out2.exit_code == 5
    assert out3.status is S.EXITED and out3.stdout == b"piped", describe(out3)


def test_close_with_running_sandboxes_kills_them(marker):
    from ft_helpers import live_with_marker, wait_until, pids_with_marker

    m = marker()
    ex = evalbox.Executor()
    ex.spawn(evalbox.Plan(["sh", "-c", f"sleep {m} & sleep {m}"], timeout=30))
    assert wait_until(lambda: len(pids_with_marker(m)) >= 2, 5)
    ex.close()
    assert live_with_marker(m) == {}
    with pytest.raises(evalbox.SandboxError):
        ex.spawn(evalbox.Plan(["true"]))


def test_spawn_validation_error_leaves_executor_usable():
    with evalbox.Executor() as ex:
        with pytest.raises(evalbox.CommandNotFound):
            ex.spawn(evalbox.Plan(["no-such-program-evalbox"]))
        assert ex.active_count == 0
        out = ex.run(evalbox.Plan(["true"], timeout=10))
        assert out.success
