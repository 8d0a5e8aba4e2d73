"""Red team 7, finding 02: a signal handler's exception right after `Supervision.close` closed
the seccomp listener (before `self.listener = -1`) leaves the number recorded; the release is
retried (Executor.close -> _release -> Sandbox.close -> Supervision.close) and closes that fd
number again: EBADF raised out of Executor.close and the rest of the release skipped (slot busy,
workspace, cgroup, uid lease left) - or, had the number been reused meanwhile, someone else's fd
closed. Seen for real with `MODE=run SIG=usr1 python findings/stress_rt7.py 60` and
`MODE=exec SIG=usr1 ...` (a helper thread's SIGUSR1; the deferral holds only the main thread).

Here the handler's exception is raised as the listener's os.close returns (where CPython's
CALL checks for pending signals).

Run: .venv/bin/python -m pytest tests/executor/test_cut_release_closes_once.py -q -p no:cacheprovider"""
import os
import sys
import types

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
import evalbox  # noqa: E402
from evalbox.executor.executor import Completed, Executor  # noqa: E402
from evalbox.process import supervisor as supervisor_module  # noqa: E402
from evalbox.process import warm  # noqa: E402


@pytest.mark.parametrize("reuse", [False, True])
@pytest.mark.parametrize("warm_start", [True, False])
def test_cut_after_the_listener_is_closed(monkeypatch, warm_start, reuse):
    real_os = supervisor_module.os
    hit = []
    sacrificial = []

    class CutOs(types.ModuleType):
        def __getattr__(self, name):
            return getattr(real_os, name)

    fake = CutOs("os")

    def close(fd):
        real_os.close(fd)
        if not hit and listeners and fd == listeners[0]:
            hit.append(fd)
            if reuse:  # something opened meanwhile gets the number (another run, the caller)
                null = real_os.open("/dev/null", real_os.O_RDONLY)
                real_os.dup2(null, fd)  # (the lowest free number: here the listener's, forced)
                real_os.close(null)
                sacrificial.append(fd)
            raise KeyboardInterrupt  # the handler ran as os.close returned

    fake.close = close
    listeners = []
    ex = Executor()
    try:
        sid = ex.spawn(evalbox.python.plan("print('x')", timeout=10, warm=warm_start), close_stdin=True)
        box = ex._running[sid].box
        if box.supervision is None:
            pytest.skip("no seccomp listener on this host")
        listeners.append(box.supervision.listener)
        monkeypatch.setattr(supervisor_module, "os", fake)
        with pytest.raises(KeyboardInterrupt):
            for _ in range(60):  # (the run ends within a second; its release is cut)
                ex.poll(1)
    finally:
        monkeypatch.setattr(supervisor_module, "os", real_os)
        try:
            ex.close()  # the retry: must neither raise EBADF nor close a reused number
            if reuse:
                try:
                    os.fstat(sacrificial[0])
                except OSError:
                    sacrificial.clear()
                    pytest.fail("the retried release closed someone else's fd (the listener's number, reused)")
        finally:
            for fd in sacrificial:
                try:
                    os.close(fd)
                except OSError:
                    pass
    assert hit
    assert not warm.Slot.busy, "the run's slot stays busy"
