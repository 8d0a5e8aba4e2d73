"""Red team 6, finding 09 (latent): `PendingStart.finish` ignores take_pid's return value. If
take_pid(START_TIMEOUT) ever returns False (poll said readable, the peek found nothing), finish
goes on with pid -1 and pidfd -1, and what follows signals and waits for pid -1: as root,
kill(-1, sig) reaches every process of the machine. This test makes take_pid return False once
and GUARDS os.kill / os.waitpid / os.wait4 so that nothing with a pid <= 0 is ever executed (the
call is recorded and refused instead).

(Added from red team 6's findings.)"""
import os

import pytest

import evalbox
from evalbox.process import warm

# (an unprivileged caller's jail, in a user namespace, has no warm copies yet: every run is cold)
pytestmark = pytest.mark.skipif(bool(warm.why_cold_here()), reason=str(warm.why_cold_here()))


def test_a_false_take_pid_never_leads_to_pid_minus_one(monkeypatch):
    monkeypatch.setenv("EVALBOX_SLOTS", "0")
    assert evalbox.python.run("pass").warm
    wild = []
    for name in ("kill", "killpg", "waitpid", "wait4"):
        real = getattr(os, name)

        def guarded(pid, *rest, _real=real, _name=name):
            if pid <= 0:
                wild.append((_name, pid, rest))
                raise ProcessLookupError(f"refused by the test: {_name}({pid}, ...)")
            return _real(pid, *rest)

        monkeypatch.setattr(os, name, guarded)
    take_pid = warm.PendingStart.take_pid
    once = []

    def spurious(self, timeout):
        if timeout is not None and not once:
            once.append(1)
            import select
            select.select([self.answer], [], [], 5)  # the answer is there, as if poll woke up...
            return False  # ...and the peek found nothing (EAGAIN)
        return take_pid(self, timeout)

    monkeypatch.setattr(warm.PendingStart, "take_pid", spurious)
    try:
        evalbox.python.run("print(1)", timeout=5)
    except Exception:  # noqa: BLE001 - any error is fine; signalling pid -1 is not
        pass
    assert once
    assert not wild, f"evalbox signalled or waited for pid <= 0: {wild}"
