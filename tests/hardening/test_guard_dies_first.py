"""Class 6: when the guard is killed before its caller, the caller notices and starts another;
when the caller then dies too, nothing its runs started survives, and sweeps kill before they
delete."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time


from hardening_kit import NOBODY, run_snippet


def _pids_with(marker: str) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    if marker.encode() in f.read().replace(b"\0", b" "):
                        out.append(int(name))
            except OSError:
                pass
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:  # gone between the listing and this read
        return False


def _wait_gone(marker: str, seconds: float) -> list[int]:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        left = [p for p in _pids_with(marker) if _alive(p)]
        if not left:
            return []
        time.sleep(0.05)
    return left


def test_guard_killed_then_caller_killed_leaves_nothing(caller):
    marker = f"{300 + random.random():.6f}"
    code = f"""
        import os, signal, time
        from evalbox.process import watchdog
        ex = evalbox.Executor()
        sid = ex.spawn(evalbox.Plan(["/bin/sh", "-c", "(sleep {marker} &); (sleep {marker} &); echo up; exec sleep {marker}"],
                                    timeout=600))
        seen = b""
        end = time.monotonic() + 20
        while b"up" not in seen and time.monotonic() < end:
            for ev in ex.poll(timeout=0.5):
                if isinstance(ev, evalbox.Stdout):
                    seen += ev.data
        first = watchdog._guard.pid
        os.kill(first, signal.SIGKILL)  # the guard dies first
        end = time.monotonic() + 20
        while time.monotonic() < end and (watchdog._guard is None or watchdog._guard.pid == first or watchdog.restarts == 0):
            ex.poll(timeout=0.5)  # the executor's loop watches the guard
        emit({{"first": first, "second": watchdog._guard.pid, "restarts": watchdog.restarts}})
        os.kill(os.getpid(), signal.SIGKILL)  # then the caller dies, without any cleanup
    """
    got = run_snippet(caller, code)
    assert got["restarts"] >= 1 and got["second"] != got["first"], got
    left = _wait_gone(marker, 20)
    try:
        assert not left, f"processes of a dead caller's sandbox survived: {left}"
    finally:
        for pid in left:
            os.kill(pid, signal.SIGKILL)


def test_sweep_kills_before_deleting_a_dead_callers_workspace(caller):
    """Guard and caller both killed at once (SIGKILL to the whole lot): the next evalbox process's
    sweep kills what still runs in the dead caller's workspace/uid/cgroup before deleting it."""
    marker = f"{300 + random.random():.6f}"
    code = f"""
        import os, signal, time
        from evalbox.process import watchdog
        ex = evalbox.Executor()
        sid = ex.spawn(evalbox.Plan(["/bin/sh", "-c", "(sleep {marker} &); echo up; exec sleep {marker}"], timeout=600))
        seen = b""
        end = time.monotonic() + 20
        while b"up" not in seen and time.monotonic() < end:
            for ev in ex.poll(timeout=0.5):
                if isinstance(ev, evalbox.Stdout):
                    seen += ev.data
        guard = watchdog._guard.pid
        emit({{"guard": guard, "caller": os.getpid()}})
        # freeze both (nothing can restart the guard), then kill both
        os.kill(guard, signal.SIGSTOP)
        os.kill(os.getpid(), signal.SIGSTOP)
    """
    import json
    import sys
    from hardening_kit import SRC, SYSTEM_PYTHON
    import textwrap
    prelude = (f"import json, os, sys\nsys.path.insert(0, {SRC!r})\nimport evalbox\n"
               "def emit(d):\n    print('RESULT ' + json.dumps(d), flush=True)\n")
    argv = [sys.executable, "-c", prelude + textwrap.dedent(code)]
    if caller == "nobody":
        argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", SYSTEM_PYTHON, "-I", "-c",
                argv[2]]
    # In the jail a run dies with its caller at once (its init is killed with the caller), so the
    # sweep's kill-before-delete is reached only without it.
    env = {**os.environ, "EVALBOX_JAIL": "0"}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, cwd="/tmp", env=env)
    try:
        line = proc.stdout.readline().decode()
        got = json.loads(line.split("RESULT ", 1)[1])
        end = time.monotonic() + 10
        while time.monotonic() < end:  # wait until the caller has stopped itself
            state = open(f"/proc/{got['caller']}/stat").read().split(")")[-1].split()[0]
            if state == "T":
                break
            time.sleep(0.01)
        os.kill(got["guard"], signal.SIGKILL)
        os.kill(got["caller"], signal.SIGKILL)
        proc.wait(10)
        time.sleep(0)  # (the guard and caller are gone; their sandbox still runs)
        assert _pids_with(marker), "the test's sandbox should still be running here"
        # a later evalbox process starts: its host probe sweeps
        run_snippet(caller, "evalbox.run(['/bin/true']); emit({})")
        left = _wait_gone(marker, 10)
        try:
            assert not left, f"the sweep left processes of a dead caller running: {left}"
        finally:
            for pid in left:
                os.kill(pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
