"""Red team 7, finding 03: an exception from a signal handler landing in PendingStart.finish's
`finally` (closing `ours`, the listener socket, or the error pipe), after the warm copy's
lockdown succeeded, loses the started run: pid, pidfd and seccomp listener are only in finish's
locals, `read_end` is already -1 so `abandon()` does nothing: the program's pidfd and seccomp listener
leak and, once it exits, it stays a zombie of the caller, never reaped. (A program still running
is killed with its group by the sandbox's release: it does not run on.)

Reached in the stress (THREAD=1 SHOW_ZOMBIES=1 EVALBOX_SLOTS=0 SEED=3 stress_interrupt.py 100
many: the cut at warm.py finish -> socket.close) when the caller has another thread; here the
handler's exception is injected at that exact point."""

from __future__ import annotations

import os
import socket
import sys
import time

import pytest

sys.path[:0] = [os.path.dirname(os.path.dirname(__file__)), os.path.dirname(__file__)]

import evalbox  # noqa: E402
from evalbox.process import warm  # noqa: E402
from proc_helpers import alive_with, kill_and_reap, zombie_children  # noqa: E402

pytestmark = pytest.mark.skipif(bool(warm.why_cold_here()), reason=str(warm.why_cold_here()))


class Cut(Exception):
    pass


@pytest.mark.parametrize("program", ["import time; time.sleep(30)", "import os, sys; os.write(1, sys.argv[1].encode())"])
@pytest.mark.parametrize("slots", ["0", "1"])
def test_a_cut_while_finish_closes_its_socket_leaves_nothing_running(monkeypatch, slots, program):
    monkeypatch.setenv("EVALBOX_SLOTS", slots)
    assert evalbox.python.run("pass").warm
    marker = f"rt7-finish-{slots}-{os.getpid()}"
    def kinds():
        out = {}
        for fd in os.listdir("/proc/self/fd"):
            try:
                out[fd] = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                pass
        return out

    fds_before = kinds()
    real_close = socket.socket.close
    armed = {"on": True}

    def close(self):
        real_close(self)
        caller = sys._getframe(1)
        if armed["on"] and caller.f_code.co_name == "finish" and caller.f_code.co_filename == warm.__file__:
            armed["on"] = False
            time.sleep(0.2)  # (the handler took a moment: a short program has exited by now)
            raise Cut()  # (as a signal handler's exception right after the socket is closed)

    monkeypatch.setattr(socket.socket, "close", close)
    try:
        with pytest.raises(Cut):
            evalbox.python.run(program, args=[marker], timeout=60)
    finally:
        monkeypatch.undo()
    assert not armed["on"], "finish() closed no socket: nothing was cut (no seccomp listener?)"
    left = alive_with(marker)  # (run() raised: what it started is dead and reaped by now)
    zombies = zombie_children()
    leaked = {fd: k for fd, k in kinds().items() if fd not in fds_before and ("pidfd" in k or "seccomp" in k)}
    kill_and_reap(left)  # (clean up: the program would sleep its 30 s)
    assert not left, f"the program {left} runs on after run() raised: unwatched, no time limit"
    assert not zombies, f"the cut run's process {zombies} is left a zombie of the caller (never reaped)"
    assert not leaked, f"the cut run's fds are left open: {leaked}"
    assert not warm.Slot.busy
