"""Red team 7, finding 02: after main's fix of red team 7b's finding 02 (Sandbox.close,
Supervision.close, lockdown forget before they close), Sandbox.reap still closes the run's pidfd
before it forgets it: an exception from a signal handler landing right after that os.close (a
caller with another thread: the deferral does not hold it) leaves `pidfd` set, and
Sandbox.close closes that number again. It swallows the EBADF, but if the number was reused
meanwhile (another thread of the caller opened a file) the caller's fd is silently closed."""

from __future__ import annotations

import os
import sys
import types

sys.path[:0] = [os.path.dirname(os.path.dirname(__file__))]

import evalbox  # noqa: E402
from evalbox.process import sandbox  # noqa: E402


class Cut(Exception):
    pass


def test_an_interrupt_after_reap_closed_the_pidfd_never_closes_that_number_again(monkeypatch):
    state: dict = {"armed": True, "victim": -1}

    def close(fd: int) -> None:
        try:
            kind = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            kind = ""
        os.close(fd)
        if state["armed"] and "pidfd" in kind:
            state["armed"] = False
            import traceback; state["where"] = traceback.format_stack(limit=4)[-2].strip().splitlines()[0]
            # (the caller's other thread opens a file: it gets this number)
            null = os.open("/dev/null", os.O_RDONLY)
            state["victim"] = os.dup2(null, fd)
            os.close(null)
            raise Cut()  # (as a signal handler's exception landing right after os.close)

    monkeypatch.setattr(sandbox, "os", types.SimpleNamespace(**{**vars(os), "close": close}))
    try:
        evalbox.python.run("print(1)")
    except Cut:
        pass
    victim = state["victim"]
    assert victim >= 0, "the run's pidfd was never closed through sandbox.os.close"
    try:
        assert os.readlink(f"/proc/self/fd/{victim}") == "/dev/null", \
            "the caller's fd that reused the pidfd's number was replaced by evalbox"
    except FileNotFoundError:
        raise AssertionError(f"evalbox closed fd {victim} twice (first closed at {state.get('where')}): the caller's /dev/null opened in between is gone") from None
    finally:
        try:
            os.close(victim)
        except OSError:
            pass
    monkeypatch.undo()
    assert evalbox.python.run("print(2)").stdout == b"2\n"
