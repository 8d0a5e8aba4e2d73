"""Red team 7, finding 05 (high): a signal handler's exception inside `PendingStart.abandon`'s
`self.close()` while `Sandbox.cancel_start` gives up a kill()ed warm start whose copy's pid has
come: `kill_stray(pid)` is never reached, `cancel_start`'s `finally: self._abandon_start()`
releases the run (uid lease, cgroup, workspace) and the sandbox is marked released, so
`Executor._drop_failed_start`'s `discard()` does nothing. The copy - past its gate, since its
server wrote the pid - locks down and runs the program: a run the caller killed before it
started runs anyway, unwatched (no timeout, never killed, never reaped), with its uid given back.

Reached whenever the caller has another thread (or a helper thread's signal): `_advance_start`'s
deferral holds only the calling thread. Here the handler's exception is raised at the first
bytecode of PendingStart.close.

Run: .venv/bin/python -m pytest tests/executor/test_cut_in_cancel_start.py -q -p no:cacheprovider"""
import os
import select
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
import evalbox  # noqa: E402
from evalbox.executor.executor import Executor  # noqa: E402
from evalbox.process import warm  # noqa: E402
from proc_helpers import zombie_children  # noqa: E402

# (an unprivileged caller's jail, in a user namespace, has no warm copies yet: every run is cold)
pytestmark = pytest.mark.skipif(bool(warm.why_cold_here()), reason=str(warm.why_cold_here()))


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("slots", ["0", "1"])
def test_cut_while_a_killed_start_abandons_its_copy(monkeypatch, slots, tmp_path):
    monkeypatch.setenv("EVALBOX_SLOTS", slots)
    assert evalbox.python.run("pass").warm
    os.chmod(tmp_path, 0o777)
    marker = tmp_path / "ran"
    code = f"open({str(marker)!r}, 'w').close()\nimport time\ntime.sleep(6)"
    close = warm.PendingStart.close
    copies = []

    def cut(self):
        if not copies:
            copies.append(self.pid)
            raise KeyboardInterrupt  # the handler ran at the first bytecode of close
        return close(self)

    ex = Executor()
    try:
        sid = ex._spawn(evalbox.python.plan(code, timeout=1, mounts=[evalbox.Mount(str(tmp_path), writable=True)])
                        if hasattr(evalbox, "Mount") else evalbox.python.plan(code, timeout=1), wait=False)
        box = ex._running[sid].box
        assert box.pending is not None and box.pending.awaiting_pid
        select.select([box.pending.fd], [], [], 5)  # the copy's pid came: its gate is open
        ex.kill(sid)  # killed "before its program started"
        monkeypatch.setattr(warm.PendingStart, "close", cut)
        with pytest.raises(KeyboardInterrupt):
            for _ in range(20):
                ex.poll(0.2)
        monkeypatch.setattr(warm.PendingStart, "close", close)
    finally:
        monkeypatch.setattr(warm.PendingStart, "close", close)
        ex.close()
    assert copies and copies[0] > 0
    copy = copies[0]
    try:
        # (close() returned: whatever the run started is dead and reaped by now)
        assert not alive(copy), (f"the copy {copy} of a run killed before it started is still running, unwatched "
                                 f"(its program ran: {marker.exists()})")
        assert copy not in zombie_children(), f"the copy {copy} is left a zombie"
    finally:
        if alive(copy):
            os.kill(copy, 9)
        try:
            os.waitpid(copy, 0)
        except ChildProcessError:
            pass
